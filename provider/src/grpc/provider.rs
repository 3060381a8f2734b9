//! `v1alpha1.CSIDriverProvider`: the API the upstream Secrets Store CSI Driver calls.

use kvmount_proto::provider::csi_driver_provider_server::CsiDriverProvider;
use kvmount_proto::provider::{
    File, MountRequest, MountResponse, ObjectVersion, VersionRequest, VersionResponse,
};
use tonic::{Code, Request, Response, Status};

use std::sync::Arc;

use crate::grpc::status::code_name;
use crate::metrics::{Metrics, MountPath};
use crate::provider_api::{MountInput, Mounter};

/// Name reported by `Version`.
pub const RUNTIME_NAME: &str = "kvmount";

/// The provider service over a [`Mounter`].
pub struct ProviderService {
    mounter: Mounter,
    metrics: Arc<Metrics>,
}

impl ProviderService {
    /// Wraps `mounter`; counts mounts in `metrics`.
    pub fn new(mounter: Mounter, metrics: Arc<Metrics>) -> Self {
        Self { mounter, metrics }
    }
}

#[tonic::async_trait]
impl CsiDriverProvider for ProviderService {
    async fn version(
        &self,
        request: Request<VersionRequest>,
    ) -> Result<Response<VersionResponse>, Status> {
        let version = request.into_inner().version;
        Ok(Response::new(VersionResponse {
            version: if version.is_empty() {
                "v1alpha1".into()
            } else {
                version
            },
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
        }))
    }

    async fn mount(
        &self,
        request: Request<MountRequest>,
    ) -> Result<Response<MountResponse>, Status> {
        let mut request = request.into_inner();
        let input = MountInput {
            attributes: std::mem::take(&mut request.attributes),
            secrets: std::mem::take(&mut request.secrets),
            permission: std::mem::take(&mut request.permission),
            target_path: std::mem::take(&mut request.target_path),
        };
        drop(request);
        let started = std::time::Instant::now();
        let result = self.mounter.mount(input).await.map_err(Status::from);
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        self.metrics
            .mount(MountPath::Provider, code_name(code), started.elapsed());
        let output = match result {
            Ok(output) => output,
            Err(status) => {
                tracing::warn!(code = ?status.code(), error = %status.message(), "mount failed");
                return Err(status);
            }
        };
        let mut response = MountResponse::default();
        for object in output.objects {
            response.object_version.push(ObjectVersion {
                id: object.id.clone(),
                version: object.version.clone(),
            });
            for file in object.files {
                response.files.push(File {
                    path: file.path.clone(),
                    // invariant: modes are validated to 0..=0o777
                    mode: file.mode as i32,
                    contents: file.contents.expose().to_vec(),
                });
            }
        }
        Ok(Response::new(response))
    }
}
