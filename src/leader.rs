//! How the operator starts and stops: leader election on a Lease (so that several replicas run one active
//! operator and a standby takes over) and the stop signal that lets in-flight syncs finish.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::task::AbortOnDrop;

/// How long a lease holds without renewal: a crashed leader is replaced within this time.
const LEASE_DURATION_SECONDS: u64 = 15;
/// The holder renews this long before its lease would expire.
const LEASE_RENEW_GRACE_SECONDS: u64 = 5;
/// A leader that has not seen its own renewal for this long stops, before a standby may take over (at the
/// lease duration): the lease manager keeps believing it leads while the API server cannot be reached.
const SELF_EXPIRY: Duration = Duration::from_secs(LEASE_DURATION_SECONDS - 2);

/// The Lease this process holds while it leads.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    lease: String,
    expired: watch::Receiver<bool>,
    _guard: AbortOnDrop,
}

impl Leadership {
    /// Waits until this process holds the Lease `namespace/lease`. `identity` names the holder (the pod).
    pub async fn acquire(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Result<Self, kube_lease_manager::LeaseManagerError> {
        let lease_name = lease;
        let manager_client = client.clone();
        let manager = LeaseManagerBuilder::new(client, lease)
            .with_namespace(namespace)
            .with_identity(identity)
            .with_field_manager(format!("secretsync-leader-{identity}"))
            .with_duration(LEASE_DURATION_SECONDS)
            .with_grace(LEASE_RENEW_GRACE_SECONDS)
            .build()
            .await?;
        let lease = format!("{namespace}/{lease}");
        let (mut leading, task) = manager.watch().await;
        tracing::info!(%lease, %identity, "waiting for the leader lease");
        if leading.wait_for(|leading| *leading).await.is_err() {
            // The manager stopped: its error says why.
            return match task.await {
                Ok(Err(err)) => Err(err),
                _ => Err(kube_lease_manager::LeaseManagerError::InconsistentState(
                    "the lease manager stopped".into(),
                )),
            };
        }
        tracing::info!(%lease, "leading");
        let (expire, expired) = watch::channel(false);
        let guard = tokio::spawn(expiry_guard(
            Api::namespaced(manager_client, namespace),
            lease_name.to_string(),
            identity.to_string(),
            expire,
        ));
        Ok(Leadership {
            leading,
            task,
            lease,
            expired,
            _guard: AbortOnDrop(guard.abort_handle()),
        })
    }

    /// Resolves when the lease is lost: taken over, or not seen renewed for `SELF_EXPIRY` (cut off from the
    /// API server, this process cannot know whether another has taken it).
    pub async fn lost(&self) {
        let mut leading = self.leading.clone();
        let mut expired = self.expired.clone();
        tokio::select! {
            _ = leading.wait_for(|leading| !*leading) => {}
            _ = expired.wait_for(|expired| *expired) => {}
        }
    }

    /// Gives the lease up, so that the Lease shows no holder. A standby still takes over only when the expiry
    /// it last saw has passed (the lease manager does not watch the Lease): within the lease duration.
    pub async fn release(self) {
        drop(self.leading);
        match tokio::time::timeout(Duration::from_secs(LEASE_DURATION_SECONDS), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!(lease = %self.lease, "leader lease released"),
            Ok(Ok(Err(err))) => {
                tracing::warn!(lease = %self.lease, error = %err, "could not release the leader lease")
            }
            Ok(Err(err)) => tracing::warn!(error = %err, "leader lease task failed"),
            Err(_) => tracing::warn!(lease = %self.lease, "timed out releasing the leader lease"),
        }
    }
}

/// Watches the Lease for our own renewals, and says `expired` once none has been seen for `SELF_EXPIRY`, or
/// another holder is seen. A watch, not polling: when the API server cannot be reached nothing arrives, and
/// the clock alone decides.
async fn expiry_guard(
    leases: Api<Lease>,
    name: String,
    identity: String,
    expire: watch::Sender<bool>,
) {
    let renewed = Arc::new(Mutex::new(Instant::now()));
    let seen = renewed.clone();
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let updates = crate::controller::watch_stream(leases, config)
        .applied_objects()
        .for_each(|lease| {
            if let Ok(lease) = lease {
                let spec = lease.spec.unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(identity.as_str()) {
                    tracing::warn!(holder = ?spec.holder_identity, "another replica holds the leader lease");
                    expire.send_replace(true);
                } else if let Some(renew) = spec.renew_time {
                    // The renewal time is our own clock's, written by our lease manager.
                    let age = Timestamp::now().duration_since(renew.0);
                    let at = Instant::now()
                        .checked_sub(age.unsigned_abs())
                        .unwrap_or_else(Instant::now);
                    *seen.lock().expect("never poisoned") = at;
                }
            }
            std::future::ready(())
        });
    let clock = async {
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        loop {
            ticker.tick().await;
            let last = *renewed.lock().expect("never poisoned");
            if last.elapsed() >= SELF_EXPIRY {
                tracing::warn!(
                    seconds = last.elapsed().as_secs(),
                    "no renewal of the leader lease seen: stopping before another replica may take over"
                );
                expire.send_replace(true);
                return;
            }
        }
    };
    tokio::select! {
        () = updates => {}
        () = clock => {}
    }
}

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
pub async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
