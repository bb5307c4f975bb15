//! Publishing actuator commands to devices over MQTT.
//!
//! This module owns one MQTT connection for outgoing commands and the promise behind
//! [`CommandPublisher::publish`]: `Ok` means the broker has acknowledged (PUBACK, QoS 1) that
//! very message; anything else is an error within [`PUBLISH_TIMEOUT`], so a broker that is gone
//! holds no caller up for longer. It never signs, builds or authorises a command: callers hand
//! it bytes already sealed with `msec_device::CommandSigner`, for a request they have already
//! allowed. It never retries on its own: after an error the command may or may not have
//! reached the broker, and only the caller can decide whether to issue a new one (a device's
//! replay guard refuses a second copy of a command it accepted).
//!
//! One message is in flight at a time, so each PUBACK is matched to its message without doubt.
//! A message that gets no PUBACK in time, or a lost connection, discards the connection with
//! everything queued on it; the next publish uses a fresh one (clean session), so nothing stale
//! is ever sent again or mistaken for the next message's acknowledgement.

use crate::MqttConfig;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Longest a [`CommandPublisher::publish`] (or the first connection) waits, queueing included.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest payload accepted. A command is at most 4096 bytes (docs/protocol.md section 7);
/// this only keeps an absurd payload from breaking the connection.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
/// Pause between reconnection attempts while no message is waiting.
const RETRY: Duration = Duration::from_secs(1);
/// Messages waiting for their turn; `publish` waits (within its timeout) when full.
const QUEUE: usize = 64;

/// A handle on the command connection. Cheap to clone; the connection closes when the last
/// handle is dropped. Needs a Tokio runtime.
#[derive(Debug, Clone)]
pub struct CommandPublisher {
    /// `host:port`, for messages.
    broker: String,
    jobs: mpsc::Sender<Job>,
}

#[derive(Debug)]
struct Job {
    topic: String,
    payload: Vec<u8>,
    deadline: Instant,
    done: oneshot::Sender<Result<(), String>>,
}

/// The message on the wire, waiting for its PUBACK.
struct InFlight {
    done: oneshot::Sender<Result<(), String>>,
    deadline: Instant,
    /// Set when the event loop sends it: the packet id its PUBACK will carry.
    pkid: Option<u16>,
}

/// One MQTT connection: its event loop runs in a task of its own (so it is never cancelled
/// mid-packet) and hands every event over; the task ends at the first error.
struct Connection {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    poller: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

impl Connection {
    fn open(options: &MqttOptions) -> Connection {
        let (client, mut eventloop) = AsyncClient::new(options.clone(), QUEUE);
        let (tx, events) = mpsc::unbounded_channel();
        let poller = tokio::spawn(async move {
            loop {
                let event = eventloop.poll().await.map_err(|e| e.to_string());
                let failed = event.is_err();
                if tx.send(event).is_err() || failed {
                    break;
                }
            }
        });
        Connection {
            client,
            events,
            poller,
        }
    }

    async fn next(&mut self) -> Result<Event, String> {
        self.events
            .recv()
            .await
            .unwrap_or_else(|| Err("the connection task ended".into()))
    }
}

async fn next_event(conn: &mut Option<Connection>) -> Result<Event, String> {
    match conn {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

impl CommandPublisher {
    /// Connects to `mqtt://host:port` as `client_id` (which must be unique on the broker) and
    /// waits for the broker's CONNACK, at most [`PUBLISH_TIMEOUT`]. Later outages are survived:
    /// publishes fail while the broker is unreachable and succeed again once it is back.
    pub async fn connect(mqtt_url: &str, client_id: &str) -> Result<CommandPublisher, String> {
        if client_id.trim().is_empty() {
            return Err("the MQTT client id for commands must not be empty".into());
        }
        let cfg = MqttConfig::from_url(mqtt_url, client_id, "")?;
        let broker = format!("{}:{}", cfg.host, cfg.port);
        let mut options = cfg.client_options(client_id);
        options
            .set_clean_session(true)
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(64 * 1024, 2 * MAX_PAYLOAD_BYTES);
        let mut conn = Connection::open(&options);
        match tokio::time::timeout(PUBLISH_TIMEOUT, conn.next()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {}
            Ok(Ok(other)) => {
                return Err(format!(
                    "MQTT broker at {broker} answered the connection with {other:?}"
                ))
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot connect to the MQTT broker at {broker}: {e}"
                ))
            }
            Err(_) => {
                return Err(format!(
                    "the MQTT broker at {broker} did not accept the connection within {} s",
                    PUBLISH_TIMEOUT.as_secs()
                ))
            }
        }
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(drive(options, broker.clone(), conn, queue));
        Ok(CommandPublisher { broker, jobs })
    }

    /// Publishes `payload` on `topic` with QoS 1 and returns once the broker has acknowledged
    /// it, or with an error after at most [`PUBLISH_TIMEOUT`] (time spent waiting behind other
    /// messages included). The payload is sent as given.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), String> {
        if topic.is_empty()
            || topic.len() > usize::from(u16::MAX)
            || topic.contains(['+', '#', '\0'])
        {
            return Err(format!(
                "cannot publish on {:?}: a topic is 1 to 65535 bytes without + # or NUL",
                shorten(topic)
            ));
        }
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(format!(
                "payload of {} bytes is larger than the {MAX_PAYLOAD_BYTES} bytes allowed",
                payload.len()
            ));
        }
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        let (done, result) = oneshot::channel();
        let job = Job {
            topic: topic.to_string(),
            payload,
            deadline,
            done,
        };
        let stopped = || "the command publisher has stopped".to_string();
        let outcome = tokio::time::timeout_at(deadline, async {
            self.jobs.send(job).await.map_err(|_| stopped())?;
            result.await.map_err(|_| stopped())?
        })
        .await;
        outcome.unwrap_or_else(|_| Err(self.timed_out(topic)))
    }

    fn timed_out(&self, topic: &str) -> String {
        timed_out(&self.broker, topic)
    }
}

fn timed_out(broker: &str, topic: &str) -> String {
    format!(
        "no PUBACK from the MQTT broker at {broker} within {} s for the message on {:?}; it may or may not have been delivered",
        PUBLISH_TIMEOUT.as_secs(),
        shorten(topic)
    )
}

/// Topics come from callers and end up in messages and logs: keep them short.
fn shorten(topic: &str) -> String {
    topic.chars().take(200).collect()
}

/// Sends queued messages one at a time and matches each PUBACK to its message; reconnects
/// after failures. Ends when every [`CommandPublisher`] is dropped.
async fn drive(
    options: MqttOptions,
    broker: String,
    conn: Connection,
    mut jobs: mpsc::Receiver<Job>,
) {
    let mut conn = Some(conn);
    let mut current: Option<(InFlight, String)> = None;
    let mut retry_at: Option<Instant> = None;
    let mut down = false;
    loop {
        let deadline = current.as_ref().map(|(c, _)| c.deadline);
        tokio::select! {
            job = jobs.recv(), if current.is_none() => {
                let Some(job) = job else { break };
                if job.done.is_closed() {
                    continue; // the caller gave up (timed out or was cancelled) while queued
                }
                if Instant::now() >= job.deadline {
                    let _ = job.done.send(Err(timed_out(&broker, &job.topic)));
                    continue;
                }
                // A message is waiting: reconnect now rather than after the back-off.
                retry_at = None;
                let c = conn.get_or_insert_with(|| Connection::open(&options));
                match c.client.try_publish(job.topic.clone(), QoS::AtLeastOnce, false, job.payload) {
                    Ok(()) => {
                        current = Some((
                            InFlight { done: job.done, deadline: job.deadline, pkid: None },
                            job.topic,
                        ));
                    }
                    Err(e) => {
                        let _ = job.done.send(Err(format!(
                            "cannot hand the message to the MQTT client for {broker}: {e}"
                        )));
                    }
                }
            }
            event = next_event(&mut conn) => match event {
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    // Only one message is ever queued on a connection, so this is it.
                    if let Some((c, _)) = &mut current {
                        c.pkid.get_or_insert(pkid);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if current.as_ref().is_some_and(|(c, _)| c.pkid == Some(ack.pkid)) {
                        if let Some((c, _)) = current.take() {
                            let _ = c.done.send(Ok(()));
                        }
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if down {
                        tracing::info!(%broker, "command publisher reconnected to the MQTT broker");
                        down = false;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some((c, _)) = current.take() {
                        let _ = c.done.send(Err(format!(
                            "MQTT broker at {broker} unreachable or connection lost: {e}"
                        )));
                    }
                    if !down {
                        tracing::warn!(%broker, error = %e, "command publisher lost the MQTT broker; retrying every second");
                    }
                    down = true;
                    conn = None;
                    retry_at = Some(Instant::now() + RETRY);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                if let Some((c, topic)) = current.take() {
                    let _ = c.done.send(Err(timed_out(&broker, &topic)));
                }
                // Whatever the broker still owes for that message must not be taken for the
                // next one's acknowledgement: start afresh.
                tracing::warn!(%broker, "no PUBACK for a command in time; reconnecting");
                conn = Some(Connection::open(&options));
            }
            _ = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if conn.is_none() && retry_at.is_some() => {
                retry_at = None;
                conn = Some(Connection::open(&options));
            }
        }
    }
    // Every handle is gone: say goodbye if connected, without waiting long.
    if let Some(mut c) = conn {
        if c.client.try_disconnect().is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                while let Ok(event) = c.next().await {
                    if matches!(event, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
        }
    }
}
