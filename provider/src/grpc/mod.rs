//! The gRPC layer: thin wrappers that implement the generated services over the domain types
//! (one file per service) and map domain errors to `tonic::Status` in one place ([`status`]).

pub mod identity;
pub mod node;
pub mod provider;
pub mod registration;
pub mod status;
