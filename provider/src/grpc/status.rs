//! Domain errors to gRPC statuses: the only place this mapping lives.

use kvmount_vault::ErrorKind;
use tonic::{Code, Status};

use crate::provider_api::MountError;
use crate::volumes::{ClassErrorKind, NodeVolumeError};

fn code(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::PermissionDenied => Code::PermissionDenied,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::DeadlineExceeded => Code::DeadlineExceeded,
        // A class asking for something this release does not do is the class's problem to
        // fix, and the driver must not retry it: INVALID_ARGUMENT, with the message saying so.
        ErrorKind::Unimplemented => Code::InvalidArgument,
        ErrorKind::Internal => Code::Internal,
    }
}

impl From<MountError> for Status {
    fn from(err: MountError) -> Self {
        match &err {
            MountError::Param(_) => Status::invalid_argument(err.to_string()),
            MountError::Object(object) => Status::new(code(object.kind()), err.to_string()),
            MountError::Deadline(_) => Status::deadline_exceeded(err.to_string()),
        }
    }
}

fn volume_code(kind: kvmount_volume::ErrorKind) -> Code {
    match kind {
        kvmount_volume::ErrorKind::InvalidArgument => Code::InvalidArgument,
        kvmount_volume::ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        kvmount_volume::ErrorKind::PermissionDenied => Code::PermissionDenied,
        kvmount_volume::ErrorKind::NotFound => Code::NotFound,
        _ => Code::Internal,
    }
}

fn class_code(kind: ClassErrorKind) -> Code {
    match kind {
        ClassErrorKind::NotFound => Code::NotFound,
        ClassErrorKind::PermissionDenied => Code::PermissionDenied,
        ClassErrorKind::InvalidArgument => Code::InvalidArgument,
        ClassErrorKind::Unavailable => Code::Unavailable,
        // The cluster or the daemon's configuration must be fixed first (a malformed class
        // object, a refused request): the request itself is fine.
        ClassErrorKind::FailedPrecondition => Code::FailedPrecondition,
    }
}

impl From<NodeVolumeError> for Status {
    fn from(err: NodeVolumeError) -> Self {
        let code = match &err {
            NodeVolumeError::InvalidArgument(_) | NodeVolumeError::Param(_) => {
                Code::InvalidArgument
            }
            NodeVolumeError::AlreadyExists(_) => Code::AlreadyExists,
            NodeVolumeError::Aborted(_) => Code::Aborted,
            NodeVolumeError::Class(class) => class_code(class.kind),
            NodeVolumeError::Fetch(object) => code(object.kind()),
            NodeVolumeError::Volume(volume) => volume_code(volume.kind()),
            NodeVolumeError::State(_) => Code::Internal,
            NodeVolumeError::ResourceExhausted(_) => Code::ResourceExhausted,
            NodeVolumeError::Deadline(_) => Code::DeadlineExceeded,
            NodeVolumeError::Internal(_) => Code::Internal,
        };
        Status::new(code, err.to_string())
    }
}

/// The name of `code` for the metrics' `code` label: one of [`crate::metrics::GRPC_CODES`],
/// never free text.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Cancelled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_the_fixed_set() {
        let names: Vec<&str> = (0..=16).map(|n| code_name(Code::from_i32(n))).collect();
        assert_eq!(names, crate::metrics::GRPC_CODES);
        // Numbers outside the set are Unknown, not a new label value.
        assert_eq!(code_name(Code::from_i32(99)), "Unknown");
    }
}
