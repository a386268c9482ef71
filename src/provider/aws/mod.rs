//! AWS Secrets Manager, the STS calls that give a store its identity, and the SQS queue that brings Secrets
//! Manager's events.

mod coalesce;
mod errors;
pub mod events;
pub mod failover;
mod stages;
pub mod sts;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_config::timeout::TimeoutConfig;

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::operation::describe_secret::DescribeSecretOutput;
use aws_sdk_secretsmanager::types::{
    Filter, FilterNameStringType, SecretListEntry, SecretValueEntry, Tag,
};

use super::{RemoteSecret, RemoteValue, SecretProvider, Version};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::store::IdentityKey;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::http::Response;
use errors::{classify, classify_code, error_code};
pub use stages::Stages;

pub use coalesce::{ReadAhead, SharedReads};
use failover::Failover;

const PROVIDER: &str = "AWS/SecretsManager";
/// A black-holed connection must not hold a sync forever: each try, and each call with its retries, has a
/// deadline; past it the call fails as a `ProviderError` and backs off.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// BatchGetSecretValue takes at most this many secret ids.
const BATCH_LIMIT: usize = 20;

/// The version stages of one remote secret: stage → VersionId.
/// The SDK configuration from the environment (IRSA, keys, region, `AWS_ENDPOINT_URL`), with our timeouts.
/// Every store's configuration derives from it.
pub async fn load_config() -> SdkConfig {
    aws_config::from_env()
        .http_client(shared_https_client())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                .operation_timeout(OPERATION_TIMEOUT)
                .build(),
        )
        .load()
        .await
}

/// One HTTPS client, with its connection pool, for every store and identity. Without it the SDK makes one
/// for each service client, and a sync makes three: each opened its own connections and parsed the
/// system's root certificates again (about a fifth of the operator's CPU in a first sync at 10,000).
/// Built as the SDK's default is: rustls with aws-lc, proxies from the environment.
fn shared_https_client() -> SharedHttpClient {
    use aws_smithy_http_client::{Builder, Connector, proxy::ProxyConfig, tls};
    Builder::new().build_with_connector_fn(|settings, components| {
        let mut connector = Connector::builder().tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ));
        connector.set_connector_settings(settings.cloned());
        if let Some(components) = components {
            connector.set_sleep_impl(components.sleep_impl());
        }
        connector.set_proxy_config(Some(ProxyConfig::from_env()));
        connector.build()
    })
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Versions {
    pub name: String,
    pub arn: Option<String>,
    pub stages: Stages,
    /// Listed by a failover region, which may lag behind its primary.
    pub replica: bool,
}

#[derive(Clone)]
pub struct AwsSecretsManager {
    /// The store's region first, then its failover regions.
    regions: Arc<[Regional]>,
    /// Which of `regions` serves; none without failover regions.
    failover: Option<Arc<Failover>>,
    sqs: aws_sdk_sqs::Client,
    prefix: String,
    metrics: Arc<Metrics>,
    /// Whose session the clients use: stores that resolve to the same identity share version checks.
    pub identity: IdentityKey,
    shared_reads: Arc<SharedReads>,
}

/// The clients of one region.
struct Regional {
    secrets: aws_sdk_secretsmanager::Client,
    sts: aws_sdk_sts::Client,
    /// The failover region these clients reach; none for the primary.
    replica: Option<String>,
}

impl AwsSecretsManager {
    /// Clients for one store: `config` carries the store's region and identity; `prefix` is prepended to
    /// every remote key; reads of current values go through `shared_reads`; `failover` names the regions
    /// to fail over to after the primary, and which serves.
    pub fn new(
        config: &SdkConfig,
        prefix: Option<&str>,
        identity: IdentityKey,
        metrics: Arc<Metrics>,
        shared_reads: Arc<SharedReads>,
        failover: Option<Arc<Failover>>,
    ) -> Self {
        let primary = Regional {
            secrets: aws_sdk_secretsmanager::Client::new(config),
            sts: aws_sdk_sts::Client::new(config),
            replica: None,
        };
        let replicas = failover.iter().flat_map(|failover| {
            failover.regions()[1..].iter().map(|region| {
                let secrets = aws_sdk_secretsmanager::config::Builder::from(config)
                    .region(aws_config::Region::new(region.clone()))
                    .build();
                let sts = aws_sdk_sts::config::Builder::from(config)
                    .region(aws_config::Region::new(region.clone()))
                    .build();
                Regional {
                    secrets: aws_sdk_secretsmanager::Client::from_conf(secrets),
                    sts: aws_sdk_sts::Client::from_conf(sts),
                    replica: Some(region.clone()),
                }
            })
        });
        AwsSecretsManager {
            regions: std::iter::once(primary).chain(replicas).collect(),
            failover,
            sqs: aws_sdk_sqs::Client::new(config),
            prefix: prefix.unwrap_or_default().to_string(),
            metrics,
            identity,
            shared_reads,
        }
    }

    /// Makes a call in the region that serves, and in the next ones while regions fail as an outage does.
    /// A replica that does not hold a secret is not a secret gone: that is reported as the outage it is,
    /// so that no Secret is deleted for it.
    async fn regional<'a, T, Fut>(&'a self, call: impl Fn(&'a Regional) -> Fut) -> Result<T>
    where
        Fut: Future<Output = Result<T>>,
    {
        let Some(failover) = &self.failover else {
            return call(&self.regions[0]).await;
        };
        let mut outage = None;
        for index in failover.order() {
            let region = &self.regions[index];
            let answer = match failover.time_limit(index) {
                Some(limit) => tokio::time::timeout(limit, call(region))
                    .await
                    .unwrap_or_else(|_| {
                        Err(Error::Unavailable {
                            call: "retry of the primary region",
                            key: None,
                            detail: format!("no answer within {limit:?}"),
                        })
                    }),
                None => call(region).await,
            };
            match answer {
                Err(err @ Error::Unavailable { .. }) => {
                    failover.failed(index, &err.to_string());
                    outage = Some(err);
                }
                Err(Error::RemoteKeyNotFound { key, detail }) if region.replica.is_some() => {
                    failover.answered(index);
                    let region = region.replica.as_deref().unwrap_or_default();
                    return Err(Error::Unavailable {
                        call: "GetSecretValue",
                        key: Some(key),
                        detail: format!(
                            "the primary region fails and failover region {region} does not hold it: {detail}"
                        ),
                    });
                }
                answer => {
                    failover.answered(index);
                    return answer;
                }
            }
        }
        Err(outage.expect("the primary region is always tried"))
    }

    /// Whether failover region `region` holds version `version_id` of `key` (with a stage): a replica
    /// that does not lags behind, and what it serves is older.
    pub async fn replica_holds(&self, region: &str, key: &str, version_id: &str) -> Result<bool> {
        let Some(regional) = self
            .regions
            .iter()
            .find(|r| r.replica.as_deref() == Some(region))
        else {
            return Ok(false);
        };
        let output = self.describe_in(regional, key).await?;
        Ok(output
            .version_ids_to_stages()
            .is_some_and(|versions| versions.contains_key(version_id)))
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The same clients, for full secret names or ARNs (version checks span every store's prefix).
    pub fn unprefixed(&self) -> Self {
        AwsSecretsManager {
            prefix: String::new(),
            ..self.clone()
        }
    }

    fn record<T, E: ProvideErrorMetadata>(
        &self,
        call: &str,
        result: &std::result::Result<T, SdkError<E, Response>>,
    ) {
        self.metrics
            .provider_call(PROVIDER, call, error_code(result).as_deref());
    }

    /// The stages of every secret whose name starts with `name_prefix` (all secrets when empty), 100 per
    /// call, without reading a value. Secrets scheduled for deletion are left out.
    pub async fn list_versions(&self, name_prefix: &str) -> Result<Vec<Versions>> {
        let mut filters = Vec::new();
        if !name_prefix.is_empty() {
            filters.push(filter(FilterNameStringType::Name, name_prefix.to_string()));
        }
        // Each page is cut down to names and stages as it comes, rather than every whole entry (dates, tags,
        // description) of a pass held at once: a pass at 100,000 ExternalSecrets lists 25,000.
        // A replica's listing names its ARNs in its own region; the secrets are watched as the primary's.
        let primary = self
            .failover
            .as_ref()
            .map(|failover| &failover.regions()[0]);
        self.list(filters, |entry, region| {
            Some(Versions {
                name: entry.name?,
                arn: match primary {
                    Some(primary) => entry.arn.map(|arn| with_region(&arn, primary)),
                    None => entry.arn,
                },
                stages: by_stage(entry.secret_versions_to_stages.as_ref()),
                replica: region.replica.is_some(),
            })
        })
        .await
    }

    /// Every page of a ListSecrets (100 per call), each entry kept as `keep` makes it; all pages from one
    /// region, which `keep` is told.
    async fn list<T>(
        &self,
        filters: Vec<Filter>,
        keep: impl Fn(SecretListEntry, &Regional) -> Option<T>,
    ) -> Result<Vec<T>> {
        self.regional(|region| self.list_in(region, filters.clone(), &keep))
            .await
    }

    async fn list_in<T>(
        &self,
        region: &Regional,
        filters: Vec<Filter>,
        keep: &impl Fn(SecretListEntry, &Regional) -> Option<T>,
    ) -> Result<Vec<T>> {
        let mut listed = Vec::new();
        let mut next_token = None;
        loop {
            let result = region
                .secrets
                .list_secrets()
                .set_filters(Some(filters.clone()))
                .set_next_token(next_token)
                .max_results(100)
                .send()
                .await;
            self.record("ListSecrets", &result);
            let page = result.map_err(|err| classify("ListSecrets", None, err))?;
            listed.extend(
                page.secret_list
                    .into_iter()
                    .flatten()
                    .filter_map(|entry| keep(entry, region)),
            );
            next_token = page.next_token;
            if next_token.is_none() {
                return Ok(listed);
            }
        }
    }

    async fn describe(&self, key: &str) -> Result<DescribeSecretOutput> {
        self.regional(|region| self.describe_in(region, key)).await
    }

    async fn describe_in(&self, region: &Regional, key: &str) -> Result<DescribeSecretOutput> {
        let result = region
            .secrets
            .describe_secret()
            .secret_id(in_region(&format!("{}{key}", self.prefix), region))
            .send()
            .await;
        self.record("DescribeSecret", &result);
        result.map_err(|err| classify("DescribeSecret", Some(key), err))
    }

    /// The stages of one secret, always current (DescribeSecret reads no value).
    pub async fn describe_versions(&self, key: &str) -> Result<Versions> {
        self.regional(|region| async move {
            let output = self.describe_in(region, key).await?;
            Ok(Versions {
                name: output.name().unwrap_or(key).to_string(),
                arn: output.arn().map(str::to_string),
                stages: by_stage(output.version_ids_to_stages()),
                replica: region.replica.is_some(),
            })
        })
        .await
    }

    /// The current values of `asked` and of `ahead` (read ahead for first syncs), read now: 20 a call.
    /// Where a policy allows GetSecretValue only, each asked secret is read on its own and `ahead` is left.
    async fn read_current(
        &self,
        asked: &[String],
        ahead: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let keys: Vec<String> = asked.iter().chain(ahead).cloned().collect();
        let mut read = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(BATCH_LIMIT) {
            match self.batch_chunk(chunk).await {
                Ok(chunk_read) => read.extend(chunk_read),
                // A policy written for External Secrets Operator allows GetSecretValue only.
                Err(Error::AccessDenied { .. }) => {
                    let current = &Version::parse(None);
                    let one_by_one =
                        chunk
                            .iter()
                            .filter(|key| asked.contains(key))
                            .map(|key| async move {
                                (key.clone(), self.get_secret(key, current).await)
                            });
                    read.extend(futures::future::join_all(one_by_one).await);
                }
                Err(err) => return Err(err),
            }
        }
        Ok(read)
    }

    /// The current values of `keys` for a first sync: values read shortly before count, and the calls
    /// carry what `upcoming` first syncs will need.
    pub async fn current_for_first_sync(
        &self,
        keys: &[String],
        upcoming: Arc<dyn ReadAhead>,
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        self.shared_reads.current(self, keys, Some(upcoming)).await
    }

    /// One chunk of a batched read. A secret the answer does not name is read on its own.
    async fn batch_chunk(&self, keys: &[String]) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        self.regional(|region| self.batch_chunk_in(region, keys))
            .await
    }

    async fn batch_chunk_in(
        &self,
        region: &Regional,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        let ids: Vec<String> = keys
            .iter()
            .map(|k| in_region(&format!("{}{k}", self.prefix), region))
            .collect();
        let result = region
            .secrets
            .batch_get_secret_value()
            .set_secret_id_list(Some(ids.clone()))
            .send()
            .await;
        self.record("BatchGetSecretValue", &result);
        let output = result.map_err(|err| classify("BatchGetSecretValue", None, err))?;
        let mut read = Vec::new();
        for (key, id) in keys.iter().zip(&ids) {
            let named = |name: Option<&str>, arn: Option<&str>| {
                name == Some(id.as_str()) || arn == Some(id.as_str())
            };
            if let Some(entry) = output
                .secret_values()
                .iter()
                .find(|e| named(e.name(), e.arn()))
            {
                read.push((key.clone(), from_entry(key, entry, region)));
            } else if let Some(error) = output
                .errors()
                .iter()
                .find(|e| e.secret_id() == Some(id.as_str()))
            {
                let code = error.error_code().unwrap_or_default();
                self.metrics
                    .provider_error(PROVIDER, "BatchGetSecretValue", code);
                let detail = format!("{code}: {}", error.message().unwrap_or_default());
                let err = classify_code("BatchGetSecretValue", Some(key), code, detail, None);
                read.push((key.clone(), Err(err)));
            } else {
                let current = Version::parse(None);
                read.push((key.clone(), self.get_in(region, key, &current).await));
            }
        }
        Ok(read)
    }
}

fn by_stage(versions_to_stages: Option<&std::collections::HashMap<String, Vec<String>>>) -> Stages {
    versions_to_stages
        .into_iter()
        .flatten()
        .flat_map(|(id, stages)| stages.iter().map(move |stage| (stage.clone(), id.clone())))
        .collect()
}

/// A secret's id as `region` knows it: a replica's ARN names its own region.
fn in_region(id: &str, region: &Regional) -> String {
    match &region.replica {
        Some(replica) => with_region(id, replica),
        None => id.to_string(),
    }
}

/// An ARN with its region replaced; a name as it is.
fn with_region(id: &str, region: &str) -> String {
    match id.strip_prefix("arn:") {
        Some(arn) => {
            let mut fields: Vec<&str> = arn.splitn(5, ':').collect();
            if fields.len() == 5 {
                fields[2] = region;
            }
            format!("arn:{}", fields.join(":"))
        }
        None => id.to_string(),
    }
}

fn from_entry(key: &str, entry: &SecretValueEntry, region: &Regional) -> Result<RemoteSecret> {
    let value = remote_value(
        key,
        entry.secret_string.clone(),
        entry.secret_binary.clone().map(|b| b.into_inner()),
    )?;
    Ok(RemoteSecret {
        version_id: entry.version_id.clone(),
        stages: entry.version_stages.clone().unwrap_or_default(),
        value,
        read_at: None,
        replica: region.replica.clone(),
    })
}

fn remote_value(key: &str, text: Option<String>, binary: Option<Vec<u8>>) -> Result<RemoteValue> {
    match (text, binary) {
        (Some(text), _) => Ok(RemoteValue::Text(text)),
        (None, Some(bytes)) => Ok(RemoteValue::Binary(bytes)),
        (None, None) => Err(Error::InvalidRemoteValue {
            key: key.to_string(),
            problem: "the version holds no value".into(),
        }),
    }
}

impl AwsSecretsManager {
    async fn get_in(
        &self,
        region: &Regional,
        key: &str,
        version: &Version,
    ) -> Result<RemoteSecret> {
        let request = region
            .secrets
            .get_secret_value()
            .secret_id(in_region(&format!("{}{key}", self.prefix), region));
        let request = match version {
            Version::Stage(stage) => request.version_stage(stage),
            Version::Id(id) => request.version_id(id),
        };
        let result = request.send().await;
        self.record("GetSecretValue", &result);
        let label = match version {
            Version::Stage(stage) if stage == Version::CURRENT => key.to_string(),
            other => format!("{key}@{other}"),
        };
        let output = result.map_err(|err| classify("GetSecretValue", Some(&label), err))?;
        let value = remote_value(
            key,
            output.secret_string,
            output.secret_binary.map(|b| b.into_inner()),
        )?;
        Ok(RemoteSecret {
            version_id: output.version_id,
            stages: output.version_stages.unwrap_or_default(),
            value,
            read_at: None,
            replica: region.replica.clone(),
        })
    }
}

impl SecretProvider for AwsSecretsManager {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        self.regional(|region| self.get_in(region, key, version))
            .await
    }

    async fn get_current_batch(
        &self,
        keys: &[String],
    ) -> Result<Vec<(String, Result<RemoteSecret>)>> {
        self.shared_reads.current(self, keys, None).await
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        Ok(tag_map(self.describe(key).await?.tags()))
    }

    async fn list_names(
        &self,
        path: Option<&str>,
        tags: &BTreeMap<String, String>,
    ) -> Result<Vec<String>> {
        let name_prefix = format!("{}{}", self.prefix, path.unwrap_or_default());
        let mut filters = Vec::new();
        if !name_prefix.is_empty() {
            filters.push(filter(FilterNameStringType::Name, name_prefix.clone()));
        }
        // The service matches tag keys and values independently; pairs are checked below.
        for (key, value) in tags {
            filters.push(filter(FilterNameStringType::TagKey, key.clone()));
            filters.push(filter(FilterNameStringType::TagValue, value.clone()));
        }
        self.list(filters, |entry, _| {
            let secret_tags = tag_map(entry.tags());
            let tagged = tags.iter().all(|(k, v)| secret_tags.get(k) == Some(v));
            // The name filter matches words anywhere in the name; only a true prefix counts.
            let name = entry.name()?;
            (tagged && name.starts_with(&name_prefix))
                .then(|| name[self.prefix.len()..].to_string())
        })
        .await
    }

    async fn validate(&self) -> Result<String> {
        self.regional(|region| sts::caller_identity(&region.sts, &self.metrics))
            .await
    }
}

fn filter(key: FilterNameStringType, value: String) -> Filter {
    Filter::builder().key(key).values(value).build()
}

fn tag_map(tags: &[Tag]) -> BTreeMap<String, String> {
    tags.iter()
        .filter_map(|tag| Some((tag.key()?.to_string(), tag.value()?.to_string())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arns_move_to_another_region_and_names_stay() {
        assert_eq!(
            with_region(
                "arn:aws:secretsmanager:us-east-1:123456789012:secret:team-a/db-AbCdEf",
                "us-west-2"
            ),
            "arn:aws:secretsmanager:us-west-2:123456789012:secret:team-a/db-AbCdEf"
        );
        assert_eq!(with_region("team-a/db", "us-west-2"), "team-a/db");
    }
}
