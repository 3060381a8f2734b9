//! Generated gRPC types for the three wire contracts kvmount serves:
//!
//! - [`provider`]: the Secrets Store CSI Driver provider API (`v1alpha1.CSIDriverProvider`),
//!   spoken by the upstream driver over `<dir>/<provider>.sock`;
//! - [`csi`]: CSI v1 Identity and Node services, spoken by kubelet when kvmount is the CSI driver;
//! - [`pluginregistration`]: the kubelet's plugin registration service, by which kvmount
//!   registers its CSI socket with the kubelet.
//!
//! Messages that carry secret values or service-account tokens have hand-written `Debug`
//! impls that print only sizes and non-secret fields, and zero their secret fields on drop.
//! These types must not leave the provider crate's gRPC layer (see ARCHITECTURE.md).

use std::collections::HashMap;
use std::fmt;

use zeroize::Zeroize;

/// `package v1alpha1`: the Secrets Store CSI Driver provider API.
pub mod provider {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("v1alpha1");
}

/// `package csi.v1`: CSI Identity and Node services.
pub mod csi {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("csi.v1");
}

/// `package pluginregistration`: the kubelet's plugin registration service (v1), served on a
/// socket in `<kubelet root>/plugins_registry/` so the kubelet finds the CSI socket.
pub mod pluginregistration {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("pluginregistration");
}

fn zeroize_map(map: &mut HashMap<String, String>) {
    for (mut key, mut value) in map.drain() {
        key.zeroize();
        value.zeroize();
    }
}

/// Keys of a map without its values, for Debug output.
struct Keys<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
        keys.sort_unstable();
        f.debug_set().entries(keys).finish()
    }
}

/// Shows only the length of a secret-bearing field.
struct Len(usize);

impl fmt::Debug for Len {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<redacted, {} bytes>", self.0)
    }
}

impl fmt::Debug for provider::MountRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountRequest")
            .field("attributes", &Len(self.attributes.len()))
            .field("secrets", &Len(self.secrets.len()))
            .field("target_path", &self.target_path)
            .field("permission", &self.permission)
            .field("current_object_version", &self.current_object_version)
            .finish()
    }
}

impl Drop for provider::MountRequest {
    fn drop(&mut self) {
        self.attributes.zeroize();
        self.secrets.zeroize();
    }
}

impl fmt::Debug for provider::MountResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MountResponse")
            .field("object_version", &self.object_version)
            .field("error", &self.error)
            .field("files", &self.files)
            .finish()
    }
}

impl fmt::Debug for provider::File {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("File")
            .field("path", &self.path)
            .field("mode", &format_args!("{:o}", self.mode))
            .field("contents", &Len(self.contents.len()))
            .finish()
    }
}

impl Drop for provider::File {
    fn drop(&mut self) {
        self.contents.zeroize();
    }
}

impl fmt::Debug for csi::NodePublishVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodePublishVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("target_path", &self.target_path)
            .field("staging_target_path", &self.staging_target_path)
            .field("volume_capability", &self.volume_capability)
            .field("readonly", &self.readonly)
            .field("secrets", &Keys(&self.secrets))
            .field("volume_context", &Keys(&self.volume_context))
            .field("publish_context", &Keys(&self.publish_context))
            .finish()
    }
}

impl Drop for csi::NodePublishVolumeRequest {
    fn drop(&mut self) {
        zeroize_map(&mut self.secrets);
        zeroize_map(&mut self.volume_context);
    }
}

impl fmt::Debug for csi::NodeStageVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeStageVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("staging_target_path", &self.staging_target_path)
            .field("secrets", &Keys(&self.secrets))
            .field("volume_context", &Keys(&self.volume_context))
            .finish()
    }
}

impl Drop for csi::NodeStageVolumeRequest {
    fn drop(&mut self) {
        zeroize_map(&mut self.secrets);
    }
}

impl fmt::Debug for csi::NodeExpandVolumeRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeExpandVolumeRequest")
            .field("volume_id", &self.volume_id)
            .field("volume_path", &self.volume_path)
            .field("secrets", &Keys(&self.secrets))
            .finish()
    }
}

impl Drop for csi::NodeExpandVolumeRequest {
    fn drop(&mut self) {
        zeroize_map(&mut self.secrets);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn debug_never_shows_secret_fields() {
        let request = provider::MountRequest {
            attributes: r#"{"csi.storage.k8s.io/serviceAccount.tokens":"canary-token"}"#.into(),
            secrets: r#"{"clientsecret":"canary-secret"}"#.into(),
            target_path: "/var/lib/kubelet/pods/x/mount".into(),
            permission: "420".into(),
            current_object_version: vec![],
        };
        let file = provider::File {
            path: "db-password".into(),
            mode: 0o644,
            contents: b"canary-value".to_vec(),
        };
        let mut publish = csi::NodePublishVolumeRequest::default();
        publish
            .secrets
            .insert("clientsecret".into(), "canary-secret".into());
        publish.volume_context.insert(
            "csi.storage.k8s.io/serviceAccount.tokens".into(),
            "canary-token".into(),
        );
        let printed = format!("{request:?} {file:?} {publish:?}");
        assert!(!printed.contains("canary"), "{printed}");
        assert!(printed.contains("db-password"));
        assert!(printed.contains("clientsecret"));
    }

    /// Field numbers are the compatibility contract with the upstream driver: encode a
    /// MountRequest and check the tags byte by byte against the published table.
    #[test]
    fn mount_request_field_numbers_match_the_driver() {
        let request = provider::MountRequest {
            attributes: "a".into(),
            secrets: "s".into(),
            target_path: "t".into(),
            permission: "p".into(),
            current_object_version: vec![provider::ObjectVersion {
                id: "i".into(),
                version: "v".into(),
            }],
        };
        let bytes = request.encode_to_vec();
        // tag = field_number << 3 | wire type 2 (length-delimited)
        assert_eq!(
            bytes,
            [
                0x0a, 1, b'a', 0x12, 1, b's', 0x1a, 1, b't', 0x22, 1, b'p', 0x2a, 6, 0x0a, 1, b'i',
                0x12, 1, b'v'
            ]
        );
        let response = provider::MountResponse {
            object_version: vec![provider::ObjectVersion {
                id: "i".into(),
                version: "v".into(),
            }],
            error: Some(provider::Error { code: "c".into() }),
            files: vec![provider::File {
                path: "f".into(),
                mode: 420,
                contents: b"x".to_vec(),
            }],
        };
        assert_eq!(
            response.encode_to_vec(),
            [
                0x0a, 6, 0x0a, 1, b'i', 0x12, 1, b'v', 0x12, 3, 0x0a, 1, b'c', 0x1a, 9, 0x0a, 1,
                b'f', 0x10, 0xa4, 0x03, 0x1a, 1, b'x'
            ]
        );
        let version = provider::VersionResponse {
            version: "v1alpha1".into(),
            runtime_name: "kvmount".into(),
            runtime_version: "0.1.0".into(),
        };
        let bytes = version.encode_to_vec();
        assert_eq!(bytes[0], 0x0a);
        assert_eq!(bytes[10], 0x12);
        assert_eq!(bytes[19], 0x1a);
    }

    #[test]
    fn csi_publish_field_numbers_match_the_spec() {
        let mut request = csi::NodePublishVolumeRequest::default();
        request.volume_id = "v".into();
        request.target_path = "t".into();
        request.readonly = true;
        assert_eq!(
            request.encode_to_vec(),
            [0x0a, 1, b'v', 0x22, 1, b't', 0x30, 1]
        );
    }
}
