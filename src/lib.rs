//! secretsync: a Kubernetes operator that syncs AWS Secrets Manager values into Secrets.
//!
//! `api` holds the CRD types; `controller` the reconcilers; `provider` where values come from; `target` the
//! one place that writes Secrets; `metrics`, `server` and `telemetry` what operators watch it with.

pub mod api;
pub mod cli;
pub mod controller;
pub mod data_hash;
pub mod error;
pub mod metrics;
pub mod provider;
pub mod server;
pub mod target;
pub mod telemetry;

pub use error::{Error, Result};
