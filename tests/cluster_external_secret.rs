//! ClusterExternalSecret on the real API server and moto: one ExternalSecret per selected namespace, read
//! once; namespaces joining and leaving; someone else's ExternalSecret of the same name; deletion.

mod common;

use std::time::{Duration, Instant};

use common::{
    ExtraNamespaces, Operator, TIMEOUT, TestContext, recorded_calls_since, recording_mark, wait_for,
};
use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use secretsync::api::{ClusterExternalSecret, ExternalSecret};
use serde_json::json;

async fn label(client: &Client, namespace: &str, key: &str, value: Option<&str>) {
    let patch = json!({"metadata": {"labels": {key: value}}});
    Api::<Namespace>::all(client.clone())
        .patch(namespace, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("label namespace");
}

async fn secret_value(client: &Client, namespace: &str, name: &str) -> Option<String> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .expect("get Secret")?;
    let value = secret.data?.get("value")?.0.clone();
    Some(String::from_utf8_lossy(&value).into_owned())
}

async fn provisioned(client: &Client, name: &str) -> (Vec<String>, Vec<(String, String)>, String) {
    let ces = Api::<ClusterExternalSecret>::all(client.clone())
        .get(name)
        .await
        .expect("get ClusterExternalSecret");
    let status = ces.status.unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| format!("{}/{}", c.status, c.reason))
        .unwrap_or_default();
    let failed = status
        .failed_namespaces
        .into_iter()
        .map(|f| (f.namespace, f.reason))
        .collect();
    (status.provisioned_namespaces, failed, ready)
}

/// How many times the ClusterExternalSecret's events said its ExternalSecret was provisioned in `namespace`.
async fn provisioned_events(client: &Client, name: &str, namespace: &str) -> i32 {
    Api::<Event>::all(client.clone())
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await
        .expect("list events")
        .items
        .iter()
        .filter(|event| {
            event.reason.as_deref() == Some("Provisioned")
                && event
                    .note
                    .as_deref()
                    .unwrap_or_default()
                    .contains(namespace)
        })
        .map(|event| event.series.as_ref().map_or(1, |series| series.count))
        .sum()
}

#[tokio::test]
async fn one_external_secret_per_selected_namespace() {
    let t = TestContext::new("ces").await;
    let client = t.client.clone();
    let name = t.namespace.clone();
    let selector = "secretsync.io/ces-test";
    let [a, b, c, d, e] = ["a", "b", "c", "d", "e"].map(|s| format!("{}-{s}", t.namespace));
    let _namespaces = ExtraNamespaces::create(
        &client,
        &[a.clone(), b.clone(), c.clone(), d.clone(), e.clone()],
    )
    .await;
    for ns in [&a, &b, &c] {
        label(&client, ns, selector, Some(&name)).await;
    }
    let key = t.create_remote("shared", "v1").await;
    t.apply_yaml(&format!(
        "apiVersion: secretsync.io/v1alpha1\nkind: ClusterSecretStore\nmetadata: {{name: {name}}}\n\
         spec: {{provider: {{aws: {{service: SecretsManager, region: us-east-1}}}}}}"
    ))
    .await;
    // Someone else's ExternalSecret of the same name, in a namespace not selected yet.
    let foreign = json!({
        "apiVersion": "secretsync.io/v1alpha1", "kind": "ExternalSecret",
        "metadata": {"name": "shared"},
        "spec": {"secretStoreRef": {"name": name, "kind": "ClusterSecretStore"},
                 "target": {"name": "foreign"},
                 "data": [{"secretKey": "value", "remoteRef": {"key": key}}]},
    });
    t.apply_yaml_in(&d, &foreign.to_string()).await;
    let foreign_before = Api::<ExternalSecret>::namespaced(client.clone(), &d)
        .get("shared")
        .await
        .unwrap();

    let operator = Operator::start_cluster_wide(&t.namespace);
    let mark = recording_mark();
    let applied = Instant::now();
    t.apply_yaml(
        &json!({
            "apiVersion": "secretsync.io/v1alpha1", "kind": "ClusterExternalSecret",
            "metadata": {"name": name},
            "spec": {
                "externalSecretName": "shared",
                "externalSecretMetadata": {"labels": {"team": "platform"}},
                "namespaceSelectors": [{"matchLabels": {selector: name}}],
                "refreshTime": "1h",
                "externalSecretSpec": {
                    "secretStoreRef": {"name": name, "kind": "ClusterSecretStore"},
                    "refreshInterval": "1h",
                    "data": [{"secretKey": "value", "remoteRef": {"key": key}}],
                },
            },
        })
        .to_string(),
    )
    .await;

    // Three namespaces: three ExternalSecrets, three Secrets, one read of the value.
    for ns in [&a, &b, &c] {
        wait_for("the Secret in each selected namespace", TIMEOUT, || async {
            match secret_value(&client, ns, "shared").await {
                Some(value) if value == "v1" => Ok(()),
                other => Err(format!("{ns}: {other:?}")),
            }
        })
        .await;
        let es = Api::<ExternalSecret>::namespaced(client.clone(), ns)
            .get("shared")
            .await
            .unwrap();
        assert_eq!(es.labels()["team"], "platform");
        assert_eq!(es.owner_references()[0].kind, "ClusterExternalSecret");
    }
    println!(
        "figure: ClusterExternalSecret applied to the Secrets in 3 namespaces: {:.2} s",
        applied.elapsed().as_secs_f64()
    );
    let reads = |since| {
        recorded_calls_since(since)
            .0
            .iter()
            .filter(|call| call.reads(&key))
            .count()
    };
    assert_eq!(reads(mark), 1, "one read of the value for three namespaces");
    wait_for("status to list the three", TIMEOUT, || async {
        let status = provisioned(&client, &name).await;
        (status.0 == [a.clone(), b.clone(), c.clone()] && status.2 == "True/Provisioned")
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await;
    // One reconcile at a time: each namespace's provisioning is announced once, not once per reconcile that
    // saw it before the status did.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let announced = provisioned_events(&client, &name, &a).await;
    assert_eq!(announced, 1, "events announcing {a} provisioned");

    // A fourth namespace labelled: provisioned at once, from the value already read, with one write: the
    // three provisioned already are not written again.
    let applies = || async {
        operator
            .api_requests()
            .await
            .get("patch externalsecrets")
            .copied()
            .unwrap_or_default()
    };
    let applies_before = applies().await;
    let labelled = Instant::now();
    label(&client, &e, selector, Some(&name)).await;
    wait_for(
        "the Secret in the newly labelled namespace",
        Duration::from_secs(10),
        || async {
            match secret_value(&client, &e, "shared").await {
                Some(value) if value == "v1" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    println!(
        "figure: namespace labelled to its Secret written: {:.2} s",
        labelled.elapsed().as_secs_f64()
    );
    assert_eq!(
        reads(mark),
        1,
        "the fourth namespace took the value already read"
    );
    wait_for("status to list the four", TIMEOUT, || async {
        let status = provisioned(&client, &name).await;
        (status.0.len() == 4)
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await;
    // Its own watch event reconciles once more, which writes nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(applies().await - applies_before, 1.0);

    // The namespace with someone else's ExternalSecret: reported, not touched.
    label(&client, &d, selector, Some(&name)).await;
    let failed = wait_for("the foreign ExternalSecret reported", TIMEOUT, || async {
        let status = provisioned(&client, &name).await;
        match status.1.first() {
            Some((ns, reason)) if *ns == d => Ok((reason.clone(), status.2.clone())),
            _ => Err(format!("{status:?}")),
        }
    })
    .await;
    assert!(
        failed.0.contains("not made by this ClusterExternalSecret"),
        "{failed:?}"
    );
    assert_eq!(failed.1, "False/PartiallyProvisioned");
    let foreign_after = Api::<ExternalSecret>::namespaced(client.clone(), &d)
        .get("shared")
        .await
        .unwrap();
    // Its spec and metadata as they were (its own sync writes its status).
    assert_eq!(
        foreign_after.metadata.generation,
        foreign_before.metadata.generation
    );
    assert_eq!(foreign_after.labels(), foreign_before.labels());
    assert!(foreign_after.owner_references().is_empty());
    let events = Api::<Event>::all(client.clone())
        .list(&ListParams::default().fields(&format!("regarding.name={name}")))
        .await
        .unwrap();
    assert!(
        events.items.iter().any(
            |event| event.reason.as_deref() == Some("ProvisioningFailed")
                && event.note.as_deref().unwrap_or_default().contains(&d)
        ),
        "a Warning event names the namespace"
    );

    // An ExternalSecret of ours deleted by hand is put back.
    Api::<ExternalSecret>::namespaced(client.clone(), &a)
        .delete("shared", &DeleteParams::default())
        .await
        .unwrap();
    wait_for("the deleted ExternalSecret put back", TIMEOUT, || async {
        let es = Api::<ExternalSecret>::namespaced(client.clone(), &a)
            .get_opt("shared")
            .await
            .unwrap();
        match es {
            Some(es) if es.metadata.deletion_timestamp.is_none() => Ok(()),
            _ => Err("not yet"),
        }
    })
    .await;

    // One of ours edited by hand (its spec and a label of ours) is put back as specified.
    Api::<ExternalSecret>::namespaced(client.clone(), &c)
        .patch(
            "shared",
            &PatchParams::default(),
            &Patch::Merge(json!({
                "metadata": {"labels": {"team": "edited"}},
                "spec": {"refreshInterval": "5m"},
            })),
        )
        .await
        .unwrap();
    wait_for("the edited ExternalSecret put back", TIMEOUT, || async {
        let es = Api::<ExternalSecret>::namespaced(client.clone(), &c)
            .get("shared")
            .await
            .unwrap();
        let interval = serde_json::to_value(&es.spec).unwrap()["refreshInterval"].clone();
        (es.labels()["team"] == "platform" && interval == "1h")
            .then_some(())
            .ok_or(format!("{:?} {interval}", es.labels()))
    })
    .await;

    // Unlabelled: its ExternalSecret goes, and with it (owner reference) its Secret.
    let unlabelled = Instant::now();
    label(&client, &b, selector, None).await;
    wait_for(
        "the ExternalSecret removed from the unlabelled namespace",
        TIMEOUT,
        || async {
            let es = Api::<ExternalSecret>::namespaced(client.clone(), &b)
                .get_opt("shared")
                .await
                .unwrap();
            es.is_none().then_some(()).ok_or("still there")
        },
    )
    .await;
    println!(
        "figure: namespace unlabelled to its ExternalSecret removed: {:.2} s",
        unlabelled.elapsed().as_secs_f64()
    );
    wait_for("status without it", TIMEOUT, || async {
        let status = provisioned(&client, &name).await;
        (status.0 == [a.clone(), c.clone(), e.clone()])
            .then_some(())
            .ok_or(format!("{status:?}"))
    })
    .await;

    // Deleted: what it made goes with it (the garbage collector follows the owner references); the
    // foreign one stays.
    Api::<ClusterExternalSecret>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
    for ns in [&a, &c, &e] {
        wait_for(
            "its ExternalSecrets and Secrets gone",
            Duration::from_secs(90),
            || async {
                let es = Api::<ExternalSecret>::namespaced(client.clone(), ns)
                    .get_opt("shared")
                    .await
                    .unwrap();
                let secret = secret_value(&client, ns, "shared").await;
                (es.is_none() && secret.is_none())
                    .then_some(())
                    .ok_or(format!(
                        "{ns}: ExternalSecret {}, Secret {secret:?}",
                        es.is_some()
                    ))
            },
        )
        .await;
    }
    assert!(
        Api::<ExternalSecret>::namespaced(client.clone(), &d)
            .get_opt("shared")
            .await
            .unwrap()
            .is_some()
    );
    Api::<secretsync::api::ClusterSecretStore>::all(client.clone())
        .delete(&name, &DeleteParams::default())
        .await
        .unwrap();
}
