//! Encryption at rest, tamper evidence and erasure, attacked directly through SQL, on SQLite
//! and PostgreSQL.

use msec_store::*;
use msec_vault::MemoryKeys;
use std::sync::Arc;

const SECRET_NAME: &str = "Bedroom of Alicia Quintana";
const SECRET_PLACE: &str = "Calle Falsa 123";
const SECRET_VALUE: &str = "36.6123";
const SECRET_ENVELOPE: &[u8] = b"ENVELOPE-MARKER";

use msec_testkit::raw_sql as raw;

/// Every byte an attacker with the database (files or a dump) would get.
fn stolen_bytes(url: &str) -> Vec<u8> {
    if url.starts_with("postgres") {
        let schema = url.rsplit("search_path%3D").next().unwrap();
        let base = url.split('?').next().unwrap();
        let out = std::process::Command::new("pg_dump")
            .args(["--dbname", base, "--schema", schema, "--data-only"])
            .output()
            .expect("pg_dump runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.stdout.len() > 1000, "dump looks empty");
        out.stdout
    } else {
        let mut all = std::fs::read(url).unwrap();
        all.extend(std::fs::read(format!("{url}-wal")).unwrap_or_default());
        all
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn new_device(id: &str, owner: &str, byte: u8, name: &str, place: &str) -> NewDevice {
    NewDevice {
        id: id.into(),
        tenant: "santander".into(),
        owner: owner.into(),
        name: name.into(),
        kind: "bed-sensor".into(),
        location: Some(Location {
            lat: 43.46,
            lon: -3.8,
            label: place.into(),
        }),
        public_key: [byte; 32],
        key_id: [byte; 16],
    }
}

fn reading(device: &str, seq: i64) -> NewReading {
    let mut envelope = SECRET_ENVELOPE.to_vec();
    envelope.push(seq as u8);
    NewReading {
        device_id: device.into(),
        sequence: seq,
        issued_at: 1_700_000_000 + seq,
        received_ms: 1_700_000_000_000 + seq,
        envelope,
        digest: [seq as u8; 32],
        measurements_json: format!(r#"[{{"n":"temperature","u":"Cel","v":{SECRET_VALUE}{seq}}}]"#),
    }
}

fn findings(s: &mut Store) -> Vec<(FindingKind, String)> {
    let mut f: Vec<_> = s
        .audit_scan(&mut |_, _| {})
        .unwrap()
        .findings
        .into_iter()
        .map(|f| (f.kind, f.record))
        .collect();
    f.sort_by(|a, b| a.1.cmp(&b.1));
    f
}

/// alice-bed's battery and link as of `seq`.
fn vitals(seq: i64) -> DeviceUpdate {
    DeviceUpdate {
        device_id: "alice-bed".into(),
        last_seen_ms: seq,
        last_sequence: seq,
        battery: Some(55.0),
        link: Some(80.0),
    }
}

fn protection(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(url, keys.clone()).unwrap();
    s.register_device(&new_device(
        "alice-bed",
        "alice",
        1,
        SECRET_NAME,
        SECRET_PLACE,
    ))
    .unwrap();
    s.register_device(&new_device(
        "park-1",
        "santander",
        2,
        "Park monitor 1",
        "Las Llamas",
    ))
    .unwrap();
    s.commit(&Batch {
        readings: (1..=3)
            .map(|i| reading("alice-bed", i))
            .chain((1..=8).map(|i| reading("park-1", i)))
            .collect(),
        events: vec![NewEvent {
            at_ms: 1,
            reason: "replayed".into(),
            device_id: Some("park-1".into()),
            source: "test".into(),
            detail: "sequence 3 again".into(),
            tenant: Some("santander".into()),
            nonce: msec_store::event_nonce(),
        }],
        devices: vec![vitals(3)],
    })
    .unwrap();
    let d = s.device("alice-bed").unwrap().unwrap();
    assert_eq!(
        (d.battery, d.link, d.last_seen_ms),
        (Some(55.0), Some(80.0), Some(3))
    );
    let consent = s
        .give_consent("alice", "caregiver:bob", "tele-assistance")
        .unwrap();

    // 1. Nothing personal or measured is visible in what a thief would take.
    let stolen = stolen_bytes(url);
    for secret in [
        SECRET_NAME.as_bytes(),
        SECRET_PLACE.as_bytes(),
        SECRET_VALUE.as_bytes(),
        SECRET_ENVELOPE,
        b"Park monitor 1",
    ] {
        assert!(
            !contains(&stolen, secret),
            "{:?} readable in raw storage",
            String::from_utf8_lossy(secret)
        );
    }
    // ...while the platform itself reads everything back.
    let d = s.device("alice-bed").unwrap().unwrap();
    assert_eq!(
        (d.name.as_str(), d.location.unwrap().label.as_str()),
        (SECRET_NAME, SECRET_PLACE)
    );
    let r = s
        .readings(
            "alice-bed",
            &ReadingQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(
        r[0].measurements[0]["v"].to_string(),
        format!("{SECRET_VALUE}3")
    );

    // 2. A clean database audits clean; KEK rotation keeps everything readable.
    assert_eq!(findings(&mut s), vec![]);
    let before_rotation = s.audit_scan(&mut |_, _| {}).unwrap().tree.size();
    s.rotate_keys("test").unwrap();
    assert_eq!(
        s.readings(
            "park-1",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            }
        )
        .unwrap()[0]
            .sequence,
        8
    );
    assert_eq!(
        s.audit_scan(&mut |_, _| {}).unwrap().tree.size(),
        before_rotation + 1,
        "rotation is logged"
    );

    // 3. Export: every record about the subject, decrypted, with its log position.
    let export = s.export_subject("alice").unwrap();
    assert_eq!(
        (
            export.devices.len(),
            export.readings.len(),
            export.consents.len()
        ),
        (1, 3, 1)
    );
    assert_eq!(export.records.len(), 5);
    assert!(export.readings[0]
        .envelope
        .starts_with(&hex::encode(SECRET_ENVELOPE)));
    assert!(matches!(
        s.export_subject("nobody"),
        Err(StoreError::NotFound(_))
    ));

    // 4. Erasure: keep a copy of the subject's key row, as a backup taken now would.
    let backup = key_row(url, "alice");
    assert!(backup.0.is_some() && backup.1.is_some(), "{backup:?}");
    if !url.starts_with("postgres") {
        // The key row in the database file itself, not only in the write-ahead log.
        raw(url, "PRAGMA wal_checkpoint(TRUNCATE);");
        assert!(contains(&stolen_bytes(url), backup.1.as_deref().unwrap()));
    }
    let erased = s.erase_subject("alice", "test").unwrap();
    assert_eq!(erased.devices_revoked, 1);
    // The wrapped data key itself is gone from the database, not just marked erased: from
    // its rows, and (SQLite) from the files' free space and write-ahead log too.
    assert_eq!(key_row(url, "alice"), (None, None));
    if !url.starts_with("postgres") {
        let wrapped = backup.1.as_deref().unwrap();
        let files = stolen_bytes(url);
        assert!(
            wrapped.chunks(16).all(|piece| !contains(&files, piece)),
            "pieces of the erased key are still in the files"
        );
    }
    assert!(matches!(
        s.readings(
            "alice-bed",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            }
        ),
        Err(StoreError::Erased(_))
    ));
    assert!(matches!(
        s.export_subject("alice"),
        Err(StoreError::Erased(_))
    ));
    let d = s.device("alice-bed").unwrap().unwrap();
    assert!(
        d.erased && d.name.is_empty() && d.location.is_none() && d.status == DeviceStatus::Revoked
    );
    // What the device reported of itself goes too, and a reading that raced the erasure does
    // not bring it back.
    assert_eq!((d.battery, d.link, d.last_seen_ms), (None, None, None));
    s.commit(&Batch {
        readings: vec![reading("alice-bed", 4)],
        devices: vec![vitals(4)],
        ..Default::default()
    })
    .unwrap();
    let d = s.device("alice-bed").unwrap().unwrap();
    assert_eq!((d.battery, d.link, d.last_seen_ms), (None, None, None));
    assert!(
        s.consents("alice")
            .unwrap()
            .iter()
            .all(|c| c.withdrawn_ms.is_some()),
        "{consent:?}"
    );
    assert!(matches!(
        s.erase_subject("alice", "test"),
        Err(StoreError::Conflict(_))
    ));
    // A subject erased before anything is held about it never gets a data key: a device for
    // it is refused, and its key row stays empty.
    s.erase_subject("carol", "test").unwrap();
    assert!(matches!(
        s.register_device(&new_device(
            "carol-bed",
            "carol",
            7,
            SECRET_NAME,
            SECRET_PLACE
        )),
        Err(StoreError::Erased(_))
    ));
    assert_eq!(key_row(url, "carol"), (None, None));
    assert!(s.device("carol-bed").unwrap().is_none());
    // Other subjects are untouched; the log still audits clean.
    assert_eq!(
        s.readings(
            "park-1",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            }
        )
        .unwrap()
        .len(),
        1
    );
    assert_eq!(findings(&mut s), vec![]);
    // Restoring the old key row (a backup) does not bring the data back: its KEK is destroyed.
    restore_key_row(url, "alice", &backup);
    let mut fresh = Store::open(url, keys.clone()).unwrap();
    let err = fresh
        .readings(
            "alice-bed",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(matches!(err, StoreError::Keys(_)), "{err}");

    // The wrong key file is refused up front, not discovered record by record.
    let err = Store::open(url, Arc::new(MemoryKeys::new()))
        .err()
        .expect("opened with foreign keys");
    assert!(
        err.to_string().contains("do not open this database"),
        "{err}"
    );

    // A ciphertext moved to another row does not decrypt there: it is bound to its device and
    // sequence. (Swapping two rows' sequences moves each ciphertext to the other's place.)
    let swap = "UPDATE readings SET sequence = -100 WHERE device_id = 'park-1' AND sequence = 1;
                UPDATE readings SET sequence = 1 WHERE device_id = 'park-1' AND sequence = 2;
                UPDATE readings SET sequence = 2 WHERE device_id = 'park-1' AND sequence = -100;";
    let read_two = |s: &mut Store| {
        s.readings(
            "park-1",
            &ReadingQuery {
                before_sequence: Some(3),
                limit: 2,
                ..Default::default()
            },
        )
    };
    assert_eq!(read_two(&mut s).unwrap().len(), 2);
    raw(url, swap);
    let err = read_two(&mut s).unwrap_err();
    assert!(matches!(err, StoreError::Tampered(_)), "{err}");
    raw(url, swap);
    assert_eq!(read_two(&mut s).unwrap().len(), 2);

    // 5. Tampering with rows directly in SQL is found, record by record.
    raw(url, "UPDATE readings SET sealed = (SELECT sealed FROM readings WHERE device_id = 'park-1' AND sequence = 2) WHERE device_id = 'park-1' AND sequence = 1;
              UPDATE readings SET issued_at = issued_at + 60 WHERE device_id = 'park-1' AND sequence = 3;
              UPDATE devices SET owner = 'mallory' WHERE id = 'park-1';
              DELETE FROM readings WHERE device_id = 'park-1' AND sequence = 4;
              INSERT INTO readings (device_id, sequence, issued_at, received_ms, digest, sealed)
                  SELECT device_id, 99, issued_at, received_ms, digest, sealed FROM readings WHERE device_id = 'park-1' AND sequence = 5;
              UPDATE readings SET sequence = -6 WHERE device_id = 'park-1' AND sequence = 6;
              UPDATE readings SET sequence = 6 WHERE device_id = 'park-1' AND sequence = 7;
              UPDATE readings SET sequence = 7 WHERE device_id = 'park-1' AND sequence = -6;
              INSERT INTO readings (device_id, sequence, issued_at, received_ms, digest, sealed)
                  SELECT device_id, -9223372036854775808, issued_at, received_ms, digest, sealed FROM readings WHERE device_id = 'park-1' AND sequence = 8;
              UPDATE readings SET leaf = leaf + 1 WHERE device_id = 'park-1' AND sequence = 8;
              INSERT INTO log_leaves (idx, kind, ref, hash)
                  SELECT (SELECT MAX(idx) + 1 FROM log_leaves), kind, ref, hash FROM log_leaves
                  WHERE kind = 'reading' AND ref = 'park-1/5';
              UPDATE security_events SET detail = 'nothing happened';");
    let event = findings(&mut s)
        .into_iter()
        .find(|f| f.1.starts_with("event:"))
        .unwrap()
        .1;
    assert_eq!(
        findings(&mut s),
        vec![
            (FindingKind::Modified, "device:park-1".to_string()),
            (FindingKind::Modified, event),
            (
                FindingKind::Inserted,
                "reading:park-1/-9223372036854775808".into()
            ),
            (FindingKind::Modified, "reading:park-1/1".into()),
            (FindingKind::Modified, "reading:park-1/3".into()),
            (FindingKind::Deleted, "reading:park-1/4".into()),
            // A second leaf naming a reading that has its own.
            (FindingKind::Deleted, "reading:park-1/5".into()),
            (FindingKind::Modified, "reading:park-1/6".into()),
            (FindingKind::Modified, "reading:park-1/7".into()),
            // Its content matches its leaf, but its row points at another.
            (FindingKind::Modified, "reading:park-1/8".into()),
            (FindingKind::Inserted, "reading:park-1/99".into()),
        ]
    );
    // That pointer lends the reading no other record's leaf: it has none for proofs.
    let misfiled: RecordId = "reading:park-1/8".parse().unwrap();
    assert_eq!(s.leaf_index(&misfiled).unwrap(), None);
}

/// An audit of a database the platform keeps writing to reports nothing: records committed
/// while the scan runs are neither "inserted" nor their leaves "deleted".
fn audit_while_writing(url: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(url, keys.clone()).unwrap();
    s.register_device(&new_device("busy-1", "santander", 3, "Busy", "Plaza"))
        .unwrap();
    let batch = |from: i64| Batch {
        readings: (from..from + 50).map(|i| reading("busy-1", i)).collect(),
        ..Default::default()
    };
    for from in (1..2000).step_by(50) {
        s.commit(&batch(from)).unwrap();
    }
    let stop = AtomicBool::new(false);
    let written = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut w = Store::open(url, keys.clone()).unwrap();
            let mut next = 2001;
            while !stop.load(Ordering::Relaxed) {
                w.commit(&batch(next)).unwrap();
                next += 50;
            }
            next - 2001
        });
        // Asserted after the writer stopped, so that a failure cannot leave it running.
        let audits: Vec<_> = (0..5).map(|_| findings(&mut s)).collect();
        stop.store(true, Ordering::Relaxed);
        (writer.join().unwrap(), audits)
    });
    let (written, audits) = written;
    assert!(audits.iter().all(|f| f.is_empty()), "{audits:?}");
    assert!(
        written > 0,
        "the writer never got to write during the audits"
    );
    assert_eq!(findings(&mut s), vec![]);
}

/// A subject's export comes in pages however much is held, in the documented order, and
/// readings committed meanwhile (here by another connection, after the first page) are in
/// neither the readings nor the records.
fn export_in_pages(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(url, keys).unwrap();
    s.register_device(&new_device("bob-bed", "bob", 21, "Bed", "Home"))
        .unwrap();
    s.register_device(&new_device("bob-door", "bob", 22, "Door", "Home"))
        .unwrap();
    s.register_device(&new_device("park-21", "santander", 23, "Park", "Park"))
        .unwrap();
    for from in (1..=2345).step_by(500) {
        let readings = (from..(from + 500).min(2346))
            .map(|i| reading("bob-bed", i))
            .collect();
        s.commit(&Batch {
            readings,
            ..Default::default()
        })
        .unwrap();
    }
    s.commit(&Batch {
        readings: (1..=3)
            .map(|i| reading("bob-door", i))
            .chain((1..=5).map(|i| reading("park-21", i)))
            .collect(),
        ..Default::default()
    })
    .unwrap();
    let consent = s.give_consent("bob", "clinic", "care").unwrap();
    let mut other = s.connector().open().unwrap();
    let (mut kinds, mut readings, mut records) = (Vec::new(), Vec::new(), Vec::new());
    s.export_subject_in_parts("bob", &mut |part| {
        match part {
            ExportPart::Devices(d) => {
                let ids: Vec<_> = d.iter().map(|d| d.id.as_str()).collect();
                assert_eq!(ids, ["bob-bed", "bob-door"]);
                kinds.push("devices");
            }
            ExportPart::Readings(page) => {
                assert!(!page.is_empty() && page.len() <= 256, "{}", page.len());
                if readings.is_empty() {
                    other
                        .commit(&Batch {
                            readings: (2346..=2350).map(|i| reading("bob-bed", i)).collect(),
                            ..Default::default()
                        })
                        .unwrap();
                }
                readings.extend(
                    page.into_iter()
                        .map(|r| format!("{}/{}", r.reading.device_id, r.reading.sequence)),
                );
                kinds.push("readings");
            }
            ExportPart::Consents(c) => {
                assert_eq!(c, std::slice::from_ref(&consent));
                kinds.push("consents");
            }
            ExportPart::Records(page) => {
                records.extend(page);
                kinds.push("records");
            }
        }
        Ok(())
    })
    .unwrap();
    kinds.dedup();
    assert_eq!(kinds, ["devices", "readings", "consents", "records"]);
    let expected: Vec<String> = (1..=2345)
        .rev()
        .map(|i| format!("bob-bed/{i}"))
        .chain((1..=3).rev().map(|i| format!("bob-door/{i}")))
        .collect();
    assert_eq!(readings, expected);
    let named: Vec<String> = records.iter().map(|(id, _)| id.clone()).collect();
    let mut want = vec!["device:bob-bed".to_string(), "device:bob-door".into()];
    want.extend(expected.iter().map(|r| format!("reading:{r}")));
    want.push(format!("consent:{}", consent.id));
    assert_eq!(named, want);
    let mut indices: Vec<u64> = records.iter().map(|(_, i)| *i).collect();
    indices.sort_unstable();
    indices.dedup();
    assert_eq!(
        indices.len(),
        records.len(),
        "two records share a log index"
    );
    // Gathered whole, a later export has the readings committed meanwhile.
    let whole = s.export_subject("bob").unwrap();
    assert_eq!(whole.readings.len(), 2353);
    assert_eq!(whole.records.len(), 2 + 2353 + 1);
}

#[test]
fn sqlite_export_in_pages() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-export-"));
    std::fs::create_dir_all(&dir).unwrap();
    export_in_pages(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_export_in_pages() {
    if let Some(url) = msec_testkit::postgres_url() {
        export_in_pages(&url);
    }
}

/// New subjects get data keys while another connection rotates the KEK over and over: each
/// key must end up wrapped under the KEK that survives, never under one a rotation destroyed
/// (a transaction that waited out a rotation must see it before it makes a key).
fn rotation_races_new_subjects(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut rotator = Store::open(url, keys.clone()).unwrap();
    let mut registrar = Store::open(url, keys.clone()).unwrap();
    const SUBJECTS: usize = 120;
    let rotations = std::thread::scope(|scope| {
        let registering = scope.spawn(|| {
            for i in 0..SUBJECTS {
                let d = new_device(
                    &format!("race-{i}"),
                    &format!("subject-{i}"),
                    0,
                    "Bed",
                    "Home",
                );
                let d = NewDevice {
                    public_key: [
                        (i % 250) as u8 + 1,
                        (i / 250) as u8 + 7,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                    key_id: [
                        (i % 250) as u8 + 1,
                        (i / 250) as u8 + 7,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                        0,
                    ],
                    ..d
                };
                registrar.register_device(&d).unwrap();
            }
        });
        let mut rotations = 0;
        while !registering.is_finished() {
            rotator.rotate_keys("test").unwrap();
            rotations += 1;
            // SQLite's lock is not fair: without a gap, back-to-back rotations starve the
            // registrations past their busy timeout.
            std::thread::sleep(std::time::Duration::from_millis(3));
        }
        registering.join().unwrap();
        rotations
    });
    assert!(
        rotations > 1,
        "the rotations did not overlap the registrations"
    );
    // A fresh connection opens every profile: no data key is wrapped under a destroyed KEK.
    let mut fresh = Store::open(url, keys).unwrap();
    let names: Vec<String> = fresh
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names.len(), SUBJECTS);
    assert!(names.iter().all(|n| n == "Bed"), "{names:?}");
}

/// Two processes rotate the same key file at once (two erasures, say): each rotation must
/// finish before the next loads the file, or one re-wraps data keys under a KEK that the
/// other's save leaves out of the file, and they are lost.
fn concurrent_rotations_lose_no_kek(url: &str, dir: &std::path::Path) {
    let path = dir.join("keys.json");
    msec_vault::FileKeys::new(&path).init().unwrap();
    let provider = || -> Arc<dyn KekProvider> { Arc::new(msec_vault::FileKeys::new(&path)) };
    let mut s = Store::open(url, provider()).unwrap();
    for i in 0..20u8 {
        s.register_device(&new_device(
            &format!("rot-{i}"),
            &format!("subject-{i}"),
            i + 1,
            "Bed",
            "Home",
        ))
        .unwrap();
    }
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let mut s = Store::open(url, provider()).unwrap();
                for _ in 0..4 {
                    s.rotate_keys("test").unwrap();
                }
            });
        }
    });
    let names: Vec<String> = Store::open(url, provider())
        .unwrap()
        .devices()
        .unwrap()
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["Bed"; 20]);
}

/// Keys that change outside msec, as `MSEC_KEK` with `MSEC_KEK_PREVIOUS` do: read-only here.
struct Fixed(msec_vault::KeyRing);

impl KekProvider for Fixed {
    fn describe(&self) -> String {
        "fixed test keys".into()
    }
    fn load(&self) -> Result<msec_vault::KeyRing, msec_vault::VaultError> {
        Ok(self.0.clone())
    }
    fn save(&self, _: &msec_vault::KeyRing) -> Result<(), msec_vault::VaultError> {
        Err(msec_vault::VaultError::ReadOnly("fixed test keys".into()))
    }
}

/// A KEK from outside is rotated by re-wrapping: new key current, old one previous,
/// `rewrap_keys`, old one removed. Everything still opens under the new key alone, a key row
/// from before (a backup) does not, and a process still on the old key alone makes no new
/// data key under it (it would be lost with that key).
fn outside_keys_rotate_by_rewrapping(url: &str) {
    let old = msec_vault::KeyRing::generate();
    let mut both = old.clone();
    both.begin_rotation();
    let mut new = both.clone();
    new.finish_rotation();
    let on = |ring: &msec_vault::KeyRing| -> Arc<dyn KekProvider> { Arc::new(Fixed(ring.clone())) };
    let mut s = Store::open(url, on(&old)).unwrap();
    for i in 0..3u8 {
        s.register_device(&new_device(
            &format!("env-{i}"),
            &format!("tenant-{i}"),
            i + 1,
            "Bed",
            "Home",
        ))
        .unwrap();
    }
    let backup = key_row(url, "tenant-0");
    assert!(
        s.rotate_keys("test").is_err(),
        "msec cannot change keys it does not keep"
    );
    let mut stale = Store::open(url, on(&old)).unwrap();

    let mut s = Store::open(url, on(&both)).unwrap();
    assert_eq!(
        s.devices().unwrap().len(),
        3,
        "readable on both keys meanwhile"
    );
    assert_eq!(
        s.rewrap_keys("test").unwrap(),
        (new.current_id().to_string(), 3)
    );
    drop(s);
    let refused = stale.register_device(&new_device("env-late", "tenant-late", 9, "Bed", "Home"));
    assert!(
        matches!(&refused, Err(StoreError::Keys(m)) if m.contains("restart")),
        "{refused:?}"
    );
    drop(stale);

    let mut s = Store::open(url, on(&new)).unwrap();
    let names: Vec<String> = s.devices().unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names, vec!["Bed"; 3]);
    assert_eq!(
        key_row(url, "tenant-0").0.as_deref(),
        Some(new.current_id())
    );
    // The backup's row, put back, opens under no key msec has.
    restore_key_row(url, "tenant-0", &backup);
    assert!(Store::open(url, on(&new))
        .and_then(|mut s| s.device("env-0"))
        .is_err());
}

#[test]
fn sqlite_outside_keys_rotate_by_rewrapping() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-envkeys-"));
    std::fs::create_dir_all(&dir).unwrap();
    outside_keys_rotate_by_rewrapping(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_outside_keys_rotate_by_rewrapping() {
    if let Some(url) = msec_testkit::postgres_url() {
        outside_keys_rotate_by_rewrapping(&url);
    }
}

#[test]
fn sqlite_concurrent_rotations_lose_no_kek() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-rotations-"));
    std::fs::create_dir_all(&dir).unwrap();
    concurrent_rotations_lose_no_kek(dir.join("msec.db").to_str().unwrap(), &dir);
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_concurrent_rotations_lose_no_kek() {
    if let Some(url) = msec_testkit::postgres_url() {
        let dir = std::env::temp_dir().join(msec_testkit::unique("msec-rotations-"));
        std::fs::create_dir_all(&dir).unwrap();
        concurrent_rotations_lose_no_kek(&url, &dir);
        std::fs::remove_dir_all(dir).ok();
    }
}

#[test]
fn sqlite_rotation_races_new_subjects() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-race-"));
    std::fs::create_dir_all(&dir).unwrap();
    rotation_races_new_subjects(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_rotation_races_new_subjects() {
    if let Some(url) = msec_testkit::postgres_url() {
        rotation_races_new_subjects(&url);
    }
}

/// A subject's stored data-key row: the KEK it is wrapped under, and the wrapped key.
type KeyRow = (Option<String>, Option<Vec<u8>>);

fn key_row(url: &str, subject: &str) -> KeyRow {
    let sql = "SELECT kek_id, wrapped FROM subject_keys WHERE subject = $1";
    if url.starts_with("postgres") {
        let row = postgres::Client::connect(url, postgres::NoTls)
            .unwrap()
            .query_one(sql, &[&subject])
            .unwrap();
        (row.get(0), row.get(1))
    } else {
        rusqlite::Connection::open(url)
            .unwrap()
            .query_row(&sql.replace('$', "?"), [subject], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap()
    }
}

fn restore_key_row(url: &str, subject: &str, (kek, wrapped): &KeyRow) {
    let sql =
        "UPDATE subject_keys SET kek_id = $2, wrapped = $3, erased_ms = NULL WHERE subject = $1";
    if url.starts_with("postgres") {
        postgres::Client::connect(url, postgres::NoTls)
            .unwrap()
            .execute(sql, &[&subject, kek, wrapped])
            .unwrap();
    } else {
        rusqlite::Connection::open(url)
            .unwrap()
            .execute(
                &sql.replace('$', "?"),
                rusqlite::params![subject, kek, wrapped],
            )
            .unwrap();
    }
}

/// A database from before events had tenants (schema 4) keeps its events through migration 5:
/// listed to administrators as platform-wide, to no tenant's auditors, and still verified.
/// Through migration 6 its readings take their log indices into their rows, and every record
/// is still found in the log.
fn upgrade_keeps_records(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(url, keys.clone()).unwrap();
    s.register_device(&new_device("old-bed", "ana", 31, "Bed", "Home"))
        .unwrap();
    let event = NewEvent {
        at_ms: 1,
        reason: "bad_signature".into(),
        device_id: None,
        source: "test".into(),
        detail: "from schema 4".into(),
        tenant: None,
        nonce: msec_store::event_nonce(),
    };
    s.commit(&Batch {
        readings: vec![reading("old-bed", 1), reading("old-bed", 2)],
        events: vec![event],
        ..Default::default()
    })
    .unwrap();
    let records: Vec<RecordId> = ["device:old-bed", "reading:old-bed/1", "reading:old-bed/2"]
        .iter()
        .map(|r| r.parse().unwrap())
        .chain(
            s.security_events(10, None, None)
                .unwrap()
                .iter()
                .map(|e| format!("event:{}", e.id).parse().unwrap()),
        )
        .collect();
    let indices: Vec<Option<u64>> = records.iter().map(|r| s.leaf_index(r).unwrap()).collect();
    assert!(indices.iter().all(Option::is_some), "{indices:?}");
    drop(s);
    // Back to schema 4, as an older msec left it.
    let blob = if url.starts_with("postgres") {
        "BYTEA"
    } else {
        "BLOB"
    };
    raw(
        url,
        &format!(
            "ALTER TABLE readings DROP COLUMN leaf; \
             CREATE TABLE log_leaves_5 (idx BIGINT PRIMARY KEY, kind TEXT NOT NULL, \
                 ref TEXT NOT NULL, hash {blob} NOT NULL, UNIQUE (kind, ref)); \
             INSERT INTO log_leaves_5 SELECT idx, kind, ref, hash FROM log_leaves; \
             DROP TABLE log_leaves; ALTER TABLE log_leaves_5 RENAME TO log_leaves; \
             DELETE FROM msec_schema WHERE version = 6; \
             DROP INDEX security_events_tenant; ALTER TABLE security_events DROP COLUMN tenant; \
             DROP INDEX security_events_nonce; ALTER TABLE security_events DROP COLUMN nonce; \
             ALTER TABLE vault_state DROP COLUMN kek_id; DELETE FROM msec_schema WHERE version = 5;"
        ),
    );
    let mut s = Store::open(url, keys).unwrap();
    assert_eq!(s.schema_version().unwrap(), 6);
    let all = s.security_events(10, None, None).unwrap();
    assert_eq!(
        all.iter()
            .map(|e| (e.detail.as_str(), e.tenant.clone()))
            .collect::<Vec<_>>(),
        [("from schema 4", None)]
    );
    let santander = ["santander".to_string()];
    assert!(s
        .security_events(10, None, Some(&santander))
        .unwrap()
        .is_empty());
    let after: Vec<Option<u64>> = records.iter().map(|r| s.leaf_index(r).unwrap()).collect();
    assert_eq!(after, indices);
    for r in &records {
        let (index, leaf) = s.record_leaf(r).unwrap().expect("the record and its leaf");
        assert_eq!(
            s.leaf_hashes(index, 1).unwrap(),
            [msec_ledger::leaf_hash(&leaf)],
            "{r}"
        );
    }
    assert_eq!(findings(&mut s), []);
}

#[test]
fn sqlite_upgrade_keeps_records() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-upgrade-"));
    std::fs::create_dir_all(&dir).unwrap();
    upgrade_keeps_records(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_upgrade_keeps_records() {
    if let Some(url) = msec_testkit::postgres_url() {
        upgrade_keeps_records(&url);
    }
}

#[test]
fn sqlite_protection() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-protect-"));
    std::fs::create_dir_all(&dir).unwrap();
    protection(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_protection() {
    if let Some(url) = msec_testkit::postgres_url() {
        protection(&url);
    }
}

#[test]
fn sqlite_audit_while_writing() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-busy-"));
    std::fs::create_dir_all(&dir).unwrap();
    audit_while_writing(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_audit_while_writing() {
    if let Some(url) = msec_testkit::postgres_url() {
        audit_while_writing(&url);
    }
}
