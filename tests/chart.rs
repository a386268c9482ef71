//! The Helm chart on the real API server: it lints, installs with its defaults, and its RBAC is enough for
//! the operator (run out of cluster with the chart's ServiceAccount token) and no more than it needs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{MANIFEST_DIR, Operator, TestContext, env_vars, value_external_secret, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, ListParams, PostParams};
use kube::config::{AuthInfo, KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/secretsync");

/// Every optional part of the chart switched on.
const EVERYTHING_ON: &str = "replicaCount=2,networkPolicy.enabled=true,metrics.serviceMonitor.enabled=true,\
prometheusRule.enabled=true,grafanaDashboard.enabled=true";

/// Runs helm against the local stack: whether it succeeded, and its output.
fn try_helm(args: &[&str]) -> (bool, String) {
    let vars = env_vars();
    let output = Command::new(&vars["HELM"])
        .args(args)
        .env("KUBECONFIG", &vars["KUBECONFIG"])
        .output()
        .expect("helm runs (hack/build-helm.sh builds it; `make test` does that)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// Runs helm against the local stack; panics with its output when it fails.
fn helm(args: &[&str]) -> String {
    let (ok, text) = try_helm(args);
    assert!(ok, "helm {}:\n{text}", args.join(" "));
    text
}

fn kubectl_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new("kubectl")
        .args(args)
        .args(["-o", "json"])
        .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
        .output()
        .expect("kubectl is required");
    assert!(
        output.status.success(),
        "kubectl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kubectl prints JSON")
}

#[test]
fn the_chart_lints_with_defaults_and_options() {
    helm(&["lint", "--strict", CHART]);
    helm(&[
        "lint",
        "--strict",
        CHART,
        "--set",
        "watchNamespace=team-a,serviceAccount.roleArn=arn:aws:iam::123456789012:role/secretsync",
        "--set",
        EVERYTHING_ON,
    ]);
    // Two active operators would fight over every Secret: the chart refuses.
    let (ok, text) = try_helm(&[
        "template",
        CHART,
        "--kube-version",
        "1.34.0",
        "--set",
        "replicaCount=2,leaderElection.enabled=false",
    ]);
    assert!(
        !ok && text.contains("needs leaderElection.enabled"),
        "{text}"
    );
}

#[tokio::test]
async fn the_chart_installs_with_monitoring_and_every_option_on() {
    let t = TestContext::new("chart-monitoring").await;
    let release = &t.namespace;
    // The Prometheus operator's CRDs, as a cluster with kube-prometheus-stack has them.
    let crds = &env_vars()["PROMETHEUS_OPERATOR_CRDS"];
    let output = Command::new("kubectl")
        .args(["apply", "--server-side", "-f", crds])
        .env("KUBECONFIG", &env_vars()["KUBECONFIG"])
        .output()
        .expect("kubectl is required");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    wait_for("the ServiceMonitor CRD", common::TIMEOUT, || async {
        let (ok, text) = try_helm(&[
            "install",
            release,
            CHART,
            "--namespace",
            release,
            "--skip-crds",
            "--set",
            EVERYTHING_ON,
        ]);
        ok.then_some(()).ok_or(text)
    })
    .await;
    let fullname = format!("{release}-secretsync");
    let get = |kind: &str, name: &str| kubectl_json(&["get", kind, name, "-n", release]);

    let monitor = get("servicemonitor", &fullname);
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    let service = get("service", &format!("{fullname}-metrics"));
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        service["spec"]["selector"]
    );
    let rule = get("prometheusrule", &fullname);
    let alerts: Vec<&str> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    assert!(alerts.contains(&"SecretsyncDown"), "{alerts:?}");
    assert_eq!(alerts.len(), 6, "{alerts:?}");
    let dashboard = get("configmap", &format!("{fullname}-dashboard"));
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: serde_json::Value =
        serde_json::from_str(dashboard["data"]["secretsync.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "secretsync");
    assert_eq!(get("pdb", &fullname)["spec"]["maxUnavailable"], 1);
    let policy = get("networkpolicy", &fullname);
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress", "Egress"]));
    let deployment = get("deployment", &fullname);
    assert_eq!(deployment["spec"]["replicas"], 2);
    let args = &deployment["spec"]["template"]["spec"]["containers"][0]["args"];
    assert!(
        args.as_array()
            .unwrap()
            .contains(&json!(format!("--leader-election-lease={fullname}-leader"))),
        "{args}"
    );
    helm(&["uninstall", release, "--namespace", release]);
}

#[test]
fn the_values_table_matches_values_yaml() {
    let output = Command::new("python3")
        .arg(format!("{MANIFEST_DIR}/hack/chart-values-table.py"))
        .arg("--check")
        .output()
        .expect("python3 is required (apt-get install python3)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn plain_manifests_match_the_chart_and_apply() {
    let vars = env_vars();
    let check = Command::new(format!("{MANIFEST_DIR}/hack/generate-manifests.sh"))
        .arg("--check")
        .env("HELM", &vars["HELM"])
        .output()
        .expect("hack/generate-manifests.sh runs");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // As the README says: kubectl apply, then kustomize.
    for args in [
        &[
            "apply",
            "--server-side",
            "-f",
            "crds/",
            "-f",
            "config/rbac/",
            "-f",
            "config/manager/",
        ][..],
        &["apply", "--server-side", "-k", "config/"][..],
    ] {
        let output = Command::new("kubectl")
            .args(args)
            .current_dir(MANIFEST_DIR)
            .env("KUBECONFIG", &vars["KUBECONFIG"])
            .output()
            .expect("kubectl is required");
        assert!(
            output.status.success(),
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[tokio::test]
async fn the_chart_installs_with_its_defaults() {
    let t = TestContext::new("chart-defaults").await;
    let release = &t.namespace;
    helm(&["install", release, CHART, "--namespace", release]);
    let deployment = Api::<Deployment>::namespaced(t.client.clone(), release)
        .get(&format!("{release}-secretsync"))
        .await
        .expect("the chart's Deployment");
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = &pod.containers[0].security_context.clone().unwrap();
    assert_eq!(container.read_only_root_filesystem, Some(true));
    assert_eq!(container.allow_privilege_escalation, Some(false));
    assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    helm(&["uninstall", release, "--namespace", release]);
}

/// A kubeconfig for the local stack that authenticates as a ServiceAccount.
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

#[tokio::test]
async fn the_operator_works_with_the_chart_rbac_and_no_more() {
    let t = TestContext::new("chart-rbac").await;
    let other = TestContext::new("chart-other").await;
    let release = &t.namespace;
    helm(&[
        "install",
        release,
        CHART,
        "--namespace",
        release,
        "--skip-crds",
        "--set",
        &format!("watchNamespace={release}"),
    ]);
    let fullname = format!("{release}-secretsync");
    let kubeconfig = service_account_kubeconfig(&t, &fullname).await;

    // Everything a sync does, as the chart's ServiceAccount: store, Secret, status, events, a restart.
    let key = t.create_remote("db", "v1").await;
    t.store_with_check("aws", json!({"strategy": "ListSecrets", "interval": "1s"}))
        .await;
    t.apply_yaml(
        &json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "annotations": {"secretsync.io/restart-on-change": "app"}},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "registry.invalid/web:1"}]}},
            },
        })
        .to_string(),
    )
    .await;
    let hash_key = format!("{fullname}-hash-key");
    let operator = Operator::start(
        &t.namespace,
        &[
            ("KUBECONFIG", kubeconfig.to_str().unwrap()),
            ("SECRETSYNC_HASH_KEY_SECRET", &hash_key),
            // As the chart's Deployment runs it: with the leader Lease the chart grants.
            ("SECRETSYNC_LEADER_ELECT", "true"),
            (
                "SECRETSYNC_LEADER_ELECTION_LEASE",
                &format!("{fullname}-leader"),
            ),
            ("POD_NAME", "chart-rbac-0"),
        ],
    );
    t.apply_yaml(&value_external_secret(
        "app",
        "aws",
        "SecretStore",
        &key,
        None,
    ))
    .await;
    t.wait_for_value("app", "v1").await;
    t.put_remote(&key, "v2").await;
    t.wait_for_value("app", "v2").await;
    wait_for("the restart", common::TIMEOUT, || async {
        let web = Api::<Deployment>::namespaced(t.client.clone(), &t.namespace)
            .get("web")
            .await
            .unwrap();
        let annotations = web.spec.unwrap().template.metadata.unwrap().annotations;
        annotations
            .filter(|a| a.contains_key("secretsync.io/restarted-at"))
            .map(|_| ())
            .ok_or("not restarted")
    })
    .await;
    wait_for("the Created event", common::TIMEOUT, || async {
        let events = t.events_for("app").await;
        events
            .iter()
            .any(|e| e.1 == "Created")
            .then_some(())
            .ok_or(events)
    })
    .await;
    assert!(
        !operator.log().contains("Forbidden") && !operator.log().contains("forbidden"),
        "the operator was refused something:\n{}",
        operator.log()
    );

    // And no more: another namespace's Secrets are out of reach when scoped.
    other.create_remote("unused", "x").await;
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "theirs"},
                        "stringData": {"password": "not-yours"}});
    other.apply_yaml(&secret.to_string()).await;
    let scoped = client_from(&kubeconfig).await;
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
    drop(operator);
    tokio::time::sleep(Duration::from_millis(100)).await;
    helm(&["uninstall", release, "--namespace", release]);
}
