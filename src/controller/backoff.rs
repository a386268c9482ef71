//! Per-object exponential backoff with jitter for transient errors, so that many objects failing together
//! (an AWS throttle, an API server restart) do not retry in lockstep.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

const BASE: Duration = Duration::from_secs(1);
const MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub struct Backoff {
    failures: Mutex<HashMap<String, u32>>,
}

impl Backoff {
    /// The delay before the next retry of `key`: doubling from 1 s up to 5 min, then a random point
    /// in its upper half.
    pub fn next(&self, key: &str) -> Duration {
        let mut failures = self.failures.lock().expect("backoff lock");
        let count = failures.entry(key.to_string()).or_default();
        *count = count.saturating_add(1);
        let ceiling = BASE.saturating_mul(1 << (*count - 1).min(16)).min(MAX);
        rand::rng().random_range(ceiling / 2..=ceiling)
    }

    pub fn reset(&self, key: &str) {
        self.failures.lock().expect("backoff lock").remove(key);
    }

    /// Keeps the counts of the keys for which `live` holds.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.failures
            .lock()
            .expect("backoff lock")
            .retain(|key, _| live(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_and_resets() {
        let backoff = Backoff::default();
        let first = backoff.next("a");
        assert!(first >= BASE / 2 && first <= BASE);
        let delays: Vec<_> = (0..20).map(|_| backoff.next("a")).collect();
        assert!(delays.iter().all(|d| *d <= MAX));
        assert!(*delays.last().unwrap() >= MAX / 2);
        // Another object has its own count.
        assert!(backoff.next("b") <= BASE);
        backoff.reset("a");
        assert!(backoff.next("a") <= BASE);
    }
}
