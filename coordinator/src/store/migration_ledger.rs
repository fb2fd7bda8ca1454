//! Migration `m0004_ledger`: the privacy ledger (one row per entry, in index order) and the
//! agents' countersignatures of the tree heads they checked. Frozen once released.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, string, text};

pub(crate) struct M0004Ledger;

impl MigrationName for M0004Ledger {
    fn name(&self) -> &str {
        "m0004_ledger"
    }
}

#[derive(DeriveIden)]
enum LedgerEntries {
    Table,
    Idx,
    TimestampMs,
    Line,
    LeafHash,
}

#[derive(DeriveIden)]
enum LedgerCosignatures {
    Table,
    Id,
    Facility,
    TreeSize,
    RootHash,
    HeadTimestampMs,
    Signature,
    ReceivedMs,
}

#[async_trait]
impl MigrationTrait for M0004Ledger {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(LedgerEntries::Table)
                    .col(big_integer(LedgerEntries::Idx).primary_key())
                    .col(big_integer(LedgerEntries::TimestampMs))
                    .col(text(LedgerEntries::Line))
                    .col(string(LedgerEntries::LeafHash))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(LedgerCosignatures::Table)
                    .col(
                        big_integer(LedgerCosignatures::Id)
                            .auto_increment()
                            .primary_key(),
                    )
                    .col(string(LedgerCosignatures::Facility))
                    .col(big_integer(LedgerCosignatures::TreeSize))
                    .col(string(LedgerCosignatures::RootHash))
                    .col(big_integer(LedgerCosignatures::HeadTimestampMs))
                    .col(string(LedgerCosignatures::Signature))
                    .col(big_integer(LedgerCosignatures::ReceivedMs))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ledger_cosignatures_facility_size")
                    .table(LedgerCosignatures::Table)
                    .col(LedgerCosignatures::Facility)
                    .col(LedgerCosignatures::TreeSize)
                    .unique()
                    .to_owned(),
            )
            .await?;
        Ok(())
    }
}
