//! Failover regions: which region serves a store whose secrets are replicated, and when that changes.
//!
//! A store serves from its primary region until a call there fails as an outage does; the call then goes to
//! the next region, and the first one that answers serves. While a replica serves, one call every
//! `PRIMARY_RETRY` tries the primary first, and the primary serves again as soon as it answers. That try
//! gets `PRIMARY_RETRY_TIMEOUT`, not the SDK's timeouts: a primary that still does not answer would
//! otherwise hold the call for all of them. An answer that is a decision (access denied, not found) is an
//! answer: it is reported, never failed over.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};

use crate::api::StoreKind;

/// How often, while a replica serves, one call tries the primary region first.
pub const PRIMARY_RETRY: Duration = Duration::from_secs(15);

/// How long a call tries the primary region while a replica serves, before it goes on to the replica.
/// A healthy region answers in milliseconds.
pub const PRIMARY_RETRY_TIMEOUT: Duration = Duration::from_secs(3);

/// A store, by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StoreKey {
    pub kind: StoreKind,
    pub namespace: Option<String>,
    pub name: String,
}

/// The regions of one store, primary first, and which one serves.
pub struct Failover {
    regions: Vec<String>,
    state: Mutex<State>,
    store: StoreKey,
    switched: UnboundedSender<StoreKey>,
}

struct State {
    /// Index into `regions`.
    serving: usize,
    /// Why the primary stopped serving, while it does not.
    cause: Option<String>,
    /// When a call last tried the primary while a replica served.
    primary_tried: Instant,
}

impl Failover {
    pub fn regions(&self) -> &[String] {
        &self.regions
    }

    /// The order in which a call tries the regions (indexes): the serving one and those after it, then
    /// those before; the primary first when it is due for another try.
    pub fn order(&self) -> Vec<usize> {
        let mut state = self.state.lock().expect("never poisoned");
        let count = self.regions.len();
        if state.serving == 0 {
            return (0..count).collect();
        }
        let retry_primary = state.primary_tried.elapsed() >= PRIMARY_RETRY;
        if retry_primary {
            state.primary_tried = Instant::now();
        }
        let mut order: Vec<usize> = (state.serving..count).chain(1..state.serving).collect();
        if retry_primary {
            order.insert(0, 0);
        } else {
            order.push(0);
        }
        order
    }

    /// How long a call may wait for region `index`: the SDK's timeouts (`None`), or less for the primary
    /// while a replica serves.
    pub fn time_limit(&self, index: usize) -> Option<Duration> {
        let state = self.state.lock().expect("never poisoned");
        (index == 0 && state.serving != 0).then_some(PRIMARY_RETRY_TIMEOUT)
    }

    /// A region answered: it serves from now on, if it did not already.
    pub fn answered(&self, index: usize) {
        let mut state = self.state.lock().expect("never poisoned");
        if state.serving == index {
            return;
        }
        let from = &self.regions[state.serving];
        let to = &self.regions[index];
        if index == 0 {
            tracing::info!(store = %self.store.name, from, to, "primary region answers again: back to it");
            state.cause = None;
        } else {
            tracing::warn!(store = %self.store.name, from, to, cause = state.cause.as_deref().unwrap_or_default(), "failing over");
            state.primary_tried = Instant::now();
        }
        state.serving = index;
        let _ = self.switched.unbounded_send(self.store.clone());
    }

    /// A region failed as an outage does; `detail` says how (an AWS error, never a value).
    pub fn failed(&self, index: usize, detail: &str) {
        if index == 0 {
            let mut state = self.state.lock().expect("never poisoned");
            state.cause = Some(format!("{}: {detail}", self.regions[0]));
        }
    }

    /// The region that serves, and why the primary does not (when it does not).
    pub fn serving(&self) -> (String, Option<String>) {
        let state = self.state.lock().expect("never poisoned");
        let cause = (state.serving != 0).then(|| state.cause.clone()).flatten();
        (self.regions[state.serving].clone(), cause)
    }
}

/// The failover state of every store that has failover regions, and the news of their switches for the
/// store controllers, which report them.
pub struct Failovers {
    by_store: Mutex<HashMap<StoreKey, Arc<Failover>>>,
    switched: [UnboundedSender<StoreKey>; 2],
    switches: Mutex<[Option<UnboundedReceiver<StoreKey>>; 2]>,
}

impl Default for Failovers {
    fn default() -> Self {
        let (namespaced, namespaced_switches) = unbounded();
        let (cluster, cluster_switches) = unbounded();
        Failovers {
            by_store: Mutex::default(),
            switched: [namespaced, cluster],
            switches: Mutex::new([Some(namespaced_switches), Some(cluster_switches)]),
        }
    }
}

fn slot(kind: StoreKind) -> usize {
    match kind {
        StoreKind::SecretStore => 0,
        StoreKind::ClusterSecretStore => 1,
    }
}

impl Failovers {
    /// The store's failover state for these regions (primary first); new when the regions changed.
    pub fn get(&self, store: StoreKey, regions: Vec<String>) -> Arc<Failover> {
        let mut by_store = self.by_store.lock().expect("never poisoned");
        if let Some(failover) = by_store.get(&store)
            && failover.regions == regions
        {
            return failover.clone();
        }
        let failover = Arc::new(Failover {
            regions,
            state: Mutex::new(State {
                serving: 0,
                cause: None,
                primary_tried: Instant::now(),
            }),
            switched: self.switched[slot(store.kind)].clone(),
            store: store.clone(),
        });
        // The store reports its serving region from its first use on.
        let _ = self.switched[slot(store.kind)].unbounded_send(store.clone());
        by_store.insert(store, failover.clone());
        failover
    }

    /// The region serving the store and why the primary does not, if the store has failover regions and
    /// has been used.
    pub fn serving(&self, store: &StoreKey) -> Option<(String, Option<String>)> {
        let by_store = self.by_store.lock().expect("never poisoned");
        by_store.get(store).map(|failover| failover.serving())
    }

    pub fn forget(&self, store: &StoreKey) {
        self.by_store.lock().expect("never poisoned").remove(store);
    }

    /// The stores of one kind whose serving region changed; taken once, by that kind's controller.
    pub fn switches(&self, kind: StoreKind) -> Option<UnboundedReceiver<StoreKey>> {
        self.switches.lock().expect("never poisoned")[slot(kind)].take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failover() -> (Arc<Failover>, UnboundedReceiver<StoreKey>) {
        let failovers = Failovers::default();
        let store = StoreKey {
            kind: StoreKind::SecretStore,
            namespace: Some("ns".into()),
            name: "aws".into(),
        };
        let regions = ["us-east-1", "us-west-2", "eu-west-1"]
            .map(String::from)
            .to_vec();
        let failover = failovers.get(store, regions);
        let mut switches = failovers.switches(StoreKind::SecretStore).unwrap();
        assert!(switches.try_recv().is_ok(), "the first use is reported");
        (failover, switches)
    }

    #[test]
    fn replicas_serve_in_order_and_the_primary_is_retried() {
        let (failover, mut switches) = failover();
        assert_eq!(failover.order(), [0, 1, 2]);
        assert_eq!(failover.time_limit(0), None);
        failover.failed(0, "HTTP 503");
        failover.answered(1);
        assert_eq!(
            failover.serving(),
            ("us-west-2".into(), Some("us-east-1: HTTP 503".into()))
        );
        assert!(switches.try_recv().is_ok());
        // Not yet due: the primary comes last.
        assert_eq!(failover.order(), [1, 2, 0]);
        assert_eq!(failover.time_limit(0), Some(PRIMARY_RETRY_TIMEOUT));
        assert_eq!(failover.time_limit(1), None);
        failover.state.lock().unwrap().primary_tried = Instant::now() - PRIMARY_RETRY;
        assert_eq!(failover.order(), [0, 1, 2]);
        // Only one call makes that try.
        assert_eq!(failover.order(), [1, 2, 0]);
        failover.answered(0);
        assert_eq!(failover.serving(), ("us-east-1".into(), None));
        assert!(switches.try_recv().is_ok());
        // Answering where it already serves is no switch.
        failover.answered(0);
        assert!(switches.try_recv().is_err());
    }
}
