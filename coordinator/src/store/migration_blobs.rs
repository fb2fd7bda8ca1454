//! Migration `m0008_blobs`: model blobs kept in the database, one row per blob named by its
//! SHA-256, for coordinators that keep no blob directory (`serve --blobs-in-database`: an
//! active/standby pair on one PostgreSQL database). Frozen once released, like the others.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, blob, text};

pub(crate) struct M0008Blobs;

impl MigrationName for M0008Blobs {
    fn name(&self) -> &str {
        "m0008_blobs"
    }
}

#[derive(DeriveIden)]
enum Blobs {
    Table,
    Digest,
    Bytes,
    Size,
    StoredMs,
}

#[async_trait]
impl MigrationTrait for M0008Blobs {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Blobs::Table)
                    // Lowercase hex SHA-256 of `bytes`.
                    .col(text(Blobs::Digest).primary_key())
                    .col(blob(Blobs::Bytes))
                    .col(big_integer(Blobs::Size))
                    // When it was last stored: `sweep` removes unkept blobs by this age.
                    .col(big_integer(Blobs::StoredMs))
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
