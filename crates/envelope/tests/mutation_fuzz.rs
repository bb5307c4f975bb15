//! Mutation fuzzing of the envelope parser on stable Rust (coverage-guided cargo-fuzz needs a
//! nightly toolchain, which this project's machines do not have). Valid envelopes are mutated
//! many thousand times — bit flips, byte rewrites, insertions, deletions, truncations, splices —
//! and the parser must never panic, and must never accept signed content that differs from what
//! the device signed.

use ed25519_dalek::SigningKey;
use msec_envelope::{open, seal, Measurement, Value};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(v.len());
        match rng.below(6) {
            0 if !v.is_empty() => v[i] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[i] = rng.next() as u8,
            2 => v.insert(i.min(v.len()), rng.next() as u8),
            3 if !v.is_empty() => {
                v.remove(i);
            }
            4 => v.truncate(i),
            _ => {
                let j = rng.below(other.len());
                v.splice(
                    i.min(v.len())..i.min(v.len()),
                    other[j..].iter().take(1 + rng.below(16)).copied(),
                );
            }
        }
    }
    v
}

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
        .map(|(i, m)| seal(&key, i as u64 + 1, 1_700_000_000, m))
        .collect();
    let originals: Vec<_> = envelopes
        .iter()
        .map(|e| open(e, 1 << 16).unwrap().verify(&vk).unwrap())
        .collect();
    let mut rng = Rng(0x1234_5678_9abc_def1);
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
