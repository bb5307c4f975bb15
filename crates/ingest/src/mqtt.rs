//! The MQTT consumer: subscribes to every device's readings topic with QoS 1 on a persistent
//! session and sends each PUBACK only after ingest has committed the reading (or the security
//! event recording its rejection). A consumer killed mid-stream therefore loses nothing it
//! acknowledged: the broker redelivers the rest, and redelivery is idempotent.

use crate::{Checked, Ingest, Pending, Source};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// Where and how to consume readings.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    pub host: String,
    pub port: u16,
    /// From `mqtt://USER:PASSWORD@host`, for a broker with a password file.
    pub credentials: Option<Credentials>,
    /// MQTT client id. Fixed across restarts so the broker keeps the session and its queue.
    pub client_id: String,
    /// First topic level; readings arrive on `{root}/v1/{tenant}/{device}/readings`.
    pub topic_root: String,
    /// Most readings received but not yet acknowledged.
    pub inflight: u16,
    /// On a stop, keep consuming until the broker has nothing left for us. For a broker inside
    /// this process: it has acknowledged those readings to their devices, and its queue dies
    /// with the process. An external broker keeps them for the next start instead.
    pub drain_on_stop: bool,
}

/// A broker login. The password never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// Decodes `%XX` escapes, so that a password may hold `@`, `:` or `/`.
fn percent_decoded(text: &str) -> Option<String> {
    let mut out = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            // Two hex digits, no more, no less: `from_str_radix` alone would also take "+1".
            let hex = [bytes.next()?, bytes.next()?];
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

impl MqttConfig {
    /// Parses `mqtt://[USER:PASSWORD@]host:port` (port defaults to 1883; escape `@`, `:` and
    /// `/` in the user or password as `%40`, `%3A`, `%2F`).
    pub fn from_url(url: &str, client_id: &str, topic_root: &str) -> Result<MqttConfig, String> {
        // Errors quote the URL only redacted: it may hold a password.
        let shown = msec_store::redact(url);
        let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
            format!("broker URL {shown:?} must start with mqtt:// (e.g. mqtt://127.0.0.1:1883)")
        })?;
        let rest = rest.trim_end_matches('/');
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((userinfo, host)) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                let decode = |t: &str| {
                    percent_decoded(t).ok_or_else(|| {
                        format!("broker URL {shown:?}: user or password has a bad %-escape")
                    })
                };
                let user = decode(user)?;
                if user.is_empty() {
                    return Err(format!("broker URL {shown:?} names no user before '@'"));
                }
                let password = decode(password)?;
                (Some(Credentials { user, password }), host)
            }
            None => (None, rest),
        };
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.parse()
                    .map_err(|_| format!("broker URL {shown:?}: port {p:?} is not a number"))?,
            ),
            None => (rest, 1883),
        };
        if host.is_empty() {
            return Err(format!("broker URL {shown:?} has no host"));
        }
        Ok(MqttConfig {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port,
            credentials,
            client_id: client_id.to_string(),
            topic_root: topic_root.to_string(),
            inflight: 1000,
            drain_on_stop: false,
        })
    }

    /// Client options for this broker: address and login.
    pub fn client_options(&self, client_id: impl Into<String>) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        if let Some(c) = &self.credentials {
            options.set_credentials(c.user.clone(), c.password.clone());
        }
        options
    }

    pub fn filter(&self) -> String {
        format!("{}/v1/+/+/readings", self.topic_root)
    }
}

/// After a stop with [`MqttConfig::drain_on_stop`], the broker has nothing left for us once
/// everything received is acknowledged and nothing new came for this long (over loopback it
/// sends within a millisecond of an acknowledgement freeing the window).
const DRAINED_AFTER: Duration = Duration::from_millis(250);
/// The longest a stop waits for the broker to drain; devices that keep publishing would
/// otherwise hold it forever.
const DRAIN_AT_MOST: Duration = Duration::from_secs(10);
/// Most QoS 0 readings in the pipeline at once. QoS 1 deliveries are bounded by the broker's
/// in-flight window; QoS 0 ones (Mosquitto passes a QoS 0 publish on as QoS 0) are not, so past
/// this a flood of them is dropped and counted, as QoS 0 allows, instead of queueing without
/// end.
const QOS0_AT_MOST: usize = 4096;

/// Consumes readings until `stop` turns true (with [`MqttConfig::drain_on_stop`], until the
/// broker has nothing more for us as well), then acknowledges what was committed and
/// disconnects. Broker outages are retried every second, with the error logged.
pub async fn run_mqtt(ingest: Ingest, cfg: MqttConfig, mut stop: watch::Receiver<bool>) {
    let mut options = cfg.client_options(cfg.client_id.clone());
    options
        .set_clean_session(false)
        .set_manual_acks(true)
        .set_keep_alive(Duration::from_secs(30))
        .set_inflight(cfg.inflight)
        // Accept anything the broker delivers: an oversized reading must reach ingest to be
        // rejected and recorded, not break the connection and come back forever.
        .set_max_packet_size(256 * 1024 * 1024, 64 * 1024);
    let (client, mut events) = AsyncClient::new(options, 4 * cfg.inflight as usize);
    // Three stages: signature checks run in parallel tasks; a forwarder hands their results to
    // the writer in arrival order (sequence checks depend on it); the acker sends PUBACKs in
    // order, each after its commit.
    // The queues are unbounded on purpose: the event loop must never wait on them, or it stops
    // sending the very PUBACKs that would drain them (a deadlock seen with Mosquitto). What is
    // in flight is bounded by the broker's per-client inflight limit instead.
    let (queue, checking) =
        mpsc::unbounded_channel::<(rumqttc::Publish, JoinHandle<Checked>, Unsettled)>();
    let (to_ack, pending) = mpsc::unbounded_channel::<(rumqttc::Publish, Pending, Unsettled)>();
    let forwarder = tokio::spawn(forward_in_order(ingest.clone(), checking, to_ack));
    let unacked = Arc::new(AtomicUsize::new(0));
    let acker = tokio::spawn(ack_in_order(client.clone(), pending));
    let filter = cfg.filter();
    let mut broker_down = false;
    let mut draining_since: Option<Instant> = None;
    loop {
        if draining_since.is_some_and(|t| t.elapsed() >= DRAIN_AT_MOST) {
            // Devices kept publishing: there was never a quiet moment to stop at.
            tracing::warn!(
                "stopping after 10 s of draining while readings kept arriving; those the \
                 embedded broker accepted from now on are lost"
            );
            break;
        }
        let event = tokio::select! {
            // Events first: an acknowledgement still queued must go out before a quiet spell
            // can end the drain.
            biased;
            e = events.poll() => e,
            _ = stop.wait_for(|s| *s), if draining_since.is_none() => {
                if !cfg.drain_on_stop || broker_down {
                    break;
                }
                tracing::info!("stopping: taking the readings still queued in the embedded broker");
                draining_since = Some(Instant::now());
                continue;
            }
            // Quiet: drained once everything received is settled; until then commits are due.
            _ = tokio::time::sleep(DRAINED_AFTER), if draining_since.is_some() => {
                if unacked.load(Ordering::Acquire) == 0 {
                    break;
                }
                continue;
            }
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!(broker = %format!("{}:{}", cfg.host, cfg.port), %filter, "consuming readings");
                broker_down = false;
                if let Err(e) = client.try_subscribe(filter.clone(), QoS::AtLeastOnce) {
                    tracing::error!(error = %e, "cannot subscribe");
                }
            }
            Ok(Event::Incoming(Packet::Publish(mut publish))) => {
                if publish.qos == QoS::AtMostOnce && unacked.load(Ordering::Acquire) >= QOS0_AT_MOST
                {
                    let dropped = ingest
                        .metrics()
                        .qos0_dropped
                        .fetch_add(1, Ordering::Relaxed);
                    if dropped.is_multiple_of(10_000) {
                        tracing::warn!(
                            target: "msec::security",
                            dropped = dropped + 1,
                            "QoS 0 readings arrive faster than ingest takes them; dropping them (devices must publish with QoS 1)"
                        );
                    }
                    continue;
                }
                let ingest = ingest.clone();
                let topic = publish.topic.clone();
                // Past the size limit one byte is enough for ingest to refuse and record it;
                // copying the rest (up to the 256 MiB the client accepts) would only cost memory.
                let keep = publish
                    .payload
                    .len()
                    .min(ingest.config().max_envelope_bytes + 1);
                let payload = publish.payload[..keep].to_vec();
                // The acknowledgement needs only the packet id: the payload need not wait with it.
                publish.payload = Default::default();
                let check = tokio::spawn(async move { ingest.check(payload, Source::Mqtt(topic)) });
                if queue
                    .send((publish, check, Unsettled::new(&unacked)))
                    .is_err()
                {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                if draining_since.is_some() {
                    // The broker (in this process) is going away; nothing more will come.
                    break;
                }
                if !broker_down {
                    tracing::error!(broker = %format!("{}:{}", cfg.host, cfg.port), error = %e, "MQTT connection lost; retrying every second");
                }
                broker_down = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Drain: every reading already handed to ingest gets its PUBACK once committed. Keep the
    // event loop turning so those acks reach the broker, then disconnect.
    drop(queue);
    let flush = async {
        let _ = forwarder.await;
        let _ = acker.await;
        let _ = client.disconnect().await;
        loop {
            match events.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                _ => {}
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::warn!(
            "MQTT consumer did not drain within 10 s; unacknowledged readings will be redelivered by an external broker (an embedded one loses them)"
        );
    }
}

async fn forward_in_order(
    ingest: Ingest,
    mut checking: mpsc::UnboundedReceiver<(rumqttc::Publish, JoinHandle<Checked>, Unsettled)>,
    to_ack: mpsc::UnboundedSender<(rumqttc::Publish, Pending, Unsettled)>,
) {
    while let Some((publish, check, unsettled)) = checking.recv().await {
        let Ok(checked) = check.await else { continue }; // a panicked check is never acknowledged
        let pending = ingest.enqueue(checked).await;
        if to_ack.send((publish, pending, unsettled)).is_err() {
            break;
        }
    }
}

/// Acknowledges in arrival order (MQTT requires PUBACKs in order), and only after commit.
async fn ack_in_order(
    client: AsyncClient,
    mut pending: mpsc::UnboundedReceiver<(rumqttc::Publish, Pending, Unsettled)>,
) {
    // Each reading counts as settled once this loop is done with it, acknowledged or left
    // for redelivery.
    while let Some((publish, result, _unsettled)) = pending.recv().await {
        match result.outcome().await {
            Ok(_) => {}
            // A rejection is final and already recorded as a security event: acknowledge it
            // too, or the broker would redeliver hostile input forever.
            Err(r) if !r.is_retryable() => {}
            Err(r) => {
                tracing::error!(
                    reason = r.reason,
                    "reading not stored; leaving it unacknowledged for redelivery"
                );
                continue;
            }
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::error!(error = %e, "cannot acknowledge a reading; the broker will redeliver it");
        }
    }
}

/// Travels with a received reading through the stages and counts it as outstanding until
/// dropped, wherever its handling ends; a drain waits for the count to reach zero.
struct Unsettled(Arc<AtomicUsize>);

impl Unsettled {
    fn new(count: &Arc<AtomicUsize>) -> Unsettled {
        count.fetch_add(1, Ordering::AcqRel);
        Unsettled(count.clone())
    }
}

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::MqttConfig;

    #[test]
    fn broker_urls_with_and_without_a_login() {
        let plain = MqttConfig::from_url("mqtt://127.0.0.1:1883", "c", "r").unwrap();
        assert!(plain.credentials.is_none());
        let cfg = MqttConfig::from_url("mqtt://msec:p%40ss%3Aw%2Fd@[::1]:1884/", "c", "r").unwrap();
        let login = cfg.credentials.as_ref().unwrap();
        assert_eq!(
            (login.user.as_str(), login.password.as_str()),
            ("msec", "p@ss:w/d")
        );
        assert_eq!((cfg.host.as_str(), cfg.port), ("::1", 1884));
        assert!(!format!("{cfg:?}").contains("ss"));
        for bad in [
            "mqtt://:pw@h",
            "mqtt://u:%zz@h",
            "mqtt://u:%+1@h",
            "mqtt://u:%4@h",
            "tcp://h",
        ] {
            let err = MqttConfig::from_url(bad, "c", "r").unwrap_err();
            assert!(!err.contains("pw") && !err.contains("%zz"), "{err}");
        }
    }
}
