//! SecretProviderClass lookups for the CSI path, through the Kubernetes API (`kvmount-k8s`).

use std::path::Path;
use std::sync::Arc;

use kvmount_k8s::ClassResolver;

use crate::volumes::{ClassError, ClassLookup, ClassParameters};

/// Looks classes up with a [`ClassResolver`].
pub struct KubeClasses(ClassResolver);

#[tonic::async_trait]
impl ClassLookup for KubeClasses {
    async fn get(&self, namespace: &str, name: &str) -> Result<ClassParameters, ClassError> {
        match self.0.get(namespace, name).await {
            Ok(class) => Ok(ClassParameters {
                provider: class.provider,
                parameters: class.parameters,
            }),
            Err(err) => Err(ClassError {
                kind: err.kind(),
                message: err.to_string(),
            }),
        }
    }
}

/// The lookup for the daemon: from `--kubeconfig` when given, else the in-cluster config when
/// running in a pod, else none (volumes naming a class then fail with a clear message).
///
/// Only the CSI path (`serves_csi`: `--csi-socket`) looks classes up; the upstream driver hands
/// the provider API the class's parameters. Without it the daemon makes no Kubernetes client,
/// so it starts in a pod without a service-account token (the chart's provider mode mounts
/// none: that daemon never calls the API server).
pub async fn from_flags(
    kubeconfig: Option<&Path>,
    serves_csi: bool,
) -> anyhow::Result<Option<Arc<dyn ClassLookup>>> {
    if !serves_csi {
        return Ok(None);
    }
    let resolver = match kubeconfig {
        Some(path) => ClassResolver::from_kubeconfig(path).await?,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            ClassResolver::in_cluster().await?
        }
        None => return Ok(None),
    };
    Ok(Some(Arc::new(KubeClasses(resolver))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn provider_mode_makes_no_kubernetes_client() {
        // A kubeconfig that cannot be read: used, it would be an error.
        let missing = Path::new("/nonexistent/kvmount-test.kubeconfig");
        assert!(
            from_flags(Some(missing), false)
                .await
                .expect("no client")
                .is_none()
        );
        assert!(from_flags(Some(missing), true).await.is_err());
    }
}
