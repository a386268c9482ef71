//! The controllers and what they share.

mod backoff;
mod external_secret;
mod secret_store;
mod stores;

use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::data_hash::DataHasher;
use crate::metrics::Metrics;
use backoff::Backoff;

pub struct Context {
    pub client: Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    /// The operator's own AWS configuration, loaded once; per-store clients are derived from it.
    pub aws: SdkConfig,
    pub hasher: DataHasher,
    pub backoff: Backoff,
    /// How often stores re-check their credentials when they do not say.
    pub store_refresh: Duration,
}

impl Context {
    pub fn new(
        client: Client,
        aws: SdkConfig,
        hasher: DataHasher,
        metrics: Arc<Metrics>,
        store_refresh: Duration,
    ) -> Self {
        let reporter = Reporter {
            controller: "secretsync".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            metrics,
            aws,
            hasher,
            backoff: Backoff::default(),
            store_refresh,
        }
    }
}

/// Runs every controller until a shutdown signal; `namespace` limits namespaced watches to one namespace.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    futures::join!(
        external_secret::run(ctx.clone(), namespace.clone()),
        secret_store::run_namespaced(ctx.clone(), namespace),
        secret_store::run_cluster(ctx),
    );
}
