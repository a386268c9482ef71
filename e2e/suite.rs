//! End to end, as a user runs secretsync: `helm install` of the chart into a namespace enforcing Pod Security
//! "restricted", then syncs, a rotation reaching the Secret and restarting a Deployment, metrics through the
//! chart's Service, two replicas losing their leader, and what the chart's RBAC does not allow.
//!
//! Two ways to run it, the same tests:
//! - **local** (`cargo test`): the local control plane and moto (`hack/testenv.sh`). Nothing runs pods, so
//!   the operator binary runs out of cluster with a token of the chart's ServiceAccount (it has exactly the
//!   chart's RBAC, and a missing permission fails the suite), one process per replica.
//! - **in cluster** (`e2e/run-kind.sh`, part of `make test`): `E2E_IMAGE` names the operator image loaded
//!   into kind, `E2E_AWS_ENDPOINT` moto's address inside the cluster and `E2E_WORKLOAD_IMAGE` an image with
//!   python3 for the Deployment that reads the Secret. The chart runs the operator's pods, which get their AWS
//!   credentials as IRSA gives them: a projected ServiceAccount token for STS and a role to assume. Figures
//!   (sync, rotation to a restarted pod, leader takeover) are printed and appended to
//!   `target/test-logs/e2e-figures.txt`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{
    MANIFEST_DIR, Operator, TIMEOUT, TestContext, env_vars, helm, iam, kubectl, wait_for,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/secretsync");
/// Where the chart's pods find the projected token, as EKS's pod identity webhook mounts it.
const TOKEN_DIR: &str = "/var/run/secrets/eks.amazonaws.com/serviceaccount";

/// Where the operator runs: in the cluster from an image, or out of cluster as the chart's ServiceAccount.
enum Runner {
    InCluster {
        image: String,
        aws_endpoint: String,
        workload_image: String,
    },
    OutOfCluster,
}

impl Runner {
    fn from_env() -> Self {
        let required = |name: &str| {
            std::env::var(name).unwrap_or_else(|_| {
                panic!("{name} is required with E2E_IMAGE (e2e/run-kind.sh sets it)")
            })
        };
        match std::env::var("E2E_IMAGE") {
            Ok(image) => Runner::InCluster {
                image,
                aws_endpoint: required("E2E_AWS_ENDPOINT"),
                workload_image: required("E2E_WORKLOAD_IMAGE"),
            },
            Err(_) => Runner::OutOfCluster,
        }
    }

    fn in_cluster(&self) -> bool {
        matches!(self, Runner::InCluster { .. })
    }
}

/// The chart installed into the test's namespace and scoped to it, with its operator running.
struct Installed {
    release: String,
    fullname: String,
    runner: Runner,
    /// Out of cluster only: the operator processes, one per replica, named `e2e-<i>` as their pods would be.
    operators: Vec<(String, Operator)>,
    /// In a cluster only: the IAM role the pods assume with their projected token.
    irsa_role: Option<String>,
}

impl Installed {
    async fn new(t: &TestContext, replicas: usize) -> Self {
        let release = t.namespace.clone();
        let fullname = format!("{release}-secretsync");
        let runner = Runner::from_env();
        let irsa_role = match &runner {
            Runner::InCluster { .. } => Some(create_irsa_role(t).await),
            Runner::OutOfCluster => None,
        };
        let values = match &runner {
            Runner::InCluster {
                image,
                aws_endpoint,
                ..
            } => {
                let role = irsa_role.as_deref().expect("a role in a cluster");
                let (repository, tag) =
                    image.rsplit_once(':').expect("E2E_IMAGE is repository:tag");
                json!({
                    "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
                    "replicaCount": replicas,
                    "awsRegion": "us-east-1",
                    "logLevel": "info,secretsync=debug",
                    "extraEnv": [
                        {"name": "AWS_ENDPOINT_URL", "value": aws_endpoint},
                        {"name": "AWS_ROLE_ARN", "value": role},
                        {"name": "AWS_WEB_IDENTITY_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
                    ],
                    "extraVolumes": [{"name": "aws-iam-token", "projected": {"sources": [
                        {"serviceAccountToken": {"audience": "sts.amazonaws.com", "expirationSeconds": 86400, "path": "token"}},
                    ]}}],
                    "extraVolumeMounts": [{"name": "aws-iam-token", "mountPath": TOKEN_DIR, "readOnly": true}],
                })
            }
            Runner::OutOfCluster => json!({"replicaCount": replicas}),
        };
        let file = Path::new(MANIFEST_DIR)
            .join("target/test-logs")
            .join(format!("{release}.values.json"));
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, values.to_string()).unwrap();
        let mut args = vec![
            "install".to_string(),
            release.clone(),
            CHART.to_string(),
            "--namespace".into(),
            release.clone(),
            "--skip-crds".into(),
            "--set".into(),
            format!("watchNamespace={release}"),
            "--values".into(),
            file.display().to_string(),
        ];
        if runner.in_cluster() {
            args.extend(["--wait".into(), "--timeout".into(), "3m".into()]);
        }
        helm(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let mut operators = Vec::new();
        if !runner.in_cluster() {
            let kubeconfig = service_account_kubeconfig(t, &fullname).await;
            let lease = format!("{fullname}-leader");
            let hash_key = format!("{fullname}-hash-key");
            for replica in 0..replicas {
                let pod = format!("e2e-{replica}");
                let operator = Operator::start(
                    &t.namespace,
                    &[
                        ("KUBECONFIG", kubeconfig.to_str().unwrap()),
                        // As the chart's Deployment runs it.
                        ("SECRETSYNC_HASH_KEY_SECRET", &hash_key),
                        ("SECRETSYNC_LEADER_ELECT", "true"),
                        ("SECRETSYNC_LEADER_ELECTION_LEASE", &lease),
                        ("POD_NAME", &pod),
                    ],
                );
                operators.push((pod, operator));
            }
        }
        Installed {
            release,
            fullname,
            runner,
            operators,
            irsa_role,
        }
    }

    /// The operator's log, wherever it runs (every replica's).
    fn log(&self) -> String {
        if !self.runner.in_cluster() {
            return self.operators.iter().map(|(_, o)| o.log()).collect();
        }
        let output = Command::new("kubectl")
            .args([
                "logs",
                "-n",
                &self.release,
                "--all-containers",
                "--prefix",
                "-l",
                &format!("app.kubernetes.io/instance={}", self.release),
            ])
            .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
            .output()
            .expect("kubectl is required");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The operator's `/metrics`: through the chart's Service in a cluster (the API server's service proxy),
    /// from the process out of it.
    async fn metrics(&self, client: &Client) -> String {
        if !self.runner.in_cluster() {
            let (_, metrics) = self.operators[0]
                .1
                .http_get("/metrics")
                .await
                .expect("/metrics");
            return metrics;
        }
        let path = format!(
            "/api/v1/namespaces/{}/services/{}-metrics:metrics/proxy/metrics",
            self.release, self.fullname
        );
        let request = http::Request::get(path).body(Vec::new()).unwrap();
        client
            .request_text(request)
            .await
            .expect("/metrics through the Service")
    }

    /// The replica holding the leader lease.
    async fn leader(&self, client: &Client) -> Option<String> {
        Api::<Lease>::namespaced(client.clone(), &self.release)
            .get_opt(&format!("{}-leader", self.fullname))
            .await
            .unwrap()
            .and_then(|lease| lease.spec?.holder_identity)
            .filter(|holder| !holder.is_empty())
    }

    /// Deletes the leader's pod (in a cluster) or kills its process (out of it), as a node failure would.
    async fn delete_replica(&mut self, client: &Client, name: &str) {
        if self.runner.in_cluster() {
            Api::<Pod>::namespaced(client.clone(), &self.release)
                .delete(name, &DeleteParams::default().grace_period(0))
                .await
                .expect("delete the leader's pod");
        } else {
            let (_, operator) = self
                .operators
                .iter_mut()
                .find(|(pod, _)| pod == name)
                .expect("the leader is one of the replicas");
            operator.kill();
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.operators.clear();
        std::thread::sleep(Duration::from_millis(100));
        let _ = Command::new(&env_vars()["HELM"])
            .args(["uninstall", &self.release, "--namespace", &self.release])
            .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
            .output();
    }
}

/// The IAM role the chart's pods assume with their projected token, as on EKS.
async fn create_irsa_role(t: &TestContext) -> String {
    let trust = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "sts:AssumeRoleWithWebIdentity",
        "Principal": {"Federated": "arn:aws:iam::123456789012:oidc-provider/kind"},
    }]});
    iam()
        .await
        .create_role()
        .role_name(t.role_name("irsa"))
        .assume_role_policy_document(trust.to_string())
        .send()
        .await
        .expect("CreateRole")
        .role
        .expect("role")
        .arn
}

/// Whether moto (in the cluster, recording every request) was asked for a session of `role` with a web
/// identity token: the operator's pods had no other credentials.
fn assumed_with_web_identity(role: &str) -> bool {
    let recording = kubectl(&[
        "exec",
        "-n",
        "moto",
        "deploy/moto",
        "--",
        "cat",
        "/tmp/moto_recording",
    ]);
    recording.lines().any(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).expect("a recorded request");
        let raw = entry["body"].as_str().unwrap_or_default();
        let body = if entry["body_encoded"].as_bool() == Some(true) {
            String::from_utf8(STANDARD.decode(raw).unwrap_or_default()).unwrap_or_default()
        } else {
            raw.to_string()
        };
        let form: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        let field = |name: &str| {
            form.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        field("Action") == Some("AssumeRoleWithWebIdentity")
            && field("RoleArn") == Some(role)
            && field("WebIdentityToken").is_some_and(|token| !token.is_empty())
    })
}

/// The namespace admits only pods that meet Pod Security "restricted", as a hardened cluster's would.
async fn enforce_restricted(t: &TestContext) {
    let labels = json!({"metadata": {"labels": {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }}});
    Api::<Namespace>::all(t.client.clone())
        .patch(
            &t.namespace,
            &PatchParams::default(),
            &Patch::Merge(&labels),
        )
        .await
        .expect("label the namespace");
}

/// A kubeconfig for the cluster that authenticates as a ServiceAccount.
async fn service_account_kubeconfig(t: &TestContext, account: &str) -> std::path::PathBuf {
    let request = TokenRequest {
        spec: TokenRequestSpec {
            audiences: Vec::new(),
            expiration_seconds: Some(3600),
            bound_object_ref: None,
        },
        ..Default::default()
    };
    let token = Api::<ServiceAccount>::namespaced(t.client.clone(), &t.namespace)
        .create_token_request(account, &PostParams::default(), &request)
        .await
        .expect("TokenRequest")
        .status
        .expect("token")
        .token;
    let mut kubeconfig = Kubeconfig::read_from(&env_vars()["KUBECONFIG"]).unwrap();
    for user in &mut kubeconfig.auth_infos {
        user.auth_info = Some(AuthInfo {
            token: Some(token.clone().into()),
            ..Default::default()
        });
    }
    let path = Path::new(MANIFEST_DIR)
        .join("target/test-logs")
        .join(format!("{}.kubeconfig", t.namespace));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_string(&kubeconfig).unwrap()).unwrap();
    path
}

async fn client_from(path: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(path).unwrap();
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// Prints a measured figure and keeps it in `target/test-logs/e2e-figures.txt`.
fn figure(what: &str, took: Duration) {
    let line = format!("{what}: {:.2} s", took.as_secs_f64());
    eprintln!("figure: {line}");
    let path = Path::new(MANIFEST_DIR).join("target/test-logs/e2e-figures.txt");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("figures file");
    writeln!(file, "{line}").unwrap();
}

/// A Deployment that asks to be restarted when the Secret `secret` changes and whose pods print the Secret's
/// `value` once at start (meeting Pod Security "restricted").
async fn reading_deployment(t: &TestContext, name: &str, secret: &str, image: &str) {
    let program = "import os, time; print(os.environ['VALUE'], flush=True); time.sleep(86400)";
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "annotations": {"secretsync.io/restart-on-change": secret}},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": {
                "terminationGracePeriodSeconds": 1,
                "securityContext": {"runAsNonRoot": true, "runAsUser": 65534, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": name, "image": image, "imagePullPolicy": "Never",
                    "command": ["python3", "-c", program],
                    "env": [{"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "value"}}}],
                    "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
                }],
            }},
        },
    });
    t.apply_yaml(&deployment.to_string()).await;
}

/// Waits until a running pod of the Deployment `name` has printed `value`.
async fn wait_for_pod_reading(t: &TestContext, name: &str, value: &str) {
    let pods = Api::<Pod>::namespaced(t.client.clone(), &t.namespace);
    wait_for(
        &format!("a pod of {name} reading {value:?}"),
        Duration::from_secs(120),
        || async {
            let listed = pods
                .list(&ListParams::default().labels(&format!("app={name}")))
                .await
                .map_err(|e| vec![("list".to_string(), e.to_string())])?;
            let mut seen = Vec::new();
            for pod in listed.items {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                if let Ok(log) = pods.logs(&pod_name, &LogParams::default()).await {
                    if log.lines().any(|line| line == value) {
                        return Ok(());
                    }
                    seen.push((pod_name, log));
                }
            }
            Err(seen)
        },
    )
    .await
}

async fn deployment_restarted(t: &TestContext, name: &str) {
    wait_for("the restart", TIMEOUT, || async {
        let deployment = Api::<Deployment>::namespaced(t.client.clone(), &t.namespace)
            .get(name)
            .await
            .unwrap();
        let annotations = deployment
            .spec
            .unwrap()
            .template
            .metadata
            .unwrap()
            .annotations;
        annotations
            .filter(|a| a.contains_key("secretsync.io/restarted-at"))
            .map(|_| ())
            .ok_or("not restarted")
    })
    .await;
}

/// The chart's pods were admitted by the namespace's Pod Security level (the ReplicaSet made them all).
async fn chart_pods_admitted(t: &TestContext, installed: &Installed, replicas: usize) {
    let pods = Api::<Pod>::namespaced(t.client.clone(), &t.namespace);
    let selector = format!("app.kubernetes.io/instance={}", installed.release);
    wait_for("the chart's pods", TIMEOUT, || async {
        let listed = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        (listed.items.len() >= replicas)
            .then_some(())
            .ok_or(listed.items.len())
    })
    .await;
}

#[tokio::test]
async fn syncs_rotates_and_restarts_under_restricted_pod_security_with_the_chart_rbac() {
    let t = TestContext::new("e2e-sync").await;
    enforce_restricted(&t).await;
    let installed = Installed::new(&t, 1).await;
    chart_pods_admitted(&t, &installed, 1).await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    let started = Instant::now();
    t.sync_value("app", "aws", &key, "v1").await;
    if let Some(role) = &installed.irsa_role {
        figure(
            "in-cluster sync: ExternalSecret applied to Secret written",
            started.elapsed(),
        );
        assert!(
            assumed_with_web_identity(role),
            "no AssumeRoleWithWebIdentity of {role} in moto's recording"
        );
    }
    if let Runner::InCluster { workload_image, .. } = &installed.runner {
        reading_deployment(&t, "web", "app", workload_image).await;
        wait_for_pod_reading(&t, "web", "v1").await;
    } else {
        t.restartable_deployment("web", "app").await;
    }

    // A rotation reaches the Secret by the version check, and rolls the Deployment that asked for it: in a
    // cluster, its new pod reads the new value.
    let rotated = Instant::now();
    t.put_remote(&key, "v2").await;
    t.wait_for_value("app", "v2").await;
    deployment_restarted(&t, "web").await;
    if installed.runner.in_cluster() {
        wait_for_pod_reading(&t, "web", "v2").await;
        figure(
            "in-cluster rotation: new value put to a restarted pod reading it",
            rotated.elapsed(),
        );
    }
    wait_for("the Created event", TIMEOUT, || async {
        let events = t.events_for("app").await;
        events
            .iter()
            .any(|e| e.1 == "Created")
            .then_some(())
            .ok_or(events)
    })
    .await;

    // The metrics, as Prometheus would scrape them (through the Service in a cluster).
    let metrics = installed.metrics(&t.client).await;
    assert!(
        metrics.contains("secretsync_reconcile_duration_seconds_count"),
        "no reconcile metrics:\n{metrics}"
    );

    // Deleting the ExternalSecret takes its Secret with it (owner reference, garbage collection).
    t.external_secrets()
        .delete("app", &Default::default())
        .await
        .unwrap();
    // The garbage collector learns of a new CRD by rediscovery (every 30 s): on a stack started just before
    // this test, the ExternalSecret kind may not be watched by it yet.
    wait_for(
        "the Secret to be collected",
        Duration::from_secs(90),
        || async {
            let secret = t.secrets().get_opt("app").await.unwrap();
            secret.is_none().then_some(()).ok_or("still there")
        },
    )
    .await;
    let log = installed.log();
    assert!(
        !log.contains("Forbidden") && !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
}

#[tokio::test]
async fn the_other_replica_takes_over_when_the_leader_pod_is_deleted() {
    let t = TestContext::new("e2e-failover").await;
    enforce_restricted(&t).await;
    let mut installed = Installed::new(&t, 2).await;
    chart_pods_admitted(&t, &installed, 2).await;
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.sync_value("before", "aws", &key, "v1").await;
    let leader = wait_for("a leader", TIMEOUT, || async {
        installed.leader(&t.client).await.ok_or("no holder")
    })
    .await;

    // The leader goes; while no one leads, the remote value rotates and a new ExternalSecret appears.
    let deleted = Instant::now();
    installed.delete_replica(&t.client, &leader).await;
    t.put_remote(&key, "v2").await;
    t.apply_yaml(&common::value_external_secret(
        "during",
        "aws",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    let successor = wait_for("another leader", Duration::from_secs(60), || async {
        match installed.leader(&t.client).await {
            Some(holder) if holder != leader => Ok(holder),
            other => Err(other),
        }
    })
    .await;
    let took_over = deleted.elapsed();
    // Nothing lost: the rotation and the ExternalSecret made while no one led are synced by the successor.
    t.wait_for_value("before", "v2").await;
    t.wait_for_value("during", "v2").await;
    let synced = deleted.elapsed();
    if installed.runner.in_cluster() {
        figure(
            "in-cluster takeover: leader pod deleted to lease held by another",
            took_over,
        );
        figure(
            "in-cluster takeover: leader pod deleted to both Secrets synced",
            synced,
        );
    }
    assert_ne!(successor, leader);
}

#[tokio::test]
async fn the_chart_rbac_allows_no_more_than_it_needs() {
    let t = TestContext::new("e2e-rbac").await;
    let other = TestContext::new("e2e-other").await;
    let installed = Installed::new(&t, 1).await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs"},
                        "stringData": {"password": "not-yours"}});
    other.apply_yaml(&secret.to_string()).await;
    let scoped = client_from(&service_account_kubeconfig(&t, &installed.fullname).await).await;
    let denied = Api::<Secret>::namespaced(scoped.clone(), &other.namespace)
        .get("theirs")
        .await
        .expect_err("read another namespace's Secret");
    assert!(
        matches!(&denied, kube::Error::Api(status) if status.code == 403),
        "{denied}"
    );
    let listed = Api::<Secret>::all(scoped)
        .list(&ListParams::default())
        .await
        .expect_err("list Secrets cluster-wide");
    assert!(
        matches!(&listed, kube::Error::Api(status) if status.code == 403),
        "{listed}"
    );
}
