//! What makes two objects the same cache entry, as typed values: the identity that reads it
//! (vault, its whole cloud, tenant, client ID) and the object with every choice that changes
//! its bytes. Built once from the parsed parameters; no field is a string standing for an enum.
//! The state file stores keys in its own record (`crate::state`).

use std::sync::Arc;

use kvmount_vault::params::{HistorySlot, ObjectEncoding, ObjectFormat, ObjectType};
use kvmount_vault::{MountParams, ObjectSpec};

/// The Entra identity of an entry, at one vault, proved at one authority.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdentityKey {
    /// Vault name, lower case.
    pub vault: String,
    /// The Key Vault DNS suffix of the class's cloud (`cloudName`, `cloudEnvFileName`), or
    /// empty for the daemon's own cloud: vaults of the same name in two clouds are two vaults.
    pub cloud: String,
    /// The Entra authority of the class's cloud, or empty for the daemon's own
    /// (`--authority-host`). An entry is served only to credentials proved at the authority
    /// that read it: a class that pairs a vault's DNS suffix with another authority (its own
    /// Entra endpoint, which would vouch for any client ID) has keys of its own.
    pub authority: String,
    /// Entra tenant, lower case.
    pub tenant: String,
    /// Entra identity (client ID) whose token reads the objects, lower case.
    pub client_id: String,
}

impl IdentityKey {
    /// The identity `params` reads with.
    pub fn of_mount(params: &MountParams) -> Self {
        let cloud = params.cloud.as_ref();
        Self {
            vault: params.keyvault_name.to_ascii_lowercase(),
            cloud: cloud
                .map(|c| c.keyvault_dns_suffix.to_ascii_lowercase())
                .unwrap_or_default(),
            authority: cloud
                .map(|c| c.authority_host.to_ascii_lowercase())
                .unwrap_or_default(),
            tenant: params.tenant_id.to_ascii_lowercase(),
            client_id: params.auth.client_id().to_ascii_lowercase(),
        }
    }
}

/// The object of an entry and every rendering choice that changes its bytes (file name and
/// mode are the volume's, not the entry's).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectId {
    /// `secret`, `key`, `cert`.
    pub object_type: ObjectType,
    /// Object name, lower case.
    pub name: String,
    /// Pinned version, or `None` for the newest.
    pub version: Option<String>,
    /// `objectEncoding`.
    pub encoding: ObjectEncoding,
    /// `objectFormat`.
    pub format: ObjectFormat,
    /// The `objectVersionHistory` slot, if any.
    pub history: Option<HistorySlot>,
    /// `certKeyFiles`.
    pub cert_key_files: bool,
}

impl ObjectId {
    /// The object of `spec`.
    pub fn of_spec(spec: &ObjectSpec) -> Self {
        Self {
            object_type: spec.object_type,
            name: spec.name.to_ascii_lowercase(),
            version: spec.version.clone(),
            encoding: spec.encoding,
            format: spec.format,
            history: spec.history,
            cert_key_files: spec.cert_key_files,
        }
    }

    /// The spec that reads and renders this object.
    pub fn spec(&self) -> ObjectSpec {
        ObjectSpec {
            index: 0,
            name: self.name.clone(),
            object_type: self.object_type,
            version: self.version.clone(),
            alias: None,
            encoding: self.encoding,
            format: self.format,
            file_mode: None,
            history: self.history,
            cert_key_files: self.cert_key_files,
        }
    }
}

/// The fields of an [`ObjectKey`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKeyFields {
    /// Who reads it.
    pub identity: IdentityKey,
    /// What is read.
    pub object: ObjectId,
}

/// What makes two objects the same entry. Cheap to clone: the cache hands out the one copy it
/// keeps for each entry, so the volumes that use an entry share it (1,000 volumes of a
/// 10-object class hold 10 keys, not 10,000).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectKey(Arc<ObjectKeyFields>);

impl std::ops::Deref for ObjectKey {
    type Target = ObjectKeyFields;
    fn deref(&self) -> &ObjectKeyFields {
        &self.0
    }
}

impl From<ObjectKeyFields> for ObjectKey {
    fn from(fields: ObjectKeyFields) -> Self {
        Self(Arc::new(fields))
    }
}

impl ObjectKey {
    /// The key of `spec` read by `params`' identity.
    pub fn new(params: &MountParams, spec: &ObjectSpec) -> Self {
        ObjectKeyFields {
            identity: IdentityKey::of_mount(params),
            object: ObjectId::of_spec(spec),
        }
        .into()
    }

    /// The vault name.
    pub fn vault(&self) -> &str {
        &self.identity.vault
    }

    /// `secret/name` for logs.
    pub fn id(&self) -> String {
        format!("{}/{}", self.object.object_type, self.object.name)
    }

    /// True when both keys are the same copy (the cache's interned one).
    pub fn same_copy(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
