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
//! flood of anonymous junk cannot cost them their detail. And each tenant has budgets of its
//! own, beside those of platform-wide events, with its own summaries (see [`EventBudget`]).

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

/// The budget of one tenant's events, or of the platform-wide ones.
struct Budget {
    /// What may still be stored, per class (anonymous, authenticated), in thousandths of an
    /// event (refills exactly per millisecond).
    milli: [i64; 2],
    refilled_ms: [i64; 2],
    counts: BTreeMap<&'static str, u64>,
    /// When the first refusal not yet in a summary was counted.
    since_ms: Option<i64>,
}

/// A budget per tenant and one for platform-wide events: refusals anyone can cause in one
/// tenant's name (replays of its devices' readings, say) then cost no other tenant's auditors
/// their events, and each tenant's summary is its auditors' to read. Tenants come from the
/// registry and the known users only, so there are few.
pub(crate) struct EventBudget {
    platform: Budget,
    /// Ordered, so that summaries reach the log in the same order every time.
    tenants: BTreeMap<String, Budget>,
}

impl Budget {
    fn new(now_ms: i64) -> Budget {
        Budget {
            milli: [BURST * 1000; 2],
            refilled_ms: [now_ms; 2],
            counts: BTreeMap::new(),
            since_ms: None,
        }
    }

    fn admit(&mut self, reason: &'static str, now_ms: i64) -> bool {
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

    fn summary(&mut self, tenant: Option<&str>, now_ms: i64, now: bool) -> Option<NewEvent> {
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
            tenant: tenant.map(str::to_owned),
            nonce: msec_store::event_nonce(),
            source: "msec".into(),
            detail: format!(
                "{total} refusals in {:.1} s came faster than {PER_SECOND} a second (after a burst of {BURST}) and are counted here, not stored one by one: {}",
                now_ms.saturating_sub(since) as f64 / 1000.0,
                each.join(", ")
            ),
        })
    }
}

impl EventBudget {
    pub(crate) fn new(now_ms: i64) -> EventBudget {
        EventBudget {
            platform: Budget::new(now_ms),
            tenants: BTreeMap::new(),
        }
    }

    /// Whether a refusal for `reason`, of `tenant` (None: platform-wide), may be stored as an
    /// event of its own; if not, it is counted for the tenant's next summary.
    pub(crate) fn admit(
        &mut self,
        reason: &'static str,
        tenant: Option<&str>,
        now_ms: i64,
    ) -> bool {
        let budget = match tenant {
            None => &mut self.platform,
            Some(t) => (self.tenants)
                .entry(t.to_owned())
                .or_insert_with(|| Budget::new(now_ms)),
        };
        budget.admit(reason, now_ms)
    }

    /// The counts so far as one event per tenant, each once [`SUMMARY_EVERY_MS`] has passed
    /// since the first of them (or at once with `now`, when stopping).
    pub(crate) fn summaries(&mut self, now_ms: i64, now: bool) -> Vec<NewEvent> {
        let platform = self.platform.summary(None, now_ms, now);
        let tenants = self
            .tenants
            .iter_mut()
            .filter_map(|(t, b)| b.summary(Some(t), now_ms, now));
        platform.into_iter().chain(tenants).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_a_steady_rate_then_counts() {
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("unknown_device", None, 0)));
        assert!(!b.admit("unknown_device", None, 0));
        assert!(!b.admit("malformed_envelope", None, 50));
        // A tenth of a second refills one event at 10 a second.
        assert!(b.admit("unknown_device", None, 100));
        assert!(!b.admit("unknown_device", None, 100));
        assert!(b.summaries(9_999, false).is_empty(), "too early");
        let s = b
            .summaries(10_000, false)
            .pop()
            .expect("a summary after 10 s");
        assert_eq!(s.reason, SUPPRESSED);
        assert!(
            s.detail.starts_with("3 refusals")
                && s.detail.ends_with("malformed_envelope 1, unknown_device 2"),
            "{}",
            s.detail
        );
        assert!(
            b.summaries(30_000, true).is_empty(),
            "nothing new to report"
        );
        // Idle long enough, the burst is back, and no more than the burst.
        let later = 100 + BURST * 1000 / PER_SECOND;
        assert!((0..BURST).all(|_| b.admit("unknown_device", None, later)));
        assert!(!b.admit("unknown_device", None, later));
        assert_eq!(
            b.summaries(later + 1, true).len(),
            1,
            "stopping reports at once"
        );
    }

    #[test]
    fn anonymous_junk_cannot_spend_the_authenticated_budget() {
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("unknown_device", None, 0)));
        assert!(!b.admit("unauthenticated", None, 0));
        assert!((0..BURST).all(|_| b.admit("forbidden", None, 0)));
        assert!(!b.admit("csrf_failed", None, 0));
        // A verified witness alarm is no anonymous junk either.
        let mut b = EventBudget::new(0);
        assert!((0..BURST).all(|_| b.admit("malformed_envelope", None, 0)));
        assert!(b.admit("witness_alarm", None, 0));
    }

    #[test]
    fn one_tenants_flood_spends_its_own_budget_and_its_summary_is_its_own() {
        let mut b = EventBudget::new(0);
        let santander = Some("santander");
        assert!((0..BURST).all(|_| b.admit("replayed_sequence", santander, 0)));
        assert!(!b.admit("replayed_sequence", santander, 0));
        // Neither the platform-wide events nor another tenant's pay for it.
        assert!(b.admit("unknown_device", None, 0));
        assert!((0..BURST).all(|_| b.admit("bad_signature", Some("fujisawa"), 0)));
        let summaries = b.summaries(0, true);
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert_eq!(summaries[0].tenant.as_deref(), santander);
        assert!(
            summaries[0].detail.ends_with("replayed_sequence 1"),
            "{}",
            summaries[0].detail
        );
    }

    #[test]
    fn a_clock_stepping_back_refills_nothing() {
        let mut b = EventBudget::new(1_000_000);
        assert!((0..BURST).all(|_| b.admit("forbidden", None, 1_000_000)));
        assert!(!b.admit("forbidden", None, 0));
        assert!(!b.admit("forbidden", None, 1_000_000));
        assert!(b.admit("forbidden", None, 1_000_100));
    }
}
