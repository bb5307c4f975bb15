//! Login throttling: after `MAX_FAILURES` failed logins within `WINDOW_MS` for one user name
//! or from one address, further attempts are refused until the window has passed, without
//! even checking the password (so guessing cannot continue at any speed).

use std::collections::HashMap;

pub const MAX_FAILURES: usize = 5;
pub const WINDOW_MS: i64 = 15 * 60 * 1000;
/// Bounds memory under a flood of distinct names or addresses.
const MAX_KEYS: usize = 100_000;

#[derive(Default)]
pub struct Throttle {
    failures: HashMap<String, Vec<i64>>,
}

impl Throttle {
    fn keys(user: &str, from: &str) -> [String; 2] {
        // Names are the caller's to choose: a bounded prefix keeps each key small (two names
        // that share it merely share a count).
        let user: String = user.chars().take(128).collect();
        // One IPv6 host commonly holds a whole /64: count the network, not each address.
        let from = match from.parse::<std::net::Ipv6Addr>() {
            Ok(v6) if v6.to_ipv4_mapped().is_none() => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
            _ => from.to_string(),
        };
        [format!("user:{user}"), format!("addr:{from}")]
    }

    /// Ok once the attempt is recorded as a failure in advance, or Err(the time the lock
    /// ends, and what is locked: "for this name" or "from this address"). Counting it before the password is checked, under the same lock as the check,
    /// keeps concurrent attempts from all passing the check before any of them has failed.
    /// [`Throttle::succeeded`] takes a right password's attempt back.
    pub fn begin(
        &mut self,
        user: &str,
        from: &str,
        now_ms: i64,
    ) -> Result<(), (i64, &'static str)> {
        let keys = Self::keys(user, from);
        for (k, what) in keys.iter().zip(["for this name", "from this address"]) {
            if let Some(times) = self.failures.get_mut(k) {
                times.retain(|t| now_ms - t < WINDOW_MS);
                if times.len() >= MAX_FAILURES {
                    return Err((times[0] + WINDOW_MS, what));
                }
            }
        }
        if self.failures.len() >= MAX_KEYS {
            self.evict(now_ms);
        }
        for k in keys {
            self.failures.entry(k).or_default().push(now_ms);
        }
        Ok(())
    }

    /// Makes room under a flood of distinct names or addresses: first what has expired, then
    /// the older half of the keys that are not locked, and only then the older half of the
    /// locked ones (evicting a lock would let guessing resume).
    fn evict(&mut self, now_ms: i64) {
        self.failures.retain(|_, t| {
            t.retain(|at| now_ms - at < WINDOW_MS);
            !t.is_empty()
        });
        for locked in [false, true] {
            if self.failures.len() < MAX_KEYS {
                return;
            }
            let mut keys: Vec<(i64, String)> = self
                .failures
                .iter()
                .filter(|(_, t)| (t.len() >= MAX_FAILURES) == locked)
                .map(|(k, t)| (t.last().copied().unwrap_or(i64::MIN), k.clone()))
                .collect();
            let half = keys.len() / 2;
            if half == 0 {
                continue;
            }
            keys.select_nth_unstable(half);
            for (_, key) in &keys[..half] {
                self.failures.remove(key);
            }
        }
    }

    /// A right password: clears the user's count, and takes back this attempt's advance
    /// count from the address (not its other failures: one right password does not excuse a
    /// stream of guesses at other accounts).
    pub fn succeeded(&mut self, user: &str, from: &str, now_ms: i64) {
        self.withdraw(user, from, now_ms);
        self.failures.remove(&Self::keys(user, from)[0]);
    }

    /// Takes back the advance count of an attempt that was never judged (the database failed).
    pub fn withdraw(&mut self, user: &str, from: &str, now_ms: i64) {
        for key in Self::keys(user, from) {
            if let Some(times) = self.failures.get_mut(&key) {
                if let Some(i) = times.iter().rposition(|t| *t == now_ms) {
                    times.remove(i);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_lock_the_name_and_the_address_for_the_window() {
        let mut t = Throttle::default();
        let t0 = 1_000_000;
        // Guesses at five different names from one address lock the address...
        for i in 0..MAX_FAILURES {
            assert!(t.begin(&format!("u{i}"), "10.0.0.9", t0 + i as i64).is_ok());
        }
        assert_eq!(
            t.begin("someone-else", "10.0.0.9", t0 + 10),
            Err((t0 + WINDOW_MS, "from this address"))
        );
        // ...but not those names from elsewhere, each having failed only once.
        assert!(t.begin("u0", "10.0.0.8", t0 + 10).is_ok());
        // Five guesses at one name from five addresses lock the name.
        for i in 0..MAX_FAILURES {
            assert!(t
                .begin("maria", &format!("10.1.0.{i}"), t0 + i as i64)
                .is_ok());
        }
        assert_eq!(
            t.begin("maria", "10.2.0.1", t0 + 10),
            Err((t0 + WINDOW_MS, "for this name"))
        );
        // A right password clears the name's count, not the address's earlier failures.
        assert!(t.begin("u4", "10.0.0.7", t0 + 5).is_ok());
        t.succeeded("u4", "10.0.0.7", t0 + 5);
        assert!(!t.failures.contains_key("user:u4"));
        assert!(t.begin("u4", "10.0.0.9", t0 + 10).is_err());
        // Once the window has passed since the first failure, all is open again.
        assert!(t.begin("someone-else", "10.0.0.9", t0 + WINDOW_MS).is_ok());
        assert!(t.begin("maria", "10.2.0.1", t0 + WINDOW_MS + 4).is_ok());
    }

    #[test]
    fn an_ipv6_network_counts_as_one_address() {
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES {
            assert!(t
                .begin(&format!("u{i}"), &format!("2001:db8:1:2::{i:x}"), 1)
                .is_ok());
        }
        assert!(t.begin("other", "2001:db8:1:2:ffff::1", 2).is_err());
        assert!(t.begin("other", "2001:db8:1:3::1", 2).is_ok());
    }

    #[test]
    fn a_right_password_does_not_count_against_its_address() {
        let mut t = Throttle::default();
        for i in 0..2 * MAX_FAILURES as i64 {
            assert!(t.begin("ana", "10.0.0.1", i).is_ok());
            t.succeeded("ana", "10.0.0.1", i);
        }
        assert!(t.failures.values().all(Vec::is_empty));
    }

    #[test]
    fn a_flood_of_recent_keys_stays_bounded() {
        let mut t = Throttle::default();
        for i in 0..MAX_FAILURES as i64 {
            assert!(t.begin("admin", &format!("b{i}"), i).is_ok());
        }
        for i in 0..(MAX_KEYS as i64) {
            assert!(t
                .begin(&format!("{i}{}", "x".repeat(4000)), &format!("a{i}"), i)
                .is_ok());
        }
        assert!(t.failures.len() <= MAX_KEYS);
        assert!(t.failures.keys().all(|k| k.len() <= 140));
        // The newest keys survive an eviction, and so does the lock on a name.
        assert!(t.failures.contains_key(&format!("addr:a{}", MAX_KEYS - 1)));
        assert!(t.begin("admin", "c1", MAX_KEYS as i64).is_err());
    }
}
