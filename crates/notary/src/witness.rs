//! What a witness decides about a log's newest checkpoint: cosign it, or refuse and raise an
//! alarm. The witness process (`msec witness`) fetches and posts over HTTP; the judgement,
//! where a rollback or a split view is caught, is here, where it is tested without a network.

use msec_ledger::{verify_consistency, Checkpoint, Hash};

/// What a witness remembers of a log between runs: the log's verifier key (pinned) and the
/// last tree it cosigned.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WitnessState {
    pub log_key: String,
    pub size: u64,
    #[serde(with = "hex_hash")]
    pub root: Hash,
}

mod hex_hash {
    pub fn serialize<S: serde::Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(h))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        hex::decode(s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| serde::de::Error::custom("64 hex digits"))
    }
}

/// What the witness should do with the checkpoint it was shown.
#[derive(Debug, PartialEq, Eq)]
pub enum Judgement {
    /// The tree it cosigned last time, again: nothing new to remember (cosign again only if
    /// the log lost its cosignature).
    Unchanged(Checkpoint),
    /// A tree that extends the last one (or the first one seen): remember `WitnessState`
    /// first, then cosign.
    Extends(Checkpoint, WitnessState),
}

/// Why the witness does not cosign.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// The log misbehaves: to be reported (signed) and never cosigned. `kind` is one of
    /// `bad_signature`, `rollback`, `split_view`.
    #[error("REFUSING TO COSIGN ({kind}): {detail}")]
    Alarm { kind: &'static str, detail: String },
    /// The consistency proof could not be had; nothing is known against the log yet.
    #[error("cannot get a consistency proof: {0}")]
    NoProof(String),
}

/// Judges the log's newest checkpoint `note` against what this witness cosigned before
/// (`last`), under the log key it pinned. `consistency(from, to)` asks the log for an RFC 9162
/// consistency proof between two tree sizes; it is called only when the tree grew.
pub fn judge(
    last: Option<&WitnessState>,
    log_key: &str,
    note: &str,
    consistency: &mut dyn FnMut(u64, u64) -> Result<Vec<Hash>, String>,
) -> Result<Judgement, Refusal> {
    let alarm = |kind, detail| Refusal::Alarm { kind, detail };
    let cp = Checkpoint::verify(note, log_key).map_err(|e| {
        alarm(
            "bad_signature",
            format!("the checkpoint is not signed by the pinned log key: {e}"),
        )
    })?;
    if let Some(last) = last {
        if cp.size < last.size {
            return Err(alarm(
                "rollback",
                format!("the log shrank from {} to {} leaves", last.size, cp.size),
            ));
        }
        if cp.size == last.size {
            if cp.root != last.root {
                return Err(alarm(
                    "split_view",
                    format!("two different trees of size {}", cp.size),
                ));
            }
            return Ok(Judgement::Unchanged(cp));
        }
        if last.size > 0 {
            let proof = consistency(last.size, cp.size).map_err(Refusal::NoProof)?;
            if !verify_consistency(last.size, cp.size, &last.root, &cp.root, &proof) {
                return Err(alarm(
                    "split_view",
                    format!(
                        "tree {} does not extend the tree {} this witness cosigned",
                        cp.size, last.size
                    ),
                ));
            }
        }
    }
    let state = WitnessState {
        log_key: log_key.to_string(),
        size: cp.size,
        root: cp.root,
    };
    Ok(Judgement::Extends(cp, state))
}

#[cfg(test)]
mod tests {
    use super::*;
    use msec_ledger::{NoteKey, Tree};

    const ORIGIN: &str = "msec.example/log";

    fn key() -> NoteKey {
        NoteKey::new(ORIGIN, [3; 32]).unwrap()
    }

    fn tree(leaves: &[&[u8]]) -> Tree {
        let mut t = Tree::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    fn note(t: &Tree, signer: &NoteKey) -> String {
        Checkpoint {
            origin: ORIGIN.into(),
            size: t.size(),
            root: t.root(t.size()).unwrap(),
        }
        .sign(signer)
    }

    fn state(t: &Tree) -> WitnessState {
        WitnessState {
            log_key: key().verifier_key(),
            size: t.size(),
            root: t.root(t.size()).unwrap(),
        }
    }

    fn proofs(t: &Tree) -> impl FnMut(u64, u64) -> Result<Vec<Hash>, String> + '_ {
        |from, to| t.consistency_proof(from, to).map_err(|e| e.to_string())
    }

    fn kind(r: Result<Judgement, Refusal>) -> &'static str {
        match r {
            Err(Refusal::Alarm { kind, .. }) => kind,
            other => panic!("no alarm: {other:?}"),
        }
    }

    #[test]
    fn a_growing_log_is_cosigned_and_remembered() {
        let vkey = key().verifier_key();
        let old = tree(&[b"a", b"b", b"c"]);
        let new = tree(&[b"a", b"b", b"c", b"d", b"e"]);
        let first = judge(None, &vkey, &note(&old, &key()), &mut proofs(&old)).unwrap();
        assert!(matches!(first, Judgement::Extends(_, ref s) if *s == state(&old)));
        let grown = judge(
            Some(&state(&old)),
            &vkey,
            &note(&new, &key()),
            &mut proofs(&new),
        );
        assert!(matches!(grown, Ok(Judgement::Extends(_, ref s)) if *s == state(&new)));
        let same = judge(
            Some(&state(&new)),
            &vkey,
            &note(&new, &key()),
            &mut proofs(&new),
        );
        assert!(matches!(same, Ok(Judgement::Unchanged(ref cp)) if cp.size == 5));
    }

    #[test]
    fn rollbacks_split_views_and_other_signers_raise_alarms() {
        let vkey = key().verifier_key();
        let old = tree(&[b"a", b"b", b"c"]);
        let smaller = tree(&[b"a", b"b"]);
        let forked = tree(&[b"a", b"b", b"X"]);
        let forked_larger = tree(&[b"a", b"b", b"X", b"d"]);
        let last = state(&old);
        let mut no_proof = |_, _| -> Result<Vec<Hash>, String> { panic!("no proof needed") };
        assert_eq!(
            kind(judge(
                Some(&last),
                &vkey,
                &note(&smaller, &key()),
                &mut no_proof
            )),
            "rollback"
        );
        assert_eq!(
            kind(judge(
                Some(&last),
                &vkey,
                &note(&forked, &key()),
                &mut no_proof
            )),
            "split_view"
        );
        // The forked log proves itself consistent with its own history, not with ours.
        assert_eq!(
            kind(judge(
                Some(&last),
                &vkey,
                &note(&forked_larger, &key()),
                &mut proofs(&forked_larger)
            )),
            "split_view"
        );
        let impostor = NoteKey::new(ORIGIN, [4; 32]).unwrap();
        assert_eq!(
            kind(judge(
                Some(&last),
                &vkey,
                &note(&old, &impostor),
                &mut no_proof
            )),
            "bad_signature"
        );
    }

    #[test]
    fn a_missing_proof_is_no_alarm() {
        let vkey = key().verifier_key();
        let old = tree(&[b"a"]);
        let new = tree(&[b"a", b"b"]);
        let r = judge(
            Some(&state(&old)),
            &vkey,
            &note(&new, &key()),
            &mut |_, _| Err("timed out".into()),
        );
        assert_eq!(r, Err(Refusal::NoProof("timed out".into())));
    }
}
