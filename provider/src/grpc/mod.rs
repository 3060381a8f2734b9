//! The gRPC layer: thin wrappers that implement the generated services over the domain types
//! and map domain errors to `tonic::Status` in one place ([`status`]).

pub mod provider;
pub mod status;
