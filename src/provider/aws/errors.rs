//! AWS errors as our error classes.

use aws_sdk_secretsmanager::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::http::Response;

use crate::error::Error;

/// Maps an SDK error to our error classes by its AWS error code, falling back on the HTTP status: an
/// access denial can come back as a bare 403 whose body the SDK cannot parse.
pub fn classify<E>(call: &'static str, key: Option<&str>, err: SdkError<E, Response>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let status = err
        .raw_response()
        .map(|response| response.status().as_u16());
    let (code, message) = code_and_message(&err);
    let detail = match (&code, &message, status) {
        (Some(code), Some(message), _) => format!("{code}: {message}"),
        (Some(code), None, _) => code.clone(),
        (None, _, Some(status)) => format!("HTTP {status}"),
        // No response at all: a timeout, a connection or credentials-chain failure.
        (None, _, None) => {
            return Error::Unavailable {
                call,
                key: key.map(str::to_string),
                detail: aws_smithy_types::error::display::DisplayErrorContext(&err).to_string(),
            };
        }
    };
    classify_code(
        call,
        key,
        code.as_deref().unwrap_or_default(),
        detail,
        status,
    )
}

/// The AWS error code and message, also when they only came in an XML body.
fn code_and_message<E: ProvideErrorMetadata>(
    err: &SdkError<E, Response>,
) -> (Option<String>, Option<String>) {
    match err.code() {
        Some(code) => (Some(code.to_string()), err.message().map(str::to_string)),
        None => err
            .raw_response()
            .and_then(|response| response.body().bytes())
            .and_then(xml_error)
            .map_or((None, None), |(code, message)| (Some(code), message)),
    }
}

/// For metrics: `None` for a success, else the error code (`ThrottlingException`, `AccessDenied`), or
/// `HTTP <status>` without one, or `NoResponse` (timeouts, connection and credentials-chain failures).
pub fn error_code<T, E: ProvideErrorMetadata>(
    result: &std::result::Result<T, SdkError<E, Response>>,
) -> Option<String> {
    let err = result.as_ref().err()?;
    let code = code_and_message(err).0.or_else(|| {
        err.raw_response()
            .map(|response| format!("HTTP {}", response.status().as_u16()))
    });
    Some(code.unwrap_or_else(|| "NoResponse".to_string()))
}

/// Our error class for an AWS error code; also used for the per-secret errors of a batched read.
pub fn classify_code(
    call: &'static str,
    key: Option<&str>,
    code: &str,
    detail: String,
    status: Option<u16>,
) -> Error {
    let key = key.map(str::to_string);
    match code {
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
        // The web identity token (not our signature) is what STS refused.
        "InvalidIdentityToken" | "IDPRejectedClaim" => Error::InvalidIdentityToken(detail),
        "ExpiredTokenException" if call == "AssumeRoleWithWebIdentity" => {
            Error::InvalidIdentityToken(detail)
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
        // The SDK retried these already: what is left looks like the region failing.
        "ThrottlingException"
        | "Throttling"
        | "TooManyRequestsException"
        | "RequestLimitExceeded"
        | "InternalServiceError"
        | "InternalFailure"
        | "ServiceUnavailable" => Error::Unavailable { call, key, detail },
        _ if status.is_some_and(|status| status >= 500) => Error::Unavailable { call, key, detail },
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
    fn outages_are_told_from_answers() {
        let class = |code: &str, status: Option<u16>| {
            classify_code("GetSecretValue", Some("k"), code, code.into(), status).reason()
        };
        let unavailable = |code: &str, status: Option<u16>| {
            matches!(
                classify_code("GetSecretValue", Some("k"), code, code.into(), status),
                Error::Unavailable { .. }
            )
        };
        assert!(unavailable("ThrottlingException", Some(400)));
        assert!(unavailable("InternalServiceError", Some(500)));
        assert!(unavailable("", Some(503)));
        // Answers: decided by the service, never failed over.
        assert!(!unavailable("InvalidParameterException", Some(400)));
        assert_eq!(
            class("InvalidParameterException", Some(400)),
            "ProviderError"
        );
        assert_eq!(class("AccessDeniedException", Some(400)), "AccessDenied");
        assert_eq!(class("DecryptionFailure", Some(400)), "AccessDenied");
        assert_eq!(
            class("ResourceNotFoundException", Some(400)),
            "RemoteKeyNotFound"
        );
        // A per-secret error of a batched read comes without a status of its own.
        assert!(!unavailable("ResourceNotFoundException", None));
    }

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
