//! Migration `m0007_accepted_uploads`: every upload a running round has accepted (a plain
//! update or a masked input), written before the facility is told it was accepted, so
//! that a coordinator killed before the round ends still records the contribution in the
//! ledger at restart. Rows live only while their round runs. Frozen once released, like
//! the others.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, text};

pub(crate) struct M0007AcceptedUploads;

impl MigrationName for M0007AcceptedUploads {
    fn name(&self) -> &str {
        "m0007_accepted_uploads"
    }
}

#[derive(DeriveIden)]
enum AcceptedUploads {
    Table,
    RoundId,
    Facility,
    Contribution,
    AcceptedMs,
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    Id,
}

#[async_trait]
impl MigrationTrait for M0007AcceptedUploads {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(AcceptedUploads::Table)
                    .col(big_integer(AcceptedUploads::RoundId))
                    .col(text(AcceptedUploads::Facility))
                    // The ledger's `contribution` event as JSON, receipt included.
                    .col(text(AcceptedUploads::Contribution))
                    .col(big_integer(AcceptedUploads::AcceptedMs))
                    .primary_key(
                        Index::create()
                            .col(AcceptedUploads::RoundId)
                            .col(AcceptedUploads::Facility),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(AcceptedUploads::Table, AcceptedUploads::RoundId)
                            .to(Rounds::Table, Rounds::Id),
                    )
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
