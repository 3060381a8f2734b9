//! Reading objects from Azure Key Vault for kvmount.
//!
//! - [`params`]: the SecretProviderClass parameter model (Azure provider names), parsed once;
//! - [`client`]: the official Azure SDK client, credentials, host overrides and extra roots;
//! - [`fetch`] and [`render`]: fetching a mount's objects concurrently and rendering file bytes;
//! - [`cloud`]: cloudName / cloudEnvFileName;
//! - [`pem`]: PEM, chain order, PKCS#12 and public-key formats;
//! - [`secret`]: memory types that zero on drop and never print their contents.
//!
//! This crate knows nothing about gRPC or files on disk.

pub mod client;
pub mod cloud;
pub mod duration;
pub mod error;
pub mod fetch;
pub mod params;
pub mod pem;
mod preauth;
pub mod render;
pub mod secret;

pub use client::{Connector, ConnectorConfig, ResolveRule};
pub use error::{ErrorKind, ParamError, VaultError};
pub use fetch::{
    FetchedObject, ObjectError, RenderedFile, RenderedObject, fetch_all, fetch_object,
    rendered_object,
};
pub use params::{Auth, MountParams, ObjectSpec};
pub use secret::{SecretBytes, SecretString};
