//! `kvmount-agent`: the small in-pod binary the webhook injects (`agent`, `exec`, `probe`,
//! `install`). It links none of the webhook's server, certificate or Kubernetes API code.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kvmount_sidecar::agent_cli::{self, PodCommand};

#[derive(Parser)]
#[command(
    name = "kvmount-agent",
    version,
    about = "Key Vault secrets into this pod's memory volume or environment"
)]
struct Cli {
    #[command(subcommand)]
    command: PodCommand,
}

fn main() -> ExitCode {
    let started = Instant::now();
    let cli = Cli::parse();
    match agent_cli::run(cli.command, started) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("kvmount-agent: {message}");
            ExitCode::FAILURE
        }
    }
}
