//! `templateFrom`: the template texts kept in ConfigMaps and Secrets next to the ExternalSecret.

use crate::api::{SecretTemplate, TemplateScope};
use crate::controller::Context;
use crate::error::{Error, Result};
use crate::template::TemplateSource;

/// Reads `templateFrom` texts from ConfigMaps and Secrets in the ExternalSecret's namespace, as their
/// watches last saw them.
pub(super) async fn template_sources(
    ctx: &Context,
    namespace: &str,
    secret_template: &SecretTemplate,
) -> Result<Vec<TemplateSource>> {
    let mut sources = Vec::new();
    for from in &secret_template.template_from {
        if let Some(literal) = &from.literal {
            sources.push(TemplateSource {
                target: from.target,
                scope: TemplateScope::KeysAndValues,
                origin: "templateFrom literal".into(),
                key: String::new(),
                text: literal.clone(),
            });
        }
        let (kind, reference, mut texts) = if let Some(reference) = &from.config_map {
            let map = ctx
                .template_config_maps
                .get(namespace, &reference.name)
                .await?;
            (
                "ConfigMap",
                reference,
                map.map(|m| m.data.clone().unwrap_or_default()),
            )
        } else if let Some(reference) = &from.secret {
            let secret = ctx
                .stores
                .referenced_secret(namespace, &reference.name)
                .await?;
            let texts = secret.map(|s| {
                s.data
                    .iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                    .collect()
            });
            ("Secret", reference, texts)
        } else {
            continue;
        };
        let texts = texts.as_mut().ok_or_else(|| {
            Error::Template(format!(
                "templateFrom {kind} {:?} not found",
                reference.name
            ))
        })?;
        for item in &reference.items {
            let origin = format!("{kind} {:?} key {:?}", reference.name, item.key);
            let text = texts
                .remove(&item.key)
                .ok_or_else(|| Error::Template(format!("templateFrom {origin} not found")))?;
            sources.push(TemplateSource {
                target: from.target,
                scope: item.template_as,
                origin,
                key: item.key.clone(),
                text,
            });
        }
    }
    Ok(sources)
}
