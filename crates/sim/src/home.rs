//! Connected Care home kits in Santander: a gateway hub, a motion sensor, a door sensor, a bed
//! sensor and a smart plug per resident.
//!
//! The five devices of a home must tell one coherent story (the alert rules combine them: "left
//! bed at night and did not return"), so the resident's day is a [`Routine`] computed from the
//! fleet seed, the home number and the local day alone. Every device of the home derives the
//! same routine without sharing state, and only its sensor noise comes from its own stream.

use crate::{
    device_rng, gauss, local_time, mix, number, weather, Battery, Location, Model, Pilot,
    SimDevice, SANTANDER_UTC_OFFSET,
};
use msec_device::{Command, CommandValue};
use msec_envelope::Measurement;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::time::Duration;

/// The smart plug's relay: a command with a bool value switches it on (`true`) or off.
pub const PLUG_SWITCH: &str = "plug/switch";

#[derive(Debug, Clone, Copy)]
enum Part {
    Hub,
    Motion,
    Door,
    Bed,
    Plug,
}

/// One device of a resident's kit: part, id suffix, kind, name, sampling interval in seconds,
/// battery drain in %/day (`None`: no battery).
type KitPart = (
    Part,
    &'static str,
    &'static str,
    &'static str,
    u64,
    Option<f64>,
);

/// The hub is mains powered and keeps its backup battery charged (negative drain); the plug is
/// in the wall and has no battery to report.
#[rustfmt::skip]
const KIT: [KitPart; 5] = [
    (Part::Hub,    "hub",    "gateway-hub",   "Gateway hub",                30, Some(-5.0)),
    (Part::Motion, "motion", "motion-sensor", "Motion sensor, hallway",     15, Some(0.15)),
    (Part::Door,   "door",   "door-sensor",   "Front door sensor",          15, Some(0.1)),
    (Part::Bed,    "bed",    "bed-sensor",    "Bed occupancy sensor",       15, Some(0.1)),
    (Part::Plug,   "plug",   "smart-plug",    "Smart plug, kitchen and TV", 15, None),
];

pub(crate) fn fleet(residents: usize, seed: u64) -> Vec<SimDevice> {
    (1..=residents)
        .flat_map(|home| {
            let prefix = format!("home-{home:03}");
            // Homes scattered over central Santander, from the seed so that a fleet is stable.
            let mut place = SmallRng::seed_from_u64(mix(seed ^ 0x4803E, home as u64));
            let location = Location {
                lat: place.random_range(43.456..43.474),
                lon: place.random_range(-3.835..-3.790),
                label: format!("Home {home:03}"),
            };
            KIT.iter()
                .map(move |&(part, suffix, kind, name, secs, drain)| {
                    let id = format!("{prefix}-{suffix}");
                    let mut rng = device_rng(seed, &id);
                    let battery = drain.map(|drain_per_day| Battery {
                        level: rng.random_range(40.0..100.0),
                        drain_per_day,
                    });
                    SimDevice {
                        id,
                        tenant: "santander".into(),
                        owner: format!("resident-{home:03}"),
                        name: format!("{name}, home {home:03}"),
                        kind: kind.into(),
                        pilot: Pilot::Home,
                        location: location.clone(),
                        interval: Duration::from_secs(secs),
                        model: Model::Home(Sensor {
                            part,
                            home,
                            seed,
                            routine: None,
                            relay: None,
                        }),
                        rng,
                        battery,
                        last_sample: None,
                    }
                })
        })
        .collect()
}

/// One device of a home kit, with the routine of the day it last sampled.
#[derive(Debug, Clone)]
pub(crate) struct Sensor {
    part: Part,
    home: usize,
    seed: u64,
    routine: Option<(i64, Routine)>,
    /// The smart plug's relay as last commanded (`true` closed, `false` open). `None` until the
    /// first command: the resident then works the plug by hand, on while an appliance runs.
    relay: Option<bool>,
}

impl Sensor {
    /// The resources a command may set on this device.
    pub(crate) fn actuators(&self) -> &'static [&'static str] {
        match self.part {
            Part::Plug => &[PLUG_SWITCH],
            Part::Hub | Part::Motion | Part::Door | Part::Bed => &[],
        }
    }

    /// Applies a (verified) command, or explains why it cannot, changing nothing.
    pub(crate) fn apply_command(&mut self, command: &Command) -> Result<(), String> {
        match (self.part, command.resource.as_str(), &command.value) {
            (Part::Plug, PLUG_SWITCH, CommandValue::Bool(on)) => {
                self.relay = Some(*on);
                Ok(())
            }
            (Part::Plug, PLUG_SWITCH, other) => Err(format!(
                "{PLUG_SWITCH} takes a bool (true for on, false for off), not {other:?}"
            )),
            (Part::Plug, resource, _) => Err(format!(
                "a smart plug has no resource {resource:?}; it accepts only {PLUG_SWITCH:?}"
            )),
            (Part::Hub | Part::Motion | Part::Door | Part::Bed, resource, _) => Err(format!(
                "this device has no actuators, so it cannot set {resource:?}"
            )),
        }
    }

    pub(crate) fn sample(&mut self, now: f64, rng: &mut SmallRng) -> Vec<Measurement> {
        let t = local_time(now, SANTANDER_UTC_OFFSET);
        if self.routine.as_ref().is_none_or(|(day, _)| *day != t.day) {
            self.routine = Some((t.day, Routine::for_day(self.seed, self.home, t.day)));
        }
        let Some((_, r)) = &self.routine else {
            return Vec::new();
        };
        let h = t.hour;
        match self.part {
            Part::Hub => vec![
                Measurement::boolean("heartbeat", now, true),
                number(
                    "link",
                    "%",
                    now,
                    (88.0 + 4.0 * gauss(rng)).clamp(40.0, 100.0),
                    0,
                ),
            ],
            // A passive infrared sensor sees the resident only some of the time they are up.
            Part::Motion => {
                let p = if r.door_open(h) || r.in_trip(h) {
                    0.9
                } else if r.out(h) || r.in_bed(h) {
                    0.0
                } else {
                    0.4
                };
                vec![Measurement::boolean("motion", now, rng.random_bool(p))]
            }
            Part::Door => vec![Measurement::boolean("open", now, r.door_open(h))],
            Part::Bed => vec![Measurement::boolean("occupied", now, r.in_bed(h))],
            Part::Plug => {
                // What the appliances would draw; the noise is drawn whatever the relay does, so
                // that switching the plug does not shift the rest of the device's noise stream.
                let demand = match r.appliance(h) {
                    Appliance::Cooker => 1000.0 + 120.0 * gauss(rng),
                    Appliance::Tv => 95.0 + 6.0 * gauss(rng),
                    Appliance::Off => 0.0,
                };
                // A commanded relay decides; before any command the resident switches by hand.
                // An open relay cuts the load, but the plug still measures the grid.
                let on = self.relay.unwrap_or(demand > 0.0);
                let load = if on { demand.max(0.0) } else { 0.0 };
                // Every home is on the same grid, so voltage and frequency drift together; a
                // cooker pulls the voltage at the socket down a little.
                let grid = weather(self.seed ^ 0x6121D, now / 600.0);
                let voltage = 230.0 + 1.5 * grid - 1.5 * load / 1000.0 + 0.3 * gauss(rng);
                let frequency =
                    50.0 + 0.03 * weather(self.seed ^ 0xF4E0, now / 120.0) + 0.004 * gauss(rng);
                vec![
                    number("voltage", "V", now, voltage.clamp(227.0, 233.0), 1),
                    number("frequency", "Hz", now, frequency.clamp(49.95, 50.05), 3),
                    Measurement::boolean("on", now, on),
                    number("power", "W", now, load, 1),
                ]
            }
        }
    }
}

enum Appliance {
    Cooker,
    Tv,
    Off,
}

/// A resident's day, in local hours (0..24). Intervals are half-open: `[start, end)`.
#[derive(Debug, Clone)]
pub(crate) struct Routine {
    wake: f64,
    bed: f64,
    /// A trip to the bathroom at night, on about half of the nights.
    trip: Option<(f64, f64)>,
    /// An afternoon nap in bed, on some days.
    nap: Option<(f64, f64)>,
    /// Times away from home (shopping, a walk).
    outings: Vec<(f64, f64)>,
    /// Times the front door stands open: leaving, coming back, the post, a neighbour.
    door: Vec<(f64, f64)>,
    /// Breakfast, lunch and dinner being cooked.
    meals: Vec<(f64, f64)>,
    /// Evening television.
    tv: (f64, f64),
}

fn within(h: f64, (start, end): (f64, f64)) -> bool {
    (start..end).contains(&h)
}

impl Routine {
    pub(crate) fn for_day(seed: u64, home: usize, day: i64) -> Routine {
        let mut rng = SmallRng::seed_from_u64(mix(mix(seed, home as u64), day as u64));
        let rng = &mut rng;
        let wake = rng.random_range(6.75..8.0);
        let bed = rng.random_range(22.75..23.75);
        let trip = rng
            .random_bool(0.5)
            .then(|| span(rng, 1.0..5.0, 3.0 / 60.0..12.0 / 60.0));
        let breakfast = span(rng, wake + 0.2..wake + 0.5, 0.25..0.5);
        let lunch = span(rng, 13.0..13.75, 0.5..0.9);
        let dinner = span(rng, 20.0..20.5, 0.4..0.7);
        let tv = (
            dinner.1 + rng.random_range(0.1..0.4),
            bed - rng.random_range(0.1..0.3),
        );
        // Spanish siesta: a nap after lunch on some days, over before the afternoon outing.
        let nap = rng
            .random_bool(0.3)
            .then(|| span(rng, 15.0..15.5, 0.3..0.75));
        let mut outings = Vec::new();
        if rng.random_bool(0.8) {
            outings.push(span(rng, 9.5..11.0, 0.5..1.5));
        }
        if rng.random_bool(0.5) {
            outings.push(span(rng, 16.5..18.0, 0.5..1.5));
        }
        let mut door = Vec::new();
        let mut open_at =
            |rng: &mut SmallRng, h: f64| door.push((h, h + rng.random_range(30.0..75.0) / 3600.0));
        for &(leave, back) in &outings {
            open_at(rng, leave);
            open_at(rng, back);
        }
        // The post, a neighbour or a carer: only if someone is home, and up, to open the door.
        for _ in 0..rng.random_range(0..=2) {
            let h = rng.random_range(9.0..19.0);
            if !outings.iter().chain(&nap).any(|o| within(h, *o)) {
                open_at(rng, h);
            }
        }
        Routine {
            wake,
            bed,
            trip,
            nap,
            outings,
            door,
            meals: vec![breakfast, lunch, dinner],
            tv,
        }
    }

    fn in_trip(&self, h: f64) -> bool {
        self.trip.is_some_and(|t| within(h, t))
    }

    fn in_bed(&self, h: f64) -> bool {
        let asleep = h < self.wake || h >= self.bed || self.nap.is_some_and(|n| within(h, n));
        asleep && !self.in_trip(h)
    }

    fn out(&self, h: f64) -> bool {
        self.outings.iter().any(|o| within(h, *o))
    }

    fn door_open(&self, h: f64) -> bool {
        self.door.iter().any(|d| within(h, *d))
    }

    fn appliance(&self, h: f64) -> Appliance {
        if self.meals.iter().any(|m| within(h, *m)) {
            Appliance::Cooker
        } else if within(h, self.tv) {
            Appliance::Tv
        } else {
            Appliance::Off
        }
    }
}

/// An interval starting somewhere in `start`, lasting somewhere in `length` (hours).
fn span(
    rng: &mut SmallRng,
    start: std::ops::Range<f64>,
    length: std::ops::Range<f64>,
) -> (f64, f64) {
    let s = rng.random_range(start);
    (s, s + rng.random_range(length))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{at_local, DAY, MONDAY};
    use crate::{pilot_fleet, SimConfig};

    trait WithTarget {
        fn with_target(self, target: &str) -> Self;
    }
    impl WithTarget for Command {
        fn with_target(mut self, target: &str) -> Self {
            self.target = target.into();
            self
        }
    }

    /// One home's five devices sampled together every 15 s for a week, as (local hour, device
    /// index, measurements).
    fn week_of_home(home: usize) -> Vec<(f64, Vec<Vec<Measurement>>)> {
        let mut kit: Vec<SimDevice> = pilot_fleet(
            &SimConfig {
                residents: home,
                ..Default::default()
            },
            Pilot::Home,
        )
        .into_iter()
        .filter(|d| d.id.starts_with(&format!("home-{home:03}-")))
        .collect();
        assert_eq!(kit.len(), 5);
        let start = at_local(MONDAY, SANTANDER_UTC_OFFSET, 0.0);
        (0..7 * 24 * 240)
            .map(|i| {
                let now = start + i as f64 * 15.0;
                (
                    local_time(now, SANTANDER_UTC_OFFSET).hour,
                    kit.iter_mut().map(|d| d.sample(now)).collect(),
                )
            })
            .collect()
    }

    fn flag(ms: &[Measurement], name: &str) -> bool {
        match ms.iter().find(|m| m.name == name).map(|m| &m.value) {
            Some(msec_envelope::Value::Bool(b)) => *b,
            other => panic!("{name}: {other:?}"),
        }
    }

    /// Share of samples in the hour range where `name` of device `dev` is true.
    fn share(
        week: &[(f64, Vec<Vec<Measurement>>)],
        dev: usize,
        name: &str,
        hours: std::ops::Range<f64>,
    ) -> f64 {
        let hits: Vec<bool> = week
            .iter()
            .filter(|(h, _)| hours.contains(h))
            .map(|(_, ms)| flag(&ms[dev], name))
            .collect();
        hits.iter().filter(|b| **b).count() as f64 / hits.len() as f64
    }

    #[test]
    fn daily_routine_is_plausible() {
        for home in [1, 2, 3] {
            let week = week_of_home(home);
            let (motion, door, bed, plug) = (1, 2, 3, 4);
            assert!(
                share(&week, bed, "occupied", 0.0..6.5) > 0.95,
                "home {home}: asleep at night"
            );
            assert!(
                share(&week, bed, "occupied", 9.0..12.0) == 0.0,
                "home {home}: up in the morning"
            );
            assert!(
                share(&week, motion, "motion", 9.0..21.0) > 0.15,
                "home {home}: moves by day"
            );
            assert!(
                share(&week, motion, "motion", 0.0..6.0) < 0.02,
                "home {home}: still at night"
            );
            assert_eq!(
                share(&week, door, "open", 0.0..6.0),
                0.0,
                "home {home}: door shut at night"
            );
            assert_eq!(
                share(&week, plug, "on", 2.0..5.0),
                0.0,
                "home {home}: plug off at night"
            );
            assert!(
                share(&week, plug, "on", 20.0..22.5) > 0.5,
                "home {home}: dinner and TV"
            );
            // Door openings: a few a day, counted as closed-to-open transitions.
            let opened = week
                .windows(2)
                .filter(|w| !flag(&w[0].1[door], "open") && flag(&w[1].1[door], "open"))
                .count();
            assert!(
                (5..=60).contains(&opened),
                "home {home}: door opened {opened} times in a week"
            );
            // Devices agree: in bed means no motion in the hallway, a cooker means high power.
            for (_, ms) in &week {
                if flag(&ms[bed], "occupied") {
                    assert!(!flag(&ms[motion], "motion"));
                }
                let power = ms[plug]
                    .iter()
                    .find(|m| m.name == "power")
                    .and_then(|m| m.as_f64())
                    .unwrap();
                assert_eq!(flag(&ms[plug], "on"), power > 0.0);
            }
        }
    }

    #[test]
    fn some_nights_have_a_bathroom_trip_with_motion() {
        let nights_with_trip = (0..30)
            .filter(|day| Routine::for_day(2018, 1, *day).trip.is_some())
            .count();
        assert!(
            (5..=25).contains(&nights_with_trip),
            "{nights_with_trip} of 30"
        );
        let week = week_of_home(1);
        let up_at_night: Vec<_> = week
            .iter()
            .filter(|(h, ms)| (1.0..5.0).contains(h) && !flag(&ms[3], "occupied"))
            .collect();
        assert!(
            !up_at_night.is_empty(),
            "a week without a single night trip"
        );
        assert!(up_at_night.iter().any(|(_, ms)| flag(&ms[1], "motion")));
    }

    #[test]
    fn routines_differ_by_home_and_day_but_not_by_device() {
        let a = Routine::for_day(7, 1, 20_000);
        assert_ne!(a.wake, Routine::for_day(7, 2, 20_000).wake);
        assert_ne!(a.wake, Routine::for_day(7, 1, 20_001).wake);
        assert_eq!(a.wake, Routine::for_day(7, 1, 20_000).wake);
        let homes = pilot_fleet(
            &SimConfig {
                residents: 2,
                ..Default::default()
            },
            Pilot::Home,
        );
        assert!(homes[..5].iter().all(|d| d.location.label == "Home 001"));
        assert_ne!(homes[0].location.lat, homes[5].location.lat);
        assert!(homes
            .iter()
            .all(|d| (43.45..43.48).contains(&d.location.lat)
                && (-3.84..-3.78).contains(&d.location.lon)));
    }

    fn kit_device(suffix: &str) -> SimDevice {
        pilot_fleet(&SimConfig::default(), Pilot::Home)
            .into_iter()
            .find(|d| d.id == format!("home-001-{suffix}"))
            .unwrap()
    }

    fn command(target: &str, resource: &str, value: CommandValue) -> Command {
        Command {
            target: target.into(),
            resource: resource.into(),
            value,
            command_id: 1,
            issued_at: 1_750_000_000,
            expires_at: 1_750_000_060,
        }
    }

    fn switch(on: bool) -> Command {
        command("home-001-plug", PLUG_SWITCH, CommandValue::Bool(on))
    }

    fn number_of(ms: &[Measurement], name: &str) -> f64 {
        ms.iter()
            .find(|m| m.name == name)
            .and_then(|m| m.as_f64())
            .unwrap_or_else(|| panic!("{name} missing from {ms:?}"))
    }

    /// Times (every 5 minutes over a day) at which the uncommanded plug reports on, and off.
    fn on_and_off_times(plug: &SimDevice) -> (Vec<f64>, Vec<f64>) {
        let mut probe = plug.clone();
        (0..288)
            .map(|i| MONDAY + i as f64 * 300.0)
            .partition(|now| flag(&probe.sample(*now), "on"))
    }

    #[test]
    fn only_the_plug_has_an_actuator() {
        for d in pilot_fleet(&SimConfig::default(), crate::Pilot::Home) {
            let expected: &[&str] = if d.kind == "smart-plug" {
                &["plug/switch"]
            } else {
                &[]
            };
            assert_eq!(d.actuators(), expected, "{}", d.id);
        }
        for pilot in [crate::Pilot::Park, crate::Pilot::Truck] {
            assert!(pilot_fleet(&SimConfig::default(), pilot)
                .iter()
                .all(|d| d.actuators().is_empty()));
        }
    }

    #[test]
    fn switching_the_plug_off_cuts_the_load_but_not_the_grid_readings() {
        let plug = kit_device("plug");
        let (on_times, off_times) = on_and_off_times(&plug);
        assert!(!on_times.is_empty() && !off_times.is_empty());
        let mut switched = plug.clone();
        switched.apply_command(&switch(false)).unwrap();
        for now in on_times.iter().chain(&off_times) {
            let ms = switched.sample(*now);
            assert!(!flag(&ms, "on"), "at {now}");
            assert_eq!(number_of(&ms, "power"), 0.0, "at {now}");
            assert!((227.0..=233.0).contains(&number_of(&ms, "voltage")));
            assert!((49.95..=50.05).contains(&number_of(&ms, "frequency")));
        }
        // Switched back on, the appliances draw power again when the routine runs them, and the
        // relay reports closed even when nothing draws.
        switched.apply_command(&switch(true)).unwrap();
        for now in &on_times {
            let ms = switched.sample(*now);
            assert!(flag(&ms, "on") && number_of(&ms, "power") > 0.0, "at {now}");
        }
        for now in &off_times {
            let ms = switched.sample(*now);
            assert!(
                flag(&ms, "on") && number_of(&ms, "power") == 0.0,
                "at {now}"
            );
        }
        // The state holds across days until the next command.
        assert!(flag(&switched.sample(MONDAY + 3.0 * DAY), "on"));
    }

    #[test]
    fn switching_keeps_the_noise_stream() {
        let plug = kit_device("plug");
        let (mut free, mut switched) = (plug.clone(), plug);
        switched.apply_command(&switch(false)).unwrap();
        for i in 0..500 {
            let now = MONDAY + i as f64 * 173.0;
            let (a, b) = (free.sample(now), switched.sample(now));
            assert_eq!(number_of(&a, "frequency"), number_of(&b, "frequency"));
        }
    }

    #[test]
    fn commands_the_device_cannot_act_on_change_nothing() {
        let plug = kit_device("plug");
        let (on_times, _) = on_and_off_times(&plug);
        let refused = [
            (
                "home-001-plug",
                command("home-001-plug", PLUG_SWITCH, CommandValue::Integer(0)),
                "takes a bool",
            ),
            (
                "home-001-plug",
                command(
                    "home-001-plug",
                    PLUG_SWITCH,
                    CommandValue::Text("off".into()),
                ),
                "takes a bool",
            ),
            (
                "home-001-plug",
                command("home-001-plug", "plug/dimmer", CommandValue::Bool(false)),
                "no resource",
            ),
            (
                "home-001-plug",
                switch(false).with_target("home-002-plug"),
                "not",
            ),
            (
                "home-001-hub",
                command("home-001-hub", PLUG_SWITCH, CommandValue::Bool(false)),
                "no actuators",
            ),
            (
                "home-001-bed",
                command("home-001-bed", PLUG_SWITCH, CommandValue::Bool(false)),
                "no actuators",
            ),
        ];
        for (id, cmd, why) in refused {
            let mut d = kit_device(id.trim_start_matches("home-001-"));
            let untouched = d.clone();
            let err = d.apply_command(&cmd).unwrap_err();
            assert!(err.contains(why), "{id}: {err}");
            let times = if id.ends_with("plug") {
                &on_times
            } else {
                &on_times[..3]
            };
            let (mut a, mut b) = (d, untouched);
            for now in times {
                assert_eq!(a.sample(*now), b.sample(*now), "{id} changed by {cmd:?}");
            }
        }
        for pilot in [crate::Pilot::Park, crate::Pilot::Truck] {
            for mut d in pilot_fleet(&SimConfig::default(), pilot) {
                let cmd = command(&d.id, PLUG_SWITCH, CommandValue::Bool(false));
                let err = d.apply_command(&cmd).unwrap_err();
                assert!(err.contains("no actuators") && err.contains(&d.id), "{err}");
            }
        }
    }

    #[test]
    fn hub_reports_heartbeat_link_and_a_charged_battery() {
        let mut hub = pilot_fleet(&SimConfig::default(), Pilot::Home).remove(0);
        assert_eq!(hub.kind, "gateway-hub");
        let ms = hub.sample(MONDAY);
        assert!(flag(&ms, "heartbeat"));
        let ms = hub.sample(MONDAY + 10.0 * DAY);
        assert_eq!(
            ms.iter()
                .find(|m| m.name == "battery")
                .and_then(|m| m.as_f64()),
            Some(100.0)
        );
    }
}
