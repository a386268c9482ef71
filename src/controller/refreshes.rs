//! When each ExternalSecret syncs next by itself (its periodic refresh, a retry of restarts still owed). The
//! controller's scheduler could hold this, but it keeps two copies of each request, with the resourceVersion
//! and uid of the object: about 700 bytes for every ExternalSecret, since all of them wait for a refresh.
//! Kept here, one is a name and an instant. Due ones join the re-syncs, so a new ExternalSecret never waits
//! behind a burst of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::resyncs::Resyncs;
use crate::es_name::EsName;

/// Sweeps run at most this often: each looks at every ExternalSecret, so due ones are gathered a little
/// late rather than swept for one by one.
const SWEEP_GAP: Duration = Duration::from_millis(250);
/// How long a sweep waits when nothing is due.
const IDLE_SWEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
pub struct Refreshes {
    state: Mutex<State>,
    earlier: Notify,
}

#[derive(Default)]
struct State {
    due: HashMap<EsName, Instant>,
    /// When the sweeper wakes next, if it sleeps.
    next_sweep: Option<Instant>,
}

impl Refreshes {
    /// Syncs `es` after `after`, instead of when it was due before; never again by itself with `None`.
    pub fn schedule(&self, es: EsName, after: Option<Duration>) {
        let mut state = self.state.lock().expect("never poisoned");
        let Some(after) = after else {
            state.due.remove(&es);
            return;
        };
        let at = Instant::now() + after;
        state.due.insert(es, at);
        if state.next_sweep.is_some_and(|next| at < next) {
            state.next_sweep = Some(at);
            drop(state);
            self.earlier.notify_one();
        }
    }

    pub fn retain(&self, live: impl Fn(&EsName) -> bool) {
        self.state
            .lock()
            .expect("never poisoned")
            .due
            .retain(|es, _| live(es));
    }

    /// Takes those due by `now`, and plans the next sweep for the next one due.
    fn take_due(&self, now: Instant) -> Vec<EsName> {
        let mut state = self.state.lock().expect("never poisoned");
        let mut taken = Vec::new();
        let mut next: Option<Instant> = None;
        state.due.retain(|es, at| {
            if *at <= now {
                taken.push(es.clone());
                return false;
            }
            next = Some(next.map_or(*at, |next| next.min(*at)));
            true
        });
        state.next_sweep = Some(next.unwrap_or(now + IDLE_SWEEP).max(now + SWEEP_GAP));
        taken
    }

    /// Hands due ExternalSecrets to `resyncs`, for as long as the controller runs.
    pub async fn feed(self: Arc<Self>, resyncs: Arc<Resyncs>) {
        loop {
            let now = Instant::now();
            let due = self.take_due(now);
            if !due.is_empty() {
                resyncs.request(due);
            }
            let wake = self
                .state
                .lock()
                .expect("never poisoned")
                .next_sweep
                .unwrap_or(now + SWEEP_GAP);
            tokio::select! {
                () = tokio::time::sleep_until(wake) => {}
                () = self.earlier.notified() => tokio::time::sleep(SWEEP_GAP).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn es(name: &str) -> EsName {
        EsName::new("ns", name)
    }

    #[tokio::test(start_paused = true)]
    async fn takes_what_is_due_and_keeps_the_rest() {
        let refreshes = Refreshes::default();
        let start = Instant::now();
        refreshes.schedule(es("soon"), Some(Duration::from_secs(1)));
        refreshes.schedule(es("later"), Some(Duration::from_secs(60)));
        refreshes.schedule(es("never"), Some(Duration::from_secs(2)));
        refreshes.schedule(es("never"), None);
        let next_sweep = |refreshes: &Refreshes| refreshes.state.lock().unwrap().next_sweep;
        let now = start + Duration::from_secs(5);
        assert_eq!(refreshes.take_due(now), vec![es("soon")]);
        assert_eq!(
            next_sweep(&refreshes),
            Some(start + Duration::from_secs(60))
        );
        // Rescheduling replaces what was due before.
        refreshes.schedule(es("later"), Some(Duration::from_secs(1)));
        assert_eq!(refreshes.take_due(now), vec![es("later")]);
        assert_eq!(next_sweep(&refreshes), Some(now + IDLE_SWEEP));
    }

    #[tokio::test(start_paused = true)]
    async fn feeds_each_due_one_once_even_when_scheduled_earlier_than_the_sweep() {
        let refreshes = Arc::new(Refreshes::default());
        let resyncs = Arc::new(Resyncs::new(8));
        refreshes.schedule(es("hourly"), Some(Duration::from_secs(3600)));
        let feeding = tokio::spawn(refreshes.clone().feed(resyncs.clone()));
        tokio::time::sleep(Duration::from_secs(1)).await;
        // The sweeper sleeps until the hourly one; this one must wake it.
        refreshes.schedule(es("soon"), Some(Duration::from_secs(2)));
        let mut handed = Box::pin(resyncs.clone().stream());
        let first = tokio::time::timeout(
            Duration::from_secs(5),
            futures::StreamExt::next(&mut handed),
        )
        .await
        .expect("the earlier one is fed within its wait and a sweep gap");
        assert_eq!(first, Some(es("soon").object_ref()));
        resyncs.finished(&es("soon"));
        let again = tokio::time::timeout(
            Duration::from_secs(60),
            futures::StreamExt::next(&mut handed),
        )
        .await;
        assert!(again.is_err(), "fed once, and the hourly one is not due");
        feeding.abort();
    }
}
