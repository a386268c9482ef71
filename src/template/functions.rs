//! The functions secret templates need, under ESO's names so that converted templates read the same.
//! Each is a filter (`{{ x | b64enc }}`) and a function (`{{ b64enc(x) }}`). Error details never quote input.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use minijinja::value::Serde;
use minijinja::{Environment, Error, ErrorKind, State, Value};

pub fn register(env: &mut Environment<'static>) {
    env.add_function("lookup", lookup);
    macro_rules! both {
        ($($name:literal => $f:expr),* $(,)?) => {
            $( env.add_filter($name, $f); env.add_function($name, $f); )*
        };
    }
    both! {
        "b64enc" => b64enc,
        "b64dec" => b64dec,
        "fromJson" => from_json,
        "toJson" => to_json,
        "fromYaml" => from_yaml,
        "toYaml" => to_yaml,
        "filterPEM" => filter_pem,
    }
}

fn invalid(detail: &'static str) -> Error {
    Error::new(ErrorKind::InvalidOperation, detail)
}

/// A fetched key by name, for keys that are not identifiers (`lookup("tls-key")`). The name is not quoted
/// back: `lookup(password)`, a natural slip for `lookup("password")`, passes the value as the name.
fn lookup(state: &State, name: &str) -> Result<Value, Error> {
    // Reported as undefined, whose description says how to name a key and quotes nothing.
    state
        .lookup(name)
        .ok_or_else(|| Error::from(ErrorKind::UndefinedError))
}

fn bytes_of(value: &Value) -> Result<Vec<u8>, Error> {
    match (value.as_str(), value.as_bytes()) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(bytes)) => Ok(bytes.to_vec()),
        _ => Ok(value.to_string().into_bytes()),
    }
}

fn b64enc(value: Value) -> Result<String, Error> {
    Ok(STANDARD.encode(bytes_of(&value)?))
}

/// Text when the decoded bytes are UTF-8, bytes otherwise.
fn b64dec(value: Value) -> Result<Value, Error> {
    let bytes = STANDARD
        .decode(bytes_of(&value)?.trim_ascii())
        .map_err(|_| invalid("b64dec: the input is not valid Base64"))?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => Value::from(text),
        Err(err) => Value::from_bytes(err.into_bytes()),
    })
}

fn from_json(text: &str) -> Result<Value, Error> {
    serde_json::from_str::<serde_json::Value>(text)
        .map(|value| Value::from(Serde(value)))
        .map_err(|_| invalid("fromJson: the input is not JSON"))
}

fn to_json(value: Serde<serde_json::Value>) -> String {
    crate::mapping::sorted_json(&value.0)
}

fn from_yaml(text: &str) -> Result<Value, Error> {
    serde_saphyr::from_str::<serde_json::Value>(text)
        .map(|value| Value::from(Serde(value)))
        .map_err(|_| invalid("fromYaml: the input is not YAML"))
}

fn to_yaml(value: Serde<serde_json::Value>) -> Result<String, Error> {
    serde_saphyr::to_string(&value.0)
        .map_err(|_| invalid("toYaml: the value cannot be written as YAML"))
}

/// The PEM blocks of one type (`CERTIFICATE`, `PRIVATE KEY`, ...), in order, e.g. to split a bundle.
fn filter_pem(text: &str, block_type: &str) -> Result<String, Error> {
    let begin = format!("-----BEGIN {block_type}-----");
    let end = format!("-----END {block_type}-----");
    let mut blocks = String::new();
    let mut rest = text;
    while let Some(start) = rest.find(&begin) {
        let after = &rest[start..];
        let stop = after
            .find(&end)
            .ok_or_else(|| invalid("filterPEM: a PEM block is not terminated"))?;
        blocks.push_str(&after[..stop + end.len()]);
        blocks.push('\n');
        rest = &after[stop + end.len()..];
    }
    if blocks.is_empty() {
        return Err(invalid("filterPEM: no PEM block of that type"));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::super::environment;
    use minijinja::context;

    fn render(template: &str, value: &str) -> String {
        environment()
            .render_str(template, context! { v => value, other => "x" })
            .unwrap()
    }

    #[test]
    fn base64() {
        assert_eq!(render("{{ v | b64enc }}", "hi"), "aGk=");
        assert_eq!(render("{{ v | b64dec }}", "aGk="), "hi");
        assert_eq!(render("{{ b64enc(v) }}", "hi"), "aGk=");
    }

    #[test]
    fn json_and_yaml() {
        assert_eq!(render("{{ (v | fromJson).a.b }}", r#"{"a":{"b":7}}"#), "7");
        assert_eq!(
            render("{{ v | fromJson | toJson }}", r#"{"a": [1, "x"]}"#),
            r#"{"a":[1,"x"]}"#
        );
        assert_eq!(render("{{ (v | fromYaml).k }}", "k: val"), "val");
        assert_eq!(render("{{ {'k': v} | toYaml }}", "val").trim(), "k: val");
    }

    #[test]
    fn pem_blocks_by_type() {
        let bundle = "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n\
                      -----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n\
                      -----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n";
        assert_eq!(
            render("{{ v | filterPEM('CERTIFICATE') }}", bundle),
            "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nB\n-----END CERTIFICATE-----\n"
        );
        assert_eq!(
            render("{{ v | filterPEM('PRIVATE KEY') }}", bundle),
            "-----BEGIN PRIVATE KEY-----\nK\n-----END PRIVATE KEY-----\n"
        );
    }

    #[test]
    fn builtins_and_lookup() {
        assert_eq!(render("{{ v | upper }}-{{ v | lower }}", "Ab"), "AB-ab");
        assert_eq!(render("{{ missing | default('d') }}", ""), "d");
        assert_eq!(render("{{ lookup('other') }}", ""), "x");
        assert!(
            environment()
                .render_str("{{ lookup('nope') }}", context! {})
                .is_err()
        );
    }
}
