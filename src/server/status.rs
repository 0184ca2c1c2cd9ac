//! The one place our errors become gRPC statuses: the code says what a client can do about
//! it, the message what an operator needs to know.

use tonic::Status;

use super::registry;
use crate::api;
use crate::ca::PrincipalError;

impl From<api::Error> for Status {
    fn from(e: api::Error) -> Status {
        match e {
            api::Error::Refused(cause) => Status::invalid_argument(cause.to_string()),
            api::Error::PermissionDenied(denial) => Status::permission_denied(denial.to_string()),
            api::Error::Unavailable(api::Cause::Throttled(why)) => Status::resource_exhausted(why),
            api::Error::Unavailable(cause) => Status::unavailable(cause.to_string()),
        }
    }
}

impl From<&PrincipalError> for Status {
    fn from(e: &PrincipalError) -> Status {
        match e {
            PrincipalError::NoCertificate => Status::unauthenticated(e.to_string()),
            _ => Status::permission_denied(e.to_string()),
        }
    }
}

impl From<registry::Error> for Status {
    fn from(e: registry::Error) -> Status {
        match e {
            registry::Error::Conflict(_) => Status::already_exists(e.to_string()),
            registry::Error::Unknown(_) => Status::not_found(e.to_string()),
            _ => Status::unavailable(e.to_string()),
        }
    }
}
