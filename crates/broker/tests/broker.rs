//! msec's subscription inside the embedded broker: it exists before any device can connect, and
//! it hands on every reading in order, however many the broker holds back.

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use std::net::SocketAddr;
use std::time::Duration;

fn client(broker: SocketAddr, id: &str) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, broker.ip().to_string(), broker.port());
    options.set_keep_alive(Duration::from_secs(5));
    AsyncClient::new(options, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reading_acknowledged_from_the_start_reaches_msec_in_order() {
    let (broker, mut readings) =
        msec_broker::start_consuming("127.0.0.1:0".parse().unwrap(), "msec/v1/+/+/readings")
            .unwrap();
    // A device publishing the moment the broker listens: a consumer subscribing over TCP
    // afterwards would miss what the broker acknowledged before its subscription.
    let (device, mut events) = client(broker, "device-1");
    const N: u32 = 3000; // more than the broker hands over in one batch
    let publisher = tokio::spawn(async move {
        for i in 0..N {
            device
                .publish(
                    "msec/v1/t/d1/readings",
                    QoS::AtLeastOnce,
                    false,
                    i.to_be_bytes().to_vec(),
                )
                .await
                .unwrap();
        }
        device
    });
    let mut acked = 0;
    while acked < N {
        if let Event::Incoming(Packet::PubAck(_)) =
            tokio::time::timeout(Duration::from_secs(10), events.poll())
                .await
                .expect("the broker acknowledges within 10 s")
                .unwrap()
        {
            acked += 1;
        }
    }
    let _device = publisher.await.unwrap();
    // Only now does msec ask: everything acknowledged is there, in order.
    for i in 0..N {
        let m = tokio::time::timeout(Duration::from_secs(10), readings.next())
            .await
            .expect("a reading within 10 s")
            .unwrap();
        assert_eq!(m.topic, "msec/v1/t/d1/readings");
        assert_eq!(m.payload(), &i.to_be_bytes()[..]);
    }
}

#[tokio::test]
async fn a_client_cannot_take_msecs_subscription_over() {
    let (broker, mut readings) =
        msec_broker::start_consuming("127.0.0.1:0".parse().unwrap(), "msec/v1/+/+/readings")
            .unwrap();
    // Clients named as a guess at msec's own would replace it if the guess were right.
    for id in ["msec-ingest", "msec-ingest-0", "msec"] {
        let (_c, mut ev) = client(broker, id);
        while !matches!(ev.poll().await, Ok(Event::Incoming(Packet::ConnAck(_)))) {}
    }
    let (device, mut events) = client(broker, "device-1");
    device
        .publish(
            "msec/v1/t/d1/readings",
            QoS::AtLeastOnce,
            false,
            b"r".to_vec(),
        )
        .await
        .unwrap();
    while !matches!(events.poll().await, Ok(Event::Incoming(Packet::PubAck(_)))) {}
    let m = tokio::time::timeout(Duration::from_secs(10), readings.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.payload(), b"r");
}
