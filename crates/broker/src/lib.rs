//! The MQTT broker embedded in msec (rumqttd), so that `msec demo` and `msec serve` need no
//! external services. It is a plain MQTT 3.1.1 broker on a loopback address by default. msec's
//! own consumer does not connect to it over TCP: it takes its subscription inside the process
//! ([`start_consuming`]), made before the broker listens, so no reading a device sends after
//! the start can miss it. This crate only configures and starts the broker and hands that
//! subscription's messages on; it never inspects or alters them.

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
    #[error("the embedded MQTT broker refused msec's own subscription: {0}")]
    Subscribe(String),
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

/// Starts the broker on its own thread, listening on `listen` (port 0: any free port, see
/// [`free_port`]). Fails early, with a clear message, if the address is taken or the broker
/// does not start listening. The broker runs until the process exits.
pub fn start(listen: SocketAddr) -> Result<SocketAddr, BrokerError> {
    start_with(listen, rumqttd::Broker::new)
}

/// [`start`], with msec's consumer subscribed to `filter` inside the process before the broker
/// listens. rumqttd acknowledges a publish as soon as it holds it, and a subscription made
/// later starts after what it holds: a consumer connecting over TCP after the start would
/// silently miss every reading acknowledged before its subscription.
pub fn start_consuming(
    listen: SocketAddr,
    filter: &str,
) -> Result<(SocketAddr, Subscription), BrokerError> {
    let mut subscription = None;
    let addr = start_with(listen, |config| {
        let broker = rumqttd::Broker::new(config);
        subscription = Some(Subscription::new(&broker, filter));
        broker
    })?;
    // Made whenever `start_with` succeeded, which makes the broker before it can succeed.
    let subscription = subscription
        .unwrap_or_else(|| Err(BrokerError::Subscribe("the broker was never made".into())))?;
    Ok((addr, subscription))
}

fn start_with(
    listen: SocketAddr,
    make: impl FnOnce(rumqttd::Config) -> rumqttd::Broker,
) -> Result<SocketAddr, BrokerError> {
    let bind_error = |source| BrokerError::Bind {
        addr: listen,
        source,
    };
    let mut listen = listen;
    if listen.port() == 0 {
        listen.set_port(free_port(listen.ip()).map_err(bind_error)?);
    }
    // rumqttd reports bind failures only in its log, from another thread; probe first so the
    // user gets an error instead of a broker that silently never listens.
    drop(std::net::TcpListener::bind(listen).map_err(bind_error)?);
    if reachable_from_other_hosts(listen) {
        tracing::warn!(
            %listen,
            "the embedded MQTT broker authenticates no client and has no TLS: anyone who can reach \
             this address can subscribe to every device's readings and commands, publish on any topic, \
             and exhaust msec's memory. Keep it on a loopback address, or use --broker with a Mosquitto that has TLS and ACLs \
             (docs/operations.md)"
        );
    }
    let mut broker = make(config(listen));
    std::thread::Builder::new()
        .name("msec-mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded MQTT broker stopped");
            }
        })
        .map_err(BrokerError::Thread)?;
    // Wait until it listens, so callers can connect straight away.
    for _ in 0..500 {
        if listening(listen) {
            return Ok(listen);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(BrokerError::Bind {
        addr: listen,
        source: std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the broker did not start listening within 5 s (its log says why)",
        ),
    })
}

/// msec's subscription inside the embedded broker. Messages come in the order the broker
/// received them. There are no acknowledgements (the broker acknowledged each publish to its
/// device on receipt, and its queue lives in this process either way); the broker hands over
/// a batch at a time (up to 1,000) and sends the next only when [`Subscription::next`] is
/// called again, so a consumer that stops asking leaves the rest in the broker's own bounded
/// log (docs/operations.md, Durability). [`Subscription::next`] must not be cancelled: it
/// may be asking the broker to resume, and a request dropped half-way leaves it paused.
pub struct Subscription {
    // Kept so that the broker keeps the connection; dropping it ends the subscription.
    _tx: rumqttd::local::LinkTx,
    rx: rumqttd::local::LinkRx,
}

/// One message on the subscribed filter.
pub struct Message {
    pub topic: String,
    payload: rumqttd::protocol::Publish,
}

impl Message {
    pub fn payload(&self) -> &[u8] {
        &self.payload.payload
    }
}

/// The broker dropped msec's subscription; nothing more will come.
#[derive(Debug, thiserror::Error)]
#[error("the embedded MQTT broker ended msec's subscription: {0}")]
pub struct Ended(String);

impl Subscription {
    fn new(broker: &rumqttd::Broker, filter: &str) -> Result<Subscription, BrokerError> {
        let refused = |e: rumqttd::local::LinkError| BrokerError::Subscribe(e.to_string());
        // A random client id: a client connecting with ours would take the subscription over.
        let mut id = [0u8; 16];
        getrandom::fill(&mut id).map_err(|e| BrokerError::Subscribe(e.to_string()))?;
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let (mut tx, mut rx) = broker.link(&format!("msec-ingest-{id}")).map_err(refused)?;
        tx.subscribe(filter).map_err(refused)?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            // After the connection's own ConnAck (taken by `link`), the only one.
            if let Some(rumqttd::Notification::DeviceAck(_)) =
                rx.recv_deadline(deadline).map_err(refused)?
            {
                break;
            }
        }
        Ok(Subscription { _tx: tx, rx })
    }

    /// The next message, waiting for one.
    pub async fn next(&mut self) -> Result<Message, Ended> {
        loop {
            match self.rx.next().await.map_err(|e| Ended(e.to_string()))? {
                Some(rumqttd::Notification::Forward(forward)) => {
                    let topic = String::from_utf8_lossy(&forward.publish.topic).into_owned();
                    return Ok(Message {
                        topic,
                        payload: forward.publish,
                    });
                }
                // The broker paused after a full batch; asking for more resumes it.
                Some(rumqttd::Notification::Unschedule) => {
                    self.rx.wake().await.map_err(|e| Ended(e.to_string()))?
                }
                Some(rumqttd::Notification::Disconnect(..)) => {
                    return Err(Ended("disconnected".into()))
                }
                Some(_) | None => {}
            }
        }
    }
}

/// Whether something listens on `addr`, found without getting in its way: binding a socket that
/// does not itself listen, with address reuse on as rumqttd has it, fails only once another
/// socket listens there. (A listening probe, as `TcpListener::bind` makes, would for its short
/// life make the broker's own bind fail. Connecting instead would fill the broker's log with
/// "connection closed by peer".)
fn listening(addr: SocketAddr) -> bool {
    // Only "in use" says that: running out of file descriptors, say, says nothing.
    bound_quietly(addr).is_err_and(|e| e.kind() == std::io::ErrorKind::AddrInUse)
}

/// A socket bound to `addr` with address reuse on, and not listening.
fn bound_quietly(addr: SocketAddr) -> std::io::Result<tokio::net::TcpSocket> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// A port on `ip` that is free now and that the kernel does not hand out by itself: one below
/// the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`), which is where `bind` to port
/// 0 and outgoing connections take theirs. A port the kernel picked is free only until the
/// picker lets it go; if the broker or a test server is to bind it afterwards, any socket
/// opened in between may take it (a test once found its broker's port held by another test's
/// socket). Ports below the range are taken only by programs that ask for that very port.
pub fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    // Ports under 10000 are where services listen by convention (PostgreSQL, Mosquitto, ...).
    const LOWEST: u16 = 10_000;
    if ephemeral_start > LOWEST + 1000 {
        let span = u64::from(ephemeral_start - LOWEST);
        for _ in 0..64 {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(|e| std::io::Error::other(e.to_string()))?;
            let port = LOWEST + (u64::from_le_bytes(random) % span) as u16;
            if std::net::TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
                return Ok(port);
            }
        }
    }
    Ok(std::net::TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
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
    use super::*;

    #[test]
    fn brokers_on_port_0_get_ports_of_their_own_outside_the_kernels_range() {
        let ephemeral_start: u16 =
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").map_or(32768, |r| {
                r.split_whitespace().next().unwrap().parse().unwrap()
            });
        let any = "127.0.0.1:0".parse().unwrap();
        let (a, b) = (start(any).unwrap(), start(any).unwrap());
        assert_ne!(a, b);
        for addr in [a, b] {
            assert!(addr.port() < ephemeral_start, "{addr}");
            assert!(listening(addr), "{addr}");
            std::net::TcpStream::connect(addr).unwrap();
        }
    }

    #[test]
    fn a_taken_address_is_an_error_that_names_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = start(addr).unwrap_err().to_string();
        assert!(
            err.contains(&addr.to_string()) && err.contains("--mqtt"),
            "{err}"
        );
    }

    #[test]
    fn waiting_for_the_broker_never_takes_its_port() {
        let port = free_port(std::net::Ipv4Addr::LOCALHOST.into()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let probe = bound_quietly(addr).unwrap();
        assert!(!listening(addr));
        // What the broker does while a probe is open: it still gets the address.
        let broker = std::net::TcpListener::bind(addr).unwrap();
        assert!(listening(addr));
        drop((probe, broker));
    }

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
