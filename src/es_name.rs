//! An ExternalSecret's namespace and name in one allocation, for the maps that hold an entry for every
//! ExternalSecret. An `ObjectRef` is 96 bytes inline (room for a resourceVersion and uid these never hold)
//! and two allocations: at 100,000 ExternalSecrets the refresh schedule alone took 18 MB.

use std::fmt;

use kube::ResourceExt;
use kube::runtime::reflector::ObjectRef;

use crate::api::ExternalSecret;

/// `namespace/name`: neither may hold a `/`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EsName(Box<str>);

impl EsName {
    pub fn new(namespace: &str, name: &str) -> Self {
        EsName(joined(Some(namespace), name))
    }

    pub fn of(es: &ExternalSecret) -> Self {
        EsName(joined(es.metadata.namespace.as_deref(), &es.name_any()))
    }

    pub fn object_ref(&self) -> ObjectRef<ExternalSecret> {
        match self.0.split_once('/') {
            Some((namespace, name)) => ObjectRef::new(name).within(namespace),
            None => ObjectRef::new(&self.0),
        }
    }
}

impl From<&ObjectRef<ExternalSecret>> for EsName {
    fn from(es: &ObjectRef<ExternalSecret>) -> Self {
        EsName(joined(es.namespace.as_deref(), &es.name))
    }
}

/// `namespace/name`, or `name` alone for a cluster-scoped object: one allocation, for keys kept per object.
pub fn joined(namespace: Option<&str>, name: &str) -> Box<str> {
    match namespace {
        Some(namespace) => format!("{namespace}/{name}").into(),
        None => name.into(),
    }
}

impl fmt::Debug for EsName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_same_external_secret_as_its_object_ref() {
        for es in [
            ObjectRef::<ExternalSecret>::new("db").within("team-a"),
            ObjectRef::new("cluster-wide"),
        ] {
            assert_eq!(EsName::from(&es).object_ref(), es);
        }
    }
}
