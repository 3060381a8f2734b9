//! Domain errors to gRPC statuses: the only place this mapping lives.

use kvmount_vault::ErrorKind;
use tonic::{Code, Status};

use crate::mount::MountError;

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
