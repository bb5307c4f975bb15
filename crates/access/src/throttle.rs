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
        [format!("user:{user}"), format!("addr:{from}")]
    }

    /// Ok, or Err(the time the lock ends).
    pub fn check(&mut self, user: &str, from: &str, now_ms: i64) -> Result<(), i64> {
        for k in Self::keys(user, from) {
            if let Some(times) = self.failures.get_mut(&k) {
                times.retain(|t| now_ms - t < WINDOW_MS);
                if times.len() >= MAX_FAILURES {
                    return Err(times[0] + WINDOW_MS);
                }
            }
        }
        Ok(())
    }

    pub fn failed(&mut self, user: &str, from: &str, now_ms: i64) {
        if self.failures.len() >= MAX_KEYS {
            self.failures
                .retain(|_, t| t.last().is_some_and(|l| now_ms - l < WINDOW_MS));
        }
        for k in Self::keys(user, from) {
            self.failures.entry(k).or_default().push(now_ms);
        }
    }

    /// A successful login clears the user's count (not the address's: one right password does
    /// not excuse a stream of guesses at other accounts).
    pub fn succeeded(&mut self, user: &str) {
        self.failures.remove(&format!("user:{user}"));
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
            assert!(t.check(&format!("u{i}"), "10.0.0.9", t0).is_ok());
            t.failed(&format!("u{i}"), "10.0.0.9", t0 + i as i64);
        }
        assert_eq!(
            t.check("someone-else", "10.0.0.9", t0 + 10),
            Err(t0 + WINDOW_MS)
        );
        // ...but not those names from elsewhere, each having failed only once.
        assert!(t.check("u0", "10.0.0.8", t0 + 10).is_ok());
        // Five guesses at one name from five addresses lock the name.
        for i in 0..MAX_FAILURES {
            t.failed("maria", &format!("10.1.0.{i}"), t0 + i as i64);
        }
        assert!(t.check("maria", "10.2.0.1", t0 + 10).is_err());
        // A right password clears the name's count, not the address's.
        t.succeeded("u4");
        assert!(t.check("u4", "10.0.0.9", t0 + 10).is_err());
        // Once the window has passed since the first failure, all is open again.
        assert!(t.check("someone-else", "10.0.0.9", t0 + WINDOW_MS).is_ok());
        assert!(t.check("maria", "10.2.0.1", t0 + WINDOW_MS + 4).is_ok());
    }
}
