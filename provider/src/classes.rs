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
pub async fn from_flags(kubeconfig: Option<&Path>) -> anyhow::Result<Option<Arc<dyn ClassLookup>>> {
    let resolver = match kubeconfig {
        Some(path) => ClassResolver::from_kubeconfig(path).await?,
        None if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() => {
            ClassResolver::in_cluster().await?
        }
        None => return Ok(None),
    };
    Ok(Some(Arc::new(KubeClasses(resolver))))
}
