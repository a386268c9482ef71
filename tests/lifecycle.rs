//! The process as a Deployment runs it: leader election between replicas, and a graceful stop on SIGTERM.

mod common;

use common::{Operator, TIMEOUT, TestContext, wait_for};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;

const LEASE: &str = "secretsync-leader";

async fn holder(t: &TestContext) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
    leases
        .get_opt(LEASE)
        .await
        .expect("read the lease")
        .and_then(|lease| lease.spec?.holder_identity)
}

async fn wait_for_holder(t: &TestContext, expected: &str) {
    wait_for(
        &format!("{expected} to hold the lease"),
        TIMEOUT,
        || async {
            let holder = holder(t).await;
            (holder.as_deref() == Some(expected))
                .then_some(())
                .ok_or(holder)
        },
    )
    .await;
}

/// The value of an unlabelled metric in an operator's /metrics.
async fn metric(operator: &Operator, name: &str) -> Option<f64> {
    let (_, body) = operator.http_get("/metrics").await.ok()?;
    body.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
}

fn replica(pod: &'static str) -> [(&'static str, &'static str); 2] {
    [("SECRETSYNC_LEADER_ELECT", "true"), ("POD_NAME", pod)]
}

#[tokio::test]
async fn one_replica_leads_and_a_standby_takes_over_when_it_stops() {
    let t = TestContext::new("leader").await;
    t.default_store("aws").await;
    let key = t.create_remote("db", "v1").await;
    let mut first = Operator::start(&t.namespace, &replica("replica-a"));
    wait_for_holder(&t, "replica-a").await;
    let mut second = Operator::start(&t.namespace, &replica("replica-b"));
    t.sync_value("before", "aws", &key, "v1").await;

    // The standby is ready (a rollout goes on) and runs no controller.
    wait_for("the standby to be ready", TIMEOUT, || async {
        match second.http_get("/readyz").await {
            Ok((200, _)) => Ok(()),
            other => Err(other),
        }
    })
    .await;
    assert_eq!(metric(&first, "secretsync_leader").await, Some(1.0));
    assert_eq!(metric(&second, "secretsync_leader").await, Some(0.0));
    assert_eq!(holder(&t).await.as_deref(), Some("replica-a"));
    assert!(
        !second.log().contains("secretsync started"),
        "{}",
        second.log()
    );

    // SIGTERM: in-flight syncs finish, the lease is given up, the process exits 0.
    let (code, seconds) = first.terminate();
    assert_eq!(code, Some(0), "{}", first.log());
    println!("leader stopped {seconds:.2} s after SIGTERM");
    assert!(
        first.log().contains("leader lease released"),
        "{}",
        first.log()
    );
    let released = std::time::Instant::now();
    wait_for_holder(&t, "replica-b").await;
    // The standby looks again when the lease it saw expires (15 s), not at once.
    println!(
        "standby took over {:.1} s after the release",
        released.elapsed().as_secs_f64()
    );
    t.sync_value("after", "aws", &key, "v1").await;
    assert_eq!(metric(&second, "secretsync_leader").await, Some(1.0));

    let (code, _) = second.terminate();
    assert_eq!(code, Some(0), "{}", second.log());
    assert!(
        second.log().contains("secretsync stopped"),
        "{}",
        second.log()
    );
}

#[tokio::test]
async fn without_election_sigterm_stops_cleanly() {
    let t = TestContext::new("sigterm").await;
    t.default_store("aws").await;
    let key = t.create_remote("db", "v1").await;
    let mut operator = t.start_operator();
    t.sync_value("app", "aws", &key, "v1").await;
    assert_eq!(metric(&operator, "secretsync_leader").await, Some(1.0));
    let (code, _) = operator.terminate();
    assert_eq!(code, Some(0), "{}", operator.log());
    assert!(
        operator.log().contains("secretsync stopped"),
        "{}",
        operator.log()
    );
    let leases: Api<Lease> = Api::namespaced(t.client.clone(), &t.namespace);
    assert!(leases.get_opt(LEASE).await.unwrap().is_none());
}

/// A first run out of cluster, where the operator's own namespace does not exist: one line that says what is
/// missing and the command that makes it, not an API error dump.
#[tokio::test]
async fn a_missing_operator_namespace_is_one_clear_line() {
    let t = TestContext::new("no-operator-ns").await;
    let missing = format!("{}-missing", t.namespace);
    let vars = common::env_vars();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_secretsync"))
        .args([
            "run",
            "--namespace",
            &t.namespace,
            "--operator-namespace",
            &missing,
        ])
        .args(["--metrics-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &vars["KUBECONFIG"])
        .output()
        .expect("run the secretsync binary");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("secretsync: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("kubectl create namespace {missing}")),
        "{stderr}"
    );
    assert!(!stderr.contains("Status {"), "{stderr}");
}
