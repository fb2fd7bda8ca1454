//! Identity and access in the store: facilities and their enrolment tokens, the
//! certificates the coordinator issued, the certificates revoked one by one, and the
//! admin-action log.
//!
//! Each change that an operator makes is written in one transaction with its admin-action
//! record, so the log never misses a change that happened. Tokens are stored as the
//! SHA-256 of their secret only; using one is a single guarded UPDATE, so of two
//! concurrent enrolments with one token exactly one succeeds.

use std::collections::HashMap;

use sea_orm::sea_query::Expr;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseTransaction, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait,
};

use harambee_privacy::ledger::LedgerEvent;
use harambee_privacy::ledger::event::CertificateChange;

use super::entity::{
    admin_action, agent, certificate, enrolment_token, facility, revoked_certificate,
};
use super::{ParseEnumError, Store, StoreError, finish};

string_enum! {
    /// Where a facility is in its life.
    pub enum FacilityStatus ("facility status") {
        /// Added; its token has not been used yet.
        Pending = "pending",
        /// Enrolled with a token at least once.
        Enrolled = "enrolled",
        /// Revoked for good.
        Revoked = "revoked",
    }
}

/// A facility the operators know of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FacilityRow {
    pub name: String,
    pub status: FacilityStatus,
    pub created_ms: i64,
    /// `harambee://operator/<name>` of whoever added it.
    pub created_by: String,
    pub enrolled_ms: Option<i64>,
    pub revoked_ms: Option<i64>,
    pub revoked_by: Option<String>,
    pub revoked_reason: Option<String>,
}

/// An enrolment token, as stored: the hash of its secret, never the secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRow {
    pub id: String,
    pub facility: String,
    pub secret_sha256: String,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub used_ms: Option<i64>,
    /// Set when a newer token replaced it or the facility was revoked.
    pub withdrawn_ms: Option<i64>,
}

/// A certificate the coordinator signed (by enrolment or renewal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateRow {
    pub serial: String,
    pub sha256: String,
    pub role: String,
    pub name: String,
    pub not_before_ms: i64,
    pub not_after_ms: i64,
    pub issued_ms: i64,
    /// `"enrol"` or `"renew"`.
    pub via: String,
    /// Lowercase hex SHA-256 of the public key bits; `None` for certificates recorded
    /// before the coordinator kept it.
    pub key_sha256: Option<String>,
}

/// A certificate revoked by its serial number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RevokedCertificateRow {
    /// Lowercase hex, no leading zero octets.
    pub serial: String,
    /// `harambee://<role>/<name>`, `server`, or empty when only the serial is known.
    pub identity: String,
    /// Lowercase hex SHA-256 of the public key bits, empty when unknown. Every certificate
    /// for this key is refused too.
    pub key_sha256: String,
    pub revoked_ms: i64,
    /// `harambee://operator/<name>` of whoever revoked it.
    pub revoked_by: String,
    pub reason: String,
}

string_enum! {
    /// What an operator did.
    pub enum AdminActionKind ("admin action") {
        FacilityAdded = "facility_added",
        FacilityRevoked = "facility_revoked",
        CertificateRevoked = "certificate_revoked",
        FederationCreated = "federation_created",
        RoundStarted = "round_started",
        RoundCancelled = "round_cancelled",
        ModelExported = "model_exported",
    }
}

/// One entry of the admin-action log: who did what, to what, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminActionRow {
    /// Assigned by the store (ascending); ignored on insert.
    pub id: u64,
    pub at_ms: i64,
    /// `harambee://<role>/<name>` of the caller's certificate.
    pub actor: String,
    pub actor_cert_sha256: String,
    pub action: AdminActionKind,
    /// The facility or federation acted on.
    pub subject: String,
    pub detail: String,
}

/// Why a token cannot be used now (the caller reports which).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenRefusal {
    Used(i64),
    Withdrawn(i64),
    Expired(i64),
}

impl Store {
    /// Registers `name` if it is new (status `pending`), withdraws any unused token it
    /// has, stores `token` and records `action`, in one transaction.
    ///
    /// Refuses a revoked facility (`FacilityRevoked`: revocation is permanent) and an
    /// enrolled one unless `reenrol` (`FacilityEnrolled`).
    pub async fn add_facility(
        &self,
        name: &str,
        token: &TokenRow,
        reenrol: bool,
        action: &AdminActionRow,
    ) -> Result<FacilityRow, StoreError> {
        let now = action.at_ms;
        let txn = self.db.begin().await?;
        let result = async {
            let existing = facility::Entity::find_by_id(name.to_owned())
                .one(&txn)
                .await?;
            let row = match existing {
                Some(m) => {
                    let row = facility_from_model(m)?;
                    match row.status {
                        FacilityStatus::Revoked => {
                            return Err(StoreError::FacilityRevoked(name.to_owned()));
                        }
                        FacilityStatus::Enrolled if !reenrol => {
                            return Err(StoreError::FacilityEnrolled(name.to_owned()));
                        }
                        _ => row,
                    }
                }
                None => {
                    let row = FacilityRow {
                        name: name.to_owned(),
                        status: FacilityStatus::Pending,
                        created_ms: now,
                        created_by: action.actor.clone(),
                        enrolled_ms: None,
                        revoked_ms: None,
                        revoked_by: None,
                        revoked_reason: None,
                    };
                    facility::Entity::insert(facility::ActiveModel {
                        name: Set(row.name.clone()),
                        status: Set(row.status.as_str().to_owned()),
                        created_ms: Set(row.created_ms),
                        created_by: Set(row.created_by.clone()),
                        enrolled_ms: Set(None),
                        revoked_ms: Set(None),
                        revoked_by: Set(None),
                        revoked_reason: Set(None),
                    })
                    .exec_without_returning(&txn)
                    .await?;
                    row
                }
            };
            withdraw_tokens(&txn, name, now).await?;
            enrolment_token::Entity::insert(enrolment_token::ActiveModel {
                id: Set(token.id.clone()),
                facility: Set(name.to_owned()),
                secret_sha256: Set(token.secret_sha256.clone()),
                created_ms: Set(token.created_ms),
                expires_ms: Set(token.expires_ms),
                used_ms: Set(None),
                withdrawn_ms: Set(None),
            })
            .exec_without_returning(&txn)
            .await?;
            insert_action(&txn, action).await?;
            Ok(row)
        }
        .await;
        finish(txn, result).await
    }

    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let found = enrolment_token::Entity::find_by_id(id.to_owned())
            .one(&self.db)
            .await?;
        Ok(found.map(|m| TokenRow {
            id: m.id,
            facility: m.facility,
            secret_sha256: m.secret_sha256,
            created_ms: m.created_ms,
            expires_ms: m.expires_ms,
            used_ms: m.used_ms,
            withdrawn_ms: m.withdrawn_ms,
        }))
    }

    /// Uses token `id` for the enrolment that issued `cert`, in one transaction: marks the
    /// token used (only if it is unused, not withdrawn and not expired at `now_ms`), the
    /// facility enrolled (only if it is not revoked), and records the certificate.
    pub async fn use_token(
        &self,
        id: &str,
        cert: &CertificateRow,
        receipt_key: Option<ed25519_dalek::VerifyingKey>,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let result = async {
            let updated = enrolment_token::Entity::update_many()
                .col_expr(enrolment_token::Column::UsedMs, Expr::value(now_ms))
                .filter(enrolment_token::Column::Id.eq(id))
                .filter(enrolment_token::Column::Facility.eq(cert.name.as_str()))
                .filter(enrolment_token::Column::UsedMs.is_null())
                .filter(enrolment_token::Column::WithdrawnMs.is_null())
                .filter(enrolment_token::Column::ExpiresMs.gt(now_ms))
                .exec(&txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(StoreError::TokenUnusable(id.to_owned()));
            }
            let updated = facility::Entity::update_many()
                .col_expr(
                    facility::Column::Status,
                    Expr::value(FacilityStatus::Enrolled.as_str()),
                )
                .col_expr(facility::Column::EnrolledMs, Expr::value(now_ms))
                .filter(facility::Column::Name.eq(cert.name.as_str()))
                .filter(facility::Column::Status.ne(FacilityStatus::Revoked.as_str()))
                .exec(&txn)
                .await?;
            if updated.rows_affected != 1 {
                return Err(StoreError::FacilityRevoked(cert.name.clone()));
            }
            insert_certificate(&txn, cert).await?;
            let event = LedgerEvent::FacilityEnrolled {
                facility: cert.name.clone(),
                receipt_key,
            };
            super::ledger::append_in(&txn, now_ms, vec![event]).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    /// Records a certificate issued by renewal of certificate `renewed_serial`, and its ledger
    /// entry, in one transaction. Refuses (`CertificateRevoked`, `KeyRevoked`) if the renewed
    /// serial or the key has been revoked meanwhile (by another coordinator, say).
    pub async fn record_renewal(
        &self,
        cert: &CertificateRow,
        renewed_serial: &str,
        identity: &str,
    ) -> Result<(), StoreError> {
        let txn = self.db.begin().await?;
        let result = async {
            if revoked_certificate::Entity::find_by_id(renewed_serial.to_owned())
                .one(&txn)
                .await?
                .is_some()
            {
                return Err(StoreError::CertificateRevoked(renewed_serial.to_owned()));
            }
            let key = cert.key_sha256.clone().unwrap_or_default();
            if !key.is_empty()
                && let Some(revoked) = revoked_certificate::Entity::find()
                    .filter(revoked_certificate::Column::KeySha256.eq(key.as_str()))
                    .one(&txn)
                    .await?
            {
                return Err(StoreError::KeyRevoked(revoked.serial));
            }
            insert_certificate(&txn, cert).await?;
            let event = LedgerEvent::Certificate {
                change: CertificateChange::Renewed,
                identity: identity.to_owned(),
                serial: cert.serial.clone(),
                key_sha256: key,
                detail: renewed_serial.to_owned(),
            };
            super::ledger::append_in(&txn, cert.issued_ms, vec![event]).await?;
            Ok(())
        }
        .await;
        finish(txn, result).await
    }

    /// Revokes the certificate `revoked.serial`, recording `action` and a ledger entry, in
    /// one transaction. What the caller does not know (identity, key) is filled in from the
    /// certificates this coordinator issued. Revoking a revoked serial changes nothing and
    /// returns the first revocation.
    pub async fn revoke_certificate(
        &self,
        revoked: &RevokedCertificateRow,
        action: &AdminActionRow,
    ) -> Result<RevokedCertificateRow, StoreError> {
        let txn = self.db.begin().await?;
        let result = async {
            if let Some(existing) = revoked_certificate::Entity::find_by_id(revoked.serial.clone())
                .one(&txn)
                .await?
            {
                return Ok(revoked_from_model(existing));
            }
            let mut row = revoked.clone();
            if let Some(issued) = certificate::Entity::find_by_id(revoked.serial.clone())
                .one(&txn)
                .await?
            {
                if row.identity.is_empty() {
                    row.identity = format!(
                        "{}{}/{}",
                        harambee_link::identity::IDENTITY_SCHEME,
                        issued.role,
                        issued.name
                    );
                }
                if row.key_sha256.is_empty() {
                    row.key_sha256 = issued.key_sha256.unwrap_or_default();
                }
            }
            revoked_certificate::Entity::insert(revoked_certificate::ActiveModel {
                serial: Set(row.serial.clone()),
                identity: Set(row.identity.clone()),
                key_sha256: Set(row.key_sha256.clone()),
                revoked_ms: Set(row.revoked_ms),
                revoked_by: Set(row.revoked_by.clone()),
                reason: Set(row.reason.clone()),
            })
            .exec_without_returning(&txn)
            .await?;
            let action = AdminActionRow {
                subject: if row.identity.is_empty() {
                    format!("serial {}", row.serial)
                } else {
                    format!("{} serial {}", row.identity, row.serial)
                },
                ..action.clone()
            };
            insert_action(&txn, &action).await?;
            let event = LedgerEvent::Certificate {
                change: CertificateChange::Revoked,
                identity: row.identity.clone(),
                serial: row.serial.clone(),
                key_sha256: row.key_sha256.clone(),
                detail: row.reason.clone(),
            };
            super::ledger::append_in(&txn, row.revoked_ms, vec![event]).await?;
            Ok(row)
        }
        .await;
        finish(txn, result).await
    }

    /// Every certificate revoked by serial, oldest first.
    pub async fn revoked_certificates(&self) -> Result<Vec<RevokedCertificateRow>, StoreError> {
        Ok(revoked_certificate::Entity::find()
            .order_by_asc(revoked_certificate::Column::RevokedMs)
            .all(&self.db)
            .await?
            .into_iter()
            .map(revoked_from_model)
            .collect())
    }

    /// Revokes facility `name` for good and withdraws its unused tokens, recording
    /// `action`, in one transaction. The facility need not have been added through
    /// enrolment: one that only ever connected (certificate from `pki issue`) is revoked
    /// too. Fails with `UnknownFacility` for a name the coordinator has never seen.
    /// Revoking a revoked facility changes nothing and records nothing.
    pub async fn revoke_facility(
        &self,
        name: &str,
        reason: &str,
        action: &AdminActionRow,
    ) -> Result<FacilityRow, StoreError> {
        let now = action.at_ms;
        let txn = self.db.begin().await?;
        let result = async {
            let existing = facility::Entity::find_by_id(name.to_owned())
                .one(&txn)
                .await?;
            match existing {
                Some(m) if m.status == FacilityStatus::Revoked.as_str() => {
                    return facility_from_model(m);
                }
                Some(_) => {
                    facility::Entity::update_many()
                        .col_expr(
                            facility::Column::Status,
                            Expr::value(FacilityStatus::Revoked.as_str()),
                        )
                        .col_expr(facility::Column::RevokedMs, Expr::value(now))
                        .col_expr(
                            facility::Column::RevokedBy,
                            Expr::value(action.actor.as_str()),
                        )
                        .col_expr(facility::Column::RevokedReason, Expr::value(reason))
                        .filter(facility::Column::Name.eq(name))
                        .exec(&txn)
                        .await?;
                }
                None => {
                    let seen = agent::Entity::find_by_id(name.to_owned()).one(&txn).await?;
                    let Some(seen) = seen else {
                        return Err(StoreError::UnknownFacility(name.to_owned()));
                    };
                    facility::Entity::insert(facility::ActiveModel {
                        name: Set(name.to_owned()),
                        status: Set(FacilityStatus::Revoked.as_str().to_owned()),
                        created_ms: Set(seen.first_seen_ms),
                        created_by: Set(String::new()),
                        enrolled_ms: Set(None),
                        revoked_ms: Set(Some(now)),
                        revoked_by: Set(Some(action.actor.clone())),
                        revoked_reason: Set(Some(reason.to_owned())),
                    })
                    .exec_without_returning(&txn)
                    .await?;
                }
            }
            withdraw_tokens(&txn, name, now).await?;
            insert_action(&txn, action).await?;
            let event = LedgerEvent::FacilityRevoked {
                facility: name.to_owned(),
                reason: reason.to_owned(),
            };
            super::ledger::append_in(&txn, now, vec![event]).await?;
            let row = facility::Entity::find_by_id(name.to_owned())
                .one(&txn)
                .await?
                .ok_or_else(|| StoreError::UnknownFacility(name.to_owned()))?;
            facility_from_model(row)
        }
        .await;
        finish(txn, result).await
    }

    pub async fn facility(&self, name: &str) -> Result<Option<FacilityRow>, StoreError> {
        facility::Entity::find_by_id(name.to_owned())
            .one(&self.db)
            .await?
            .map(facility_from_model)
            .transpose()
    }

    /// All facilities ordered by name.
    pub async fn facilities(&self) -> Result<Vec<FacilityRow>, StoreError> {
        facility::Entity::find()
            .order_by_asc(facility::Column::Name)
            .all(&self.db)
            .await?
            .into_iter()
            .map(facility_from_model)
            .collect()
    }

    /// Names of the revoked facilities.
    pub async fn revoked_facilities(&self) -> Result<Vec<String>, StoreError> {
        Ok(facility::Entity::find()
            .select_only()
            .column(facility::Column::Name)
            .filter(facility::Column::Status.eq(FacilityStatus::Revoked.as_str()))
            .into_tuple()
            .all(&self.db)
            .await?)
    }

    /// The latest expiry of the certificates issued to each identity of `role`, by name.
    pub async fn latest_certificate_expiry(
        &self,
        role: &str,
    ) -> Result<HashMap<String, i64>, StoreError> {
        let rows: Vec<(String, Option<i64>)> = certificate::Entity::find()
            .select_only()
            .column(certificate::Column::Name)
            .column_as(certificate::Column::NotAfterMs.max(), "not_after")
            .filter(certificate::Column::Role.eq(role))
            .group_by(certificate::Column::Name)
            .into_tuple()
            .all(&self.db)
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(name, at)| at.map(|at| (name, at)))
            .collect())
    }

    /// The certificates issued to `role`/`name`, oldest first.
    pub async fn certificates(
        &self,
        role: &str,
        name: &str,
    ) -> Result<Vec<CertificateRow>, StoreError> {
        Ok(certificate::Entity::find()
            .filter(certificate::Column::Role.eq(role))
            .filter(certificate::Column::Name.eq(name))
            .order_by_asc(certificate::Column::IssuedMs)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| CertificateRow {
                serial: m.serial,
                sha256: m.sha256,
                role: m.role,
                name: m.name,
                not_before_ms: m.not_before_ms,
                not_after_ms: m.not_after_ms,
                issued_ms: m.issued_ms,
                via: m.via,
                key_sha256: m.key_sha256,
            })
            .collect())
    }

    /// Appends to the admin-action log and returns the entry's id.
    pub async fn record_admin_action(&self, action: &AdminActionRow) -> Result<u64, StoreError> {
        let txn = self.db.begin().await?;
        let result = insert_action(&txn, action).await;
        finish(txn, result).await
    }

    /// Log entries with an id above `after_id`, oldest first, at most `limit`.
    pub async fn admin_actions(
        &self,
        after_id: u64,
        limit: u64,
    ) -> Result<Vec<AdminActionRow>, StoreError> {
        let after = i64::try_from(after_id).unwrap_or(i64::MAX);
        admin_action::Entity::find()
            .filter(admin_action::Column::Id.gt(after))
            .order_by_asc(admin_action::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await?
            .into_iter()
            .map(|m| {
                Ok(AdminActionRow {
                    id: u64::try_from(m.id).map_err(|_| StoreError::CorruptRow {
                        table: "admin_actions",
                        detail: format!("id = {}", m.id),
                    })?,
                    at_ms: m.at_ms,
                    actor: m.actor,
                    actor_cert_sha256: m.actor_cert_sha256,
                    action: m.action.parse().map_err(|e: ParseEnumError| {
                        StoreError::CorruptRow {
                            table: "admin_actions",
                            detail: e.to_string(),
                        }
                    })?,
                    subject: m.subject,
                    detail: m.detail,
                })
            })
            .collect()
    }
}

impl TokenRow {
    /// Whether the token can be used at `now_ms`, and if not, why.
    pub fn refusal(&self, now_ms: i64) -> Option<TokenRefusal> {
        if let Some(at) = self.used_ms {
            Some(TokenRefusal::Used(at))
        } else if let Some(at) = self.withdrawn_ms {
            Some(TokenRefusal::Withdrawn(at))
        } else if self.expires_ms <= now_ms {
            Some(TokenRefusal::Expired(self.expires_ms))
        } else {
            None
        }
    }
}

async fn withdraw_tokens(
    txn: &DatabaseTransaction,
    facility_name: &str,
    now_ms: i64,
) -> Result<(), StoreError> {
    enrolment_token::Entity::update_many()
        .col_expr(enrolment_token::Column::WithdrawnMs, Expr::value(now_ms))
        .filter(enrolment_token::Column::Facility.eq(facility_name))
        .filter(enrolment_token::Column::UsedMs.is_null())
        .filter(enrolment_token::Column::WithdrawnMs.is_null())
        .exec(txn)
        .await?;
    Ok(())
}

async fn insert_certificate(
    db: &impl ConnectionTrait,
    cert: &CertificateRow,
) -> Result<(), StoreError> {
    certificate::Entity::insert(certificate::ActiveModel {
        serial: Set(cert.serial.clone()),
        sha256: Set(cert.sha256.clone()),
        role: Set(cert.role.clone()),
        name: Set(cert.name.clone()),
        not_before_ms: Set(cert.not_before_ms),
        not_after_ms: Set(cert.not_after_ms),
        issued_ms: Set(cert.issued_ms),
        via: Set(cert.via.clone()),
        key_sha256: Set(cert.key_sha256.clone()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

/// Records an admin action, and appends it to the privacy ledger in the same transaction.
async fn insert_action(
    db: &impl ConnectionTrait,
    action: &AdminActionRow,
) -> Result<u64, StoreError> {
    let event = LedgerEvent::AdminAction {
        actor: action.actor.clone(),
        action: action.action.as_str().to_owned(),
        detail: if action.detail.is_empty() {
            action.subject.clone()
        } else {
            format!("{}: {}", action.subject, action.detail)
        },
    };
    super::ledger::append_in(db, action.at_ms, vec![event]).await?;
    let inserted = admin_action::Entity::insert(admin_action::ActiveModel {
        id: NotSet,
        at_ms: Set(action.at_ms),
        actor: Set(action.actor.clone()),
        actor_cert_sha256: Set(action.actor_cert_sha256.clone()),
        action: Set(action.action.as_str().to_owned()),
        subject: Set(action.subject.clone()),
        detail: Set(action.detail.clone()),
    })
    .exec(db)
    .await?;
    u64::try_from(inserted.last_insert_id).map_err(|_| StoreError::CorruptRow {
        table: "admin_actions",
        detail: format!("id = {}", inserted.last_insert_id),
    })
}

fn revoked_from_model(m: revoked_certificate::Model) -> RevokedCertificateRow {
    RevokedCertificateRow {
        serial: m.serial,
        identity: m.identity,
        key_sha256: m.key_sha256,
        revoked_ms: m.revoked_ms,
        revoked_by: m.revoked_by,
        reason: m.reason,
    }
}

fn facility_from_model(m: facility::Model) -> Result<FacilityRow, StoreError> {
    Ok(FacilityRow {
        status: m
            .status
            .parse()
            .map_err(|e: ParseEnumError| StoreError::CorruptRow {
                table: "facilities",
                detail: e.to_string(),
            })?,
        name: m.name,
        created_ms: m.created_ms,
        created_by: m.created_by,
        enrolled_ms: m.enrolled_ms,
        revoked_ms: m.revoked_ms,
        revoked_by: m.revoked_by,
        revoked_reason: m.revoked_reason,
    })
}
