//! A corpus of bad input, run at once against one operator: manifests the API server admits but that cannot
//! work, and hostile remote values. Each gets its specific reason and a Warning event, nothing panics, nothing
//! is retried in a hot loop, and no value (a canary planted in every hostile one) reaches any output.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestContext, recorded_calls, wait_for};
use serde_json::{Value, json};

const CANARY: &str = "canary-5d2e9a71-bad-input";

/// Remote secrets the cases read: name → value.
fn remotes() -> Vec<(String, Vec<u8>)> {
    let big = format!("{CANARY}{}", "x".repeat(64 * 1024 - CANARY.len()));
    let nested = format!("{}\"{CANARY}\"{}", "[".repeat(1000), "]".repeat(1000));
    let mut remotes: Vec<(String, Vec<u8>)> = [
        ("plain", CANARY.as_bytes().to_vec()),
        (
            "json",
            format!(r#"{{"a":"{CANARY}","b":"2"}}"#).into_bytes(),
        ),
        (
            "json-too",
            format!(r#"{{"a":"{CANARY}-too"}}"#).into_bytes(),
        ),
        (
            "binary",
            [&[0xff, 0xfe, 0x00][..], CANARY.as_bytes()].concat(),
        ),
        ("big", big.into_bytes()),
        ("not-base64", format!("{CANARY}!!").into_bytes()),
        (
            "duplicate-keys",
            format!(r#"{{"a":"{CANARY}","a":"2"}}"#).into_bytes(),
        ),
        ("nested", nested.into_bytes()),
        (
            "bad-key",
            format!(r#"{{"bad key!":"{CANARY}"}}"#).into_bytes(),
        ),
        ("dot-key", format!(r#"{{"..":"{CANARY}"}}"#).into_bytes()),
        (
            "long-key",
            format!(r#"{{"{}":"{CANARY}"}}"#, "k".repeat(300)).into_bytes(),
        ),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_string(), value))
    .collect();
    // Twenty values of 60 KiB: 1.2 MB together, over a Secret's 1 MiB.
    for i in 0..20 {
        let value = format!(r#"{{"k{i}":"{CANARY}{}"}}"#, "y".repeat(60 * 1024));
        remotes.push((format!("part-{i}"), value.into_bytes()));
    }
    remotes
}

/// One case: its ExternalSecret's spec (remote keys written `@name`), and the class its message starts with
/// (`SecretSynced` for hostile values that are fine to write).
struct Case {
    name: &'static str,
    spec: Value,
    expect: &'static str,
}

fn data(key: &str, remote_ref: Value) -> Value {
    json!({"secretStoreRef": {"name": "aws"}, "data": [{"secretKey": key, "remoteRef": remote_ref}]})
}

fn extract(keys: &[&str]) -> Value {
    let entries: Vec<Value> = keys
        .iter()
        .map(|k| json!({"extract": {"key": k}}))
        .collect();
    json!({"secretStoreRef": {"name": "aws"}, "dataFrom": entries})
}

fn templated(mut spec: Value, template: Value) -> Value {
    spec["target"] = json!({"template": template});
    spec
}

fn cases() -> Vec<Case> {
    let case = |name, spec, expect| Case { name, spec, expect };
    let mut parts: Vec<String> = (0..20).map(|i| format!("@part-{i}")).collect();
    parts.sort();
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    vec![
        // Admitted by the API server, cannot work.
        case(
            "store-missing",
            json!({"secretStoreRef": {"name": "nope"}, "data": [{"secretKey": "x", "remoteRef": {"key": "@plain"}}]}),
            "StoreNotFound",
        ),
        case(
            "cluster-store-missing",
            json!({"secretStoreRef": {"name": "nope-cluster", "kind": "ClusterSecretStore"}, "data": [{"secretKey": "x", "remoteRef": {"key": "@plain"}}]}),
            "StoreNotFound",
        ),
        case(
            "key-missing",
            data("x", json!({"key": "@does-not-exist"})),
            "RemoteKeyNotFound",
        ),
        case(
            "stage-missing",
            data("x", json!({"key": "@plain", "version": "AWSPENDING"})),
            "RemoteKeyNotFound",
        ),
        case(
            "version-missing",
            data(
                "x",
                json!({"key": "@plain", "version": "uuid/00000000-0000-0000-0000-000000000000"}),
            ),
            "RemoteKeyNotFound",
        ),
        case(
            "property-missing",
            data("x", json!({"key": "@json", "property": "nope"})),
            "PropertyNotFound",
        ),
        case(
            "property-of-text",
            data("x", json!({"key": "@plain", "property": "a"})),
            "InvalidRemoteValue",
        ),
        case(
            "find-bad-regexp",
            json!({"secretStoreRef": {"name": "aws"}, "dataFrom": [{"find": {"name": {"regexp": "("}}}]}),
            "InvalidSpec",
        ),
        case(
            "rewrite-bad-regexp",
            json!({"secretStoreRef": {"name": "aws"}, "dataFrom": [{"extract": {"key": "@json"}, "rewrite": [{"regexp": {"source": "(", "target": "x"}}]}]}),
            "InvalidSpec",
        ),
        case(
            "template-syntax",
            templated(extract(&["@json"]), json!({"data": {"x": "{{ a"}})),
            "TemplateError",
        ),
        case(
            "template-unknown-filter",
            templated(
                extract(&["@json"]),
                json!({"data": {"x": "{{ a | nofilter }}"}}),
            ),
            "TemplateError",
        ),
        case(
            "template-lookup-of-a-value",
            templated(
                extract(&["@json"]),
                json!({"data": {"x": "{{ lookup(a) }}"}}),
            ),
            "TemplateError",
        ),
        case(
            "template-configmap-missing",
            templated(
                extract(&["@json"]),
                json!({"templateFrom": [{"configMap": {"name": "nope", "items": [{"key": "k"}]}}]}),
            ),
            "TemplateError",
        ),
        case(
            "merge-without-secret",
            {
                let mut s = data("x", json!({"key": "@plain"}));
                s["target"] = json!({"name": "nobody-made-this", "creationPolicy": "Merge"});
                s
            },
            "SecretMissing",
        ),
        case(
            "someone-elses-secret",
            {
                let mut s = data("x", json!({"key": "@plain"}));
                s["target"] = json!({"name": "foreign"});
                s
            },
            "SecretConflict",
        ),
        case(
            "key-collision",
            extract(&["@json", "@json-too"]),
            "KeyCollision",
        ),
        case(
            "tls-type-without-its-keys",
            templated(
                extract(&["@json"]),
                json!({"type": "kubernetes.io/tls", "data": {"x": "{{ a }}"}}),
            ),
            "SecretSyncedError: Kubernetes API error: Invalid",
        ),
        case(
            "label-from-a-value",
            templated(
                extract(&["@json"]),
                json!({"metadata": {"labels": {"l": "{{ a }}!"}}}),
            ),
            "SecretSyncedError: Kubernetes API error: Invalid",
        ),
        case(
            "annotation-key-invalid",
            templated(
                extract(&["@json"]),
                json!({"metadata": {"annotations": {"not a key!": "{{ a }}"}}}),
            ),
            "SecretSyncedError: Kubernetes API error: Invalid",
        ),
        // Hostile remote values.
        case(
            "binary-as-json",
            data("x", json!({"key": "@binary", "property": "a"})),
            "InvalidRemoteValue",
        ),
        case(
            "binary-in-template",
            templated(
                data("b", json!({"key": "@binary"})),
                json!({"data": {"x": "{{ b | fromJson }}"}}),
            ),
            "TemplateError",
        ),
        case(
            "binary-written-as-is",
            data("x", json!({"key": "@binary"})),
            "SecretSynced",
        ),
        case(
            "value-of-64-kib",
            data("x", json!({"key": "@big"})),
            "SecretSynced",
        ),
        case(
            "value-of-64-kib-as-label",
            templated(
                data("b", json!({"key": "@big"})),
                json!({"metadata": {"labels": {"l": "{{ b }}"}}}),
            ),
            "SecretSyncedError: Kubernetes API error: Invalid",
        ),
        case(
            "invalid-base64",
            data(
                "x",
                json!({"key": "@not-base64", "decodingStrategy": "Base64"}),
            ),
            "InvalidRemoteValue",
        ),
        case(
            "invalid-base64-extracted",
            json!({"secretStoreRef": {"name": "aws"}, "dataFrom": [{"extract": {"key": "@json", "decodingStrategy": "Base64"}}]}),
            "InvalidRemoteValue",
        ),
        case(
            "duplicate-json-keys",
            extract(&["@duplicate-keys"]),
            "InvalidRemoteValue",
        ),
        case(
            "duplicate-json-keys-property",
            data("x", json!({"key": "@duplicate-keys", "property": "a"})),
            "InvalidRemoteValue",
        ),
        case(
            "deeply-nested-json",
            data("x", json!({"key": "@nested", "property": "0"})),
            "InvalidRemoteValue",
        ),
        case(
            "key-converted-as-eso-does",
            extract(&["@bad-key"]),
            "SecretSynced",
        ),
        case(
            "key-too-long-for-a-secret",
            extract(&["@long-key"]),
            "InvalidKey",
        ),
        case("key-dot-dot", extract(&["@dot-key"]), "InvalidKey"),
        case(
            "template-loops-forever",
            templated(
                extract(&["@json"]),
                json!({"data": {"x": "{% for i in range(100000000) %}{{ a }}{% endfor %}"}}),
            ),
            "TemplateError",
        ),
        case(
            "template-expands-without-bound",
            templated(
                data("b", json!({"key": "@big"})),
                json!({"data": {"x": "{% for i in range(100) %}{{ b }}{% endfor %}"}}),
            ),
            "TemplateError",
        ),
        case(
            "template-repeats-a-value",
            templated(
                data("b", json!({"key": "@big"})),
                json!({"data": {"x": "{{ b * 100000 }}"}}),
            ),
            "TemplateError",
        ),
        case("output-over-1-mib", extract(&parts), "SecretTooLarge"),
    ]
}

/// Replaces `@name` strings with the test's remote key for `name`.
fn with_keys(value: &mut Value, t: &TestContext) {
    match value {
        Value::String(text) if text.starts_with('@') => *text = t.remote_key(&text[1..]),
        Value::Array(items) => items.iter_mut().for_each(|item| with_keys(item, t)),
        Value::Object(map) => map.values_mut().for_each(|item| with_keys(item, t)),
        _ => {}
    }
}

#[tokio::test]
async fn every_bad_input_gets_its_reason_once_and_leaks_nothing() {
    let t = TestContext::new("bad-input").await;
    for (name, value) in remotes() {
        match std::str::from_utf8(&value) {
            Ok(text) => t.create_remote(&name, text).await,
            Err(_) => t.create_remote_binary(&name, &value).await,
        };
    }
    t.default_store("aws").await;
    t.apply_yaml(
        &json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "foreign"}, "stringData": {"own": "x"}})
            .to_string(),
    )
    .await;
    let operator = common::Operator::start(&t.namespace, &[("RUST_LOG", "trace")]);
    let cases = cases();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    for case in &cases {
        let mut spec = case.spec.clone();
        with_keys(&mut spec, &t);
        let manifest = json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
            "metadata": {"name": case.name}, "spec": spec,
        });
        t.apply_yaml(&manifest.to_string()).await;
    }

    let mut outcomes = BTreeMap::new();
    for case in &cases {
        let outcome = wait_for(
            &format!("{} to settle", case.name),
            Duration::from_secs(60),
            || async {
                match t.es_ready(case.name).await {
                    Some((status, _, message))
                        if case.expect == "SecretSynced" && status == "True" =>
                    {
                        Ok(message)
                    }
                    Some((status, _, message))
                        if status == "False" && message.starts_with(case.expect) =>
                    {
                        Ok(message)
                    }
                    other => Err(other),
                }
            },
        )
        .await;
        outcomes.insert(case.name, outcome);
    }
    for case in cases.iter().filter(|case| case.expect != "SecretSynced") {
        wait_for(
            &format!("{}'s Warning event", case.name),
            Duration::from_secs(30),
            || async {
                let events = t.events_for(case.name).await;
                events
                    .iter()
                    .any(|(type_, reason, _)| {
                        type_ == "Warning"
                            && (reason == "UpdateFailed" || reason == "ProviderError")
                    })
                    .then_some(())
                    .ok_or(events)
            },
        )
        .await;
    }

    // No hot loop: once every case has failed, nothing reads again for a while (permanent errors are retried
    // every 5 minutes).
    let keys: Vec<String> = remotes()
        .iter()
        .map(|(name, _)| t.remote_key(name))
        .collect();
    let calls = || {
        recorded_calls()
            .into_iter()
            .filter(|call| call.secret_ids.iter().any(|id| keys.contains(id)))
            .count()
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = calls();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let quiet = calls() - before;
    assert_eq!(quiet, 0, "AWS calls in 8 s after every case settled");

    let log = operator.log();
    assert!(
        !log.contains("panicked"),
        "a panic in {}",
        operator.log_path.display()
    );
    let mut reported = String::new();
    for case in &cases {
        reported += &format!("{:?}", t.events_for(case.name).await);
        let es = t.external_secrets().get(case.name).await.unwrap();
        reported += &serde_json::to_string(&es.status).unwrap();
    }
    for form in [CANARY.to_string(), STANDARD.encode(CANARY)] {
        assert!(
            !log.contains(&form),
            "the log holds {form:?} ({})",
            operator.log_path.display()
        );
        assert!(!reported.contains(&form), "events or status hold {form:?}");
    }
    println!(
        "{} bad inputs, each with its reason; 0 AWS calls in the 8 s after:",
        cases.len()
    );
    for (name, message) in &outcomes {
        println!(
            "  {name}: {}",
            message.chars().take(140).collect::<String>()
        );
    }
}
