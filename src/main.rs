use clap::Parser;

// glibc's allocator kept freed memory in its per-thread arenas: at 5,000 ExternalSecrets the RSS was 1.6
// times the live heap. jemalloc hands it back, from a background thread, a second after it is freed.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[tokio::main]
async fn main() {
    let cli = secretsync::cli::Cli::parse();
    if let Err(err) = secretsync::cli::execute(cli).await {
        eprintln!("secretsync: {err}");
        std::process::exit(1);
    }
}
