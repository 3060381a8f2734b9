//! Reading objects from Azure Key Vault for kvmount.
//!
//! - [`params`]: the SecretProviderClass parameter model (Azure provider names), parsed once;
//!   [`objects_memo`] keeps the parsed `objects` of recent classes;
//! - [`client`]: the [`Connector`]: a mount's credential and its vault's client, in its cloud;
//! - [`http`]: where Key Vault and Entra ID are, trusted roots, `--resolve`, the HTTP clients;
//! - [`credential`]: the proof of a credential, the credential an identity's clients share;
//! - [`read`]: a vault's [`read::VaultClient`] and what its reads return;
//! - [`validity`]: whether a version may be written (`enabled`, `nbf`, `exp`);
//! - [`pipeline`]: helpers for kvmount's policies in the SDK's request pipelines;
//! - [`fetch`] and [`render`]: fetching a mount's objects concurrently and rendering file bytes;
//! - [`cloud`]: cloudName / cloudEnvFileName;
//! - [`pem`]: PEM, chain order, PKCS#12 and public-key formats;
//! - [`secret`]: memory types that zero on drop and never print their contents.
//!
//! This crate knows nothing about gRPC or files on disk.

pub mod client;
pub mod cloud;
pub mod credential;
pub mod duration;
pub mod error;
pub mod fetch;
pub mod http;
pub mod objects_memo;
pub mod params;
pub mod pem;
pub mod pipeline;
mod preauth;
pub mod read;
pub mod render;
pub mod secret;
pub mod validity;

pub use client::{Connector, ConnectorConfig, ResolveRule};
pub use error::{ErrorKind, ParamError, VaultError};
pub use fetch::{
    FetchedObject, ObjectError, RenderedFile, RenderedObject, fetch_all, fetch_object,
    rendered_object,
};
pub use params::{Auth, MountParams, ObjectSpec};
pub use secret::{SecretBytes, SecretString};
