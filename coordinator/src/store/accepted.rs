//! Uploads a running round has accepted, recorded before the facility hears so: if the
//! coordinator dies before the round ends, start-up recovery writes them to the ledger
//! with the round's failure, so the ledger agrees with every facility's privacy log.
//! A round's rows go in the transaction that ends it.

use harambee_privacy::ledger::{Contribution, LedgerEvent};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::entity::accepted_upload;
use super::{Store, StoreError, round_id_to_i64};

impl Store {
    /// Records accepted uploads (one transaction for all). Recording the same facility's
    /// upload to a round again changes nothing.
    pub async fn record_accepted_uploads(
        &self,
        uploads: &[Contribution],
        now_ms: i64,
    ) -> Result<(), StoreError> {
        if uploads.is_empty() {
            return Ok(());
        }
        let rows = uploads
            .iter()
            .map(|c| {
                let json = serde_json::to_string(c).map_err(|e| {
                    StoreError::InvalidInput(format!("contribution of {}: {e}", c.facility))
                })?;
                Ok(accepted_upload::ActiveModel {
                    round_id: Set(round_id_to_i64(c.round_id)?),
                    facility: Set(c.facility.clone()),
                    contribution: Set(json),
                    accepted_ms: Set(now_ms),
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        accepted_upload::Entity::insert_many(rows)
            .on_conflict_do_nothing()
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The uploads recorded for a round that has not ended, ordered by facility.
    pub async fn accepted_uploads(&self, round_id: u64) -> Result<Vec<Contribution>, StoreError> {
        accepted_in(&self.db, round_id).await
    }
}

/// The contributions recorded for `round_id`, ordered by facility.
pub(crate) async fn accepted_in<C: ConnectionTrait>(
    db: &C,
    round_id: u64,
) -> Result<Vec<Contribution>, StoreError> {
    accepted_upload::Entity::find()
        .filter(accepted_upload::Column::RoundId.eq(round_id_to_i64(round_id)?))
        .order_by_asc(accepted_upload::Column::Facility)
        .all(db)
        .await?
        .into_iter()
        .map(|row| {
            serde_json::from_str::<Contribution>(&row.contribution).map_err(|e| {
                StoreError::CorruptRow {
                    table: "accepted_uploads",
                    detail: format!("round {round_id}, facility {}: {e}", row.facility),
                }
            })
        })
        .collect()
}

/// The ledger entries for the uploads recorded for `round_id`, which the transaction
/// ending the round writes; the rows themselves are removed in it.
pub(crate) async fn take_in<C: ConnectionTrait>(
    db: &C,
    round_id: u64,
) -> Result<Vec<LedgerEvent>, StoreError> {
    let recorded = accepted_in(db, round_id).await?;
    accepted_upload::Entity::delete_many()
        .filter(accepted_upload::Column::RoundId.eq(round_id_to_i64(round_id)?))
        .exec(db)
        .await?;
    Ok(recorded
        .into_iter()
        .map(LedgerEvent::Contribution)
        .collect())
}
