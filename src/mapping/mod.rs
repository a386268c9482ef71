//! Turning remote values into Secret data: JSON property paths, decoding, and (in `keys`) the keys that
//! `dataFrom` produces. Independent of Kubernetes and of the provider, so it is unit-tested alone.

pub mod keys;

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::Value;

use crate::api::DecodingStrategy;
use crate::error::{Error, Result};
use crate::provider::{RemoteSecret, RemoteValue};

/// The bytes for one Secret key: the whole value, or the value at `property` (strings unquoted, any other
/// JSON value as JSON text), then decoded. Binary values are written byte for byte.
pub fn value_bytes(
    remote: &RemoteSecret,
    key: &str,
    property: Option<&str>,
    decoding: DecodingStrategy,
) -> Result<Vec<u8>> {
    let bytes = match property {
        None => match &remote.value {
            RemoteValue::Text(text) => text.as_bytes().to_vec(),
            RemoteValue::Binary(bytes) => bytes.clone(),
        },
        Some(property) => {
            let json = parse_json(remote, key, Some(property))?;
            let found = lookup(&json, property).ok_or_else(|| Error::PropertyNotFound {
                key: key.to_string(),
                property: property.to_string(),
            })?;
            json_text(found)
        }
    };
    decode(bytes, decoding).map_err(|problem| Error::InvalidRemoteValue {
        key: key.to_string(),
        problem: with_property(problem, property),
    })
}

/// Every top-level key of a JSON object (the one at `property`, if set) as a Secret key, each value decoded.
pub fn extract(
    remote: &RemoteSecret,
    key: &str,
    property: Option<&str>,
    decoding: DecodingStrategy,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let json = parse_json(remote, key, property)?;
    let object = match property {
        None => &json,
        Some(property) => lookup(&json, property).ok_or_else(|| Error::PropertyNotFound {
            key: key.to_string(),
            property: property.to_string(),
        })?,
    };
    let object = object
        .as_object()
        .ok_or_else(|| Error::InvalidRemoteValue {
            key: key.to_string(),
            problem: with_property("the value is not a JSON object".into(), property),
        })?;
    object
        .iter()
        .map(|(name, value)| {
            let bytes = decode(json_text(value), decoding).map_err(|problem| {
                Error::InvalidRemoteValue {
                    key: key.to_string(),
                    problem: format!("{problem} (property {name:?})"),
                }
            })?;
            Ok((name.clone(), bytes))
        })
        .collect()
}

fn with_property(problem: String, property: Option<&str>) -> String {
    match property {
        Some(property) => format!("{problem} (property {property:?})"),
        None => problem,
    }
}

fn parse_json(remote: &RemoteSecret, key: &str, property: Option<&str>) -> Result<Value> {
    let invalid = |problem: &str| Error::InvalidRemoteValue {
        key: key.to_string(),
        problem: match property {
            Some(property) => format!("{problem}, so property {property:?} cannot be read"),
            None => format!("{problem}, so its keys cannot be extracted"),
        },
    };
    let text = match &remote.value {
        RemoteValue::Text(text) => text.as_str(),
        RemoteValue::Binary(bytes) => {
            std::str::from_utf8(bytes).map_err(|_| invalid("the value is binary"))?
        }
    };
    // serde_json's error messages quote no input, but say nothing of the value anyway.
    serde_json::from_str::<Strict>(text)
        .map(|strict| strict.0)
        .map_err(|err| {
            let message = err.to_string();
            if message.starts_with(DUPLICATE_KEY) {
                invalid("the value is JSON with an object that names a key twice")
            } else if message.starts_with("recursion limit exceeded") {
                invalid("the value is JSON nested too deeply (over 128 levels)")
            } else {
                invalid("the value is not JSON")
            }
        })
}

const DUPLICATE_KEY: &str = "duplicate key";

/// JSON that names no key twice in an object: parsers differ on which of the two they keep, so neither is
/// safe to write into a Secret.
struct Strict(Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some((key, Strict(value))) = map.next_entry::<String, Strict>()? {
            if object.insert(key, value).is_some() {
                return Err(serde::de::Error::custom(DUPLICATE_KEY));
            }
        }
        Ok(Value::Object(object))
    }
}

/// Strings as their text, everything else as compact JSON.
fn json_text(value: &Value) -> Vec<u8> {
    match value {
        Value::String(s) => s.as_bytes().to_vec(),
        other => sorted_json(other).into_bytes(),
    }
}

/// Compact JSON with object keys sorted, as ESO (Go's encoding/json) writes it. Written out here because
/// whether `serde_json` keeps insertion order depends on features other crates turn on.
pub fn sorted_json(value: &Value) -> String {
    struct Sorted<'a>(&'a Value);
    impl serde::Serialize for Sorted<'_> {
        fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match self.0 {
                Value::Object(object) => {
                    let sorted: BTreeMap<_, _> =
                        object.iter().map(|(k, v)| (k, Sorted(v))).collect();
                    serializer.collect_map(sorted)
                }
                Value::Array(items) => serializer.collect_seq(items.iter().map(Sorted)),
                other => other.serialize(serializer),
            }
        }
    }
    serde_json::to_string(&Sorted(value)).expect("JSON values always serialize")
}

/// The value at a property path. A top-level key that itself contains dots is tried literally first;
/// otherwise the path is split on dots (`\.` escapes one) and walks objects by key and arrays by index.
pub fn lookup<'a>(json: &'a Value, path: &str) -> Option<&'a Value> {
    if let Some(found) = json.as_object().and_then(|object| object.get(path)) {
        return Some(found);
    }
    split_path(path)
        .iter()
        .try_fold(json, |value, segment| match value {
            Value::Object(object) => object.get(segment),
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
            _ => None,
        })
}

fn split_path(path: &str) -> Vec<String> {
    let mut segments = vec![String::new()];
    let mut chars = path.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => segments
                .last_mut()
                .expect("never empty")
                .extend(chars.next()),
            '.' => segments.push(String::new()),
            c => segments.last_mut().expect("never empty").push(c),
        }
    }
    segments
}

/// Decodes per `decodingStrategy`; the error says what failed, never the input.
pub fn decode(bytes: Vec<u8>, strategy: DecodingStrategy) -> Result<Vec<u8>, String> {
    let trimmed = || bytes.trim_ascii();
    match strategy {
        DecodingStrategy::None => Ok(bytes),
        DecodingStrategy::Base64 => STANDARD
            .decode(trimmed())
            .map_err(|_| "the value is not valid Base64".to_string()),
        DecodingStrategy::Base64Url => URL_SAFE
            .decode(trimmed())
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed()))
            .map_err(|_| "the value is not valid Base64URL".to_string()),
        DecodingStrategy::Auto => Ok(STANDARD
            .decode(trimmed())
            .or_else(|_| URL_SAFE.decode(trimmed()))
            .or_else(|_| URL_SAFE_NO_PAD.decode(trimmed()))
            .unwrap_or(bytes)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_json_is_written_with_sorted_keys() {
        let value: Value =
            serde_json::from_str(r#"{"z":1,"a":[{"y":true,"b":null}],"m":"s"}"#).unwrap();
        assert_eq!(
            sorted_json(&value),
            r#"{"a":[{"b":null,"y":true}],"m":"s","z":1}"#
        );
    }
    use serde_json::json;

    fn text(value: &str) -> RemoteSecret {
        RemoteSecret {
            version_id: None,
            stages: Vec::new(),
            value: RemoteValue::Text(value.to_string()),
            read_at: None,
            replica: None,
        }
    }

    fn read(secret: &RemoteSecret, property: Option<&str>) -> Result<Vec<u8>> {
        value_bytes(secret, "k", property, DecodingStrategy::None)
    }

    #[test]
    fn hostile_json_is_refused_with_its_problem() {
        let problem = |value: &str| read(&text(value), Some("a")).unwrap_err().to_string();
        assert!(problem(r#"{"a":1,"a":2}"#).contains("names a key twice"));
        assert!(problem(r#"{"b":{"a":1,"a":2}}"#).contains("names a key twice"));
        let deep = format!("{}1{}", "[".repeat(500), "]".repeat(500));
        assert!(problem(&deep).contains("nested too deeply"));
        assert!(problem("{nope").contains("not JSON"));
        assert_eq!(
            read(&text(r#"{"a":[1,{"b":null}]}"#), Some("a")).unwrap(),
            br#"[1,{"b":null}]"#
        );
    }

    #[test]
    fn whole_value() {
        assert_eq!(read(&text("plain"), None).unwrap(), b"plain");
        let binary = RemoteSecret {
            version_id: None,
            stages: Vec::new(),
            value: RemoteValue::Binary(vec![0, 159, 255]),
            read_at: None,
            replica: None,
        };
        assert_eq!(read(&binary, None).unwrap(), vec![0, 159, 255]);
    }

    #[test]
    fn properties_unquote_strings_and_keep_json_for_the_rest() {
        let secret = text(r#"{"user":"admin","port":5432,"tags":["a"],"nested":{"x":true}}"#);
        assert_eq!(read(&secret, Some("user")).unwrap(), b"admin");
        assert_eq!(read(&secret, Some("port")).unwrap(), b"5432");
        assert_eq!(read(&secret, Some("tags")).unwrap(), br#"["a"]"#);
        assert_eq!(read(&secret, Some("nested")).unwrap(), br#"{"x":true}"#);
    }

    #[test]
    fn property_paths() {
        let value = json!({
            "db": {"primary": {"host": "h1"}},
            "list": [{"name": "first"}, {"name": "second"}],
            "dotted.key": "literal",
            "a": {"b.c": "escaped"},
        });
        let at = |path| lookup(&value, path).cloned();
        assert_eq!(at("db.primary.host"), Some(json!("h1")));
        assert_eq!(at("list.1.name"), Some(json!("second")));
        assert_eq!(at("dotted.key"), Some(json!("literal")));
        assert_eq!(at(r"a.b\.c"), Some(json!("escaped")));
        assert_eq!(at("list.7.name"), None);
        assert_eq!(at("list.x"), None);
        assert_eq!(at("db.primary.host.more"), None);
    }

    #[test]
    fn decoding_strategies() {
        let decode_str = |s: &str, strategy| decode(s.as_bytes().to_vec(), strategy);
        assert_eq!(
            decode_str("aGk/Pz4+", DecodingStrategy::Base64).unwrap(),
            b"hi??>>"
        );
        assert_eq!(
            decode_str("aGk_Pz4-", DecodingStrategy::Base64Url).unwrap(),
            b"hi??>>"
        );
        assert_eq!(
            decode_str("aGk", DecodingStrategy::Base64Url).unwrap(),
            b"hi"
        );
        assert_eq!(
            decode_str("aGk_Pz4-", DecodingStrategy::Auto).unwrap(),
            b"hi??>>"
        );
        assert_eq!(
            decode_str("not base64!", DecodingStrategy::Auto).unwrap(),
            b"not base64!"
        );
        let err = decode_str("canary!", DecodingStrategy::Base64).unwrap_err();
        assert!(!err.contains("canary"));
    }

    #[test]
    fn extract_top_level_keys() {
        let secret = text(r#"{"user":"admin","port":5432,"inner":{"token":"dG9r"}}"#);
        let all = extract(&secret, "k", None, DecodingStrategy::None).unwrap();
        assert_eq!(all["user"], b"admin");
        assert_eq!(all["port"], b"5432");
        assert_eq!(all["inner"], br#"{"token":"dG9r"}"#);
        let inner = extract(&secret, "k", Some("inner"), DecodingStrategy::Base64).unwrap();
        assert_eq!(inner["token"], b"tok");
        let err = extract(&secret, "k", Some("user"), DecodingStrategy::None).unwrap_err();
        assert_eq!(err.reason(), "InvalidRemoteValue");
    }

    #[test]
    fn errors_name_key_and_property_but_not_the_value() {
        let err = read(&text(r#"{"user":"canary"}"#), Some("password")).unwrap_err();
        assert_eq!(err.reason(), "PropertyNotFound");
        assert!(err.to_string().contains("k") && err.to_string().contains("password"));

        let err = read(&text("canary not json"), Some("user")).unwrap_err();
        assert_eq!(err.reason(), "InvalidRemoteValue");
        assert!(!err.to_string().contains("canary"));
    }
}
