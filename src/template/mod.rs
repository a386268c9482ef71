//! Secret templates. ESO uses Go templates; we use MiniJinja (Jinja2 syntax, a well-kept pure-Rust engine)
//! with the functions secret templates need under ESO's names, and `convert` rewrites the common Go forms.
//! Every fetched key is a template variable; `lookup("a-b")` reaches keys that are not identifiers.

pub mod convert;
mod functions;

use std::collections::BTreeMap;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, ErrorKind, UndefinedBehavior, Value};

use crate::api::{SecretTemplate, TemplateMergePolicy, TemplateScope, TemplateTarget};
use crate::error::{Error, Result};
use crate::mapping::keys;

/// Bounds the work one template may do, so a runaway loop cannot stall the operator.
const FUEL: u64 = 1_000_000;

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Go templates keep a template's final newline; config files rendered from ConfigMaps need it.
    let syntax = SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
        .expect("the default delimiters are valid");
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    functions::register(&mut env);
    env
}

/// A template kept outside the ExternalSecret (`templateFrom`), already read from its ConfigMap or Secret.
pub struct TemplateSource {
    pub target: TemplateTarget,
    pub scope: TemplateScope,
    /// Where the text came from, for error messages (`ConfigMap "x" key "y"`, `literal`).
    pub origin: String,
    /// With `Values`, the key the output is stored under.
    pub key: String,
    pub text: String,
}

/// What a template produces for the target Secret.
#[derive(Default, PartialEq)]
pub struct Rendered {
    pub type_: Option<String>,
    pub data: BTreeMap<String, Vec<u8>>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

// Keys only: values, and templated labels and annotations, may be secrets.
impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rendered")
            .field("type_", &self.type_)
            .field("data", &self.data.keys().collect::<Vec<_>>())
            .field("labels", &self.labels.keys().collect::<Vec<_>>())
            .field("annotations", &self.annotations.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Builds the Secret's content from the fetched data: `templateFrom` first, then `data` (which wins), then
/// metadata. Without any data template the fetched data is kept; `mergePolicy: Merge` keeps it too, with
/// templated keys replacing fetched keys of the same name.
pub fn render(
    template: &SecretTemplate,
    sources: &[TemplateSource],
    fetched: BTreeMap<String, Vec<u8>>,
) -> Result<Rendered> {
    let env = environment();
    let context = context(&fetched);
    let mut templated = Rendered {
        type_: template.type_.clone(),
        ..Default::default()
    };
    for source in sources {
        let output = render_one(&env, &source.origin, &source.text, &context)?;
        let pairs = match source.scope {
            TemplateScope::Values => BTreeMap::from([(source.key.clone(), output)]),
            TemplateScope::KeysAndValues => yaml_map(&output, &source.origin)?,
        };
        let into = |map: &mut BTreeMap<String, String>| map.extend(pairs.clone());
        match source.target {
            TemplateTarget::Data => templated.data.extend(
                pairs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone().into_bytes())),
            ),
            TemplateTarget::Labels => into(&mut templated.labels),
            TemplateTarget::Annotations => into(&mut templated.annotations),
        }
    }
    for (key, text) in &template.data {
        let output = render_one(&env, &format!("data.{key}"), text, &context)?;
        templated.data.insert(key.clone(), output.into_bytes());
    }
    if let Some(metadata) = &template.metadata {
        for (key, text) in &metadata.labels {
            let output = render_one(&env, &format!("labels.{key}"), text, &context)?;
            templated.labels.insert(key.clone(), output);
        }
        for (key, text) in &metadata.annotations {
            let output = render_one(&env, &format!("annotations.{key}"), text, &context)?;
            templated.annotations.insert(key.clone(), output);
        }
    }
    let templates_data =
        !template.data.is_empty() || sources.iter().any(|s| s.target == TemplateTarget::Data);
    if !templates_data || template.merge_policy == TemplateMergePolicy::Merge {
        let mut data = fetched;
        data.append(&mut templated.data);
        templated.data = data;
    }
    for key in templated.data.keys() {
        keys::validate(key, "target.template")?;
    }
    Ok(templated)
}

/// A `dataFrom.rewrite[].transform`, parsed once and applied to every key (the variable `value`).
pub struct KeyTransform {
    env: Environment<'static>,
}

impl KeyTransform {
    const NAME: &'static str = "rewrite.transform";

    pub fn new(template: &str) -> Result<Self> {
        let mut env = environment();
        env.add_template_owned(Self::NAME, template.to_string())
            .map_err(|err| Error::Template(describe(&err, Self::NAME)))?;
        Ok(KeyTransform { env })
    }

    pub fn apply(&self, key: &str) -> Result<String> {
        let context = Value::from_pairs([("value", Value::from(key))]);
        self.env
            .get_template(Self::NAME)
            .and_then(|template| template.render(context))
            .map_err(|err| Error::Template(describe(&err, Self::NAME)))
    }
}

fn context(fetched: &BTreeMap<String, Vec<u8>>) -> Value {
    Value::from_pairs(fetched.iter().map(|(key, bytes)| {
        let value = match std::str::from_utf8(bytes) {
            Ok(text) => Value::from(text),
            Err(_) => Value::from_bytes(bytes.clone()),
        };
        (key.clone(), value)
    }))
}

fn render_one(env: &Environment<'_>, name: &str, text: &str, context: &Value) -> Result<String> {
    let template = env
        .template_from_named_str(name, text)
        .map_err(|err| Error::Template(describe(&err, name)))?;
    let mut output = Bounded::default();
    match template.render_captured_to(context.clone(), &mut output) {
        Ok(_) => String::from_utf8(output.bytes)
            .map_err(|_| Error::Template(format!("{name}: the output is not UTF-8"))),
        Err(_) if output.exceeded => Err(Error::Template(format!(
            "{name}: the output is over {} bytes, more than a Secret can hold",
            MAX_OUTPUT
        ))),
        Err(err) => Err(Error::Template(describe(&err, name))),
    }
}

/// A Secret holds at most 1 MiB: a template that writes more (a loop over a large value, say) is stopped
/// there instead of growing without bound within its fuel.
const MAX_OUTPUT: usize = 1 << 20;

#[derive(Default)]
struct Bounded {
    bytes: Vec<u8>,
    exceeded: bool,
}

impl std::io::Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len() + buf.len() > MAX_OUTPUT {
            self.exceeded = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Errors name the template and line. Their detail is kept only for kinds whose detail comes from the
/// template text itself; other details (a failed conversion, an undefined value named by a value) may quote
/// a secret value.
fn describe(err: &minijinja::Error, name: &str) -> String {
    let location = match err.line() {
        Some(line) => format!("{name} line {line}"),
        None => name.to_string(),
    };
    let safe_detail = matches!(
        err.kind(),
        ErrorKind::SyntaxError
            | ErrorKind::UnknownFilter
            | ErrorKind::UnknownFunction
            | ErrorKind::UnknownTest
            | ErrorKind::UnknownMethod
            | ErrorKind::TooManyArguments
            | ErrorKind::MissingArgument
            | ErrorKind::BadEscape
            | ErrorKind::OutOfFuel
    );
    match err.detail() {
        Some(detail) if safe_detail => format!("{location}: {}: {detail}", err.kind()),
        _ if err.kind() == ErrorKind::UndefinedError => format!(
            "{location}: {}: a name that is not a fetched key (keys that are not identifiers need lookup(\"key-name\"))",
            err.kind()
        ),
        _ => format!("{location}: {}", err.kind()),
    }
}

/// The output of a `KeysAndValues` template: a YAML map of string keys to scalar values.
fn yaml_map(output: &str, origin: &str) -> Result<BTreeMap<String, String>> {
    let invalid = || {
        Error::Template(format!(
            "{origin}: the output is not a YAML map of keys to values"
        ))
    };
    let parsed: BTreeMap<String, serde_json::Value> =
        serde_saphyr::from_str(output).map_err(|_| invalid())?;
    parsed
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(s) => Ok((key, s)),
            serde_json::Value::Null => Ok((key, String::new())),
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => Err(invalid()),
            other => Ok((key, other.to_string())),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::TemplateMetadata;

    fn fetched() -> BTreeMap<String, Vec<u8>> {
        BTreeMap::from([
            ("user".to_string(), b"admin".to_vec()),
            ("pass-word".to_string(), b"s3cret".to_vec()),
        ])
    }

    fn template(data: &[(&str, &str)]) -> SecretTemplate {
        SecretTemplate {
            data: data
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn data_templates_replace_the_fetched_keys() {
        let t = template(&[("dsn", "{{ user }}:{{ lookup('pass-word') }}@db")]);
        let out = render(&t, &[], fetched()).unwrap();
        assert_eq!(
            out.data,
            BTreeMap::from([("dsn".to_string(), b"admin:s3cret@db".to_vec())])
        );
    }

    #[test]
    fn merge_policy_keeps_fetched_keys_and_templates_win() {
        let mut t = template(&[("user", "{{ user | upper }}"), ("extra", "x")]);
        t.merge_policy = TemplateMergePolicy::Merge;
        let out = render(&t, &[], fetched()).unwrap();
        assert_eq!(out.data["user"], b"ADMIN");
        assert_eq!(out.data["pass-word"], b"s3cret");
        assert_eq!(out.data["extra"], b"x");
    }

    #[test]
    fn metadata_only_templates_keep_the_data() {
        let t = SecretTemplate {
            type_: Some("kubernetes.io/basic-auth".into()),
            metadata: Some(TemplateMetadata {
                labels: BTreeMap::from([("owner".into(), "{{ user }}".into())]),
                annotations: BTreeMap::from([("note".into(), "fixed".into())]),
            }),
            ..Default::default()
        };
        let out = render(&t, &[], fetched()).unwrap();
        assert_eq!(out.data, fetched());
        assert_eq!(out.labels["owner"], "admin");
        assert_eq!(out.annotations["note"], "fixed");
        assert_eq!(out.type_.as_deref(), Some("kubernetes.io/basic-auth"));
    }

    #[test]
    fn template_from_values_and_keys_and_values() {
        let sources = [
            TemplateSource {
                target: TemplateTarget::Data,
                scope: TemplateScope::Values,
                origin: "ConfigMap \"c\" key \"config.yaml\"".into(),
                key: "config.yaml".into(),
                text: "user: {{ user }}\n".into(),
            },
            TemplateSource {
                target: TemplateTarget::Annotations,
                scope: TemplateScope::KeysAndValues,
                origin: "literal".into(),
                key: String::new(),
                text: "a: '{{ user }}'\nb: 2".into(),
            },
        ];
        let t = template(&[("config.yaml", "override")]);
        let out = render(&t, &sources, fetched()).unwrap();
        assert_eq!(
            out.data,
            BTreeMap::from([("config.yaml".to_string(), b"override".to_vec())])
        );
        assert_eq!(
            out.annotations,
            BTreeMap::from([("a".into(), "admin".into()), ("b".into(), "2".into())])
        );
        let out = render(&SecretTemplate::default(), &sources, fetched()).unwrap();
        assert_eq!(out.data["config.yaml"], b"user: admin\n");
    }

    #[test]
    fn errors_name_the_template_not_the_values() {
        let err = render(&template(&[("x", "{{ missing }}")]), &[], fetched()).unwrap_err();
        assert_eq!(err.reason(), "TemplateError");
        assert!(err.to_string().contains("data.x"), "{err}");

        let err = render(&template(&[("x", "{{ user | int }}")]), &[], fetched()).unwrap_err();
        assert!(!err.to_string().contains("admin"), "{err}");

        let err = render(&template(&[("x", "{% for %}")]), &[], fetched()).unwrap_err();
        assert!(err.to_string().contains("syntax"), "{err}");

        let err = render(
            &template(&[(
                "x",
                "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
            )]),
            &[],
            fetched(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");

        let err = render(
            &template(&[(
                "x",
                "{% for i in range(3000) %}{{ user * 1000 }}{% endfor %}",
            )]),
            &[],
            fetched(),
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("more than a Secret can hold"),
            "{err}"
        );
    }

    #[test]
    fn keys_and_values_must_be_a_map() {
        let sources = [TemplateSource {
            target: TemplateTarget::Data,
            scope: TemplateScope::KeysAndValues,
            origin: "literal".into(),
            key: String::new(),
            text: "- a list".into(),
        }];
        let err = render(&SecretTemplate::default(), &sources, fetched()).unwrap_err();
        assert_eq!(err.reason(), "TemplateError");
    }

    #[test]
    fn transform_sees_the_key_as_value() {
        let transform = KeyTransform::new("{{ value | replace('_', '-') }}").unwrap();
        assert_eq!(transform.apply("a_b").unwrap(), "a-b");
        assert_eq!(transform.apply("c_d").unwrap(), "c-d");
        let err = KeyTransform::new("{{ value").err().unwrap();
        assert_eq!(err.reason(), "TemplateError");
    }
}
