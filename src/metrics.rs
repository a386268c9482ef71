//! Prometheus metrics, named as External Secrets Operator names them so that existing dashboards work.
//! Labels carry object names only, never values or remote key contents.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use prometheus::core::Collector;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    external_secrets: ExternalSecretSeries,
    es_not_ready: IntGaugeVec,
    /// The reason each not-ready ExternalSecret reports under, to drop that series when it changes.
    not_ready_reasons: Mutex<HashMap<(String, String), String>>,
    store_condition: IntGaugeVec,
    cluster_store_condition: IntGaugeVec,
    serving_region: IntGaugeVec,
    /// The region each store with failover regions reports under, to drop that series when it changes.
    serving_regions: Mutex<HashMap<(String, String, String), String>>,
    provider_calls: IntCounterVec,
    provider_errors: IntCounterVec,
    reconciles_in_flight: IntGaugeVec,
    reconcile_duration: HistogramVec,
    rotations_detected: IntCounterVec,
    remote_secrets_watched: IntGaugeVec,
    propagation: HistogramVec,
    restarts: IntCounterVec,
    kube_requests: IntCounterVec,
    leader: IntGauge,
    kept_value_bytes: IntGauge,
    kept_values_evicted: IntCounter,
}

/// (kind, namespace, name) of a store's series: a SecretStore has a namespace, a ClusterSecretStore none.
fn serving_key(namespace: Option<&str>, name: &str) -> (String, String, String) {
    let kind = match namespace {
        Some(_) => "SecretStore",
        None => "ClusterSecretStore",
    };
    (
        kind.to_string(),
        namespace.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

/// Registers a metric and hands it back, for `Metrics` to keep.
fn registered<M: Collector + Clone + 'static>(registry: &Registry, metric: M) -> M {
    registry
        .register(Box::new(metric.clone()))
        .expect("unique metric");
    metric
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            registered(
                &registry,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let reconcile_duration = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "secretsync_reconcile_duration_seconds",
                    "Time spent in one reconcile",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ]),
                &["controller"],
            )
            .expect("valid metric"),
        );
        let propagation = registered(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "secretsync_rotation_propagation_seconds",
                    "Time from a new remote version (noticed by a check, or the AWS event time) to the Secret written or the workload restart triggered",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0,
                ]),
                &["since", "until"],
            )
            .expect("valid metric"),
        );
        let leader = registered(
            &registry,
            IntGauge::new(
                "secretsync_leader",
                "1 while this replica runs the controllers (holds the leader lease, or runs without election)",
            )
            .expect("valid metric"),
        );
        let kept_value_bytes = registered(
            &registry,
            IntGauge::new(
                "secretsync_kept_value_bytes",
                "Bytes of secret values kept for rotations and first syncs (bounded by --kept-values-budget)",
            )
            .expect("valid metric"),
        );
        let kept_values_evicted = registered(
            &registry,
            IntCounter::new(
                "secretsync_kept_values_evicted_total",
                "Kept values dropped to stay within --kept-values-budget (each is read again when needed)",
            )
            .expect("valid metric"),
        );
        let external_secrets = ExternalSecretSeries::default();
        Metrics {
            leader,
            kept_value_bytes,
            kept_values_evicted,
            external_secrets,
            es_not_ready: gauge(
                "secretsync_externalsecret_not_ready",
                "1 for each ExternalSecret that is not Ready, with the class of its failure as reason",
                &["name", "namespace", "reason"],
            ),
            not_ready_reasons: Mutex::default(),
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
            serving_region: gauge(
                "secretsync_store_serving_region",
                "1 for the region that serves a store with failoverRegions (its primary, or the failover region it moved to)",
                &["kind", "namespace", "name", "region"],
            ),
            serving_regions: Mutex::default(),
            provider_calls: counter(
                "externalsecret_provider_api_calls_count",
                "Calls to secret providers by call and outcome",
                &["provider", "call", "status"],
            ),
            provider_errors: counter(
                "secretsync_provider_api_errors_total",
                "Failed calls to secret providers, and per-secret errors of batched reads, by call and error code (ThrottlingException, AccessDeniedException, HTTP 403, ...)",
                &["provider", "call", "code"],
            ),
            reconciles_in_flight: gauge(
                "secretsync_reconciles_in_flight",
                "Reconciles running now, by controller (ExternalSecrets are bounded by --concurrency)",
                &["controller"],
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
            kube_requests: counter(
                "secretsync_kube_api_requests_total",
                "Requests to the Kubernetes API server by verb (watch counts each watch started) and resource",
                &["verb", "resource"],
            ),
            reconcile_duration,
            propagation,
            registry,
        }
    }
}

/// A running reconcile, counted in `secretsync_reconciles_in_flight` while it lives.
pub struct InFlight(IntGauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    /// Counts a request to the Kubernetes API server.
    pub fn kube_request(&self, method: &http::Method, uri: &http::Uri) {
        let (verb, resource) = kube_request_kind(method, uri);
        self.kube_requests
            .with_label_values(&[verb, &resource])
            .inc();
    }

    pub fn sync(&self, namespace: &str, name: &str, ok: bool) {
        self.external_secrets.update(namespace, name, |counts| {
            counts.syncs += 1;
            counts.errors += u64::from(!ok);
        });
    }

    /// Ready when `not_ready` is `None`; otherwise not ready for that reason (an error class).
    pub fn external_secret_ready(&self, namespace: &str, name: &str, not_ready: Option<&str>) {
        self.external_secrets.update(namespace, name, |counts| {
            counts.ready = Some(not_ready.is_none());
        });
        let key = (namespace.to_string(), name.to_string());
        let mut reasons = self.not_ready_reasons.lock().expect("never poisoned");
        let previous = match not_ready {
            Some(reason) => reasons.insert(key, reason.to_string()),
            None => reasons.remove(&key),
        };
        if let Some(previous) = previous.filter(|previous| Some(previous.as_str()) != not_ready) {
            let _ = self
                .es_not_ready
                .remove_label_values(&[name, namespace, &previous]);
        }
        if let Some(reason) = not_ready {
            self.es_not_ready
                .with_label_values(&[name, namespace, reason])
                .set(1);
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
        let key = (namespace.to_string(), name.to_string());
        self.external_secrets
            .by_object
            .lock()
            .expect("never poisoned")
            .remove(&key);
        if let Some(reason) = self
            .not_ready_reasons
            .lock()
            .expect("never poisoned")
            .remove(&key)
        {
            let _ = self
                .es_not_ready
                .remove_label_values(&[name, namespace, &reason]);
        }
    }

    /// The (namespace, name) of every ExternalSecret that has series, to drop those of ExternalSecrets that
    /// are gone.
    pub fn external_secrets_with_series(&self) -> Vec<(String, String)> {
        let mut seen: Vec<(String, String)> = self
            .external_secrets
            .by_object
            .lock()
            .expect("never poisoned")
            .keys()
            .chain(
                self.not_ready_reasons
                    .lock()
                    .expect("never poisoned")
                    .keys(),
            )
            .cloned()
            .collect();
        seen.sort();
        seen.dedup();
        seen
    }

    pub fn forget_store(&self, namespace: Option<&str>, name: &str) {
        for status in ["True", "False"] {
            let (gauge, labels) = self.store_series(namespace, name, status);
            let _ = gauge.remove_label_values(&labels);
        }
        let store = serving_key(namespace, name);
        if let Some(region) = self
            .serving_regions
            .lock()
            .expect("never poisoned")
            .remove(&store)
        {
            let _ = self
                .serving_region
                .remove_label_values(&[&store.0, &store.1, &store.2, &region]);
        }
    }

    /// The region that serves a store with failover regions: one series per store, labelled with it.
    pub fn store_serving_region(&self, namespace: Option<&str>, name: &str, region: &str) {
        let store = serving_key(namespace, name);
        let labels = [store.0.as_str(), &store.1, &store.2];
        let mut serving = self.serving_regions.lock().expect("never poisoned");
        if let Some(old) = serving.insert(store.clone(), region.to_string())
            && old != region
        {
            let _ = self
                .serving_region
                .remove_label_values(&[labels[0], labels[1], labels[2], &old]);
        }
        self.serving_region
            .with_label_values(&[labels[0], labels[1], labels[2], region])
            .set(1);
    }

    /// `error`: the error code of a failed call, `None` when it succeeded.
    pub fn provider_call(&self, provider: &str, call: &str, error: Option<&str>) {
        let status = if error.is_some() { "error" } else { "success" };
        self.provider_calls
            .with_label_values(&[provider, call, status])
            .inc();
        if let Some(code) = error {
            self.provider_error(provider, call, code);
        }
    }

    /// An error inside a successful call: one secret of a batched read.
    pub fn provider_error(&self, provider: &str, call: &str, code: &str) {
        self.provider_errors
            .with_label_values(&[provider, call, code])
            .inc();
    }

    /// Counts a reconcile as running until the returned guard is dropped.
    pub fn reconcile_started(&self, controller: &str) -> InFlight {
        let gauge = self.reconciles_in_flight.with_label_values(&[controller]);
        gauge.inc();
        InFlight(gauge)
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

    pub fn leading(&self, leading: bool) {
        self.leader.set(leading.into());
    }

    pub fn kept_values(&self, bytes: usize, evicted: u64) {
        self.kept_value_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        self.kept_values_evicted.inc_by(evicted);
    }

    /// The text exposition in pieces, for a response to send as they come: the per-ExternalSecret series
    /// are most of it (three lines per ExternalSecret, some 30 MB at 100,000), and held whole by each
    /// scrape under way they set the operator's peak memory.
    pub fn encode_pieces(&self) -> impl Iterator<Item = String> + Send + 'static {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding of gathered metrics");
        let head = String::from_utf8(buffer).expect("the text format is UTF-8");
        std::iter::once(head).chain(self.external_secrets.pieces())
    }

    pub fn encode(&self) -> String {
        self.encode_pieces().collect()
    }
}

/// External Secrets Operator's per-ExternalSecret series (`externalsecret_sync_calls_total`,
/// `externalsecret_sync_calls_error`, `externalsecret_status_condition`), kept as three numbers per
/// ExternalSecret and written as text only when scraped. The prometheus crate's vectors keep each series'
/// label names and values several times over (1.5 KiB per ExternalSecret, the largest item on the heap at
/// 5,000), and building its `MetricFamily` values for a scrape took 14 MB at 10,000.
#[derive(Clone, Default)]
struct ExternalSecretSeries {
    /// By (namespace, name), in order, so that a scrape can write them a piece at a time.
    by_object: Arc<Mutex<BTreeMap<(String, String), ExternalSecretCounts>>>,
}

/// ExternalSecrets written per piece of a scrape, each piece under the lock once: about 100 KB.
const PIECE: usize = 1000;

#[derive(Default)]
struct ExternalSecretCounts {
    syncs: u64,
    errors: u64,
    /// The Ready condition's status, once known.
    ready: Option<bool>,
}

impl ExternalSecretSeries {
    fn update(&self, namespace: &str, name: &str, change: impl FnOnce(&mut ExternalSecretCounts)) {
        let mut by_object = self.by_object.lock().expect("never poisoned");
        change(
            by_object
                .entry((namespace.to_string(), name.to_string()))
                .or_default(),
        );
    }

    /// The three families in Prometheus' text format, `PIECE` ExternalSecrets at a time. Object names need
    /// no escaping: Kubernetes allows neither quotes, backslashes nor line breaks in them.
    fn pieces(&self) -> impl Iterator<Item = String> + Send + 'static {
        let series = self.clone();
        let mut family = 0;
        let mut after: Option<(String, String)> = None;
        std::iter::from_fn(move || {
            while let Some(&(name, help, type_, line)) = FAMILIES.get(family) {
                let by_object = series.by_object.lock().expect("never poisoned");
                let mut out = String::new();
                if after.is_none() {
                    if !by_object.values().any(|counts| line(counts).is_some()) {
                        family += 1;
                        continue;
                    }
                    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {type_}");
                }
                let start = match &after {
                    Some(last) => Bound::Excluded(last),
                    None => Bound::Unbounded,
                };
                let mut visited = 0;
                let mut last = None;
                for ((namespace, object), counts) in
                    by_object.range::<(String, String), _>((start, Bound::Unbounded))
                {
                    if visited == PIECE {
                        break;
                    }
                    visited += 1;
                    last = Some((namespace, object));
                    if let Some(line) = line(counts) {
                        line.write(&mut out, name, namespace, object);
                    }
                }
                after = match last {
                    Some((namespace, object)) if visited == PIECE => {
                        Some((namespace.clone(), object.clone()))
                    }
                    _ => {
                        family += 1;
                        None
                    }
                };
                if !out.is_empty() {
                    return Some(out);
                }
            }
            None
        })
    }
}

/// What one ExternalSecret shows in a family, if anything.
enum Line {
    Count(u64),
    Ready(bool),
}

impl Line {
    fn write(&self, out: &mut String, family: &str, namespace: &str, name: &str) {
        match self {
            Line::Count(count) => {
                let _ = writeln!(
                    out,
                    "{family}{{name=\"{name}\",namespace=\"{namespace}\"}} {count}"
                );
            }
            Line::Ready(ready) => {
                for (status, value) in [("False", !ready), ("True", *ready)] {
                    let _ = writeln!(
                        out,
                        "{family}{{condition=\"Ready\",name=\"{name}\",namespace=\"{namespace}\",status=\"{status}\"}} {}",
                        u8::from(value)
                    );
                }
            }
        }
    }
}

type Family = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ExternalSecretCounts) -> Option<Line>,
);

const FAMILIES: [Family; 3] = [
    (
        "externalsecret_sync_calls_total",
        "Total ExternalSecret syncs",
        "counter",
        |counts| (counts.syncs > 0).then_some(Line::Count(counts.syncs)),
    ),
    (
        "externalsecret_sync_calls_error",
        "ExternalSecret syncs that failed",
        "counter",
        |counts| (counts.errors > 0).then_some(Line::Count(counts.errors)),
    ),
    (
        "externalsecret_status_condition",
        "ExternalSecret condition status (1 for the current status)",
        "gauge",
        |counts| counts.ready.map(Line::Ready),
    ),
];

/// The verb and resource of an API server request, from its method and path: `/api/v1/namespaces/ns/secrets/x`
/// is a `get` of `secrets`, `.../externalsecrets/x/status` a `patch` of `externalsecrets/status`.
fn kube_request_kind(method: &http::Method, uri: &http::Uri) -> (&'static str, String) {
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let rest = match segments.first() {
        Some(&"api") => segments.get(2..),
        Some(&"apis") => segments.get(3..),
        _ => None,
    };
    let rest = match rest {
        Some(rest) if rest.len() >= 3 && rest[0] == "namespaces" => &rest[2..],
        Some(rest) if !rest.is_empty() => rest,
        _ => return (method_verb(method, false), "discovery".to_string()),
    };
    let resource = match rest.get(2) {
        Some(subresource) => format!("{}/{subresource}", rest[0]),
        None => rest[0].to_string(),
    };
    let named = rest.len() > 1;
    let watch = uri.query().is_some_and(|query| {
        query
            .split('&')
            .any(|pair| pair == "watch=true" || pair == "watch=1")
    });
    let verb = if watch {
        "watch"
    } else {
        method_verb(method, named)
    };
    (verb, resource)
}

fn method_verb(method: &http::Method, named: bool) -> &'static str {
    match *method {
        http::Method::GET if named => "get",
        http::Method::GET => "list",
        http::Method::POST => "create",
        http::Method::PUT => "update",
        http::Method::PATCH => "patch",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn not_ready_lines(metrics: &Metrics) -> Vec<String> {
        metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with("secretsync_externalsecret_not_ready{"))
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn a_not_ready_external_secret_has_one_series_with_its_current_reason() {
        let metrics = Metrics::default();
        metrics.external_secret_ready("team", "db", Some("AccessDenied"));
        metrics.external_secret_ready("team", "db", Some("RemoteKeyNotFound"));
        let lines = not_ready_lines(&metrics);
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(
            lines[0].contains(r#"reason="RemoteKeyNotFound""#),
            "{lines:?}"
        );

        metrics.external_secret_ready("team", "db", None);
        assert!(not_ready_lines(&metrics).is_empty());

        metrics.external_secret_ready("team", "db", Some("AccessDenied"));
        metrics.forget_external_secret("team", "db");
        assert!(not_ready_lines(&metrics).is_empty());
    }

    #[test]
    fn external_secret_series_follow_syncs_and_go_with_the_object() {
        let metrics = Metrics::default();
        metrics.sync("team", "db", true);
        metrics.sync("team", "db", false);
        metrics.external_secret_ready("team", "db", Some("AccessDenied"));
        let text = metrics.encode();
        for line in [
            r#"externalsecret_sync_calls_total{name="db",namespace="team"} 2"#,
            r#"externalsecret_sync_calls_error{name="db",namespace="team"} 1"#,
            r#"externalsecret_status_condition{condition="Ready",name="db",namespace="team",status="False"} 1"#,
            r#"externalsecret_status_condition{condition="Ready",name="db",namespace="team",status="True"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
        assert_eq!(
            metrics.external_secrets_with_series(),
            vec![("team".to_string(), "db".to_string())]
        );
        metrics.forget_external_secret("team", "db");
        assert!(!metrics.encode().contains(r#"name="db""#));
        assert!(metrics.external_secrets_with_series().is_empty());
    }

    #[test]
    fn a_scrape_writes_each_family_whole_a_piece_at_a_time() {
        let metrics = Metrics::default();
        let count = 2 * PIECE + 500;
        for i in 0..count {
            let name = format!("es-{i}");
            metrics.sync("team", &name, i % 3 != 0);
            metrics.external_secret_ready("team", &name, None);
        }
        let pieces: Vec<String> = metrics.external_secrets.pieces().collect();
        assert!(pieces.len() > 3, "{} pieces", pieces.len());
        let text = metrics.encode();
        let mut families: Vec<&str> = Vec::new();
        for line in text.lines().filter(|line| {
            line.starts_with("externalsecret_sync_calls")
                || line.starts_with("externalsecret_status_condition")
        }) {
            let family = &line[..line.find('{').unwrap()];
            if families.last() != Some(&family) {
                assert!(!families.contains(&family), "{family} is split");
                families.push(family);
            }
        }
        let lines = |prefix: &str| text.lines().filter(|line| line.starts_with(prefix)).count();
        assert_eq!(lines("externalsecret_sync_calls_total{"), count);
        assert_eq!(lines("externalsecret_sync_calls_error{"), count.div_ceil(3));
        assert_eq!(lines("externalsecret_status_condition{"), 2 * count);
        assert_eq!(lines("# TYPE externalsecret_sync_calls_total "), 1);
    }

    #[test]
    fn failed_calls_count_by_error_code() {
        let metrics = Metrics::default();
        metrics.provider_call("AWS/SecretsManager", "GetSecretValue", None);
        metrics.provider_call(
            "AWS/SecretsManager",
            "GetSecretValue",
            Some("ThrottlingException"),
        );
        let text = metrics.encode();
        assert!(text.contains(
            r#"secretsync_provider_api_errors_total{call="GetSecretValue",code="ThrottlingException",provider="AWS/SecretsManager"} 1"#
        ), "{text}");
        assert!(text.contains(
            r#"externalsecret_provider_api_calls_count{call="GetSecretValue",provider="AWS/SecretsManager",status="error"} 1"#
        ), "{text}");
    }

    #[test]
    fn kube_requests_are_named_by_verb_and_resource() {
        let kind = |method: http::Method, uri: &str| {
            let (verb, resource) = kube_request_kind(&method, &uri.parse().unwrap());
            format!("{verb} {resource}")
        };
        assert_eq!(
            kind(http::Method::GET, "/api/v1/namespaces/a/secrets/s"),
            "get secrets"
        );
        assert_eq!(
            kind(
                http::Method::GET,
                "/api/v1/namespaces/a/secrets?labelSelector=x"
            ),
            "list secrets"
        );
        assert_eq!(
            kind(
                http::Method::GET,
                "/apis/secretsync.io/v1alpha1/externalsecrets?watch=true&resourceVersion=1"
            ),
            "watch externalsecrets"
        );
        assert_eq!(
            kind(
                http::Method::PATCH,
                "/apis/secretsync.io/v1alpha1/namespaces/a/externalsecrets/e/status"
            ),
            "patch externalsecrets/status"
        );
        assert_eq!(
            kind(http::Method::GET, "/api/v1/namespaces/a"),
            "get namespaces"
        );
        assert_eq!(
            kind(http::Method::GET, "/api/v1/namespaces"),
            "list namespaces"
        );
        assert_eq!(
            kind(
                http::Method::PUT,
                "/apis/coordination.k8s.io/v1/namespaces/a/leases/l"
            ),
            "update leases"
        );
        assert_eq!(kind(http::Method::GET, "/apis"), "list discovery");
    }
}
