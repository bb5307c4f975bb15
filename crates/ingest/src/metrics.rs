//! Ingest counters, exposed by the server in Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Every rejection reason code ingest can produce, in the order metrics list them.
pub const REASONS: &[&str] = &[
    "oversized",
    "malformed_envelope",
    "malformed_senml",
    "unknown_device",
    "revoked_device",
    "topic_mismatch",
    "bad_signature",
    "replayed_sequence",
    "stale_timestamp",
    "future_timestamp",
    "internal_error",
    // Not about readings: access control (see msec-access and msec-server).
    "forbidden",
    "unauthenticated",
    "invalid_token",
    "login_failed",
    "rate_limited",
    "csrf_failed",
    // About the transparency log: a cosignature that does not verify, a witness reporting a
    // rollback or split view, an alarm no configured witness signed.
    "bad_cosignature",
    "witness_alarm",
    "bad_alarm",
];

#[derive(Debug, Default)]
pub struct Metrics {
    pub accepted: AtomicU64,
    pub duplicates: AtomicU64,
    pub batches: AtomicU64,
    pub storage_failures: AtomicU64,
    /// True while the writer retries what the database refused (a commit, or the lookup that
    /// tells a resend from a replay): ingest is waiting.
    pub commit_failing: std::sync::atomic::AtomicBool,
    /// Refusals past the event budget: counted in `rejected` and in an `events_suppressed`
    /// event, not stored one by one (see `budget`).
    pub suppressed: AtomicU64,
    /// QoS 0 readings dropped because too many were already in the pipeline (see `mqtt`).
    pub qos0_dropped: AtomicU64,
    rejected: [AtomicU64; REASONS.len()],
}

impl Metrics {
    pub(crate) fn reject(&self, reason: &str) {
        if let Some(i) = REASONS.iter().position(|r| *r == reason) {
            self.rejected[i].fetch_add(1, Relaxed);
        }
    }
    /// Rejections per reason code, including zeros.
    pub fn rejected(&self) -> Vec<(&'static str, u64)> {
        REASONS
            .iter()
            .zip(&self.rejected)
            .map(|(r, n)| (*r, n.load(Relaxed)))
            .collect()
    }
    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().map(|n| n.load(Relaxed)).sum()
    }
}
