//! secretsync: a Kubernetes operator that syncs AWS Secrets Manager values into Secrets.
//!
//! `api` holds the CRD types; `controller` the reconcilers; `provider` where values come from; `store` resolves a store's identity; `rotation` watches remote versions; `mapping` and
//! `template` turn values into Secret data; `target` is the one place that writes Secrets; `metrics`, `server`
//! and `telemetry` are what operators watch it with; `watched_map` keeps what watches of other kinds show.

pub mod api;
pub mod check;
pub mod cli;
pub mod controller;
pub mod data_hash;
pub mod error;
pub mod es_name;
pub mod fetch;
pub mod leader;
pub mod mapping;
pub mod metrics;
pub mod provider;
pub mod rotation;
pub mod server;
pub mod store;
pub mod target;
pub mod task;
pub mod telemetry;
pub mod template;
pub mod watched_map;

pub use error::{Error, Result};
