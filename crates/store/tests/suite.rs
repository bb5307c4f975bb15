//! One behavioural suite, run against embedded SQLite and against PostgreSQL.

use msec_store::*;
use msec_vault::MemoryKeys;
use std::sync::Arc;

fn device(id: &str, byte: u8) -> NewDevice {
    NewDevice {
        id: id.into(),
        tenant: "santander".into(),
        owner: format!("owner-of-{id}"),
        name: format!("Device {id}"),
        kind: "environmental-monitor".into(),
        location: Some(Location {
            lat: 43.47,
            lon: -3.81,
            label: "Las Llamas".into(),
        }),
        public_key: [byte; 32],
        key_id: [byte; 16],
    }
}

fn reading(device: &str, seq: i64) -> NewReading {
    NewReading {
        device_id: device.into(),
        sequence: seq,
        issued_at: 1_700_000_000 + seq,
        received_ms: 1_700_000_000_000 + seq,
        envelope: vec![seq as u8; 10],
        digest: [seq as u8; 32],
        measurements_json: format!(r#"[{{"n":"temperature","u":"Cel","t":1.0,"v":{seq}}}]"#),
    }
}

fn suite(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(url, keys.clone()).unwrap();
    assert_eq!(s.schema_version().unwrap(), 6);

    // Registry: register, show, list, duplicate refusal, revoke.
    let d = s.register_device(&device("d1", 1)).unwrap();
    assert_eq!(d.status, DeviceStatus::Active);
    assert_eq!(d.location.as_ref().unwrap().label, "Las Llamas");
    assert!(matches!(
        s.register_device(&device("d1", 2)),
        Err(StoreError::Conflict(_))
    ));
    assert!(
        matches!(
            s.register_device(&device("d2", 1)),
            Err(StoreError::Conflict(_))
        ),
        "same key twice"
    );
    // A profile that breaks a rule is refused before anything is stored: a NaN latitude once
    // got in, and then every read of the registry failed.
    let bad_location = |lat: f64, lon: f64| NewDevice {
        location: Some(Location {
            lat,
            lon,
            label: "x".into(),
        }),
        ..device("bad", 9)
    };
    for bad in [
        bad_location(f64::NAN, 0.0),
        bad_location(0.0, f64::INFINITY),
        bad_location(999.0, 0.0),
        bad_location(0.0, -181.0),
        NewDevice {
            name: "line\nbreak".into(),
            ..device("bad", 9)
        },
        NewDevice {
            kind: "k".repeat(65),
            ..device("bad", 9)
        },
    ] {
        assert!(matches!(
            s.register_device(&bad),
            Err(StoreError::Invalid(_))
        ));
    }
    assert!(s.device("bad").unwrap().is_none());
    // Ids, tenants and owners become MQTT topic levels and URL segments: `/`, `+`, `#`, spaces
    // or length would change what they address.
    let long = "x".repeat(65);
    for bad in ["", "a b", "a/b", "a+b", "a#b", "é", long.as_str()] {
        for d in [
            NewDevice {
                id: bad.into(),
                ..device("bad", 9)
            },
            NewDevice {
                tenant: bad.into(),
                ..device("bad", 9)
            },
            NewDevice {
                owner: bad.into(),
                ..device("bad", 9)
            },
        ] {
            assert!(
                matches!(s.register_device(&d), Err(StoreError::Invalid(_))),
                "{bad:?} accepted"
            );
        }
    }
    // A data subject belongs to one tenant: its export and erasure cover all it owns. The
    // refusal does not say which tenant has her: the caller may know only its own.
    let elsewhere = NewDevice {
        tenant: "fujisawa".into(),
        owner: "owner-of-d1".into(),
        ..device("d1-twin", 11)
    };
    let err = s.register_device(&elsewhere).unwrap_err();
    assert!(
        matches!(&err, StoreError::Invalid(m) if m.contains("another tenant") && !m.contains("santander")),
        "{err}"
    );
    assert_eq!(s.subject_tenants("owner-of-d1").unwrap(), ["santander"]);
    assert!(s.subject_tenants("nobody").unwrap().is_empty());
    // `platform/…` resources are the platform's own (every tenant's security events).
    let platform = NewDevice {
        tenant: RESERVED_TENANT.into(),
        ..device("bad", 9)
    };
    assert!(matches!(
        s.register_device(&platform),
        Err(StoreError::Invalid(_))
    ));
    assert!(s.devices().unwrap().iter().all(|d| d.id == "d1"));
    // Consents and grants that could never mean anything are refused, not stored.
    for (grantee, purpose) in [
        ("a b", "care"),
        ("caregiver:ana", "line\nbreak"),
        ("caregiver:ana", " "),
    ] {
        assert!(
            matches!(
                s.give_consent("owner-of-d1", grantee, purpose),
                Err(StoreError::Invalid(_))
            ),
            "{grantee:?} {purpose:?}"
        );
    }
    let window = |from: Option<i64>, until: Option<i64>| NewGrant {
        effect: "allow".into(),
        subject: "caregiver-ana".into(),
        actions: vec!["read".into()],
        resource: "santander/owner-of-d1/**".into(),
        valid_from_ms: from,
        valid_until_ms: until,
        purpose: None,
    };
    let later = now_ms() + 3_600_000;
    for (from, until) in [(Some(later), Some(later - 1)), (None, Some(1_000))] {
        assert!(
            matches!(
                s.add_grant(&window(from, until), "t"),
                Err(StoreError::Invalid(_))
            ),
            "{from:?} {until:?}"
        );
    }
    // A role other than admin and caregiver names its tenant: a bare one would match nobody.
    let to = |subject: &str| NewGrant {
        subject: subject.into(),
        ..window(None, None)
    };
    assert!(matches!(
        s.add_grant(&to("role:operator"), "t"),
        Err(StoreError::Invalid(_))
    ));
    // Resource patterns are bounded whoever adds them (the API and the CLI alike).
    for resource in [
        format!("santander/{}", "x".repeat(250)),
        "santander/a\nb".into(),
    ] {
        let g = NewGrant {
            resource: resource.clone(),
            ..window(None, None)
        };
        assert!(
            matches!(s.add_grant(&g, "t"), Err(StoreError::Invalid(_))),
            "{resource:?}"
        );
    }
    assert!(s.grants().unwrap().is_empty());
    s.register_device(&device("d2", 2)).unwrap();
    assert_eq!(
        s.devices()
            .unwrap()
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>(),
        ["d1", "d2"]
    );
    let before = now_ms();
    assert!(s.revoke_device("d2", "test").unwrap());
    assert!(!s.revoke_device("nope", "test").unwrap());
    assert_eq!(
        s.device("d2").unwrap().unwrap().status,
        DeviceStatus::Revoked
    );
    assert!(s
        .devices_changed_since(before)
        .unwrap()
        .iter()
        .any(|d| d.id == "d2"));
    assert!(s.device("nope").unwrap().is_none());

    // Batches: readings, events and device metadata commit together.
    let batch = Batch {
        readings: (1..=5).map(|i| reading("d1", i)).collect(),
        events: vec![NewEvent {
            at_ms: 5,
            reason: "bad_signature".into(),
            device_id: Some("d1".into()),
            source: "test".into(),
            detail: "forged".into(),
            tenant: Some("t1".into()),
            nonce: msec_store::event_nonce(),
        }],
        devices: vec![DeviceUpdate {
            device_id: "d1".into(),
            last_seen_ms: 99,
            last_sequence: 5,
            battery: Some(80.0),
            link: None,
        }],
    };
    let ids = s.commit(&batch).unwrap();
    assert_eq!(ids.len(), 1);
    // Redelivery of the same readings is idempotent, and so is the same batch committed again
    // (after a COMMIT whose answer was lost): its event is stored and logged once.
    s.commit(&Batch {
        readings: batch.readings.clone(),
        ..Default::default()
    })
    .unwrap();
    let logged = s.leaf_hashes(0, u64::MAX).unwrap().len();
    assert_eq!(s.commit(&batch).unwrap(), ids);
    assert_eq!(s.leaf_hashes(0, u64::MAX).unwrap().len(), logged);
    assert_eq!(s.counts().unwrap().security_events, 1);
    let d1 = s.device("d1").unwrap().unwrap();
    assert_eq!(
        (d1.last_seen_ms, d1.last_sequence, d1.battery),
        (Some(99), Some(5), Some(80.0))
    );
    // Several devices in one batch; a reading without battery keeps the last known level.
    s.commit(&Batch {
        devices: vec![
            DeviceUpdate {
                device_id: "d1".into(),
                last_seen_ms: 120,
                last_sequence: 6,
                battery: None,
                link: Some(55.0),
            },
            DeviceUpdate {
                device_id: "d2".into(),
                last_seen_ms: 121,
                last_sequence: 1,
                battery: Some(12.5),
                link: None,
            },
        ],
        ..Default::default()
    })
    .unwrap();
    let (d1, d2) = (
        s.device("d1").unwrap().unwrap(),
        s.device("d2").unwrap().unwrap(),
    );
    assert_eq!(
        (d1.last_seen_ms, d1.last_sequence, d1.battery, d1.link),
        (Some(120), Some(6), Some(80.0), Some(55.0))
    );
    // d2 is revoked (above): what a reading that raced the revocation says is not written.
    assert_eq!(
        (d2.last_seen_ms, d2.last_sequence, d2.battery, d2.link),
        (None, None, None, None)
    );
    assert_eq!(s.counts().unwrap().readings, 5);
    assert_eq!(s.reading_digest("d1", 3).unwrap().unwrap(), vec![3u8; 32]);
    assert!(s.reading_digest("d1", 9).unwrap().is_none());

    // Queries: newest first, limit, cursor, time window.
    let page = s
        .readings(
            "d1",
            &ReadingQuery {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(page.iter().map(|r| r.sequence).collect::<Vec<_>>(), [5, 4]);
    assert_eq!(page[0].measurements[0]["v"], 5);
    let next = s
        .readings(
            "d1",
            &ReadingQuery {
                limit: 10,
                before_sequence: Some(4),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        next.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        [3, 2, 1]
    );
    let window = ReadingQuery {
        limit: 10,
        from_ms: Some(1_700_000_002_000),
        to_ms: Some(1_700_000_003_000),
        ..Default::default()
    };
    assert_eq!(s.readings("d1", &window).unwrap().len(), 2);

    let ev = s.security_events(10, None, None).unwrap();
    assert_eq!((ev.len(), ev[0].reason.as_str()), (1, "bad_signature"));
    assert_eq!(
        s.security_event_counts().unwrap(),
        vec![("bad_signature".to_string(), 1)]
    );

    // Each tenant's auditors read that tenant's events; platform-wide ones only unfiltered.
    let event = |tenant: Option<&str>| NewEvent {
        at_ms: 6,
        reason: "unknown_device".into(),
        device_id: None,
        source: "test".into(),
        detail: "no such key".into(),
        tenant: tenant.map(str::to_owned),
        nonce: msec_store::event_nonce(),
    };
    s.commit(&Batch {
        events: vec![event(Some("t2")), event(None), event(Some("t1"))],
        ..Default::default()
    })
    .unwrap();
    let tenants_of = |ev: Vec<msec_store::SecurityEvent>| -> Vec<Option<String>> {
        ev.into_iter().map(|e| e.tenant).collect()
    };
    let only = |tenants: &[&str]| tenants.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let of = |tenants: &[Option<&str>]| -> Vec<Option<String>> {
        tenants.iter().map(|t| t.map(str::to_owned)).collect()
    };
    assert_eq!(
        tenants_of(s.security_events(10, None, None).unwrap()),
        of(&[Some("t1"), None, Some("t2"), Some("t1")])
    );
    assert_eq!(
        tenants_of(s.security_events(10, None, Some(&only(&["t1"]))).unwrap()),
        of(&[Some("t1"), Some("t1")])
    );
    assert_eq!(
        tenants_of(
            s.security_events(10, None, Some(&only(&["t2", "t1"])))
                .unwrap()
        ),
        of(&[Some("t1"), Some("t2"), Some("t1")])
    );
    let newest_t1 = s.security_events(1, None, Some(&only(&["t1"]))).unwrap()[0].id;
    assert_eq!(
        s.security_events(10, Some(newest_t1), Some(&only(&["t1"])))
            .unwrap()[0]
            .reason,
        "bad_signature"
    );
    assert!(s.security_events(10, None, Some(&[])).unwrap().is_empty());
    assert!(s
        .security_events(10, None, Some(&["t3".to_string()]))
        .unwrap()
        .is_empty());

    // A failing batch leaves nothing behind (reading for an unregistered device violates the FK).
    let bad = Batch {
        readings: vec![reading("d1", 6), reading("ghost", 1)],
        ..Default::default()
    };
    assert!(s.commit(&bad).is_err());
    assert!(s.reading_digest("d1", 6).unwrap().is_none());

    // Users and API tokens: stored hashed, disabled and revoked, never duplicated.
    let user = NewUser {
        id: "user:olga".into(),
        tenant: "santander".into(),
        roles: vec!["operator".into(), "auditor".into()],
        password_hash: "$argon2id$stand-in".into(),
    };
    // Every change of users, tokens or grants moves the access version: a running server
    // polls it to pick up what another process (the CLI) changed, a revoked grant included.
    let mut version = s.access_version().unwrap();
    let mut moved = |s: &mut Store, what: &str| {
        let now = s.access_version().unwrap();
        assert!(now > version, "{what} did not move the access version");
        version = now;
    };
    for tenant in [RESERVED_TENANT, "a/b", ""] {
        let bad = NewUser {
            tenant: tenant.into(),
            ..user.clone()
        };
        assert!(
            matches!(s.add_user(&bad, "test"), Err(StoreError::Invalid(_))),
            "tenant {tenant:?} accepted"
        );
    }
    assert_eq!(
        s.add_user(&user, "test").unwrap().roles,
        ["operator", "auditor"]
    );
    moved(&mut s, "add_user");
    // Actuator command ids keep growing across restarts: the newest logged one is found.
    assert_eq!(s.last_command_id().unwrap(), None);
    // Two sent at once may be logged out of order.
    for id in [1_764_000_000_000_124u64, 1_764_000_000_000_123] {
        let detail = format!("command {id} plug/switch on topic msec/v1/santander/d1/commands");
        s.log_admin("op", "device.command", "d1", &detail).unwrap();
    }
    s.log_admin("op", "device.command_unconfirmed", "d1", "command 9 …")
        .unwrap();
    assert_eq!(s.last_command_id().unwrap(), Some(1_764_000_000_000_124));
    // A tenant's first device makes the tenant known to access control; its next does not.
    let of_tenant = |id: &str, byte: u8| NewDevice {
        tenant: "bilbao".into(),
        ..device(id, byte)
    };
    s.register_device(&of_tenant("b-1", 71)).unwrap();
    moved(&mut s, "the first device of a tenant");
    let known = s.access_version().unwrap();
    s.register_device(&of_tenant("b-2", 72)).unwrap();
    assert_eq!(s.access_version().unwrap(), known);
    assert!(matches!(
        s.add_user(&user, "test"),
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        s.password_hash("user:olga").unwrap().as_deref(),
        Some("$argon2id$stand-in")
    );
    assert!(s.disable_user("user:olga", "test").unwrap());
    moved(&mut s, "disable_user");
    assert!(!s.disable_user("user:olga", "test").unwrap());
    assert!(
        s.password_hash("user:olga").unwrap().is_none(),
        "a disabled user cannot log in"
    );
    assert!(s.users().unwrap()[0].disabled);
    let token = NewToken {
        id: "0123456789abcdef".into(),
        principal: "user:olga".into(),
        scopes: vec!["read".into()],
        secret_hash: [7; 32],
        expires_ms: 99,
    };
    s.add_token(&token, "test").unwrap();
    assert!(matches!(
        s.add_token(&token, "test"),
        Err(StoreError::Conflict(_))
    ));
    let (stored, hash) = s.token("0123456789abcdef").unwrap().unwrap();
    assert_eq!(
        (stored.scopes, stored.expires_ms, stored.revoked, hash),
        (vec!["read".to_string()], 99, false, vec![7u8; 32])
    );
    assert!(s.revoke_token("0123456789abcdef", "test").unwrap());
    moved(&mut s, "revoke_token");
    let grant = NewGrant {
        effect: "deny".into(),
        subject: "user:olga".into(),
        actions: vec!["read".into()],
        resource: "santander/**".into(),
        valid_from_ms: None,
        valid_until_ms: None,
        purpose: None,
    };
    let grant = s.add_grant(&grant, "test").unwrap();
    moved(&mut s, "add_grant");
    assert!(s.revoke_grant(grant.id, "test").unwrap());
    moved(&mut s, "revoke_grant");
    // Each of those changes is an administrative action with its own log leaf.
    let logged: Vec<Vec<u8>> = (1..)
        .map_while(|i| {
            s.record_leaf(&format!("admin:{i}").parse().unwrap())
                .unwrap()
        })
        .map(|(_, leaf)| leaf)
        .collect();
    for action in [
        "user.add",
        "user.disable",
        "token.create",
        "token.revoke",
        "grant.create",
        "grant.revoke",
    ] {
        let found = logged
            .iter()
            .filter(|leaf| leaf.windows(action.len()).any(|w| w == action.as_bytes()))
            .count();
        assert_eq!(found, 1, "{action} logged {found} times");
    }
    assert!(s.tokens().unwrap()[0].revoked);
    assert!(s.token("nope").unwrap().is_none());

    // Reopening applies no migration twice and keeps the data.
    drop(s);
    let mut s = Store::open(url, keys).unwrap();
    assert_eq!(s.counts().unwrap().readings, 5);
    assert_eq!(
        s.readings(
            "d1",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            }
        )
        .unwrap()[0]
            .sequence,
        5
    );

    // A batch where some readings are already stored (another process stored them, or an
    // earlier commit of it whose answer was lost): the new ones get the log's next indices.
    s.commit(&Batch {
        readings: vec![
            reading("d1", 4),
            reading("d1", 20),
            reading("d1", 5),
            reading("d1", 21),
        ],
        ..Default::default()
    })
    .unwrap();
    let end = s.leaf_hashes(0, u64::MAX).unwrap().len() as u64;
    let logged_at = |s: &mut Store, seq: i64, index: u64| {
        let id = format!("reading:d1/{seq}").parse().unwrap();
        let (at, leaf) = s.record_leaf(&id).unwrap().unwrap();
        assert_eq!(at, index, "{id}");
        assert_eq!(
            s.leaf_hashes(at, 1).unwrap(),
            [msec_ledger::leaf_hash(&leaf)]
        );
    };
    logged_at(&mut s, 20, end - 2);
    logged_at(&mut s, 21, end - 1);
    // One (device, sequence) twice in a batch: stored and logged once.
    s.commit(&Batch {
        readings: vec![reading("d1", 30), reading("d1", 30), reading("d1", 31)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.leaf_hashes(0, u64::MAX).unwrap().len() as u64, end + 2);
    logged_at(&mut s, 30, end);
    logged_at(&mut s, 31, end + 1);
}

#[test]
fn sqlite_behaviour() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-store-"));
    suite(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_behaviour() {
    if let Some(url) = msec_testkit::postgres_url() {
        suite(&url);
    }
}

/// Several processes starting on one new database at the same moment: each applies the
/// migrations or finds them applied, and every one starts.
fn concurrent_first_opens(url: &str) {
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    std::thread::scope(|scope| {
        let opens: Vec<_> = (0..4)
            .map(|_| scope.spawn(|| Store::open(url, keys.clone()).map(drop)))
            .collect();
        for open in opens {
            open.join().unwrap().unwrap();
        }
    });
    assert_eq!(Store::open(url, keys).unwrap().schema_version().unwrap(), 6);
}

#[test]
fn sqlite_concurrent_first_opens() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-first-"));
    std::fs::create_dir_all(&dir).unwrap();
    concurrent_first_opens(dir.join("msec.db").to_str().unwrap());
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn postgres_concurrent_first_opens() {
    if let Some(url) = msec_testkit::postgres_url() {
        concurrent_first_opens(&url);
    }
}

#[test]
fn unreachable_database_is_a_clear_error() {
    let err = Store::open(
        "postgres://nobody:secret@127.0.0.1:1/none",
        Arc::new(MemoryKeys::new()),
    )
    .err()
    .unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains("PostgreSQL") && !msg.contains("secret"),
        "{msg}"
    );
    // A mistyped scheme is not taken for a file name; nor is a database that keeps nothing.
    let cwd_before: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    for url in [
        "mysql://root:pw@127.0.0.1/x",
        "SQLITE:/tmp/x.db",
        "postgress://u@h/db",
        "sqlite::memory:",
        "sqlite:",
        "",
    ] {
        let msg = Store::open(url, Arc::new(MemoryKeys::new()))
            .err()
            .unwrap()
            .to_string();
        assert!(
            msg.contains("scheme") || msg.contains("file path"),
            "{url}: {msg}"
        );
        assert!(!msg.contains("pw@"), "{msg}");
    }
    let cwd_after: Vec<_> = std::fs::read_dir(".")
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(cwd_before.len(), cwd_after.len(), "a file was created");
}

/// Ingest's commits leave copying the SQLite log into the database file to a thread of its
/// own: a commit that crosses the usual 1,000-page mark copies nothing, and the checkpointer
/// does copy.
#[test]
fn sqlite_checkpoints_run_beside_the_writer() {
    let (mut s, dir) = sqlite_with_device();
    let size = |name: &str| file_len(&dir.join(name));
    // Started and stopped at once: what remains is a writer that never checkpoints.
    drop(
        s.checkpoint_in_background(WalCheckpointer::LOG_LIMIT_BYTES)
            .unwrap()
            .expect("SQLite has a checkpointer"),
    );
    let before = size("msec.db");
    let mut seq = 0;
    while size("msec.db-wal") < 6 << 20 {
        s.commit(&next_readings("d1", &mut seq, 200)).unwrap();
    }
    assert_eq!(
        size("msec.db"),
        before,
        "a commit copied the log into the database file"
    );

    let checkpoints = s
        .checkpoint_in_background(WalCheckpointer::LOG_LIMIT_BYTES)
        .unwrap()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while size("msec.db") < before + (2 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpointer copied nothing"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // Writing goes on while it runs, and everything stays readable.
    s.commit(&Batch {
        readings: vec![reading("d1", seq + 1)],
        ..Default::default()
    })
    .unwrap();
    drop(checkpoints);
    assert_eq!(s.counts().unwrap().readings, seq + 1);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

/// A fresh SQLite store holding device "d1", in a directory of its own (returned, so a test
/// can look at the database's files).
fn sqlite_with_device() -> (Store, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-store-"));
    let path = dir.join("msec.db");
    let mut s = Store::open(path.to_str().unwrap(), Arc::new(MemoryKeys::new())).unwrap();
    s.register_device(&device("d1", 1)).unwrap();
    (s, dir)
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// A batch of `n` readings of `device`, with the sequence numbers after `*seq`.
fn next_readings(device: &str, seq: &mut i64, n: usize) -> Batch {
    Batch {
        readings: (0..n)
            .map(|_| {
                *seq += 1;
                reading(device, *seq)
            })
            .collect(),
        ..Default::default()
    }
}

/// Under steady writes a passive checkpoint never catches up, so without more the log grows
/// for as long as ingest runs. The checkpointer starts it over once it passes its limit, while
/// the writer keeps committing at the ingest writer's pace.
#[test]
fn sqlite_log_stays_bounded_under_steady_writes() {
    let (mut s, dir) = sqlite_with_device();
    let wal = || file_len(&dir.join("msec.db-wal"));
    let limit = 1 << 20;
    let checkpoints = s.checkpoint_in_background(limit).unwrap().unwrap();
    let (mut seq, mut largest, mut rewritten) = (0, 0, 0);
    // Goes on until 20 commits were written over the log's start again, or fails after 60 s.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while rewritten < 20 {
        assert!(
            std::time::Instant::now() < deadline,
            "the log never started over (largest {largest} bytes)"
        );
        let before = wal();
        s.commit(&next_readings("d1", &mut seq, 50)).unwrap();
        // A log that started over is rewritten from its first page: the file stops growing.
        let after = wal();
        if after <= before && before > limit {
            rewritten += 1;
        }
        largest = largest.max(after);
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(checkpoints);
    assert!(
        largest < 4 * limit,
        "the log reached {largest} bytes with a limit of {limit}"
    );
    assert_eq!(s.counts().unwrap().readings, seq);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

/// A reader in the middle of a long query keeps the log from starting over, and a restarting
/// checkpoint holds commits off while it waits for that reader. It gives up after a short wait
/// and then leaves the writer alone for a while, instead of stalling a commit on every pass for
/// as long as the reader lasts; once the reader is done, the log starts over again.
#[test]
fn sqlite_long_reader_does_not_stall_the_writer() {
    let (mut s, dir) = sqlite_with_device();
    let wal = || file_len(&dir.join("msec.db-wal"));
    let limit = 256 << 10;
    let mut seq = 0;
    // Past the limit before the checkpointer starts, so it tries to restart on every pass.
    while wal() <= limit {
        s.commit(&next_readings("d1", &mut seq, 50)).unwrap();
    }
    let reader = rusqlite::Connection::open(dir.join("msec.db")).unwrap();
    reader
        .execute_batch("BEGIN; SELECT COUNT(*) FROM readings;")
        .unwrap();
    let checkpoints = s.checkpoint_in_background(limit).unwrap().unwrap();
    let (mut slow, started) = (0, std::time::Instant::now());
    while started.elapsed() < std::time::Duration::from_secs(2) {
        let t = std::time::Instant::now();
        s.commit(&next_readings("d1", &mut seq, 10)).unwrap();
        if t.elapsed() > std::time::Duration::from_millis(40) {
            slow += 1;
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    // One pass every 200 ms: about ten held commits in 2 s without the pause after giving up.
    assert!(slow <= 3, "{slow} commits were held off in 2 s");
    reader.execute_batch("COMMIT").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let before = wal();
        s.commit(&next_readings("d1", &mut seq, 10)).unwrap();
        if wal() <= before && before > limit {
            break; // written over the log's start again
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log did not start over after the reader finished"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    drop(checkpoints);
    assert_eq!(s.counts().unwrap().readings, seq);
    drop(s);
    std::fs::remove_dir_all(dir).ok();
}

/// A database written by a newer msec is refused with a clear error, never migrated
/// "backwards" or used with a schema this build does not understand.
#[test]
fn database_from_a_newer_msec_is_refused() {
    let (s, dir) = sqlite_with_device();
    drop(s);
    let path = dir.join("msec.db");
    msec_testkit::raw_sql(
        path.to_str().unwrap(),
        "INSERT INTO msec_schema (version, applied_ms) VALUES (9999, 0)",
    );
    let err = Store::open(path.to_str().unwrap(), Arc::new(MemoryKeys::new()))
        .err()
        .expect("a newer schema is refused");
    assert!(err.to_string().contains("newer than this msec"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(unix)]
#[test]
fn the_sqlite_database_is_private_to_its_user() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir()
        .join(msec_testkit::unique("msec-private-"))
        .join("data");
    let db = dir.join("msec.db");
    let keys: Arc<dyn KekProvider> = Arc::new(MemoryKeys::new());
    let mut s = Store::open(db.to_str().unwrap(), keys.clone()).unwrap();
    s.register_device(&device("d1", 1)).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for file in ["msec.db", "msec.db-wal", "msec.db-shm"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    // An operator's own choice for an existing database is kept.
    drop(s);
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o640)).unwrap();
    let s = Store::open(db.to_str().unwrap(), keys).unwrap();
    assert_eq!(mode(&db), 0o640);
    drop(s);
}

/// A PostgreSQL connection the server dropped (a restart, a failover) is made again: the call
/// that finds it closed fails, the next one works, and a transaction is never continued on a
/// new connection.
#[test]
fn postgres_connections_lost_are_made_again() {
    let Some(url) = msec_testkit::postgres_url() else {
        return;
    };
    let name = msec_testkit::unique("msec-reconnect-");
    let mut s = Store::open(
        &format!("{url}&application_name={name}"),
        Arc::new(MemoryKeys::new()),
    )
    .unwrap();
    s.register_device(&device("r1", 31)).unwrap();
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).unwrap();
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .unwrap();
    // pg_terminate_backend returns before the backend is gone.
    while admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&name],
        )
        .unwrap()
        .get::<_, i64>(0)
        > 0
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The first use learns that the connection is gone (unless the driver saw it already);
    // the next one connects again.
    let _ = s.devices();
    assert_eq!(s.devices().unwrap().len(), 1);
    s.register_device(&device("r2", 32)).unwrap();
    assert_eq!(s.devices().unwrap().len(), 2);
}
