//! The keys of the target Secret: converting remote names into valid keys, rewriting them, and refusing
//! invalid keys and collisions.

use std::collections::BTreeMap;

use regex::Regex;

use crate::api::{ConversionStrategy, Rewrite};
use crate::error::{Error, Result};
use crate::template;

const MAX_KEY_LENGTH: usize = 253;

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')
}

/// Replaces the characters a Secret key may not hold: `/` → `_` (Default), or `_U<hex>_` (Unicode).
pub fn convert(name: &str, strategy: ConversionStrategy) -> String {
    name.chars()
        .map(|c| match (is_key_char(c), strategy) {
            (true, _) => c.to_string(),
            (false, ConversionStrategy::Default) => "_".to_string(),
            (false, ConversionStrategy::Unicode) => format!("_U{:04x}_", c as u32),
        })
        .collect()
}

/// A Secret key must match `[-._a-zA-Z0-9]+`, be at most 253 characters and not be `.` or `..`.
pub fn validate(key: &str, source: &str) -> Result<()> {
    let problem = if key.is_empty() {
        Some("it is empty")
    } else if key.len() > MAX_KEY_LENGTH {
        Some("it is longer than 253 characters")
    } else if !key.chars().all(is_key_char) {
        Some("only letters, digits, '-', '_' and '.' are allowed")
    } else if key == "." || key == ".." {
        Some("'.' and '..' are not allowed")
    } else {
        None
    };
    match problem {
        Some(problem) => Err(Error::InvalidKey {
            key: key.to_string(),
            origin: source.to_string(),
            problem: problem.to_string(),
        }),
        None => Ok(()),
    }
}

/// Applies `rewrite` entries in order to every key. Keys that end up equal are left for `KeySet` to refuse,
/// naming where each came from.
pub fn rewrite<V>(entries: Vec<(String, V)>, rewrites: &[Rewrite]) -> Result<Vec<(String, V)>> {
    let compiled = rewrites
        .iter()
        .map(|rewrite| match (&rewrite.regexp, &rewrite.transform) {
            (Some(regexp), _) => Regex::new(&regexp.source)
                .map(|source| Rewriter::Regexp(source, &regexp.target))
                .map_err(|err| {
                    Error::InvalidSpec(format!("rewrite regexp {:?}: {err}", regexp.source))
                }),
            (None, Some(transform)) => template::KeyTransform::new(&transform.template)
                .map(|t| Rewriter::Transform(Box::new(t))),
            (None, None) => Err(Error::InvalidSpec(
                "a rewrite entry sets neither regexp nor transform".into(),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    entries
        .into_iter()
        .map(|(key, value)| {
            let key = compiled
                .iter()
                .try_fold(key, |key, rewriter| rewriter.apply(&key))?;
            Ok((key, value))
        })
        .collect()
}

enum Rewriter<'a> {
    Regexp(Regex, &'a str),
    Transform(Box<template::KeyTransform>),
}

impl Rewriter<'_> {
    fn apply(&self, key: &str) -> Result<String> {
        match self {
            Rewriter::Regexp(source, target) => Ok(source.replace_all(key, *target).into_owned()),
            Rewriter::Transform(transform) => transform.apply(key),
        }
    }
}

/// Secret data being assembled from several sources; a key written twice is an error naming both sources.
#[derive(Default)]
pub struct KeySet<V> {
    entries: BTreeMap<String, (V, String)>,
}

impl<V> KeySet<V> {
    pub fn insert(&mut self, key: String, value: V, source: String) -> Result<()> {
        validate(&key, &source)?;
        if let Some((_, first)) = self.entries.get(&key) {
            return Err(Error::KeyCollision {
                key,
                first: first.clone(),
                second: source,
            });
        }
        self.entries.insert(key, (value, source));
        Ok(())
    }

    pub fn into_map(self) -> BTreeMap<String, V> {
        self.entries
            .into_iter()
            .map(|(key, (value, _))| (key, value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{RewriteRegexp, RewriteTransform};

    #[test]
    fn conversion_strategies() {
        assert_eq!(
            convert("app/db/password", ConversionStrategy::Default),
            "app_db_password"
        );
        assert_eq!(
            convert("a b/ü", ConversionStrategy::Unicode),
            "a_U0020_b_U002f__U00fc_"
        );
        assert_eq!(
            convert("ok-key_1.x", ConversionStrategy::Unicode),
            "ok-key_1.x"
        );
    }

    #[test]
    fn invalid_keys_are_named() {
        assert!(validate("good-key_1.x", "data[0]").is_ok());
        for bad in ["", "a/b", "..", "sp ace"] {
            let err = validate(bad, "data[0]").unwrap_err();
            assert_eq!(err.reason(), "InvalidKey");
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
        assert!(validate(&"x".repeat(254), "s").is_err());
    }

    fn regexp(source: &str, target: &str) -> Rewrite {
        Rewrite {
            regexp: Some(RewriteRegexp {
                source: source.into(),
                target: target.into(),
            }),
            transform: None,
        }
    }

    #[test]
    fn rewrites_apply_in_order() {
        let keys = vec![("app_db_user".to_string(), 1), ("app_api".to_string(), 2)];
        let transform = Rewrite {
            regexp: None,
            transform: Some(RewriteTransform {
                template: "{{ value | upper }}".into(),
            }),
        };
        let out = rewrite(keys, &[regexp("^app_(.*)$", "svc-$1"), transform]).unwrap();
        assert_eq!(
            out,
            [("SVC-DB_USER".to_string(), 1), ("SVC-API".to_string(), 2)]
        );
    }

    #[test]
    fn invalid_rewrites() {
        let keys = vec![("a1".to_string(), ())];
        let err = rewrite(keys.clone(), &[regexp("(", "x")]).unwrap_err();
        assert_eq!(err.reason(), "InvalidSpec");
        let transform = Rewrite {
            regexp: None,
            transform: Some(RewriteTransform {
                template: "{{ value".into(),
            }),
        };
        assert_eq!(
            rewrite(keys, &[transform]).unwrap_err().reason(),
            "TemplateError"
        );
    }

    #[test]
    fn collisions_name_both_sources() {
        let mut set = KeySet::default();
        set.insert("user".into(), 1, "data[0]".into()).unwrap();
        let err = set
            .insert("user".into(), 2, "dataFrom[0]".into())
            .unwrap_err();
        assert_eq!(err.reason(), "KeyCollision");
        let message = err.to_string();
        assert!(message.contains("data[0]") && message.contains("dataFrom[0]"));
    }
}
