//! Migration `m0009_round_stages`: when each round entered each stage, so that the console
//! and the admin API can say how long every stage took. Rounds from before this migration
//! have no rows; they read as "not recorded". Frozen once released, like the others.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, text};

pub(crate) struct M0009RoundStages;

impl MigrationName for M0009RoundStages {
    fn name(&self) -> &str {
        "m0009_round_stages"
    }
}

#[derive(DeriveIden)]
enum RoundStages {
    Table,
    RoundId,
    State,
    StartedMs,
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    Id,
}

#[async_trait]
impl MigrationTrait for M0009RoundStages {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RoundStages::Table)
                    .col(big_integer(RoundStages::RoundId))
                    // The round state entered, as `rounds.state` spells it.
                    .col(text(RoundStages::State))
                    .col(big_integer(RoundStages::StartedMs))
                    .primary_key(
                        Index::create()
                            .col(RoundStages::RoundId)
                            .col(RoundStages::State),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .from(RoundStages::Table, RoundStages::RoundId)
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
