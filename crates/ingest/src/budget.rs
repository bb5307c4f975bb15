//! How many refusals become security events of their own.
//!
//! Anyone who can reach the broker or the API can cause refusals, and each stored one costs a
//! row, a log leaf and a share of a commit. A flood would grow the database and the log without
//! bound and crowd readings out of the writer. So refusals are stored one by one within a
//! budget (a burst, refilled at a steady rate); past it they are counted, and the counts are
//! stored as one `events_suppressed` event at most every [`SUMMARY_EVERY_MS`]. Nothing is
//! silently dropped: every refusal is in `/metrics` and in a stored event, alone or counted.
//!
//! Events whose origin is known (`forbidden` and `csrf_failed` name an authenticated caller; a
//! `witness_alarm` is signed by a configured witness) have a budget of their own, so that a
//! flood of anonymous junk cannot cost them their detail.

use msec_store::NewEvent;
use std::collections::BTreeMap;

/// Refusals stored one by one in a burst.
pub const BURST: i64 = 1000;
/// Refusals stored one by one per second once a burst is spent.
pub const PER_SECOND: i64 = 10;
/// How often the counts of refusals past the budget are stored.
pub const SUMMARY_EVERY_MS: i64 = 10_000;
/// The reason code of the event that carries those counts.
pub const SUPPRESSED: &str = "events_suppressed";

pub(crate) struct EventBudget {
    /// What may still be stored, per class (anonymous, authenticated), in thousandths of an
    /// event (refills exactly per millisecond).
    milli: [i64; 2],
    refilled_ms: [i64; 2],
    counts: BTreeMap<&'static str, u64>,
    /// When the first refusal not yet in a summary was counted.
    since_ms: Option<i64>,
}

impl EventBudget {
    pub(crate) fn new(now_ms: i64) -> EventBudget {
        EventBudget {
            milli: [BURST * 1000; 2],
            refilled_ms: [now_ms; 2],
            counts: BTreeMap::new(),
            since_ms: None,
        }
    }

    /// Whether a refusal for `reason` may be stored as an event of its own; if not, it is
    /// counted for the next summary.
    pub(crate) fn admit(&mut self, reason: &'static str, now_ms: i64) -> bool {
        let class = usize::from(matches!(
            reason,
            "forbidden" | "csrf_failed" | "witness_alarm"
        ));
        let (milli, refilled_ms) = (&mut self.milli[class], &mut self.refilled_ms[class]);
        // Clocks can step back: never refill for negative time, never lose the allowance.
        let elapsed = now_ms.saturating_sub(*refilled_ms).max(0);
        *milli = milli
            .saturating_add(elapsed.saturating_mul(PER_SECOND))
            .min(BURST * 1000);
        *refilled_ms = (*refilled_ms).max(now_ms);
        if *milli >= 1000 {
            *milli -= 1000;
            return true;
        }
        *self.counts.entry(reason).or_default() += 1;
        self.since_ms.get_or_insert(now_ms);
        false
    }

    /// The counts so far as one event, once [`SUMMARY_EVERY_MS`] has passed since the first of
    /// them (or at once with `now`, when stopping); `None` when there is nothing to report yet.
    pub(crate) fn summary(&mut self, now_ms: i64, now: bool) -> Option<NewEvent> {
        let since = self.since_ms?;
        if !now && now_ms.saturating_sub(since) < SUMMARY_EVERY_MS {
            return None;
        }
        self.since_ms = None;
        let counts = std::mem::take(&mut self.counts);
        let total: u64 = counts.values().sum();
        let each: Vec<String> = counts.iter().map(|(r, n)| format!("{r} {n}")).collect();
        Some(NewEvent {
            at_ms: now_ms,
            reason: SUPPRESSED.into(),
            device_id: None,
            // Counts over every tenant: platform-wide.
            tenant: None,
            source: "msec".into(),
            detail: format!(
                "{total} refusals in {:.1} s came faster than {PER_SECOND} a second (after a burst of {BURST}) and are counted here, not stored one by one: {}",
                now_ms.saturating_sub(since) as f64 / 1000.0,
                each.join(", ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate_then_counts() {
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("unknown_device", 0)));
        assert!(!b.admit("unknown_device", 0));
        assert!(!b.admit("malformed_envelope", 50));
        // A tenth of a second refills one event at 10 a second.
        assert!(b.admit("unknown_device", 100));
        assert!(!b.admit("unknown_device", 100));
        assert!(b.summary(9_999, false).is_none(), "too early");
        let s = b.summary(10_000, false).expect("a summary after 10 s");
        assert_eq!(s.reason, SUPPRESSED);
        assert!(
            s.detail.starts_with("3 refusals")
                && s.detail.ends_with("malformed_envelope 1, unknown_device 2"),
            "{}",
            s.detail
        );
        assert!(b.summary(30_000, true).is_none(), "nothing new to report");
        // Idle long enough, the burst is back, and no more than the burst.
        let later = 100 + BURST * 1000 / PER_SECOND;
        assert!((0..BURST).all(|_| b.admit("unknown_device", later)));
        assert!(!b.admit("unknown_device", later));
        assert!(
            b.summary(later + 1, true).is_some(),
            "stopping reports at once"
        );
    }

    #[test]
    fn anonymous_junk_cannot_spend_the_authenticated_budget() {
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("unknown_device", 0)));
        assert!(!b.admit("unauthenticated", 0));
        assert!((0..BURST).all(|_| b.admit("forbidden", 0)));
        assert!(!b.admit("csrf_failed", 0));
        // A verified witness alarm is no anonymous junk either.
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("malformed_envelope", 0)));
        assert!(b.admit("witness_alarm", 0));
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let mut b = EventBudget::new(1_000_000);
        assert!((0..BURST).all(|_| b.admit("forbidden", 1_000_000)));
        assert!(!b.admit("forbidden", 0));
        assert!(!b.admit("forbidden", 1_000_000));
        assert!(b.admit("forbidden", 1_000_100));
    }
}
