//! Who is calling: the caller's identity from the verified client certificate of its
//! connection, the role checks each service applies on top of the access layer, and why the
//! access layer refuses a call ([`Denial`]).

use harambee_link::identity::{PeerIdentity, Role, identity_from_cert};

use crate::service::error::ServiceError;

/// The identity of the caller of an RPC, from its verified client certificate.
///
/// Fails with `Unauthenticated` if the connection carries no client certificate (not
/// served through the coordinator's TLS listener) or the certificate has no valid `harambee://` identity.
pub fn peer_identity<T>(request: &tonic::Request<T>) -> Result<PeerIdentity, ServiceError> {
    let certs = request.peer_certs().ok_or_else(|| {
        ServiceError::unauthenticated("no verified client certificate on this connection")
    })?;
    let leaf = certs.first().ok_or_else(|| {
        ServiceError::unauthenticated("no verified client certificate on this connection")
    })?;
    identity_from_cert(leaf).map_err(|e| {
        ServiceError::unauthenticated(format!(
            "client certificate carries no usable identity: {e}"
        ))
    })
}

/// [`peer_identity`], then `PermissionDenied` unless the caller has one of `roles`.
pub fn require_any_role<T>(
    request: &tonic::Request<T>,
    roles: &[Role],
) -> Result<PeerIdentity, ServiceError> {
    let identity = peer_identity(request)?;
    if roles.contains(&identity.role) {
        Ok(identity)
    } else {
        let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        Err(ServiceError::permission_denied(format!(
            "this call requires one of the roles {}; the client certificate is for {} {:?}",
            names.join(", "),
            identity.role,
            identity.name
        )))
    }
}

/// [`peer_identity`], then `PermissionDenied` unless the caller has `role`.
pub fn require_role<T>(
    request: &tonic::Request<T>,
    role: Role,
) -> Result<PeerIdentity, ServiceError> {
    let identity = peer_identity(request)?;
    if identity.role == role {
        Ok(identity)
    } else {
        Err(ServiceError::permission_denied(format!(
            "this call requires the {role} role; the client certificate is for {} {:?}",
            identity.role, identity.name
        )))
    }
}

/// Why a call was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("this call requires a client certificate")]
    NoCertificate,
    #[error("the client certificate carries no usable identity: {0}")]
    NoIdentity(String),
    #[error("the client certificate expired at {0}; reconnect with a renewed certificate")]
    Expired(String),
    #[error("facility {0:?} has been revoked")]
    Revoked(String),
    #[error("the client certificate (serial {0}) has been revoked")]
    CertificateRevoked(String),
    #[error(
        "the client certificate's key has been revoked (with the certificate of serial {0}); enrol again with a new key"
    )]
    KeyRevoked(String),
    #[error("{identity} may not call {path} (allowed: {allowed})")]
    WrongRole {
        identity: String,
        path: String,
        allowed: String,
    },
    #[error("no access rule allows {0}")]
    NoRule(String),
}
