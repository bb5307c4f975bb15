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
