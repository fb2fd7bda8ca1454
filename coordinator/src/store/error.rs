//! The store's error type.

use sea_orm::DbErr;

use super::RoundState;

/// Everything the store can refuse or fail at.
///
/// Caller mistakes (unknown names, illegal transitions, out-of-range numbers)
/// have their own variants; `Db` is a database or connection failure and
/// `CorruptRow` a row this code did not write.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Transparent, so `%err` in a log line shows the driver's message
    /// (which already says "Connection Error", "Query Error", ...).
    #[error(transparent)]
    Db(#[from] DbErr),
    #[error("unsupported database url scheme {0:?} (expected sqlite: or postgres://)")]
    UnsupportedUrl(String),
    #[error("federation {0:?} already exists")]
    AlreadyExists(String),
    #[error("unknown federation {0:?}")]
    UnknownFederation(String),
    #[error("federation {federation:?} has no model version {version}")]
    UnknownModelVersion { federation: String, version: u32 },
    #[error("model version {version} of federation {federation:?} already exists")]
    VersionExists { federation: String, version: u32 },
    #[error("round {0} is still in progress")]
    RoundInProgress(u64),
    #[error("unknown round {0}")]
    UnknownRound(u64),
    #[error("round {round_id} is already {state}")]
    RoundFinished { round_id: u64, state: RoundState },
    #[error("round {round_id} cannot be set to {to} directly (use commit_round or fail_round)")]
    InvalidTransition { round_id: u64, to: RoundState },
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("{field} out of range: {value}")]
    OutOfRange { field: &'static str, value: String },
    #[error("corrupt row in {table}: {detail}")]
    CorruptRow { table: &'static str, detail: String },
    #[error("facility {0:?} has been revoked")]
    FacilityRevoked(String),
    #[error("facility {0:?} is already enrolled")]
    FacilityEnrolled(String),
    #[error("unknown facility {0:?}")]
    UnknownFacility(String),
    #[error("enrolment token {0} is used, withdrawn or expired")]
    TokenUnusable(String),
    #[error("certificate {0} has been revoked")]
    CertificateRevoked(String),
    #[error("the key of this certificate was revoked with certificate {0}")]
    KeyRevoked(String),
}
