//! The writer thread: the stateful checks (sequence, duplicates, clock) and batched commits.
//! Replies go out only after the commit that made their outcome durable.

use crate::budget::EventBudget;
use crate::{known, Job, Live, Metrics, Outcome, Registry, Rejection, Reply, Verdict};
use msec_store::{
    Batch, Device, DeviceUpdate, NewEvent, NewReading, SecurityEvent, Store, StoredReading,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc};

/// How often registry changes made by other processes (the CLI) are picked up.
pub(crate) const REFRESH_EVERY_MS: i64 = 1000;
/// How often the whole registry is read again. The frequent refresh finds changes by the time
/// written with them, which is the writing process's clock, read before its commit: a change
/// from a machine whose clock is behind this one's, or committed long after it was written,
/// falls before the window. The full reload bounds how long such a change (a revocation)
/// goes unnoticed.
const RELOAD_EVERY_MS: i64 = 30_000;
/// Commit attempts before a batch is failed back to its senders, once msec is stopping. While it
/// runs, a failed commit is retried until it succeeds: failing it would leave MQTT readings
/// unacknowledged, which a broker redelivers only after a reconnect, and readings committed
/// after them would make the redelivered ones look like replays.
const COMMIT_ATTEMPTS: u32 = 5;
/// The longest pause between two attempts at the same commit.
const RETRY_AT_MOST: Duration = Duration::from_secs(5);

pub(crate) struct Writer {
    store: Store,
    config: crate::Config,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    live: broadcast::Sender<Live>,
    last_sequence: HashMap<String, i64>,
    /// The digest of each device's newest reading committed since start: a redelivery (or a
    /// replay) of it is judged without a database query on this, the only writer thread.
    last_digest: HashMap<String, [u8; 32]>,
    refreshed_ms: i64,
    reloaded_ms: i64,
    flags: Flags,
    budget: EventBudget,
    /// Lives as long as the writer.
    _checkpoints: Option<msec_store::WalCheckpointer>,
}

/// Set from outside the writer thread.
#[derive(Clone, Default)]
pub(crate) struct Flags {
    /// Set by [`crate::Ingest::stopping`].
    pub stopping: Arc<AtomicBool>,
    /// Set by the ticker while its tick waits in the queue.
    pub tick_queued: Arc<AtomicBool>,
}

enum Pending {
    Reading(usize),
    Duplicate(Outcome),
}

/// A refusal on its way to its sender, and whether it has a stored event of its own (see
/// [`EventBudget`]).
struct Refused {
    rejection: Rejection,
    stored: bool,
}

impl Writer {
    pub(crate) fn new(
        mut store: Store,
        devices: &[Device],
        config: crate::Config,
        registry: Arc<Registry>,
        metrics: Arc<Metrics>,
        live: broadcast::Sender<Live>,
        flags: Flags,
    ) -> Result<Writer, msec_store::StoreError> {
        // A commit must never wait for the WAL to be copied into the database file.
        let checkpoints =
            store.checkpoint_in_background(msec_store::WalCheckpointer::LOG_LIMIT_BYTES)?;
        let last_sequence = devices
            .iter()
            .filter_map(|d| Some((d.id.clone(), d.last_sequence?)))
            .collect();
        Ok(Writer {
            store,
            config,
            registry,
            metrics,
            live,
            last_sequence,
            last_digest: HashMap::new(),
            refreshed_ms: msec_store::now_ms(),
            reloaded_ms: msec_store::now_ms(),
            flags,
            budget: EventBudget::new(msec_store::now_ms()),
            _checkpoints: checkpoints,
        })
    }

    pub(crate) fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let max = self.config.batch_max.max(1);
        let mut last_start: Option<Instant> = None;
        while let Some(first) = jobs.blocking_recv() {
            // Group commit: an idle writer commits at once; a busy one waits out the interval
            // and takes everything that queued up meanwhile.
            if let Some(wait) = last_start
                .map(|t| t + self.config.commit_interval)
                .and_then(|due| due.checked_duration_since(Instant::now()))
            {
                std::thread::sleep(wait);
            }
            last_start = Some(Instant::now());
            let mut batch = vec![first];
            while batch.len() < max {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            self.refresh_registry();
            let stopping = self.flags.stopping.clone();
            self.process(batch, &|| {
                !jobs.is_closed() && !stopping.load(Ordering::Acquire)
            });
        }
        // Refusals counted since the last summary are stored before the writer goes.
        let summaries = self.budget.summaries(msec_store::now_ms(), true);
        if !summaries.is_empty() {
            let batch = Batch {
                events: summaries,
                ..Batch::default()
            };
            match self.commit(&batch, &|| false) {
                Ok(ids) => self.deliver(batch, Vec::new(), &ids),
                Err(_) => {
                    for e in &batch.events {
                        log_event(
                            e,
                            "security event (not stored: the database is unavailable)",
                        )
                    }
                }
            }
        }
    }

    /// Turns a refusal into a security event of its own in `batch`, if the budget allows; past
    /// it the refusal is only counted (in the metrics now, and in the budget's next summary).
    fn refuse(&mut self, batch: &mut Batch, rejection: Rejection, source: &str) -> Refused {
        let now = msec_store::now_ms();
        // Refusals that no signature of the device stands behind (its key id is in every
        // reading it sends, so anyone can copy it) are the tenant's to read, but spend the
        // platform-wide budget: a flood of them must not cost the tenant's auditors the events
        // of its devices' own refusals.
        let unproven = matches!(
            rejection.reason,
            "revoked_device" | "topic_mismatch" | "bad_signature"
        );
        let budget = if unproven {
            None
        } else {
            rejection.tenant.as_deref()
        };
        let stored = self.budget.admit(rejection.reason, budget, now);
        if stored {
            batch.events.push(NewEvent {
                at_ms: now,
                reason: rejection.reason.to_string(),
                device_id: rejection.device_id.clone(),
                source: source.to_string(),
                detail: rejection.detail.clone(),
                tenant: rejection.tenant.clone(),
                nonce: msec_store::event_nonce(),
            });
        } else {
            self.metrics.reject(rejection.reason);
            self.metrics
                .suppressed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Refused { rejection, stored }
    }

    fn refresh_registry(&mut self) {
        let now = msec_store::now_ms();
        if now - self.refreshed_ms < REFRESH_EVERY_MS {
            return;
        }
        // Overlap the window so a change written in the same millisecond is not missed.
        let reload = now.saturating_sub(self.reloaded_ms) >= RELOAD_EVERY_MS;
        let since = if reload {
            i64::MIN
        } else {
            self.refreshed_ms - REFRESH_EVERY_MS
        };
        match self.store.devices_changed_since(since) {
            Ok(changed) => {
                let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
                registry.extend(changed.iter().filter_map(known));
                self.refreshed_ms = now;
                if reload {
                    self.reloaded_ms = now;
                }
            }
            Err(e) => tracing::error!(error = %e, "cannot refresh the device registry"),
        }
    }

    /// `running` says whether submissions may still come; a failed commit is retried until
    /// it succeeds while they may.
    fn process(&mut self, jobs: Vec<Job>, running: &dyn Fn() -> bool) {
        let (skew, max_age) = (self.config.max_skew_secs, self.config.max_age_secs);
        let mut batch = Batch::default();
        let mut replies: Vec<(Reply, Result<Pending, Refused>)> = Vec::with_capacity(jobs.len());
        let mut newest: HashMap<String, i64> = HashMap::new();
        let mut digests: HashMap<(String, i64), [u8; 32]> = HashMap::new();
        let mut updates: HashMap<String, DeviceUpdate> = HashMap::new();
        let mut gave_up = false;
        for job in jobs {
            let Job::Submit(verdict, reply) = job else {
                self.flags.tick_queued.store(false, Ordering::Release);
                continue;
            };
            match verdict {
                Verdict::Rejected { rejection, source } => {
                    replies.push((reply, Err(self.refuse(&mut batch, rejection, &source))));
                }
                Verdict::Verified {
                    reading,
                    device_id,
                    envelope,
                    digest,
                    measurements_json,
                    received_ms,
                    source,
                } => {
                    // Judged as of its arrival: time it then spends waiting here (a database outage)
                    // must not age it.
                    let received_s = received_ms / 1000;
                    let seq = reading.sequence as i64;
                    let last = newest
                        .get(&device_id)
                        .or(self.last_sequence.get(&device_id))
                        .copied();
                    let reject = |reason: &'static str, detail: String| Rejection {
                        reason,
                        detail,
                        device_id: Some(device_id.clone()),
                        tenant: None, // looked up below, for refusals only
                        event_id: None,
                    };
                    // The signature was checked against the registry as it was a moment ago; a
                    // revocation that has landed since then still wins.
                    let revoked = !self
                        .registry
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&reading.key_id)
                        .is_some_and(|d| d.active && d.id == device_id);
                    let verdict = if revoked {
                        Err(reject("revoked_device", "the device was revoked".into()))
                    } else if last.is_some_and(|last| seq <= last) {
                        let known = digests.get(&(device_id.clone(), seq)).or_else(|| {
                            self.last_digest
                                .get(&device_id)
                                .filter(|_| self.last_sequence.get(&device_id) == Some(&seq))
                        });
                        let stored = match known {
                            Some(d) => Ok(Some(d.to_vec())),
                            None => self.stored_digest(&device_id, seq, running, &mut gave_up),
                        };
                        let Ok(stored) = stored else {
                            // Stopping with the database away: refused unjudged, no event
                            // (the sender retries; an external broker redelivers).
                            let _ = reply.send(Err(storage_unavailable()));
                            continue;
                        };
                        if stored.as_deref() == Some(&digest[..]) {
                            Ok(Pending::Duplicate(Outcome::Duplicate {
                                device_id: device_id.clone(),
                                sequence: seq as u64,
                            }))
                        } else {
                            Err(reject(
                                "replayed_sequence",
                                format!(
                                    "sequence {seq} is not newer than the last accepted {}",
                                    last.unwrap_or(0)
                                ),
                            ))
                        }
                    } else if reading.issued_at < received_s.saturating_sub(max_age) {
                        Err(reject(
                            "stale_timestamp",
                            format!(
                                "issued {} s before it reached msec (limit {max_age} s)",
                                received_s.saturating_sub(reading.issued_at)
                            ),
                        ))
                    } else if reading.issued_at > received_s.saturating_add(skew) {
                        Err(reject(
                            "future_timestamp",
                            format!(
                                "issued {} s after the server clock (limit {skew} s)",
                                reading.issued_at.saturating_sub(received_s)
                            ),
                        ))
                    } else {
                        let update =
                            updates
                                .entry(device_id.clone())
                                .or_insert_with(|| DeviceUpdate {
                                    device_id: device_id.clone(),
                                    ..Default::default()
                                });
                        update.last_seen_ms = received_ms;
                        update.last_sequence = seq;
                        for m in &reading.measurements {
                            match (m.name.rsplit(':').next(), m.unit.as_deref()) {
                                (Some("battery"), Some("%EL")) => update.battery = m.as_f64(),
                                (Some("link"), Some("%")) => update.link = m.as_f64(),
                                _ => {}
                            }
                        }
                        newest.insert(device_id.clone(), seq);
                        digests.insert((device_id.clone(), seq), digest);
                        batch.readings.push(NewReading {
                            device_id: device_id.clone(),
                            sequence: seq,
                            issued_at: reading.issued_at,
                            received_ms,
                            envelope,
                            digest,
                            measurements_json,
                        });
                        Ok(Pending::Reading(batch.readings.len() - 1))
                    };
                    match verdict {
                        Ok(p) => replies.push((reply, Ok(p))),
                        Err(mut rejection) => {
                            rejection.tenant = (self.registry.read())
                                .unwrap_or_else(|e| e.into_inner())
                                .get(&reading.key_id)
                                .map(|d| d.tenant.clone());
                            replies.push((reply, Err(self.refuse(&mut batch, rejection, &source))))
                        }
                    }
                }
            }
        }
        batch.devices = updates.into_values().collect();
        // Last in the batch: the refusals' own events come first, in reply order.
        batch
            .events
            .extend(self.budget.summaries(msec_store::now_ms(), !running()));
        match self.commit(&batch, running) {
            Ok(ids) => {
                for (device, seq) in &newest {
                    if let Some(d) = digests.get(&(device.clone(), *seq)) {
                        self.last_digest.insert(device.clone(), *d);
                    }
                }
                self.last_sequence.extend(newest);
                self.metrics
                    .batches
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.deliver(batch, replies, &ids);
            }
            Err(_) => {
                // Only reached when stopping. The rejections were not stored: the log is all
                // that is left of them.
                for e in &batch.events {
                    log_event(
                        e,
                        "security event (not stored: the database is unavailable)",
                    );
                }
                for (reply, _) in replies {
                    let _ = reply.send(Err(storage_unavailable()));
                }
            }
        }
    }

    /// The digest stored for a device's sequence, for telling a resend from a replay. A
    /// database failure is waited out like a failed commit: judged without the answer, a
    /// resend would become a `replayed_sequence` event. `Err` once msec is stopping (and for
    /// the rest of the batch after that: `gave_up`).
    fn stored_digest(
        &mut self,
        device: &str,
        seq: i64,
        running: &dyn Fn() -> bool,
        gave_up: &mut bool,
    ) -> Result<Option<Vec<u8>>, ()> {
        if *gave_up {
            return Err(());
        }
        self.waited_out("looking up a stored reading", running, |store| {
            store.reading_digest(device, seq)
        })
        .map_err(|_| *gave_up = true)
    }

    fn commit(
        &mut self,
        batch: &Batch,
        running: &dyn Fn() -> bool,
    ) -> Result<Vec<i64>, msec_store::StoreError> {
        self.waited_out("commit", running, |store| store.commit(batch))
    }

    /// Runs `op` until the database takes it. Every failure is waited out while msec runs,
    /// even one that looks permanent: refusing would leave MQTT readings unacknowledged and let
    /// later ones overtake them (see COMMIT_ATTEMPTS). Stuck ingest is loud (errors, /healthz,
    /// the gauge); lost readings are not. Once stopping, it gives up after COMMIT_ATTEMPTS.
    fn waited_out<T>(
        &mut self,
        what: &str,
        running: &dyn Fn() -> bool,
        mut op: impl FnMut(&mut Store) -> Result<T, msec_store::StoreError>,
    ) -> Result<T, msec_store::StoreError> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut attempt = 1;
        loop {
            let result = op(&mut self.store);
            self.metrics.commit_failing.store(result.is_err(), Relaxed);
            match result {
                Ok(done) => {
                    if attempt > 1 {
                        tracing::info!(attempt, "{what} succeeded; ingest goes on");
                    }
                    return Ok(done);
                }
                Err(e) => {
                    self.metrics.storage_failures.fetch_add(1, Relaxed);
                    if attempt >= COMMIT_ATTEMPTS && !running() {
                        tracing::error!(error = %e, "{what} failed while stopping; given up (nothing is acknowledged; an external broker redelivers)");
                        return Err(e);
                    }
                    tracing::error!(error = %e, attempt, "{what} failed; retrying, and nothing is acknowledged meanwhile");
                    std::thread::sleep(
                        Duration::from_millis(200 * u64::from(attempt)).min(RETRY_AT_MOST),
                    );
                    attempt += 1;
                }
            }
        }
    }

    fn deliver(&self, batch: Batch, replies: Vec<(Reply, Result<Pending, Refused>)>, ids: &[i64]) {
        use std::sync::atomic::Ordering::Relaxed;
        let Batch {
            readings, events, ..
        } = batch;
        for (i, e) in events.into_iter().enumerate() {
            self.metrics.reject(&e.reason);
            log_event(&e, "security event");
            let event = SecurityEvent {
                id: ids.get(i).copied().unwrap_or(0),
                at_ms: e.at_ms,
                reason: e.reason,
                device_id: e.device_id,
                source: e.source,
                detail: e.detail,
                tenant: e.tenant,
            };
            let _ = self.live.send(Live::Security(Arc::new(event)));
        }
        let mut outcomes = Vec::with_capacity(readings.len());
        for r in readings {
            self.metrics.accepted.fetch_add(1, Relaxed);
            outcomes.push(Outcome::Stored {
                device_id: r.device_id.clone(),
                sequence: r.sequence as u64,
            });
            if self.live.receiver_count() > 0 {
                let stored = StoredReading {
                    device_id: r.device_id,
                    sequence: r.sequence,
                    issued_at: r.issued_at,
                    received_ms: r.received_ms,
                    measurements: serde_json::from_str(&r.measurements_json).unwrap_or_default(),
                };
                let _ = self.live.send(Live::Reading(Arc::new(stored)));
            }
        }
        // Every stored refusal pushed exactly one event, in reply order: the i-th such
        // refusal's event has the i-th id.
        let mut events_seen = 0;
        for (reply, pending) in replies {
            let result = match pending {
                Ok(Pending::Reading(i)) => Ok(outcomes[i].clone()),
                Ok(Pending::Duplicate(o)) => {
                    self.metrics.duplicates.fetch_add(1, Relaxed);
                    Ok(o)
                }
                Err(Refused {
                    mut rejection,
                    stored,
                }) => {
                    if stored {
                        rejection.event_id = ids.get(events_seen).copied();
                        events_seen += 1;
                    }
                    Err(rejection)
                }
            };
            let _ = reply.send(result);
        }
    }
}

/// Every security event goes to the log under `msec::security`, stored or not (refusals past
/// the event budget only within their summary).
fn log_event(e: &NewEvent, what: &str) {
    tracing::warn!(
        target: "msec::security",
        reason = %e.reason,
        device = e.device_id.as_deref().unwrap_or("-"),
        source = %e.source,
        "{what}: {}",
        e.detail
    );
}

/// The answer to a submission the database could not take: retryable, with no event.
fn storage_unavailable() -> Rejection {
    Rejection {
        tenant: None,
        reason: "storage_unavailable",
        detail: "the database is unavailable; nothing was stored, retry later".into(),
        device_id: None,
        event_id: None,
    }
}
