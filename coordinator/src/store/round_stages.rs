//! When each round entered each stage. A row goes in the statement or transaction that
//! moves the round, so the stages of a round end exactly when the round does: the
//! durations of its stages add up to its `updated_ms - created_ms` once it has ended.

use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
};

use super::entity::round_stage;
use super::{RoundState, StageRow, Store, StoreError, round_id_to_i64};

impl Store {
    /// The stages a round entered, in order (empty for rounds from before stages were
    /// recorded). The last one is the round's current state.
    pub async fn round_stages(&self, round_id: u64) -> Result<Vec<StageRow>, StoreError> {
        round_stage::Entity::find()
            .filter(round_stage::Column::RoundId.eq(round_id_to_i64(round_id)?))
            .order_by_asc(round_stage::Column::StartedMs)
            .order_by_asc(round_stage::Column::State)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|row| {
                let state =
                    row.state
                        .parse::<RoundState>()
                        .map_err(|e| StoreError::CorruptRow {
                            table: "round_stages",
                            detail: format!("round {round_id}: {e}"),
                        })?;
                Ok(StageRow {
                    state,
                    started_ms: row.started_ms,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map(order_stages)
    }
}

/// Records that `round_ids` entered `state` at `now_ms`. A round that already entered it
/// keeps its first time.
pub(crate) async fn entered_in<C: ConnectionTrait>(
    db: &C,
    round_ids: &[i64],
    state: RoundState,
    now_ms: i64,
) -> Result<(), StoreError> {
    if round_ids.is_empty() {
        return Ok(());
    }
    let rows = round_ids.iter().map(|&id| round_stage::ActiveModel {
        round_id: Set(id),
        state: Set(state.as_str().to_owned()),
        started_ms: Set(now_ms),
    });
    round_stage::Entity::insert_many(rows)
        .on_conflict_do_nothing()
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// Stages entered in the same millisecond sort by the round's own order, not by name.
fn order_stages(mut stages: Vec<StageRow>) -> Vec<StageRow> {
    stages.sort_by_key(|s| (s.started_ms, s.state.order()));
    stages
}
