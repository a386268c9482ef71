//! How the operator starts and stops: leader election on a Lease (so that several replicas run one active
//! operator and a standby takes over) and the stop signal that lets in-flight syncs finish.

use std::time::Duration;

use kube::Client;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How long a lease holds without renewal: a crashed leader is replaced within this time.
const LEASE_DURATION_SECONDS: u64 = 15;
/// The holder renews this long before its lease would expire.
const LEASE_RENEW_GRACE_SECONDS: u64 = 5;

/// The Lease this process holds while it leads.
pub struct Leadership {
    leading: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<LeaseManager>>,
    lease: String,
}

impl Leadership {
    /// Waits until this process holds the Lease `namespace/lease`. `identity` names the holder (the pod).
    pub async fn acquire(
        client: Client,
        namespace: &str,
        lease: &str,
        identity: &str,
    ) -> Result<Self, kube_lease_manager::LeaseManagerError> {
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
        Ok(Leadership {
            leading,
            task,
            lease,
        })
    }

    /// Resolves when the lease is lost (not renewed in time, or taken over).
    pub async fn lost(&self) {
        let mut leading = self.leading.clone();
        let _ = leading.wait_for(|leading| !*leading).await;
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

/// Resolves on SIGTERM (the kubelet stopping the pod) or SIGINT.
pub async fn stop_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
    }
}
