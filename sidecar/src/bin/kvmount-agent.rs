//! `kvmount-agent`: the small in-pod binary the webhook injects (`agent`, `exec`, `probe`,
//! `install`). It links none of the webhook's server, certificate or Kubernetes API code.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kvmount_sidecar::agent_cli::{self, PodCommand};

/// Freed memory is zeroed: HTTP, TLS and JSON buffers that held secret values do not keep them
/// (the `tests/tests/security_sidecar.rs` scan counts copies in the agent between rounds). Over
/// the C library's allocator, which keeps the agent smaller than mimalloc (see `kvmount-alloc`).
#[global_allocator]
static ALLOCATOR: kvmount_alloc::ZeroingAllocator<std::alloc::System> =
    kvmount_alloc::ZeroingAllocator::system();

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
