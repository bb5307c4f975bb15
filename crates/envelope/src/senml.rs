//! SenML (RFC 8428) in its CBOR representation: the encoder devices use and a strict decoder
//! that resolves base fields into self-contained measurements.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD as B64, Engine};
use coset::cbor::value::Value as Cbor;
use serde::{Deserialize, Serialize};

/// Most records accepted in one pack.
pub const MAX_RECORDS: usize = 1024;
/// Longest resolved name accepted, in bytes.
pub const MAX_NAME_BYTES: usize = 255;
/// Longest unit accepted, in bytes. Registered SenML units are a few characters; a base unit
/// is copied into every record, so an unbounded one would let one envelope resolve into a
/// thousand copies of itself.
pub const MAX_UNIT_BYTES: usize = 32;
/// SenML: times below 2^28 are relative to "now" (RFC 8428 section 4.5.3).
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;
/// How far after its envelope's `iat` a record's resolved time may lie, in seconds.
pub const MAX_TIME_AFTER_SIGNING: f64 = 300.0;

// CBOR labels from RFC 8428 section 6.
const BVER: i64 = -1;
const BN: i64 = -2;
const BT: i64 = -3;
const BU: i64 = -4;
const BV: i64 = -5;
const BS: i64 = -6;
const N: i64 = 0;
const U: i64 = 1;
const V: i64 = 2;
const VS: i64 = 3;
const VB: i64 = 4;
const S: i64 = 5;
const T: i64 = 6;
const UT: i64 = 7;
const VD: i64 = 8;

/// One resolved SenML record: absolute name and time, its unit and one value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Measurement {
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "u", skip_serializing_if = "Option::is_none", default)]
    pub unit: Option<String>,
    /// Seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub time: f64,
    #[serde(flatten)]
    pub value: Value,
}

/// A SenML value. Serialises as the SenML JSON field that carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    #[serde(rename = "v")]
    Number(f64),
    #[serde(rename = "s")]
    Sum(f64),
    #[serde(rename = "vb")]
    Bool(bool),
    #[serde(rename = "vs")]
    String(String),
    /// Raw bytes, written base64url without padding in JSON as RFC 8428 prescribes.
    #[serde(rename = "vd")]
    Data(String),
}

impl Measurement {
    pub fn number(name: &str, unit: &str, time: f64, value: f64) -> Self {
        Measurement {
            name: name.into(),
            unit: Some(unit.into()),
            time,
            value: Value::Number(value),
        }
    }
    pub fn boolean(name: &str, time: f64, value: bool) -> Self {
        Measurement {
            name: name.into(),
            unit: None,
            time,
            value: Value::Bool(value),
        }
    }
    pub fn text(name: &str, time: f64, value: &str) -> Self {
        Measurement {
            name: name.into(),
            unit: None,
            time,
            value: Value::String(value.into()),
        }
    }
    /// The numeric value, if the record has one (value or sum).
    pub fn as_f64(&self) -> Option<f64> {
        match self.value {
            Value::Number(v) | Value::Sum(v) => Some(v),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SenmlError {
    #[error("not CBOR: {0}")]
    NotCbor(String),
    #[error("a SenML pack must be a non-empty array of at most {MAX_RECORDS} maps")]
    NotAPack,
    #[error("record {0}: {1}")]
    Record(usize, String),
}

fn int(i: i64) -> Cbor {
    Cbor::Integer(i.into())
}

/// Encodes measurements as a SenML CBOR pack, one self-contained record each. Fails only on a
/// data value that is not base64url without padding.
pub fn encode(measurements: &[Measurement]) -> Result<Vec<u8>, SenmlError> {
    let pack = measurements
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut rec = vec![(int(N), Cbor::Text(m.name.clone()))];
            if let Some(u) = &m.unit {
                rec.push((int(U), Cbor::Text(u.clone())));
            }
            rec.push((int(T), Cbor::Float(m.time)));
            rec.push(match &m.value {
                Value::Number(v) => (int(V), Cbor::Float(*v)),
                Value::Sum(v) => (int(S), Cbor::Float(*v)),
                Value::Bool(b) => (int(VB), Cbor::Bool(*b)),
                Value::String(s) => (int(VS), Cbor::Text(s.clone())),
                Value::Data(b64) => {
                    let bytes = B64.decode(b64).map_err(|_| {
                        SenmlError::Record(i, "vd is not base64url without padding".into())
                    })?;
                    (int(VD), Cbor::Bytes(bytes))
                }
            });
            Ok(Cbor::Map(rec))
        })
        .collect::<Result<Vec<Cbor>, SenmlError>>()?;
    let mut out = Vec::with_capacity(32 * measurements.len());
    // Writing into a Vec cannot fail.
    let _ = ciborium::into_writer(&Cbor::Array(pack), &mut out);
    Ok(out)
}

fn number(v: &Cbor) -> Option<f64> {
    match v {
        Cbor::Integer(i) => Some(i128::from(*i) as f64),
        Cbor::Float(f) if f.is_finite() => Some(*f),
        _ => None,
    }
}

/// Valid SenML name characters (RFC 8428 section 4.5.1).
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
        && name.len() <= MAX_NAME_BYTES
}

/// Decodes and resolves a SenML CBOR pack. `now` anchors relative times. Numeric values must
/// carry a unit: a reading whose meaning depends on a guess is not accepted.
pub fn decode(bytes: &[u8], now: f64) -> Result<Vec<Measurement>, SenmlError> {
    let mut rest = bytes;
    let value: Cbor =
        ciborium::from_reader(&mut rest).map_err(|e| SenmlError::NotCbor(e.to_string()))?;
    // Anything after the pack is signed too, but would be read by no one: refused, so that
    // what was signed and what is stored mean the same.
    if !rest.is_empty() {
        return Err(SenmlError::NotCbor(format!(
            "{} bytes after the SenML pack",
            rest.len()
        )));
    }
    let Cbor::Array(records) = value else {
        return Err(SenmlError::NotAPack);
    };
    if records.is_empty() || records.len() > MAX_RECORDS {
        return Err(SenmlError::NotAPack);
    }
    let (mut bn, mut bt, mut bu, mut bv, mut bs) = (String::new(), 0.0f64, None, 0.0f64, 0.0f64);
    let mut out = Vec::with_capacity(records.len());
    for (i, rec) in records.iter().enumerate() {
        let err = |m: &str| SenmlError::Record(i, m.to_string());
        let Cbor::Map(fields) = rec else {
            return Err(err("not a map"));
        };
        let (mut n, mut u, mut t, mut value) = (None, None, 0.0f64, None);
        let mut labels = Vec::with_capacity(fields.len());
        for (k, v) in fields {
            let label = match k {
                Cbor::Integer(l) => i64::try_from(i128::from(*l)).map_err(|_| err("bad label"))?,
                Cbor::Text(l) if l.ends_with('_') => return Err(err("must-understand field")),
                Cbor::Text(_) => continue, // unknown extension field: ignored (RFC 8428 4.4)
                _ => return Err(err("label must be an integer")),
            };
            // One field given twice would be read as the first by one parser and the last by
            // another.
            if labels.contains(&label) {
                return Err(err("a field appears twice"));
            }
            labels.push(label);
            let text = || {
                v.as_text()
                    .map(str::to_owned)
                    .ok_or_else(|| err("expected text"))
            };
            let num = || number(v).ok_or_else(|| err("expected a finite number"));
            let set = |slot: &mut Option<Value>, val: Value| {
                if slot.replace(val).is_some() {
                    return Err(err("more than one value field"));
                }
                Ok(())
            };
            match label {
                BVER => {
                    let version = num()?;
                    if version > 10.0 {
                        return Err(err("unsupported SenML version"));
                    }
                }
                BN => bn = text()?,
                BT => bt = num()?,
                BU => bu = Some(text()?),
                BV => bv = num()?,
                BS => bs = num()?,
                N => n = Some(text()?),
                U => u = Some(text()?),
                T => t = num()?,
                UT => {
                    num()?;
                }
                V => set(&mut value, Value::Number(num()?))?,
                S => set(&mut value, Value::Sum(num()?))?,
                VB => set(
                    &mut value,
                    Value::Bool(v.as_bool().ok_or_else(|| err("vb"))?),
                )?,
                VS => set(&mut value, Value::String(text()?))?,
                VD => {
                    let data = v.as_bytes().ok_or_else(|| err("vd must be bytes"))?;
                    set(&mut value, Value::Data(B64.encode(data)))?
                }
                _ => {} // unknown non-mandatory labels are ignored per RFC 8428
            }
        }
        let name = format!("{bn}{}", n.unwrap_or_default());
        if !valid_name(&name) {
            return Err(err("missing or invalid name"));
        }
        // Two finite numbers can add up to infinity.
        let resolved = |sum: f64| {
            sum.is_finite()
                .then_some(sum)
                .ok_or_else(|| err("value out of range"))
        };
        let value = match value.ok_or_else(|| err("no value"))? {
            Value::Number(v) => Value::Number(resolved(bv + v)?),
            Value::Sum(v) => Value::Sum(resolved(bs + v)?),
            other => other,
        };
        let unit = u.or_else(|| bu.clone()).filter(|u| !u.is_empty());
        if unit
            .as_ref()
            .is_some_and(|u| u.len() > MAX_UNIT_BYTES || !u.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(err("a unit is at most 32 printable ASCII characters"));
        }
        if matches!(value, Value::Number(_) | Value::Sum(_)) && unit.is_none() {
            return Err(err("numeric value without a unit"));
        }
        let mut time = bt + t;
        if time < RELATIVE_TIME_LIMIT {
            time += now;
        }
        // A measurement is taken before it is signed: a little later allows for a sensor's
        // clock beside the signer's. Before 1970 is no time of a reading either (and what a
        // chart would make of -1e300 s is anyone's guess).
        if !(0.0..=now + MAX_TIME_AFTER_SIGNING).contains(&time) {
            return Err(err(&format!(
                "time {time} is before 1970 or more than {MAX_TIME_AFTER_SIGNING} s after the envelope was signed"
            )));
        }
        out.push(Measurement {
            name,
            unit,
            time,
            value,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The signing time the packs below are decoded against.
    const NOW: f64 = 1_700_000_010.0;

    fn cbor(v: Cbor) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&v, &mut out).unwrap();
        out
    }

    #[test]
    fn base_fields_resolve() {
        let pack = Cbor::Array(vec![
            Cbor::Map(vec![
                (int(BN), Cbor::Text("urn:dev:x:".into())),
                (int(BT), Cbor::Float(1_700_000_000.0)),
                (int(BU), Cbor::Text("Cel".into())),
                (int(N), Cbor::Text("temp".into())),
                (int(V), Cbor::Float(20.5)),
            ]),
            Cbor::Map(vec![
                (int(N), Cbor::Text("hum".into())),
                (int(U), Cbor::Text("%RH".into())),
                (int(T), int(5)),
                (int(V), int(40)),
            ]),
        ]);
        let m = decode(&cbor(pack), NOW).unwrap();
        assert_eq!(
            m[0],
            Measurement::number("urn:dev:x:temp", "Cel", 1_700_000_000.0, 20.5)
        );
        assert_eq!(
            m[1],
            Measurement::number("urn:dev:x:hum", "%RH", 1_700_000_005.0, 40.0)
        );
    }

    #[test]
    fn relative_time_is_anchored_at_now() {
        let pack = Cbor::Array(vec![Cbor::Map(vec![
            (int(N), Cbor::Text("door".into())),
            (int(VB), Cbor::Bool(true)),
        ])]);
        let m = decode(&cbor(pack), 1_000_000_000.0).unwrap();
        assert_eq!(m[0].time, 1_000_000_000.0);
    }

    #[test]
    fn rejects_what_a_receiver_cannot_interpret() {
        let cases = [
            Cbor::Map(vec![]),
            Cbor::Array(vec![]),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(V), int(1)),
            ])]), // no unit
            Cbor::Array(vec![Cbor::Map(vec![(int(N), Cbor::Text("t".into()))])]), // no value
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("-bad".into())),
                (int(VB), Cbor::Bool(true)),
            ])]),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(VB), Cbor::Bool(true)),
                (int(VS), Cbor::Text("x".into())),
            ])]),
            Cbor::Array(vec![Cbor::Map(vec![
                (Cbor::Text("x_".into()), int(1)),
                (int(N), Cbor::Text("t".into())),
                (int(VB), Cbor::Bool(true)),
            ])]),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(U), Cbor::Text("W".into())),
                (int(V), Cbor::Float(f64::NAN)),
            ])]),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(U), Cbor::Text(String::new())),
                (int(V), int(1)),
            ])]), // empty unit
            // Finite base value and value whose sum is not.
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(U), Cbor::Text("W".into())),
                (int(BV), Cbor::Float(f64::MAX)),
                (int(V), Cbor::Float(f64::MAX)),
            ])]),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(N), Cbor::Text("t".into())),
                (int(U), Cbor::Text("Wh".into())),
                (int(BS), Cbor::Float(-f64::MAX)),
                (int(S), Cbor::Float(-f64::MAX)),
            ])]),
        ];
        for (i, c) in cases.into_iter().enumerate() {
            assert!(decode(&cbor(c), NOW).is_err(), "case {i} accepted");
        }
        assert!(decode(&[0xff, 0x00], NOW).is_err());
    }

    #[test]
    fn record_count_and_name_length_limits() {
        let record = |name: String| {
            Cbor::Map(vec![
                (int(N), Cbor::Text(name)),
                (int(VB), Cbor::Bool(true)),
            ])
        };
        let pack = |n: usize| {
            cbor(Cbor::Array(
                (0..n).map(|i| record(format!("r{i}"))).collect(),
            ))
        };
        assert_eq!(decode(&pack(MAX_RECORDS), NOW).unwrap().len(), MAX_RECORDS);
        assert!(matches!(
            decode(&pack(MAX_RECORDS + 1), NOW),
            Err(SenmlError::NotAPack)
        ));
        let named = |len: usize| cbor(Cbor::Array(vec![record("n".repeat(len))]));
        assert!(decode(&named(MAX_NAME_BYTES), NOW).is_ok());
        assert!(decode(&named(MAX_NAME_BYTES + 1), NOW).is_err());
        // The limit holds for the resolved name: base name and name together.
        let split = cbor(Cbor::Array(vec![Cbor::Map(vec![
            (int(BN), Cbor::Text("b".repeat(200))),
            (int(N), Cbor::Text("n".repeat(56))),
            (int(VB), Cbor::Bool(true)),
        ])]));
        assert!(decode(&split, NOW).is_err());
    }

    /// A base unit is copied into every record: bounded, one envelope cannot resolve into a
    /// thousand copies of itself.
    #[test]
    fn units_are_short_and_printable() {
        let pack = |unit: &str| {
            cbor(Cbor::Array(vec![
                Cbor::Map(vec![
                    (int(BU), Cbor::Text(unit.into())),
                    (int(N), Cbor::Text("a".into())),
                    (int(V), Cbor::Float(1.0)),
                ]),
                Cbor::Map(vec![
                    (int(N), Cbor::Text("b".into())),
                    (int(VS), Cbor::Text("x".into())),
                ]),
            ]))
        };
        assert!(decode(&pack("m/s2"), NOW).is_ok());
        assert!(decode(&pack(&"u".repeat(MAX_UNIT_BYTES)), NOW).is_ok());
        for bad in [
            "u".repeat(MAX_UNIT_BYTES + 1),
            "deg C".into(),
            "Cel\n".into(),
            "°C".into(),
        ] {
            assert!(decode(&pack(&bad), NOW).is_err(), "{bad:?}");
        }
    }

    /// What two parsers could read differently is refused: a field given twice in a record,
    /// and bytes after the pack.
    #[test]
    fn one_reading_one_meaning() {
        let record = |fields: Vec<(Cbor, Cbor)>| cbor(Cbor::Array(vec![Cbor::Map(fields)]));
        let name = (int(N), Cbor::Text("a".into()));
        let unit = (int(U), Cbor::Text("Cel".into()));
        let value = |v: f64| (int(V), Cbor::Float(v));
        let single = record(vec![name.clone(), unit.clone(), value(1.0)]);
        assert!(decode(&single, NOW).is_ok());
        for twice in [
            vec![name.clone(), name.clone(), unit.clone(), value(1.0)],
            vec![name.clone(), unit.clone(), unit.clone(), value(1.0)],
            vec![
                name.clone(),
                unit.clone(),
                value(1.0),
                (int(T), Cbor::Float(1.0)),
                (int(T), Cbor::Float(2.0)),
            ],
            vec![
                (int(BN), Cbor::Text("x".into())),
                (int(BN), Cbor::Text("y".into())),
                name.clone(),
                unit.clone(),
                value(1.0),
            ],
        ] {
            assert!(decode(&record(twice.clone()), NOW).is_err(), "{twice:?}");
        }
        let mut trailing = single.clone();
        trailing.push(0);
        assert!(matches!(
            decode(&trailing, NOW),
            Err(SenmlError::NotCbor(_))
        ));
    }

    /// A record's time may lie up to MAX_TIME_AFTER_SIGNING after the signature, not later,
    /// and not before 1970, however it is reached (absolute, relative, through a base time).
    #[test]
    fn record_times_are_bounded_by_the_signing_time() {
        let at = |fields: Vec<(Cbor, Cbor)>| {
            let mut rec = vec![
                (int(N), Cbor::Text("x".into())),
                (int(U), Cbor::Text("Cel".into())),
                (int(V), Cbor::Float(1.0)),
            ];
            rec.extend(fields);
            decode(&cbor(Cbor::Array(vec![Cbor::Map(rec)])), NOW)
        };
        let latest = NOW + MAX_TIME_AFTER_SIGNING;
        assert_eq!(
            at(vec![(int(T), Cbor::Float(latest))]).unwrap()[0].time,
            latest
        );
        assert_eq!(
            at(vec![(int(T), Cbor::Float(MAX_TIME_AFTER_SIGNING))]).unwrap()[0].time,
            latest
        );
        assert!(at(vec![(int(T), Cbor::Float(-86_400.0 * 365.0))]).is_ok());
        for (what, fields) in [
            (
                "absolute, a second too late",
                vec![(int(T), Cbor::Float(latest + 1.0))],
            ),
            (
                "relative, a second too late",
                vec![(int(T), Cbor::Float(MAX_TIME_AFTER_SIGNING + 1.0))],
            ),
            ("far future", vec![(int(T), Cbor::Float(1e300))]),
            (
                "through a base time",
                vec![(int(BT), Cbor::Float(latest)), (int(T), int(1))],
            ),
            ("before 1970", vec![(int(T), Cbor::Float(-NOW - 1.0))]),
            ("far past", vec![(int(T), Cbor::Float(-1e300))]),
        ] {
            let refused = at(fields).err();
            assert!(
                matches!(&refused, Some(SenmlError::Record(0, m)) if m.contains("time")),
                "{what}: {refused:?}"
            );
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let ms = vec![
            Measurement::number("a", "Cel", 1_700_000_000.5, -3.25),
            Measurement::boolean("b", 1_700_000_001.0, false),
            Measurement::text("c", 1_700_000_002.0, "hello"),
            Measurement {
                name: "d".into(),
                unit: None,
                time: 1_700_000_003.0,
                value: Value::Data("AP8".into()),
            },
        ];
        assert_eq!(decode(&encode(&ms).unwrap(), NOW).unwrap(), ms);
    }
}
