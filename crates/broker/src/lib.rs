//! The MQTT broker embedded in msec (rumqttd), so that `msec demo` and `msec serve` need no
//! external services. It is a plain MQTT 3.1.1 broker on a loopback address by default; msec's
//! own consumer connects to it over TCP exactly as it would to Mosquitto, so both modes run the
//! same ingest code. This crate only configures and starts the broker; it never inspects
//! messages.

use std::net::{IpAddr, SocketAddr};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("the embedded MQTT broker cannot listen on {addr}: {source} (is another broker, e.g. Mosquitto, using that port? choose another with --mqtt, or use it with --broker mqtt://{addr})")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start the embedded MQTT broker thread: {0}")]
    Thread(std::io::Error),
}

/// Largest MQTT payload the embedded broker relays. Larger than msec's envelope limit on
/// purpose: an oversized reading must reach ingest so its rejection is recorded.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

fn config(listen: SocketAddr) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: MAX_PAYLOAD_BYTES,
        max_inflight_count: 1000,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "msec-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 1000,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some([("msec".to_string(), server)].into_iter().collect()),
        ..Default::default()
    }
}

/// Starts the broker on its own thread, listening on `listen`. Fails early, with a clear
/// message, if the address is taken. The broker runs until the process exits.
pub fn start(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    // rumqttd reports bind failures only in its log, from another thread; probe first so the
    // user gets an error instead of a broker that silently never listens.
    let probe = std::net::TcpListener::bind(listen).map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let listen = probe.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    drop(probe);
    if reachable_from_other_hosts(listen) {
        tracing::warn!(
            %listen,
            "the embedded MQTT broker authenticates no client and has no TLS: anyone who can reach \
             this address can subscribe to every device's readings and commands, publish on any topic, \
             and exhaust msec's memory. Keep it on a loopback address, or use --broker with a Mosquitto that has TLS and ACLs \
             (docs/operations.md)"
        );
    }
    let mut broker = rumqttd::Broker::new(config(listen));
    std::thread::Builder::new()
        .name("msec-mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    // Wait until it listens, so callers can connect straight away. Probing by binding (which
    // fails once rumqttd holds the port) rather than connecting keeps its log free of
    // "connection closed by peer" errors.
    for _ in 0..200 {
        if std::net::TcpListener::bind(listen).is_err() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Ok(listen)
}

/// Whether clients on other machines may reach a broker listening on `listen`: anything but a
/// loopback address (an IPv4 loopback written as an IPv6-mapped address included).
fn reachable_from_other_hosts(listen: SocketAddr) -> bool {
    match listen.ip() {
        IpAddr::V4(ip) => !ip.is_loopback(),
        IpAddr::V6(ip) => {
            !(ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::reachable_from_other_hosts;

    #[test]
    fn only_loopback_listeners_count_as_private() {
        for private in [
            "127.0.0.1:1884",
            "127.8.9.10:1",
            "[::1]:1884",
            "[::ffff:127.0.0.1]:1884",
        ] {
            assert!(
                !reachable_from_other_hosts(private.parse().unwrap()),
                "{private}"
            );
        }
        for public in [
            "0.0.0.0:1884",
            "192.168.1.20:1884",
            "[::]:1884",
            "[fe80::1]:1884",
        ] {
            assert!(
                reachable_from_other_hosts(public.parse().unwrap()),
                "{public}"
            );
        }
    }
}
