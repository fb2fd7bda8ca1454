//! The one place where the coordinator's errors become gRPC statuses.
//!
//! Service code fails with a [`ServiceError`]: a kind (what the caller should make of it)
//! and a message for the caller. Domain errors (storage, blobs, the round machine,
//! enrolment, the ledger, access) convert into it by kind, here; `?` then turns it into a
//! [`Status`] at the service boundary. An internal failure is logged in full and reported
//! without detail.

use harambee_core::round::RoundError;
use tonic::Status;

use crate::service::caller::Denial;
use crate::service::enrol::EnrolError;
use crate::store::StoreError;
use crate::store::blobs::BlobError;
use crate::store::ledger_view::LedgerError;
use crate::wire::WireError;

/// Prefix of every access-layer refusal.
pub const ACCESS_DENIED: &str = "access denied: ";

/// Why a call failed, by what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or names something impossible: do not retry it as is.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is valid but the system is not in the state it needs (a round that ended).
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    NotFound(String),
    /// Already done (a retried upload, a facility added twice).
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The caller's identity is missing or no longer valid.
    #[error("{0}")]
    Unauthenticated(String),
    /// Past a limit (message size, an index beyond the ledger).
    #[error("{0}")]
    OutOfRange(String),
    /// What arrived or what is stored is damaged.
    #[error("{0}")]
    DataLoss(String),
    /// Not served now (enrolment off); may work later.
    #[error("{0}")]
    Unavailable(String),
    /// Too many attempts (the `Enrol` rate limit); the message says when to try again.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The coordinator's own failure; the message names only the component.
    #[error("{0}")]
    Internal(String),
}

impl ServiceError {
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        ServiceError::InvalidArgument(message.into())
    }
    pub fn failed_precondition(message: impl Into<String>) -> Self {
        ServiceError::FailedPrecondition(message.into())
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        ServiceError::NotFound(message.into())
    }
    pub fn already_exists(message: impl Into<String>) -> Self {
        ServiceError::AlreadyExists(message.into())
    }
    pub fn permission_denied(message: impl Into<String>) -> Self {
        ServiceError::PermissionDenied(message.into())
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        ServiceError::Unauthenticated(message.into())
    }
    pub fn out_of_range(message: impl Into<String>) -> Self {
        ServiceError::OutOfRange(message.into())
    }
    pub fn data_loss(message: impl Into<String>) -> Self {
        ServiceError::DataLoss(message.into())
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        ServiceError::Unavailable(message.into())
    }
    /// An internal failure of `component`: `detail` is logged, not sent.
    pub fn internal(component: &str, detail: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %detail, "{component} error");
        ServiceError::Internal(format!("coordinator {component} error"))
    }
}

impl ServiceError {
    /// The status as an HTTP response, for the access layer that answers before any service.
    pub fn into_http<B: Default>(self) -> tonic::codegen::http::Response<B> {
        Status::from(self).into_http()
    }
}

impl From<ServiceError> for Status {
    fn from(e: ServiceError) -> Status {
        match e {
            ServiceError::InvalidArgument(m) => Status::invalid_argument(m),
            ServiceError::FailedPrecondition(m) => Status::failed_precondition(m),
            ServiceError::NotFound(m) => Status::not_found(m),
            ServiceError::AlreadyExists(m) => Status::already_exists(m),
            ServiceError::PermissionDenied(m) => Status::permission_denied(m),
            ServiceError::Unauthenticated(m) => Status::unauthenticated(m),
            ServiceError::OutOfRange(m) => Status::out_of_range(m),
            ServiceError::DataLoss(m) => Status::data_loss(m),
            ServiceError::Unavailable(m) => Status::unavailable(m),
            ServiceError::ResourceExhausted(m) => Status::resource_exhausted(m),
            ServiceError::Internal(m) => Status::internal(m),
        }
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::AlreadyExists(_) => ServiceError::already_exists(e.to_string()),
            StoreError::UnknownFederation(_) => ServiceError::not_found(e.to_string()),
            StoreError::RoundInProgress(_) => ServiceError::failed_precondition(e.to_string()),
            _ => ServiceError::internal("storage", &e),
        }
    }
}

impl From<BlobError> for ServiceError {
    fn from(e: BlobError) -> Self {
        match &e {
            BlobError::NotFound(_) => ServiceError::not_found(e.to_string()),
            BlobError::InvalidDigest(..) => ServiceError::invalid_argument(e.to_string()),
            _ => ServiceError::internal("blob store", &e),
        }
    }
}

impl From<RoundError> for ServiceError {
    fn from(e: RoundError) -> Self {
        let message = e.to_string();
        match e {
            RoundError::Invalid { .. }
            | RoundError::BaseLength { .. }
            | RoundError::SecAgg { .. }
            | RoundError::Strategy(_)
            | RoundError::Mechanism(_) => ServiceError::InvalidArgument(message),
            RoundError::SecureOnly | RoundError::PlainOnly | RoundError::WrongStage(_) => {
                ServiceError::FailedPrecondition(message)
            }
            RoundError::NotSelected(_) => ServiceError::PermissionDenied(message),
            RoundError::Duplicate(_) => ServiceError::AlreadyExists(message),
        }
    }
}

impl From<crate::round::start::StartError> for ServiceError {
    fn from(e: crate::round::start::StartError) -> Self {
        use crate::round::start::StartError;
        match e {
            StartError::NoFederation(_) => ServiceError::not_found(e.to_string()),
            StartError::Running(_) => ServiceError::failed_precondition(e.to_string()),
            StartError::Unreadable(m) => ServiceError::Internal(m),
            StartError::Store(e) => e.into(),
            StartError::Blob(e) => e.into(),
            StartError::Round(e) => e.into(),
        }
    }
}

impl From<&Denial> for ServiceError {
    fn from(denial: &Denial) -> Self {
        let message = format!("{ACCESS_DENIED}{denial}");
        match denial {
            Denial::NoCertificate | Denial::NoIdentity(_) | Denial::Expired(_) => {
                ServiceError::Unauthenticated(message)
            }
            Denial::Revoked(_)
            | Denial::CertificateRevoked(_)
            | Denial::KeyRevoked(_)
            | Denial::WrongRole { .. }
            | Denial::NoRule(_) => ServiceError::PermissionDenied(message),
        }
    }
}

impl From<EnrolError> for ServiceError {
    fn from(e: EnrolError) -> Self {
        let message = e.to_string();
        match e {
            EnrolError::NotEnabled => ServiceError::Unavailable(message),
            EnrolError::NoSigner | EnrolError::AddRevoked(_) => {
                ServiceError::FailedPrecondition(message)
            }
            EnrolError::Token(_)
            | EnrolError::Csr(_)
            | EnrolError::InvalidArgument(_)
            | EnrolError::BadCertificate(_) => ServiceError::InvalidArgument(message),
            EnrolError::RateLimited(_) => ServiceError::ResourceExhausted(message),
            EnrolError::CertificateRevoked(_) | EnrolError::KeyRevoked(_) => {
                ServiceError::PermissionDenied(message)
            }
            EnrolError::UnknownToken
            | EnrolError::WrongSecret
            | EnrolError::OtherFacility { .. }
            | EnrolError::Used(_)
            | EnrolError::Withdrawn(_)
            | EnrolError::Expired(_) => ServiceError::Unauthenticated(message),
            EnrolError::Revoked(_) => ServiceError::PermissionDenied(message),
            EnrolError::AlreadyEnrolled(_) => ServiceError::AlreadyExists(message),
            EnrolError::UnknownFacility(_) => ServiceError::NotFound(message),
            EnrolError::Store(e) => ServiceError::internal("storage", &e),
        }
    }
}

impl From<LedgerError> for ServiceError {
    fn from(e: LedgerError) -> Self {
        match e {
            LedgerError::Store(e) => e.into(),
            e @ LedgerError::Corrupt(_) => ServiceError::data_loss(e.to_string()),
        }
    }
}

impl From<WireError> for ServiceError {
    fn from(e: WireError) -> Self {
        ServiceError::InvalidArgument(e.0)
    }
}

/// A bad proof request (sizes past the ledger, reversed ranges).
impl From<harambee_privacy::ledger::LedgerError> for ServiceError {
    fn from(e: harambee_privacy::ledger::LedgerError) -> Self {
        ServiceError::out_of_range(e.to_string())
    }
}

/// Lets `?` turn any domain error into a status at a service boundary.
macro_rules! into_status {
    ($($error:ty),*) => {$(
        impl From<$error> for Status {
            fn from(e: $error) -> Status {
                ServiceError::from(e).into()
            }
        }
    )*};
}

into_status!(StoreError, BlobError, EnrolError, LedgerError, WireError);
