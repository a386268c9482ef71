//! Logging: plain or JSON, chosen at run time.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

/// kube's client logs the API server's refusals whole at debug level, and a refusal can quote what was sent
/// (a 422 for a templated label quotes the label's value): that module never logs below info.
const QUOTES_REQUESTS: &str = "kube_client::client=info";

/// `RUST_LOG`, when set, overrides `level`.
pub fn init(format: LogFormat, level: &str) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(level))
        .add_directive(QUOTES_REQUESTS.parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
