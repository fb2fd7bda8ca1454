//! Migration `m0006_revocation`: certificates revoked one by one (by serial, for every
//! role and the coordinator's own), and the public-key fingerprint of each certificate the
//! coordinator issues, so that revoking one certificate also refuses its key. Frozen once
//! released, like the others.

use sea_orm_migration::async_trait::async_trait;
use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::{big_integer, text, text_null};

pub(crate) struct M0006Revocation;

impl MigrationName for M0006Revocation {
    fn name(&self) -> &str {
        "m0006_revocation"
    }
}

#[derive(DeriveIden)]
enum RevokedCertificates {
    Table,
    Serial,
    Identity,
    KeySha256,
    RevokedMs,
    RevokedBy,
    Reason,
}

#[derive(DeriveIden)]
enum Certificates {
    Table,
    KeySha256,
}

#[async_trait]
impl MigrationTrait for M0006Revocation {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RevokedCertificates::Table)
                    // Lowercase hex, no leading zero octets.
                    .col(text(RevokedCertificates::Serial).primary_key())
                    // harambee://<role>/<name>, "server", or "" when only the serial is known.
                    .col(text(RevokedCertificates::Identity))
                    // SHA-256 of the public key bits, "" when unknown.
                    .col(text(RevokedCertificates::KeySha256))
                    .col(big_integer(RevokedCertificates::RevokedMs))
                    .col(text(RevokedCertificates::RevokedBy))
                    .col(text(RevokedCertificates::Reason))
                    .to_owned(),
            )
            .await?;
        manager
            .alter_table(
                Table::alter()
                    .table(Certificates::Table)
                    .add_column(text_null(Certificates::KeySha256))
                    .to_owned(),
            )
            .await?;
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
