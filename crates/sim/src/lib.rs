//! Simulated pilot devices: Santander's Las Llamas park (environmental monitors and a people
//! counter), Connected Care home kits, and Fujisawa garbage-truck sensor boxes.
//!
//! This crate owns the *models* only: each [`SimDevice`] turns a point in time into plausible
//! SenML measurements, following daily (and yearly) cycles in the site's local time, with noise
//! that is deterministic for a given [`SimConfig::seed`]. It must never do networking, I/O or
//! signing (the caller seals readings with `msec-device` and sends them), and the people counter
//! must never let a MAC address, or a hash of one, leave the device: it reports a count only.
//!
//! Actuators: the home kit's smart plug has a relay that [`SimDevice::apply_command`] switches
//! ([`PLUG_SWITCH`]). Verifying a command (signature, expiry, replay) is the caller's job, with
//! `msec_device::CommandVerifier`; the model only acts on what it is handed.

mod home;
mod park;
mod truck;

pub use home::PLUG_SWITCH;

use msec_envelope::Measurement;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use std::f64::consts::PI;
use std::time::Duration;

/// The pilots that have simulated devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Pilot {
    Park,
    Home,
    Truck,
}

impl std::str::FromStr for Pilot {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "park" => Ok(Pilot::Park),
            "home" => Ok(Pilot::Home),
            "truck" => Ok(Pilot::Truck),
            _ => Err(format!(
                "unknown pilot {s:?}: choose one of park, home, truck"
            )),
        }
    }
}

/// How big a fleet to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Connected Care residents; each has a kit of five devices.
    pub residents: usize,
    /// Garbage trucks in Fujisawa; one sensor box each.
    pub trucks: usize,
    /// Sampling rate of each truck box in Hz. Clamped to (0, 100]: values above 100 become 100,
    /// values at or below 0.01 become 0.01, and NaN becomes 1.
    pub truck_hz: f64,
    /// Seeds every device's noise and every resident's routine. The people counter's salt is
    /// deliberately not derived from it (see `park`).
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

/// Where a device is installed, as registered with the platform.
#[derive(Debug, Clone, Serialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub label: String,
}

/// One simulated device: its registration facts (public) and its model state (private).
///
/// `Debug` prints the public fields only: the people counter's state holds a secret salt and
/// simulated MAC addresses, which must not end up in logs.
#[derive(Clone)]
pub struct SimDevice {
    pub id: String,
    pub tenant: String,
    /// The data subject: the resident of a home kit; the city for public infrastructure.
    pub owner: String,
    pub name: String,
    pub kind: String,
    pub pilot: Pilot,
    pub location: Location,
    /// How often the caller should call [`SimDevice::sample`].
    pub interval: Duration,
    model: Model,
    rng: SmallRng,
    battery: Option<Battery>,
    last_sample: Option<f64>,
}

impl std::fmt::Debug for SimDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimDevice")
            .field("id", &self.id)
            .field("tenant", &self.tenant)
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("pilot", &self.pilot)
            .field("location", &self.location)
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

/// What a device measures, with the state its model needs.
#[derive(Clone)]
enum Model {
    Environment(park::Station),
    // Boxed: the counter carries tables that would bloat every other variant.
    PeopleCounter(Box<park::PeopleCounter>),
    Home(home::Sensor),
    Truck(truck::Truck),
}

/// A battery level in %EL that changes with elapsed time, so that irregular sampling (tests,
/// catch-up after a pause) drains it the same as regular sampling.
#[derive(Debug, Clone)]
struct Battery {
    level: f64,
    /// Percent per day; negative for mains-powered devices whose backup battery is charging.
    drain_per_day: f64,
}

impl Battery {
    fn advance(&mut self, elapsed_s: f64) -> f64 {
        self.level = (self.level - self.drain_per_day * elapsed_s / 86_400.0).min(100.0);
        if self.level < 5.0 {
            // Someone replaces a flat battery; the dashboard sees the jump back to full.
            self.level = 100.0;
        }
        self.level
    }
}

impl SimDevice {
    /// The measurements this device reports at `now` (Unix seconds). Call it every
    /// [`interval`](SimDevice::interval); irregular calls work too, because every model depends
    /// on `now` and on the time elapsed since the previous call, not on the number of calls.
    pub fn sample(&mut self, now: f64) -> Vec<Measurement> {
        let elapsed = self.last_sample.map_or(0.0, |last| (now - last).max(0.0));
        self.last_sample = Some(now);
        let mut out = match &mut self.model {
            Model::Environment(station) => park::environment(station, now, &mut self.rng),
            Model::PeopleCounter(counter) => counter.sample(now, &mut self.rng),
            Model::Home(sensor) => sensor.sample(now, &mut self.rng),
            Model::Truck(truck) => truck.sample(now, &mut self.rng),
        };
        if let Some(battery) = &mut self.battery {
            out.push(number("battery", "%EL", now, battery.advance(elapsed), 1));
        }
        out
    }

    /// The resources an actuator command may set on this device, e.g. [`PLUG_SWITCH`] on a
    /// smart plug; empty for a device that only measures.
    pub fn actuators(&self) -> &'static [&'static str] {
        match &self.model {
            Model::Home(sensor) => sensor.actuators(),
            Model::Environment(_) | Model::PeopleCounter(_) | Model::Truck(_) => &[],
        }
    }

    /// Acts on a command that the caller has already verified (`msec_device::CommandVerifier`):
    /// on a smart plug, [`PLUG_SWITCH`] with a bool value closes (`true`) or opens the relay,
    /// and every later [`sample`](SimDevice::sample) reports it: `on` follows the relay, and an
    /// open relay reports 0 W while voltage and frequency are still measured. The state holds
    /// until the next command. A command for another device, another resource or with another
    /// value type is refused with the reason, and changes nothing.
    pub fn apply_command(&mut self, command: &msec_device::Command) -> Result<(), String> {
        if command.target != self.id {
            return Err(format!(
                "command is for device {:?}, not {:?}",
                command.target, self.id
            ));
        }
        let refused = |e: String| format!("{} ({}): {e}", self.id, self.kind);
        match &mut self.model {
            Model::Home(sensor) => sensor.apply_command(command).map_err(refused),
            Model::Environment(_) | Model::PeopleCounter(_) | Model::Truck(_) => {
                Err(refused(format!(
                    "this device has no actuators, so it cannot set {:?}",
                    command.resource
                )))
            }
        }
    }
}

/// Every pilot's devices: park, then homes, then trucks.
pub fn fleet(cfg: &SimConfig) -> Vec<SimDevice> {
    [Pilot::Park, Pilot::Home, Pilot::Truck]
        .into_iter()
        .flat_map(|p| pilot_fleet(cfg, p))
        .collect()
}

/// One pilot's devices.
pub fn pilot_fleet(cfg: &SimConfig, pilot: Pilot) -> Vec<SimDevice> {
    match pilot {
        Pilot::Park => park::fleet(cfg.seed),
        Pilot::Home => home::fleet(cfg.residents, cfg.seed),
        Pilot::Truck => truck::fleet(cfg.trucks, truck_interval(cfg.truck_hz), cfg.seed),
    }
}

/// Slowest truck rate accepted: one reading every 100 s.
pub const MIN_TRUCK_HZ: f64 = 0.01;
/// Fastest truck rate accepted, the pilot's own maximum.
pub const MAX_TRUCK_HZ: f64 = 100.0;

fn truck_interval(hz: f64) -> Duration {
    let hz = if hz.is_nan() {
        1.0
    } else {
        hz.clamp(MIN_TRUCK_HZ, MAX_TRUCK_HZ)
    };
    Duration::from_secs_f64(1.0 / hz)
}

// ---------------------------------------------------------------------------------------------
// Shared helpers for the models.

/// Santander's offset from UTC in hours (CET). Daylight saving time is ignored: the routines
/// only need to be plausible, and a fixed offset keeps "local midnight" unambiguous.
const SANTANDER_UTC_OFFSET: f64 = 1.0;
/// Fujisawa's offset from UTC in hours (JST, no daylight saving time).
const FUJISAWA_UTC_OFFSET: f64 = 9.0;

/// A moment in a site's local time.
#[derive(Debug, Clone, Copy)]
struct LocalTime {
    /// Hour of the local day, in [0, 24).
    hour: f64,
    /// Local days since 1970-01-01.
    day: i64,
    weekend: bool,
    /// Yearly cycle in [-1, 1]: -1 at the end of January (coldest), 1 at the end of July.
    season: f64,
}

fn local_time(now: f64, utc_offset_hours: f64) -> LocalTime {
    let local = now + utc_offset_hours * 3600.0;
    let day = (local / 86_400.0).floor() as i64;
    let hour = (local - day as f64 * 86_400.0) / 3600.0;
    // 1970-01-01 was a Thursday: with Monday as 0 it is weekday 3.
    let weekday = (day + 3).rem_euclid(7);
    // 365.2425 days is the mean Gregorian year, so the phase never drifts by more than a day.
    let year = (day as f64 / 365.2425).fract();
    let season = -(2.0 * PI * (year - 30.0 / 365.0)).cos();
    LocalTime {
        hour: hour.clamp(0.0, 24.0 - 1e-9),
        day,
        weekend: weekday >= 5,
        season,
    }
}

/// A daily wave in [-1, 1] that peaks at `peak_hour`.
fn daily(hour: f64, peak_hour: f64) -> f64 {
    ((hour - peak_hour) / 24.0 * 2.0 * PI).cos()
}

/// Rush-hour traffic in [0, 1]: peaks at 08:30 and 18:30, half as strong at weekends.
fn rush(t: &LocalTime) -> f64 {
    let bump = |centre: f64, width: f64| (-((t.hour - centre) / width).powi(2)).exp();
    bump(8.5, 1.2).max(bump(18.5, 1.5)) * if t.weekend { 0.5 } else { 1.0 }
}

/// Standard normal noise (Box-Muller); `rand` without `rand_distr` has no normal distribution.
fn gauss(rng: &mut SmallRng) -> f64 {
    let u1 = 1.0 - rng.random::<f64>(); // (0, 1]: ln(0) would be infinite
    let u2 = rng.random::<f64>();
    (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
}

/// A numeric measurement rounded to what a real sensor of its class resolves.
fn number(name: &str, unit: &str, now: f64, value: f64, decimals: i32) -> Measurement {
    let scale = 10f64.powi(decimals);
    Measurement::number(name, unit, now, (value * scale).round() / scale)
}

/// SplitMix64: turns related inputs (seed, index, day) into unrelated 64-bit values.
fn mix(a: u64, b: u64) -> u64 {
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A value in [0, 1) derived from a hash.
fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// Smooth day-to-day variation in [-1, 1] (the weather): one random value per day, blended
/// with a cosine so that readings never jump at midnight. Callers pass the fleet seed XOR a
/// constant of their own, so that unrelated quantities (air temperature, air pressure, grid
/// frequency) get unrelated variations.
fn weather(seed: u64, days: f64) -> f64 {
    let d = days.floor();
    let at = |day: f64| unit(mix(seed, day as i64 as u64)) * 2.0 - 1.0;
    let f = (1.0 - ((days - d) * PI).cos()) / 2.0;
    at(d) * (1.0 - f) + at(d + 1.0) * f
}

/// Each device gets its own noise stream, derived from the fleet seed and its id, so that
/// adding a device does not change the readings of the others.
fn device_rng(seed: u64, id: &str) -> SmallRng {
    let h = id.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01B3)
    });
    SmallRng::seed_from_u64(mix(seed, h))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msec_envelope::Value;
    use std::collections::{HashMap, HashSet};

    /// 2025-06-16 00:00 UTC, a Monday.
    pub(crate) const MONDAY: f64 = 1_750_032_000.0;
    pub(crate) const DAY: f64 = 86_400.0;

    /// Unix time of a local hour on the day that starts at `day_utc` (a UTC midnight).
    pub(crate) fn at_local(day_utc: f64, utc_offset: f64, hour: f64) -> f64 {
        day_utc + (hour - utc_offset) * 3600.0
    }

    /// SenML units (RFC 8428 and its registry) that the pilots use.
    const UNITS: [&str; 21] = [
        "Cel", "%RH", "ppm", "ppb", "dB", "Pa", "W/m2", "m/s2", "rad/s", "T", "ug/m3", "lat",
        "lon", "V", "Hz", "W", "%EL", "%", "count", "s", "m/s",
    ];

    fn valid_name(n: &str) -> bool {
        let mut chars = n.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
    }

    #[test]
    fn fleet_sizes_ids_and_tenants() {
        let cfg = SimConfig {
            residents: 4,
            trucks: 3,
            ..Default::default()
        };
        let all = fleet(&cfg);
        assert_eq!(all.len(), 6 + 4 * 5 + 3);
        assert_eq!(pilot_fleet(&cfg, Pilot::Park).len(), 6);
        assert_eq!(pilot_fleet(&cfg, Pilot::Home).len(), 20);
        assert_eq!(pilot_fleet(&cfg, Pilot::Truck).len(), 3);
        assert_eq!(fleet(&SimConfig::default()).len(), 6 + 15 + 2);
        assert!(pilot_fleet(
            &SimConfig {
                residents: 0,
                trucks: 0,
                ..Default::default()
            },
            Pilot::Home
        )
        .is_empty());
        let ids: HashSet<_> = all.iter().map(|d| d.id.as_str()).collect();
        assert_eq!(ids.len(), all.len(), "ids are unique");
        for id in [
            "park-env-01",
            "park-env-05",
            "park-people-01",
            "home-001-hub",
            "home-004-plug",
            "truck-03",
        ] {
            assert!(ids.contains(id), "{id} missing");
        }
        for d in &all {
            let tenant = if d.pilot == Pilot::Truck {
                "fujisawa"
            } else {
                "santander"
            };
            assert_eq!(d.tenant, tenant, "{}", d.id);
            assert!(!d.name.is_empty() && !d.kind.is_empty() && !d.location.label.is_empty());
        }
        let park = pilot_fleet(&cfg, Pilot::Park);
        let spots: HashSet<_> = park
            .iter()
            .map(|d| (d.location.lat.to_bits(), d.location.lon.to_bits()))
            .collect();
        assert_eq!(spots.len(), 6, "park devices have distinct locations");
        let labels: HashSet<_> = park.iter().map(|d| d.location.label.as_str()).collect();
        assert_eq!(labels.len(), 6, "park devices have distinct labels");
    }

    #[test]
    fn kinds_and_intervals() {
        let cfg = SimConfig {
            residents: 1,
            trucks: 1,
            truck_hz: 4.0,
            ..Default::default()
        };
        let by_id: HashMap<_, _> = fleet(&cfg).into_iter().map(|d| (d.id.clone(), d)).collect();
        let check = |id: &str, kind: &str, secs: f64| {
            let d = &by_id[id];
            assert_eq!(
                (d.kind.as_str(), d.interval.as_secs_f64()),
                (kind, secs),
                "{id}"
            );
        };
        check("park-env-03", "environmental-monitor", 10.0);
        check("park-people-01", "people-counter", 10.0);
        check("home-001-hub", "gateway-hub", 30.0);
        check("home-001-motion", "motion-sensor", 15.0);
        check("home-001-door", "door-sensor", 15.0);
        check("home-001-bed", "bed-sensor", 15.0);
        check("home-001-plug", "smart-plug", 15.0);
        check("truck-01", "truck-sensor-box", 0.25);
    }

    /// Samples every device every 10 minutes for two days and checks what a receiver relies on.
    #[test]
    fn every_measurement_is_well_formed_and_in_range() {
        let cfg = SimConfig {
            residents: 3,
            trucks: 2,
            ..Default::default()
        };
        let ranges: HashMap<&str, (f64, f64)> = [
            ("temperature", (-5.0, 40.0)),
            ("humidity", (10.0, 100.0)),
            ("co2", (380.0, 600.0)),
            ("voc", (0.0, 600.0)),
            ("noise", (25.0, 90.0)),
            ("battery", (0.0, 100.0)),
            ("people", (0.0, 400.0)),
            ("link", (0.0, 100.0)),
            ("voltage", (227.0, 233.0)),
            ("frequency", (49.95, 50.05)),
            ("power", (0.0, 2500.0)),
            ("pressure", (97_000.0, 104_000.0)),
            ("uva", (0.0, 80.0)),
            ("accel-x", (-6.0, 6.0)),
            ("accel-y", (-6.0, 6.0)),
            ("accel-z", (4.0, 16.0)),
            ("gyro-x", (-1.0, 1.0)),
            ("gyro-y", (-1.0, 1.0)),
            ("gyro-z", (-1.0, 1.0)),
            ("mag-x", (-6e-5, 6e-5)),
            ("mag-y", (-6e-5, 6e-5)),
            ("mag-z", (-6e-5, 6e-5)),
            ("pm25", (0.0, 80.0)),
            ("lat", (35.32, 35.36)),
            ("lon", (139.46, 139.51)),
            ("speed", (0.0, 10.0)),
        ]
        .into_iter()
        .collect();
        for mut d in fleet(&cfg) {
            let mut names = HashSet::new();
            for step in 0..288 {
                let now = MONDAY + step as f64 * 600.0;
                for m in d.sample(now) {
                    assert!(valid_name(&m.name), "{}: bad name {:?}", d.id, m.name);
                    assert_eq!(m.time, now);
                    match &m.value {
                        Value::Number(v) => {
                            let unit = m
                                .unit
                                .as_deref()
                                .unwrap_or_else(|| panic!("{}: {} has no unit", d.id, m.name));
                            assert!(
                                UNITS.contains(&unit),
                                "{}: {} has unit {unit}",
                                d.id,
                                m.name
                            );
                            let (lo, hi) = ranges[m.name.as_str()];
                            assert!(
                                v.is_finite() && (lo..=hi).contains(v),
                                "{}: {} = {v}",
                                d.id,
                                m.name
                            );
                        }
                        Value::Bool(_) => assert!(m.unit.is_none()),
                        other => panic!("{}: {} carries {other:?}", d.id, m.name),
                    }
                    names.insert(m.name.clone());
                }
            }
            let expected: &[&str] = match d.kind.as_str() {
                "environmental-monitor" => {
                    &["temperature", "humidity", "co2", "voc", "noise", "battery"]
                }
                "people-counter" => &["people", "battery"],
                "gateway-hub" => &["heartbeat", "battery", "link"],
                "motion-sensor" => &["motion", "battery"],
                "door-sensor" => &["open", "battery"],
                "bed-sensor" => &["occupied", "battery"],
                "smart-plug" => &["voltage", "frequency", "on", "power"],
                _ => &[
                    "temperature",
                    "humidity",
                    "pressure",
                    "uva",
                    "accel-x",
                    "accel-y",
                    "accel-z",
                    "gyro-x",
                    "gyro-y",
                    "gyro-z",
                    "mag-x",
                    "mag-y",
                    "mag-z",
                    "pm25",
                    "lat",
                    "lon",
                    "speed",
                ],
            };
            let expected: HashSet<String> = expected.iter().map(|s| s.to_string()).collect();
            assert_eq!(names, expected, "{}", d.id);
        }
    }

    #[test]
    fn park_temperature_follows_the_day() {
        let mut park = pilot_fleet(&SimConfig::default(), Pilot::Park);
        let mut temp = |d: usize, now: f64| {
            let ms = park[d].sample(now);
            ms.iter()
                .find(|m| m.name == "temperature")
                .and_then(|m| m.as_f64())
                .unwrap()
        };
        let (mut afternoon, mut dawn) = (0.0, 0.0);
        for day in 0..7 {
            for d in 0..5 {
                afternoon += temp(
                    d,
                    at_local(MONDAY + day as f64 * DAY, SANTANDER_UTC_OFFSET, 15.0),
                );
                dawn += temp(
                    d,
                    at_local(MONDAY + day as f64 * DAY, SANTANDER_UTC_OFFSET, 5.0),
                );
            }
        }
        let (afternoon, dawn) = (afternoon / 35.0, dawn / 35.0);
        assert!(
            afternoon > dawn + 4.0,
            "afternoon {afternoon:.1} vs dawn {dawn:.1}"
        );
        // June in Santander: mild.
        assert!(
            (12.0..30.0).contains(&afternoon) && (8.0..22.0).contains(&dawn),
            "{afternoon} {dawn}"
        );
    }

    #[test]
    fn winter_is_colder_than_summer() {
        let mean = |start: f64| {
            let mut d = pilot_fleet(&SimConfig::default(), Pilot::Park).remove(0);
            let n = 14 * 24;
            let sum: f64 = (0..n)
                .map(|i| d.sample(start + i as f64 * 3600.0)[0].as_f64().unwrap())
                .sum();
            sum / n as f64
        };
        let (january, july) = (mean(1_736_899_200.0), mean(MONDAY + 35.0 * DAY));
        assert!(july > january + 6.0, "july {july:.1} january {january:.1}");
    }

    #[test]
    fn truck_rate_is_clamped() {
        let interval = |hz: f64| {
            pilot_fleet(
                &SimConfig {
                    truck_hz: hz,
                    ..Default::default()
                },
                Pilot::Truck,
            )[0]
            .interval
            .as_secs_f64()
        };
        assert_eq!(interval(1.0), 1.0);
        assert_eq!(interval(20.0), 0.05);
        assert_eq!(interval(100.0), 0.01);
        assert_eq!(interval(1000.0), 0.01);
        assert_eq!(interval(f64::INFINITY), 0.01);
        assert_eq!(interval(0.0), 100.0);
        assert_eq!(interval(-5.0), 100.0);
        assert_eq!(interval(f64::NAN), 1.0);
    }

    #[test]
    fn same_seed_same_readings_other_seed_other_readings() {
        let run = |seed: u64| {
            let mut fleet = fleet(&SimConfig {
                seed,
                ..Default::default()
            });
            (0..200)
                .flat_map(|step| {
                    let now = MONDAY + 9.0 * 3600.0 + step as f64 * 97.0;
                    fleet
                        .iter_mut()
                        .flat_map(|d| d.sample(now))
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        };
        let a = run(7);
        assert_eq!(a, run(7));
        assert_ne!(a, run(8));
        let lat = |seed| {
            pilot_fleet(
                &SimConfig {
                    seed,
                    ..Default::default()
                },
                Pilot::Home,
            )[0]
            .location
            .lat
        };
        assert_eq!(lat(7), lat(7));
        assert_ne!(lat(7), lat(8));
    }

    #[test]
    fn adding_devices_does_not_change_the_others() {
        let sample = |residents| {
            let mut homes = pilot_fleet(
                &SimConfig {
                    residents,
                    ..Default::default()
                },
                Pilot::Home,
            );
            (0..50)
                .flat_map(|i| homes[1].sample(MONDAY + i as f64 * 900.0))
                .collect::<Vec<_>>()
        };
        assert_eq!(sample(2), sample(9));
    }

    #[test]
    fn pilot_parses_with_a_helpful_error() {
        assert_eq!("park".parse::<Pilot>(), Ok(Pilot::Park));
        assert_eq!("Home".parse::<Pilot>(), Ok(Pilot::Home));
        assert_eq!(" truck ".parse::<Pilot>(), Ok(Pilot::Truck));
        let err = "bus".parse::<Pilot>().unwrap_err();
        assert!(
            err.contains("bus")
                && err.contains("park")
                && err.contains("home")
                && err.contains("truck"),
            "{err}"
        );
    }

    #[test]
    fn battery_drains_slowly_and_debug_shows_no_state() {
        let mut d = pilot_fleet(&SimConfig::default(), Pilot::Park).remove(0);
        let battery =
            |d: &mut SimDevice, now| d.sample(now).last().and_then(|m| m.as_f64()).unwrap();
        let first = battery(&mut d, MONDAY);
        let week = battery(&mut d, MONDAY + 7.0 * DAY);
        assert!(first > week && first - week < 10.0, "{first} -> {week}");
        let shown = format!("{d:?}");
        assert!(
            shown.contains("park-env-01") && !shown.contains("rng"),
            "{shown}"
        );
    }

    #[test]
    fn local_time_and_weekends() {
        let t = local_time(at_local(MONDAY, 9.0, 13.5), 9.0);
        assert!((t.hour - 13.5).abs() < 1e-9 && !t.weekend);
        assert!(
            local_time(MONDAY + 5.0 * DAY + 3600.0, 1.0).weekend,
            "Saturday"
        );
        assert!(
            !local_time(MONDAY - 3600.0, 1.0).weekend,
            "Sunday 23:00 UTC is Monday 00:00 in Santander"
        );
        assert!(local_time(MONDAY - 3601.0, 1.0).weekend);
        assert!(
            local_time(MONDAY + 40.0 * DAY, 1.0).season > 0.9,
            "late July"
        );
        assert!(
            local_time(1_736_899_200.0 + 15.0 * DAY, 1.0).season < -0.9,
            "end of January"
        );
    }
}
