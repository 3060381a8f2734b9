//! `kvmount-sidecar`: Key Vault secrets for pods that cannot use the node plugin, through an
//! admission webhook that injects a small agent into annotated pods.
//!
//! - [`annotations`]: the `kvmount.io/*` pod annotations, parsed once into an [`annotations::Injection`];
//! - [`config`]: the agent configuration the webhook writes and the agent (and `exec`) read,
//!   turned into typed object specs through `kvmount_vault::params` (the SecretProviderClass model);
//! - [`object`]: an object reference (`<type>/<name>[/<version>]`), its file fields and its
//!   `objects` YAML;
//! - [`template`]: the small template language of `template-<file>`;
//! - [`patch`]: RFC 6902 JSON patch operations with RFC 6901 pointers;
//! - [`paths`]: the container paths a kvmount mount must keep clear of (`mount-path`'s rule);
//! - [`webhook`]: AdmissionReview v1 in, AdmissionReview v1 out (pure, no I/O);
//! - [`server`] and [`tls`]: the HTTPS server (TLS only) with file or self-managed certificates;
//! - [`agent`]: fetch, render and write into the shared memory volume, refresh, probe;
//! - [`exec`]: resolve `env-<VAR>` references and exec the app with them.
//!
//! The agent path ([`agent`], [`exec`]) does not touch the webhook's HTTP server, TLS
//! certificate generation or Kubernetes API code.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_cli;
pub mod annotations;
pub mod config;
pub mod exec;
pub mod kube_api;
pub use kvmount_telemetry::logging;
pub mod object;
pub mod patch;
pub mod paths;
pub mod server;
pub mod template;
pub mod tls;
pub mod webhook;
