use clap::Parser;

#[tokio::main]
async fn main() {
    let cli = secretsync::cli::Cli::parse();
    if let Err(err) = secretsync::cli::execute(cli).await {
        eprintln!("secretsync: {err}");
        std::process::exit(1);
    }
}
