//! From a store reference to a provider client: finding the store, enforcing namespace boundaries,
//! reading static credentials.

use aws_credential_types::Credentials;
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;

use super::Context;
use crate::api::{
    AwsAuthSecretRef, AwsProvider, ClusterSecretStore, ExternalSecret, SecretKeySelector,
    SecretStore, SecretStoreSpec, StoreKind,
};
use crate::error::{Error, Result};
use crate::provider::Provider;
use crate::provider::aws::AwsSecretsManager;
use crate::provider::fake::FakeProvider;

/// Where a store is and who asks: a SecretStore's own namespace bounds everything it may read; a
/// ClusterSecretStore reads from the requesting ExternalSecret's namespace unless it names one.
pub struct StoreScope<'a> {
    pub kind: StoreKind,
    pub store_namespace: Option<&'a str>,
    pub requester_namespace: Option<&'a str>,
}

/// The spec of the store an ExternalSecret names. A SecretStore is looked up only in the ExternalSecret's
/// own namespace, so a store in another namespace is simply not found.
pub async fn store_spec(
    ctx: &Context,
    es: &ExternalSecret,
    namespace: &str,
) -> Result<SecretStoreSpec> {
    let reference = &es.spec.secret_store_ref;
    let found = match reference.kind {
        StoreKind::SecretStore => Api::<SecretStore>::namespaced(ctx.client.clone(), namespace)
            .get_opt(&reference.name)
            .await?
            .map(|store| store.spec),
        StoreKind::ClusterSecretStore => Api::<ClusterSecretStore>::all(ctx.client.clone())
            .get_opt(&reference.name)
            .await?
            .map(|store| store.spec.store),
    };
    found.ok_or_else(|| Error::StoreNotFound {
        kind: reference.kind,
        name: reference.name.clone(),
        namespace: (reference.kind == StoreKind::SecretStore).then(|| namespace.to_string()),
    })
}

/// A ClusterSecretStore whose credentials name no namespace reads them from the namespace of each
/// ExternalSecret that uses it ("referent" authentication), so it cannot be checked on its own.
pub fn is_referent(spec: &SecretStoreSpec, kind: StoreKind) -> bool {
    let secret_ref = spec
        .provider
        .aws
        .as_ref()
        .and_then(|aws| aws.auth.as_ref()?.secret_ref.as_ref());
    kind == StoreKind::ClusterSecretStore
        && secret_ref.is_some_and(|r| selectors(r).any(|selector| selector.namespace.is_none()))
}

fn selectors(secret_ref: &AwsAuthSecretRef) -> impl Iterator<Item = &SecretKeySelector> {
    [
        Some(&secret_ref.access_key_id_secret_ref),
        Some(&secret_ref.secret_access_key_secret_ref),
        secret_ref.session_token_secret_ref.as_ref(),
    ]
    .into_iter()
    .flatten()
}

/// A client for the store's provider, with its static credentials when it has them.
pub async fn provider(
    ctx: &Context,
    spec: &SecretStoreSpec,
    scope: &StoreScope<'_>,
) -> Result<Provider> {
    match (&spec.provider.aws, &spec.provider.fake) {
        (Some(aws), None) => aws_provider(ctx, aws, scope).await.map(Provider::Aws),
        (None, Some(fake)) => Ok(Provider::Fake(FakeProvider::new(fake))),
        _ => Err(Error::InvalidStoreConfig(
            "set exactly one provider: aws or fake".into(),
        )),
    }
}

async fn aws_provider(
    ctx: &Context,
    aws: &AwsProvider,
    scope: &StoreScope<'_>,
) -> Result<AwsSecretsManager> {
    let credentials = match aws.auth.as_ref().and_then(|auth| auth.secret_ref.as_ref()) {
        None => None,
        Some(secret_ref) => {
            let session_token = match &secret_ref.session_token_secret_ref {
                Some(selector) => Some(read_key(ctx, selector, scope).await?),
                None => None,
            };
            Some(Credentials::new(
                read_key(ctx, &secret_ref.access_key_id_secret_ref, scope).await?,
                read_key(ctx, &secret_ref.secret_access_key_secret_ref, scope).await?,
                session_token,
                None,
                "secretsync-store",
            ))
        }
    };
    AwsSecretsManager::new(&ctx.aws, aws, credentials, ctx.metrics.clone())
}

async fn read_key(
    ctx: &Context,
    selector: &SecretKeySelector,
    scope: &StoreScope<'_>,
) -> Result<String> {
    let namespace = secret_namespace(selector, scope)?;
    let problem = |problem: String| Error::CredentialsSecret {
        namespace: namespace.to_string(),
        name: selector.name.clone(),
        problem,
    };
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&selector.name)
        .await?
        .ok_or_else(|| problem("not found".into()))?;
    let value = secret
        .data
        .and_then(|mut data| data.remove(&selector.key))
        .ok_or_else(|| problem(format!("has no key {:?}", selector.key)))?;
    String::from_utf8(value.0)
        .map(|v| v.trim().to_string())
        .map_err(|_| problem(format!("key {:?} is not UTF-8", selector.key)))
}

fn secret_namespace<'a>(
    selector: &'a SecretKeySelector,
    scope: &StoreScope<'a>,
) -> Result<&'a str> {
    let namespace = match scope.kind {
        StoreKind::SecretStore => match (selector.namespace.as_deref(), scope.store_namespace) {
            (Some(named), Some(own)) if named != own => {
                return Err(Error::InvalidStoreConfig(format!(
                    "a SecretStore may only read Secrets in its own namespace {own:?}, not {named:?}"
                )));
            }
            (_, own) => own,
        },
        StoreKind::ClusterSecretStore => {
            selector.namespace.as_deref().or(scope.requester_namespace)
        }
    };
    namespace.ok_or_else(|| {
        Error::InvalidStoreConfig(format!(
            "credentials Secret {:?} names no namespace and no ExternalSecret asks for it",
            selector.name
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selector(namespace: Option<&str>) -> SecretKeySelector {
        SecretKeySelector {
            name: "creds".into(),
            key: "id".into(),
            namespace: namespace.map(String::from),
        }
    }

    #[test]
    fn secret_store_cannot_reach_other_namespaces() {
        let scope = StoreScope {
            kind: StoreKind::SecretStore,
            store_namespace: Some("team-a"),
            requester_namespace: Some("team-a"),
        };
        assert_eq!(secret_namespace(&selector(None), &scope).unwrap(), "team-a");
        assert_eq!(
            secret_namespace(&selector(Some("team-a")), &scope).unwrap(),
            "team-a"
        );
        let err = secret_namespace(&selector(Some("team-b")), &scope).unwrap_err();
        assert_eq!(err.reason(), "InvalidStoreConfig");
    }

    #[test]
    fn cluster_store_uses_the_referent_namespace() {
        let scope = StoreScope {
            kind: StoreKind::ClusterSecretStore,
            store_namespace: None,
            requester_namespace: Some("team-b"),
        };
        assert_eq!(secret_namespace(&selector(None), &scope).unwrap(), "team-b");
        assert_eq!(
            secret_namespace(&selector(Some("ops")), &scope).unwrap(),
            "ops"
        );
        let alone = StoreScope {
            requester_namespace: None,
            ..scope
        };
        let err = secret_namespace(&selector(None), &alone).unwrap_err();
        assert_eq!(err.reason(), "InvalidStoreConfig");
    }

    #[test]
    fn referent_only_when_a_cluster_store_leaves_a_namespace_out() {
        let spec = |namespace: Option<&str>| -> SecretStoreSpec {
            serde_json::from_value(serde_json::json!({"provider": {"aws": {
                "service": "SecretsManager",
                "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "c", "key": "id", "namespace": "ops"},
                    "secretAccessKeySecretRef": {"name": "c", "key": "secret", "namespace": namespace},
                }},
            }}}))
            .unwrap()
        };
        assert!(is_referent(&spec(None), StoreKind::ClusterSecretStore));
        assert!(!is_referent(
            &spec(Some("ops")),
            StoreKind::ClusterSecretStore
        ));
        assert!(!is_referent(&spec(None), StoreKind::SecretStore));
    }
}
