//! From a store reference to a provider client: finding the store, enforcing namespace boundaries and a
//! ClusterSecretStore's conditions, and resolving the store's AWS identity.

mod identity;
mod namespaces;
mod referenced;

use std::sync::Arc;

use aws_config::{Region, SdkConfig};
use aws_credential_types::Credentials;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use crate::api::{
    AwsAuthSecretRef, AwsProvider, ClusterSecretStore, SecretKeySelector, SecretStoreSpec,
    SessionTag, StoreKind,
};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::provider::Provider;
use crate::provider::aws::failover::{Failovers, StoreKey};
use crate::provider::aws::sts::RoleRequest;
use crate::provider::aws::{AwsSecretsManager, SharedReads};
use crate::provider::fake::FakeProvider;
use identity::{Identities, Source};
pub use identity::{IdentityKey, Plan};
use namespaces::NamespaceLabels;
pub use referenced::Referenced;

/// The ServiceAccount annotation that names the role of its web identity, as IRSA uses it.
pub const ROLE_ARN_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
const DEFAULT_AUDIENCE: &str = "sts.amazonaws.com";
/// Session tags the operator sets on every role it assumes; a store cannot set them.
pub const NAMESPACE_TAG: &str = "secretsync-namespace";
pub const STORE_TAG: &str = "secretsync-store";
/// Tokens are used once, to make a session; the API server's minimum lifetime is enough.
const TOKEN_LIFETIME_SECONDS: i64 = 600;

/// A store and who asks: a SecretStore's own namespace bounds everything it may read; a ClusterSecretStore
/// reads from the requesting ExternalSecret's namespace unless it names one.
pub struct StoreScope<'a> {
    pub kind: StoreKind,
    pub name: &'a str,
    pub store_namespace: Option<&'a str>,
    pub requester_namespace: Option<&'a str>,
}

impl StoreScope<'_> {
    pub fn store_key(&self) -> StoreKey {
        StoreKey {
            kind: self.kind,
            namespace: self.store_namespace.map(str::to_string),
            name: self.name.to_string(),
        }
    }

    /// The namespace the operator's session tags name: the ExternalSecret's, or a SecretStore's own.
    fn tenant_namespace(&self) -> Option<&str> {
        self.requester_namespace.or(self.store_namespace)
    }
}

/// Stores and the identities they resolve to, shared by the controllers and `secretsync check`.
pub struct Stores {
    client: Client,
    /// The operator's own AWS configuration (default credential chain, endpoint overrides such as
    /// `AWS_ENDPOINT_URL`), loaded once; every store's configuration is derived from it.
    aws: SdkConfig,
    metrics: Arc<Metrics>,
    identities: Identities,
    shared_reads: Arc<SharedReads>,
    /// Credentials Secrets and ServiceAccounts that stores name; the Secrets that `templateFrom` names
    /// share the Secrets' watches.
    secrets: Referenced<Secret>,
    service_accounts: Referenced<ServiceAccount>,
    namespace_labels: NamespaceLabels,
    /// Which region serves each store with failover regions.
    pub failovers: Failovers,
}

impl Stores {
    pub fn new(client: Client, aws: SdkConfig, metrics: Arc<Metrics>) -> Self {
        Stores {
            secrets: Referenced::new(client.clone()),
            service_accounts: Referenced::new(client.clone()),
            namespace_labels: NamespaceLabels::new(client.clone()),
            client,
            aws,
            metrics,
            identities: Identities::default(),
            shared_reads: Arc::default(),
            failovers: Failovers::default(),
        }
    }

    /// A Secret as its watch by name last saw it: for `templateFrom`, which shares the watches of the
    /// credentials Secrets.
    pub async fn referenced_secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>> {
        self.secrets.get(namespace, name).await
    }

    /// Refuses a namespace that the store's `conditions` keep out.
    pub async fn check_conditions(
        &self,
        store: &ClusterSecretStore,
        namespace: &str,
    ) -> Result<()> {
        let conditions = &store.spec.conditions;
        let labels = if namespaces::needs_labels(conditions) {
            self.namespace_labels.get(namespace).await?
        } else {
            Default::default()
        };
        if namespaces::allowed(conditions, namespace, &labels)? {
            Ok(())
        } else {
            Err(Error::StoreNotAllowed {
                store: store.name_any(),
                namespace: namespace.to_string(),
            })
        }
    }

    /// A client for the store's provider, with the store's identity.
    pub async fn provider(
        &self,
        spec: &SecretStoreSpec,
        scope: &StoreScope<'_>,
    ) -> Result<Provider> {
        match (&spec.provider.aws, &spec.provider.fake) {
            (Some(aws), None) => {
                let plan = self.plan(aws, scope).await?;
                Ok(Provider::Aws(Box::new(
                    self.aws_provider(aws, &plan, scope).await?,
                )))
            }
            (None, Some(fake)) => Ok(Provider::Fake(FakeProvider::new(fake))),
            _ => Err(Error::InvalidStoreConfig(
                "set exactly one provider: aws or fake".into(),
            )),
        }
    }

    /// A Secrets Manager client with the identity `plan` resolves to (a cached session when fresh), failing
    /// over as the store's serving region says.
    pub async fn aws_provider(
        &self,
        aws: &AwsProvider,
        plan: &Plan,
        scope: &StoreScope<'_>,
    ) -> Result<AwsSecretsManager> {
        let config = self
            .identities
            .config(
                &self.aws,
                plan,
                async |namespace: &str, name: &str, audiences: &[String]| {
                    self.token(namespace, name, audiences).await
                },
                &self.metrics,
            )
            .await?;
        let failover = (!aws.failover_regions.is_empty()).then(|| {
            let regions = std::iter::once(plan.region.to_string())
                .chain(aws.failover_regions.iter().cloned())
                .collect();
            self.failovers.get(scope.store_key(), regions)
        });
        Ok(AwsSecretsManager::new(
            &config,
            aws.prefix.as_deref(),
            plan.key(),
            self.metrics.clone(),
            self.shared_reads.clone(),
            failover,
        ))
    }

    /// Everything that decides the store's AWS identity, read from the cluster: static keys, the
    /// ServiceAccount's role, the role chain with its session tags.
    pub async fn plan(&self, aws: &AwsProvider, scope: &StoreScope<'_>) -> Result<Plan> {
        let region = aws
            .region
            .clone()
            .map(Region::new)
            .or_else(|| self.aws.region().cloned())
            .ok_or_else(|| {
                Error::InvalidStoreConfig(
                    "provider.aws.region is required: the operator's environment sets no AWS region".into(),
                )
            })?;
        let auth = aws.auth.as_ref();
        let source = match (
            auth.and_then(|a| a.secret_ref.as_ref()),
            auth.and_then(|a| a.jwt.as_ref()),
        ) {
            (Some(secret_ref), _) => self.static_keys(secret_ref, scope).await?,
            (None, Some(jwt)) => {
                let selector = &jwt.service_account_ref;
                let namespace = referenced_namespace(
                    "ServiceAccount",
                    &selector.name,
                    selector.namespace.as_deref(),
                    scope,
                )?;
                let role_arn = self.service_account_role(namespace, &selector.name).await?;
                let audiences = if selector.audiences.is_empty() {
                    vec![DEFAULT_AUDIENCE.to_string()]
                } else {
                    selector.audiences.clone()
                };
                Source::WebIdentity {
                    namespace: namespace.to_string(),
                    name: selector.name.clone(),
                    role_arn,
                    audiences,
                }
            }
            (None, None) => Source::Operator,
        };
        Ok(Plan {
            region,
            source,
            session_name: session_name(scope),
            chain: role_chain(aws, scope),
        })
    }

    async fn static_keys(
        &self,
        secret_ref: &AwsAuthSecretRef,
        scope: &StoreScope<'_>,
    ) -> Result<Source> {
        let session_token = match &secret_ref.session_token_secret_ref {
            Some(selector) => Some(self.read_key(selector, scope).await?),
            None => None,
        };
        let id = &secret_ref.access_key_id_secret_ref;
        let credentials = Credentials::new(
            self.read_key(id, scope).await?,
            self.read_key(&secret_ref.secret_access_key_secret_ref, scope)
                .await?,
            session_token,
            None,
            "secretsync-store",
        );
        let namespace = referenced_namespace("Secret", &id.name, id.namespace.as_deref(), scope)?;
        Ok(Source::Static {
            secret: format!("{namespace}/{}", id.name),
            credentials,
        })
    }

    async fn read_key(
        &self,
        selector: &SecretKeySelector,
        scope: &StoreScope<'_>,
    ) -> Result<String> {
        let namespace = referenced_namespace(
            "Secret",
            &selector.name,
            selector.namespace.as_deref(),
            scope,
        )?;
        let problem = |problem: String| Error::CredentialsSecret {
            namespace: namespace.to_string(),
            name: selector.name.clone(),
            problem,
        };
        let secret = self
            .secrets
            .get(namespace, &selector.name)
            .await?
            .ok_or_else(|| problem("not found".into()))?;
        let value = secret
            .data
            .as_ref()
            .and_then(|data| data.get(&selector.key))
            .ok_or_else(|| problem(format!("has no key {:?}", selector.key)))?;
        String::from_utf8(value.0.clone())
            .map(|v| v.trim().to_string())
            .map_err(|_| problem(format!("key {:?} is not UTF-8", selector.key)))
    }

    async fn service_account_role(&self, namespace: &str, name: &str) -> Result<String> {
        let account = self
            .service_accounts
            .get(namespace, name)
            .await?
            .ok_or_else(|| Error::ServiceAccountNotFound {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })?;
        account
            .annotations()
            .get(ROLE_ARN_ANNOTATION)
            .map(|arn| arn.trim().to_string())
            .filter(|arn| !arn.is_empty())
            .ok_or_else(|| Error::MissingRoleAnnotation {
                namespace: namespace.to_string(),
                name: name.to_string(),
            })
    }

    /// A fresh token of a ServiceAccount (TokenRequest API), for one STS exchange.
    async fn token(&self, namespace: &str, name: &str, audiences: &[String]) -> Result<String> {
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: audiences.to_vec(),
                expiration_seconds: Some(TOKEN_LIFETIME_SECONDS),
                bound_object_ref: None,
            },
            ..Default::default()
        };
        let failed = |detail: String| Error::ServiceAccountToken {
            namespace: namespace.clone(),
            name: name.clone(),
            detail,
        };
        let response = Api::<ServiceAccount>::namespaced(self.client.clone(), &namespace)
            .create_token_request(&name, &PostParams::default(), &request)
            .await
            .map_err(|err| match err {
                kube::Error::Api(status) if status.code == 404 => Error::ServiceAccountNotFound {
                    namespace: namespace.clone(),
                    name: name.clone(),
                },
                // Forbidden or refused: the operator's RBAC or the request, not a passing failure.
                kube::Error::Api(status)
                    if (400..500).contains(&status.code) && status.code != 429 =>
                {
                    failed(status.message.clone())
                }
                other => Error::from(other),
            })?;
        response
            .status
            .map(|status| status.token)
            .filter(|token| !token.is_empty())
            .ok_or_else(|| failed("the API server returned no token".into()))
    }
}

/// Whether a ClusterSecretStore's identity depends on the namespace using it, so that it cannot be checked
/// on its own: its credentials name no namespace and come from each ExternalSecret's ("referent"
/// authentication), or it assumes roles, whose sessions carry the asking namespace's tag.
pub fn depends_on_requester(spec: &SecretStoreSpec, kind: StoreKind) -> bool {
    let Some(aws) = spec.provider.aws.as_ref() else {
        return false;
    };
    let assumes_roles = aws.role.is_some() || !aws.additional_roles.is_empty();
    let Some(auth) = aws.auth.as_ref() else {
        return kind == StoreKind::ClusterSecretStore && assumes_roles;
    };
    let secret_ref_referent = auth
        .secret_ref
        .as_ref()
        .is_some_and(|r| selectors(r).any(|selector| selector.namespace.is_none()));
    let jwt_referent = auth
        .jwt
        .as_ref()
        .is_some_and(|jwt| jwt.service_account_ref.namespace.is_none());
    kind == StoreKind::ClusterSecretStore && (secret_ref_referent || jwt_referent || assumes_roles)
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

/// The namespace of an object a store refers to (a credentials Secret, a ServiceAccount).
fn referenced_namespace<'a>(
    what: &str,
    name: &str,
    named: Option<&'a str>,
    scope: &StoreScope<'a>,
) -> Result<&'a str> {
    let namespace = match scope.kind {
        StoreKind::SecretStore => match (named, scope.store_namespace) {
            (Some(named), Some(own)) if named != own => {
                return Err(Error::InvalidStoreConfig(format!(
                    "a SecretStore may only use {what}s in its own namespace {own:?}, not {named:?}"
                )));
            }
            (_, own) => own,
        },
        StoreKind::ClusterSecretStore => named.or(scope.requester_namespace),
    };
    namespace.ok_or_else(|| {
        Error::InvalidStoreConfig(format!(
            "{what} {name:?} names no namespace and no ExternalSecret asks for it"
        ))
    })
}

/// `additionalRoles` in order, then `role` with the store's externalID and tags. Every session carries the
/// operator's own tags, so that IAM can tell tenants apart by `aws:PrincipalTag`.
fn role_chain(aws: &AwsProvider, scope: &StoreScope<'_>) -> Vec<RoleRequest> {
    let mut ours = vec![SessionTag {
        key: STORE_TAG.into(),
        value: format!("{}/{}", scope.kind, scope.name),
    }];
    if let Some(namespace) = scope.tenant_namespace() {
        ours.insert(
            0,
            SessionTag {
                key: NAMESPACE_TAG.into(),
                value: namespace.to_string(),
            },
        );
    }
    let session_name = session_name(scope);
    let intermediate = aws.additional_roles.iter().map(|role_arn| RoleRequest {
        role_arn: role_arn.clone(),
        session_name: session_name.clone(),
        external_id: None,
        tags: ours.clone(),
        transitive_tag_keys: Vec::new(),
    });
    let last = aws.role.iter().map(|role_arn| RoleRequest {
        role_arn: role_arn.clone(),
        session_name: session_name.clone(),
        external_id: aws.external_id.clone(),
        tags: ours.iter().chain(&aws.session_tags).cloned().collect(),
        transitive_tag_keys: aws.transitive_tag_keys.clone(),
    });
    intermediate.chain(last).collect()
}

/// `secretsync-<namespace>-<store>`, within STS's 64 characters of `[\w+=,.@-]`, so that CloudTrail
/// shows who asked.
fn session_name(scope: &StoreScope<'_>) -> String {
    let name = match scope.tenant_namespace() {
        Some(namespace) => format!("secretsync-{namespace}-{}", scope.name),
        None => format!("secretsync-{}", scope.name),
    };
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "+=,.@-_".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope<'a>(
        kind: StoreKind,
        store_namespace: Option<&'a str>,
        requester_namespace: Option<&'a str>,
    ) -> StoreScope<'a> {
        StoreScope {
            kind,
            name: "aws",
            store_namespace,
            requester_namespace,
        }
    }

    #[test]
    fn secret_store_cannot_reach_other_namespaces() {
        let scope = scope(StoreKind::SecretStore, Some("team-a"), Some("team-a"));
        let namespace = |named| referenced_namespace("Secret", "creds", named, &scope);
        assert_eq!(namespace(None).unwrap(), "team-a");
        assert_eq!(namespace(Some("team-a")).unwrap(), "team-a");
        let err = namespace(Some("team-b")).unwrap_err();
        assert_eq!(err.reason(), "InvalidStoreConfig");
    }

    #[test]
    fn cluster_store_uses_the_referent_namespace() {
        let scope = scope(StoreKind::ClusterSecretStore, None, Some("team-b"));
        let namespace = |named| referenced_namespace("ServiceAccount", "app", named, &scope);
        assert_eq!(namespace(None).unwrap(), "team-b");
        assert_eq!(namespace(Some("ops")).unwrap(), "ops");
        let alone = StoreScope {
            requester_namespace: None,
            ..scope
        };
        let err = referenced_namespace("ServiceAccount", "app", None, &alone).unwrap_err();
        assert_eq!(err.reason(), "InvalidStoreConfig");
    }

    fn aws(json: serde_json::Value) -> SecretStoreSpec {
        serde_json::from_value(serde_json::json!({"provider": {"aws": json}})).unwrap()
    }

    #[test]
    fn a_cluster_store_depends_on_the_requester_when_it_leaves_a_namespace_out_or_assumes_roles() {
        let keys = |namespace: Option<&str>| {
            aws(serde_json::json!({
                "service": "SecretsManager",
                "auth": {"secretRef": {
                    "accessKeyIDSecretRef": {"name": "c", "key": "id", "namespace": "ops"},
                    "secretAccessKeySecretRef": {"name": "c", "key": "secret", "namespace": namespace},
                }},
            }))
        };
        let jwt = |namespace: Option<&str>| {
            aws(serde_json::json!({
                "service": "SecretsManager",
                "auth": {"jwt": {"serviceAccountRef": {"name": "app", "namespace": namespace}}},
            }))
        };
        for spec in [keys(None), jwt(None)] {
            assert!(depends_on_requester(&spec, StoreKind::ClusterSecretStore));
            assert!(!depends_on_requester(&spec, StoreKind::SecretStore));
        }
        for spec in [keys(Some("ops")), jwt(Some("ops"))] {
            assert!(!depends_on_requester(&spec, StoreKind::ClusterSecretStore));
        }
        let role = aws(serde_json::json!({
            "service": "SecretsManager", "role": "arn:aws:iam::123456789012:role/r",
        }));
        assert!(depends_on_requester(&role, StoreKind::ClusterSecretStore));
        assert!(!depends_on_requester(&role, StoreKind::SecretStore));
    }

    #[test]
    fn every_role_carries_the_tenant_tags_and_only_the_last_the_stores_own() {
        let spec = aws(serde_json::json!({
            "service": "SecretsManager",
            "additionalRoles": ["arn:aws:iam::111111111111:role/hop"],
            "role": "arn:aws:iam::222222222222:role/reader",
            "externalID": "shared-id",
            "sessionTags": [{"key": "team", "value": "a"}],
            "transitiveTagKeys": ["team"],
        }));
        let aws = spec.provider.aws.unwrap();
        let chain = role_chain(
            &aws,
            &scope(StoreKind::ClusterSecretStore, None, Some("team-a")),
        );
        let tags = |request: &RoleRequest| -> Vec<String> {
            request
                .tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect()
        };
        assert_eq!(chain.len(), 2);
        assert_eq!(chain[0].role_arn, "arn:aws:iam::111111111111:role/hop");
        assert_eq!(
            tags(&chain[0]),
            [
                "secretsync-namespace=team-a",
                "secretsync-store=ClusterSecretStore/aws"
            ]
        );
        assert_eq!(chain[0].external_id, None);
        assert_eq!(chain[1].external_id.as_deref(), Some("shared-id"));
        assert_eq!(
            tags(&chain[1]),
            [
                "secretsync-namespace=team-a",
                "secretsync-store=ClusterSecretStore/aws",
                "team=a"
            ]
        );
        assert_eq!(chain[1].transitive_tag_keys, ["team"]);
        assert_eq!(chain[1].session_name, "secretsync-team-a-aws");
    }

    #[test]
    fn session_names_fit_sts() {
        let long = "n".repeat(80);
        let name = session_name(&StoreScope {
            kind: StoreKind::SecretStore,
            name: "my_store",
            store_namespace: Some(&long),
            requester_namespace: None,
        });
        assert_eq!(name.len(), 64);
        assert!(name.starts_with("secretsync-nnn"));
        let validation = session_name(&scope(StoreKind::ClusterSecretStore, None, None));
        assert_eq!(validation, "secretsync-aws");
    }
}
