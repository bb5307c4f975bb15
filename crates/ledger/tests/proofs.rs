//! RFC 9162 proofs checked against a reference verifier written independently in this file
//! (top-down over the tree's recursive definition, not the bit arithmetic of section 2.1.3.2),
//! against the Certificate Transparency test vectors, and under tampering; and C2SP checkpoints
//! round-tripped and tampered with; and random claims, fuzzed against the reference.

use msec_ledger::*;
use msec_testkit::mutation::Rng;
use sha2::{Digest, Sha256};

fn tree(n: usize) -> Tree {
    let mut t = Tree::new();
    for i in 0..n {
        t.push(format!("leaf {i}").as_bytes());
    }
    t
}

fn largest_power_of_two_below(n: u64) -> u64 {
    1 << (63 - (n - 1).leading_zeros())
}

/// Recomputes the root of a tree of `size` leaves from leaf `index` and its audit path, walking
/// the recursive definition from the top: the last proof element is the sibling of the topmost
/// split.
fn reference_root(leaf: Hash, index: u64, size: u64, proof: &[Hash]) -> Option<Hash> {
    if size == 1 {
        return proof.is_empty().then_some(leaf);
    }
    let (last, rest) = proof.split_last()?;
    let k = largest_power_of_two_below(size);
    if index < k {
        Some(node_hash(&reference_root(leaf, index, k, rest)?, last))
    } else {
        Some(node_hash(
            last,
            &reference_root(leaf, index - k, size - k, rest)?,
        ))
    }
}

#[test]
fn certificate_transparency_vectors() {
    let leaves: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    let mut t = Tree::new();
    for l in leaves {
        t.push(l);
    }
    assert_eq!(EMPTY_ROOT, <[u8; 32]>::from(Sha256::digest(b"")));
    assert_eq!(
        hex::encode(t.root(1).unwrap()),
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    );
    assert_eq!(
        hex::encode(t.root(8).unwrap()),
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328"
    );
}

#[test]
fn every_inclusion_proof_verifies_both_ways_and_tampering_fails() {
    let t = tree(70);
    for size in 1..=70u64 {
        let root = t.root(size).unwrap();
        for index in 0..size {
            let leaf = *t.leaf(index).unwrap();
            let proof = t.inclusion_proof(index, size).unwrap();
            assert!(
                verify_inclusion(&leaf, index, size, &proof, &root),
                "{index}/{size}"
            );
            assert_eq!(
                reference_root(leaf, index, size, &proof),
                Some(root),
                "{index}/{size}"
            );
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i][0] ^= 1;
                assert!(!verify_inclusion(&leaf, index, size, &bad, &root));
            }
            if size > 1 {
                assert!(!verify_inclusion(
                    &leaf,
                    (index + 1) % size,
                    size,
                    &proof,
                    &root
                ));
                assert!(!verify_inclusion(
                    &leaf,
                    index,
                    size,
                    &proof[..proof.len() - 1],
                    &root
                ));
            }
        }
    }
    assert!(t.inclusion_proof(5, 5).is_err());
    assert!(t.inclusion_proof(0, 71).is_err());
}

#[test]
fn every_consistency_proof_verifies_and_tampering_fails() {
    let t = tree(40);
    for new in 1..=40u64 {
        let new_root = t.root(new).unwrap();
        for old in 1..=new {
            let old_root = t.root(old).unwrap();
            let proof = t.consistency_proof(old, new).unwrap();
            assert!(
                verify_consistency(old, new, &old_root, &new_root, &proof),
                "{old}->{new}"
            );
            for i in 0..proof.len() {
                let mut bad = proof.clone();
                bad[i][31] ^= 0x80;
                assert!(
                    !verify_consistency(old, new, &old_root, &new_root, &bad),
                    "{old}->{new} element {i}"
                );
            }
            if old < new {
                // A forked history: the same sizes, a different old tree.
                let forked = Tree::from_leaf_hashes(
                    (0..new)
                        .map(|i| {
                            if i == 0 {
                                leaf_hash(b"forged")
                            } else {
                                *t.leaf(i).unwrap()
                            }
                        })
                        .collect::<Vec<_>>(),
                );
                let forked_old = forked.root(old).unwrap();
                assert!(!verify_consistency(
                    old,
                    new,
                    &forked_old,
                    &new_root,
                    &proof
                ));
                assert!(!verify_consistency(old, new, &old_root, &new_root, &[]));
            }
        }
    }
    assert!(t.consistency_proof(0, 3).is_err());
    assert!(t.consistency_proof(4, 3).is_err());
}

#[test]
fn checkpoints_sign_verify_and_refuse_tampering() {
    let key = NoteKey::new("msec.example/log", [3; 32]).unwrap();
    let vkey = key.verifier_key();
    assert!(vkey.starts_with("msec.example/log+"));
    let t = tree(10);
    let cp = Checkpoint {
        origin: "msec.example/log".into(),
        size: 10,
        root: t.root(10).unwrap(),
    };
    let note = cp.sign(&key);
    assert!(note.starts_with("msec.example/log\n10\n"));
    assert!(note.contains("\n\n\u{2014} msec.example/log "));
    assert_eq!(Checkpoint::verify(&note, &vkey).unwrap(), cp);
    // A witness cosignature line from another key does not disturb verification.
    let witnessed = format!("{note}\u{2014} witness.example AAAAAAAA\n");
    assert_eq!(Checkpoint::verify(&witnessed, &vkey).unwrap(), cp);
    // Tampered size, tampered root, wrong key.
    assert!(Checkpoint::verify(&note.replacen("\n10\n", "\n11\n", 1), &vkey).is_err());
    let other_root = base64_root(&t.root(9).unwrap());
    assert!(Checkpoint::verify(
        &note.replacen(&base64_root(&cp.root), &other_root, 1),
        &vkey
    )
    .is_err());
    let other = NoteKey::new("msec.example/log", [4; 32])
        .unwrap()
        .verifier_key();
    assert!(matches!(
        Checkpoint::verify(&note, &other),
        Err(CheckpointError::NotSigned(_))
    ));
    assert!(NoteKey::new("has space", [1; 32]).is_err());
    assert!(Checkpoint::verify("garbage", &vkey).is_err());
}

fn base64_root(h: &Hash) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(h)
}

#[test]
fn incremental_tree_matches_the_plain_definition() {
    let leaves: Vec<Hash> = (0..1500u32).map(|i| leaf_hash(&i.to_be_bytes())).collect();
    let t = Tree::from_leaf_hashes(leaves.clone());
    for n in (0..=1500).step_by(7).chain([1024, 1025, 1499, 1500]) {
        assert_eq!(t.root(n as u64).unwrap(), root_of(&leaves[..n]), "size {n}");
    }
    let root = t.root(1500).unwrap();
    for index in (0..1500).step_by(37) {
        let proof = t.inclusion_proof(index, 1500).unwrap();
        assert_eq!(
            reference_root(leaves[index as usize], index, 1500, &proof),
            Some(root)
        );
    }
    let proof = t.consistency_proof(777, 1500).unwrap();
    assert!(verify_consistency(
        777,
        1500,
        &root_of(&leaves[..777]),
        &root,
        &proof
    ));
}

#[test]
fn cosignatures_verify_and_resist_tampering() {
    use msec_ledger::{Checkpoint, CosignerKey, NoteKey};
    let log = NoteKey::new("example.org/log", [7; 32]).unwrap();
    let witness = CosignerKey::new("example.org/witness", [9; 32]).unwrap();
    let cp = Checkpoint {
        origin: "example.org/log".into(),
        size: 12,
        root: [3; 32],
    };
    let note = format!("{}{}", cp.sign(&log), witness.cosign(&cp, 1_700_000_000));
    let (seen, time) = Checkpoint::verify_cosignature(&note, &witness.verifier_key()).unwrap();
    assert_eq!((seen, time), (cp.clone(), 1_700_000_000));
    // The log signature still verifies with the cosignature line present.
    assert_eq!(Checkpoint::verify(&note, &log.verifier_key()).unwrap(), cp);
    // A log key is not a cosigner key, and vice versa (different key-hash type bytes).
    assert!(Checkpoint::verify_cosignature(&note, &log.verifier_key()).is_err());
    assert!(Checkpoint::verify(&note, &witness.verifier_key()).is_err());
    // Another witness, another tree size or a moved timestamp all fail.
    let other = CosignerKey::new("example.org/witness", [10; 32]).unwrap();
    assert!(Checkpoint::verify_cosignature(&note, &other.verifier_key()).is_err());
    let bigger = note.replacen("\n12\n", "\n13\n", 1);
    assert!(Checkpoint::verify_cosignature(&bigger, &witness.verifier_key()).is_err());
    // Moving the timestamp of a valid cosignature breaks it.
    use base64::{engine::general_purpose::STANDARD as B64, Engine};
    let line = witness.cosign(&cp, 1_700_000_000);
    let (prefix, sig) = line.trim_end().rsplit_once(' ').unwrap();
    let mut raw = B64.decode(sig).unwrap();
    raw[11] ^= 1;
    let moved = format!("{}{prefix} {}\n", cp.sign(&log), B64.encode(raw));
    assert!(Checkpoint::verify_cosignature(&moved, &witness.verifier_key()).is_err());
}

/// A witness alarm verifies only with the witness's own key, under its own name, for the log
/// and time it names, and only for the exact kind and detail it signed.
#[test]
fn witness_alarms_are_signed() {
    let witness = CosignerKey::new("example.org/witness", [9; 32]).unwrap();
    let vkey = witness.verifier_key();
    let (log, t) = ("example.org/log", 1_800_000_000);
    let sig = witness.sign_alarm(log, t, "rollback", "size 7 after 9");
    let check = |origin: &str, time: u64, w: &str, k: &str, d: &str, s: &str| {
        msec_ledger::verify_alarm(&vkey, origin, time, w, k, d, s).is_ok()
    };
    let w = "example.org/witness";
    assert!(check(log, t, w, "rollback", "size 7 after 9", &sig));
    assert!(!check(
        "example.org/other-log",
        t,
        w,
        "rollback",
        "size 7 after 9",
        &sig
    ));
    assert!(!check(log, t + 1, w, "rollback", "size 7 after 9", &sig));
    assert!(!check(log, t, w, "split_view", "size 7 after 9", &sig));
    assert!(!check(log, t, w, "rollback", "size 8 after 9", &sig));
    assert!(!check(
        log,
        t,
        "example.org/other",
        "rollback",
        "size 7 after 9",
        &sig
    ));
    assert!(!check(
        log,
        t,
        w,
        "rollback",
        "size 7 after 9",
        "not base64!"
    ));
    let stranger = CosignerKey::new("example.org/witness", [10; 32]).unwrap();
    let forged = stranger.sign_alarm(log, t, "rollback", "size 7 after 9");
    assert!(!check(log, t, w, "rollback", "size 7 after 9", &forged));
    // Moving text between fields changes what is signed.
    let shifted = witness.sign_alarm(log, t, "rollbacksize", " 7 after 9");
    assert!(!check(log, t, w, "rollback", "size 7 after 9", &shifted));
}

/// Perturbs a proof the way a forger or a broken server might: drop, repeat, swap or replace
/// elements (or leave it alone).
fn perturbed(rng: &mut Rng, t: &Tree, mut proof: Vec<Hash>) -> Vec<Hash> {
    let n = proof.len();
    match rng.below(5) {
        0 if n > 0 => {
            proof.remove(rng.below(n));
        }
        1 if n > 0 => {
            let copy = proof[rng.below(n)];
            proof.insert(rng.below(n + 1), copy)
        }
        2 if n > 1 => proof.swap(rng.below(n), rng.below(n)),
        3 => proof.insert(
            rng.below(n + 1),
            *t.leaf(rng.below(t.size() as usize) as u64).unwrap(),
        ),
        _ => {}
    }
    proof
}

/// Random claims (index, size, leaf, root) with real, perturbed and borrowed proofs: the
/// verifier agrees with the reference on every one. Sizes up to u64::MAX never panic.
#[test]
fn inclusion_verifier_agrees_with_the_reference_on_random_claims() {
    let t = tree(70);
    let mut rng = Rng::new(0x6c8e_9cf5_7043_2f11);
    let mut verified = 0;
    for _ in 0..50_000 {
        let size = 1 + rng.below(70) as u64;
        let index = rng.below(size as usize) as u64;
        let proof = perturbed(&mut rng, &t, t.inclusion_proof(index, size).unwrap());
        let mut claim = |real: u64| {
            if rng.below(3) == 0 {
                rng.below(75) as u64
            } else {
                real
            }
        };
        let (claim_index, claim_size) = (claim(index), claim(size));
        let leaf = *t.leaf(claim(index).min(69)).unwrap();
        let root = t.root(claim(size).clamp(1, 70)).unwrap();
        let got = verify_inclusion(&leaf, claim_index, claim_size, &proof, &root);
        let want = claim_index < claim_size
            && reference_root(leaf, claim_index, claim_size, &proof) == Some(root);
        assert_eq!(
            got, want,
            "leaf of {index} at {claim_index}/{claim_size}, proof of {index}/{size}"
        );
        verified += usize::from(got);
    }
    assert!(verified > 2_000, "only {verified} claims verified");
    for _ in 0..5_000 {
        let size = rng.next_u64() | (1 << 63);
        let proof: Vec<Hash> = (0..rng.below(70))
            .map(|_| leaf_hash(&rng.bytes(4)))
            .collect();
        let root = leaf_hash(b"root");
        assert!(!verify_inclusion(
            &leaf_hash(b"x"),
            rng.next_u64() % size,
            size,
            &proof,
            &root
        ));
        let old = rng.next_u64() % size;
        assert!(!verify_consistency(old, size, &root, &root, &proof));
    }
}

/// Random consistency claims between signed-looking tree heads (each root the true root at its
/// claimed size, of the real tree or of a fork) with real, perturbed and borrowed proofs: a
/// proof verifies only when the old head is a prefix of the new one, and every real proof
/// verifies.
#[test]
fn consistency_verifier_accepts_only_true_histories() {
    let t = tree(70);
    let mut rng = Rng::new(0x3c6e_f372_fe94_f82b);
    let (mut verified, mut forks_refused) = (0, 0);
    for _ in 0..50_000 {
        let new = 1 + rng.below(70) as u64;
        let old = 1 + rng.below(new as usize) as u64;
        let real = t.consistency_proof(old, new).unwrap();
        let proof = perturbed(&mut rng, &t, real.clone());
        let mut claim = |real: u64| {
            if rng.below(3) == 0 {
                1 + rng.below(70) as u64
            } else {
                real
            }
        };
        let (claim_old, claim_new) = (claim(old), claim(new));
        // A fork rewrites one leaf: its heads differ from the real ones from that leaf on.
        let fork_at = (rng.below(4) == 0).then(|| rng.below(70) as u64);
        let old_root = match fork_at {
            Some(j) => Tree::from_leaf_hashes((0..70).map(|i| {
                if i == j {
                    leaf_hash(b"forged")
                } else {
                    *t.leaf(i).unwrap()
                }
            }))
            .root(claim_old)
            .unwrap(),
            None => t.root(claim_old).unwrap(),
        };
        let forked = fork_at.is_some_and(|j| j < claim_old);
        let got = verify_consistency(
            claim_old,
            claim_new,
            &old_root,
            &t.root(claim_new).unwrap(),
            &proof,
        );
        if got {
            assert!(
                !forked && claim_old <= claim_new,
                "{claim_old}->{claim_new} verified (fork at {fork_at:?}, proof of {old}->{new})"
            );
            verified += 1;
        } else if forked {
            forks_refused += 1;
        }
        if proof == real && !forked && (claim_old, claim_new) == (old, new) {
            assert!(got, "the real proof {old}->{new} failed");
        }
    }
    assert!(
        verified > 5_000 && forks_refused > 1_000,
        "{verified} verified, {forks_refused} forks refused"
    );
}

/// A log's verifier key is checked on its own: garbage, a witness's key and a key with a
/// damaged half are refused before anything is judged against them.
#[test]
fn log_keys_are_checked_before_use() {
    let log = NoteKey::new("msec.example/log", [3; 32])
        .unwrap()
        .verifier_key();
    let witness = msec_ledger::CosignerKey::new("w.example/w1", [9; 32])
        .unwrap()
        .verifier_key();
    assert!(msec_ledger::check_log_key(&log).is_ok());
    let damaged = format!("{}!", &log[..log.len() - 1]);
    for bad in ["garbage", "", witness.as_str(), damaged.as_str()] {
        assert!(msec_ledger::check_log_key(bad).is_err(), "{bad:?} accepted");
    }
}
