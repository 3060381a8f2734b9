//! CSI `Identity`: plugin name and version, capabilities, and readiness.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use kvmount_proto::csi::identity_server::Identity;
use kvmount_proto::csi::{
    GetPluginCapabilitiesRequest, GetPluginCapabilitiesResponse, GetPluginInfoRequest,
    GetPluginInfoResponse, ProbeRequest, ProbeResponse,
};
use tonic::{Request, Response, Status};

/// Default CSI driver name.
pub const DEFAULT_DRIVER_NAME: &str = "secrets.kvmount.io";

/// The Identity service.
pub struct IdentityService {
    driver_name: String,
    ready: Arc<AtomicBool>,
}

impl IdentityService {
    /// `ready` turns true once every socket serves.
    pub fn new(driver_name: String, ready: Arc<AtomicBool>) -> Self {
        Self { driver_name, ready }
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _request: Request<GetPluginInfoRequest>,
    ) -> Result<Response<GetPluginInfoResponse>, Status> {
        Ok(Response::new(GetPluginInfoResponse {
            name: self.driver_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").into(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _request: Request<GetPluginCapabilitiesRequest>,
    ) -> Result<Response<GetPluginCapabilitiesResponse>, Status> {
        // A node-only ephemeral driver: no controller service, no topology constraints.
        Ok(Response::new(GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _request: Request<ProbeRequest>,
    ) -> Result<Response<ProbeResponse>, Status> {
        Ok(Response::new(ProbeResponse {
            ready: Some(self.ready.load(Ordering::Acquire)),
        }))
    }
}
