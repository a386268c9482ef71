//! Prometheus metrics, named as External Secrets Operator names them so that existing dashboards work.
//! Labels carry object names only, never values or remote key contents.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    sync_calls: IntCounterVec,
    sync_errors: IntCounterVec,
    es_condition: IntGaugeVec,
    store_condition: IntGaugeVec,
    cluster_store_condition: IntGaugeVec,
    provider_calls: IntCounterVec,
    reconcile_duration: HistogramVec,
    rotations_detected: IntCounterVec,
    remote_secrets_watched: IntGaugeVec,
    propagation: HistogramVec,
    restarts: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let metric = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(metric.clone()))
                .expect("unique metric");
            metric
        };
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "secretsync_reconcile_duration_seconds",
                "Time spent in one reconcile",
            )
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]),
            &["controller"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(reconcile_duration.clone()))
            .expect("unique metric");
        let propagation = HistogramVec::new(
            HistogramOpts::new(
                "secretsync_rotation_propagation_seconds",
                "Time from a new remote version (noticed by a check, or the AWS event time) to the Secret written or the workload restart triggered",
            )
            .buckets(vec![
                0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
            ]),
            &["since", "until"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(propagation.clone()))
            .expect("unique metric");
        Metrics {
            sync_calls: counter(
                "externalsecret_sync_calls_total",
                "Total ExternalSecret syncs",
                &["name", "namespace"],
            ),
            sync_errors: counter(
                "externalsecret_sync_calls_error",
                "ExternalSecret syncs that failed",
                &["name", "namespace"],
            ),
            es_condition: gauge(
                "externalsecret_status_condition",
                "ExternalSecret condition status (1 for the current status)",
                &["name", "namespace", "condition", "status"],
            ),
            store_condition: gauge(
                "secretstore_status_condition",
                "SecretStore condition status",
                &["name", "namespace", "condition", "status"],
            ),
            cluster_store_condition: gauge(
                "clustersecretstore_status_condition",
                "ClusterSecretStore condition status",
                &["name", "condition", "status"],
            ),
            provider_calls: counter(
                "externalsecret_provider_api_calls_count",
                "Calls to secret providers by call and outcome",
                &["provider", "call", "status"],
            ),
            rotations_detected: counter(
                "secretsync_rotations_detected_total",
                "Remote secrets whose watched stages moved to a new version, by check strategy",
                &["strategy"],
            ),
            remote_secrets_watched: gauge(
                "secretsync_remote_secrets_watched",
                "Remote secrets whose versions are checked, by check strategy",
                &["strategy"],
            ),
            restarts: counter(
                "secretsync_workload_restarts_total",
                "Workload rolling restarts triggered by a Secret change, by kind and outcome",
                &["kind", "outcome"],
            ),
            reconcile_duration,
            propagation,
            registry,
        }
    }
}

impl Metrics {
    pub fn sync(&self, namespace: &str, name: &str, ok: bool) {
        self.sync_calls.with_label_values(&[name, namespace]).inc();
        if !ok {
            self.sync_errors.with_label_values(&[name, namespace]).inc();
        }
    }

    pub fn external_secret_ready(&self, namespace: &str, name: &str, ready: bool) {
        for (status, value) in [("True", ready), ("False", !ready)] {
            self.es_condition
                .with_label_values(&[name, namespace, "Ready", status])
                .set(value.into());
        }
    }

    pub fn store_ready(&self, namespace: Option<&str>, name: &str, ready: bool) {
        for (status, value) in [("True", ready), ("False", !ready)] {
            let (gauge, labels) = self.store_series(namespace, name, status);
            gauge.with_label_values(&labels).set(value.into());
        }
    }

    /// SecretStores and ClusterSecretStores report under different names, with and without a namespace.
    fn store_series<'a>(
        &self,
        namespace: Option<&'a str>,
        name: &'a str,
        status: &'a str,
    ) -> (&IntGaugeVec, Vec<&'a str>) {
        match namespace {
            Some(ns) => (&self.store_condition, vec![name, ns, "Ready", status]),
            None => (&self.cluster_store_condition, vec![name, "Ready", status]),
        }
    }

    /// Drops a deleted ExternalSecret's series, so that dashboards and alerts do not see it any more.
    pub fn forget_external_secret(&self, namespace: &str, name: &str) {
        // Removing a series that was never set is an error we do not care about.
        let _ = self.sync_calls.remove_label_values(&[name, namespace]);
        let _ = self.sync_errors.remove_label_values(&[name, namespace]);
        for status in ["True", "False"] {
            let _ = self
                .es_condition
                .remove_label_values(&[name, namespace, "Ready", status]);
        }
    }

    pub fn forget_store(&self, namespace: Option<&str>, name: &str) {
        for status in ["True", "False"] {
            let (gauge, labels) = self.store_series(namespace, name, status);
            let _ = gauge.remove_label_values(&labels);
        }
    }

    pub fn provider_call(&self, provider: &str, call: &str, ok: bool) {
        let status = if ok { "success" } else { "error" };
        self.provider_calls
            .with_label_values(&[provider, call, status])
            .inc();
    }

    pub fn reconcile_duration(&self, controller: &str, seconds: f64) {
        self.reconcile_duration
            .with_label_values(&[controller])
            .observe(seconds);
    }

    pub fn rotations_detected(&self, strategy: &str, secrets: u64) {
        self.rotations_detected
            .with_label_values(&[strategy])
            .inc_by(secrets);
    }

    pub fn remote_secrets_watched(&self, strategy: &str, secrets: i64) {
        self.remote_secrets_watched
            .with_label_values(&[strategy])
            .set(secrets);
    }

    /// `since`: `detection` or `event`; `until`: `secret_written` or `restart_triggered`.
    pub fn propagation(&self, since: &str, until: &str, seconds: f64) {
        self.propagation
            .with_label_values(&[since, until])
            .observe(seconds);
    }

    /// `outcome`: `restarted`, `paused` (not restarted) or `failed`.
    pub fn restart(&self, kind: &str, outcome: &str) {
        self.restarts.with_label_values(&[kind, outcome]).inc();
    }

    pub fn encode(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}
