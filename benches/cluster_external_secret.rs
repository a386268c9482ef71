//! `make bench`, ClusterExternalSecret: numbers, not assertions. On the local stack, with the release operator
//! out of cluster watching every namespace: one ClusterExternalSecret selecting N namespaces by label
//! (`BENCH_NAMESPACES`, default 500), all reading one remote secret.
//!
//! Prints the time to a Secret in every namespace, the AWS value reads and API server requests that took,
//! the requests of a quiet refresh, the time to provision one more namespace labelled, and what the first
//! refresh after a restart costs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{ExtraNamespaces, Operator, TestContext, recorded_calls_since, recording_mark};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use secretsync::api::{ClusterExternalSecret, ClusterSecretStore};
use serde_json::json;

const REFRESH: Duration = Duration::from_secs(15);
const SELECTOR: &str = "secretsync.io/bench-ces";

async fn label(client: &kube::Client, namespaces: &[String], value: &str) {
    let patch = json!({"metadata": {"labels": {SELECTOR: value}}});
    stream::iter(namespaces)
        .for_each_concurrent(16, |name| {
            let patch = &patch;
            async move {
                Api::<Namespace>::all(client.clone())
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                    .expect("label namespace");
            }
        })
        .await;
}

/// How many of the ClusterExternalSecret's Secrets exist, in all namespaces.
async fn secrets_written(client: &kube::Client, name: &str) -> usize {
    Api::<Secret>::all(client.clone())
        .list_metadata(
            &ListParams::default()
                .fields(&format!("metadata.name={name}"))
                .labels("secretsync.io/managed=true"),
        )
        .await
        .expect("list Secrets")
        .items
        .len()
}

async fn wait_for_secrets(client: &kube::Client, name: &str, count: usize) -> Duration {
    let started = Instant::now();
    while secrets_written(client, name).await < count {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{count} Secrets not written in 15 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

/// The operator's finished ClusterExternalSecret reconciles.
async fn reconciles(operator: &Operator) -> f64 {
    operator
        .metric(
            r#"secretsync_reconcile_duration_seconds_count{controller="clusterexternalsecret"}"#,
        )
        .await
        .unwrap_or_default()
}

/// API server requests made between two snapshots, by "verb resource", as "total (kind count, ...)".
fn requests_between(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    let diff: Vec<(String, f64)> = after
        .iter()
        .map(|(kind, count)| {
            (
                kind.clone(),
                count - before.get(kind).copied().unwrap_or(0.0),
            )
        })
        .filter(|(_, count)| *count > 0.0)
        .collect();
    let total: f64 = diff.iter().map(|(_, count)| count).sum();
    let kinds: Vec<String> = diff
        .iter()
        .map(|(kind, count)| format!("{kind} {count}"))
        .collect();
    format!("{total} ({})", kinds.join(", "))
}

async fn api_requests(operator: &Operator) -> BTreeMap<String, f64> {
    operator.api_requests().await.into_iter().collect()
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let t = TestContext::new("bench-ces").await;
    let client = t.client.clone();
    let name = t.namespace.clone();
    println!(
        "secretsync bench: one ClusterExternalSecret over {n} namespaces, refreshTime {}s",
        REFRESH.as_secs()
    );
    let key = t.create_remote("shared", "v1").await;
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ClusterSecretStore\nmetadata: {{name: {name}}}\n\
         spec: {{provider: {{aws: {{service: SecretsManager, region: us-east-1}}}}}}"
    ))
    .await;
    let names: Vec<String> = (0..=n).map(|i| format!("{name}-{i:05}")).collect();
    let _namespaces = ExtraNamespaces::create(&client, &names).await;
    let (selected, extra) = names.split_at(n);
    label(&client, selected, &name).await;

    let mut operator = Operator::start_cluster_wide(&t.namespace);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mark = recording_mark();
    let before = api_requests(&operator).await;
    let ces = json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "ClusterExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "externalSecretName": "shared",
            "namespaceSelectors": [{"matchLabels": {SELECTOR: name}}],
            "refreshTime": format!("{}s", REFRESH.as_secs()),
            "externalSecretSpec": {
                "secretStoreRef": {"name": name, "kind": "ClusterSecretStore"},
                "refreshInterval": "1h",
                "data": [{"secretKey": "value", "remoteRef": {"key": key}}],
            },
        },
    });
    t.apply_yaml(&ces.to_string()).await;
    let first = wait_for_secrets(&client, "shared", n).await;
    let reads = recorded_calls_since(mark)
        .0
        .iter()
        .filter(|call| call.reads(&key))
        .count();
    let provisioning = requests_between(&before, &api_requests(&operator).await);
    println!(
        "applied to a Secret in all {n} namespaces: {:.1} s",
        first.as_secs_f64()
    );
    println!("  AWS value reads: {reads}");
    println!("  API server requests (operator, both controllers): {provisioning}");

    // Quiet refreshes: a few periods with nothing changed.
    tokio::time::sleep(REFRESH).await;
    let (quiet_before, reconciles_before) =
        (api_requests(&operator).await, reconciles(&operator).await);
    tokio::time::sleep(REFRESH * 4).await;
    let refreshes = reconciles(&operator).await - reconciles_before;
    println!(
        "{refreshes} quiet refreshes: API server requests {}",
        requests_between(&quiet_before, &api_requests(&operator).await)
    );

    let labelled = Instant::now();
    label(&client, extra, &name).await;
    wait_for_secrets(&client, "shared", n + 1).await;
    println!(
        "one more namespace labelled to its Secret: {:.2} s",
        labelled.elapsed().as_secs_f64()
    );

    // A restart forgets what it applied: its first refresh applies each ExternalSecret once.
    drop(operator);
    operator = Operator::start_cluster_wide(&t.namespace);
    let restarted = Instant::now();
    while reconciles(&operator).await < 1.0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "first ClusterExternalSecret reconcile after a restart: {:.1} s, API server requests {}",
        restarted.elapsed().as_secs_f64(),
        requests_between(&BTreeMap::new(), &api_requests(&operator).await)
    );

    drop(operator);
    Api::<ClusterExternalSecret>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the ClusterExternalSecret");
    Api::<ClusterSecretStore>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete the ClusterSecretStore");
}
