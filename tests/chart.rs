//! The Helm chart on the real API server: it lints, installs with its defaults and with every option on,
//! and the plain manifests rendered from it apply. Its RBAC is proven by the e2e suite (`e2e/`).

mod common;

use std::process::Command;

use common::{MANIFEST_DIR, TestContext, env_vars, helm, kubectl, try_helm, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/secretsync");

/// Every optional part of the chart switched on.
const EVERYTHING_ON: &str = "replicaCount=2,networkPolicy.enabled=true,metrics.serviceMonitor.enabled=true,\
prometheusRule.enabled=true,grafanaDashboard.enabled=true";

fn kubectl_json(args: &[&str]) -> serde_json::Value {
    let output = kubectl(&[args, &["-o", "json"][..]].concat());
    serde_json::from_str(&output).expect("kubectl prints JSON")
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
    kubectl(&["apply", "--server-side", "-f", crds]);
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
        kubectl(args);
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
