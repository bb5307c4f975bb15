//! Ingest: every reading that reaches msec, from MQTT or HTTP, passes through here.
//!
//! This crate owns the acceptance rules (known active device, valid signature, fresh sequence,
//! timestamp neither too far ahead nor too old, size limit, well-formed SenML) and the promise behind an
//! acknowledgement: [`Ingest::submit`] returns only after the reading, or the security event
//! recording its rejection, is durably committed (past the event budget of [`budget`], a
//! rejection is counted instead, and the counts are stored within seconds). It never speaks
//! HTTP, and it never acknowledges a reading that is not stored.
//!
//! Work is split in two stages. Stateless checks (size, structure, key lookup, signature) run
//! on the caller's task, so they spread over all cores. Stateful checks (sequence, duplicates,
//! clock) run on one writer thread that owns a database connection and commits in batches.

pub mod budget;
pub mod commands;
mod metrics;
mod mqtt;
mod writer;

pub use commands::CommandPublisher;
pub use metrics::{Metrics, REASONS};
pub use mqtt::{readings_filter, run_embedded, run_mqtt, MqttConfig};

use ed25519_dalek::VerifyingKey;
use msec_envelope::{Reading, KEY_ID_LEN};
use msec_store::{bounded, Device, DeviceStatus, SecurityEvent, Store, StoredReading};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use tokio::sync::{broadcast, mpsc, oneshot};

/// The longest [`Ingest::record_denial`] waits for its event's commit.
pub const DENIAL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Acceptance limits.
#[derive(Debug, Clone)]
pub struct Config {
    /// Largest envelope accepted, in bytes.
    pub max_envelope_bytes: usize,
    /// How far a reading's `iat` may be ahead of the server clock, in seconds (device clocks
    /// run fast).
    pub max_skew_secs: i64,
    /// How long after its `iat` a reading may reach msec, in seconds: long enough for devices
    /// that buffer while offline and for a broker's backlog across an outage. The sequence
    /// number, not the age, is what stops replays.
    pub max_age_secs: i64,
    /// Most jobs committed in one transaction.
    pub batch_max: usize,
    /// Least time from the start of one commit to the start of the next. Readings that arrive
    /// meanwhile share the next transaction: without it, a writer kept just ahead of the
    /// verifiers commits a handful of readings at a time, and rewriting the same index pages
    /// for each handful cost a third of its CPU.
    pub commit_interval: std::time::Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_envelope_bytes: msec_envelope::DEFAULT_MAX_ENVELOPE_BYTES,
            max_skew_secs: 300,
            max_age_secs: 86_400,
            batch_max: 2048,
            commit_interval: std::time::Duration::from_millis(2),
        }
    }
}

/// Where a submission came from, recorded in security events.
#[derive(Debug, Clone)]
pub enum Source {
    /// The MQTT topic it was published on.
    Mqtt(String),
    /// The HTTP peer address.
    Http(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Topics are attacker-chosen: bound what reaches logs and the dashboard.
        match self {
            Source::Mqtt(topic) => write!(f, "mqtt {}", bounded(topic, 200)),
            Source::Http(peer) => write!(f, "http {}", bounded(peer, 100)),
        }
    }
}

/// What happened to an accepted submission.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Newly stored.
    Stored { device_id: String, sequence: u64 },
    /// The identical envelope was already stored: a redelivery, acknowledged again.
    Duplicate { device_id: String, sequence: u64 },
}

/// Why a submission was not stored. `reason` is a stable code (see [`REASONS`]).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{reason}: {detail}")]
pub struct Rejection {
    pub reason: &'static str,
    pub detail: String,
    pub device_id: Option<String>,
    /// The tenant whose auditors see the event: the device's, once it is known (a topic's
    /// tenant is anyone's claim: junk labelled with it would reach that tenant's auditors and
    /// spend its event budget); None before that (platform-wide).
    pub tenant: Option<String>,
    /// Id of the stored security event; None when the failure was ours (storage unavailable),
    /// in which case the sender should retry and the reading is not acknowledged.
    pub event_id: Option<i64>,
}

impl Rejection {
    /// True when the submission must not be acknowledged: msec failed, not the sender.
    pub fn is_retryable(&self) -> bool {
        self.reason == "storage_unavailable" || self.reason == "shutting_down"
    }
}

/// Something that happened, for live views (dashboard, streams).
#[derive(Debug, Clone)]
pub enum Live {
    Reading(Arc<StoredReading>),
    Security(Arc<SecurityEvent>),
}

#[derive(Debug)]
pub(crate) struct KnownDevice {
    pub id: String,
    pub tenant: String,
    pub key: Option<VerifyingKey>,
    pub active: bool,
}

pub(crate) type Registry = RwLock<HashMap<[u8; KEY_ID_LEN], Arc<KnownDevice>>>;

pub(crate) fn known(d: &Device) -> Option<([u8; KEY_ID_LEN], Arc<KnownDevice>)> {
    let kid: [u8; KEY_ID_LEN] = d.key_id.as_slice().try_into().ok()?;
    let key = <[u8; 32]>::try_from(d.public_key.as_slice())
        .ok()
        .and_then(|k| VerifyingKey::from_bytes(&k).ok());
    Some((
        kid,
        Arc::new(KnownDevice {
            id: d.id.clone(),
            tenant: d.tenant.clone(),
            key,
            active: d.status == DeviceStatus::Active,
        }),
    ))
}

pub(crate) type Reply = oneshot::Sender<Result<Outcome, Rejection>>;

/// A submission after the stateless checks, waiting for the writer's stateful ones.
pub struct Checked(pub(crate) Verdict);

pub(crate) enum Verdict {
    Verified {
        reading: Reading,
        device_id: String,
        envelope: Vec<u8>,
        // Derived here, on the parallel stage, to keep the single writer thread lean.
        digest: [u8; 32],
        measurements_json: String,
        received_ms: i64,
        source: String,
    },
    Rejected {
        rejection: Rejection,
        source: String,
    },
}

pub(crate) enum Job {
    Submit(Verdict, Reply),
    /// Wakes the writer once a second so registry changes made by other processes are picked
    /// up even when no readings arrive.
    Tick,
}

/// The pending result of an enqueued submission.
pub struct Pending(oneshot::Receiver<Result<Outcome, Rejection>>);

fn shutting_down() -> Rejection {
    Rejection {
        reason: "shutting_down",
        detail: "msec is shutting down; retry later".into(),
        device_id: None,
        tenant: None,
        event_id: None,
    }
}

impl Pending {
    /// Resolves once the outcome is durable.
    pub async fn outcome(self) -> Result<Outcome, Rejection> {
        self.0.await.unwrap_or_else(|_| Err(shutting_down()))
    }
}

struct Inner {
    config: Config,
    registry: Arc<Registry>,
    jobs: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    live: broadcast::Sender<Live>,
    stopping: Arc<AtomicBool>,
}

/// A handle on the running ingest pipeline; cheap to clone.
#[derive(Clone)]
pub struct Ingest(Arc<Inner>);

impl Ingest {
    /// Loads the device registry from `store` and starts the writer thread that owns `store`
    /// from then on. The thread stops once every handle is dropped and its queue is drained.
    pub fn start(
        mut store: Store,
        config: Config,
    ) -> Result<(Ingest, std::thread::JoinHandle<()>), msec_store::StoreError> {
        let devices = store.devices()?;
        let registry: Arc<Registry> =
            Arc::new(RwLock::new(devices.iter().filter_map(known).collect()));
        let (jobs, rx) = mpsc::channel(16 * config.batch_max.max(1));
        let metrics = Arc::new(Metrics::default());
        let (live, _) = broadcast::channel(4096);
        let flags = writer::Flags::default();
        let (stopping, tick_queued) = (flags.stopping.clone(), flags.tick_queued.clone());
        let writer = writer::Writer::new(
            store,
            &devices,
            config.clone(),
            registry.clone(),
            metrics.clone(),
            live.clone(),
            flags,
        )?;
        let thread_error = |e: std::io::Error| {
            msec_store::StoreError::Backend(format!("cannot start an ingest thread: {e}"))
        };
        let handle = std::thread::Builder::new()
            .name("msec-ingest-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(thread_error)?;
        // A weak sender, so that the ticker never keeps the writer alive on its own.
        let ticker = jobs.downgrade();
        std::thread::Builder::new()
            .name("msec-ingest-ticker".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_millis(
                    writer::REFRESH_EVERY_MS as u64,
                ));
                match ticker.upgrade() {
                    // One tick in the queue at a time: while the writer waits out a database
                    // outage, ticks must not fill the queue that readings need.
                    Some(jobs) => {
                        if !tick_queued.swap(true, Ordering::AcqRel)
                            && jobs.try_send(Job::Tick).is_err()
                        {
                            tick_queued.store(false, Ordering::Release);
                        }
                    }
                    None => return,
                }
            })
            .map_err(thread_error)?;
        Ok((
            Ingest(Arc::new(Inner {
                config,
                registry,
                jobs,
                metrics,
                live,
                stopping,
            })),
            handle,
        ))
    }

    pub fn config(&self) -> &Config {
        &self.0.config
    }

    pub fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// msec is stopping: from now on the writer gives a commit the database refuses up after a
    /// few attempts instead of waiting it out (its submitters get `storage_unavailable`).
    pub fn stopping(&self) {
        self.0.stopping.store(true, Ordering::Release);
    }

    /// Live feed of committed readings and security events.
    pub fn subscribe(&self) -> broadcast::Receiver<Live> {
        self.0.live.subscribe()
    }

    /// Makes a registration or revocation done elsewhere effective now (the writer also polls
    /// the database every second for changes made by other processes).
    pub fn refresh_device(&self, device: &Device) {
        if let Some((kid, entry)) = known(device) {
            self.0
                .registry
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(kid, entry);
        }
    }

    /// Checks and commits one envelope. Returns once the outcome is durable. Submissions from
    /// one device must be sequential (await each) or they may be judged out of order.
    pub async fn submit(&self, envelope: Vec<u8>, source: Source) -> Result<Outcome, Rejection> {
        let checked = self.check(envelope, source);
        self.enqueue(checked).await.outcome().await
    }

    /// The stateless checks (size, structure, key, signature): CPU work that callers may run in
    /// parallel, as long as they [`Ingest::enqueue`] the results in arrival order.
    pub fn check(&self, envelope: Vec<u8>, source: Source) -> Checked {
        let received_ms = msec_store::now_ms();
        let source_text = source.to_string();
        Checked(match self.stateless(envelope, &source) {
            Ok((reading, device_id, envelope)) => Verdict::Verified {
                digest: msec_envelope::digest(&envelope),
                measurements_json: serde_json::to_string(&reading.measurements)
                    .unwrap_or_else(|_| "[]".into()),
                reading,
                device_id,
                envelope,
                received_ms,
                source: source_text,
            },
            Err(rejection) => Verdict::Rejected {
                rejection,
                source: source_text,
            },
        })
    }

    /// Records a security event that is not about a reading (for example a refused
    /// administrative request), through the same durable path; resolves with its id once it is
    /// stored, or with `None` after [`DENIAL_WAIT`] while the database does not answer (the
    /// event is still stored once it does: a refusal is not held up by an outage).
    /// `tenant` is the tenant whose auditors may read it (None: platform-wide auditors only).
    pub async fn record_denial(
        &self,
        reason: &'static str,
        detail: String,
        source: Source,
        tenant: Option<String>,
    ) -> Option<i64> {
        let source = source.to_string();
        let checked = Checked(Verdict::Rejected {
            rejection: Rejection {
                reason,
                detail: detail.clone(),
                device_id: None,
                tenant,
                event_id: None,
            },
            source: source.clone(),
        });
        let deadline = tokio::time::Instant::now() + DENIAL_WAIT;
        let Ok(pending) = tokio::time::timeout_at(deadline, self.enqueue(checked)).await else {
            // Not even queued (the writer's queue is full behind an outage): the log line is
            // all that will be left of it.
            tracing::warn!(
                target: "msec::security",
                reason,
                source = %source,
                "security event (not stored: the database is not answering): {detail}"
            );
            return None;
        };
        // Queued: stored once the database answers, whether or not we wait for it.
        tokio::time::timeout_at(deadline, pending.outcome())
            .await
            .ok()
            .and_then(|outcome| outcome.err())
            .and_then(|r| r.event_id)
    }

    /// Hands a checked submission to the writer, in order; waits only for queue space.
    pub async fn enqueue(&self, checked: Checked) -> Pending {
        let (reply, done) = oneshot::channel();
        // If the writer is gone, `done` resolves to "shutting down".
        let _ = self.0.jobs.send(Job::Submit(checked.0, reply)).await;
        Pending(done)
    }

    /// The stateless checks, in an order that spends no signature work on junk.
    fn stateless(
        &self,
        envelope: Vec<u8>,
        source: &Source,
    ) -> Result<(Reading, String, Vec<u8>), Rejection> {
        let reject =
            |reason: &'static str, detail: String, device: Option<&KnownDevice>| Rejection {
                reason,
                detail,
                device_id: device.map(|d| d.id.clone()),
                tenant: device.map(|d| d.tenant.clone()),
                event_id: None,
            };
        let unverified = msec_envelope::open(&envelope, self.0.config.max_envelope_bytes)
            .map_err(|e| reject(e.reason(), bounded(&e.to_string(), 300), None))?;
        let device = self
            .0
            .registry
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&unverified.key_id)
            .cloned()
            .ok_or_else(|| {
                reject(
                    "unknown_device",
                    format!(
                        "no registered device has key id {}",
                        hex(&unverified.key_id)
                    ),
                    None,
                )
            })?;
        let id = Some(&*device);
        if !device.active {
            return Err(reject("revoked_device", "the device is revoked".into(), id));
        }
        if let Source::Mqtt(topic) = source {
            let mut parts = topic.rsplit('/');
            let (_, dev, tenant) = (parts.next(), parts.next(), parts.next());
            if dev != Some(device.id.as_str()) || tenant != Some(device.tenant.as_str()) {
                return Err(reject(
                    "topic_mismatch",
                    format!(
                        "signed by {}/{} but published on another device's topic",
                        device.tenant, device.id
                    ),
                    id,
                ));
            }
        }
        let key = device
            .key
            .as_ref()
            .ok_or_else(|| reject("bad_signature", "registered key is invalid".into(), id))?;
        let reading = unverified
            .verify(key)
            .map_err(|e| reject(e.reason(), bounded(&e.to_string(), 300), id))?;
        let envelope = unverified
            .canonical()
            .map_err(|e| reject(e.reason(), bounded(&e.to_string(), 300), id))?;
        if reading.sequence > i64::MAX as u64 {
            return Err(reject(
                "malformed_envelope",
                "sequence numbers must be below 2^63".into(),
                id,
            ));
        }
        Ok((reading, device.id.clone(), envelope))
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
