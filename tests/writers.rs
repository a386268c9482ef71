//! Several writers of one Secret: two ExternalSecrets merging into it, an owner and a merger, someone else's
//! keys, and Secrets written by the field manager that every ExternalSecret shared before each had its own.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TIMEOUT, TestContext, wait_for};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use serde_json::json;

/// An ExternalSecret writing remote `key` to the Secret key `secret_key` of Secret `target`.
fn writer(name: &str, target: &str, creation: &str, secret_key: &str, key: &str) -> String {
    let mut target_spec = json!({"name": target, "creationPolicy": creation});
    if creation == "Merge" {
        target_spec["deletionPolicy"] = json!("Merge");
    }
    json!({
        "apiVersion": "secretsync.io/v1alpha1",
        "kind": "ExternalSecret",
        "metadata": {"name": name},
        "spec": {
            "refreshInterval": "2s",
            "secretStoreRef": {"name": "aws"},
            "target": target_spec,
            "data": [{"secretKey": secret_key, "remoteRef": {"key": key}}],
        },
    })
    .to_string()
}

/// A Secret someone else made, holding the key `own`.
async fn foreign_secret(t: &TestContext, name: &str) {
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            ..Default::default()
        },
        data: Some([("own".to_string(), ByteString(b"mine".to_vec()))].into()),
        ..Default::default()
    };
    t.secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the foreign Secret");
}

/// Waits until the Secret holds exactly `expected`.
async fn wait_for_data(t: &TestContext, name: &str, expected: &[(&str, &str)]) {
    let expected: HashMap<String, String> = expected
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    wait_for(
        &format!("Secret {name} = {expected:?}"),
        TIMEOUT,
        || async {
            let data = t.secret_data(name).await.ok_or("no Secret".to_string())?;
            (data == expected).then_some(()).ok_or(format!("{data:?}"))
        },
    )
    .await
}

/// Over several refreshes, the Secret keeps holding exactly `expected`.
async fn holds_across_refreshes(t: &TestContext, name: &str, expected: &[(&str, &str)]) {
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let data = t.secret_data(name).await.expect("the Secret stays");
        let mut keys: Vec<&str> = data.keys().map(String::as_str).collect();
        keys.sort();
        let mut wanted: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
        wanted.sort();
        assert_eq!(keys, wanted, "Secret {name} lost or gained a key");
        for (key, value) in expected {
            assert_eq!(data[*key], *value, "Secret {name} key {key}");
        }
    }
}

#[tokio::test]
async fn two_mergers_and_an_owner_keep_their_own_keys_and_remove_only_theirs() {
    let t = TestContext::new("writers").await;
    let a = t.create_remote("a", "value-a").await;
    let b = t.create_remote("b", "value-b").await;
    let o = t.create_remote("o", "value-o").await;
    t.default_store("aws").await;
    let _operator = t.start_operator();

    // Merge + Merge into someone else's Secret.
    foreign_secret(&t, "shared").await;
    t.apply_yaml(&writer("merge-a", "shared", "Merge", "a", &a))
        .await;
    t.apply_yaml(&writer("merge-b", "shared", "Merge", "b", &b))
        .await;
    let all = [("own", "mine"), ("a", "value-a"), ("b", "value-b")];
    wait_for_data(&t, "shared", &all).await;

    // Owner + Merge.
    t.apply_yaml(&writer("owner", "owned", "Owner", "o", &o))
        .await;
    wait_for_data(&t, "owned", &[("o", "value-o")]).await;
    t.apply_yaml(&writer("merge-m", "owned", "Merge", "m", &a))
        .await;
    let owned = [("o", "value-o"), ("m", "value-a")];
    wait_for_data(&t, "owned", &owned).await;

    // Refreshes every 2 s, and a rotation read by both mergers of `shared` (one of them writes `owned`).
    holds_across_refreshes(&t, "shared", &all).await;
    holds_across_refreshes(&t, "owned", &owned).await;
    t.put_remote(&a, "value-a2").await;
    wait_for_data(
        &t,
        "shared",
        &[("own", "mine"), ("a", "value-a2"), ("b", "value-b")],
    )
    .await;
    wait_for_data(&t, "owned", &[("o", "value-o"), ("m", "value-a2")]).await;

    let secret = t.secrets().get("owned").await.unwrap();
    let owner = t.external_secrets().get("owner").await.unwrap();
    assert_eq!(
        secret
            .metadata
            .owner_references
            .unwrap_or_default()
            .iter()
            .map(|r| r.uid.clone())
            .collect::<Vec<_>>(),
        [owner.metadata.uid.unwrap()],
        "the owner reference stays"
    );
    assert_eq!(
        secret.metadata.labels.unwrap_or_default()["secretsync.io/managed"],
        "true"
    );
    for name in ["merge-a", "merge-b", "owner", "merge-m"] {
        let ready = t.es_ready(name).await.expect("a Ready condition");
        assert_eq!(ready.0, "True", "{name}: {ready:?}");
    }

    // Deleting a merger takes out its keys and nothing else.
    t.external_secrets()
        .delete("merge-b", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_data(&t, "shared", &[("own", "mine"), ("a", "value-a2")]).await;
    t.external_secrets()
        .delete("merge-m", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_data(&t, "owned", &[("o", "value-o")]).await;
    wait_for("the deleted mergers to be gone", TIMEOUT, || async {
        let left: Vec<String> = t
            .external_secrets()
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter_map(|es| es.metadata.name)
            .collect();
        (left.len() == 2).then_some(()).ok_or(left)
    })
    .await;
    holds_across_refreshes(&t, "shared", &[("own", "mine"), ("a", "value-a2")]).await;
    let ready = t.es_ready("owner").await.unwrap();
    assert_eq!(ready.0, "True", "{ready:?}");
}

/// Secrets written before each ExternalSecret had its own field manager carry the shared manager's fields:
/// each ExternalSecret takes over its own on its next sync, and keys the shared manager holds for another
/// ExternalSecret stay until that one has taken them over too.
#[tokio::test]
async fn secrets_of_the_shared_manager_are_taken_over_without_losing_a_key() {
    let t = TestContext::new("legacy-manager").await;
    let a = t.create_remote("a", "value-a").await;
    let b = t.create_remote("b", "value-b").await;
    t.default_store("aws").await;
    foreign_secret(&t, "shared").await;
    // What the shared manager left: the last ExternalSecret to sync (merge-b) applied `b`.
    let legacy = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "shared"},
                        "data": {"b": "b2xkLWI="}});
    t.secrets()
        .patch(
            "shared",
            &PatchParams::apply("secretsync").force(),
            &Patch::Apply(&legacy),
        )
        .await
        .unwrap();
    let _operator = t.start_operator();

    t.apply_yaml(&writer("merge-a", "shared", "Merge", "a", &a))
        .await;
    wait_for_data(
        &t,
        "shared",
        &[("own", "mine"), ("a", "value-a"), ("b", "old-b")],
    )
    .await;
    assert_eq!(legacy_fields(&t).await, Some(vec!["f:b".to_string()]));

    t.apply_yaml(&writer("merge-b", "shared", "Merge", "b", &b))
        .await;
    wait_for_data(
        &t,
        "shared",
        &[("own", "mine"), ("a", "value-a"), ("b", "value-b")],
    )
    .await;
    wait_for("the shared manager's entry to go", TIMEOUT, || async {
        match legacy_fields(&t).await {
            None => Ok(()),
            Some(fields) if fields.is_empty() => Ok(()),
            Some(fields) => Err(fields),
        }
    })
    .await;

    // Now each owns its keys: deleting one takes its key only.
    t.external_secrets()
        .delete("merge-a", &DeleteParams::default())
        .await
        .unwrap();
    wait_for_data(&t, "shared", &[("own", "mine"), ("b", "value-b")]).await;
}

/// The data keys the shared `secretsync` manager still applies in Secret `shared`; `None` without an entry.
async fn legacy_fields(t: &TestContext) -> Option<Vec<String>> {
    let secret = t.secrets().get("shared").await.unwrap();
    let entry = secret.metadata.managed_fields?.into_iter().find(|entry| {
        entry.manager.as_deref() == Some("secretsync")
            && entry.operation.as_deref() == Some("Apply")
    })?;
    let fields = entry.fields_v1?.0;
    Some(
        fields["f:data"]
            .as_object()
            .map(|data| data.keys().cloned().collect())
            .unwrap_or_default(),
    )
}
