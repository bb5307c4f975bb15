//! Actuator commands as a device sees them: what is accepted, what is refused and with which
//! reason code, and that no received bytes can panic the verifier or forge a command.

use coset::{
    cbor::value::Value as Cbor, iana, CborSerializable, CoseSign1, CoseSign1Builder, HeaderBuilder,
    TaggedCborSerializable,
};
use ed25519_dalek::{Signer, SigningKey};
use msec_device::command::{COMMAND_CONTENT_TYPE, MAX_COMMAND_FIELD_BYTES};
use msec_device::{
    commands_topic, Command, CommandSigner, CommandValue, CommandVerifier, MAX_COMMAND_BYTES,
};
use msec_testkit::mutation::{mutate, Rng};

const T: i64 = 1_764_000_000;
const PLATFORM_SEED: [u8; 32] = [0x40; 32];
const DEVICE: &str = "home-007-plug";

fn platform() -> CommandSigner {
    CommandSigner::from_seed(PLATFORM_SEED)
}

fn verifier() -> CommandVerifier {
    CommandVerifier::new(&platform().public_key(), DEVICE, 0).unwrap()
}

fn command(id: u64) -> Command {
    Command {
        target: DEVICE.into(),
        resource: "plug/switch".into(),
        value: CommandValue::Bool(false),
        command_id: id,
        issued_at: T,
        expires_at: T + 60,
    }
}

fn reason(v: &mut CommandVerifier, bytes: &[u8], now: i64) -> &'static str {
    match v.verify(bytes, now) {
        Ok(c) => panic!("accepted {c:?}"),
        Err(e) => e.reason(),
    }
}

/// The payload map built from the protocol document's table, independently of the library.
fn payload(entries: Vec<(i64, Cbor)>) -> Vec<u8> {
    let map = Cbor::Map(
        entries
            .into_iter()
            .map(|(k, v)| (Cbor::Integer(k.into()), v))
            .collect(),
    );
    let mut out = Vec::new();
    ciborium::ser::into_writer(&map, &mut out).unwrap();
    out
}

fn entries(target: &str, resource: &str, id: u64, iat: i64, exp: i64) -> Vec<(i64, Cbor)> {
    vec![
        (1, Cbor::Text(target.into())),
        (2, Cbor::Text(resource.into())),
        (3, Cbor::Bool(false)),
        (4, Cbor::Integer(id.into())),
        (5, Cbor::Integer(iat.into())),
        (6, Cbor::Integer(exp.into())),
    ]
}

/// A command envelope built by hand with any key, kid and payload bytes.
fn raw(key: &SigningKey, kid: &[u8], payload: Vec<u8>) -> Vec<u8> {
    let protected = HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .content_type(COMMAND_CONTENT_TYPE.to_string())
        .key_id(kid.to_vec())
        .build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |d| key.sign(d).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .unwrap()
}

fn platform_raw(payload: Vec<u8>) -> Vec<u8> {
    raw(
        &SigningKey::from_bytes(&PLATFORM_SEED),
        &platform().key_id(),
        payload,
    )
}

#[test]
fn valid_command_is_accepted_and_advances_the_replay_guard() {
    let mut v = verifier();
    let bytes = platform().seal(&command(7)).unwrap();
    assert_eq!(v.verify(&bytes, T).unwrap(), command(7));
    assert_eq!(v.last_accepted(), 7);
    // Every kind of value survives the trip, including floats that need all 64 bits.
    for (i, value) in [
        CommandValue::Bool(true),
        CommandValue::Integer(-40),
        CommandValue::Integer(i64::MAX),
        CommandValue::Float(21.5),
        CommandValue::Float(0.1),
        CommandValue::Text("eco".into()),
    ]
    .into_iter()
    .enumerate()
    {
        let c = Command {
            value,
            ..command(100 + i as u64)
        };
        assert_eq!(v.verify(&platform().seal(&c).unwrap(), T).unwrap(), c);
    }
}

#[test]
fn the_library_encodes_exactly_what_the_protocol_document_describes() {
    let by_hand = platform_raw(payload(entries(DEVICE, "plug/switch", 7, T, T + 60)));
    assert_eq!(platform().seal(&command(7)).unwrap(), by_hand);
}

#[test]
fn forged_signature_is_refused() {
    let mut v = verifier();
    let good = platform().seal(&command(7)).unwrap();
    let mut bad_sig = good.clone();
    *bad_sig.last_mut().unwrap() ^= 0x01;
    assert_eq!(reason(&mut v, &bad_sig, T), "bad_signature");
    // Retargeting the command to another device of the same id length, keeping the signature.
    let at = good
        .windows(DEVICE.len())
        .position(|w| w == DEVICE.as_bytes())
        .unwrap();
    let mut retargeted = good.clone();
    retargeted[at + DEVICE.len() - 1] = b'8';
    assert_eq!(reason(&mut v, &retargeted, T), "bad_signature");
    assert_eq!(v.last_accepted(), 0);
    assert!(v.verify(&good, T).is_ok());
}

#[test]
fn command_signed_by_another_key_is_refused() {
    let mut v = verifier();
    let intruder = CommandSigner::from_seed([0x41; 32]);
    assert_eq!(
        reason(&mut v, &intruder.seal(&command(7)).unwrap(), T),
        "unknown_key"
    );
    // The intruder claiming the platform's key id gets no further.
    let claimed = raw(
        &SigningKey::from_bytes(&[0x41; 32]),
        &platform().key_id(),
        payload(entries(DEVICE, "plug/switch", 7, T, T + 60)),
    );
    assert_eq!(reason(&mut v, &claimed, T), "bad_signature");
}

#[test]
fn command_for_another_device_is_refused_and_does_not_advance() {
    let mut v = verifier();
    let other = Command {
        target: "home-008-plug".into(),
        ..command(100)
    };
    assert_eq!(
        reason(&mut v, &platform().seal(&other).unwrap(), T),
        "wrong_target"
    );
    assert_eq!(v.last_accepted(), 0);
    assert!(v.verify(&platform().seal(&command(50)).unwrap(), T).is_ok());
}

#[test]
fn expired_command_is_refused() {
    let bytes = platform().seal(&command(7)).unwrap();
    assert_eq!(reason(&mut verifier(), &bytes, T + 60), "expired");
    assert_eq!(reason(&mut verifier(), &bytes, T + 86_400), "expired");
    assert!(verifier().verify(&bytes, T + 59).is_ok());
}

#[test]
fn command_issued_in_the_future_beyond_skew_is_refused() {
    let bytes = platform().seal(&command(7)).unwrap();
    assert_eq!(reason(&mut verifier(), &bytes, T - 301), "not_yet_valid");
    assert!(verifier().verify(&bytes, T - 300).is_ok());
    assert_eq!(
        reason(&mut verifier().with_max_skew(0), &bytes, T - 1),
        "not_yet_valid"
    );
}

#[test]
fn replayed_command_id_is_refused() {
    let mut v = verifier();
    let first = platform().seal(&command(7)).unwrap();
    assert!(v.verify(&first, T).is_ok());
    assert_eq!(reason(&mut v, &first, T + 1), "replayed");
    // An older id, even freshly signed, is a replay too; a newer one is fine.
    assert_eq!(
        reason(&mut v, &platform().seal(&command(6)).unwrap(), T),
        "replayed"
    );
    assert!(v.verify(&platform().seal(&command(8)).unwrap(), T).is_ok());
    // A device restarted from its stored state remembers.
    let mut restarted = CommandVerifier::new(&platform().public_key(), DEVICE, 8).unwrap();
    assert_eq!(
        reason(&mut restarted, &platform().seal(&command(8)).unwrap(), T),
        "replayed"
    );
}

#[test]
fn oversized_commands_are_refused() {
    let mut v = verifier();
    assert_eq!(
        reason(&mut v, &vec![0u8; MAX_COMMAND_BYTES + 1], T),
        "oversized"
    );
    // The platform refuses to sign what devices would refuse.
    let long_path = Command {
        resource: "p".repeat(MAX_COMMAND_FIELD_BYTES + 1),
        ..command(7)
    };
    assert_eq!(
        platform().seal(&long_path).unwrap_err().reason(),
        "oversized"
    );
    let long_text = Command {
        value: CommandValue::Text("x".repeat(MAX_COMMAND_BYTES)),
        ..command(7)
    };
    assert_eq!(
        platform().seal(&long_text).unwrap_err().reason(),
        "oversized"
    );
    // And a device refuses it even when correctly signed.
    let long_target = "d".repeat(MAX_COMMAND_FIELD_BYTES + 1);
    let bytes = platform_raw(payload(entries(&long_target, "plug/switch", 7, T, T + 60)));
    let mut long_v = CommandVerifier::new(&platform().public_key(), long_target, 0).unwrap();
    assert_eq!(reason(&mut long_v, &bytes, T), "oversized");
    // Exactly at the limit is fine.
    let at_limit = "d".repeat(MAX_COMMAND_FIELD_BYTES);
    let c = Command {
        target: at_limit.clone(),
        ..command(7)
    };
    let mut at_v = CommandVerifier::new(&platform().public_key(), at_limit, 0).unwrap();
    assert!(at_v.verify(&platform().seal(&c).unwrap(), T).is_ok());
}

#[test]
fn lifetimes_over_an_hour_or_not_positive_are_refused() {
    for exp in [T + 3601, T, T - 1] {
        let c = Command {
            expires_at: exp,
            ..command(7)
        };
        assert_eq!(platform().seal(&c).unwrap_err().reason(), "bad_lifetime");
        let bytes = platform_raw(payload(entries(DEVICE, "plug/switch", 7, T, exp)));
        assert_eq!(reason(&mut verifier(), &bytes, T), "bad_lifetime");
    }
    let hour = Command {
        expires_at: T + 3600,
        ..command(7)
    };
    assert!(verifier()
        .verify(&platform().seal(&hour).unwrap(), T)
        .is_ok());
}

#[test]
fn signed_but_malformed_commands_are_refused() {
    let mut v = verifier();
    let mut unknown_key = entries(DEVICE, "plug/switch", 7, T, T + 60);
    unknown_key.push((7, Cbor::Bool(true)));
    let mut out_of_order = entries(DEVICE, "plug/switch", 7, T, T + 60);
    out_of_order.swap(0, 1);
    let mut wrong_type = entries(DEVICE, "plug/switch", 7, T, T + 60);
    wrong_type[3].1 = Cbor::Text("7".into());
    let id_zero = entries(DEVICE, "plug/switch", 0, T, T + 60);
    let bad_path = entries(DEVICE, "plug switch", 7, T, T + 60);
    // 7 as a two-byte integer head (0x18 0x07) where one byte is the deterministic form.
    let mut long_head = payload(entries(DEVICE, "plug/switch", 7, T, T + 60));
    let at = long_head
        .windows(2)
        .position(|w| w == [0x04, 0x07])
        .unwrap();
    long_head.splice(at + 1..at + 2, [0x18, 0x07]);
    for p in [
        payload(unknown_key),
        payload(out_of_order),
        payload(wrong_type),
        payload(id_zero),
        payload(bad_path),
        long_head,
        vec![0xa0],
        vec![],
    ] {
        assert_eq!(
            reason(&mut v, &platform_raw(p.clone()), T),
            "malformed",
            "{}",
            hex::encode(&p)
        );
    }
    // Untagged, with something in the unsigned (unprotected) header, or with trailing bytes:
    // refused before the signature is looked at.
    let good = platform().seal(&command(7)).unwrap();
    let mut sign1 = CoseSign1::from_tagged_slice(&good).unwrap();
    sign1.unprotected = HeaderBuilder::new().key_id(vec![1]).build();
    assert_eq!(
        reason(&mut v, &sign1.to_tagged_vec().unwrap(), T),
        "malformed"
    );
    let mut trailing = good.clone();
    trailing.push(0x00);
    assert_eq!(reason(&mut v, &trailing, T), "malformed");
    let untagged = CoseSign1::from_tagged_slice(&good)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(reason(&mut v, &untagged, T), "malformed");
    assert_eq!(v.last_accepted(), 0);
}

#[test]
fn a_weak_platform_key_cannot_be_pinned() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    assert!(CommandVerifier::new(&identity, DEVICE, 0).is_err());
    let signer = platform();
    assert!(!format!("{signer:?}").contains(&hex::encode(PLATFORM_SEED)));
}

#[test]
fn topic_is_next_to_the_readings_topic() {
    assert_eq!(
        commands_topic("msec", "home", DEVICE),
        "msec/v1/home/home-007-plug/commands"
    );
}

#[test]
fn mutated_truncated_and_garbage_input_never_panics_or_forges() {
    let originals: Vec<Vec<u8>> = [
        command(7),
        Command {
            value: CommandValue::Text("eco".into()),
            resource: "thermostat/mode".into(),
            ..command(8)
        },
        Command {
            value: CommandValue::Float(21.5),
            ..command(9)
        },
    ]
    .iter()
    .map(|c| platform().seal(c).unwrap())
    .collect();
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..6_000 {
        let k = round % originals.len();
        let mutated = mutate(
            &mut rng,
            &originals[k],
            &originals[(k + 1) % originals.len()],
        );
        match verifier().verify(&mutated, T) {
            Ok(_) => {
                // Every mutation is refused unless it happened to reproduce the original bytes.
                assert!(
                    originals.contains(&mutated),
                    "mutated command accepted: {}",
                    hex::encode(&mutated)
                );
                accepted += 1;
            }
            Err(_) => rejected += 1,
        }
    }
    assert!(rejected > 5_900, "{accepted} accepted, {rejected} rejected");
    for original in &originals {
        for cut in 0..original.len() {
            assert!(verifier().verify(&original[..cut], T).is_err());
        }
    }
    for len in 0..600usize {
        let garbage: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        assert!(verifier().verify(&garbage, T).is_err());
    }
    // Deep nesting is bounded by the parser, not by the stack.
    let mut deep = vec![0xd2];
    deep.extend(std::iter::repeat_n(0x81, MAX_COMMAND_BYTES - 1));
    assert!(verifier().verify(&deep, T).is_err());
}
