//! AWS Secrets Manager.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_config::{Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_secretsmanager::types::{Filter, FilterNameStringType, Tag};

use super::{RemoteSecret, RemoteValue, SecretProvider, Version};
use crate::api;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

const PROVIDER: &str = "AWS/SecretsManager";

pub struct AwsSecretsManager {
    secrets: aws_sdk_secretsmanager::Client,
    sts: aws_sdk_sts::Client,
    prefix: String,
    metrics: Arc<Metrics>,
}

impl AwsSecretsManager {
    /// Clients for one store. `base` is the operator's own configuration (default credential chain, endpoint
    /// overrides such as `AWS_ENDPOINT_URL`); `credentials` replace its credentials when the store has its own.
    pub fn new(
        base: &SdkConfig,
        spec: &api::AwsProvider,
        credentials: Option<Credentials>,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        let region = spec
            .region
            .clone()
            .map(Region::new)
            .or_else(|| base.region().cloned())
            .ok_or_else(|| {
                Error::InvalidStoreConfig(
                    "provider.aws.region is required: the operator's environment sets no AWS region".into(),
                )
            })?;
        let mut config = base.to_builder().region(region);
        if let Some(credentials) = credentials {
            config = config.credentials_provider(SharedCredentialsProvider::new(credentials));
        }
        let config = config.build();
        Ok(AwsSecretsManager {
            secrets: aws_sdk_secretsmanager::Client::new(&config),
            sts: aws_sdk_sts::Client::new(&config),
            prefix: spec.prefix.clone().unwrap_or_default(),
            metrics,
        })
    }

    fn record<T, E>(&self, call: &str, result: &std::result::Result<T, E>) {
        self.metrics.provider_call(PROVIDER, call, result.is_ok());
    }
}

impl SecretProvider for AwsSecretsManager {
    async fn get_secret(&self, key: &str, version: &Version) -> Result<RemoteSecret> {
        let request = self
            .secrets
            .get_secret_value()
            .secret_id(format!("{}{key}", self.prefix));
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
        let value = match (output.secret_string, output.secret_binary) {
            (Some(text), _) => RemoteValue::Text(text),
            (None, Some(blob)) => RemoteValue::Binary(blob.into_inner()),
            (None, None) => {
                return Err(Error::InvalidRemoteValue {
                    key: key.to_string(),
                    problem: "the version holds no value".into(),
                });
            }
        };
        Ok(RemoteSecret {
            version_id: output.version_id,
            value,
        })
    }

    async fn get_tags(&self, key: &str) -> Result<BTreeMap<String, String>> {
        let result = self
            .secrets
            .describe_secret()
            .secret_id(format!("{}{key}", self.prefix))
            .send()
            .await;
        self.record("DescribeSecret", &result);
        let output = result.map_err(|err| classify("DescribeSecret", Some(key), err))?;
        Ok(tag_map(output.tags()))
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
        let mut names = Vec::new();
        let mut next_token = None;
        loop {
            let result = self
                .secrets
                .list_secrets()
                .set_filters(Some(filters.clone()))
                .set_next_token(next_token)
                .max_results(100)
                .send()
                .await;
            self.record("ListSecrets", &result);
            let page = result.map_err(|err| classify("ListSecrets", None, err))?;
            for entry in page.secret_list() {
                let secret_tags = tag_map(entry.tags());
                let tagged = tags.iter().all(|(k, v)| secret_tags.get(k) == Some(v));
                // The name filter matches words anywhere in the name; only a true prefix counts.
                let name = entry
                    .name()
                    .and_then(|n| n.strip_prefix(&name_prefix).map(|_| n));
                if let (true, Some(name)) = (tagged, name) {
                    names.push(name[self.prefix.len()..].to_string());
                }
            }
            next_token = page.next_token;
            if next_token.is_none() {
                break;
            }
        }
        Ok(names)
    }

    async fn validate(&self) -> Result<String> {
        let result = self.sts.get_caller_identity().send().await;
        self.record("GetCallerIdentity", &result);
        let identity = result.map_err(|err| classify("GetCallerIdentity", None, err))?;
        Ok(identity.arn.unwrap_or_default())
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

/// Maps an SDK error to our error classes by its AWS error code, falling back on the HTTP status: an
/// access denial can come back as a bare 403 whose body the SDK cannot parse.
fn classify<E>(
    call: &'static str,
    key: Option<&str>,
    err: SdkError<E, aws_smithy_runtime_api::http::Response>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err
        .raw_response()
        .map(|response| response.status().as_u16());
    let (code, message) = match err.code() {
        Some(code) => (Some(code.to_string()), err.message().map(str::to_string)),
        None => err
            .raw_response()
            .and_then(|response| response.body().bytes())
            .and_then(xml_error)
            .map_or((None, None), |(code, message)| (Some(code), message)),
    };
    let detail = match (&code, &message, status) {
        (Some(code), Some(message), _) => format!("{code}: {message}"),
        (Some(code), None, _) => code.clone(),
        (None, _, Some(status)) => format!("HTTP {status}"),
        // No response at all: a timeout, a connection or credentials-chain failure.
        (None, _, None) => aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
    };
    let key = key.map(str::to_string);
    match code.as_deref().unwrap_or_default() {
        "ResourceNotFoundException" => Error::RemoteKeyNotFound {
            key: key.unwrap_or_default(),
            detail,
        },
        // A secret scheduled for deletion can no longer be read: for us it is gone.
        "InvalidRequestException" if detail.contains("deletion") => Error::RemoteKeyNotFound {
            key: key.unwrap_or_default(),
            detail,
        },
        "AccessDeniedException" | "AccessDenied" | "DecryptionFailure" => {
            Error::AccessDenied { key, detail }
        }
        "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "InvalidSignatureException"
        | "SignatureDoesNotMatch"
        | "IncompleteSignature"
        | "ExpiredToken"
        | "ExpiredTokenException" => Error::InvalidCredentials(detail),
        _ if status == Some(403) => Error::AccessDenied { key, detail },
        _ if status == Some(401) => Error::InvalidCredentials(detail),
        _ => Error::Provider { call, key, detail },
    }
}

/// Code and message of an XML error body. Some front ends answer in XML whatever the service's protocol
/// (moto does for every IAM denial), which the JSON-protocol SDK cannot parse. Error bodies hold no values.
fn xml_error(body: &[u8]) -> Option<(String, Option<String>)> {
    let text = std::str::from_utf8(body).ok()?;
    let element = |name: &str| {
        let open = format!("<{name}>");
        let start = text.find(&open)? + open.len();
        let end = start + text[start..].find(&format!("</{name}>"))?;
        Some(text[start..end].to_string())
    };
    Some((element("Code")?, element("Message")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_xml_error_bodies() {
        let body = br#"<?xml version="1.0"?><ErrorResponse><Errors><Error><Code>InvalidClientTokenId</Code><Message>The security token included in the request is invalid.</Message></Error></Errors></ErrorResponse>"#;
        let (code, message) = xml_error(body).unwrap();
        assert_eq!(code, "InvalidClientTokenId");
        assert_eq!(
            message.unwrap(),
            "The security token included in the request is invalid."
        );
        assert_eq!(xml_error(b"<AccessDenied/>"), None);
        assert_eq!(xml_error(b"{}"), None);
    }
}
