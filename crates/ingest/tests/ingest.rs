//! Acceptance rules and the acknowledgement promise, on SQLite and PostgreSQL, through the
//! embedded broker and through Mosquitto.

use msec_device::{readings_topic, unix_now, Device, DeviceKey};
use msec_envelope::Measurement;
use msec_ingest::{
    readings_filter, run_embedded, run_mqtt, Config, Ingest, MqttConfig, Outcome, Source,
};
use msec_store::{NewDevice, ReadingQuery, Store};
use std::time::Duration;

fn register(store: &mut Store, id: &str, key: &DeviceKey) {
    store
        .register_device(&NewDevice {
            id: id.into(),
            tenant: "santander".into(),
            owner: "santander".into(),
            name: id.into(),
            kind: "environmental-monitor".into(),
            location: None,
            public_key: key.public_key(),
            key_id: key.key_id(),
        })
        .unwrap();
}

/// A new device key, registered in the database at `url` as `id` (tenant santander).
fn registered(url: &str, id: &str) -> DeviceKey {
    let key = DeviceKey::generate().unwrap();
    sync(|| {
        register(
            &mut Store::open(url, msec_testkit::test_keys()).unwrap(),
            id,
            &key,
        )
    });
    key
}

/// An envelope signed by `key` without the device library's checks: what msec must refuse.
fn unchecked(key: &DeviceKey, sequence: u64, now: f64, ms: &[Measurement]) -> Vec<u8> {
    let seed: [u8; 32] = hex::decode(key.seed_hex()).unwrap().try_into().unwrap();
    let payload = msec_envelope::encode_senml(ms).unwrap();
    msec_envelope::sign(
        &ed25519_dalek::SigningKey::from_bytes(&seed),
        sequence,
        now.floor() as i64,
        payload,
    )
}

fn temp(now: f64, v: f64) -> Vec<Measurement> {
    vec![
        Measurement::number("temperature", "Cel", now, v),
        Measurement::number("battery", "%EL", now, 77.0),
    ]
}

fn sqlite_url() -> String {
    std::env::temp_dir()
        .join(msec_testkit::unique("msec-ingest-"))
        .join("msec.db")
        .to_string_lossy()
        .into_owned()
}

/// The PostgreSQL driver is blocking: keep it off the async worker's hot path.
fn sync<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn start(url: &str) -> Ingest {
    let config = Config {
        max_skew_secs: 60,
        max_age_secs: 600,
        ..Config::default()
    };
    sync(|| {
        Ingest::start(Store::open(url, msec_testkit::test_keys()).unwrap(), config)
            .unwrap()
            .0
    })
}

async fn rules(url: String) {
    let key_a = DeviceKey::generate().unwrap();
    let key_b = DeviceKey::generate().unwrap();
    sync(|| {
        let mut s = Store::open(&url, msec_testkit::test_keys()).unwrap();
        register(&mut s, "dev-a", &key_a);
        register(&mut s, "dev-b", &key_b);
        s.revoke_device("dev-b", "test").unwrap();
    });
    let ingest = start(&url);
    let http = || Source::Http("127.0.0.1:9".into());
    let now = unix_now();
    let mut a = Device::new("dev-a", key_a.clone(), 100);

    let valid = a.seal(&temp(now, 21.0), now).unwrap();
    assert_eq!(
        ingest.submit(valid.clone(), http()).await,
        Ok(Outcome::Stored {
            device_id: "dev-a".into(),
            sequence: 100
        })
    );
    // The identical envelope again (an MQTT redelivery) is acknowledged, not stored twice.
    assert_eq!(
        ingest.submit(valid.clone(), http()).await,
        Ok(Outcome::Duplicate {
            device_id: "dev-a".into(),
            sequence: 100
        })
    );

    // Copies re-framed where no signature reaches (untagged; something in the unprotected
    // header) are that reading too: whoever delivers one first cannot make the device's own
    // resend a replay.
    let untagged = valid[1..].to_vec();
    let (len, head) = match valid[2] {
        h @ 0x40..=0x57 => (usize::from(h - 0x40), 1),
        0x58 => (usize::from(valid[3]), 2),
        other => panic!("unexpected protected header head {other:#x}"),
    };
    let at = 2 + head + len;
    assert_eq!(valid[at], 0xa0, "the empty unprotected header");
    let mut padded = valid[..at].to_vec();
    padded.extend_from_slice(&[0xa1, 0x18, 0x64, 0x63, b'a', b'b', b'c']); // {100: "abc"}
    padded.extend_from_slice(&valid[at + 1..]);
    for copy in [untagged, padded] {
        assert_eq!(
            ingest.submit(copy, http()).await,
            Ok(Outcome::Duplicate {
                device_id: "dev-a".into(),
                sequence: 100
            })
        );
    }
    assert_eq!(
        ingest.submit(valid.clone(), http()).await,
        Ok(Outcome::Duplicate {
            device_id: "dev-a".into(),
            sequence: 100
        })
    );

    let mut forged = a.seal(&temp(now, 99.0), now).unwrap();
    let last = forged.len() - 1;
    forged[last] ^= 0x55;
    let mut stranger = Device::new("nobody", DeviceKey::generate().unwrap(), 1);
    let mut revoked = Device::new("dev-b", key_b, 1);
    let mut replay = Device::new("dev-a", key_a.clone(), 50);
    let mut big = vec![];
    for i in 0..1200 {
        big.push(Measurement::text(
            &format!("blob{i}"),
            now,
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ));
    }
    let no_unit = vec![Measurement {
        name: "temperature".into(),
        unit: None,
        time: now,
        value: msec_envelope::Value::Number(1.0),
    }];
    // The tenant of each refusal's event: the device's once it is known, none before that
    // (whatever tenant a topic names).
    let st = Some("santander");
    let cases: Vec<(&str, Vec<u8>, Source, Option<&str>)> = vec![
        ("bad_signature", forged, http(), st),
        (
            "unknown_device",
            stranger.seal(&temp(now, 1.0), now).unwrap(),
            http(),
            None,
        ),
        (
            "unknown_device",
            stranger.seal(&temp(now, 1.0), now).unwrap(),
            Source::Mqtt("msec/v1/fujisawa/nobody/readings".into()),
            None,
        ),
        (
            "revoked_device",
            revoked.seal(&temp(now, 1.0), now).unwrap(),
            http(),
            st,
        ),
        (
            "replayed_sequence",
            replay.seal(&temp(now, 5.0), now).unwrap(),
            http(),
            st,
        ),
        (
            "stale_timestamp",
            a.seal(&temp(now - 3600.0, 1.0), now - 3600.0).unwrap(),
            http(),
            st,
        ),
        (
            "future_timestamp",
            a.seal(&temp(now + 3600.0, 1.0), now + 3600.0).unwrap(),
            http(),
            st,
        ),
        (
            "oversized",
            unchecked(&key_a, 1_000, now, &big),
            http(),
            None,
        ),
        (
            "malformed_envelope",
            b"\xd2\x84garbage".to_vec(),
            http(),
            None,
        ),
        (
            "malformed_senml",
            unchecked(&key_a, 1_001, now, &no_unit),
            http(),
            st,
        ),
        (
            "topic_mismatch",
            a.seal(&temp(now, 1.0), now).unwrap(),
            Source::Mqtt("msec/v1/santander/dev-b/readings".into()),
            st,
        ),
        // The right device id under another tenant is another device's topic too; the event
        // is the signer's tenant's, not the one the topic names.
        (
            "topic_mismatch",
            a.seal(&temp(now, 1.0), now).unwrap(),
            Source::Mqtt("msec/v1/fujisawa/dev-a/readings".into()),
            st,
        ),
    ];
    for (reason, bytes, source, tenant) in cases {
        let rejection = ingest.submit(bytes, source).await.expect_err(reason);
        assert_eq!(rejection.reason, reason, "{rejection}");
        assert_eq!(rejection.tenant.as_deref(), tenant, "{rejection}");
        assert!(
            rejection.event_id.is_some(),
            "{reason}: no security event id"
        );
    }
    // Readings after the rejections still flow: nothing blocked the device.
    let next = a.seal(&temp(now, 22.0), now).unwrap();
    assert!(matches!(
        ingest.submit(next, http()).await,
        Ok(Outcome::Stored { .. })
    ));
    // Older than the skew, within the age: a device that buffered while offline.
    let buffered = a.seal(&temp(now - 400.0, 23.0), now - 400.0).unwrap();
    assert!(matches!(
        ingest.submit(buffered, http()).await,
        Ok(Outcome::Stored { .. })
    ));

    sync(|| check_rules_outcome(&url, &ingest));
}

fn check_rules_outcome(url: &str, ingest: &Ingest) {
    let mut s = Store::open(url, msec_testkit::test_keys()).unwrap();
    let counts: std::collections::HashMap<String, i64> =
        s.security_event_counts().unwrap().into_iter().collect();
    for reason in [
        "bad_signature",
        "unknown_device",
        "revoked_device",
        "replayed_sequence",
        "stale_timestamp",
        "future_timestamp",
        "oversized",
        "malformed_envelope",
        "malformed_senml",
        "topic_mismatch",
    ] {
        let cases = if ["topic_mismatch", "unknown_device"].contains(&reason) {
            2
        } else {
            1
        };
        assert_eq!(
            counts.get(reason),
            Some(&cases),
            "exactly one event per refusal for {reason}: {counts:?}"
        );
        assert_eq!(
            ingest
                .metrics()
                .rejected()
                .iter()
                .find(|r| r.0 == reason)
                .unwrap()
                .1,
            cases as u64
        );
    }
    let stored = s
        .readings(
            "dev-a",
            &ReadingQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(
        stored.iter().map(|r| r.sequence).collect::<Vec<_>>(),
        // The first reading, and the two after the refusals (every reading dev-a sealed for
        // them used up a sequence number; the two made without the library, none).
        [107, 106, 100],
        "only valid readings stored"
    );
    assert_eq!(stored[2].measurements[0]["v"], 21.0);
    let dev = s.device("dev-a").unwrap().unwrap();
    assert_eq!((dev.last_sequence, dev.battery), (Some(107), Some(77.0)));
}

/// Sequence edge cases: a different reading under the sequence already accepted is a replay,
/// not a resend; the largest sequence a device may use is 2^63 - 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequence_edges() {
    let url = sqlite_url();
    let key = registered(&url, "dev-s");
    let ingest = start(&url);
    let http = || Source::Http("127.0.0.1:9".into());
    let now = unix_now();
    let first = Device::new("dev-s", key.clone(), 100)
        .seal(&temp(now, 1.0), now)
        .unwrap();
    assert!(matches!(
        ingest.submit(first, http()).await,
        Ok(Outcome::Stored { sequence: 100, .. })
    ));
    let same_sequence = Device::new("dev-s", key.clone(), 100)
        .seal(&temp(now, 2.0), now)
        .unwrap();
    let err = ingest.submit(same_sequence, http()).await.unwrap_err();
    assert_eq!(err.reason, "replayed_sequence");
    let too_big = unchecked(&key, 1 << 63, now, &temp(now, 3.0));
    let err = ingest.submit(too_big, http()).await.unwrap_err();
    assert_eq!(err.reason, "malformed_envelope");
    let largest = Device::new("dev-s", key, (1 << 63) - 1)
        .seal(&temp(now, 4.0), now)
        .unwrap();
    assert!(matches!(
        ingest.submit(largest, http()).await,
        Ok(Outcome::Stored { sequence, .. }) if sequence == (1 << 63) - 1
    ));
}

/// The timestamp is the device's to choose: the extremes of its type are refused as stale or
/// future, and the writer goes on (an overflow there used to stop it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_timestamps_are_refused() {
    let url = sqlite_url();
    let key = registered(&url, "dev-t");
    let ingest = start(&url);
    let http = || Source::Http("127.0.0.1:9".into());
    let now = unix_now();
    // These are iat = i64::MIN, 0 and i64::MAX (the conversion saturates). Times relative to
    // the signature (0: at it) keep the records' times as extreme as the signature's: before
    // 1970 a record's time is refused by the SenML rules, after that by the clock checks.
    let at_signing = [Measurement::number("temperature", "Cel", 0.0, 1.0)];
    for (sequence, (iat, reason)) in [
        (-1e300, "malformed_senml"),
        (0.0, "stale_timestamp"),
        (1e300, "future_timestamp"),
    ]
    .into_iter()
    .enumerate()
    {
        let sealed = unchecked(&key, sequence as u64 + 1, iat, &at_signing);
        let err = ingest.submit(sealed, http()).await.unwrap_err();
        assert_eq!(err.reason, reason, "{}", err.detail);
        assert!(err.event_id.is_some());
    }
    assert!(matches!(
        ingest
            .submit(unchecked(&key, 4, now, &temp(now, 2.0)), http())
            .await,
        Ok(Outcome::Stored { sequence: 4, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_sqlite() {
    rules(sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_on_postgres() {
    if let Some(url) = msec_testkit::postgres_url() {
        rules(url).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_by_another_process_takes_effect_within_seconds() {
    let url = sqlite_url();
    let key = registered(&url, "dev-r");
    let ingest = start(&url);
    let mut d = Device::new("dev-r", key, 1);
    let src = || Source::Http("t".into());
    assert!(ingest
        .submit(d.seal(&temp(unix_now(), 1.0), unix_now()).unwrap(), src())
        .await
        .is_ok());
    Store::open(&url, msec_testkit::test_keys())
        .unwrap()
        .revoke_device("dev-r", "test")
        .unwrap();
    let mut last = None;
    for _ in 0..30 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        last = ingest
            .submit(d.seal(&temp(unix_now(), 1.0), unix_now()).unwrap(), src())
            .await
            .err()
            .map(|r| r.reason);
        if last == Some("revoked_device") {
            break;
        }
    }
    assert_eq!(last, Some("revoked_device"));
}

/// A revocation written by a process whose clock is far behind (here: stamped at the epoch)
/// falls before every window of the quick refresh; the full reload still finds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_from_a_slow_clock_takes_effect_within_a_minute() {
    let url = sqlite_url();
    let key = registered(&url, "dev-s");
    let ingest = start(&url);
    let mut d = Device::new("dev-s", key, 1);
    let src = || Source::Http("t".into());
    let send = |d: &mut Device| d.seal(&temp(unix_now(), 1.0), unix_now()).unwrap();
    assert!(ingest.submit(send(&mut d), src()).await.is_ok());
    msec_testkit::raw_sql(
        &url,
        "UPDATE devices SET status = 'revoked', updated_ms = 0 WHERE id = 'dev-s'",
    );
    let started = std::time::Instant::now();
    let mut last = None;
    while started.elapsed() < Duration::from_secs(60) && last != Some("revoked_device") {
        tokio::time::sleep(Duration::from_millis(500)).await;
        last = ingest
            .submit(send(&mut d), src())
            .await
            .err()
            .map(|r| r.reason);
    }
    assert_eq!(last, Some("revoked_device"));
}

/// Publishes envelopes with QoS 1 and waits for the broker's PUBACKs.
async fn publish_all(broker: &MqttConfig, messages: Vec<(String, Vec<u8>)>, pace: Duration) {
    let mut opts = broker.client_options(msec_testkit::unique("pub-"));
    opts.set_max_packet_size(1 << 20, 1 << 20).set_inflight(100);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
    let n = messages.len();
    tokio::spawn(async move {
        for (topic, payload) in messages {
            client
                .publish(topic, rumqttc::QoS::AtLeastOnce, false, payload)
                .await
                .unwrap();
            if !pace.is_zero() {
                tokio::time::sleep(pace).await;
            }
        }
    });
    let mut acked = 0;
    while acked < n {
        match tokio::time::timeout(Duration::from_secs(20), events.poll())
            .await
            .expect("broker stalled")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
}

fn count_readings(url: &str) -> usize {
    sync(|| {
        Store::open(url, msec_testkit::test_keys())
            .unwrap()
            .counts()
            .unwrap()
            .readings as usize
    })
}

async fn wait_for_readings(url: &str, n: usize) -> usize {
    let mut count = 0;
    for _ in 0..300 {
        count = count_readings(url);
        if count >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    count
}

fn events(url: &str) -> Vec<msec_store::SecurityEvent> {
    sync(|| {
        Store::open(url, msec_testkit::test_keys())
            .unwrap()
            .security_events(10, None, None)
            .unwrap()
    })
}

/// Starts the consumer under test: msec's own subscription in a fresh embedded broker (`None`),
/// or a consumer of the external broker at `broker_url`. Returns the settings its devices
/// publish with.
async fn consume(
    broker_url: Option<&str>,
    ingest: Ingest,
    root: &str,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> (MqttConfig, tokio::task::JoinHandle<()>) {
    match broker_url {
        None => {
            let any = "127.0.0.1:0".parse().unwrap();
            let (addr, readings) =
                msec_broker::start_consuming(any, &readings_filter(root)).unwrap();
            let url = format!("mqtt://{addr}");
            let cfg = MqttConfig::from_url(&url, "unused", root).unwrap();
            (cfg, tokio::spawn(run_embedded(ingest, readings, stopped)))
        }
        Some(url) => {
            let cfg =
                MqttConfig::from_url(url, &msec_testkit::unique("msec-ingest-"), root).unwrap();
            let consumer = tokio::spawn(run_mqtt(ingest, cfg.clone(), stopped));
            tokio::time::sleep(Duration::from_millis(500)).await; // subscription in place
            (cfg, consumer)
        }
    }
}

/// Valid readings are stored and a forged one is rejected, through a real broker.
async fn through_broker(broker_url: Option<&str>, db_url: String) {
    let root = msec_testkit::unique("t");
    let key = registered(&db_url, "dev-m");
    let ingest = start(&db_url);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (cfg, consumer) = consume(broker_url, ingest.clone(), &root, stopped).await;
    let topic = readings_topic(&root, "santander", "dev-m");
    let mut d = Device::new("dev-m", key, 1);
    let now = unix_now();
    let mut msgs: Vec<_> = (0..200)
        .map(|i| (topic.clone(), d.seal(&temp(now, i as f64), now).unwrap()))
        .collect();
    let mut forged = d.seal(&temp(now, -1.0), now).unwrap();
    let l = forged.len() - 1;
    forged[l] ^= 1;
    msgs.push((topic.clone(), forged));
    publish_all(&cfg, msgs, Duration::ZERO).await;
    assert_eq!(wait_for_readings(&db_url, 200).await, 200);
    for _ in 0..50 {
        if !events(&db_url).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = events(&db_url);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "bad_signature");
    assert!(events[0].source.starts_with("mqtt "));
    stop.send(true).unwrap();
    consumer.await.unwrap();
}

/// The consumer dies mid-stream (its connection and tasks dropped without a goodbye) and a new
/// one starts with the same client id: every published reading ends up stored exactly once and
/// no redelivery is mistaken for a replay.
async fn crash_and_resume(broker_url: String, db_url: String) {
    let root = msec_testkit::unique("t");
    let client_id = msec_testkit::unique("msec-ingest-");
    let key = registered(&db_url, "dev-k");
    let cfg = MqttConfig::from_url(&broker_url, &client_id, &root).unwrap();
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let first = tokio::spawn(run_mqtt(start(&db_url), cfg.clone(), stopped.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let topic = readings_topic(&root, "santander", "dev-k");
    let mut d = Device::new("dev-k", key, 1);
    let now = unix_now();
    // Below Mosquitto's default max_queued_messages (1000) for an offline session: beyond it the
    // broker itself drops messages, which docs/operations.md tells operators to raise.
    let total = 900;
    let msgs: Vec<_> = (0..total)
        .map(|i| (topic.clone(), d.seal(&temp(now, i as f64), now).unwrap()))
        .collect();
    let publisher = tokio::spawn({
        let cfg = cfg.clone();
        async move { publish_all(&cfg, msgs, Duration::from_millis(2)).await }
    });
    // Kill the consumer once part of the stream is in.
    let stored_before = wait_for_readings(&db_url, 100).await;
    first.abort();
    let _ = first.await;
    assert!(
        stored_before >= 100 && stored_before < total,
        "kill happened mid-stream ({stored_before})"
    );
    publisher.await.unwrap();
    let second = tokio::spawn(run_mqtt(start(&db_url), cfg, stopped));
    assert_eq!(wait_for_readings(&db_url, total).await, total);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_readings(&db_url), total, "no duplicates");
    assert!(
        events(&db_url).is_empty(),
        "a redelivery was treated as hostile"
    );
    second.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_broker_sqlite() {
    through_broker(None, sqlite_url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_postgres() {
    let (Some(mqtt), Some(pg)) = (msec_testkit::mqtt_url(), msec_testkit::postgres_url()) else {
        return;
    };
    through_broker(Some(&mqtt), pg).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_crash_mosquitto() {
    let (Some(mqtt), Some(pg)) = (msec_testkit::mqtt_url(), msec_testkit::postgres_url()) else {
        return;
    };
    crash_and_resume(mqtt, pg).await;
}

/// A Mosquitto configured for throughput (1,000 messages in flight per client, as
/// docs/operations.md recommends) pushes far more than the consumer has committed; the consumer
/// must keep turning its event loop (and sending PUBACKs) however far behind the writer is.
/// This deadlocked once, when the consumer's internal queues were bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wide_inflight_window_does_not_stall_the_consumer() {
    let Some(_pg) = msec_testkit::mqtt_url() else {
        return;
    };
    let port = msec_testkit::free_port();
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-mosq-"));
    std::fs::create_dir_all(&dir).unwrap();
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_inflight_messages 1000\nmax_queued_messages 0\n"),
    )
    .unwrap();
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .spawn()
        .expect("mosquitto is installed");
    std::thread::sleep(Duration::from_millis(500));
    let url = format!("mqtt://127.0.0.1:{port}");
    let db_url = sqlite_url();
    let key = registered(&db_url, "dev-w");
    let root = msec_testkit::unique("t");
    let cfg = MqttConfig::from_url(&url, &msec_testkit::unique("msec-ingest-"), &root).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(run_mqtt(start(&db_url), cfg.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let topic = readings_topic(&root, "santander", "dev-w");
    let mut d = Device::new("dev-w", key, 1);
    let now = unix_now();
    let total = 12_000;
    let msgs: Vec<_> = (0..total)
        .map(|i| (topic.clone(), d.seal(&temp(now, i as f64), now).unwrap()))
        .collect();
    publish_all(&cfg, msgs, Duration::ZERO).await;
    let stored = wait_for_readings(&db_url, total).await;
    let _ = stop.send(true);
    let stopped_in_time = tokio::time::timeout(Duration::from_secs(15), consumer)
        .await
        .is_ok();
    let _ = broker.kill();
    let _ = broker.wait();
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(stored, total);
    assert!(
        stopped_in_time,
        "the consumer did not stop: its event loop is blocked"
    );
}

/// The embedded broker acknowledges a reading to its device on receipt and keeps its queue in
/// memory, so a stop must not leave readings in it: a consumer stopped while thousands are
/// still queued takes them all before it exits, and no sooner than they are committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_drains_the_embedded_broker() {
    let db_url = sqlite_url();
    let key = registered(&db_url, "dev-d");
    let root = msec_testkit::unique("t");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let (cfg, consumer) = consume(None, start(&db_url), &root, stopped).await;
    let topic = readings_topic(&root, "santander", "dev-d");
    let mut d = Device::new("dev-d", key, 1);
    let now = unix_now();
    let total = 3_000;
    let msgs: Vec<_> = (0..total)
        .map(|i| (topic.clone(), d.seal(&temp(now, i as f64), now).unwrap()))
        .collect();
    // Hold the database's write lock so that nothing commits before the stop and the
    // broker is sure to hold a backlog then, however fast this machine is.
    let lock = rusqlite::Connection::open(&db_url).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    // Every reading is acknowledged by the broker once this returns.
    publish_all(&cfg, msgs, Duration::ZERO).await;
    let stored_at_stop = count_readings(&db_url);
    stop.send(true).unwrap();
    let stopping = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !consumer.is_finished(),
        "the consumer stopped while nothing was committed"
    );
    lock.execute_batch("ROLLBACK").unwrap();
    tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("the consumer stops")
        .unwrap();
    // Well before the 10 s limit: the drain ended because the broker had nothing left.
    assert!(
        stopping.elapsed() < Duration::from_secs(7),
        "the drain took {:?}",
        stopping.elapsed()
    );
    assert_eq!(stored_at_stop, 0);
    assert_eq!(
        count_readings(&db_url),
        total,
        "acknowledged readings left in the embedded broker"
    );
}

/// A database that fails for longer than a few commit attempts holds ingest up but loses
/// nothing: a failed commit is retried until it succeeds, and no reading is left
/// unacknowledged (a broker would not send it again before a reconnect, and readings committed
/// after it would have made it look like a replay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_holds_ingest_up_and_loses_nothing() {
    let db_url = sqlite_url();
    let key = registered(&db_url, "dev-o");
    let root = msec_testkit::unique("t");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let ingest = start(&db_url);
    let (cfg, consumer) = consume(None, ingest.clone(), &root, stopped).await;
    let topic = readings_topic(&root, "santander", "dev-o");
    let mut d = Device::new("dev-o", key, 1);
    let now = unix_now();
    // The outage: every commit fails at once until the table is back.
    let other = rusqlite::Connection::open(&db_url).unwrap();
    other
        .execute_batch("ALTER TABLE readings RENAME TO readings_away")
        .unwrap();
    let first: Vec<_> = (0..5)
        .map(|i| (topic.clone(), d.seal(&temp(now, i as f64), now).unwrap()))
        .collect();
    publish_all(&cfg, first, Duration::ZERO).await;
    // Longer than the five attempts a stopping writer makes.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        ingest
            .metrics()
            .storage_failures
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 5
    );
    assert_eq!(
        ingest
            .metrics()
            .accepted
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert!(ingest
        .metrics()
        .commit_failing
        .load(std::sync::atomic::Ordering::Relaxed));
    other
        .execute_batch("ALTER TABLE readings_away RENAME TO readings")
        .unwrap();
    publish_all(
        &cfg,
        vec![(topic.clone(), d.seal(&temp(now, 5.0), now).unwrap())],
        Duration::ZERO,
    )
    .await;
    assert_eq!(wait_for_readings(&db_url, 6).await, 6);
    assert!(events(&db_url).is_empty(), "{:?}", events(&db_url));
    assert!(!ingest
        .metrics()
        .commit_failing
        .load(std::sync::atomic::Ordering::Relaxed));
    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(15), consumer)
        .await
        .expect("the consumer stops")
        .unwrap();
}

/// A Mosquitto with a password file: msec logs in with the user and password of its broker URL
/// (escaped characters included), and gets nothing with a wrong password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_with_a_password_file() {
    let Some(_) = msec_testkit::mqtt_url() else {
        return;
    };
    let port = msec_testkit::free_port();
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-mosq-auth-"));
    std::fs::create_dir_all(&dir).unwrap();
    let passwords = dir.join("passwords");
    let made = std::process::Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwords)
        .args(["msec", "s@cret:/pw"])
        .status()
        .expect("mosquitto_passwd is installed");
    assert!(made.success());
    let conf = dir.join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {}\npersistence false\n",
            passwords.display()
        ),
    )
    .unwrap();
    let mut broker = std::process::Command::new("mosquitto")
        .arg("-c")
        .arg(&conf)
        .spawn()
        .expect("mosquitto is installed");
    std::thread::sleep(Duration::from_millis(500));
    let db_url = sqlite_url();
    let key = registered(&db_url, "dev-p");
    let root = msec_testkit::unique("t");
    let ingest = start(&db_url);
    let url = |password: &str| format!("mqtt://msec:{password}@127.0.0.1:{port}");
    let wrong =
        MqttConfig::from_url(&url("guess"), &msec_testkit::unique("msec-ingest-"), &root).unwrap();
    let (stop_wrong, stopped) = tokio::sync::watch::channel(false);
    let refused = tokio::spawn(run_mqtt(ingest.clone(), wrong, stopped));
    let cfg = MqttConfig::from_url(
        &url("s%40cret%3A%2Fpw"),
        &msec_testkit::unique("msec-ingest-"),
        &root,
    )
    .unwrap();
    assert!(!format!("{cfg:?}").contains("cret"), "{cfg:?}");
    let topic = readings_topic(&root, "santander", "dev-p");
    let mut d = Device::new("dev-p", key, 1);
    let now = unix_now();
    // With the wrong password nothing is consumed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_all(
        &cfg,
        vec![(topic.clone(), d.seal(&temp(now, 1.0), now).unwrap())],
        Duration::ZERO,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count_readings(&db_url), 0);
    // With the right one, readings flow.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let consumer = tokio::spawn(run_mqtt(ingest.clone(), cfg.clone(), stopped));
    tokio::time::sleep(Duration::from_millis(500)).await;
    publish_all(
        &cfg,
        vec![(topic.clone(), d.seal(&temp(now, 2.0), now).unwrap())],
        Duration::ZERO,
    )
    .await;
    assert_eq!(wait_for_readings(&db_url, 1).await, 1);
    let _ = stop.send(true);
    let _ = stop_wrong.send(true);
    for task in [consumer, refused] {
        tokio::time::timeout(Duration::from_secs(15), task)
            .await
            .expect("the consumer stops")
            .unwrap();
    }
    let _ = broker.kill();
    let _ = broker.wait();
}

/// Once msec is stopping, a commit the database refuses is given up after a few attempts, so
/// an outage cannot hold the stop up: the submitter hears `storage_unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_during_an_outage_gives_up_instead_of_waiting() {
    let url = sqlite_url();
    let key = registered(&url, "dev-x");
    let ingest = start(&url);
    let other = rusqlite::Connection::open(&url).unwrap();
    other
        .execute_batch("ALTER TABLE readings RENAME TO readings_away")
        .unwrap();
    let now = unix_now();
    let envelope = Device::new("dev-x", key, 1)
        .seal(&temp(now, 1.0), now)
        .unwrap();
    let submitting = {
        let ingest = ingest.clone();
        tokio::spawn(async move {
            ingest
                .submit(envelope, Source::Http("127.0.0.1:9".into()))
                .await
        })
    };
    // Running: it waits, however long that takes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!submitting.is_finished());
    ingest.stopping();
    let outcome = tokio::time::timeout(Duration::from_secs(10), submitting)
        .await
        .expect("gave up within seconds of the stop")
        .unwrap();
    assert_eq!(outcome.unwrap_err().reason, "storage_unavailable");
}

/// A resend that arrives while the database cannot say what is stored is judged once it can:
/// a duplicate, not a replay. A resend of a device's newest reading needs no database at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_during_an_outage_is_still_a_duplicate() {
    let url = sqlite_url();
    let key = registered(&url, "dev-y");
    let ingest = start(&url);
    let http = || Source::Http("127.0.0.1:9".into());
    let now = unix_now();
    let mut device = Device::new("dev-y", key, 1);
    let envelope = device.seal(&temp(now, 1.0), now).unwrap();
    let newest = device.seal(&temp(now, 2.0), now).unwrap();
    for e in [&envelope, &newest] {
        assert!(matches!(
            ingest.submit(e.clone(), http()).await,
            Ok(Outcome::Stored { .. })
        ));
    }
    let other = rusqlite::Connection::open(&url).unwrap();
    other
        .execute_batch("ALTER TABLE readings RENAME TO readings_away")
        .unwrap();
    let at_once = tokio::time::timeout(Duration::from_secs(5), ingest.submit(newest, http())).await;
    assert!(
        matches!(at_once, Ok(Ok(Outcome::Duplicate { .. }))),
        "{at_once:?}"
    );
    let resend = {
        let ingest = ingest.clone();
        tokio::spawn(async move { ingest.submit(envelope, http()).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The wait shows, as a failing commit does.
    assert!(ingest
        .metrics()
        .commit_failing
        .load(std::sync::atomic::Ordering::Relaxed));
    other
        .execute_batch("ALTER TABLE readings_away RENAME TO readings")
        .unwrap();
    let outcome = tokio::time::timeout(Duration::from_secs(15), resend)
        .await
        .expect("judged once the database answers")
        .unwrap();
    assert!(
        matches!(outcome, Ok(Outcome::Duplicate { .. })),
        "{outcome:?}"
    );
    assert!(events(&url).is_empty(), "{:?}", events(&url));
}

/// A flood of refusals (anyone who reaches the broker or the API can cause them) stores a
/// burst of events and then only counts: every refusal is in the metrics, the ones past the
/// budget are in one `events_suppressed` event, and a device's reading in the middle of the
/// flood is stored as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refusals_is_counted_not_stored_one_by_one() {
    use msec_ingest::budget::{BURST, SUPPRESSED};
    use std::sync::atomic::Ordering::Relaxed;
    const FLOOD: usize = 3000;
    let url = sqlite_url();
    let key = registered(&url, "dev-a");
    let (ingest, writer) = sync(|| {
        Ingest::start(
            Store::open(&url, msec_testkit::test_keys()).unwrap(),
            Config::default(),
        )
        .unwrap()
    });
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..FLOOD {
        let ingest = ingest.clone();
        flood.spawn(async move {
            let source = Source::Http(format!("192.0.2.{}:9", i % 250));
            ingest
                .submit(format!("junk {i}").into_bytes(), source)
                .await
        });
    }
    let mut dev = Device::new("dev-a", key, 1);
    let now = unix_now();
    let reading = dev.seal(&temp(now, 20.0), now).unwrap();
    assert!(matches!(
        ingest
            .submit(reading, Source::Http("127.0.0.1:9".into()))
            .await,
        Ok(Outcome::Stored { .. })
    ));
    let mut with_event = 0;
    while let Some(answer) = flood.join_next().await {
        let refusal = answer.unwrap().expect_err("junk is refused");
        assert_eq!(refusal.reason, "malformed_envelope");
        with_event += usize::from(refusal.event_id.is_some());
    }
    let m = ingest.metrics();
    let counted = m
        .rejected()
        .into_iter()
        .find(|r| r.0 == "malformed_envelope");
    assert_eq!(counted, Some(("malformed_envelope", FLOOD as u64)));
    let suppressed = m.suppressed.load(Relaxed) as usize;
    assert_eq!(with_event + suppressed, FLOOD);
    // The burst, and what the steady rate refilled while the flood lasted (a few seconds).
    assert!(
        (BURST as usize..BURST as usize + 100).contains(&with_event),
        "{with_event} refusals stored one by one"
    );
    drop(ingest);
    sync(|| writer.join().unwrap());
    let (counts, newest) = sync(|| {
        let mut s = Store::open(&url, msec_testkit::test_keys()).unwrap();
        (
            s.security_event_counts().unwrap(),
            s.security_events(10, None, None).unwrap(),
        )
    });
    let stored = |reason: &str| counts.iter().find(|c| c.0 == reason).map(|c| c.1);
    assert_eq!(stored("malformed_envelope"), Some(with_event as i64));
    assert_eq!(stored(SUPPRESSED), Some(1));
    let summaries: Vec<_> = newest.iter().filter(|e| e.reason == SUPPRESSED).collect();
    assert_eq!(summaries.len(), 1, "{summaries:?}");
    assert!(
        summaries[0]
            .detail
            .starts_with(&format!("{suppressed} refusals"))
            && summaries[0]
                .detail
                .ends_with(&format!("malformed_envelope {suppressed}")),
        "{}",
        summaries[0].detail
    );
}

/// Copies of a device's key id on junk (a real reading with its signature spoiled) are refused
/// as the tenant's events, but a flood of them spends the platform-wide budget: the device's
/// own refusal in the middle of it (a replay) is still stored as an event of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_junk_in_a_devices_name_cannot_spend_its_tenants_budget() {
    use msec_ingest::budget::BURST;
    let url = sqlite_url();
    let key = registered(&url, "dev-v");
    let (ingest, writer) = sync(|| {
        Ingest::start(
            Store::open(&url, msec_testkit::test_keys()).unwrap(),
            Config::default(),
        )
        .unwrap()
    });
    let now = unix_now();
    let mut dev = Device::new("dev-v", key.clone(), 1);
    let genuine = dev.seal(&temp(now, 20.0), now).unwrap();
    let src = || Source::Http("127.0.0.1:9".into());
    assert!(matches!(
        ingest.submit(genuine.clone(), src()).await,
        Ok(Outcome::Stored { .. })
    ));
    let mut forged = tokio::task::JoinSet::new();
    for i in 0..BURST as usize + 500 {
        let (ingest, mut junk) = (ingest.clone(), genuine.clone());
        let last = junk.len() - 1 - i % 32;
        junk[last] ^= 1 + (i / 32) as u8;
        forged.spawn(async move {
            ingest
                .submit(junk, Source::Http("192.0.2.7:9".into()))
                .await
        });
    }
    while let Some(answer) = forged.join_next().await {
        let refusal = answer.unwrap().expect_err("forgeries are refused");
        assert_eq!(refusal.reason, "bad_signature");
        assert_eq!(refusal.tenant.as_deref(), Some("santander"));
    }
    // The device, restarted with its counter lost, sends sequence 1 again with other values.
    let replay = Device::new("dev-v", key, 1)
        .seal(&temp(now, 21.0), now)
        .unwrap();
    let refusal = ingest.submit(replay, src()).await.unwrap_err();
    assert_eq!(refusal.reason, "replayed_sequence");
    assert!(
        refusal.event_id.is_some(),
        "the device's own refusal was only counted: forgeries spent its tenant's budget"
    );
    drop(ingest);
    sync(|| writer.join().unwrap());
}
