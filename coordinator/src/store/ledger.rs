//! The privacy ledger's rows: one per entry, written inside the transaction of the state
//! change it describes, and the agents' countersignatures of tree heads.
//!
//! Each row holds the entry's export line exactly as it will be exported (canonical JSON),
//! so an auditor's copy is byte for byte what was stored; the leaf hash does not depend on
//! any other entry, so a transaction can compute its rows knowing only the next index.
//! Appenders are serialized: SQLite has one writer connection, and on PostgreSQL the append
//! takes a table lock that is held until the transaction ends, so two transactions never
//! claim the same index and the ledger order is the commit order.

use harambee_privacy::ledger::{Cosignature, LedgerEntry, LedgerEvent, LedgerLine, TreeHead};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::entity::{ledger_cosignature, ledger_entry};
use super::{Store, StoreError, finish};

/// A countersignature as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CosignatureRow {
    pub head: TreeHead,
    pub cosignature: Cosignature,
    pub received_ms: i64,
}

/// Appends `events` at `now_ms` as the next entries, inside `txn`; returns their lines.
pub(crate) async fn append_in<C: ConnectionTrait>(
    txn: &C,
    now_ms: i64,
    events: Vec<LedgerEvent>,
) -> Result<Vec<LedgerLine>, StoreError> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    if txn.get_database_backend() == DbBackend::Postgres {
        // Blocks other appenders (not readers) until this transaction ends.
        txn.execute_unprepared("LOCK TABLE ledger_entries IN SHARE ROW EXCLUSIVE MODE")
            .await?;
    }
    let next = last_index(txn).await?;
    let timestamp_ms = u64::try_from(now_ms)
        .map_err(|_| StoreError::InvalidInput(format!("negative time {now_ms}")))?;
    let mut lines = Vec::with_capacity(events.len());
    for (index, event) in (next.map_or(0, |max| max + 1)..).zip(events) {
        let line = LedgerLine::from_entry(LedgerEntry {
            index: index as u64,
            timestamp_ms,
            event,
        })
        .map_err(|e| StoreError::InvalidInput(format!("ledger entry {index}: {e}")))?;
        let text = line
            .to_json()
            .map_err(|e| StoreError::InvalidInput(format!("ledger entry {index}: {e}")))?;
        ledger_entry::Entity::insert(ledger_entry::ActiveModel {
            idx: Set(index),
            timestamp_ms: Set(now_ms),
            line: Set(text),
            leaf_hash: Set(line.leaf_hash.to_hex()),
        })
        .exec_without_returning(txn)
        .await?;
        lines.push(line);
    }
    Ok(lines)
}

/// The index of the last entry, if any.
async fn last_index<C: ConnectionTrait>(db: &C) -> Result<Option<i64>, StoreError> {
    let last: Option<i64> = ledger_entry::Entity::find()
        .select_only()
        .column(ledger_entry::Column::Idx)
        .order_by_desc(ledger_entry::Column::Idx)
        .into_tuple::<i64>()
        .one(db)
        .await?;
    Ok(last)
}

impl Store {
    /// Appends entries that describe no other stored state (e.g. a model export), in their
    /// own transaction.
    pub async fn append_ledger(
        &self,
        now_ms: i64,
        events: Vec<LedgerEvent>,
    ) -> Result<Vec<LedgerLine>, StoreError> {
        let txn = self.db.begin().await?;
        let result = append_in(&txn, now_ms, events).await;
        finish(txn, result).await
    }

    /// Number of entries.
    pub async fn ledger_size(&self) -> Result<u64, StoreError> {
        Ok(last_index(&self.db).await?.map_or(0, |m| m as u64 + 1))
    }

    /// Entries `start..end` in index order, parsed from their stored lines. A stored line
    /// that is not a canonical ledger line is an error naming its index; whether its contents
    /// match its leaf hash is for the caller (`harambee_privacy::ledger::Ledger::push_line`)
    /// or the auditor's verifier to decide.
    pub async fn ledger_lines(&self, start: u64, end: u64) -> Result<Vec<LedgerLine>, StoreError> {
        self.entry_rows(start, end)
            .await?
            .into_iter()
            .map(|row| {
                LedgerLine::parse(row.idx as usize + 1, &row.line).map_err(|e| {
                    StoreError::CorruptRow {
                        table: "ledger_entries",
                        detail: format!("entry {}: {e}", row.idx),
                    }
                })
            })
            .collect()
    }

    /// The stored text of entries `start..end`, unchanged (the export).
    pub async fn ledger_texts(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<(u64, String)>, StoreError> {
        Ok(self
            .entry_rows(start, end)
            .await?
            .into_iter()
            .map(|row| (row.idx as u64, row.line))
            .collect())
    }

    async fn entry_rows(
        &self,
        start: u64,
        end: u64,
    ) -> Result<Vec<ledger_entry::Model>, StoreError> {
        let clamp = |x: u64| x.min(i64::MAX as u64) as i64;
        Ok(ledger_entry::Entity::find()
            .filter(ledger_entry::Column::Idx.gte(clamp(start)))
            .filter(ledger_entry::Column::Idx.lt(clamp(end)))
            .order_by_asc(ledger_entry::Column::Idx)
            .all(&self.db)
            .await?)
    }

    /// Records an agent's countersignature (once per facility and tree size).
    pub async fn record_cosignature(
        &self,
        head: &TreeHead,
        cosignature: &Cosignature,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let signature = serde_json::to_value(cosignature)
            .ok()
            .and_then(|v| {
                v.get("signature")
                    .and_then(|s| s.as_str())
                    .map(str::to_owned)
            })
            .ok_or_else(|| StoreError::InvalidInput("cosignature does not serialize".into()))?;
        let model = ledger_cosignature::ActiveModel {
            id: NotSet,
            facility: Set(cosignature.facility.clone()),
            tree_size: Set(head.tree_size as i64),
            root_hash: Set(head.root_hash.to_hex()),
            head_timestamp_ms: Set(head.timestamp_ms as i64),
            signature: Set(signature),
            received_ms: Set(now_ms),
        };
        ledger_cosignature::Entity::insert(model)
            .on_conflict(
                sea_orm::sea_query::OnConflict::columns([
                    ledger_cosignature::Column::Facility,
                    ledger_cosignature::Column::TreeSize,
                ])
                .do_nothing()
                .to_owned(),
            )
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// Every countersignature, oldest first.
    pub async fn cosignatures(&self) -> Result<Vec<CosignatureRow>, StoreError> {
        let rows = ledger_cosignature::Entity::find()
            .order_by_asc(ledger_cosignature::Column::Id)
            .all(&self.db)
            .await?;
        rows.into_iter()
            .map(|row| {
                let corrupt = |what: &str| StoreError::CorruptRow {
                    table: "ledger_cosignatures",
                    detail: format!("row {}: bad {what}", row.id),
                };
                let head = TreeHead {
                    tree_size: row.tree_size as u64,
                    root_hash: row.root_hash.parse().map_err(|_| corrupt("root hash"))?,
                    timestamp_ms: row.head_timestamp_ms as u64,
                };
                let cosignature: Cosignature = serde_json::from_value(
                    serde_json::json!({"facility": row.facility, "signature": row.signature}),
                )
                .map_err(|_| corrupt("signature"))?;
                Ok(CosignatureRow {
                    head,
                    cosignature,
                    received_ms: row.received_ms,
                })
            })
            .collect()
    }
}
