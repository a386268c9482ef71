//! STS: role sessions from web identity tokens and from other credentials, and who a session is.

use std::time::SystemTime;

use aws_config::SdkConfig;
use aws_credential_types::Credentials;
use aws_sdk_sts::types::Tag;

use super::errors::{classify, error_code};
use crate::api::SessionTag;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

const PROVIDER: &str = "AWS/STS";

/// One `AssumeRole` of a chain. Everything here ends up in CloudTrail and IAM conditions, never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RoleRequest {
    pub role_arn: String,
    pub session_name: String,
    pub external_id: Option<String>,
    pub tags: Vec<SessionTag>,
    pub transitive_tag_keys: Vec<String>,
}

/// Exchanges a web identity token (a ServiceAccount token) for a session of `role_arn`. The call is
/// unsigned: the token is the credential.
pub async fn assume_role_with_web_identity(
    config: &SdkConfig,
    role_arn: &str,
    session_name: &str,
    token: &str,
    metrics: &Metrics,
) -> Result<Credentials> {
    let result = aws_sdk_sts::Client::new(config)
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name(session_name)
        .web_identity_token(token)
        .send()
        .await;
    let call = "AssumeRoleWithWebIdentity";
    metrics.provider_call(PROVIDER, call, error_code(&result).as_deref());
    let output = result.map_err(|err| in_role(classify(call, None, err), role_arn))?;
    session_credentials(output.credentials, role_arn)
}

/// Assumes a role with the credentials `config` carries.
pub async fn assume_role(
    config: &SdkConfig,
    request: &RoleRequest,
    metrics: &Metrics,
) -> Result<Credentials> {
    let tags = request
        .tags
        .iter()
        .map(|tag| Tag::builder().key(&tag.key).value(&tag.value).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| Error::InvalidStoreConfig(format!("session tag: {err}")))?;
    let result = aws_sdk_sts::Client::new(config)
        .assume_role()
        .role_arn(&request.role_arn)
        .role_session_name(&request.session_name)
        .set_external_id(request.external_id.clone())
        .set_tags(Some(tags))
        .set_transitive_tag_keys(
            (!request.transitive_tag_keys.is_empty()).then(|| request.transitive_tag_keys.clone()),
        )
        .send()
        .await;
    metrics.provider_call(PROVIDER, "AssumeRole", error_code(&result).as_deref());
    let output =
        result.map_err(|err| in_role(classify("AssumeRole", None, err), &request.role_arn))?;
    session_credentials(output.credentials, &request.role_arn)
}

/// The ARN of the identity a client's credentials resolve to.
pub async fn caller_identity(sts: &aws_sdk_sts::Client, metrics: &Metrics) -> Result<String> {
    let result = sts.get_caller_identity().send().await;
    metrics.provider_call(
        PROVIDER,
        "GetCallerIdentity",
        error_code(&result).as_deref(),
    );
    let identity = result.map_err(|err| classify("GetCallerIdentity", None, err))?;
    Ok(identity.arn.unwrap_or_default())
}

/// Names the role in an error, so that a denial says which step of a chain failed.
fn in_role(err: Error, role_arn: &str) -> Error {
    match err {
        Error::AccessDenied { key, detail } => Error::AccessDenied {
            key,
            detail: format!("assuming {role_arn}: {detail}"),
        },
        Error::InvalidCredentials(detail) => {
            Error::InvalidCredentials(format!("assuming {role_arn}: {detail}"))
        }
        Error::InvalidIdentityToken(detail) => {
            Error::InvalidIdentityToken(format!("assuming {role_arn}: {detail}"))
        }
        Error::Provider { call, key, detail } => Error::Provider {
            call,
            key,
            detail: format!("assuming {role_arn}: {detail}"),
        },
        Error::Unavailable { call, key, detail } => Error::Unavailable {
            call,
            key,
            detail: format!("assuming {role_arn}: {detail}"),
        },
        other => other,
    }
}

fn session_credentials(
    credentials: Option<aws_sdk_sts::types::Credentials>,
    role_arn: &str,
) -> Result<Credentials> {
    let missing = || Error::Provider {
        call: "AssumeRole",
        key: None,
        detail: format!("assuming {role_arn}: STS returned no credentials"),
    };
    let credentials = credentials.ok_or_else(missing)?;
    let expiry = SystemTime::try_from(credentials.expiration).map_err(|_| missing())?;
    Ok(Credentials::new(
        credentials.access_key_id,
        credentials.secret_access_key,
        Some(credentials.session_token),
        Some(expiry),
        "secretsync-sts",
    ))
}

#[cfg(test)]
mod tests {
    use aws_config::{BehaviorVersion, Region};
    use aws_credential_types::provider::SharedCredentialsProvider;
    use aws_smithy_http_client::test_util::infallible_client_fn;

    use super::*;

    /// STS answering every request with this status and error code, as a real endpoint would.
    fn sts_refusing(status: u16, code: &'static str) -> SdkConfig {
        let http = infallible_client_fn(move |_request| {
            http::Response::builder()
                .status(status)
                .body(format!(
                    "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>\
                     <Message>refused by the test</Message></Error><RequestId>1</RequestId></ErrorResponse>"
                ))
                .unwrap()
        });
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .http_client(http)
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "AKIDTEST", "secret", None, None, "test",
            )))
            .build()
    }

    const ROLE: &str = "arn:aws:iam::123456789012:role/app";
    const TOKEN: &str = "eyJhbGciOi.canary-token-payload.signature";

    #[tokio::test]
    async fn refused_and_expired_tokens_are_their_own_class() {
        for code in ["InvalidIdentityToken", "ExpiredTokenException"] {
            let config = sts_refusing(400, code);
            let err = assume_role_with_web_identity(&config, ROLE, "s", TOKEN, &Metrics::default())
                .await
                .unwrap_err();
            assert_eq!(err.reason(), "InvalidIdentityToken", "{code}: {err}");
            let message = err.to_string();
            assert!(
                message.contains(ROLE) && message.contains(code),
                "{message}"
            );
            assert!(!message.contains("canary-token"), "{message}");
        }
    }

    #[tokio::test]
    async fn a_denied_role_names_the_role() {
        let config = sts_refusing(403, "AccessDenied");
        let request = RoleRequest {
            role_arn: ROLE.into(),
            session_name: "s".into(),
            external_id: None,
            tags: Vec::new(),
            transitive_tag_keys: Vec::new(),
        };
        let err = assume_role(&config, &request, &Metrics::default())
            .await
            .unwrap_err();
        assert_eq!(err.reason(), "AccessDenied");
        assert!(err.to_string().contains(ROLE), "{err}");
    }
}
