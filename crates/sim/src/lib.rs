//! Simulated pilot devices: Santander's Las Llamas park (environmental monitors and a people
//! counter), Connected Care home kits, and Fujisawa garbage-truck sensor boxes.
//!
//! Models only: each [`SimDevice`] turns a point in time into plausible SenML measurements, with
//! daily cycles in the site's local time and seeded noise. This crate never does networking
//! (the caller seals and sends), and the people counter never lets a MAC address, or a hash of
//! one, leave the device: it reports a count only.

use hmac::{Hmac, KeyInit, Mac};
use msec_envelope::Measurement;
use rand::rngs::SmallRng;
use rand::{Rng, RngCore, SeedableRng};
use serde::Serialize;
use sha2::Sha256;
use std::collections::HashMap;
use std::f64::consts::PI;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Pilot {
    Park,
    Home,
    Truck,
}

impl std::str::FromStr for Pilot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "park" => Ok(Pilot::Park),
            "home" => Ok(Pilot::Home),
            "truck" => Ok(Pilot::Truck),
            other => Err(format!(
                "unknown pilot {other:?}; choose park, home or truck"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub residents: usize,
    pub trucks: usize,
    /// Sampling rate of each truck box, clamped to (0, 100] Hz.
    pub truck_hz: f64,
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            residents: 3,
            trucks: 2,
            truck_hz: 1.0,
            seed: 2018,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub label: String,
}

/// What a device measures, with the state its model needs.
#[derive(Debug, Clone)]
enum Model {
    Environment {
        offset: f64,
    },
    PeopleCounter(Box<Counter>),
    Hub,
    Motion,
    Door,
    Bed,
    Plug,
    Truck {
        route_offset: f64,
        depot: (f64, f64),
    },
}

/// The people counter's private state: phones in range and today's secret salt.
#[derive(Debug, Clone)]
struct Counter {
    salt: [u8; 32],
    salt_day: i64,
    /// Phones present: MAC -> when it leaves (unix seconds).
    phones: HashMap<[u8; 6], f64>,
    /// Salted hashes seen, with the last time: the only identifiers the counter keeps.
    seen: HashMap<[u8; 32], f64>,
}

#[derive(Debug, Clone)]
pub struct SimDevice {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub kind: String,
    pub pilot: Pilot,
    pub location: Location,
    pub interval: Duration,
    model: Model,
    rng: SmallRng,
    battery: f64,
    /// Hours east of UTC at the site.
    utc_offset: f64,
}

const SANTANDER_UTC: f64 = 1.0;
const FUJISAWA_UTC: f64 = 9.0;
const LAS_LLAMAS: (f64, f64) = (43.4713, -3.8139);
const FUJISAWA_DEPOT: (f64, f64) = (35.3392, 139.4900);
/// A loop through central Fujisawa, visited in order.
const ROUTE: [(f64, f64); 8] = [
    (35.3392, 139.4900),
    (35.3440, 139.4870),
    (35.3480, 139.4810),
    (35.3455, 139.4730),
    (35.3390, 139.4700),
    (35.3330, 139.4760),
    (35.3310, 139.4850),
    (35.3350, 139.4920),
];

fn device(
    id: String,
    tenant: &str,
    name: String,
    kind: &str,
    pilot: Pilot,
    location: Location,
    interval: Duration,
    model: Model,
    seed: u64,
    utc: f64,
) -> SimDevice {
    // Each device gets its own stream of noise, derived from the fleet seed and its id.
    let mixed = id.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    let mut rng = SmallRng::seed_from_u64(mixed);
    let battery = rng.random_range(70.0..100.0);
    SimDevice {
        id,
        tenant: tenant.into(),
        name,
        kind: kind.into(),
        pilot,
        location,
        interval,
        model,
        rng,
        battery,
        utc_offset: utc,
    }
}

pub fn fleet(cfg: &SimConfig) -> Vec<SimDevice> {
    [Pilot::Park, Pilot::Home, Pilot::Truck]
        .iter()
        .flat_map(|p| pilot_fleet(cfg, *p))
        .collect()
}

pub fn pilot_fleet(cfg: &SimConfig, pilot: Pilot) -> Vec<SimDevice> {
    let s = cfg.seed;
    match pilot {
        Pilot::Park => {
            let spots = [
                "north gate",
                "pond",
                "playground",
                "wetland boardwalk",
                "south lawn",
            ];
            let mut v: Vec<SimDevice> = spots
                .iter()
                .enumerate()
                .map(|(i, spot)| {
                    let loc = Location {
                        lat: LAS_LLAMAS.0 + 0.0012 * (i as f64 - 2.0),
                        lon: LAS_LLAMAS.1 + 0.0009 * ((i * 3 % 5) as f64 - 2.0),
                        label: format!("Las Llamas park, {spot}"),
                    };
                    let id = format!("park-env-{:02}", i + 1);
                    device(
                        id,
                        "santander",
                        format!("Environment monitor, {spot}"),
                        "environmental-monitor",
                        pilot,
                        loc,
                        Duration::from_secs(10),
                        Model::Environment {
                            offset: i as f64 * 0.3,
                        },
                        s,
                        SANTANDER_UTC,
                    )
                })
                .collect();
            let counter = Counter {
                salt: [0; 32],
                salt_day: i64::MIN,
                phones: HashMap::new(),
                seen: HashMap::new(),
            };
            let loc = Location {
                lat: LAS_LLAMAS.0,
                lon: LAS_LLAMAS.1,
                label: "Las Llamas park, main path".into(),
            };
            v.push(device(
                "park-people-01".into(),
                "santander",
                "People counter, main path".into(),
                "people-counter",
                pilot,
                loc,
                Duration::from_secs(10),
                Model::PeopleCounter(Box::new(counter)),
                s,
                SANTANDER_UTC,
            ));
            v
        }
        Pilot::Home => (1..=cfg.residents)
            .flat_map(|r| {
                let home = format!("home-{r:03}");
                let loc = Location {
                    lat: 43.462 + 0.004 * (r % 5) as f64,
                    lon: -3.805 + 0.006 * (r % 7) as f64,
                    label: format!("Home {r:03}"),
                };
                let kit: [(&str, &str, &str, Model, u64); 5] = [
                    ("hub", "gateway-hub", "Gateway hub", Model::Hub, 30),
                    (
                        "motion",
                        "motion-sensor",
                        "Motion sensor, living room",
                        Model::Motion,
                        15,
                    ),
                    ("door", "door-sensor", "Front door sensor", Model::Door, 15),
                    ("bed", "bed-sensor", "Bed occupancy sensor", Model::Bed, 15),
                    ("plug", "smart-plug", "Smart plug, kitchen", Model::Plug, 15),
                ];
                kit.into_iter()
                    .map(|(suffix, kind, name, model, secs)| {
                        device(
                            format!("{home}-{suffix}"),
                            "santander",
                            format!("{name} ({home})"),
                            kind,
                            pilot,
                            loc.clone(),
                            Duration::from_secs(secs),
                            model,
                            s,
                            SANTANDER_UTC,
                        )
                    })
                    .collect::<Vec<_>>()
            })
            .collect(),
        Pilot::Truck => {
            let hz = if cfg.truck_hz.is_finite() && cfg.truck_hz > 0.0 {
                cfg.truck_hz.min(100.0)
            } else {
                1.0
            };
            (1..=cfg.trucks)
                .map(|t| {
                    let loc = Location {
                        lat: FUJISAWA_DEPOT.0,
                        lon: FUJISAWA_DEPOT.1,
                        label: "Fujisawa city depot".into(),
                    };
                    let model = Model::Truck {
                        route_offset: t as f64 * 0.37,
                        depot: FUJISAWA_DEPOT,
                    };
                    device(
                        format!("truck-{t:02}"),
                        "fujisawa",
                        format!("Garbage truck {t:02} sensor box"),
                        "truck-sensor-box",
                        pilot,
                        loc,
                        Duration::from_secs_f64(1.0 / hz),
                        model,
                        s,
                        FUJISAWA_UTC,
                    )
                })
                .collect()
        }
    }
}

/// Hour of the local day, 0..24.
fn local_hour(now: f64, utc_offset: f64) -> f64 {
    ((now / 3600.0 + utc_offset) % 24.0 + 24.0) % 24.0
}

fn local_day(now: f64, utc_offset: f64) -> i64 {
    ((now + utc_offset * 3600.0) / 86_400.0).floor() as i64
}

/// A daily wave peaking at `peak_hour`, in -1..=1.
fn daily(hour: f64, peak_hour: f64) -> f64 {
    ((hour - peak_hour) / 24.0 * 2.0 * PI).cos()
}

impl SimDevice {
    /// The measurements this device reports at `now` (Unix seconds).
    pub fn sample(&mut self, now: f64) -> Vec<Measurement> {
        let hour = local_hour(now, self.utc_offset);
        let noise = |rng: &mut SmallRng, sd: f64| (rng.random::<f64>() - 0.5) * 2.0 * sd;
        // Batteries drain slowly and are "replaced" when flat.
        self.battery -= self.interval.as_secs_f64() / 86_400.0 * 0.5;
        if self.battery < 5.0 {
            self.battery = 100.0;
        }
        let mut out = Vec::new();
        // Two decimals: what real sensors of this class resolve.
        let num = |name: &str, unit: &str, v: f64| {
            Measurement::number(name, unit, now, (v * 100.0).round() / 100.0)
        };
        match &mut self.model {
            Model::Environment { offset } => {
                let d = daily(hour, 15.0);
                out.push(num(
                    "temperature",
                    "Cel",
                    14.0 + 5.0 * d + *offset + noise(&mut self.rng, 0.3),
                ));
                out.push(num(
                    "humidity",
                    "%RH",
                    (75.0 - 15.0 * d + noise(&mut self.rng, 2.0)).clamp(20.0, 100.0),
                ));
                let traffic = daily(hour, 18.0).max(daily(hour, 8.5));
                out.push(num(
                    "co2",
                    "ppm",
                    415.0 + 25.0 * traffic.max(0.0) + noise(&mut self.rng, 5.0),
                ));
                out.push(num(
                    "voc",
                    "ppb",
                    (120.0 + 80.0 * traffic.max(0.0) + noise(&mut self.rng, 15.0)).max(0.0),
                ));
                let day = if (7.0..22.0).contains(&hour) {
                    1.0
                } else {
                    0.0
                };
                out.push(num(
                    "noise",
                    "dB",
                    38.0 + 17.0 * day + 6.0 * traffic.max(0.0) + noise(&mut self.rng, 3.0),
                ));
                out.push(num("battery", "%EL", self.battery));
            }
            Model::PeopleCounter(c) => {
                let count = c.observe(now, hour, local_day(now, self.utc_offset), &mut self.rng);
                out.push(num("people", "count", count as f64));
                out.push(num("battery", "%EL", self.battery));
            }
            Model::Hub => {
                out.push(Measurement::boolean("heartbeat", now, true));
                out.push(num("battery", "%EL", self.battery));
                out.push(num(
                    "link",
                    "%",
                    (88.0 + noise(&mut self.rng, 8.0)).clamp(0.0, 100.0),
                ));
            }
            Model::Motion => {
                let awake = (7.5..22.5).contains(&hour);
                let p = if awake { 0.35 } else { 0.02 };
                out.push(Measurement::boolean("motion", now, self.rng.random_bool(p)));
                out.push(num("battery", "%EL", self.battery));
            }
            Model::Door => {
                let p = if (9.0..20.0).contains(&hour) {
                    0.03
                } else {
                    0.002
                };
                out.push(Measurement::boolean("open", now, self.rng.random_bool(p)));
                out.push(num("battery", "%EL", self.battery));
            }
            Model::Bed => {
                let asleep = !(7.0..23.0).contains(&hour);
                // A short night-time bathroom trip, as the alert rules must tell apart.
                let trip = (3.0..3.2).contains(&hour);
                out.push(Measurement::boolean("occupied", now, asleep && !trip));
                out.push(num("battery", "%EL", self.battery));
            }
            Model::Plug => {
                let meal = [(7.5, 8.5), (13.0, 14.5), (20.0, 23.0)]
                    .iter()
                    .any(|(a, b)| (*a..*b).contains(&hour));
                out.push(Measurement::boolean("on", now, meal));
                out.push(num("voltage", "V", 230.0 + noise(&mut self.rng, 3.0)));
                out.push(num("frequency", "Hz", 50.0 + noise(&mut self.rng, 0.05)));
                out.push(num(
                    "power",
                    "W",
                    if meal {
                        900.0 + noise(&mut self.rng, 150.0)
                    } else {
                        1.5 + noise(&mut self.rng, 0.5)
                    },
                ));
            }
            Model::Truck {
                route_offset,
                depot,
            } => {
                let working = (8.0..20.0).contains(&hour);
                let (lat, lon, speed) = if working {
                    // ~25 km/h around a loop of roughly 5 km: one lap every 12 minutes.
                    let lap = ((now / 720.0) + *route_offset).fract() * ROUTE.len() as f64;
                    let (i, f) = (lap.floor() as usize % ROUTE.len(), lap.fract());
                    let (a, b) = (ROUTE[i], ROUTE[(i + 1) % ROUTE.len()]);
                    (
                        a.0 + (b.0 - a.0) * f,
                        a.1 + (b.1 - a.1) * f,
                        7.0 + noise(&mut self.rng, 1.5),
                    )
                } else {
                    (depot.0, depot.1, 0.0)
                };
                let d = daily(hour, 14.0);
                let vib = if working { 1.2 } else { 0.02 };
                out.push(num(
                    "temperature",
                    "Cel",
                    16.0 + 6.0 * d + noise(&mut self.rng, 0.2),
                ));
                out.push(num(
                    "humidity",
                    "%RH",
                    (65.0 - 12.0 * d + noise(&mut self.rng, 2.0)).clamp(15.0, 100.0),
                ));
                out.push(num(
                    "pressure",
                    "Pa",
                    101_325.0 + noise(&mut self.rng, 150.0),
                ));
                let sun = ((hour - 6.0) / 12.0 * PI).sin().max(0.0);
                out.push(num(
                    "uva",
                    "W/m2",
                    (sun * 30.0 + noise(&mut self.rng, 0.5)).max(0.0),
                ));
                out.push(num("accel-x", "m/s2", noise(&mut self.rng, vib)));
                out.push(num("accel-y", "m/s2", noise(&mut self.rng, vib)));
                out.push(num("accel-z", "m/s2", 9.81 + noise(&mut self.rng, vib)));
                out.push(num("gyro-x", "rad/s", noise(&mut self.rng, vib * 0.1)));
                out.push(num("gyro-y", "rad/s", noise(&mut self.rng, vib * 0.1)));
                out.push(num("gyro-z", "rad/s", noise(&mut self.rng, vib * 0.2)));
                for axis in ["mag-x", "mag-y", "mag-z"] {
                    let v = 4.0e-5 + noise(&mut self.rng, 0.5e-5);
                    out.push(Measurement::number(axis, "T", now, v));
                }
                out.push(num(
                    "pm25",
                    "ug/m3",
                    (12.0 + 8.0 * daily(hour, 8.0).max(0.0) + noise(&mut self.rng, 3.0)).max(0.0),
                ));
                out.push(Measurement::number("lat", "lat", now, lat));
                out.push(Measurement::number("lon", "lon", now, lon));
                out.push(num("speed", "m/s", speed.max(0.0)));
            }
        }
        out
    }
}

impl Counter {
    /// Simulates phones in range, hashes their MACs with today's salt, and returns the number
    /// of distinct hashes seen in the last five minutes. MACs and hashes stay in here.
    fn observe(&mut self, now: f64, hour: f64, day: i64, rng: &mut SmallRng) -> usize {
        if day != self.salt_day {
            // A new secret every local day: yesterday's hashes cannot be linked to today's.
            rng.fill_bytes(&mut self.salt);
            self.salt_day = day;
            self.seen.clear();
        }
        let busy = 0.2
            + 0.8
                * daily(hour, 17.0).max(0.0)
                * if (8.0..22.0).contains(&hour) {
                    1.0
                } else {
                    0.1
                };
        for _ in 0..rng.random_range(0..=(busy * 6.0) as u32 + 1) {
            let mut mac = [0u8; 6];
            rng.fill_bytes(&mut mac);
            self.phones
                .insert(mac, now + rng.random_range(60.0..1800.0));
        }
        self.phones.retain(|_, leaves| *leaves > now);
        for mac in self.phones.keys() {
            let mut h = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.salt)
                .expect("HMAC takes any key length");
            h.update(mac);
            self.seen.insert(h.finalize().into_bytes().into(), now);
        }
        self.seen.retain(|_, last| now - *last <= 300.0);
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIDNIGHT_UTC: f64 = 1_764_028_800.0; // 2025-11-25 00:00 UTC

    fn valid_name(n: &str) -> bool {
        n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
    }

    #[test]
    fn fleet_shape_ids_and_units() {
        let cfg = SimConfig {
            residents: 2,
            trucks: 3,
            ..Default::default()
        };
        let mut all = fleet(&cfg);
        assert_eq!(all.len(), 6 + 2 * 5 + 3);
        let ids: std::collections::HashSet<_> = all.iter().map(|d| d.id.clone()).collect();
        assert_eq!(ids.len(), all.len(), "ids are unique");
        for d in &mut all {
            for step in 0..48 {
                for m in d.sample(MIDNIGHT_UTC + step as f64 * 1800.0) {
                    assert!(valid_name(&m.name), "{}", m.name);
                    assert!(
                        m.as_f64().is_none_or(|v| v.is_finite())
                            && (m.as_f64().is_none() || m.unit.is_some()),
                        "{m:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn ranges_and_daily_cycle() {
        let mut park = pilot_fleet(&SimConfig::default(), Pilot::Park).remove(0);
        let temp = |d: &mut SimDevice, h: f64| {
            let t = MIDNIGHT_UTC + (h - SANTANDER_UTC) * 3600.0;
            d.sample(t)
                .into_iter()
                .find(|m| m.name == "temperature")
                .and_then(|m| m.as_f64())
                .unwrap()
        };
        let (mut afternoon, mut dawn) = (0.0, 0.0);
        for _ in 0..20 {
            afternoon += temp(&mut park, 15.0);
            dawn += temp(&mut park, 4.0);
        }
        assert!(
            afternoon > dawn + 50.0,
            "afternoon {afternoon} vs dawn {dawn}"
        );
        for m in park.sample(MIDNIGHT_UTC) {
            let v = m.as_f64().unwrap();
            let ok = match m.name.as_str() {
                "temperature" => (-5.0..40.0).contains(&v),
                "humidity" => (0.0..=100.0).contains(&v),
                "co2" => (380.0..800.0).contains(&v),
                "noise" => (25.0..90.0).contains(&v),
                _ => true,
            };
            assert!(ok, "{} = {v}", m.name);
        }
        let mut truck = pilot_fleet(&SimConfig::default(), Pilot::Truck).remove(0);
        let noon = truck.sample(MIDNIGHT_UTC + 3.0 * 3600.0); // 12:00 in Fujisawa
        let lat = noon
            .iter()
            .find(|m| m.name == "lat")
            .unwrap()
            .as_f64()
            .unwrap();
        assert!((35.32..35.36).contains(&lat));
        let night = truck.sample(MIDNIGHT_UTC + 15.0 * 3600.0); // 00:00 in Fujisawa
        assert_eq!(
            night.iter().find(|m| m.name == "speed").unwrap().as_f64(),
            Some(0.0)
        );
    }

    #[test]
    fn truck_rate_is_clamped_and_runs_are_deterministic() {
        let fast = pilot_fleet(
            &SimConfig {
                truck_hz: 1000.0,
                ..Default::default()
            },
            Pilot::Truck,
        );
        assert_eq!(fast[0].interval, Duration::from_millis(10));
        let mut a = pilot_fleet(&SimConfig::default(), Pilot::Home);
        let mut b = pilot_fleet(&SimConfig::default(), Pilot::Home);
        assert_eq!(a[4].sample(MIDNIGHT_UTC), b[4].sample(MIDNIGHT_UTC));
    }

    #[test]
    fn people_counter_reports_counts_only_and_rotates_its_salt() {
        let mut d = pilot_fleet(&SimConfig::default(), Pilot::Park)
            .pop()
            .unwrap();
        assert_eq!(d.kind, "people-counter");
        let noon = MIDNIGHT_UTC + 11.0 * 3600.0;
        let mut counts = Vec::new();
        for i in 0..30 {
            let ms = d.sample(noon + i as f64 * 10.0);
            assert_eq!(
                ms.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(),
                ["people", "battery"]
            );
            counts.push(ms[0].as_f64().unwrap());
        }
        assert!(counts.iter().any(|c| *c > 0.0));
        let Model::PeopleCounter(c) = &d.model else {
            panic!()
        };
        let (salt, macs): ([u8; 32], Vec<[u8; 6]>) = (c.salt, c.phones.keys().copied().collect());
        // No MAC (raw or hex) appears in anything the device emits.
        let emitted = format!("{:?}", d.sample(noon + 301.0));
        for mac in &macs {
            assert!(!emitted.contains(&hex::encode(mac)));
        }
        // The salt changes at local midnight, not before.
        d.sample(MIDNIGHT_UTC + 22.9 * 3600.0 - SANTANDER_UTC * 3600.0);
        let Model::PeopleCounter(c) = &d.model else {
            panic!()
        };
        assert_eq!(c.salt, salt);
        d.sample(MIDNIGHT_UTC + 24.1 * 3600.0 - SANTANDER_UTC * 3600.0);
        let Model::PeopleCounter(c) = &d.model else {
            panic!()
        };
        assert_ne!(c.salt, salt);
    }
}
