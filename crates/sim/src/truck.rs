//! Fujisawa garbage trucks: one sensor box per truck (environment, inertial sensors, PM2.5 and
//! GPS), driving a collection loop through the city centre during the working day.
//!
//! Where a truck is, and how fast it goes, is a pure function of the local time of day: the
//! shift starts at the depot, drives each leg of the loop at a steady speed, stops at every
//! collection point, and ends with the last complete lap before 20:00, back at the depot. So
//! positions and reported speeds always agree, and any sampling rate gives the same track.

use crate::{
    daily, device_rng, gauss, local_time, mix, number, rush, unit, weather, LocalTime, Location,
    Model, Pilot, SimDevice, FUJISAWA_UTC_OFFSET,
};
use msec_envelope::Measurement;
use rand::rngs::SmallRng;
use std::f64::consts::PI;
use std::time::Duration;

/// The collection loop, starting and ending at the depot (the first point), about 6 km.
const ROUTE: [(f64, f64); 10] = [
    (35.3420, 139.4960),
    (35.3455, 139.4920),
    (35.3480, 139.4860),
    (35.3460, 139.4790),
    (35.3410, 139.4760),
    (35.3365, 139.4790),
    (35.3340, 139.4850),
    (35.3330, 139.4920),
    (35.3360, 139.4975),
    (35.3395, 139.4990),
];
/// Time spent at each collection point loading bags.
const STOP_S: f64 = 45.0;
const SHIFT_START_S: f64 = 8.0 * 3600.0;
const SHIFT_END_S: f64 = 20.0 * 3600.0;
const METRES_PER_DEGREE: f64 = 111_320.0;
/// Earth's field around Fujisawa: about 46 uT, inclined about 49 degrees downwards.
const FIELD_HORIZONTAL_T: f64 = 3.0e-5;
const FIELD_VERTICAL_T: f64 = 3.5e-5;

pub(crate) fn fleet(trucks: usize, interval: Duration, seed: u64) -> Vec<SimDevice> {
    (1..=trucks)
        .map(|n| {
            let id = format!("truck-{n:02}");
            let legs = (0..ROUTE.len())
                .map(|i| {
                    let (from, to) = (ROUTE[i], ROUTE[(i + 1) % ROUTE.len()]);
                    let (north, east) = offset_m(from, to);
                    // 6.0 to 8.2 m/s: 22 to 30 km/h through town, different for each leg.
                    let speed = 6.0 + 2.2 * unit(mix(mix(seed, n as u64), i as u64));
                    Leg {
                        from,
                        to,
                        metres: north.hypot(east),
                        speed,
                        heading: east.atan2(north),
                    }
                })
                .collect::<Vec<_>>();
            let lap_s = legs.iter().map(|l| l.metres / l.speed + STOP_S).sum();
            // Trucks leave the depot a few minutes apart so that they are not all in one place.
            let start_s = SHIFT_START_S + ((n - 1) % 8) as f64 * 420.0;
            let truck = Truck {
                legs,
                lap_s,
                start_s,
                seed,
            };
            SimDevice {
                rng: device_rng(seed, &id),
                name: format!("Garbage truck {n:02} sensor box"),
                id,
                tenant: "fujisawa".into(),
                owner: "fujisawa".into(),
                kind: "truck-sensor-box".into(),
                pilot: Pilot::Truck,
                location: Location {
                    lat: ROUTE[0].0,
                    lon: ROUTE[0].1,
                    label: "Fujisawa city depot".into(),
                },
                interval,
                model: Model::Truck(truck),
                // Powered by the truck: no battery to report.
                battery: None,
                last_sample: None,
            }
        })
        .collect()
}

/// Metres north and east from `a` to `b`; flat Earth is exact enough over a few kilometres.
fn offset_m(a: (f64, f64), b: (f64, f64)) -> (f64, f64) {
    let north = (b.0 - a.0) * METRES_PER_DEGREE;
    let east = (b.1 - a.1) * METRES_PER_DEGREE * a.0.to_radians().cos();
    (north, east)
}

#[derive(Debug, Clone)]
struct Leg {
    from: (f64, f64),
    to: (f64, f64),
    metres: f64,
    /// m/s
    speed: f64,
    /// Radians clockwise from north.
    heading: f64,
}

#[derive(Debug, Clone)]
pub(crate) struct Truck {
    legs: Vec<Leg>,
    lap_s: f64,
    /// Seconds after local midnight when the shift starts.
    start_s: f64,
    seed: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activity {
    Parked,
    Collecting,
    Driving,
}

#[derive(Debug, Clone, Copy)]
struct Place {
    lat: f64,
    lon: f64,
    speed: f64,
    heading: f64,
    activity: Activity,
}

impl Truck {
    fn place(&self, t: &LocalTime) -> Place {
        let secs = t.hour * 3600.0;
        let laps = ((SHIFT_END_S - self.start_s) / self.lap_s).floor();
        let end = self.start_s + laps * self.lap_s;
        let depot = Place {
            lat: ROUTE[0].0,
            lon: ROUTE[0].1,
            speed: 0.0,
            heading: self.legs.last().map_or(0.0, |l| l.heading),
            activity: Activity::Parked,
        };
        if secs < self.start_s || secs >= end {
            return depot;
        }
        let mut x = (secs - self.start_s).rem_euclid(self.lap_s);
        for leg in &self.legs {
            let drive = leg.metres / leg.speed;
            if x < drive {
                let f = x / drive;
                return Place {
                    lat: leg.from.0 + (leg.to.0 - leg.from.0) * f,
                    lon: leg.from.1 + (leg.to.1 - leg.from.1) * f,
                    speed: leg.speed,
                    heading: leg.heading,
                    activity: Activity::Driving,
                };
            }
            x -= drive;
            if x < STOP_S {
                return Place {
                    lat: leg.to.0,
                    lon: leg.to.1,
                    speed: 0.0,
                    heading: leg.heading,
                    activity: Activity::Collecting,
                };
            }
            x -= STOP_S;
        }
        depot
    }

    pub(crate) fn sample(&mut self, now: f64, rng: &mut SmallRng) -> Vec<Measurement> {
        let t = local_time(now, FUJISAWA_UTC_OFFSET);
        let p = self.place(&t);
        let sky = weather(self.seed ^ 0xF715A, now / 86_400.0);
        let day = daily(t.hour, 14.0);
        // Humid subtropical: hot humid summers, mild dry winters.
        let temperature = 16.3 + 10.5 * t.season + 4.0 * day + 2.0 * sky + 0.1 * gauss(rng);
        let humidity =
            (68.0 - 12.0 * day + 10.0 * t.season - 6.0 * sky + 1.5 * gauss(rng)).clamp(15.0, 100.0);
        let pressure =
            101_325.0 + 600.0 * weather(self.seed ^ 0x9A, now / 86_400.0) + 5.0 * gauss(rng);
        // The box rattles while driving, hums while the compactor runs, and rests when parked.
        let shake = match p.activity {
            Activity::Driving => 0.9,
            Activity::Collecting => 0.3,
            Activity::Parked => 0.02,
        };
        // Exhaust and street dust around a working truck, on top of the city's background.
        let near_traffic = if p.activity == Activity::Parked {
            0.0
        } else {
            2.0
        };
        let pm25 =
            9.0 + 6.0 * rush(&t) + 4.0 * (-t.season).max(0.0) + near_traffic + 1.5 * gauss(rng);
        // GPS noise of a few metres.
        let lat = p.lat + 2.5 * gauss(rng) / METRES_PER_DEGREE;
        let lon = p.lon + 2.5 * gauss(rng) / (METRES_PER_DEGREE * p.lat.to_radians().cos());
        let speed = if p.activity == Activity::Driving {
            (p.speed + 0.3 * gauss(rng)).max(0.0)
        } else {
            0.0
        };
        // Magnetometer axes in the vehicle frame (x forward, y left, z down): the horizontal
        // field turns with the heading.
        let mag_x = FIELD_HORIZONTAL_T * p.heading.cos() + 3e-7 * gauss(rng);
        let mag_y = FIELD_HORIZONTAL_T * p.heading.sin() + 3e-7 * gauss(rng);
        let mag_z = FIELD_VERTICAL_T + 3e-7 * gauss(rng);
        vec![
            number("temperature", "Cel", now, temperature, 2),
            number("humidity", "%RH", now, humidity, 1),
            number("pressure", "Pa", now, pressure, 1),
            number("uva", "W/m2", now, uva(&t, sky), 2),
            number("accel-x", "m/s2", now, shake * gauss(rng), 3),
            number("accel-y", "m/s2", now, shake * gauss(rng), 3),
            number("accel-z", "m/s2", now, 9.81 + shake * gauss(rng), 3),
            number("gyro-x", "rad/s", now, 0.05 * shake * gauss(rng), 4),
            number("gyro-y", "rad/s", now, 0.05 * shake * gauss(rng), 4),
            number("gyro-z", "rad/s", now, 0.05 * shake * gauss(rng), 4),
            // 10 nT resolution, as common MEMS magnetometers.
            number("mag-x", "T", now, mag_x, 8),
            number("mag-y", "T", now, mag_y, 8),
            number("mag-z", "T", now, mag_z, 8),
            number("pm25", "ug/m3", now, pm25.max(1.0), 1),
            number("lat", "lat", now, lat, 6),
            number("lon", "lon", now, lon, 6),
            number("speed", "m/s", now, speed, 2),
        ]
    }
}

/// UV-A irradiance: zero from sunset to sunrise, peaking at solar noon (about 11:42 JST in
/// Fujisawa), higher and longer in summer, lower under clouds.
fn uva(t: &LocalTime, sky: f64) -> f64 {
    let half_day = 6.07 + 1.17 * t.season;
    let x = (t.hour - (11.7 - half_day)) / (2.0 * half_day);
    if !(0.0..1.0).contains(&x) {
        return 0.0;
    }
    let peak = 35.0 + 15.0 * t.season;
    peak * (PI * x).sin().powf(1.5) * (0.75 + 0.25 * sky)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::{at_local, DAY, MONDAY};
    use crate::{pilot_fleet, SimConfig};

    fn trucks(n: usize) -> Vec<SimDevice> {
        pilot_fleet(
            &SimConfig {
                trucks: n,
                ..Default::default()
            },
            Pilot::Truck,
        )
    }

    fn model(d: &SimDevice) -> &Truck {
        match &d.model {
            Model::Truck(t) => t,
            _ => panic!("not a truck"),
        }
    }

    fn value(ms: &[Measurement], name: &str) -> f64 {
        ms.iter()
            .find(|m| m.name == name)
            .and_then(|m| m.as_f64())
            .unwrap()
    }

    fn distance_m(a: (f64, f64), b: (f64, f64)) -> f64 {
        let (n, e) = offset_m(a, b);
        n.hypot(e)
    }

    #[test]
    fn parked_at_the_depot_outside_working_hours() {
        let mut t = trucks(1).remove(0);
        let depot = (t.location.lat, t.location.lon);
        for hour in [0.0, 3.0, 7.9, 20.5, 23.5] {
            let ms = t.sample(at_local(MONDAY, FUJISAWA_UTC_OFFSET, hour));
            assert_eq!(value(&ms, "speed"), 0.0, "{hour}h");
            assert!(
                distance_m(depot, (value(&ms, "lat"), value(&ms, "lon"))) < 20.0,
                "{hour}h"
            );
            assert!(
                value(&ms, "accel-x").abs() < 0.2,
                "parked trucks do not shake"
            );
        }
    }

    #[test]
    fn drives_the_loop_at_town_speeds_during_the_day() {
        let mut t = trucks(1).remove(0);
        let depot = (t.location.lat, t.location.lon);
        let (mut driving, mut far) = (Vec::new(), 0.0f64);
        for i in 0..3600 {
            let ms = t.sample(at_local(MONDAY, FUJISAWA_UTC_OFFSET, 10.0) + i as f64 * 7.0);
            let speed = value(&ms, "speed");
            if speed > 0.0 {
                driving.push(speed);
            }
            far = far.max(distance_m(depot, (value(&ms, "lat"), value(&ms, "lon"))));
        }
        let mean = driving.iter().sum::<f64>() / driving.len() as f64;
        assert!(
            (20.0 / 3.6..30.0 / 3.6).contains(&mean),
            "mean speed {mean} m/s"
        );
        assert!(
            driving.len() > 3600 / 2,
            "mostly driving, sometimes collecting"
        );
        assert!(far > 800.0, "the loop leaves the depot ({far} m)");
    }

    #[test]
    fn position_and_speed_agree() {
        let t = trucks(2).remove(1);
        let truck = model(&t);
        let start = at_local(MONDAY, FUJISAWA_UTC_OFFSET, 11.0);
        let mut checked = 0;
        for i in 0..500 {
            let (a, b) = (start + i as f64 * 13.0, start + i as f64 * 13.0 + 2.0);
            let (pa, pb) = (
                truck.place(&local_time(a, FUJISAWA_UTC_OFFSET)),
                truck.place(&local_time(b, FUJISAWA_UTC_OFFSET)),
            );
            if pa.activity == Activity::Driving
                && pb.activity == Activity::Driving
                && pa.heading == pb.heading
            {
                let moved = distance_m((pa.lat, pa.lon), (pb.lat, pb.lon));
                assert!(
                    (moved / 2.0 - pa.speed).abs() < 0.05,
                    "moved {moved} m in 2 s at {} m/s",
                    pa.speed
                );
                checked += 1;
            }
        }
        assert!(checked > 300);
    }

    #[test]
    fn the_shift_ends_back_at_the_depot() {
        for t in trucks(3) {
            let truck = model(&t);
            let laps = ((SHIFT_END_S - truck.start_s) / truck.lap_s).floor();
            let end = truck.start_s + laps * truck.lap_s;
            assert!(laps >= 20.0 && end <= SHIFT_END_S);
            let p = truck.place(&local_time(
                at_local(MONDAY, FUJISAWA_UTC_OFFSET, (end - 5.0) / 3600.0),
                9.0,
            ));
            assert_eq!(
                (p.lat, p.lon, p.activity),
                (ROUTE[0].0, ROUTE[0].1, Activity::Collecting)
            );
            let p = truck.place(&local_time(
                at_local(MONDAY, FUJISAWA_UTC_OFFSET, (end + 5.0) / 3600.0),
                9.0,
            ));
            assert_eq!(p.activity, Activity::Parked);
        }
    }

    #[test]
    fn uva_only_by_day_and_the_magnetic_field_is_earths() {
        let mut t = trucks(1).remove(0);
        for day in 0..3 {
            let base = MONDAY + day as f64 * DAY;
            let night = t.sample(at_local(base, FUJISAWA_UTC_OFFSET, 2.0));
            let noon = t.sample(at_local(base, FUJISAWA_UTC_OFFSET, 12.0));
            assert_eq!(value(&night, "uva"), 0.0);
            assert!(value(&noon, "uva") > 15.0);
            for ms in [&night, &noon] {
                let field = (value(ms, "mag-x").powi(2)
                    + value(ms, "mag-y").powi(2)
                    + value(ms, "mag-z").powi(2))
                .sqrt();
                assert!((3e-5..5e-5).contains(&field), "{field}");
            }
        }
    }

    #[test]
    fn trucks_start_apart_and_differ() {
        let fleet = trucks(3);
        let noon = local_time(at_local(MONDAY, FUJISAWA_UTC_OFFSET, 8.3), 9.0);
        let places: Vec<_> = fleet.iter().map(|t| model(t).place(&noon)).collect();
        assert!(
            distance_m(
                (places[0].lat, places[0].lon),
                (places[1].lat, places[1].lon)
            ) > 100.0
        );
        assert!(fleet
            .iter()
            .all(|t| t.location.label == "Fujisawa city depot"));
    }
}
