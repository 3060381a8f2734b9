//! CSI `Node`: publish and unpublish ephemeral secrets volumes; no staging, stats or expansion.

use std::sync::Arc;

use kvmount_proto::csi::node_server::Node;
use kvmount_proto::csi::node_service_capability;
use kvmount_proto::csi::volume_capability::AccessType;
use kvmount_proto::csi::{
    NodeExpandVolumeRequest, NodeExpandVolumeResponse, NodeGetCapabilitiesRequest,
    NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
    NodeGetVolumeStatsRequest, NodeGetVolumeStatsResponse, NodePublishVolumeRequest,
    NodePublishVolumeResponse, NodeServiceCapability, NodeStageVolumeRequest,
    NodeStageVolumeResponse, NodeUnpublishVolumeRequest, NodeUnpublishVolumeResponse,
    NodeUnstageVolumeRequest, NodeUnstageVolumeResponse,
};
use tonic::{Code, Request, Response, Status};

use crate::grpc::status::code_name;
use crate::metrics::{Metrics, MountPath};
use crate::volumes::{PublishRequest, Volumes};

/// The Node service over [`Volumes`].
pub struct NodeService {
    node_id: String,
    volumes: Arc<Volumes>,
    metrics: Arc<Metrics>,
}

impl NodeService {
    /// A node service for node `node_id`; counts calls in `metrics`.
    pub fn new(node_id: String, volumes: Arc<Volumes>, metrics: Arc<Metrics>) -> Self {
        Self {
            node_id,
            volumes,
            metrics,
        }
    }
}

#[tonic::async_trait]
impl Node for NodeService {
    async fn node_stage_volume(
        &self,
        _request: Request<NodeStageVolumeRequest>,
    ) -> Result<Response<NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeStageVolume: kvmount volumes are not staged",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _request: Request<NodeUnstageVolumeRequest>,
    ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "NodeUnstageVolume: kvmount volumes are not staged",
        ))
    }

    async fn node_publish_volume(
        &self,
        request: Request<NodePublishVolumeRequest>,
    ) -> Result<Response<NodePublishVolumeResponse>, Status> {
        let mut request = request.into_inner();
        let (mount_capability, mount_group) = match &request.volume_capability {
            None => (None, None),
            Some(capability) => match &capability.access_type {
                Some(AccessType::Mount(mount)) => {
                    (Some(true), Some(mount.volume_mount_group.clone()))
                }
                Some(AccessType::Block(_)) => (Some(false), None),
                None => (Some(true), None),
            },
        };
        let publish = PublishRequest {
            volume_id: std::mem::take(&mut request.volume_id),
            target_path: std::mem::take(&mut request.target_path),
            readonly: request.readonly,
            mount_capability,
            mount_group: mount_group.filter(|g| !g.is_empty()),
            context: std::mem::take(&mut request.volume_context),
            secrets: std::mem::take(&mut request.secrets),
        };
        drop(request);
        let target = publish.target_path.clone();
        let started = std::time::Instant::now();
        let result = self.volumes.publish(publish).await.map_err(Status::from);
        let code = result.as_ref().err().map_or(Code::Ok, Status::code);
        self.metrics
            .mount(MountPath::Csi, code_name(code), started.elapsed());
        match result {
            Ok(()) => Ok(Response::new(NodePublishVolumeResponse {})),
            Err(status) => {
                tracing::warn!(target = %target, code = ?status.code(), error = %status.message(), "publish failed");
                Err(status)
            }
        }
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<NodeUnpublishVolumeRequest>,
    ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
        let request = request.into_inner();
        match self
            .volumes
            .unpublish(&request.volume_id, &request.target_path)
            .await
        {
            Ok(()) => Ok(Response::new(NodeUnpublishVolumeResponse {})),
            Err(err) => {
                let status = Status::from(err);
                tracing::warn!(target = %request.target_path, code = ?status.code(), error = %status.message(), "unpublish failed");
                Err(status)
            }
        }
    }

    async fn node_get_volume_stats(
        &self,
        _request: Request<NodeGetVolumeStatsRequest>,
    ) -> Result<Response<NodeGetVolumeStatsResponse>, Status> {
        Err(Status::unimplemented("NodeGetVolumeStats is not offered"))
    }

    async fn node_expand_volume(
        &self,
        _request: Request<NodeExpandVolumeRequest>,
    ) -> Result<Response<NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("NodeExpandVolume is not offered"))
    }

    async fn node_get_capabilities(
        &self,
        _request: Request<NodeGetCapabilitiesRequest>,
    ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
        // VOLUME_MOUNT_GROUP: the kubelet then sends the pod's `securityContext.fsGroup` as
        // `volume_mount_group` in NodePublishVolume (whatever the CSIDriver's fsGroupPolicy),
        // and kvmount makes the files readable by that group.
        Ok(Response::new(NodeGetCapabilitiesResponse {
            capabilities: vec![NodeServiceCapability {
                r#type: Some(node_service_capability::Type::Rpc(
                    node_service_capability::Rpc {
                        r#type: node_service_capability::rpc::Type::VolumeMountGroup as i32,
                    },
                )),
            }],
        }))
    }

    async fn node_get_info(
        &self,
        _request: Request<NodeGetInfoRequest>,
    ) -> Result<Response<NodeGetInfoResponse>, Status> {
        Ok(Response::new(NodeGetInfoResponse {
            node_id: self.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}
