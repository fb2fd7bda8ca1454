//! Schema migrations, applied by `Store::connect`.
//!
//! A migration, once released, is frozen: its name is recorded in the
//! database and its body must never change. Schema changes go into a new
//! migration appended to `Migrator::migrations`. Migrations spell state names
//! as literals on purpose, so renaming a Rust enum variant cannot silently
//! change an old migration.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, double_null, text, text_null};

pub(crate) struct Migrator;

#[async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(M0001Initial),
            Box::new(super::migration_identity::M0002Identity),
            Box::new(super::migration_quality::M0003Quality),
            Box::new(super::migration_ledger::M0004Ledger),
            Box::new(super::migration_ledger_key::M0005LedgerKey),
            Box::new(super::migration_revocation::M0006Revocation),
            Box::new(super::migration_accepted::M0007AcceptedUploads),
            Box::new(super::migration_blobs::M0008Blobs),
            Box::new(super::migration_round_stages::M0009RoundStages),
        ]
    }
}

/// Federations, model versions, rounds, participants and agents.
struct M0001Initial;

impl MigrationName for M0001Initial {
    fn name(&self) -> &str {
        "m0001_initial"
    }
}

#[derive(DeriveIden)]
enum Federations {
    Table,
    Name,
    ConfigJson,
    CreatedMs,
}

#[derive(DeriveIden)]
enum ModelVersions {
    Table,
    Federation,
    Version,
    Digest,
    SizeBytes,
    NParams,
    RoundId,
    CreatedMs,
}

#[derive(DeriveIden)]
enum Rounds {
    Table,
    Id,
    Federation,
    Number,
    State,
    FailureReason,
    BaseVersion,
    ResultVersion,
    CreatedMs,
    UpdatedMs,
}

#[derive(DeriveIden)]
enum Participants {
    Table,
    RoundId,
    Facility,
    Status,
    NSamples,
    UpdateSha256,
    Detail,
    MetricsNSamples,
    MetricsLoss,
    MetricsAccuracy,
    MetricsAuc,
}

#[derive(DeriveIden)]
enum Agents {
    Table,
    Facility,
    CertSha256,
    FirstSeenMs,
    LastSeenMs,
}

#[async_trait]
impl MigrationTrait for M0001Initial {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Federations::Table)
                    .col(text(Federations::Name).primary_key())
                    .col(text(Federations::ConfigJson))
                    .col(big_integer(Federations::CreatedMs))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(ModelVersions::Table)
                    .col(text(ModelVersions::Federation))
                    .col(big_integer(ModelVersions::Version))
                    .col(text(ModelVersions::Digest))
                    .col(big_integer(ModelVersions::SizeBytes))
                    .col(big_integer(ModelVersions::NParams))
                    // Informational back-reference to the round that produced the
                    // version; no foreign key, as rounds reference model versions.
                    .col(big_integer_null(ModelVersions::RoundId))
                    .col(big_integer(ModelVersions::CreatedMs))
                    .primary_key(
                        Index::create()
                            .col(ModelVersions::Federation)
                            .col(ModelVersions::Version),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_model_versions_federation")
                            .from(ModelVersions::Table, ModelVersions::Federation)
                            .to(Federations::Table, Federations::Name)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::col(ModelVersions::Version).gte(0))
                    .check(Expr::col(ModelVersions::SizeBytes).gte(0))
                    .check(Expr::col(ModelVersions::NParams).gte(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_model_versions_digest")
                    .table(ModelVersions::Table)
                    .col(ModelVersions::Digest)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Rounds::Table)
                    .col(big_integer(Rounds::Id).auto_increment().primary_key())
                    .col(text(Rounds::Federation))
                    .col(big_integer(Rounds::Number))
                    .col(text(Rounds::State))
                    .col(text_null(Rounds::FailureReason))
                    .col(big_integer(Rounds::BaseVersion))
                    .col(big_integer_null(Rounds::ResultVersion))
                    .col(big_integer(Rounds::CreatedMs))
                    .col(big_integer(Rounds::UpdatedMs))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_rounds_federation")
                            .from(Rounds::Table, Rounds::Federation)
                            .to(Federations::Table, Federations::Name)
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_rounds_base_version")
                            .from(Rounds::Table, (Rounds::Federation, Rounds::BaseVersion))
                            .to(
                                ModelVersions::Table,
                                (ModelVersions::Federation, ModelVersions::Version),
                            )
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_rounds_result_version")
                            .from(Rounds::Table, (Rounds::Federation, Rounds::ResultVersion))
                            .to(
                                ModelVersions::Table,
                                (ModelVersions::Federation, ModelVersions::Version),
                            )
                            .on_delete(ForeignKeyAction::Restrict),
                    )
                    .check(Expr::col(Rounds::Number).gte(1))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("ux_rounds_federation_number")
                    .table(Rounds::Table)
                    .col(Rounds::Federation)
                    .col(Rounds::Number)
                    .unique()
                    .to_owned(),
            )
            .await?;
        // At most one unfinished round per federation, enforced by the database
        // so that concurrent coordinators cannot both start one.
        manager
            .create_index(
                Index::create()
                    .name("ux_rounds_one_unfinished")
                    .table(Rounds::Table)
                    .col(Rounds::Federation)
                    .unique()
                    .and_where(Expr::col(Rounds::State).is_not_in(["committed", "failed"]))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Participants::Table)
                    .col(big_integer(Participants::RoundId))
                    .col(text(Participants::Facility))
                    .col(text(Participants::Status))
                    .col(big_integer(Participants::NSamples))
                    .col(text_null(Participants::UpdateSha256))
                    .col(text_null(Participants::Detail))
                    .col(big_integer_null(Participants::MetricsNSamples))
                    .col(double_null(Participants::MetricsLoss))
                    .col(double_null(Participants::MetricsAccuracy))
                    .col(double_null(Participants::MetricsAuc))
                    .primary_key(
                        Index::create()
                            .col(Participants::RoundId)
                            .col(Participants::Facility),
                    )
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_participants_round")
                            .from(Participants::Table, Participants::RoundId)
                            .to(Rounds::Table, Rounds::Id)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .check(Expr::col(Participants::NSamples).gte(0))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_participants_facility")
                    .table(Participants::Table)
                    .col(Participants::Facility)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Agents::Table)
                    .col(text(Agents::Facility).primary_key())
                    .col(text(Agents::CertSha256))
                    .col(big_integer(Agents::FirstSeenMs))
                    .col(big_integer(Agents::LastSeenMs))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    /// All or nothing on SQLite too (PostgreSQL wraps DDL in a transaction by
    /// default).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
