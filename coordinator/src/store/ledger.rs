//! The privacy ledger's rows: one per entry, written inside the transaction of the state
//! change it describes, and the agents' countersignatures of tree heads.
//!
//! Each row holds the entry's export line exactly as it will be exported (canonical JSON),
//! so an auditor's copy is byte for byte what was stored; the leaf hash does not depend on
//! any other entry, so a transaction can compute its rows knowing only the next index.
//! Appenders are serialized: SQLite has one writer connection, and on PostgreSQL the append
//! takes a table lock that is held until the transaction ends, so two transactions never
//! claim the same index and the ledger order is the commit order.

use ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_privacy::ledger::{
    Cosignature, LedgerEntry, LedgerEvent, LedgerLine, TreeHead, key_fingerprint, rotation_event,
};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    TransactionTrait,
};

use super::entity::{ledger_cosignature, ledger_entry, ledger_key};
use super::{Store, StoreError, finish};

/// A countersignature as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct CosignatureRow {
    pub head: TreeHead,
    pub cosignature: Cosignature,
    pub received_ms: i64,
}

/// A ledger key the database records: the first one, or one introduced by a rotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LedgerKeyRow {
    /// `sha256:` and 64 hex digits (`harambee_privacy::ledger::key_fingerprint`).
    pub fingerprint: String,
    /// The public key, 64 hex digits.
    pub public_key: String,
    /// The index of the rotation entry that introduced it.
    pub rotation_index: Option<u64>,
    pub recorded_ms: i64,
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
        Ok(self
            .cosignatures_page(0, u64::MAX)
            .await?
            .into_iter()
            .map(|(_, row)| row)
            .collect())
    }

    /// At most `limit` countersignatures stored after the one with id `after_id` (0: from
    /// the first), oldest first, each with its id (the next page starts after the last).
    pub async fn cosignatures_page(
        &self,
        after_id: u64,
        limit: u64,
    ) -> Result<Vec<(u64, CosignatureRow)>, StoreError> {
        let clamp = |x: u64| x.min(i64::MAX as u64) as i64;
        let rows = ledger_cosignature::Entity::find()
            .filter(ledger_cosignature::Column::Id.gt(clamp(after_id)))
            .order_by_asc(ledger_cosignature::Column::Id)
            .limit(limit)
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
                Ok((
                    row.id as u64,
                    CosignatureRow {
                        head,
                        cosignature,
                        received_ms: row.received_ms,
                    },
                ))
            })
            .collect()
    }

    /// The ledger key in force: the last one recorded, if any.
    pub async fn ledger_key(&self) -> Result<Option<LedgerKeyRow>, StoreError> {
        let row = ledger_key::Entity::find()
            .order_by_desc(ledger_key::Column::Id)
            .one(&self.db)
            .await?;
        Ok(row.map(|row| LedgerKeyRow {
            fingerprint: row.fingerprint,
            public_key: row.public_key,
            rotation_index: row.rotation_idx.map(|i| i as u64),
            recorded_ms: row.recorded_ms,
        }))
    }

    /// Records `key` as the ledger key of a ledger that has none recorded yet, or whose
    /// ledger is still empty (nothing was signed that a new key would orphan). Refuses
    /// otherwise: a non-empty ledger changes key only by [`Store::rotate_ledger_key`].
    pub async fn record_first_ledger_key(
        &self,
        key: &VerifyingKey,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let result = async {
            let recorded = ledger_key::Entity::find().one(&txn).await?.is_some();
            if recorded && last_index(&txn).await?.is_some() {
                return Err(StoreError::InvalidInput(
                    "the ledger already has entries signed with a recorded key; rotate the key instead"
                        .to_owned(),
                ));
            }
            ledger_key::Entity::delete_many().exec(&txn).await?;
            insert_key(&txn, key, None, now_ms).await
        }
        .await;
        finish(txn, result).await
    }

    /// Hands the ledger over from `old` (which must be the key in force) to `new`, in one
    /// transaction: the rotation entry (the new public key signed by the old key) and the
    /// new key's record. Returns the rotation's ledger line.
    pub async fn rotate_ledger_key(
        &self,
        old: &SigningKey,
        new: &VerifyingKey,
        now_ms: i64,
    ) -> Result<LedgerLine, StoreError> {
        let old_fingerprint = key_fingerprint(&old.verifying_key());
        let txn = self.db.begin().await?;
        let result = async {
            if txn.get_database_backend() == DbBackend::Postgres {
                txn.execute_unprepared("LOCK TABLE ledger_keys IN SHARE ROW EXCLUSIVE MODE")
                    .await?;
            }
            let current = ledger_key::Entity::find()
                .order_by_desc(ledger_key::Column::Id)
                .one(&txn)
                .await?;
            match current {
                Some(row) if row.fingerprint == old_fingerprint => {}
                Some(row) => {
                    return Err(StoreError::InvalidInput(format!(
                        "the ledger is signed with key {}, not with the old key given ({old_fingerprint})",
                        row.fingerprint
                    )));
                }
                None => {
                    return Err(StoreError::InvalidInput(
                        "the database records no ledger key yet: start `serve` once first"
                            .to_owned(),
                    ));
                }
            }
            if *new == old.verifying_key() {
                return Err(StoreError::InvalidInput(
                    "the new ledger key is the old one".to_owned(),
                ));
            }
            let mut lines = append_in(&txn, now_ms, vec![rotation_event(old, new)]).await?;
            let line = lines.pop().expect("one event appended");
            insert_key(&txn, new, Some(line.index), now_ms).await?;
            Ok(line)
        }
        .await;
        finish(txn, result).await
    }
}

async fn insert_key<C: ConnectionTrait>(
    db: &C,
    key: &VerifyingKey,
    rotation_index: Option<u64>,
    now_ms: i64,
) -> Result<(), StoreError> {
    ledger_key::Entity::insert(ledger_key::ActiveModel {
        id: NotSet,
        fingerprint: Set(key_fingerprint(key)),
        public_key: Set(hex::encode(key.as_bytes())),
        rotation_idx: Set(rotation_index.map(|i| i as i64)),
        recorded_ms: Set(now_ms),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}
