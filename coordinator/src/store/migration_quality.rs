//! Migration `m0003_quality`: the server optimizer's state with each model version (FedAdam
//! and its kin carry moments from round to round), and the evaluation metrics beyond loss,
//! accuracy and AUC. Frozen once released. One column per ALTER: SQLite adds one at a time.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer_null, double_null, text_null};

pub(crate) struct M0003Quality;

impl MigrationName for M0003Quality {
    fn name(&self) -> &str {
        "m0003_quality"
    }
}

#[derive(DeriveIden)]
enum ModelVersions {
    Table,
    ServerState,
}

#[derive(DeriveIden)]
enum Participants {
    Table,
    MetricsNPositives,
    MetricsSensitivity,
    MetricsSpecificity,
    MetricsEce,
}

#[async_trait]
impl MigrationTrait for M0003Quality {
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ModelVersions::Table)
                    .add_column(text_null(ModelVersions::ServerState))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Participants::Table)
                    .add_column(big_integer_null(Participants::MetricsNPositives))
                    .to_owned(),
            )
            .await?;
        for column in [
            Participants::MetricsSensitivity,
            Participants::MetricsSpecificity,
            Participants::MetricsEce,
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(Participants::Table)
                        .add_column(double_null(column))
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
