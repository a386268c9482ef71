//! A store's AWS identity: where its credentials start (the operator's own, static keys, a ServiceAccount's
//! web identity), the roles assumed from there, and one cached session per distinct identity, so that STS
//! is called when a session is about to expire, not on every sync.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_config::identity::IdentityCache;
use aws_config::{Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use sha2::{Digest, Sha256};

use crate::error::Result;
use crate::metrics::Metrics;
use crate::provider::aws::sts::{self, RoleRequest};

/// A session is replaced this long before it expires, so that no read starts with credentials about to lapse.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Sessions unused for this long are dropped (their stores were deleted or changed).
const IDLE_EVICTION: Duration = Duration::from_secs(6 * 3600);

/// Where a store's credentials start.
pub enum Source {
    /// The operator's own credentials: the SDK default chain (IRSA, EKS Pod Identity, env, profile).
    Operator,
    /// Keys read from Kubernetes Secrets; `secret` names them for messages.
    Static {
        secret: String,
        credentials: Credentials,
    },
    /// A token of this ServiceAccount exchanged for a session of the role its annotation names.
    WebIdentity {
        namespace: String,
        name: String,
        role_arn: String,
        audiences: Vec<String>,
    },
}

/// Everything that decides a store's identity, resolved from its spec and the cluster but not yet from AWS.
pub struct Plan {
    pub region: Region,
    pub source: Source,
    /// The web identity session's name (CloudTrail shows it).
    pub session_name: String,
    pub chain: Vec<RoleRequest>,
}

impl Plan {
    pub fn key(&self) -> IdentityKey {
        let source = match &self.source {
            Source::Operator => SourceKey::Operator,
            // A digest, so that the cache key holds no secret and a rotated key is a new identity.
            Source::Static { credentials, .. } => {
                let mut digest = Sha256::new();
                for part in [
                    credentials.access_key_id(),
                    credentials.secret_access_key(),
                    credentials.session_token().unwrap_or_default(),
                ] {
                    digest.update(part.as_bytes());
                    digest.update([0]);
                }
                SourceKey::Static(digest.finalize().into())
            }
            Source::WebIdentity {
                namespace,
                name,
                role_arn,
                audiences,
            } => SourceKey::WebIdentity {
                namespace: namespace.clone(),
                name: name.clone(),
                role_arn: role_arn.clone(),
                audiences: audiences.clone(),
                session_name: self.session_name.clone(),
            },
        };
        IdentityKey {
            region: self.region.to_string(),
            source,
            chain: self.chain.clone(),
        }
    }
}

/// What `secretsync check` prints: every step, and never a credential.
impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Operator => write!(f, "the operator's own credentials (SDK default chain)")?,
            Source::Static { secret, .. } => write!(f, "static keys from Secret {secret}")?,
            Source::WebIdentity {
                namespace,
                name,
                role_arn,
                audiences,
            } => write!(
                f,
                "a token of ServiceAccount {namespace}/{name} (audiences {}) exchanged for {role_arn} as session {}",
                audiences.join(","),
                self.session_name
            )?,
        }
        for step in &self.chain {
            write!(
                f,
                "\n  then assume {} as session {}",
                step.role_arn, step.session_name
            )?;
            if step.external_id.is_some() {
                f.write_str(", with externalID")?;
            }
            let tags: Vec<_> = step
                .tags
                .iter()
                .map(|t| format!("{}={}", t.key, t.value))
                .collect();
            write!(f, ", tags {}", tags.join(" "))?;
            if !step.transitive_tag_keys.is_empty() {
                write!(f, " (transitive {})", step.transitive_tag_keys.join(","))?;
            }
        }
        Ok(())
    }
}

/// Tells identities apart without holding a credential.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    region: String,
    source: SourceKey,
    chain: Vec<RoleRequest>,
}

#[cfg(test)]
impl IdentityKey {
    /// The operator's own identity in `region`, for tests of what is keyed by identity.
    pub fn operator(region: &str) -> Self {
        IdentityKey {
            region: region.to_string(),
            source: SourceKey::Operator,
            chain: Vec::new(),
        }
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
enum SourceKey {
    Operator,
    Static([u8; 32]),
    WebIdentity {
        namespace: String,
        name: String,
        role_arn: String,
        audiences: Vec<String>,
        session_name: String,
    },
}

#[derive(Clone)]
struct Session {
    config: SdkConfig,
    expires: Option<SystemTime>,
}

impl Session {
    fn fresh(&self) -> bool {
        self.expires
            .is_none_or(|expires| SystemTime::now() + REFRESH_MARGIN < expires)
    }
}

struct Slot {
    /// Held while a session resolves, so that concurrent syncs of one identity make one set of STS calls.
    session: tokio::sync::Mutex<Option<Session>>,
    last_used: Mutex<Instant>,
}

/// Sessions by identity.
#[derive(Default)]
pub struct Identities {
    slots: Mutex<HashMap<IdentityKey, Arc<Slot>>>,
    last_sweep: Mutex<Option<Instant>>,
}

impl Identities {
    /// The SDK configuration (region and credentials) for `plan`: the cached session when it is fresh,
    /// otherwise a new one. `token` (of a ServiceAccount: namespace, name, audiences) is asked for only
    /// when a web identity session must be made.
    pub async fn config(
        &self,
        base: &SdkConfig,
        plan: &Plan,
        token: impl AsyncFnOnce(&str, &str, &[String]) -> Result<String>,
        metrics: &Metrics,
    ) -> Result<SdkConfig> {
        let slot = self.slot(plan.key());
        let mut session = slot.session.lock().await;
        if let Some(current) = session.as_ref().filter(|s| s.fresh()) {
            return Ok(current.config.clone());
        }
        let resolved = resolve(base, plan, token, metrics).await?;
        *session = Some(resolved.clone());
        Ok(resolved.config)
    }

    fn slot(&self, key: IdentityKey) -> Arc<Slot> {
        let now = Instant::now();
        let mut slots = self.slots.lock().expect("never poisoned");
        let mut last_sweep = self.last_sweep.lock().expect("never poisoned");
        if last_sweep.is_none_or(|at| now.duration_since(at) > Duration::from_secs(60)) {
            slots.retain(|_, slot| {
                now.duration_since(*slot.last_used.lock().expect("never poisoned")) < IDLE_EVICTION
            });
            *last_sweep = Some(now);
        }
        let slot = slots.entry(key).or_insert_with(|| {
            Arc::new(Slot {
                session: tokio::sync::Mutex::new(None),
                last_used: Mutex::new(now),
            })
        });
        *slot.last_used.lock().expect("never poisoned") = now;
        slot.clone()
    }
}

async fn resolve(
    base: &SdkConfig,
    plan: &Plan,
    token: impl AsyncFnOnce(&str, &str, &[String]) -> Result<String>,
    metrics: &Metrics,
) -> Result<Session> {
    let regional = base.to_builder().region(plan.region.clone()).build();
    let mut session = match &plan.source {
        Source::Operator => Session {
            config: regional,
            expires: None,
        },
        Source::Static { credentials, .. } => Session {
            config: with_credentials(&regional, credentials.clone()),
            expires: None,
        },
        Source::WebIdentity {
            namespace,
            name,
            role_arn,
            audiences,
        } => {
            let token = token(namespace, name, audiences).await?;
            let credentials = sts::assume_role_with_web_identity(
                &regional,
                role_arn,
                &plan.session_name,
                &token,
                metrics,
            )
            .await?;
            Session {
                expires: credentials.expiry(),
                config: with_credentials(&regional, credentials),
            }
        }
    };
    for step in &plan.chain {
        let credentials = sts::assume_role(&session.config, step, metrics).await?;
        session = Session {
            expires: credentials.expiry(),
            config: with_credentials(&session.config, credentials),
        };
    }
    Ok(session)
}

/// Fixed credentials need no identity cache; a cache would keep an entry per session made.
fn with_credentials(config: &SdkConfig, credentials: Credentials) -> SdkConfig {
    config
        .to_builder()
        .credentials_provider(SharedCredentialsProvider::new(credentials))
        .identity_cache(IdentityCache::no_cache())
        .build()
}
