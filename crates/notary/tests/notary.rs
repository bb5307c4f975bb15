//! The log service against a real store: checkpoints, proofs, restarts, witnesses, and audits
//! that must catch a rolled-back or rewritten log, on SQLite and PostgreSQL.

use msec_ledger::{verify_consistency, verify_inclusion, Checkpoint, CosignerKey};
use msec_notary::*;
use msec_store::*;
use msec_vault::MemoryKeys;
use std::sync::Arc;

use msec_testkit::raw_sql as raw;

fn add_readings(s: &mut Store, from: i64, to: i64) {
    s.commit(&Batch {
        readings: (from..=to)
            .map(|i| NewReading {
                device_id: "park-1".into(),
                sequence: i,
                issued_at: 1_700_000_000 + i,
                received_ms: 1_700_000_000_000 + i,
                envelope: vec![1, 2, 3],
                digest: [i as u8; 32],
                measurements_json: "[]".into(),
            })
            .collect(),
        ..Default::default()
    })
    .unwrap();
}

/// The park monitor the readings of [`add_readings`] belong to.
fn register_park(s: &mut Store) {
    s.register_device(&NewDevice {
        id: "park-1".into(),
        tenant: "santander".into(),
        owner: "santander".into(),
        name: "Park 1".into(),
        kind: "environmental-monitor".into(),
        location: None,
        public_key: [9; 32],
        key_id: [9; 16],
    })
    .unwrap();
}

fn kinds(r: &AuditReport) -> Vec<FindingKind> {
    r.findings.iter().map(|f| f.kind.clone()).collect()
}

fn scenario(url: &str, dir: &std::path::Path) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let open = || Store::open(url, keys.clone()).unwrap();
    let key = || LogKey::from_seed("example.org/msec-test", [5; 32]).unwrap();
    let state = dir.join("checkpoint");
    let witness = CosignerKey::new("example.org/witness", [6; 32]).unwrap();
    let witnesses = vec![Witness {
        name: witness.name().into(),
        verifier_key: witness.verifier_key(),
    }];

    let mut s = open();
    register_park(&mut s);
    add_readings(&mut s, 1, 20);
    let notary = Notary::open(open(), key(), state.clone(), witnesses.clone(), 1).unwrap();
    let first = notary.tick().unwrap().expect("a first checkpoint");
    assert_eq!(first.checkpoint.size, 21);
    assert!(
        notary.tick().unwrap().is_none(),
        "no new data, no new checkpoint"
    );
    assert_eq!(notary.final_size().unwrap(), None);

    // Alarms: only the configured witness's, about this log, at about the present time.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let alarm = |key: &CosignerKey, origin: &str, time: u64| {
        let sig = key.sign_alarm(origin, time, "rollback", "size 3 after 21");
        notary.check_alarm(time, key.name(), "rollback", "size 3 after 21", &sig)
    };
    let origin = notary.origin().to_string();
    assert!(alarm(&witness, &origin, now).is_ok());
    assert!(alarm(&witness, "example.org/another-log", now).is_err());
    assert!(alarm(&witness, &origin, now - ALARM_MAX_AGE_S - 5).is_err());
    assert!(alarm(&witness, &origin, now + ALARM_MAX_AGE_S + 5).is_err());
    let unconfigured = CosignerKey::new("example.org/stranger", [7; 32]).unwrap();
    assert!(alarm(&unconfigured, &origin, now).is_err());

    // Inclusion proofs verify against the signed checkpoint.
    let id: RecordId = "reading:park-1/7".parse().unwrap();
    let inc = notary.inclusion(&id).unwrap();
    let cp = Checkpoint::verify(&inc.checkpoint, &notary.verifier_key()).unwrap();
    let (_, leaf) = s.record_leaf(&id).unwrap().unwrap();
    assert_eq!(msec_ledger::leaf_hash(&leaf), inc.leaf_hash);
    assert!(verify_inclusion(
        &inc.leaf_hash,
        inc.index,
        cp.size,
        &inc.proof,
        &cp.root
    ));

    // A witness cosigns; with quorum 1 the checkpoint becomes final.
    let cosigned = format!(
        "{}{}",
        first.note,
        witness.cosign(&first.checkpoint, 1_700_000_000)
    );
    assert_eq!(
        notary.add_cosignature(&cosigned).unwrap(),
        "example.org/witness"
    );
    assert_eq!(notary.final_size().unwrap(), Some(21));
    let stranger = CosignerKey::new("example.org/stranger", [7; 32]).unwrap();
    let bogus = format!("{}{}", first.note, stranger.cosign(&first.checkpoint, 1));
    assert!(
        notary.add_cosignature(&bogus).is_err(),
        "unknown witness accepted"
    );
    assert!(notary
        .latest()
        .unwrap()
        .unwrap()
        .contains("example.org/witness"));

    // The log grows; consistency proofs link the two checkpoints.
    add_readings(&mut s, 21, 30);
    let second = notary.tick().unwrap().unwrap();
    assert_eq!(second.checkpoint.size, 31);
    let proof = notary.consistency(21, 31).unwrap();
    assert!(verify_consistency(
        21,
        31,
        &first.checkpoint.root,
        &second.checkpoint.root,
        &proof
    ));

    // A clean database audits clean against everything it published.
    let trusted = vec![TrustedCheckpoint {
        source: "state file".into(),
        note: std::fs::read_to_string(&state).unwrap(),
    }];
    let report = audit(
        &mut s,
        &notary.verifier_key(),
        &trusted,
        &witnesses,
        1,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        (kinds(&report), report.leaves, report.witnessed_size),
        (vec![], 31, Some(21))
    );
    drop(notary);

    // Restart: the log picks up where it was, neither forked nor rewound.
    let notary = Notary::open(open(), key(), state.clone(), witnesses.clone(), 1).unwrap();
    assert_eq!(notary.size(), 31);
    drop(notary);

    // A rewritten log: two leaves swap places (records reordered in the log). Each record still
    // matches its own leaf; the checkpoints tell, and so do the two readings' rows, which still
    // point at the places their leaves held.
    raw(
        url,
        "UPDATE log_leaves SET idx = -1 WHERE idx = 3;
              UPDATE log_leaves SET idx = 3 WHERE idx = 4;
              UPDATE log_leaves SET idx = 4 WHERE idx = -1;",
    );
    let report = audit(
        &mut s,
        &notary_key(),
        &trusted,
        &witnesses,
        1,
        &mut |_, _| {},
    )
    .unwrap();
    let count = |kind: FindingKind| kinds(&report).iter().filter(|k| **k == kind).count();
    assert_eq!(
        (
            count(FindingKind::LogRewritten),
            count(FindingKind::Modified),
            report.findings.len()
        ),
        (3, 2, 5),
        "{:?}",
        report.findings
    );
    let refused = Notary::open(open(), key(), state.clone(), witnesses.clone(), 1)
        .err()
        .expect("served a rewritten log");
    assert!(
        refused.to_string().contains("rolled back or rewritten"),
        "{refused}"
    );
    raw(
        url,
        "UPDATE log_leaves SET idx = -1 WHERE idx = 3;
              UPDATE log_leaves SET idx = 3 WHERE idx = 4;
              UPDATE log_leaves SET idx = 4 WHERE idx = -1;",
    );

    // The whole database rolled back to before the second checkpoint (as restoring an old
    // backup would): records, leaves, checkpoints and cosignatures alike.
    raw(
        url,
        "DELETE FROM readings WHERE sequence > 20;
              DELETE FROM log_leaves WHERE idx >= 21;
              DELETE FROM checkpoints WHERE size > 21;",
    );
    let report = audit(
        &mut s,
        &notary_key(),
        &trusted,
        &witnesses,
        1,
        &mut |_, _| {},
    )
    .unwrap();
    assert_eq!(
        kinds(&report),
        vec![FindingKind::Rollback],
        "{:?}",
        report.findings
    );
    let refused = Notary::open(open(), key(), state.clone(), witnesses, 1)
        .err()
        .expect("served a rolled-back log");
    assert!(
        refused.to_string().contains("the log has 21 leaves"),
        "{refused}"
    );
}

fn notary_key() -> String {
    LogKey::from_seed("example.org/msec-test", [5; 32])
        .unwrap()
        .verifier_key()
}

#[test]
fn sqlite_log() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-notary-"));
    std::fs::create_dir_all(&dir).unwrap();
    scenario(dir.join("msec.db").to_str().unwrap(), &dir);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_log() {
    if let Some(url) = msec_testkit::postgres_url() {
        let dir = std::env::temp_dir().join(msec_testkit::unique("msec-notary-pg-"));
        std::fs::create_dir_all(&dir).unwrap();
        scenario(&url, &dir);
        std::fs::remove_dir_all(dir).ok();
    }
}

/// An audit of a platform that keeps appending and checkpointing while the records are scanned
/// (the server checkpoints within a second of any growth) finds nothing: a checkpoint newer
/// than the scan is no rollback.
#[test]
fn an_audit_of_a_live_log_reports_no_rollback() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-live-audit-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = dir.join("msec.db").to_string_lossy().into_owned();
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let open = || Store::open(&url, keys.clone()).unwrap();
    let key = || LogKey::from_seed("example.org/msec-test", [5; 32]).unwrap();
    let mut s = open();
    register_park(&mut s);
    add_readings(&mut s, 1, 20);
    let notary = Notary::open(open(), key(), dir.join("state"), Vec::new(), 0).unwrap();
    notary.tick().unwrap().unwrap();
    let mut writer = open();
    let mut grown = false;
    let report = audit(&mut s, &notary_key(), &[], &[], 0, &mut |done, total| {
        // Meanwhile the platform goes on: more readings, and a checkpoint covering them
        // (at the end of the scan, once the log has been read).
        if done == total && total > 0 && !grown {
            grown = true;
            add_readings(&mut writer, 21, 30);
            notary.tick().unwrap().unwrap();
        }
    })
    .unwrap();
    assert!(grown);
    assert_eq!(kinds(&report), vec![], "{:?}", report.findings);
    assert_eq!(report.leaves, 31);
    std::fs::remove_dir_all(dir).ok();
}

/// A quorum of K means K different witnesses: one witness cosigning twice is one, and one
/// witness cannot be configured twice (under its name or under another name with its key).
#[test]
fn a_quorum_counts_each_witness_once() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-quorum-"));
    std::fs::create_dir_all(&dir).unwrap();
    let url = dir.join("msec.db").to_string_lossy().into_owned();
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let open = || Store::open(&url, keys.clone()).unwrap();
    let key = || LogKey::from_seed("example.org/msec-test", [5; 32]).unwrap();
    let as_witness = |k: &CosignerKey| Witness {
        name: k.name().into(),
        verifier_key: k.verifier_key(),
    };
    let (w1, w2) = (
        CosignerKey::new("example.org/w1", [6; 32]).unwrap(),
        CosignerKey::new("example.org/w2", [7; 32]).unwrap(),
    );
    let alias = CosignerKey::new("example.org/alias", [6; 32]).unwrap();
    for twins in [
        vec![as_witness(&w1), as_witness(&w1)],
        vec![as_witness(&w1), as_witness(&alias)],
    ] {
        let refused = Notary::open(open(), key(), dir.join("state"), twins, 2);
        assert!(
            matches!(&refused, Err(NotaryError::Refused(m)) if m.contains("same witness")),
            "{:?}",
            refused.err()
        );
    }

    let mut s = open();
    s.log_admin("test", "note", "x", "").unwrap();
    let witnesses = vec![as_witness(&w1), as_witness(&w2)];
    let notary = Notary::open(open(), key(), dir.join("state"), witnesses, 2).unwrap();
    let first = notary.tick().unwrap().unwrap();
    let cosigned = |w: &CosignerKey, time: u64| {
        notary
            .add_cosignature(&format!(
                "{}{}",
                first.note,
                w.cosign(&first.checkpoint, time)
            ))
            .unwrap();
    };
    cosigned(&w1, 1_700_000_000);
    cosigned(&w1, 1_700_000_060);
    assert_eq!(notary.final_size().unwrap(), None, "one witness, twice");
    cosigned(&w2, 1_700_000_000);
    assert_eq!(notary.final_size().unwrap(), Some(first.checkpoint.size));
    std::fs::remove_dir_all(dir).ok();
}

/// The log's signing key and a witness's cosigning key are written readable by their owner
/// only: anyone who reads them can sign checkpoints or cosignatures.
#[cfg(unix)]
#[test]
fn key_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-keys-"));
    let log_key = dir.join("log-key.json");
    let witness_key = dir.join("witness-key.json");
    let (_, created) = LogKey::load_or_create(&log_key).unwrap();
    assert!(created);
    let (_, created) = load_or_create_cosigner(&witness_key).unwrap();
    assert!(created);
    for path in [&log_key, &witness_key] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}
