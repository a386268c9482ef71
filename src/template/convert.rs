//! `secretsync convert`: rewrites ESO manifests into secretsync ones. The apiVersion changes; Go templates
//! become MiniJinja where their form is a common one (`{{ .key }}`, `{{ .key | b64enc }}`,
//! `{{ index . "a-b" }}`, `{{ b64dec .key }}`, `printf` with `%s`, pipes of the functions we share). Anything
//! else is kept as written and reported, so nothing is silently changed in meaning.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::api::GROUP;

const ESO_GROUP: &str = "external-secrets.io/";
const KINDS: [&str; 4] = [
    "ExternalSecret",
    "ClusterExternalSecret",
    "SecretStore",
    "ClusterSecretStore",
];
/// Go/Sprig function names → ours; only these are converted.
const FUNCTIONS: [(&str, &str); 13] = [
    ("b64enc", "b64enc"),
    ("b64dec", "b64dec"),
    ("fromJson", "fromJson"),
    ("toJson", "toJson"),
    ("fromYaml", "fromYaml"),
    ("toYaml", "toYaml"),
    ("filterPEM", "filterPEM"),
    ("lower", "lower"),
    ("upper", "upper"),
    ("trim", "trim"),
    ("default", "default"),
    ("replace", "replace"),
    ("toString", "string"),
];

/// The converted YAML stream and one line per thing that could not be converted.
pub struct Converted {
    pub yaml: String,
    pub problems: Vec<String>,
}

pub fn convert_manifests(input: &str) -> Result<Converted, String> {
    let mut documents: Vec<Value> = serde_saphyr::from_multiple(input)
        .map_err(|err| format!("the input is not YAML: {err}"))?;
    documents.retain(|d| !d.is_null());
    let mut problems = Vec::new();
    let mut templates = referenced_templates(&documents);
    for (index, document) in documents.iter_mut().enumerate() {
        let name = format!(
            "document {} ({} {:?})",
            index + 1,
            document["kind"].as_str().unwrap_or("?"),
            document["metadata"]["name"].as_str().unwrap_or("?")
        );
        convert_document(document, &name, &mut templates, &mut problems);
    }
    for (kind, object, key) in templates {
        problems.push(format!(
            "templateFrom {kind} {object:?} key {key:?} holds Go templates and is not in the input; \
             convert it by hand or convert it together with the ExternalSecret"
        ));
    }
    let yaml = documents
        .iter()
        .map(serde_saphyr::to_string)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| err.to_string())?;
    Ok(Converted {
        yaml: yaml.join("---\n"),
        problems,
    })
}

/// The ConfigMap and Secret keys that ESO ExternalSecrets read templates from: (kind, name, key).
fn referenced_templates(documents: &[Value]) -> BTreeSet<(&'static str, String, String)> {
    let mut referenced = BTreeSet::new();
    for spec in documents.iter().filter_map(external_secret_spec) {
        let sources = spec["target"]["template"]["templateFrom"].as_array();
        for source in sources.into_iter().flatten() {
            for (field, kind) in [("configMap", "ConfigMap"), ("secret", "Secret")] {
                let Some(object) = source[field]["name"].as_str() else {
                    continue;
                };
                for item in source[field]["items"].as_array().into_iter().flatten() {
                    if let Some(key) = item["key"].as_str() {
                        referenced.insert((kind, object.to_string(), key.to_string()));
                    }
                }
            }
        }
    }
    referenced
}

/// The ExternalSecret spec an ESO document holds: an ExternalSecret's own, or the one a
/// ClusterExternalSecret stamps out.
fn external_secret_spec(document: &Value) -> Option<&Value> {
    if is_eso(document, "ExternalSecret") {
        document.get("spec")
    } else if is_eso(document, "ClusterExternalSecret") {
        document.pointer("/spec/externalSecretSpec")
    } else {
        None
    }
}

fn is_eso(document: &Value, kind: &str) -> bool {
    document["apiVersion"]
        .as_str()
        .is_some_and(|v| v.starts_with(ESO_GROUP))
        && document["kind"].as_str() == Some(kind)
}

fn convert_document(
    document: &mut Value,
    name: &str,
    templates: &mut BTreeSet<(&'static str, String, String)>,
    problems: &mut Vec<String>,
) {
    let kind = document["kind"].as_str().unwrap_or_default().to_string();
    if !KINDS.iter().any(|k| is_eso(document, k)) {
        convert_template_holder(document, &kind, name, templates, problems);
        return;
    }
    document["apiVersion"] = Value::String(format!("{GROUP}/v1alpha1"));
    let spec = match kind.as_str() {
        "ExternalSecret" => Some(("spec", document.get_mut("spec"))),
        "ClusterExternalSecret" => Some((
            "spec.externalSecretSpec",
            document.pointer_mut("/spec/externalSecretSpec"),
        )),
        _ => None,
    };
    if let Some((path, spec)) = spec {
        if let Some(spec) = spec {
            convert_external_secret(spec, path, name, problems);
        }
    } else if let Some(provider) = document["spec"]["provider"].as_object() {
        let unsupported: Vec<_> = provider
            .keys()
            .filter(|p| !matches!(p.as_str(), "aws" | "fake"))
            .collect();
        if !unsupported.is_empty() {
            problems.push(format!(
                "{name}: provider {unsupported:?} is not supported (aws and fake are)"
            ));
        }
    }
}

/// A ConfigMap (`data`) or Secret (`stringData`) in the input that an ExternalSecret reads templates from.
fn convert_template_holder(
    document: &mut Value,
    kind: &str,
    name: &str,
    templates: &mut BTreeSet<(&'static str, String, String)>,
    problems: &mut Vec<String>,
) {
    let object = document["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let field = match kind {
        "ConfigMap" => "data",
        "Secret" => "stringData",
        _ => return,
    };
    let wanted: Vec<_> = templates
        .iter()
        .filter(|(k, o, _)| *k == kind && *o == object)
        .cloned()
        .collect();
    for entry in wanted {
        let key = &entry.2;
        if let Some(Value::String(text)) = document.get_mut(field).and_then(|f| f.get_mut(key)) {
            templates.remove(&entry);
            match convert_template(text) {
                Ok(converted) => *text = converted,
                Err(problem) => {
                    problems.push(format!("{name}: {field}.{key}: {problem}; left as is"))
                }
            }
        }
    }
}

/// Converts the templates of an ExternalSecret spec found at `path` in the document.
fn convert_external_secret(spec: &mut Value, path: &str, name: &str, problems: &mut Vec<String>) {
    let mut convert_at = |value: &mut Value, field: String| {
        if let Value::String(text) = value {
            match convert_template(text) {
                Ok(converted) => *text = converted,
                Err(problem) => {
                    problems.push(format!("{name}: {path}.{field}: {problem}; left as is"))
                }
            }
        }
    };
    if let Some(data) = spec
        .pointer_mut("/target/template/data")
        .and_then(Value::as_object_mut)
    {
        for (key, value) in data.iter_mut() {
            convert_at(value, format!("target.template.data.{key}"));
        }
    }
    for part in ["labels", "annotations"] {
        let path = format!("/target/template/metadata/{part}");
        if let Some(map) = spec.pointer_mut(&path).and_then(Value::as_object_mut) {
            for (key, value) in map.iter_mut() {
                convert_at(value, format!("target.template.metadata.{part}.{key}"));
            }
        }
    }
    if let Some(sources) = spec
        .pointer_mut("/target/template/templateFrom")
        .and_then(Value::as_array_mut)
    {
        for (i, source) in sources.iter_mut().enumerate() {
            if let Some(literal) = source.get_mut("literal") {
                convert_at(
                    literal,
                    format!("target.template.templateFrom[{i}].literal"),
                );
            }
        }
    }
    if let Some(entries) = spec.get_mut("dataFrom").and_then(Value::as_array_mut) {
        for (i, entry) in entries.iter_mut().enumerate() {
            let Some(rewrites) = entry.get_mut("rewrite").and_then(Value::as_array_mut) else {
                continue;
            };
            for (j, rewrite) in rewrites.iter_mut().enumerate() {
                if let Some(template) = rewrite.pointer_mut("/transform/template") {
                    convert_at(
                        template,
                        format!("dataFrom[{i}].rewrite[{j}].transform.template"),
                    );
                }
            }
        }
    }
}

/// One Go template → MiniJinja, or what stopped the conversion.
pub fn convert_template(text: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let literal = &rest[..start];
        if literal.contains("{%") || literal.contains("{#") {
            return Err("the text contains '{%' or '{#', which MiniJinja reads as tags".into());
        }
        out.push_str(literal);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| "an action is not closed with '}}'".to_string())?;
        out.push_str(&convert_action(&after[..end])?);
        rest = &after[end + 2..];
    }
    if rest.contains("{%") || rest.contains("{#") {
        return Err("the text contains '{%' or '{#', which MiniJinja reads as tags".into());
    }
    out.push_str(rest);
    Ok(out)
}

fn convert_action(action: &str) -> Result<String, String> {
    let (open, action) = match action.strip_prefix('-') {
        Some(rest) => ("{{-", rest),
        None => ("{{", action),
    };
    let (close, action) = match action.strip_suffix('-') {
        Some(rest) => ("-}}", rest),
        None => ("}}", action),
    };
    let commands = split_pipeline(action.trim())?;
    let mut commands = commands.iter();
    let first = commands.next().ok_or("an empty action")?;
    let mut expression = match first.as_slice() {
        [operand] => operand_expression(operand)?,
        [printf, format, args @ ..] if printf == "printf" => concatenation(format, args)?,
        [index, dot, key] if index == "index" => match dot.as_str() {
            "." => format!("lookup({key})", key = string_literal(key)?),
            field => format!("{}[{}]", operand_expression(field)?, string_literal(key)?),
        },
        [function, args @ .., operand] => {
            let function = function_name(function)?;
            let mut expression = format!("{} | {function}", operand_expression(operand)?);
            if !args.is_empty() {
                expression.push_str(&format!("({})", arguments(args)?));
            }
            expression
        }
        [] => return Err("an empty action".into()),
    };
    for command in commands {
        let (function, args) = command.split_first().ok_or("an empty pipeline stage")?;
        expression.push_str(&format!(" | {}", function_name(function)?));
        if !args.is_empty() {
            expression.push_str(&format!("({})", arguments(args)?));
        }
    }
    Ok(format!("{open} {expression} {close}"))
}

/// Splits `a b | c "d e"` into commands of words, keeping quoted strings whole.
fn split_pipeline(action: &str) -> Result<Vec<Vec<String>>, String> {
    let mut commands = vec![Vec::new()];
    let mut chars = action.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {}
            '|' => commands.push(Vec::new()),
            '"' | '`' => {
                let mut word = String::from(c);
                loop {
                    let next = chars.next().ok_or("a string is not closed")?;
                    word.push(next);
                    if next == '\\' && c == '"' {
                        word.push(chars.next().ok_or("a string is not closed")?);
                    } else if next == c {
                        break;
                    }
                }
                commands.last_mut().expect("never empty").push(word);
            }
            '(' | ')' | '$' => {
                return Err(format!(
                    "'{c}' (parentheses and variables) is not converted"
                ));
            }
            c => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, '|' | '"' | '(' | ')') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                commands.last_mut().expect("never empty").push(word);
            }
        }
    }
    Ok(commands)
}

fn operand_expression(operand: &str) -> Result<String, String> {
    if operand.starts_with('"') || operand.starts_with('`') {
        return string_literal(operand);
    }
    if operand.parse::<f64>().is_ok() {
        return Ok(operand.to_string());
    }
    let path = operand
        .strip_prefix('.')
        .filter(|path| !path.is_empty())
        .ok_or_else(|| {
            format!("{operand:?} is not converted (only .key, index and literals are)")
        })?;
    let identifier = |part: &str| {
        part.chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    };
    if !path.split('.').all(identifier) {
        return Err(format!("{operand:?} is not converted"));
    }
    Ok(path.to_string())
}

/// `printf "%s:%s" .a .b` → `("" ~ a ~ ":" ~ b)`; only `%s` verbs are converted.
fn concatenation(format: &str, args: &[String]) -> Result<String, String> {
    let format: String = serde_json::from_str(&string_literal(format)?)
        .map_err(|_| format!("printf format {format:?} is not converted"))?;
    let pieces: Vec<&str> = format.split("%s").collect();
    if pieces.len() != args.len() + 1 || pieces.iter().any(|piece| piece.contains('%')) {
        return Err(format!(
            "printf {format:?} is not converted (only %s verbs, one per argument)"
        ));
    }
    let mut parts = Vec::new();
    for (index, piece) in pieces.iter().enumerate() {
        if !piece.is_empty() {
            parts.push(serde_json::to_string(piece).expect("strings serialize"));
        }
        if let Some(arg) = args.get(index) {
            parts.push(operand_expression(arg)?);
        }
    }
    Ok(format!("({})", parts.join(" ~ ")))
}

fn string_literal(word: &str) -> Result<String, String> {
    if let Some(raw) = word.strip_prefix('`').and_then(|w| w.strip_suffix('`')) {
        return Ok(serde_json::to_string(raw).expect("strings serialize"));
    }
    if word.starts_with('"') && word.ends_with('"') && word.len() >= 2 {
        // Go and JSON string escapes agree for the forms templates use.
        return Ok(word.to_string());
    }
    Err(format!("{word:?} is not a string"))
}

fn arguments(args: &[String]) -> Result<String, String> {
    args.iter()
        .map(|arg| operand_expression(arg))
        .collect::<Result<Vec<_>, _>>()
        .map(|args| args.join(", "))
}

fn function_name(name: &str) -> Result<&'static str, String> {
    if matches!(
        name,
        "if" | "else"
            | "end"
            | "range"
            | "with"
            | "define"
            | "template"
            | "block"
            | "break"
            | "continue"
    ) {
        return Err(format!("'{name}' actions are not converted"));
    }
    FUNCTIONS
        .iter()
        .find(|(go, _)| *go == name)
        .map(|(_, ours)| *ours)
        .ok_or_else(|| format!("function {name:?} is not converted"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_forms() {
        let cases = [
            ("{{ .password }}", "{{ password }}"),
            ("{{ .password | b64enc }}", "{{ password | b64enc }}"),
            (r#"{{ index . "tls-key" }}"#, r#"{{ lookup("tls-key") }}"#),
            (r#"{{ index .config "a-b" }}"#, r#"{{ config["a-b"] }}"#),
            ("{{ b64dec .cert }}", "{{ cert | b64dec }}"),
            (
                r#"{{ .bundle | filterPEM "CERTIFICATE" }}"#,
                r#"{{ bundle | filterPEM("CERTIFICATE") }}"#,
            ),
            (
                r#"{{- .user | default "admin" | upper -}}"#,
                r#"{{- user | default("admin") | upper -}}"#,
            ),
            (
                "postgres://{{ .user }}:{{ .password }}@db:5432/app",
                "postgres://{{ user }}:{{ password }}@db:5432/app",
            ),
            (
                r#"{{ printf "%s:%s" .user .password | b64enc }}"#,
                r#"{{ (user ~ ":" ~ password) | b64enc }}"#,
            ),
        ];
        for (go, ours) in cases {
            assert_eq!(convert_template(go).unwrap(), ours, "{go}");
        }
    }

    #[test]
    fn unsupported_forms_are_reported() {
        for go in [
            "{{ range .items }}x{{ end }}",
            "{{ if .a }}x{{ end }}",
            "{{ $x := .a }}",
            "{{ .a | sha256sum }}",
            "{{ . }}",
            "{% raw %}{{ .a }}",
            "{{ .a ",
            "{{ (.config | fromJson).a }}",
            r#"{{ printf "%d" .n }}"#,
        ] {
            assert!(convert_template(go).is_err(), "{go}");
        }
    }
}
