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
    assert_eq!(first.metric("secretsync_leader").await, Some(1.0));
    assert_eq!(second.metric("secretsync_leader").await, Some(0.0));
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
    assert_eq!(second.metric("secretsync_leader").await, Some(1.0));

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
    assert_eq!(operator.metric("secretsync_leader").await, Some(1.0));
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

/// A TCP proxy in front of the API server that can cut one process off (`hack/cut-proxy.py`), and a
/// kubeconfig through it; stopped by PID on drop.
struct CutProxy {
    child: std::process::Child,
    kubeconfig: std::path::PathBuf,
}

impl CutProxy {
    async fn start(name: &str) -> Self {
        let vars = common::env_vars();
        let kubeconfig =
            std::fs::read_to_string(&vars["KUBECONFIG"]).expect("the stack's kubeconfig");
        let server = kubeconfig
            .lines()
            .find_map(|line| line.trim().strip_prefix("server: https://"))
            .expect("a server line")
            .to_string();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let child = std::process::Command::new("python3")
            .arg(format!("{}/hack/cut-proxy.py", common::MANIFEST_DIR))
            .args(["--port", &port.to_string(), "--upstream", &server])
            .spawn()
            .expect("python3 is required for the cut proxy");
        let path = std::path::Path::new(common::MANIFEST_DIR)
            .join(format!("target/test-logs/{name}.kubeconfig"));
        std::fs::write(
            &path,
            kubeconfig.replace(&server, &format!("127.0.0.1:{port}")),
        )
        .expect("write the proxied kubeconfig");
        wait_for("the cut proxy", TIMEOUT, || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .map_err(|err| err.to_string())
        })
        .await;
        CutProxy {
            child,
            kubeconfig: path,
        }
    }

    fn signal(&self, signal: &str) {
        let sent = std::process::Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .expect("kill is on PATH");
        assert!(sent.success());
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The leader loses the API server (the standby does not): it stops its controllers and exits before the
/// standby can take the lease over, so that two replicas never write at once.
#[tokio::test]
async fn a_leader_cut_off_from_the_api_server_stops_before_a_standby_takes_over() {
    let t = TestContext::new("leader-cut").await;
    t.default_store("aws").await;
    let key = t.create_remote("db", "v1").await;
    let proxy = CutProxy::start(&t.namespace).await;
    let kubeconfig = proxy.kubeconfig.to_string_lossy().into_owned();
    let mut first = Operator::start(
        &t.namespace,
        &[
            ("SECRETSYNC_LEADER_ELECT", "true"),
            ("POD_NAME", "replica-a"),
            ("KUBECONFIG", &kubeconfig),
        ],
    );
    wait_for_holder(&t, "replica-a").await;
    let _second = Operator::start(&t.namespace, &replica("replica-b"));
    t.sync_value("before", "aws", &key, "v1").await;

    proxy.signal("-USR1");
    let cut = std::time::Instant::now();
    let code = loop {
        if let Some(code) = first.exited() {
            break code;
        }
        assert!(
            cut.elapsed() < TIMEOUT,
            "the cut-off leader is still running"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let stopped = cut.elapsed();
    wait_for_holder(&t, "replica-b").await;
    let taken_over = cut.elapsed();
    proxy.signal("-USR2");
    println!(
        "leader cut off from the API server: it stopped after {:.1} s (exit {code:?}); the standby took over after {:.1} s",
        stopped.as_secs_f64(),
        taken_over.as_secs_f64()
    );
    assert_eq!(code, Some(1), "{}", first.log());
    assert!(
        first.log().contains("no renewal of the leader lease seen"),
        "{}",
        first.log()
    );
    assert!(
        stopped < taken_over,
        "the old leader stopped {stopped:?} after the cut, the standby led after {taken_over:?}"
    );
    t.sync_value("after", "aws", &key, "v1").await;
}
