//! Starting a round: from the federation's latest model, one at a time per federation.
//! Used by `StartRound` and by start-up recovery (`retry_interrupted`).

use harambee_core::round::RoundError;

use crate::federation::FederationSpec;
use crate::round::context::RoundContext;
use crate::round::driver;
use crate::store::blobs::BlobError;
use crate::store::{RoundRow, StoreError};

/// Why a round did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no federation named {0:?}")]
    NoFederation(String),
    #[error("federation {0:?} already has a running round")]
    Running(String),
    /// The stored federation or model cannot be read: the coordinator's fault.
    #[error("{0}")]
    Unreadable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Round(#[from] RoundError),
}

/// The federation's stored configuration.
pub async fn spec_of(ctx: &RoundContext, federation: &str) -> Result<FederationSpec, StartError> {
    let row = ctx
        .store
        .federation(federation)
        .await?
        .ok_or_else(|| StartError::NoFederation(federation.to_owned()))?;
    serde_json::from_str(&row.config_json).map_err(|e| {
        StartError::Unreadable(format!(
            "stored federation {federation:?} is unreadable: {e}"
        ))
    })
}

/// Creates the federation's next round from its latest model and spawns its driver.
pub async fn start(ctx: &RoundContext, federation: &str) -> Result<RoundRow, StartError> {
    let spec = spec_of(ctx, federation).await?;
    let base =
        ctx.store.latest_model(federation).await?.ok_or_else(|| {
            StartError::Unreadable(format!("federation {federation:?} has no model"))
        })?;
    let bytes = ctx.blobs.get(&base.digest).await?;
    let params = harambee_core::params::from_le_bytes(&bytes)
        .map_err(|e| StartError::Unreadable(format!("model {}: {e}", base.digest)))?;
    // Checked here only to answer clearly; the store refuses a second open round anyway.
    if ctx.active.contains(federation) {
        return Err(StartError::Running(federation.to_owned()));
    }
    let now_ms = ctx.clock.unix_ms();
    let row = ctx
        .store
        .create_round(federation, base.version, now_ms)
        .await?;
    driver::spawn(ctx.clone(), spec, row.clone(), base, params)?;
    Ok(row)
}
