//! Mutation fuzzing of what the ledger parses from others (see `msec_testkit::mutation`):
//! signed checkpoints and cosignatures a witness or auditor fetches from a platform it does not
//! trust, verifier keys from configuration, and witness alarms. Whatever the mutation, nothing
//! panics, and nothing verifies unless it says exactly what was signed.

use msec_ledger::{verify_alarm, Checkpoint, CosignerKey, NoteKey};
use msec_testkit::mutation::{mutate_text, Rng};

const ORIGIN: &str = "msec.example/log";
const TIME: u64 = 1_800_000_000;

fn keys() -> (NoteKey, CosignerKey) {
    (
        NoteKey::new(ORIGIN, [3; 32]).unwrap(),
        CosignerKey::new("witness.example/w1", [9; 32]).unwrap(),
    )
}

fn checkpoint() -> Checkpoint {
    Checkpoint {
        origin: ORIGIN.into(),
        size: 1234,
        root: [0x5a; 32],
    }
}

#[test]
fn mutated_notes_never_panic_or_verify_other_content() {
    let (log, witness) = keys();
    let cp = checkpoint();
    let note = format!("{}{}", cp.sign(&log), witness.cosign(&cp, TIME));
    let other = Checkpoint {
        size: 1235,
        ..checkpoint()
    };
    let other_note = format!("{}{}", other.sign(&log), witness.cosign(&other, TIME + 1));
    let (log_key, witness_key) = (log.verifier_key(), witness.verifier_key());
    assert_eq!(Checkpoint::verify(&note, &log_key), Ok(cp.clone()));
    let mut rng = Rng::new(0x7a3c_11d2_4e5f_6081);
    let (mut signed, mut cosigned, mut refused) = (0, 0, 0);
    for _ in 0..20_000 {
        let mutated = mutate_text(&mut rng, &note, &other_note);
        // Spliced from a note the same keys signed, a mutation may carry a whole valid other
        // checkpoint; what verifies must then be that one, never a mix.
        match Checkpoint::verify(&mutated, &log_key) {
            Ok(seen) => {
                assert!(
                    seen == cp || seen == other,
                    "{mutated:?} verified as {seen:?}"
                );
                signed += 1;
            }
            Err(_) => refused += 1,
        }
        match Checkpoint::verify_cosignature(&mutated, &witness_key) {
            Ok(seen) => {
                assert!(
                    seen == (cp.clone(), TIME) || seen == (other.clone(), TIME + 1),
                    "{mutated:?} cosigned as {seen:?}"
                );
                cosigned += 1;
            }
            Err(_) => refused += 1,
        }
        // The bare body parser sees the same hostile text.
        let _ = Checkpoint::parse_body(&mutated);
    }
    // Mutations that only touch the other signature line, or trailing text, keep a note valid.
    assert!(
        signed > 1_000 && cosigned > 1_000 && refused > 20_000,
        "{signed} signed, {cosigned} cosigned, {refused} refused"
    );
}

#[test]
fn mutated_verifier_keys_never_panic_or_verify_with_another_key() {
    let (log, witness) = keys();
    let cp = checkpoint();
    let note = format!("{}{}", cp.sign(&log), witness.cosign(&cp, TIME));
    let (log_key, witness_key) = (log.verifier_key(), witness.verifier_key());
    let mut rng = Rng::new(0x1f2e_3d4c_5b6a_7988);
    let mut accepted = 0;
    for round in 0..20_000 {
        let (key, other) = if round % 2 == 0 {
            (&log_key, &witness_key)
        } else {
            (&witness_key, &log_key)
        };
        let mutated = mutate_text(&mut rng, key, other);
        let verified = Checkpoint::verify(&note, &mutated).is_ok()
            || Checkpoint::verify_cosignature(&note, &mutated).is_ok();
        if verified {
            // Only a key that still names the same signer may verify: the same name, hash and
            // public key (surrounding whitespace is trimmed).
            assert!(
                mutated.trim() == log_key || mutated.trim() == witness_key,
                "{mutated:?} verified"
            );
            accepted += 1;
        }
    }
    assert!(accepted < 2_000, "{accepted} mutated keys verified");
}

#[test]
fn mutated_alarms_never_panic_or_verify_other_fields() {
    let (_, witness) = keys();
    let name = witness.name().to_string();
    let key = witness.verifier_key();
    let (kind, detail) = ("rollback", "size 7 after 9");
    let signature = witness.sign_alarm(ORIGIN, TIME, kind, detail);
    let fields = [ORIGIN, name.as_str(), kind, detail, signature.as_str()];
    assert!(verify_alarm(&key, ORIGIN, TIME, &name, kind, detail, &signature).is_ok());
    let mut rng = Rng::new(0x2b7e_1516_28ae_d2a6);
    for _ in 0..10_000 {
        // One field mutated, with text from another field to splice in.
        let mut f = fields.map(str::to_string);
        let which = rng.below(f.len());
        f[which] = mutate_text(&mut rng, &f[which], fields[(which + 1) % fields.len()]);
        let time = if rng.below(8) == 0 {
            TIME ^ (1 << rng.below(64))
        } else {
            TIME
        };
        let ok = verify_alarm(&key, &f[0], time, &f[1], &f[2], &f[3], &f[4]).is_ok();
        let unchanged = f == fields.map(str::to_string) && time == TIME;
        // base64 has no second spelling for 64 bytes, so even the signature text is exact.
        assert_eq!(ok, unchanged, "{f:?} at {time}");
    }
}
