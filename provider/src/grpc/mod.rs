//! The gRPC layer: thin wrappers that implement the generated services over the domain types
//! (one file per service) and map domain errors to `tonic::Status` in one place ([`status`]).

#![allow(
    clippy::disallowed_methods,
    reason = "the gRPC layer is the one place that makes tonic::Status values"
)]

pub mod identity;
pub mod node;
pub mod provider;
pub mod registration;
pub mod status;
