//! `make bench`: numbers, not assertions. On the local stack, with the release operator out of cluster:
//! N ExternalSecrets (`BENCH_N`, default 1,000) reading N/4 remote secrets, four readers each.
//!
//! Prints the API server's raw write rates (Secrets, ExternalSecret statuses) and moto's request ceiling,
//! measured in the same run so that the operator's figures can be read against what the stack can serve;
//! time to first full sync and the AWS calls and API server requests it took; AWS calls and API server
//! requests per quiet hour for each version check strategy; the latency of a new ExternalSecret, alone and
//! while every other one syncs again; rotation propagation p50/p99 (ListSecrets and Events); what a restart
//! in steady state costs; and the operator's peak and settled RSS.

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{
    Call, Operator, RecordingMark, TestContext, kubectl, recorded_calls, recorded_calls_since,
    recording_mark, requests_between, value_external_secret,
};
use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use serde_json::json;

/// Check interval used while measuring; calls per hour are scaled to each strategy's default interval.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
const QUIET_WINDOW: Duration = Duration::from_secs(20);
const ROTATIONS: usize = 20;

/// Values of every managed Secret, by name.
async fn synced(t: &TestContext) -> BTreeMap<String, String> {
    t.secrets()
        .list(&ListParams::default().labels("secretsync.io/managed=true"))
        .await
        .unwrap()
        .into_iter()
        .filter_map(|secret| {
            let name = secret.metadata.name?;
            let value = secret.data?.remove("value")?;
            Some((name, String::from_utf8(value.0).ok()?))
        })
        .collect()
}

/// Waits until the operator has finished no reconcile for `quiet`, so that a measurement starts from rest (a
/// store change re-syncs every ExternalSecret: minutes at 100,000). Values are read only by reconciles;
/// version checks go on all the time (DescribeSecret of thousands of secrets never pauses), so AWS calls
/// cannot tell. At most 15 min.
async fn settle(operator: &Operator, quiet: Duration) {
    let mut last = operator.reconciles().await;
    let mut since = Instant::now();
    let started = Instant::now();
    while since.elapsed() < quiet && started.elapsed() < Duration::from_secs(900) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = operator.reconciles().await;
        if now != last {
            last = now;
            since = Instant::now();
        }
    }
}

/// The API server's own limits for the two writes a first sync needs for each ExternalSecret, per second.
struct RawRates {
    secrets: f64,
    statuses: f64,
}

impl RawRates {
    async fn measure(t: &TestContext, n: usize) -> Self {
        RawRates {
            secrets: raw_write_rate(t, n.min(2000)).await,
            statuses: raw_status_rate(t, n.min(2000)).await,
        }
    }

    /// How long `n` Secrets and `n` statuses take at these rates, each kind written alone.
    fn seconds_for(&self, n: usize) -> f64 {
        n as f64 / self.secrets + n as f64 / self.statuses
    }
}

/// The API server's own limit for the writes a first sync needs: Secrets created by server-side apply from
/// 32 writers, per second. They are deleted afterwards.
async fn raw_write_rate(t: &TestContext, count: usize) -> f64 {
    let secrets = t.secrets();
    let names: Vec<String> = (0..count).map(|i| format!("raw-{i:06}")).collect();
    let rate = writes_per_second(&names, |name| {
        let secrets = secrets.clone();
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": name, "labels": {"bench-raw": "true"}},
            "data": {"value": "djAtMA=="},
        });
        async move {
            secrets
                .patch(name, &PatchParams::apply("bench"), &Patch::Apply(&secret))
                .await
                .expect("apply a Secret");
        }
    })
    .await;
    secrets
        .delete_collection(&DeleteParams::default(), &raw_objects())
        .await
        .expect("delete the raw Secrets");
    rate
}

/// The API server's own limit for the other write a first sync needs: ExternalSecret statuses written by
/// server-side apply from 32 writers, per second, as the operator writes them. A custom resource's status
/// costs the API server more than a Secret does (its schema, its JSON storage), so it is measured, not
/// assumed. The `count` ExternalSecrets it writes to are made for it, before the operator starts, and
/// deleted afterwards.
async fn raw_status_rate(t: &TestContext, count: usize) -> f64 {
    let names: Vec<String> = (0..count).map(|i| format!("raw-{i:06}")).collect();
    apply_external_secrets(
        t,
        names.iter().map(|name| {
            let mut manifest = bench_external_secret(name, &t.remote_key("raw"));
            manifest["metadata"]["labels"] = json!({"bench-raw": "true"});
            manifest
        }),
    );
    let external_secrets = t.external_secrets();
    let rate = writes_per_second(&names, |name| {
        let external_secrets = external_secrets.clone();
        let status = json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "status": {
                "binding": {"name": name},
                "conditions": [{
                    "type": "Ready", "status": "True", "reason": "SecretSynced",
                    "message": format!("Secret {name:?} is in sync"), "observedGeneration": 1,
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }],
                "propagatedDataHash": "0".repeat(64),
                "refreshTime": "2026-01-01T00:00:00Z",
                "syncedResourceVersion": "1-0000000000000000",
                "syncedVersions": {t.remote_key("raw"): "00000000-0000-0000-0000-000000000000"},
            },
        });
        async move {
            external_secrets
                .patch_status(
                    name,
                    &PatchParams::apply("bench").force(),
                    &Patch::Apply(&status),
                )
                .await
                .expect("apply an ExternalSecret status");
        }
    })
    .await;
    external_secrets
        .delete_collection(&DeleteParams::default(), &raw_objects())
        .await
        .expect("delete the raw ExternalSecrets");
    rate
}

/// The objects made only to measure the raw rates.
fn raw_objects() -> ListParams {
    ListParams::default().labels("bench-raw=true")
}

/// Runs `write` for every name, 32 at a time, and returns the writes per second.
async fn writes_per_second<'a, F, Fut>(names: &'a [String], write: F) -> f64
where
    F: Fn(&'a str) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let started = Instant::now();
    stream::iter(names)
        .map(|name| write(name))
        .buffer_unordered(32)
        .collect::<Vec<()>>()
        .await;
    names.len() as f64 / started.elapsed().as_secs_f64()
}

/// One of the bench's ExternalSecrets: `key`'s value as `value`, on the bench's store. It refreshes every
/// three hours, not every hour: a run at 100,000 lasts over an hour, and refreshes falling due during the
/// restart would be counted as the restart's. The hourly refresh's own cost is stated with the quiet hours.
fn bench_external_secret(name: &str, key: &str) -> serde_json::Value {
    let manifest = value_external_secret(name, "bench", "SecretStore", key, None);
    let mut manifest: serde_json::Value = serde_json::from_str(&manifest).expect("JSON manifest");
    manifest["spec"]["refreshInterval"] = json!("3h");
    manifest
}

/// Applies ExternalSecrets as Lists of 500, four Lists at a time: one request per object, one after the other,
/// took minutes at 10,000.
fn apply_external_secrets(t: &TestContext, manifests: impl Iterator<Item = serde_json::Value>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/tmp");
    std::fs::create_dir_all(&dir).expect("target/tmp");
    let manifests: Vec<serde_json::Value> = manifests.collect();
    let lists: Vec<&[serde_json::Value]> = manifests.chunks(500).collect();
    for (round, lists) in lists.chunks(4).enumerate() {
        std::thread::scope(|scope| {
            for (i, items) in lists.iter().enumerate() {
                let list_path = dir.join(format!("{}-{round}-{i}.json", t.namespace));
                scope.spawn(move || {
                    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
                    std::fs::write(&list_path, list.to_string()).expect("write the List");
                    kubectl(&[
                        "apply",
                        "--server-side",
                        "-n",
                        &t.namespace,
                        "-f",
                        &list_path.to_string_lossy(),
                    ]);
                    let _ = std::fs::remove_file(&list_path);
                });
            }
        });
    }
}

/// Applies one more ExternalSecret and times it until its Secret exists.
async fn new_external_secret(t: &TestContext, name: &str, key: &str) -> Duration {
    let started = Instant::now();
    t.apply_yaml(&value_external_secret(
        name,
        "bench",
        "SecretStore",
        key,
        None,
    ))
    .await;
    let secrets: kube::Api<Secret> = t.secrets();
    while secrets.get_opt(name).await.unwrap().is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "{name} was not synced in 15 min"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// API server requests by kind, summed, as "total (kind count, ...)".
fn describe_requests(requests: &BTreeMap<String, f64>, scale: f64) -> String {
    let total: f64 = requests.values().sum::<f64>() * scale;
    let kinds: Vec<String> = requests
        .iter()
        .map(|(kind, count)| format!("{kind} {:.0}", count * scale))
        .collect();
    if kinds.is_empty() {
        "0".to_string()
    } else {
        format!("{total:.0} ({})", kinds.join(", "))
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::var("BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let remotes = n.div_ceil(4);
    let t = TestContext::new("bench").await;
    println!(
        "secretsync bench: {n} ExternalSecrets, {remotes} remote secrets (4 readers each), namespace {}",
        t.namespace
    );

    let moto_ceiling = moto_ceiling(&t).await;
    let raw_when_empty = RawRates::measure(&t, n).await;

    let keys: Vec<String> = stream::iter(0..remotes)
        .map(|i| {
            let t = &t;
            async move {
                t.create_remote(&format!("s{i:05}"), &format!("v0-{i}"))
                    .await
            }
        })
        .buffered(16)
        .collect()
        .await;
    t.store_with_check(
        "bench",
        json!({"strategy": "ListSecrets", "interval": "5s"}),
    )
    .await;
    apply_external_secrets(
        &t,
        (0..n).map(|i| bench_external_secret(&format!("es{i:05}"), &keys[i % remotes])),
    );
    // Again with the ExternalSecrets stored, as the first sync finds the API server: at 100,000 its heap
    // and watch cache are many times larger than when empty.
    let raw_rates = RawRates::measure(&t, n).await;

    // Time to first full sync: operator start to every Secret written.
    let calls_before = recorded_calls().len();
    let started = Instant::now();
    let mut operator = t.start_operator();
    // Counted from a watch of their metadata: listing 10,000 Secrets several times a second would load the
    // API server the operator is measured against.
    let mut written_names = std::collections::HashSet::new();
    let watched = kube::runtime::watcher(
        kube::Api::<kube::api::PartialObjectMeta<Secret>>::namespaced(
            t.client.clone(),
            &t.namespace,
        ),
        kube::runtime::watcher::Config::default().labels("secretsync.io/managed=true"),
    )
    .default_backoff()
    .applied_objects();
    let mut watched = Box::pin(watched);
    while written_names.len() < n {
        let next = tokio::time::timeout(Duration::from_secs(3600), watched.next())
            .await
            .expect("first sync did not finish in an hour");
        if let Some(Ok(secret)) = next {
            written_names.insert(secret.metadata.name.unwrap_or_default());
        }
    }
    let first_sync = started.elapsed();
    // An open watch nobody reads from only loads the API server.
    drop(watched);
    let written = synced(&t).await;
    assert_eq!(
        (0..n)
            .filter(|i| written.get(&format!("es{i:05}")) == Some(&format!("v0-{}", i % remotes)))
            .count(),
        n,
        "every Secret holds its value"
    );
    let first_sync_requests = requests_between(&Default::default(), &operator.api_requests().await);
    let first_sync_calls: Vec<Call> = recorded_calls().into_iter().skip(calls_before).collect();
    let (first_sync_reads, first_sync_values) = value_reads(&first_sync_calls);
    // Printed now as well: the rest of the run takes many minutes at 100,000.
    let first_sync_line = format!(
        "time to first full sync:    {:.1} s ({:.0} ExternalSecrets/s); its {} writes ({n} Secrets, {n} statuses) take {:.1} s at the raw rates with the ExternalSecrets stored: {:.0}% of them ({:.1} s and {:.0}% at the rates of the empty API server); operator CPU {:.1} s; peak RSS so far {:.1} MiB",
        first_sync.as_secs_f64(),
        n as f64 / first_sync.as_secs_f64(),
        2 * n,
        raw_rates.seconds_for(n),
        100.0 * raw_rates.seconds_for(n) / first_sync.as_secs_f64(),
        raw_when_empty.seconds_for(n),
        100.0 * raw_when_empty.seconds_for(n) / first_sync.as_secs_f64(),
        operator.cpu_seconds(),
        operator.rss_kib().1 as f64 / 1024.0
    );
    println!("{first_sync_line}");
    println!(
        "  its value calls: {first_sync_reads} (R/20 = {:.1}) reading {first_sync_values} values; API server requests: {}",
        remotes as f64 / 20.0,
        describe_requests(&first_sync_requests, 1.0)
    );
    settle(&operator, Duration::from_secs(3)).await;
    let new_alone = new_external_secret(&t, "new-alone", &keys[0]).await;
    settle(&operator, Duration::from_secs(3)).await;

    // Quiet hours: what each strategy costs with nothing changing, counted over a window and scaled.
    let (sqs, queue_url) = t.create_queue().await;
    let strategies = [
        (
            "ListSecrets",
            json!({"strategy": "ListSecrets", "interval": "5s"}),
            60.0,
        ),
        (
            "DescribeSecret",
            json!({"strategy": "DescribeSecret", "interval": "5s"}),
            60.0,
        ),
        (
            "Events",
            json!({"strategy": "Events", "interval": "5s", "events": {"queueURL": queue_url}}),
            600.0,
        ),
        ("None", json!({"strategy": "None"}), 60.0),
    ];
    let mut quiet_rows = Vec::new();
    let mut new_during_resync = None;
    for (name, check, default_interval) in &strategies {
        t.store_with_check("bench", check.clone()).await;
        // A store change re-syncs every ExternalSecret that uses it: a new one meanwhile waits its turn.
        if new_during_resync.is_none() && *name != "ListSecrets" {
            new_during_resync = Some(new_external_secret(&t, "new-busy", &keys[1]).await);
        }
        settle(&operator, Duration::from_secs(4)).await;
        let start = recording_mark();
        let requests_before = operator.api_requests().await;
        let cpu_before = operator.cpu_seconds();
        let window_start = Instant::now();
        tokio::time::sleep(QUIET_WINDOW).await;
        let (mut window, mut mark) = recorded_calls_since(start);
        // A DescribeSecret pass over thousands of secrets outlasts the window: it is widened until every
        // secret was described, so that a check's calls are counted whole. At most 5 min.
        while *name == "DescribeSecret"
            && described(&window) < remotes
            && window_start.elapsed() < Duration::from_secs(300)
        {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (more, next) = recorded_calls_since(mark);
            window.extend(more);
            mark = next;
        }
        let window_secs = window_start.elapsed().as_secs_f64();
        let cpu_per_hour = (operator.cpu_seconds() - cpu_before) * 3600.0 / window_secs;
        let requests = requests_between(&requests_before, &operator.api_requests().await);
        let count = |action: &str| window.iter().filter(|c| c.action == action).count() as f64;
        let per_check = match *name {
            "DescribeSecret" => described(&window) as f64,
            _ => calls_per_list_pass(&window),
        };
        let receives_per_hour = count("ReceiveMessage") * 3600.0 / window_secs;
        let value_reads = count("GetSecretValue") + count("BatchGetSecretValue");
        let checks_per_hour = per_check * 3600.0 / default_interval;
        quiet_rows.push((
            *name,
            per_check,
            checks_per_hour,
            receives_per_hour,
            (value_reads, window_secs),
            cpu_per_hour,
            describe_requests(&requests, 3600.0 / window_secs),
        ));
    }
    t.store_with_check(
        "bench",
        json!({"strategy": "ListSecrets", "interval": "5s"}),
    )
    .await;
    settle(&operator, Duration::from_secs(4)).await;

    // Propagation: a PutSecretValue until all four readers' Secrets hold the new value.
    let list_secrets = propagation(&t, &keys, remotes, "p", None).await;
    t.store_with_check(
        "bench",
        json!({"strategy": "Events", "interval": "10m", "events": {"queueURL": queue_url}}),
    )
    .await;
    settle(&operator, Duration::from_secs(4)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events = propagation(&t, &keys, remotes, "e", Some((&sqs, &queue_url))).await;
    let (rss, peak_rss) = operator.rss_kib();

    // A restart in steady state, with the default check (ListSecrets every minute): SIGTERM, start again,
    // and count until every ExternalSecret was looked at and the first check since the start has finished.
    // With the 5 s checks above, a restart taking a minute would count a dozen checks that run anyway.
    t.store_with_check("bench", json!({"strategy": "ListSecrets"}))
        .await;
    settle(&operator, Duration::from_secs(4)).await;
    let (code, _) = operator.terminate();
    assert_eq!(code, Some(0), "the operator stops cleanly");
    let before_restart = recording_mark();
    let restarted = Instant::now();
    let operator = t.start_operator();
    while operator.reconciles().await < (n + 2) as f64 {
        assert!(
            restarted.elapsed() < Duration::from_secs(900),
            "the restarted operator did not look at every ExternalSecret in 15 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let looked_at = restarted.elapsed();
    let restart_calls = after_first_check(before_restart).await;
    let (restart_reads, restart_values) = value_reads(&restart_calls);
    let restart_requests = requests_between(&Default::default(), &operator.api_requests().await);

    println!();
    println!(
        "API server raw write rates (server-side apply, 32 writers): {:.0} Secrets/s, {:.0} ExternalSecret statuses/s with the {n} ExternalSecrets stored; {:.0}/s, {:.0}/s when empty",
        raw_rates.secrets, raw_rates.statuses, raw_when_empty.secrets, raw_when_empty.statuses
    );
    println!("moto ceiling (this run):    {moto_ceiling:.0} DescribeSecret/s with 16 clients");
    println!();
    println!("{first_sync_line}");
    println!(
        "AWS calls for it:           {} value calls (R/20 = {:.1}) reading {first_sync_values} secret values, {} calls in all",
        first_sync_reads,
        remotes as f64 / 20.0,
        first_sync_calls.len()
    );
    println!(
        "API server requests for it: {}",
        describe_requests(&first_sync_requests, 1.0)
    );
    println!(
        "new ExternalSecret synced:  {:.2} s alone, {:.2} s while all {n} sync again after a store change",
        new_alone.as_secs_f64(),
        new_during_resync.unwrap_or_default().as_secs_f64()
    );
    println!(
        "operator RSS:               peak {:.1} MiB, at the end {:.1} MiB",
        peak_rss as f64 / 1024.0,
        rss as f64 / 1024.0
    );
    println!();
    println!(
        "quiet hour, {remotes} remote secrets, default check interval (1m; Events: 10m full check):"
    );
    println!(
        "  strategy        calls/check  check calls/h  SQS receives/h  value reads (window)  CPU s/h (5s checks)  API server requests/h (not watches, lease)"
    );
    for (name, per_check, per_hour, receives, (reads, window), cpu, requests) in &quiet_rows {
        println!(
            "  {name:<15} {per_check:>11.1} {per_hour:>14.0} {receives:>15.0} {:>20} {cpu:>20.1}  {requests}",
            format!("{reads:.0} ({window:.0} s)")
        );
    }
    println!(
        "  (every strategy adds the hourly full refresh of each of the {n} ExternalSecrets, spread over the last tenth of the hour, reads at the same time sharing calls, with no API server request when nothing changed; External Secrets Operator: {n} GetSecretValue/h and no checks)"
    );
    println!();
    for (name, mut samples) in [
        ("ListSecrets every 5s", list_secrets),
        ("Events (SQS)", events),
    ] {
        samples.sort();
        println!(
            "rotation propagation, {name}: p50 {:.2} s, p99 {:.2} s, max {:.2} s over {} rotations",
            percentile(&samples, 0.5).as_secs_f64(),
            percentile(&samples, 0.99).as_secs_f64(),
            samples.last().unwrap().as_secs_f64(),
            samples.len()
        );
    }
    println!();
    println!(
        "restart in steady state (ListSecrets every 1m): every ExternalSecret looked at in {:.1} s; {} AWS calls until the first check since the start finished (N/50 = {:.0}), of which {} ListSecrets in {} passes; {restart_reads} value calls reading {restart_values} values; API server requests: {}",
        looked_at.as_secs_f64(),
        restart_calls.len(),
        n as f64 / 50.0,
        restart_calls
            .iter()
            .filter(|call| call.action == "ListSecrets")
            .count(),
        list_passes(&restart_calls),
        describe_requests(&restart_requests, 1.0)
    );
    drop(operator);
}

/// The calls after `mark`, once a ListSecrets pass has started and no call has come for 5 s: the pages of
/// one pass follow each other closely, and the next pass is a minute away. At most 5 min.
async fn after_first_check(mark: RecordingMark) -> Vec<Call> {
    let started = Instant::now();
    let (mut calls, mut mark) = recorded_calls_since(mark);
    let mut since = Instant::now();
    while started.elapsed() < Duration::from_secs(300)
        && (list_passes(&calls) == 0 || since.elapsed() < Duration::from_secs(5))
    {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (more, next) = recorded_calls_since(mark);
        if !more.is_empty() {
            calls.extend(more);
            since = Instant::now();
        }
        mark = next;
    }
    calls
}

/// The ListSecrets calls of one pass: those from the first pass begun among `calls` up to the last, per pass
/// between them (the window's ends cut passes short).
fn calls_per_list_pass(calls: &[Call]) -> f64 {
    let lists: Vec<&Call> = calls.iter().filter(|c| c.action == "ListSecrets").collect();
    let starts: Vec<usize> = (0..lists.len()).filter(|&i| first_page(lists[i])).collect();
    match starts[..] {
        [] => 0.0,
        [_] => lists.len() as f64,
        [first, .., last] => (last - first) as f64 / (starts.len() - 1) as f64,
    }
}

/// How many distinct secrets `calls` described.
fn described(calls: &[Call]) -> usize {
    calls
        .iter()
        .filter(|c| c.action == "DescribeSecret")
        .flat_map(|c| &c.secret_ids)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// ListSecrets passes begun among `calls`.
fn list_passes(calls: &[Call]) -> usize {
    calls.iter().filter(|call| first_page(call)).count()
}

/// A ListSecrets pass's first page is asked for without a NextToken.
fn first_page(call: &Call) -> bool {
    call.action == "ListSecrets" && call.body.get("NextToken").is_none()
}

/// Value calls among `calls`, and how many secret values they read.
fn value_reads(calls: &[Call]) -> (usize, usize) {
    let reads: Vec<&Call> = calls
        .iter()
        .filter(|call| {
            matches!(
                call.action.as_str(),
                "GetSecretValue" | "BatchGetSecretValue"
            )
        })
        .collect();
    let values = reads.iter().map(|call| call.secret_ids.len()).sum();
    (reads.len(), values)
}

/// Rotates `ROTATIONS` secrets one after the other and measures each until its readers are rewritten.
async fn propagation(
    t: &TestContext,
    keys: &[String],
    remotes: usize,
    tag: &str,
    queue: Option<(&aws_sdk_sqs::Client, &str)>,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(ROTATIONS);
    for r in 0..ROTATIONS {
        let index = (r * 37) % remotes;
        let key = &keys[index];
        let value = format!("{tag}{r}-{index}");
        let readers: Vec<String> = (0..4)
            .map(|k| index + k * remotes)
            .map(|i| format!("es{i:05}"))
            .collect();
        if queue.is_none() {
            // Rotations land anywhere in the check interval, not just after a check.
            let jitter = rand::random::<f64>() * CHECK_INTERVAL.as_secs_f64();
            tokio::time::sleep(Duration::from_secs_f64(jitter)).await;
        }
        t.put_remote(key, &value).await;
        let started = Instant::now();
        if let Some((sqs, url)) = queue {
            let event = json!({
                "source": "aws.secretsmanager", "detail-type": "Secret Label Updated",
                "time": k8s_openapi::jiff::Timestamp::now().to_string(),
                "resources": [], "detail": {"secretId": key},
            });
            sqs.send_message()
                .queue_url(url)
                .message_body(event.to_string())
                .send()
                .await
                .unwrap();
        }
        loop {
            let mut done = true;
            for reader in &readers {
                if t.secret_data(reader)
                    .await
                    .and_then(|d| d.get("value").cloned())
                    != Some(value.clone())
                {
                    done = false;
                    break;
                }
            }
            if done {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "rotation {r} did not propagate"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        samples.push(started.elapsed());
    }
    samples
}

/// moto's own limit: DescribeSecret requests per second from 16 concurrent clients for 5 s.
async fn moto_ceiling(t: &TestContext) -> f64 {
    let key = t.create_remote("ceiling", "x").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let started = Instant::now();
    let done: usize = stream::iter(0..16)
        .map(|_| {
            let client = t.secrets_manager.clone();
            let key = key.clone();
            async move {
                let mut count = 0;
                while Instant::now() < deadline {
                    client
                        .describe_secret()
                        .secret_id(&key)
                        .send()
                        .await
                        .unwrap();
                    count += 1;
                }
                count
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<usize>>()
        .await
        .into_iter()
        .sum();
    done as f64 / started.elapsed().as_secs_f64()
}
