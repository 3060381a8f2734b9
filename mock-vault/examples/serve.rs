//! Runs the mock vault from the command line: `serve --listen 127.0.0.1:0 --tls-dir /tmp/x`.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "serve",
    about = "kvmount mock Key Vault + Entra token endpoint"
)]
struct Cli {
    #[command(flatten)]
    args: kvmount_mock_vault::MockVaultArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    kvmount_mock_vault::run_cli(Cli::parse().args).await
}
