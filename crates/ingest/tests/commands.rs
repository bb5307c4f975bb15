//! The command publisher: acknowledged delivery through the embedded broker, clear errors, and
//! bounded waits when the broker misbehaves (a scripted fake broker plays that part).

use msec_ingest::commands::{MAX_PAYLOAD_BYTES, PUBLISH_TIMEOUT};
use msec_ingest::CommandPublisher;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

fn embedded() -> String {
    let addr = msec_broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
    format!("mqtt://{addr}")
}

/// Subscribes to `filter` and forwards every (topic, payload) received; returns once the
/// broker has confirmed the subscription.
async fn subscriber(url: &str, filter: &str) -> mpsc::UnboundedReceiver<(String, Vec<u8>)> {
    let addr = url.trim_start_matches("mqtt://");
    let (host, port) = addr.rsplit_once(':').unwrap();
    let mut options = MqttOptions::new(
        msec_testkit::unique("sub-"),
        host.to_string(),
        port.parse().unwrap(),
    );
    options.set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(options, 100);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed, ready) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client; // keep the request channel open
        let mut subscribed = Some(subscribed);
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(s) = subscribed.take() {
                        let _ = s.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send((p.topic.clone(), p.payload.to_vec()));
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), ready)
        .await
        .expect("subscribed in time")
        .unwrap();
    rx
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_receives_exactly_what_was_acknowledged() {
    let url = embedded();
    let topic =
        msec_device::commands_topic(&msec_testkit::unique("t"), "santander", "home-001-plug");
    let mut received = subscriber(&url, &topic).await;
    let publisher = CommandPublisher::connect(&url, &msec_testkit::unique("cmd-"))
        .await
        .unwrap();

    // Bytes of every value, as a signed command would hold.
    let payload: Vec<u8> = (0..=255u8).chain([0xd2, 0x84, 0x00]).collect();
    publisher.publish(&topic, payload.clone()).await.unwrap();
    let (t, p) = tokio::time::timeout(Duration::from_secs(5), received.recv())
        .await
        .expect("delivered")
        .unwrap();
    assert_eq!(
        (t.as_str(), p.as_slice()),
        (topic.as_str(), payload.as_slice())
    );

    // Many callers at once, from clones of one handle: every message acknowledged, delivered
    // once, in some order.
    let tasks: Vec<_> = (0..20u8)
        .map(|i| {
            let publisher = publisher.clone();
            let topic = topic.clone();
            tokio::spawn(async move { publisher.publish(&topic, vec![i; 1 + i as usize]).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 20 {
        let (_, p) = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("all delivered")
            .unwrap();
        got.push(p);
    }
    got.sort();
    let mut want: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + i as usize]).collect();
    want.sort();
    assert_eq!(got, want);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        received.try_recv().is_err(),
        "a message was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_a_clear_message() {
    let err = CommandPublisher::connect("http://127.0.0.1:1883", "c")
        .await
        .unwrap_err();
    assert!(err.contains("mqtt://"), "{err}");
    let err = CommandPublisher::connect("mqtt://127.0.0.1:1883", " ")
        .await
        .unwrap_err();
    assert!(err.contains("client id"), "{err}");
    let nobody = format!("mqtt://127.0.0.1:{}", msec_testkit::free_port());
    let err = CommandPublisher::connect(&nobody, "c").await.unwrap_err();
    assert!(
        err.contains("cannot connect") && err.contains("127.0.0.1"),
        "{err}"
    );

    let url = embedded();
    let publisher = CommandPublisher::connect(&url, &msec_testkit::unique("cmd-"))
        .await
        .unwrap();
    for topic in ["", "msec/v1/+/x/commands", "msec/v1/#"] {
        let err = publisher.publish(topic, vec![1]).await.unwrap_err();
        assert!(err.contains("topic"), "{topic:?}: {err}");
    }
    let err = publisher
        .publish("msec/v1/a/b/commands", vec![0; MAX_PAYLOAD_BYTES + 1])
        .await
        .unwrap_err();
    assert!(err.contains("larger"), "{err}");
    // Refusals leave the connection usable.
    publisher
        .publish("msec/v1/a/b/commands", vec![1])
        .await
        .unwrap();
}

/// How the fake broker treats a connection.
#[derive(Clone, Copy, PartialEq)]
enum Fake {
    /// Accepts the connection, then never acknowledges a message.
    Silent,
    /// Accepts the connection, then drops it when a message arrives.
    Crash,
    /// Acknowledges every message.
    Ack,
}

/// A minimal MQTT 3.1.1 broker on a thread: the n-th connection is treated as `script[n]`
/// (the last entry repeats). Returns its URL.
fn fake_broker(script: Vec<Fake>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("mqtt://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for (n, stream) in listener.incoming().enumerate() {
            let Ok(stream) = stream else { continue };
            let mode = script[n.min(script.len() - 1)];
            std::thread::spawn(move || serve(stream, mode));
        }
    });
    url
}

fn serve(mut s: TcpStream, mode: Fake) {
    loop {
        let mut head = [0u8; 1];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let mut b = [0u8; 1];
            if s.read_exact(&mut b).is_err() {
                return;
            }
            len |= usize::from(b[0] & 0x7f) << shift;
            shift += 7;
            if b[0] & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        if s.read_exact(&mut body).is_err() {
            return;
        }
        let reply: Vec<u8> = match head[0] >> 4 {
            1 => vec![0x20, 0x02, 0x00, 0x00], // CONNECT -> CONNACK, accepted
            3 => match mode {
                Fake::Silent => continue,
                Fake::Crash => return,
                Fake::Ack => {
                    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
                    let pkid = &body[2 + topic_len..4 + topic_len];
                    vec![0x40, 0x02, pkid[0], pkid[1]] // PUBACK
                }
            },
            12 => vec![0xd0, 0x00], // PINGREQ -> PINGRESP
            14 => return,           // DISCONNECT
            _ => continue,
        };
        if s.write_all(&reply).is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_holds_no_caller_past_the_timeout() {
    let url = fake_broker(vec![Fake::Silent]);
    let publisher = CommandPublisher::connect(&url, "cmd").await.unwrap();
    let started = Instant::now();
    // Two callers: one on the wire, one waiting for its turn. Neither waits forever.
    let (a, b) = tokio::join!(
        publisher.publish("msec/v1/a/b/commands", vec![1]),
        publisher.publish("msec/v1/a/b/commands", vec![2]),
    );
    let elapsed = started.elapsed();
    for err in [a.unwrap_err(), b.unwrap_err()] {
        assert!(
            err.contains("no PUBACK") && err.contains("within 5 s"),
            "{err}"
        );
    }
    assert!(
        elapsed >= PUBLISH_TIMEOUT - Duration::from_millis(100)
            && elapsed < PUBLISH_TIMEOUT + Duration::from_secs(2),
        "{elapsed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_fails_fast_and_the_next_publish_reconnects() {
    let url = fake_broker(vec![Fake::Crash, Fake::Ack]);
    let publisher = CommandPublisher::connect(&url, "cmd").await.unwrap();
    let started = Instant::now();
    let err = publisher
        .publish("msec/v1/a/b/commands", vec![1])
        .await
        .unwrap_err();
    assert!(err.contains("connection lost"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The next publish gets a fresh connection, and its own PUBACK.
    for i in 0..3u8 {
        publisher
            .publish("msec/v1/a/b/commands", vec![i])
            .await
            .unwrap();
    }
}
