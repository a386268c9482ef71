//! Turning a remote value into the bytes of one Secret key.

use serde_json::Value;

use super::{RemoteSecret, RemoteValue};
use crate::error::{Error, Result};

/// The bytes for one Secret key: the whole value, or one top-level property of a JSON object
/// (strings unquoted, any other JSON value as JSON text). Binary values are written byte for byte.
pub fn value_bytes(remote: &RemoteSecret, key: &str, property: Option<&str>) -> Result<Vec<u8>> {
    let Some(property) = property else {
        return Ok(match &remote.value {
            RemoteValue::Text(text) => text.as_bytes().to_vec(),
            RemoteValue::Binary(bytes) => bytes.clone(),
        });
    };
    let invalid = |problem: &str| Error::InvalidRemoteValue {
        key: key.to_string(),
        problem: format!("{problem}, so property {property:?} cannot be read"),
    };
    let text = match &remote.value {
        RemoteValue::Text(text) => text.as_str(),
        RemoteValue::Binary(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| invalid("the value is binary"))?
        }
    };
    // serde_json's error messages quote no input, but say nothing of the value anyway.
    let json: Value = serde_json::from_str(text).map_err(|_| invalid("the value is not JSON"))?;
    let object = json
        .as_object()
        .ok_or_else(|| invalid("the value is not a JSON object"))?;
    match object.get(property) {
        Some(Value::String(s)) => Ok(s.as_bytes().to_vec()),
        Some(other) => Ok(other.to_string().into_bytes()),
        None => Err(Error::PropertyNotFound {
            key: key.to_string(),
            property: property.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(value: &str) -> RemoteSecret {
        RemoteSecret {
            version_id: None,
            value: RemoteValue::Text(value.to_string()),
        }
    }

    #[test]
    fn whole_value() {
        assert_eq!(value_bytes(&text("plain"), "k", None).unwrap(), b"plain");
        let binary = RemoteSecret {
            version_id: None,
            value: RemoteValue::Binary(vec![0, 159, 255]),
        };
        assert_eq!(value_bytes(&binary, "k", None).unwrap(), vec![0, 159, 255]);
    }

    #[test]
    fn properties_unquote_strings_and_keep_json_for_the_rest() {
        let secret = text(r#"{"user":"admin","port":5432,"tags":["a"],"nested":{"x":true}}"#);
        assert_eq!(value_bytes(&secret, "k", Some("user")).unwrap(), b"admin");
        assert_eq!(value_bytes(&secret, "k", Some("port")).unwrap(), b"5432");
        assert_eq!(
            value_bytes(&secret, "k", Some("tags")).unwrap(),
            br#"["a"]"#
        );
        assert_eq!(
            value_bytes(&secret, "k", Some("nested")).unwrap(),
            br#"{"x":true}"#
        );
    }

    #[test]
    fn errors_name_key_and_property_but_not_the_value() {
        let err = value_bytes(&text(r#"{"user":"canary"}"#), "db", Some("password")).unwrap_err();
        assert_eq!(err.reason(), "PropertyNotFound");
        assert!(err.to_string().contains("db") && err.to_string().contains("password"));

        let err = value_bytes(&text("canary not json"), "db", Some("user")).unwrap_err();
        assert_eq!(err.reason(), "InvalidRemoteValue");
        assert!(!err.to_string().contains("canary"));
    }
}
