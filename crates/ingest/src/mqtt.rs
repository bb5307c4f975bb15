//! The MQTT consumers. From an external broker (Mosquitto): a subscription to every device's
//! readings topic with QoS 1 on a persistent session, each PUBACK sent only after ingest has
//! committed the reading (or the security event recording its rejection); a consumer killed
//! mid-stream therefore loses nothing it acknowledged: the broker redelivers the rest, and
//! redelivery is idempotent. From the embedded broker: msec's subscription inside the process
//! ([`run_embedded`]), with nothing to acknowledge, since that broker's queue lives and dies
//! with this process.

use crate::{Checked, Ingest, Pending, Source};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
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
        if rest.contains(['/', '?', '#']) {
            return Err(format!(
                "broker URL {shown:?} has a path or query; give mqtt://[USER:PASSWORD@]HOST[:PORT]"
            ));
        }
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
        readings_filter(&self.topic_root)
    }
}

/// The MQTT topic filter for every device's readings under `topic_root`.
pub fn readings_filter(topic_root: &str) -> String {
    format!("{topic_root}/v1/+/+/readings")
}

/// After a stop, the embedded broker has nothing left for us once everything taken is committed
/// and nothing new came for this long (it hands over within a millisecond of being asked).
const DRAINED_AFTER: Duration = Duration::from_millis(250);
/// The longest a stop waits for the broker to drain; devices that keep publishing would
/// otherwise hold it forever.
const DRAIN_AT_MOST: Duration = Duration::from_secs(10);
/// Most QoS 0 readings in the pipeline at once. QoS 1 deliveries are bounded by the broker's
/// in-flight window; QoS 0 ones (Mosquitto passes a QoS 0 publish on as QoS 0) are not, so past
/// this a flood of them is dropped and counted, as QoS 0 allows, instead of queueing without
/// end.
const QOS0_AT_MOST: usize = 4096;

/// Consumes readings from an external broker until `stop` turns true, then acknowledges what
/// was committed and disconnects; the broker keeps the rest for the next start. Broker outages
/// are retried every second, with the error logged.
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
    let (queue, checking) = mpsc::unbounded_channel();
    let (to_ack, pending) = mpsc::unbounded_channel();
    let forwarder = tokio::spawn(forward_in_order(ingest.clone(), checking, to_ack));
    let unacked = Arc::new(AtomicUsize::new(0));
    // Counts connections: a packet id means something only on the connection it came on.
    let connection = Arc::new(AtomicUsize::new(0));
    let acker = tokio::spawn(ack_in_order(client.clone(), pending, connection.clone()));
    let filter = cfg.filter();
    let mut broker_down = false;
    loop {
        let event = tokio::select! {
            e = events.poll() => e,
            _ = stop.wait_for(|s| *s) => break,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                connection.fetch_add(1, Ordering::AcqRel);
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
                    .send((
                        check,
                        (
                            publish,
                            connection.load(Ordering::Acquire),
                            Unsettled::new(&unacked),
                        ),
                    ))
                    .is_err()
                {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Acknowledgements made from now on belong to no connection: the next one may
                // reuse their packet ids for other readings.
                connection.fetch_add(1, Ordering::AcqRel);
                if !broker_down {
                    tracing::error!(broker = %format!("{}:{}", cfg.host, cfg.port), error = %e, "MQTT connection lost; retrying every second");
                }
                broker_down = true;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    // Every reading already handed to ingest gets its PUBACK once committed. The event loop
    // keeps turning meanwhile: the acks wait in its request queue, which only it empties
    // (more of them than the queue holds would otherwise block the acker for good). What the
    // broker sends meanwhile stays unacknowledged, for the next start.
    drop(queue);
    let flush = async {
        let settle = async {
            let _ = forwarder.await;
            let _ = acker.await;
            let _ = client.disconnect().await;
        };
        tokio::pin!(settle);
        let mut settled = false;
        loop {
            tokio::select! {
                _ = &mut settle, if !settled => settled = true,
                e = events.poll() => match e {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    _ => {}
                },
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::warn!(
            "MQTT consumer did not finish within 10 s; the broker will redeliver the unacknowledged readings"
        );
    }
}

/// Most readings taken from the embedded broker and not yet committed. Past it the broker
/// holds the rest back.
const EMBEDDED_IN_FLIGHT: usize = 1000;

/// Consumes readings from msec's own subscription in the embedded broker until `stop` turns
/// true and the broker has nothing more (everything taken is committed and nothing new came
/// for 0.25 s, or 10 s have passed), then waits for the last commits. There is nothing to
/// acknowledge: the broker acknowledged each reading to its device on receipt, and its queue
/// lives in this process, like this consumer's.
pub async fn run_embedded(
    ingest: Ingest,
    mut readings: msec_broker::Subscription,
    mut stop: watch::Receiver<bool>,
) {
    let (queue, checking) = mpsc::unbounded_channel();
    let (to_settle, mut settling) = mpsc::unbounded_channel::<(Pending, OwnedSemaphorePermit)>();
    let forwarder = tokio::spawn(forward_in_order(ingest.clone(), checking, to_settle));
    let settler = tokio::spawn(async move {
        while let Some((pending, _room)) = settling.recv().await {
            if let Err(r) = pending.outcome().await {
                if r.is_retryable() {
                    tracing::error!(
                        reason = r.reason,
                        "reading not stored while stopping; the embedded broker acknowledged it, so it is lost"
                    );
                }
            }
        }
    });
    // The subscription is read by a task of its own, never cancelled half-way: asking the
    // broker to resume after a full batch is a send that may wait, and one dropped by a
    // `select!` would leave the broker holding every later reading back for good.
    let room = Arc::new(Semaphore::new(EMBEDDED_IN_FLIGHT));
    let taken = Arc::new(AtomicUsize::new(0));
    let mut pump = tokio::spawn({
        let (room, taken, ingest) = (room.clone(), taken.clone(), ingest.clone());
        async move {
            loop {
                let Ok(permit) = room.clone().acquire_owned().await else {
                    break;
                };
                let message = match readings.next().await {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::error!(error = %e, "no more readings will come from the embedded broker");
                        break;
                    }
                };
                taken.fetch_add(1, Ordering::AcqRel);
                let ingest = ingest.clone();
                // Past the size limit one byte is enough for ingest to refuse and record it.
                let payload = message.payload();
                let keep = payload.len().min(ingest.config().max_envelope_bytes + 1);
                let payload = payload[..keep].to_vec();
                let topic = message.topic;
                let check = tokio::spawn(async move { ingest.check(payload, Source::Mqtt(topic)) });
                if queue.send((check, permit)).is_err() {
                    break;
                }
            }
        }
    });
    tracing::info!("consuming readings from the embedded broker");
    // The reader only ends by itself when the broker stops delivering (it said why): this
    // consumer then ends too, once what was taken is committed, so that msec stops rather than
    // run on with a broker that acknowledges readings nothing will store.
    let ended_early = tokio::select! {
        _ = stop.wait_for(|s| *s) => false,
        _ = &mut pump => true,
    };
    if !ended_early {
        drain(&taken, &room).await;
        // Ends the reader and with it the queue to the writer, once what it queued is handled.
        pump.abort();
    }
    let flush = async {
        let _ = forwarder.await;
        let _ = settler.await;
    };
    if tokio::time::timeout(Duration::from_secs(10), flush)
        .await
        .is_err()
    {
        tracing::warn!("the last readings taken from the embedded broker were not committed within 10 s; they are lost");
    }
}

/// Waits, once msec is stopping, until the embedded broker has nothing more for the reader:
/// nothing new taken for a while and everything taken settled, or 10 s.
async fn drain(taken: &AtomicUsize, room: &Semaphore) {
    tracing::info!("stopping: taking the readings still queued in the embedded broker");
    let draining_since = Instant::now();
    let mut seen = taken.load(Ordering::Acquire);
    loop {
        if draining_since.elapsed() >= DRAIN_AT_MOST {
            tracing::warn!(
                "stopping after 10 s of draining while readings kept arriving; those the \
                 embedded broker still holds are lost"
            );
            break;
        }
        tokio::time::sleep(DRAINED_AFTER).await;
        // Drained once nothing new came for a while and everything taken is settled (the
        // reader holds one permit while it waits for the next message).
        let now = taken.load(Ordering::Acquire);
        if now == seen && room.available_permits() + 1 >= EMBEDDED_IN_FLIGHT {
            break;
        }
        seen = now;
    }
}

/// Hands checked readings to the writer in arrival order (sequence checks depend on it), each
/// with what travels alongside (`T`) to the stage that settles it.
async fn forward_in_order<T>(
    ingest: Ingest,
    mut checking: mpsc::UnboundedReceiver<(JoinHandle<Checked>, T)>,
    to_settle: mpsc::UnboundedSender<(Pending, T)>,
) {
    while let Some((check, along)) = checking.recv().await {
        let checked = check.await.unwrap_or_else(|e| {
            // A bug. Refused and recorded rather than skipped: a broker takes acknowledgements
            // in order only, so one left out would hold back every later reading for good.
            tracing::error!(error = %e, "the checks of a reading failed");
            Checked(crate::Verdict::Rejected {
                rejection: crate::Rejection {
                    reason: "internal_error",
                    detail: "msec's checks of this reading failed (a bug; see msec's log)".into(),
                    device_id: None,
                    tenant: None,
                    event_id: None,
                },
                source: "mqtt".into(),
            })
        });
        let pending = ingest.enqueue(checked).await;
        if to_settle.send((pending, along)).is_err() {
            break;
        }
    }
}

/// Acknowledges in arrival order (MQTT requires PUBACKs in order), and only after commit.
async fn ack_in_order(
    client: AsyncClient,
    mut pending: mpsc::UnboundedReceiver<(Pending, (rumqttc::Publish, usize, Unsettled))>,
    connection: Arc<AtomicUsize>,
) {
    // Each reading counts as settled once this loop is done with it, acknowledged or left
    // for redelivery.
    while let Some((result, (publish, came_on, _unsettled))) = pending.recv().await {
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
        // Received on an earlier connection: the broker sends it again on this one (where
        // it is answered as a duplicate), and its packet id may now name another reading,
        // not yet committed, which this acknowledgement would settle.
        if came_on != connection.load(Ordering::Acquire) {
            continue;
        }
        if let Err(e) = client.ack(&publish).await {
            tracing::error!(error = %e, "cannot acknowledge a reading; the broker will redeliver it");
        }
    }
}

/// Travels with a received reading through the stages and counts it as outstanding until
/// dropped, wherever its handling ends.
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
