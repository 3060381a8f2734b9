//! The kubelet's plugin registration service (`pluginregistration.Registration`): what kvmount
//! answers when the kubelet finds its socket in `<kubelet root>/plugins_registry/`.

use std::sync::{Arc, Mutex};

use kvmount_proto::pluginregistration::registration_server::Registration;
use kvmount_proto::pluginregistration::{
    InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use tonic::{Request, Response, Status};

/// The plugin type the kubelet's CSI handler takes.
const CSI_PLUGIN: &str = "CSIPlugin";

/// The CSI versions kvmount speaks, as the kubelet wants them listed (it accepts 1.x).
const SUPPORTED_VERSIONS: [&str; 1] = ["1.0.0"];

/// Longest kubelet error kept and logged: the kubelet's messages are short, and a socket
/// anyone on the node could write to must not grow the daemon's memory or log.
const MAX_ERROR_CHARS: usize = 512;

/// What the kubelet last told kvmount about its registration.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Outcome {
    /// No NotifyRegistrationStatus yet on the current socket.
    #[default]
    Pending,
    /// The kubelet registered the driver.
    Registered,
    /// The kubelet refused it, with its reason (cut to a short prefix).
    Refused(String),
}

/// Shared between the service and the socket's keeper, which re-creates the socket after a
/// refusal so the kubelet tries again.
#[derive(Debug, Default)]
pub struct RegistrationState {
    outcome: Mutex<Outcome>,
}

impl RegistrationState {
    /// The last outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Records an outcome.
    pub fn set(&self, outcome: Outcome) {
        *self
            .outcome
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = outcome;
    }
}

/// The Registration service.
pub struct RegistrationService {
    driver_name: String,
    endpoint: String,
    state: Arc<RegistrationState>,
}

impl RegistrationService {
    /// `endpoint` is the CSI socket's path as the kubelet sees it on the node.
    pub fn new(driver_name: String, endpoint: String, state: Arc<RegistrationState>) -> Self {
        Self {
            driver_name,
            endpoint,
            state,
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!("kubelet asked for the plugin info");
        Ok(Response::new(PluginInfo {
            r#type: CSI_PLUGIN.into(),
            name: self.driver_name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| (*v).to_owned()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        let outcome = if status.plugin_registered {
            tracing::info!(driver = %self.driver_name, "the kubelet registered the CSI driver");
            Outcome::Registered
        } else {
            let error: String = status.error.chars().take(MAX_ERROR_CHARS).collect();
            tracing::error!(driver = %self.driver_name, %error, "the kubelet refused the CSI driver");
            Outcome::Refused(error)
        };
        self.state.set(outcome);
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}
