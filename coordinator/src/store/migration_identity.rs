//! Migration `m0002_identity`: facilities, enrolment tokens, the certificates the
//! coordinator issued, and the admin-action log. Frozen once released, like `m0001`.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, big_integer_null, text, text_null};

pub(crate) struct M0002Identity;

impl MigrationName for M0002Identity {
    fn name(&self) -> &str {
        "m0002_identity"
    }
}

#[derive(DeriveIden)]
enum Facilities {
    Table,
    Name,
    Status,
    CreatedMs,
    CreatedBy,
    EnrolledMs,
    RevokedMs,
    RevokedBy,
    RevokedReason,
}

#[derive(DeriveIden)]
enum EnrolmentTokens {
    Table,
    Id,
    Facility,
    SecretSha256,
    CreatedMs,
    ExpiresMs,
    UsedMs,
    WithdrawnMs,
}

#[derive(DeriveIden)]
enum Certificates {
    Table,
    Serial,
    Sha256,
    Role,
    Name,
    NotBeforeMs,
    NotAfterMs,
    IssuedMs,
    Via,
}

#[derive(DeriveIden)]
enum AdminActions {
    Table,
    Id,
    AtMs,
    Actor,
    ActorCertSha256,
    Action,
    Subject,
    Detail,
}

#[async_trait]
impl MigrationTrait for M0002Identity {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(Facilities::Table)
                    .col(text(Facilities::Name).primary_key())
                    // "pending", "enrolled" or "revoked".
                    .col(text(Facilities::Status))
                    .col(big_integer(Facilities::CreatedMs))
                    .col(text(Facilities::CreatedBy))
                    .col(big_integer_null(Facilities::EnrolledMs))
                    .col(big_integer_null(Facilities::RevokedMs))
                    .col(text_null(Facilities::RevokedBy))
                    .col(text_null(Facilities::RevokedReason))
                    .check(Expr::col(Facilities::Status).is_in(["pending", "enrolled", "revoked"]))
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(EnrolmentTokens::Table)
                    .col(text(EnrolmentTokens::Id).primary_key())
                    .col(text(EnrolmentTokens::Facility))
                    // SHA-256 of the token's secret; the secret itself is never stored.
                    .col(text(EnrolmentTokens::SecretSha256))
                    .col(big_integer(EnrolmentTokens::CreatedMs))
                    .col(big_integer(EnrolmentTokens::ExpiresMs))
                    .col(big_integer_null(EnrolmentTokens::UsedMs))
                    // Set when a newer token replaced it or the facility was revoked.
                    .col(big_integer_null(EnrolmentTokens::WithdrawnMs))
                    .foreign_key(
                        ForeignKey::create()
                            .name("fk_enrolment_tokens_facility")
                            .from(EnrolmentTokens::Table, EnrolmentTokens::Facility)
                            .to(Facilities::Table, Facilities::Name)
                            .on_delete(ForeignKeyAction::Cascade),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_enrolment_tokens_facility")
                    .table(EnrolmentTokens::Table)
                    .col(EnrolmentTokens::Facility)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(Certificates::Table)
                    .col(text(Certificates::Serial).primary_key())
                    .col(text(Certificates::Sha256).unique_key())
                    .col(text(Certificates::Role))
                    .col(text(Certificates::Name))
                    .col(big_integer(Certificates::NotBeforeMs))
                    .col(big_integer(Certificates::NotAfterMs))
                    .col(big_integer(Certificates::IssuedMs))
                    // "enrol" or "renew".
                    .col(text(Certificates::Via))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_certificates_identity")
                    .table(Certificates::Table)
                    .col(Certificates::Role)
                    .col(Certificates::Name)
                    .to_owned(),
            )
            .await?;

        manager
            .create_table(
                Table::create()
                    .table(AdminActions::Table)
                    .col(big_integer(AdminActions::Id).auto_increment().primary_key())
                    .col(big_integer(AdminActions::AtMs))
                    .col(text(AdminActions::Actor))
                    .col(text(AdminActions::ActorCertSha256))
                    .col(text(AdminActions::Action))
                    .col(text(AdminActions::Subject))
                    .col(text(AdminActions::Detail))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
