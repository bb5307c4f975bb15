//! Las Llamas park, Santander: five environmental monitors and a people counter.
//!
//! The people counter mirrors how M-Sec's counter protects privacy: it hears phones' Wi-Fi and
//! Bluetooth MAC addresses, replaces each one at once by an HMAC-SHA256 under a secret salt
//! that is drawn afresh every local day (midnight of Santander's standard time, UTC+1, all
//! year), and reports only how many distinct hashes it heard in
//! the last five minutes. MACs and hashes stay inside [`PeopleCounter`]; the salt comes from
//! the operating system, not from the simulation seed, so knowing the seed does not let anyone
//! recompute hashes.

use crate::{
    daily, device_rng, gauss, local_time, number, rush, weather, Battery, LocalTime, Location,
    Model, Pilot, SimDevice, SANTANDER_UTC_OFFSET,
};
use hmac::{Hmac, KeyInit, Mac};
use msec_envelope::Measurement;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore};
use sha2::Sha256;
use std::collections::HashMap;
use std::time::Duration;

/// The centre of Las Llamas park.
const LAS_LLAMAS: (f64, f64) = (43.4713, -3.8139);

/// Where the monitors stand, as offsets from the park centre, with the microclimate of each
/// spot: the lagoon is cooler, the playground and the road side are louder.
struct Spot {
    label: &'static str,
    dlat: f64,
    dlon: f64,
    /// Cel above the park's mean.
    warmer: f64,
    /// dB above the park's mean.
    louder: f64,
}

#[rustfmt::skip]
const SPOTS: [Spot; 5] = [
    Spot { label: "west entrance",         dlat:  0.0006, dlon: -0.0042, warmer:  0.3, louder:  4.0 },
    Spot { label: "lagoon boardwalk",      dlat: -0.0004, dlon: -0.0017, warmer: -0.6, louder: -3.0 },
    Spot { label: "children's playground", dlat:  0.0009, dlon:  0.0006, warmer:  0.2, louder:  3.0 },
    Spot { label: "wetland observatory",   dlat: -0.0008, dlon:  0.0025, warmer: -0.4, louder: -4.0 },
    Spot { label: "east lawn",             dlat:  0.0003, dlon:  0.0046, warmer:  0.5, louder:  1.0 },
];

pub(crate) fn fleet(seed: u64) -> Vec<SimDevice> {
    let mut devices: Vec<SimDevice> = SPOTS
        .iter()
        .enumerate()
        .map(|(i, spot)| {
            let id = format!("park-env-{:02}", i + 1);
            let station = Station {
                warmer: spot.warmer,
                louder: spot.louder,
                seed,
            };
            let location = Location {
                lat: LAS_LLAMAS.0 + spot.dlat,
                lon: LAS_LLAMAS.1 + spot.dlon,
                label: format!("Las Llamas park, {}", spot.label),
            };
            let name = format!("Environmental monitor, {}", spot.label);
            // Solar-assisted monitors: the battery loses a little each day.
            park_device(
                id,
                name,
                "environmental-monitor",
                location,
                Model::Environment(station),
                0.4,
                seed,
            )
        })
        .collect();
    let location = Location {
        lat: LAS_LLAMAS.0 + 0.0001,
        lon: LAS_LLAMAS.1 - 0.0003,
        label: "Las Llamas park, main path".into(),
    };
    let counter = PeopleCounter {
        phones: Vec::new(),
        last_scan: None,
        salt: [0; 32],
        salt_day: None,
        seen: HashMap::new(),
    };
    let model = Model::PeopleCounter(Box::new(counter));
    // Scanning radios all the time costs more battery than the environmental sensors do.
    devices.push(park_device(
        "park-people-01".into(),
        "People counter, main path".into(),
        "people-counter",
        location,
        model,
        0.8,
        seed,
    ));
    devices
}

fn park_device(
    id: String,
    name: String,
    kind: &str,
    location: Location,
    model: Model,
    drain_per_day: f64,
    seed: u64,
) -> SimDevice {
    let mut rng = device_rng(seed, &id);
    let battery = Battery {
        level: rng.random_range(55.0..100.0),
        drain_per_day,
    };
    SimDevice {
        id,
        tenant: "santander".into(),
        owner: "santander".into(),
        name,
        kind: kind.into(),
        pilot: Pilot::Park,
        location,
        interval: Duration::from_secs(10),
        model,
        rng,
        battery: Some(battery),
        last_sample: None,
    }
}

/// An environmental monitor's fixed traits.
#[derive(Debug, Clone)]
pub(crate) struct Station {
    warmer: f64,
    louder: f64,
    /// The fleet seed: all monitors share the same weather.
    seed: u64,
}

/// Santander's oceanic climate: mild, humid, small daily swings.
pub(crate) fn environment(s: &Station, now: f64, rng: &mut SmallRng) -> Vec<Measurement> {
    let t = local_time(now, SANTANDER_UTC_OFFSET);
    let sky = weather(s.seed ^ 0x5A17, now / 86_400.0);
    let day = daily(t.hour, 15.0);
    let traffic = rush(&t);
    let temperature = 14.5 + 5.0 * t.season + 3.5 * day + 2.0 * sky + s.warmer + 0.15 * gauss(rng);
    let humidity = (76.0 - 12.0 * day - 6.0 * sky + 1.5 * gauss(rng)).clamp(30.0, 100.0);
    // CO2 builds up at night (plants respire, the air near the ground is still) and along the
    // avenues at rush hour.
    let co2 = 420.0 + 25.0 * (-day).max(0.0) + 20.0 * traffic + 4.0 * gauss(rng);
    let voc = (110.0 + 70.0 * traffic + 20.0 * day.max(0.0) + 10.0 * gauss(rng)).max(0.0);
    let noise = 39.0 + 14.0 * presence(&t).min(1.0) + 6.0 * traffic + s.louder + 2.0 * gauss(rng);
    vec![
        number("temperature", "Cel", now, temperature, 2),
        number("humidity", "%RH", now, humidity, 1),
        number("co2", "ppm", now, co2, 0),
        number("voc", "ppb", now, voc, 0),
        number("noise", "dB", now, noise, 1),
    ]
}

/// How busy the park is, relative to a weekday's peak: an hourly profile, more in the
/// afternoon and evening, more at weekends (but later in the morning).
fn presence(t: &LocalTime) -> f64 {
    const WEEKDAY: [f64; 24] = [
        0.02, 0.01, 0.01, 0.01, 0.01, 0.02, 0.05, 0.15, 0.30, 0.30, 0.30, 0.35, //
        0.45, 0.45, 0.40, 0.45, 0.60, 0.80, 1.00, 0.85, 0.55, 0.30, 0.12, 0.05,
    ];
    let h = t.hour.floor() as usize % 24;
    let f = t.hour - t.hour.floor();
    let level = WEEKDAY[h] * (1.0 - f) + WEEKDAY[(h + 1) % 24] * f;
    match (t.weekend, t.hour) {
        (true, h) if h < 9.5 => level * 0.6,
        (true, h) if h < 21.0 => level * 1.7,
        _ => level,
    }
}

/// Phones heard in a five-minute window make one count.
const WINDOW_S: f64 = 300.0;
/// Longest simulated visit; also how far back arrivals are simulated on the first scan, so
/// that the first reading already sees a settled crowd.
const MAX_STAY_S: f64 = 2700.0;
/// Arrivals per second at a weekday's peak: with a mean stay of about 12 minutes this puts
/// about 45 phones in range (about 27 heard per scan), more at weekends, almost none at night.
const PEAK_ARRIVALS_PER_S: f64 = 0.06;
/// Chance that a phone in range is heard in one scan: phones probe and advertise
/// intermittently, so short passers-by are sometimes missed, as with real counters.
const HEARD_PER_SCAN: f64 = 0.6;

/// The people counter. `phones` is the simulated radio world around the device (what the
/// antennas could hear), not something the device stores; the device's own state is the salt
/// and the salted hashes, and neither ever leaves this struct.
#[derive(Clone)]
pub(crate) struct PeopleCounter {
    phones: Vec<Phone>,
    last_scan: Option<f64>,
    salt: [u8; 32],
    /// The local day the salt belongs to.
    salt_day: Option<i64>,
    /// Salted hashes heard, with the last time each was heard.
    seen: HashMap<[u8; 32], f64>,
}

#[derive(Clone)]
struct Phone {
    mac: [u8; 6],
    arrives: f64,
    leaves: f64,
}

impl PeopleCounter {
    pub(crate) fn sample(&mut self, now: f64, rng: &mut SmallRng) -> Vec<Measurement> {
        let t = local_time(now, SANTANDER_UTC_OFFSET);
        if self.salt_day != Some(t.day) {
            // A new secret every local day, so that today's hashes cannot be linked to
            // yesterday's. Old hashes are dropped: under the new salt they would count twice.
            self.salt = fresh_salt();
            self.salt_day = Some(t.day);
            self.seen.clear();
        }
        self.simulate_arrivals(now, &t, rng);
        self.phones.retain(|p| p.leaves > now);
        for phone in &self.phones {
            if phone.arrives <= now && rng.random_bool(HEARD_PER_SCAN) {
                let hash = salted_hash(&self.salt, &phone.mac);
                self.seen.insert(hash, now);
            }
        }
        self.seen.retain(|_, last| now - *last < WINDOW_S);
        self.last_scan = Some(now);
        vec![number("people", "count", now, self.seen.len() as f64, 0)]
    }

    /// Poisson arrivals since the previous scan (at most `MAX_STAY_S` back), each staying a
    /// while: most people pass by in a few minutes, some stay for a walk or the playground.
    fn simulate_arrivals(&mut self, now: f64, t: &LocalTime, rng: &mut SmallRng) {
        let from = self.last_scan.unwrap_or(f64::MIN).max(now - MAX_STAY_S);
        if from >= now {
            return;
        }
        let mean = PEAK_ARRIVALS_PER_S * presence(t) * (now - from);
        for _ in 0..poisson(mean, rng) {
            let arrives = from + rng.random::<f64>() * (now - from);
            let stay = if rng.random_bool(0.6) {
                rng.random_range(60.0..240.0)
            } else {
                rng.random_range(600.0..MAX_STAY_S)
            };
            let mut mac = [0u8; 6];
            rng.fill_bytes(&mut mac);
            // Phones advertise randomised MACs: locally administered, unicast.
            mac[0] = (mac[0] | 0x02) & !0x01;
            if arrives + stay > now {
                self.phones.push(Phone {
                    mac,
                    arrives,
                    leaves: arrives + stay,
                });
            }
        }
    }
}

/// Knuth's method; `mean` is capped well below where `exp(-mean)` underflows.
fn poisson(mean: f64, rng: &mut SmallRng) -> u32 {
    let limit = (-mean.clamp(0.0, 600.0)).exp();
    let (mut k, mut p) = (0, rng.random::<f64>());
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

fn salted_hash(salt: &[u8; 32], mac: &[u8; 6]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(salt).expect("HMAC takes any key length");
    h.update(mac);
    h.finalize().into_bytes().into()
}

/// 32 bytes from the operating system's CSPRNG. Should that ever fail, std's `RandomState`,
/// whose keys also come from the operating system, stands in: a salt derived from the
/// simulation seed would be predictable and is never used.
fn fresh_salt() -> [u8; 32] {
    let mut salt = [0u8; 32];
    if getrandom::fill(&mut salt).is_err() {
        use std::hash::{BuildHasher, Hasher};
        for (i, chunk) in salt.chunks_mut(8).enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{at_local, DAY, MONDAY};
    use crate::{pilot_fleet, SimConfig};

    fn counter() -> SimDevice {
        pilot_fleet(&SimConfig::default(), Pilot::Park)
            .pop()
            .unwrap()
    }

    fn state(d: &SimDevice) -> &PeopleCounter {
        match &d.model {
            Model::PeopleCounter(c) => c,
            _ => panic!("{} is not the people counter", d.id),
        }
    }

    fn people(d: &mut SimDevice, now: f64) -> f64 {
        let ms = d.sample(now);
        assert_eq!(
            ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
            ["people", "battery"]
        );
        ms[0].as_f64().unwrap()
    }

    /// Mean count over an hour of 10-second scans starting at a local hour.
    fn mean_people(d: &mut SimDevice, day_utc: f64, hour: f64) -> f64 {
        let start = at_local(day_utc, SANTANDER_UTC_OFFSET, hour);
        (0..360)
            .map(|i| people(d, start + i as f64 * 10.0))
            .sum::<f64>()
            / 360.0
    }

    #[test]
    fn counts_follow_the_day_and_the_week() {
        let mut d = counter();
        let night = mean_people(&mut d, MONDAY, 3.0);
        let evening = mean_people(&mut d, MONDAY, 18.0);
        let saturday = mean_people(&mut d, MONDAY + 5.0 * DAY, 18.0);
        assert!(night < 5.0, "night {night}");
        assert!(
            (15.0..150.0).contains(&evening),
            "weekday evening {evening}"
        );
        assert!(
            saturday > evening * 1.3,
            "saturday {saturday} vs monday {evening}"
        );
    }

    #[test]
    fn nothing_identifying_leaves_the_counter() {
        let mut d = counter();
        let noon = at_local(MONDAY, SANTANDER_UTC_OFFSET, 12.0);
        let mut emitted = Vec::new();
        let mut macs = Vec::new();
        let mut hashes = Vec::new();
        for i in 0..90 {
            emitted.extend(d.sample(noon + i as f64 * 10.0));
            let c = state(&d);
            macs.extend(c.phones.iter().map(|p| p.mac));
            hashes.extend(c.seen.keys().copied());
        }
        assert!(macs.len() > 100 && !hashes.is_empty());
        // What a receiver gets: the measurements as SenML JSON and as a sealed envelope.
        let json = serde_json::to_string(&emitted)
            .unwrap()
            .to_ascii_lowercase();
        let mut device = msec_device::Device::new(
            "park-people-01",
            msec_device::DeviceKey::from_seed([9; 32]),
            1,
        );
        let sealed = device.seal(&emitted, noon + 900.0).unwrap();
        let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        for mac in &macs {
            let hex = hex::encode(mac);
            let colons = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            assert!(
                !json.contains(&hex) && !json.contains(&colons),
                "MAC {colons} leaked"
            );
            assert!(
                !contains(&sealed, mac),
                "MAC bytes {colons} in the envelope"
            );
        }
        for hash in &hashes {
            assert!(!json.contains(&hex::encode(hash)) && !json.contains(&hex::encode(&hash[..8])));
            assert!(!contains(&sealed, &hash[..8]), "hash bytes in the envelope");
        }
        // Only numbers come out: no text or data field that could carry an identifier.
        assert!(emitted
            .iter()
            .all(|m| matches!(m.value, msec_envelope::Value::Number(_))));
        // Nor do logs: Debug of the device shows no state.
        let shown = format!("{d:?}");
        assert!(macs.iter().all(|m| !shown.contains(&hex::encode(m))) && !shown.contains("salt"));
    }

    #[test]
    fn salt_rotates_at_local_midnight_and_not_before() {
        let mut d = counter();
        // 23:59:50 and 00:00:00 local time in Santander (UTC+1).
        let before = at_local(MONDAY, SANTANDER_UTC_OFFSET, 24.0) - 10.0;
        let at_midnight = before + 10.0;
        d.sample(at_local(MONDAY, SANTANDER_UTC_OFFSET, 0.5));
        let first = state(&d).salt;
        assert_ne!(first, [0; 32], "a salt is drawn before the first hash");
        d.sample(at_local(MONDAY, SANTANDER_UTC_OFFSET, 12.0));
        d.sample(before);
        assert_eq!(state(&d).salt, first, "same local day, same salt");
        d.sample(at_midnight);
        let second = state(&d).salt;
        assert_ne!(second, first, "new local day, new salt");
        d.sample(at_midnight + 3600.0);
        assert_eq!(state(&d).salt, second);
        // A phone hashes differently on the two days.
        assert_ne!(
            salted_hash(&first, &[2, 0, 0, 0, 0, 1]),
            salted_hash(&second, &[2, 0, 0, 0, 0, 1])
        );
    }

    #[test]
    fn salt_does_not_follow_from_the_seed_but_counts_do() {
        let (mut a, mut b) = (counter(), counter());
        let noon = at_local(MONDAY, SANTANDER_UTC_OFFSET, 12.0);
        let counts_a: Vec<f64> = (0..30)
            .map(|i| people(&mut a, noon + i as f64 * 10.0))
            .collect();
        let counts_b: Vec<f64> = (0..30)
            .map(|i| people(&mut b, noon + i as f64 * 10.0))
            .collect();
        assert_eq!(counts_a, counts_b, "counts are deterministic for a seed");
        assert_ne!(state(&a).salt, state(&b).salt, "the salt is not");
    }

    #[test]
    fn counts_only_the_last_five_minutes() {
        let now = at_local(MONDAY, SANTANDER_UTC_OFFSET, 3.0);
        let mut rng = device_rng(1, "window");
        // No phones in range and no time to simulate arrivals in: only the memory of what was
        // heard before decides the count.
        let mut c = PeopleCounter {
            phones: Vec::new(),
            last_scan: Some(now),
            salt: [1; 32],
            salt_day: Some(local_time(now, SANTANDER_UTC_OFFSET).day),
            seen: (0..50u8)
                .map(|i| ([i; 32], now - if i < 20 { 299.0 } else { 301.0 }))
                .collect(),
        };
        assert_eq!(c.sample(now, &mut rng)[0].as_f64(), Some(20.0));
        assert_eq!(c.sample(now, &mut rng)[0].as_f64(), Some(20.0));
        c.last_scan = Some(now + 1.0);
        assert_eq!(c.sample(now + 1.0, &mut rng)[0].as_f64(), Some(0.0));
    }

    #[test]
    fn poisson_mean_is_right() {
        let mut rng = device_rng(1, "poisson");
        let n = 20_000;
        let mean = (0..n).map(|_| poisson(3.5, &mut rng) as f64).sum::<f64>() / n as f64;
        assert!((mean - 3.5).abs() < 0.1, "{mean}");
        assert_eq!(poisson(0.0, &mut rng), 0);
    }
}
