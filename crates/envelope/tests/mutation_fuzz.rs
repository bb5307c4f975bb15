//! Mutation fuzzing of the envelope parser (see `msec_testkit::mutation`). Valid envelopes are
//! mutated many thousand times — bit flips, byte rewrites, insertions, deletions, truncations,
//! splices — and the parser must never panic, and must never accept signed content that differs
//! from what the device signed. A device's own key can sign any payload, so the SenML decoder
//! behind the signature is fuzzed too, with mutated and with generated packs, each signed.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use coset::cbor::value::Value as Cbor;
use coset::{CoseSign1, CoseSign1Builder, TaggedCborSerializable};
use ed25519_dalek::{Signer, SigningKey};
use msec_envelope::{
    open, seal, Measurement, Reading, Value, MAX_NAME_BYTES, MAX_RECORDS, MAX_UNIT_BYTES,
};
use msec_testkit::mutation::{mutate, Rng};

#[test]
fn mutated_envelopes_never_panic_or_forge() {
    let key = SigningKey::from_bytes(&[5; 32]);
    let vk = key.verifying_key();
    let samples = [
        vec![Measurement::number(
            "temperature",
            "Cel",
            1_700_000_000.5,
            21.5,
        )],
        vec![
            Measurement::boolean("door", 1_700_000_000.0, true),
            Measurement::text("note", 1_700_000_000.0, "ok"),
            Measurement {
                name: "blob".into(),
                unit: None,
                time: 1_700_000_001.0,
                value: Value::Data("AAEC".into()),
            },
        ],
    ];
    let envelopes: Vec<Vec<u8>> = samples
        .iter()
        .enumerate()
        .map(|(i, m)| seal(&key, i as u64 + 1, 1_700_000_000, m).unwrap())
        .collect();
    let originals: Vec<_> = envelopes
        .iter()
        .map(|e| open(e, 1 << 16).unwrap().verify(&vk).unwrap())
        .collect();
    let mut rng = Rng::new(0x1234_5678_9abc_def1);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..40_000 {
        let k = round % envelopes.len();
        let mutated = mutate(
            &mut rng,
            &envelopes[k],
            &envelopes[(k + 1) % envelopes.len()],
        );
        match open(&mutated, 1 << 16).and_then(|e| e.verify(&vk)) {
            Ok(reading) => {
                // Only changes outside the signed bytes (e.g. the unprotected header, or a
                // different but equivalent CBOR framing) may pass, and never alter the content.
                assert!(
                    originals.contains(&reading),
                    "forged content accepted: {}",
                    hex::encode(&mutated)
                );
                accepted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(
        rejected > 39_000,
        "mutations were mostly rejected ({accepted} accepted)"
    );
}

/// `template`'s protected header over another payload, signed by `key`: what a device (or an
/// attacker holding its key) can send.
fn signed_payload(key: &SigningKey, template: &[u8], payload: Vec<u8>) -> Vec<u8> {
    let original = CoseSign1::from_tagged_slice(template).unwrap();
    CoseSign1Builder::new()
        .protected(original.protected.header)
        .payload(payload)
        .create_signature(b"", |data| key.sign(data).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap()
}

/// What every accepted reading promises its consumers, whatever the device sent: one
/// measurement per record (none dropped), valid names, finite times and values, a unit on every
/// number, and raw data as base64url.
fn check_accepted(reading: &Reading, payload: &[u8]) {
    let Ok(Cbor::Array(records)) = ciborium::from_reader::<Cbor, _>(payload) else {
        panic!(
            "accepted a payload that is not a CBOR array: {}",
            hex::encode(payload)
        );
    };
    let ms = &reading.measurements;
    assert_eq!(ms.len(), records.len(), "{}", hex::encode(payload));
    assert!(ms.len() <= MAX_RECORDS);
    for m in ms {
        let mut chars = m.name.chars();
        assert!(
            chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
                && chars.all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
                && m.name.len() <= MAX_NAME_BYTES,
            "bad name {:?} from {}",
            m.name,
            hex::encode(payload)
        );
        assert!(m.time.is_finite(), "{}", hex::encode(payload));
        assert!(
            m.unit.as_deref().is_none_or(|u| !u.is_empty()
                && u.len() <= MAX_UNIT_BYTES
                && u.bytes().all(|b| b.is_ascii_graphic())),
            "unit {:?} from {}",
            m.unit,
            hex::encode(payload)
        );
        match &m.value {
            Value::Number(v) | Value::Sum(v) => assert!(
                v.is_finite() && m.unit.as_deref().is_some_and(|u| !u.is_empty()),
                "number without a finite value or a unit from {}",
                hex::encode(payload)
            ),
            Value::Data(b64) => assert!(URL_SAFE_NO_PAD.decode(b64).is_ok()),
            Value::Bool(_) | Value::String(_) => {}
        }
    }
}

/// Signs `payload` as the device would and opens it as msec does: whether it is accepted,
/// after checking that what is accepted keeps every promise (see `check_accepted`).
fn signed_and_judged(key: &SigningKey, template: &[u8], payload: Vec<u8>) -> bool {
    match open(&signed_payload(key, template, payload.clone()), 1 << 16)
        .and_then(|e| e.verify(&key.verifying_key()))
    {
        Ok(reading) => {
            check_accepted(&reading, &payload);
            true
        }
        Err(_) => false,
    }
}

fn encoded(value: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

#[test]
fn mutated_senml_behind_a_valid_signature_never_panics_or_drops_records() {
    let key = SigningKey::from_bytes(&[6; 32]);
    let vk = key.verifying_key();
    let template = seal(
        &key,
        1,
        1_700_000_000,
        &[Measurement::boolean("x", 0.0, true)],
    )
    .unwrap();
    // Packs that use every SenML feature the decoder resolves: base name, time, unit, value,
    // sum and version, relative times, extension fields, and each kind of value.
    let base = |label: i64, v: Cbor| (Cbor::Integer(label.into()), v);
    let packs: Vec<Vec<u8>> = vec![
        encoded(&Cbor::Array(vec![
            Cbor::Map(vec![
                base(-1, Cbor::Integer(10.into())),
                base(-2, Cbor::Text("urn:dev:park-1:".into())),
                base(-3, Cbor::Float(1_700_000_000.0)),
                base(-4, Cbor::Text("Cel".into())),
                base(-5, Cbor::Float(20.0)),
                base(0, Cbor::Text("temp".into())),
                base(2, Cbor::Float(1.5)),
            ]),
            Cbor::Map(vec![
                base(0, Cbor::Text("hum".into())),
                base(1, Cbor::Text("%RH".into())),
                base(6, Cbor::Integer((-5).into())),
                base(2, Cbor::Integer(40.into())),
            ]),
            Cbor::Map(vec![
                base(-6, Cbor::Float(100.0)),
                base(0, Cbor::Text("energy".into())),
                base(1, Cbor::Text("J".into())),
                base(5, Cbor::Float(2.0)),
                (Cbor::Text("ext".into()), Cbor::Null),
            ]),
            Cbor::Map(vec![
                base(0, Cbor::Text("blob".into())),
                base(8, Cbor::Bytes(vec![0, 1, 2, 255])),
                base(7, Cbor::Float(60.0)),
            ]),
        ])),
        msec_envelope_payload(&[
            Measurement::number("co2", "ppm", 1_700_000_000.0, 412.0),
            Measurement::text("state", 1_700_000_000.0, "open"),
            Measurement::boolean("occupied", 1_700_000_000.0, false),
        ]),
    ];
    for pack in &packs {
        let reading = open(&signed_payload(&key, &template, pack.clone()), 1 << 16)
            .and_then(|e| e.verify(&vk))
            .expect("the unmutated packs are valid");
        check_accepted(&reading, pack);
    }
    let mut rng = Rng::new(0x5e41_2a8b_0c3d_9f17);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..20_000 {
        let payload = mutate(&mut rng, &packs[round % 2], &packs[(round + 1) % 2]);
        if signed_and_judged(&key, &template, payload) {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    // Both outcomes must be common, or the checks above were not exercised.
    assert!(
        accepted > 500 && rejected > 5_000,
        "{accepted} accepted, {rejected} rejected"
    );
}

/// The SenML payload `seal` puts in an envelope, read back out of it.
fn msec_envelope_payload(measurements: &[Measurement]) -> Vec<u8> {
    let key = SigningKey::from_bytes(&[7; 32]);
    CoseSign1::from_tagged_slice(&seal(&key, 1, 1_700_000_000, measurements).unwrap())
        .unwrap()
        .payload
        .unwrap()
}

/// A random CBOR value, biased towards what SenML fields hold and towards edge values.
fn random_value(rng: &mut Rng, depth: usize) -> Cbor {
    const FLOATS: [f64; 14] = [
        0.0,
        -0.0,
        1.5,
        -273.15,
        1e308,
        -1e308,
        f64::MAX,
        f64::MIN,
        f64::NAN,
        f64::INFINITY,
        f64::NEG_INFINITY,
        268_435_455.0,
        268_435_456.0,
        1_700_000_000.25,
    ];
    const TEXTS: [&str; 9] = [
        "temp",
        "",
        "Cel",
        "urn:dev:x:",
        "bad name",
        "-dash",
        "é",
        "%RH",
        "a_",
    ];
    match rng.below(if depth >= 2 { 7 } else { 9 }) {
        0 => Cbor::Integer(((rng.next_u64() as i64) >> rng.below(64)).into()),
        1 => Cbor::Integer(u64::MAX.into()),
        2 => Cbor::Float(if rng.below(4) == 0 {
            f64::from_bits(rng.next_u64())
        } else {
            FLOATS[rng.below(FLOATS.len())]
        }),
        3 => Cbor::Text(match rng.below(4) {
            0 => "n".repeat(MAX_NAME_BYTES + rng.below(3) - 1),
            _ => TEXTS[rng.below(TEXTS.len())].to_string(),
        }),
        4 => Cbor::Bool(rng.below(2) == 0),
        5 => {
            let len = rng.below(8);
            Cbor::Bytes(rng.bytes(len))
        }
        6 => Cbor::Null,
        7 => Cbor::Array(
            (0..rng.below(4))
                .map(|_| random_value(rng, depth + 1))
                .collect(),
        ),
        _ => Cbor::Map(
            (0..rng.below(4))
                .map(|_| (random_value(rng, depth + 1), random_value(rng, depth + 1)))
                .collect(),
        ),
    }
}

/// A value of the type SenML gives `label`, mostly; now and then any value.
fn typed_value(rng: &mut Rng, label: i64) -> Cbor {
    const NAMES: [&str; 7] = ["temp", "urn:dev:x:", "a", "door.1", "", "bad name", "-dash"];
    const UNITS: [&str; 4] = ["Cel", "%RH", "m/s2", ""];
    if rng.below(6) == 0 {
        return random_value(rng, 1);
    }
    match label {
        -2 | 0 => Cbor::Text(NAMES[rng.below(NAMES.len())].into()),
        -4 | 1 => Cbor::Text(UNITS[rng.below(UNITS.len())].into()),
        3 => Cbor::Text("open".into()),
        4 => Cbor::Bool(true),
        8 => Cbor::Bytes(vec![1, 2, 3]),
        // Every other known label holds a number.
        _ => match random_value(rng, 2) {
            n @ (Cbor::Integer(_) | Cbor::Float(_)) => n,
            _ => Cbor::Float(21.5),
        },
    }
}

/// A random pack: mostly records with a name and one value field of the right types, plus
/// base fields, times, units, extension and must-understand fields, duplicates and strays.
fn random_pack(rng: &mut Rng) -> Cbor {
    let records = (0..rng.below(6))
        .map(|_| {
            if rng.below(20) == 0 {
                return random_value(rng, 1);
            }
            let mut labels = vec![0, [2, 3, 4, 5, 8][rng.below(5)]];
            for _ in 0..rng.below(5) {
                labels.push(rng.below(17) as i64 - 7);
            }
            let mut fields: Vec<(Cbor, Cbor)> = labels
                .into_iter()
                .map(|l| (Cbor::Integer(l.into()), typed_value(rng, l)))
                .collect();
            if rng.below(8) == 0 {
                let key = if rng.below(2) == 0 { "ext" } else { "must_" };
                fields.push((Cbor::Text(key.into()), Cbor::Null));
            }
            Cbor::Map(fields)
        })
        .collect();
    Cbor::Array(records)
}

#[test]
fn generated_senml_behind_a_valid_signature_never_panics_or_drops_records() {
    let key = SigningKey::from_bytes(&[8; 32]);
    let template = seal(
        &key,
        1,
        1_700_000_000,
        &[Measurement::boolean("x", 0.0, true)],
    )
    .unwrap();
    let mut rng = Rng::new(0x0dd_ba11_cafe_f00d);
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..20_000 {
        if signed_and_judged(&key, &template, encoded(&random_pack(&mut rng))) {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(
        accepted > 200 && rejected > 5_000,
        "{accepted} accepted, {rejected} rejected"
    );
}
