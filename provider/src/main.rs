//! `kvmount-provider`: see `kvmount_provider::cli`.

use clap::Parser;
use kvmount_provider::cli::{Cli, Command};

/// Freed memory is zeroed, so secrets do not outlive the buffers that held them.
#[global_allocator]
static ALLOCATOR: kvmount_provider::alloc::ZeroingAllocator =
    kvmount_provider::alloc::ZeroingAllocator::mimalloc();

fn main() -> std::process::ExitCode {
    kvmount_provider::hardening::harden_process();
    let cli = Cli::parse();
    // The daemon runs on one thread: every Key Vault answer is then decoded on the one stack
    // that `hardening::scrub_stack` clears, and one core is plenty for its work.
    let mut builder = match cli.command {
        Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("kvmount-provider: cannot start the async runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(args) => {
                args.log.init()?;
                match kvmount_provider::classes::from_flags(
                    args.kubeconfig.as_deref(),
                    args.csi_socket.is_some(),
                )
                .await
                {
                    Ok(classes) => kvmount_provider::daemon::run(args, classes).await,
                    Err(err) => Err(err),
                }
            }
            #[cfg(feature = "dev")]
            Command::MockVault(args) => kvmount_mock_vault::run_cli(args).await,
            #[cfg(feature = "dev")]
            Command::Dev(args) => kvmount_provider::dev::run(args).await,
            #[cfg(not(feature = "dev"))]
            Command::MockVault(_) | Command::Dev(_) => {
                Err(anyhow::anyhow!(kvmount_provider::cli::NO_MOCK_VAULT))
            }
            Command::Status(args) => kvmount_provider::status_cmd::run(&args),
        }
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("kvmount-provider: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
