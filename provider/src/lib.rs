//! kvmount's node daemon: the provider API for the upstream Secrets Store CSI Driver, the
//! laptop `dev` life cycle, and the mock vault subcommand (these two only with the `dev`
//! feature, on by default and off in the images).
//!
//! - [`provider_api`]: the provider-API domain (one Mount in, files and versions out), no gRPC types;
//! - [`grpc`]: generated-service wrappers and the one place errors become statuses;
//! - [`server`]: Unix-socket serving, shutdown and a client channel helper;
//! - [`registration`]: the CSI driver's registration with the kubelet (no registrar container);
//! - [`cli`]: command-line flags; [`dev`]: the one-machine life cycle.

pub mod access;
pub mod alloc;
pub mod blocking;
pub mod cache;
pub mod classes;
pub mod cli;
pub mod cloud_files;
pub mod daemon;
#[cfg(feature = "dev")]
pub mod dev;
pub mod grpc;
pub mod hardening;
pub use kvmount_telemetry::logging;
pub mod metrics;
pub mod provider_api;
pub mod ratelimit;
pub mod refresh;
pub mod registration;
pub mod server;
#[cfg_attr(
    test,
    allow(
        clippy::disallowed_methods,
        reason = "state.rs's unit tests write corrupt and future state files on purpose"
    )
)]
pub mod state;
pub mod status_cmd;
pub mod volumes;
