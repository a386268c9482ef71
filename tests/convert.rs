//! `secretsync convert` on ESO manifests as teams write them (tests/fixtures/eso): the output applies to
//! the real API server, and a converted ExternalSecret syncs to the Secret ESO would have written.

mod common;

use std::process::Command;

use common::{Operator, TIMEOUT, TestContext, wait_for};
use serde_json::{Value, json};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/eso");

/// (converted documents, "not converted" lines, exit status)
fn convert(fixture: &str) -> (Vec<Value>, Vec<String>, i32) {
    let output = Command::new(env!("CARGO_BIN_EXE_secretsync"))
        .args(["convert", &format!("{FIXTURES}/{fixture}")])
        .output()
        .expect("run secretsync convert");
    let stdout = String::from_utf8(output.stdout).expect("UTF-8 output");
    let documents = serde_saphyr::from_multiple(&stdout).expect("the output is YAML");
    let problems = String::from_utf8_lossy(&output.stderr)
        .lines()
        .map(str::to_string)
        .collect();
    (documents, problems, output.status.code().unwrap_or(-1))
}

#[test]
fn registry_templates_become_minijinja() {
    let (documents, problems, status) = convert("registry.yaml");
    assert_eq!((status, problems.len()), (0, 0), "{problems:?}");
    assert!(
        documents
            .iter()
            .all(|d| d["apiVersion"] == "secretsync.io/v1alpha1")
    );
    let template = &documents[1]["spec"]["target"]["template"];
    assert_eq!(
        template["data"],
        json!({
            ".dockerconfigjson": r#"{"auths":{"{{ host }}":{"auth":"{{ (user ~ ":" ~ password) | b64enc }}"}}}"#,
            "api-key": r#"{{ lookup("api-key") }}"#,
            "user": "{{ user | upper }}",
            "token": "{{ token | b64dec }}",
            "bundle": r#"{{ chain | filterPEM("CERTIFICATE") }}"#,
        })
    );
    assert_eq!(template["metadata"]["labels"]["registry"], "{{ host }}");
    assert_eq!(template["type"], "kubernetes.io/dockerconfigjson");
}

#[test]
fn what_cannot_be_converted_is_reported() {
    let (documents, problems, status) = convert("unconvertible.yaml");
    assert_eq!(status, 3);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("spec.target.template.data.hosts"),
        "{problems:?}"
    );
    let data = &documents[0]["spec"]["target"]["template"]["data"];
    // Kept as written, not half-converted; the rest converted.
    assert_eq!(
        data["hosts"],
        "{{ range $i, $h := .hosts | fromJson }}{{ $h }},{{ end }}"
    );
    assert_eq!(data["ok"], "{{ single }}");
    // The ConfigMap the template comes from was in the input, so it was converted too.
    assert_eq!(documents[1]["data"]["nginx.conf"], "server {{ single }};");

    let output = Command::new(env!("CARGO_BIN_EXE_secretsync"))
        .args(["convert", "/nonexistent.yaml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn cluster_external_secrets_convert_and_apply() {
    let (documents, problems, status) = convert("cluster.yaml");
    assert_eq!((status, problems.len()), (0, 0), "{problems:?}");
    let ces = &documents[0];
    assert_eq!(ces["apiVersion"], "secretsync.io/v1alpha1");
    assert_eq!(ces["kind"], "ClusterExternalSecret");
    assert_eq!(
        ces["spec"]["externalSecretSpec"]["target"]["template"]["data"][".dockerconfigjson"],
        r#"{"auths":{"{{ host }}":{"auth":"{{ (user ~ ":" ~ password) | b64enc }}"}}}"#
    );
    assert_eq!(ces["spec"]["namespaces"], json!(["tools"]));

    // The API server takes it as converted. No operator here serves every namespace, and its selector
    // matches none of the test namespaces anyway.
    let t = TestContext::new("convert-ces").await;
    let mut ces = ces.clone();
    ces["metadata"]["name"] = json!(t.namespace);
    t.apply_yaml(&ces.to_string()).await;
    kube::Api::<secretsync::api::ClusterExternalSecret>::all(t.client.clone())
        .delete(&t.namespace, &kube::api::DeleteParams::default())
        .await
        .expect("delete the ClusterExternalSecret");
}

#[tokio::test]
async fn converted_manifests_apply_and_sync() {
    let t = TestContext::new("convert").await;
    let (mut documents, problems, _) = convert("app.yaml");
    assert!(problems.is_empty(), "{problems:?}");
    // The ClusterSecretStore is cluster-wide: give it this test's name.
    let store = t.namespace.clone();
    documents[0]["metadata"]["name"] = json!(store);
    documents[1]["spec"]["secretStoreRef"]["name"] = json!(store);
    let _operator = Operator::start(&t.namespace, &[]);
    for document in &documents {
        t.apply_yaml(&document.to_string()).await;
    }
    // The API server accepts the converted registry manifests as well (they need AWS to sync).
    let (registry, _, _) = convert("registry.yaml");
    for document in &registry {
        t.apply_yaml(&document.to_string()).await;
    }

    let data = wait_for("the converted ExternalSecret to sync", TIMEOUT, || async {
        let data = t.secret_data("app").await.ok_or("no Secret yet")?;
        (data.len() == 4)
            .then_some(data.clone())
            .ok_or(format!("{data:?}"))
    })
    .await;
    assert_eq!(data["user"], "app");
    assert_eq!(data["password"], "s3cret");
    assert_eq!(
        data["dsn"],
        "postgres://app:s3cret@db:5432/app?sslmode=require"
    );
    assert_eq!(data["feature-flags"], "on");
    kube::Api::<secretsync::api::ClusterSecretStore>::all(t.client.clone())
        .delete(&store, &kube::api::DeleteParams::default())
        .await
        .expect("delete the ClusterSecretStore");
}
