//! Migration `m0005_ledger_key`: the ledger keys the coordinator has signed with, oldest
//! first. The first row is written at the first start, each rotation adds one in the
//! transaction of its ledger entry; `serve` refuses a key whose fingerprint is not the
//! last row's. Frozen once released.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, string};

pub(crate) struct M0005LedgerKey;

impl MigrationName for M0005LedgerKey {
    fn name(&self) -> &str {
        "m0005_ledger_key"
    }
}

#[derive(DeriveIden)]
enum LedgerKeys {
    Table,
    Id,
    Fingerprint,
    PublicKey,
    /// The index of the rotation entry that introduced the key (none for the first key).
    RotationIdx,
    RecordedMs,
}

#[async_trait]
impl MigrationTrait for M0005LedgerKey {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LedgerKeys::Table)
                    .col(big_integer(LedgerKeys::Id).auto_increment().primary_key())
                    .col(string(LedgerKeys::Fingerprint))
                    .col(string(LedgerKeys::PublicKey))
                    .col(big_integer_null(LedgerKeys::RotationIdx))
                    .col(big_integer(LedgerKeys::RecordedMs))
                    .to_owned(),
            )
            .await
    }
}
