//! Facility enrolment and certificate renewal (`EnrolmentService`), facility management and
//! the admin-action log (`IdentityService`).
//!
//! # Enrolment
//!
//! An operator adds a facility (`IdentityService.AddFacility`, `harambee-coordinator
//! facility add`): the coordinator stores the facility and the SHA-256 of a fresh token's
//! secret, and returns the token ([`harambee_link::token::Token`]: coordinator address,
//! CA fingerprint, facility, id, secret, expiry). The facility's agent presents it once
//! (`Enrol`, on a connection without a client certificate, see [`crate::server::tls`]) with a
//! certificate request for its own Ed25519 key. The coordinator checks, in this order, and
//! refuses with a message naming the problem: the token parses and is intact; its id is
//! known; its secret matches; the facility it names is the one it was issued for; it is
//! neither used, nor withdrawn, nor expired; the facility is not revoked; the request is
//! validly self-signed, names that facility, and holds an Ed25519 key. It then signs a
//! certificate whose every field it fixes itself ([`crate::pki::Signer`]) and, in one
//! transaction, marks the token used (only if it still is unused: of two concurrent uses
//! one wins) and the facility enrolled, and records the certificate.
//!
//! `Enrol` attempts are rate-limited per token and per source address ([`crate::identity::limit`]), before
//! any other check: beyond the limit the answer is `RESOURCE_EXHAUSTED` with the time to
//! wait. An enrolment for a key that has been revoked is refused.
//!
//! # Renewal
//!
//! `RenewCertificate` issues a new certificate for the caller's own identity, on its mTLS
//! connection, for the same key only (the request's key must be the key of the certificate
//! the caller connects with; a new key means enrolling again), and never for a revoked
//! certificate or key. The new certificate and a ledger entry are recorded in one
//! transaction that re-checks the revocation. Nothing about it is kept in memory, so it
//! works across restarts.
//!
//! # Revocation and the admin-action log
//!
//! `RevokeFacility` marks the facility revoked in the database with the admin action, then
//! in memory ([`crate::identity::Identity`]), closes its task stream and drops it from running
//! rounds. `RevokeCertificate` does the same for one certificate by serial (any role, and
//! the server's), and with it its key; a ledger entry records it. Every admin action
//! (facility added or revoked, certificate revoked here; federation created, round
//! started, model exported in [`crate::service::admin`]) goes to the `admin_actions` table
//! with the caller's identity and certificate fingerprint and the time.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harambee_link::token::{Token, TokenError};
use harambee_proto::MAX_MESSAGE_BYTES;
use harambee_proto::pb::{
    self,
    enrolment_service_server::{EnrolmentService, EnrolmentServiceServer},
    identity_service_server::{IdentityService, IdentityServiceServer},
};
use tonic::{Request, Response, Status};
use tracing::{info, instrument, warn};

use crate::identity::{Issuing, Revoked};
use crate::pki::{self, CertFacts, CsrError, IssuedCert, PkiPaths, Signer};
use crate::service::caller::{require_any_role, require_role};
use crate::service::error::ServiceError;
use crate::state::{Coordinator, now_ms};
use crate::store::{
    AdminActionKind, AdminActionRow, CertificateRow, FacilityRow, RevokedCertificateRow,
    StoreError, TokenRefusal, TokenRow,
};
use harambee_link::identity::{PeerIdentity, Role};

/// Lifetime of an enrolment token when the operator does not say.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Longest lifetime of an enrolment token.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most admin actions returned by one `ListAdminActions`.
const MAX_ACTIONS_PER_CALL: u32 = 10_000;

/// Why an enrolment, renewal or facility change was refused.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    #[error(
        "enrolment is not enabled on this coordinator (it was started without its PKI directory)"
    )]
    NotEnabled,
    #[error(
        "this coordinator cannot sign certificates: its PKI directory holds neither issuing-ca.key nor ca.key (see deploy/PKI.md)"
    )]
    NoSigner,
    #[error(transparent)]
    Token(TokenError),
    #[error("this enrolment token was not issued by this coordinator (unknown token id)")]
    UnknownToken,
    #[error("this enrolment token is not valid: its secret does not match (was it altered?)")]
    WrongSecret,
    #[error("this enrolment token was issued for facility {issued_for:?}, not {claimed:?}")]
    OtherFacility { issued_for: String, claimed: String },
    #[error("this enrolment token was already used (at {0}); ask the operator for a new one")]
    Used(String),
    #[error(
        "this enrolment token was withdrawn at {0} (a newer token was issued for the facility, or it was revoked)"
    )]
    Withdrawn(String),
    #[error("this enrolment token expired at {0}; ask the operator for a new one")]
    Expired(String),
    #[error("facility {0:?} has been revoked")]
    Revoked(String),
    #[error(
        "facility {0:?} has been revoked, and revocation is permanent: register the site under a new name"
    )]
    AddRevoked(String),
    #[error(
        "facility {0:?} is already enrolled; pass --reenrol to issue a new token (its current certificates stay valid until they expire)"
    )]
    AlreadyEnrolled(String),
    #[error("no facility named {0:?} has been added or has connected")]
    UnknownFacility(String),
    #[error(transparent)]
    RateLimited(crate::identity::limit::Limited),
    #[error("certificate {0} has been revoked: it cannot be renewed")]
    CertificateRevoked(String),
    #[error(
        "this key has been revoked (with the certificate of serial {0}): generate a new key and enrol again"
    )]
    KeyRevoked(String),
    #[error("the certificate to revoke is unreadable: {0}")]
    BadCertificate(String),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error("{0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for EnrolError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::FacilityRevoked(name) => EnrolError::Revoked(name),
            StoreError::FacilityEnrolled(name) => EnrolError::AlreadyEnrolled(name),
            StoreError::UnknownFacility(name) => EnrolError::UnknownFacility(name),
            StoreError::CertificateRevoked(serial) => EnrolError::CertificateRevoked(serial),
            StoreError::KeyRevoked(key) => EnrolError::KeyRevoked(key),
            other => EnrolError::Store(other),
        }
    }
}

impl Coordinator {
    /// Lets this coordinator enrol facilities and renew certificates with the PKI in `pki`:
    /// its `ca.pem` and, if present, the issuing CA's or the CA's key. Certificates it
    /// issues are valid for `validity`. Returns whether it can sign (without a key it still
    /// serves the CA certificate, and refuses to add facilities).
    pub fn enable_issuing(
        &self,
        pki: &PkiPaths,
        validity: Duration,
    ) -> Result<bool, pki::PkiError> {
        let ca_pem =
            std::fs::read_to_string(pki.ca_cert()).map_err(|source| pki::PkiError::Io {
                action: "read",
                path: pki.ca_cert(),
                source,
            })?;
        let ca_sha256 = pki::pem_fingerprint(ca_pem.as_bytes())?;
        let signer = Signer::load(pki)?;
        let can_sign = signer.is_some();
        *self.identity.issuing.write().unwrap() = Some(Arc::new(Issuing {
            ca_pem,
            ca_sha256,
            signer,
            validity,
        }));
        Ok(can_sign)
    }

    fn issuing(&self) -> Result<Arc<Issuing>, EnrolError> {
        self.identity
            .issuing
            .read()
            .unwrap()
            .clone()
            .ok_or(EnrolError::NotEnabled)
    }

    /// Appends `action` on `subject` by `actor` to the admin-action log.
    pub async fn record_admin_action(
        &self,
        actor: &PeerIdentity,
        action: AdminActionKind,
        subject: &str,
        detail: String,
    ) -> Result<(), ServiceError> {
        let row = admin_action(actor, action, subject, detail);
        self.store
            .record_admin_action(&row)
            .await
            .map_err(ServiceError::from)?;
        Ok(())
    }

    /// Applies a revocation recorded in the database: refuses the facility from now on,
    /// closes its task stream and drops it from running rounds.
    pub async fn apply_revocation(&self, facility: &str) {
        self.identity.add_revoked([facility.to_owned()]);
        self.registry.remove(facility);
        self.broadcast_dropout(facility, "facility revoked").await;
    }

    /// Closes the task stream of every agent connected with the revoked certificate (or
    /// another one for its key) and drops it from running rounds. The access layer refuses
    /// its next calls; an agent connected with another certificate reconnects at once.
    pub async fn disconnect_revoked_certificate(&self, revoked: &RevokedCertificateRow) {
        for facility in self.registry.connected() {
            let Some(leaf) = self
                .registry
                .certificate_chain(&facility)
                .and_then(|chain| chain.into_iter().next())
            else {
                continue;
            };
            let Ok(facts) = CertFacts::of(&leaf) else {
                continue;
            };
            let same_key = !revoked.key_sha256.is_empty() && facts.key_sha256 == revoked.key_sha256;
            if facts.serial == revoked.serial || same_key {
                info!(%facility, serial = %revoked.serial, "closing the task stream of a revoked certificate");
                self.registry.remove(&facility);
                self.broadcast_dropout(&facility, "certificate revoked")
                    .await;
            }
        }
    }

    /// Refuses to serve with a server certificate that has been revoked (by serial or key).
    pub async fn check_server_certificate(&self, pki: &PkiPaths) -> anyhow::Result<()> {
        let facts = CertFacts::of_pem_file(&pki.server_cert())?;
        let revoked = self.store.revoked_certificates().await?;
        if let Some(row) = revoked.iter().find(|row| {
            row.serial == facts.serial
                || (!row.key_sha256.is_empty() && row.key_sha256 == facts.key_sha256)
        }) {
            anyhow::bail!(
                "the server certificate {} (serial {}) has been revoked{} (certificate {}, by {}): renew it with `harambee-coordinator pki renew-server --new-key` (see deploy/PKI.md)",
                pki.server_cert().display(),
                facts.serial,
                if row.serial == facts.serial {
                    ""
                } else {
                    " with its key"
                },
                row.serial,
                row.revoked_by
            );
        }
        Ok(())
    }
}

/// [`Coordinator::enable_issuing`] for `serve`: certificates valid
/// [`pki::DEFAULT_LEAF_VALIDITY_DAYS`]; logs what is possible.
pub async fn enable_from_pki(coord: &Coordinator, pki: &PkiPaths) -> anyhow::Result<()> {
    coord.check_server_certificate(pki).await?;
    let validity = Duration::from_secs(u64::from(pki::DEFAULT_LEAF_VALIDITY_DAYS) * 86_400);
    if coord.enable_issuing(pki, validity)? {
        info!(
            validity_days = pki::DEFAULT_LEAF_VALIDITY_DAYS,
            "enrolment and certificate renewal enabled"
        );
    } else {
        tracing::warn!(
            pki = %pki.dir().display(),
            "no CA or issuing CA key in the PKI directory: enrolment and renewal are unavailable (see deploy/PKI.md)"
        );
    }
    Ok(())
}

/// The `EnrolmentService` of `coord`, with the message size limits.
pub fn enrolment_service(coord: Coordinator) -> EnrolmentServiceServer<EnrolmentApi> {
    EnrolmentServiceServer::new(EnrolmentApi { coord })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The `IdentityService` of `coord`, with the message size limits.
pub fn identity_service(coord: Coordinator) -> IdentityServiceServer<IdentityApi> {
    IdentityServiceServer::new(IdentityApi { coord })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

pub struct EnrolmentApi {
    coord: Coordinator,
}

impl EnrolmentApi {
    async fn enrol(
        &self,
        request: pb::EnrolRequest,
        source: Option<IpAddr>,
    ) -> Result<pb::IssuedCertificate, EnrolError> {
        // Counted first: every attempt counts, whatever it is refused for later.
        let token = Token::parse(&request.token);
        self.coord
            .identity
            .enrol_limiter
            .lock()
            .unwrap()
            .attempt(
                token.as_ref().ok().map(|t| t.id.as_str()),
                source,
                Instant::now(),
            )
            .map_err(EnrolError::RateLimited)?;
        let token = token.map_err(EnrolError::Token)?;
        let issuing = self.coord.issuing()?;
        let row = self
            .coord
            .store
            .token(&token.id)
            .await?
            .ok_or(EnrolError::UnknownToken)?;
        if !constant_time_eq(
            row.secret_sha256.as_bytes(),
            token.secret_sha256().as_bytes(),
        ) {
            return Err(EnrolError::WrongSecret);
        }
        if row.facility != token.facility {
            return Err(EnrolError::OtherFacility {
                issued_for: row.facility,
                claimed: token.facility,
            });
        }
        let now = now_ms();
        if let Some(refusal) = row.refusal(now) {
            return Err(refused(refusal));
        }
        if self.coord.identity.is_revoked(&row.facility) {
            return Err(EnrolError::Revoked(row.facility));
        }
        let signer = issuing.signer.as_ref().ok_or(EnrolError::NoSigner)?;
        let issued = signer.sign_request(
            &request.csr_der,
            Role::Agent,
            &row.facility,
            issuing.validity,
        )?;
        if let Some(revoked) = self
            .coord
            .identity
            .certificate_revocation(&issued.serial, &issued.key_sha256)
        {
            let (Revoked::Serial(serial) | Revoked::Key(serial)) = revoked;
            return Err(EnrolError::KeyRevoked(serial));
        }
        let cert = certificate_row(&issued, Role::Agent, &row.facility, "enrol");
        // The key the facility's egress receipts will be signed with, for the ledger.
        let receipt_key = harambee_link::identity::ed25519_key_of(&issued.der).ok();
        match self
            .coord
            .store
            .use_token(&row.id, &cert, receipt_key, now)
            .await
        {
            Ok(()) => {}
            // Lost a race with another use of the token, or it expired meanwhile.
            Err(StoreError::TokenUnusable(_)) => {
                let row = self
                    .coord
                    .store
                    .token(&row.id)
                    .await?
                    .ok_or(EnrolError::UnknownToken)?;
                return Err(row
                    .refusal(now_ms())
                    .map(refused)
                    .unwrap_or(EnrolError::Used(String::new())));
            }
            Err(e) => return Err(e.into()),
        }
        info!(facility = %row.facility, sha256 = %issued.sha256, "facility enrolled");
        let mut answer = issued_pb(&issued, &issuing, &row.facility);
        answer.federations = self.invitations(&row.facility).await?;
        Ok(answer)
    }

    /// The federations that may select `facility` now, for the agent's first `[policy]`.
    async fn invitations(
        &self,
        facility: &str,
    ) -> Result<Vec<pb::FederationInvitation>, EnrolError> {
        let mut invitations = Vec::new();
        for row in self.coord.store.federations().await? {
            let Ok(spec) =
                serde_json::from_str::<crate::federation::FederationSpec>(&row.config_json)
            else {
                warn!(federation = %row.name, "stored federation unreadable; not named at enrolment");
                continue;
            };
            if spec.admits(facility) {
                invitations.push(pb::FederationInvitation {
                    name: spec.name.clone(),
                    model_kind: spec.model.kind.as_str().to_owned(),
                    label: spec.label().to_owned(),
                    names_facility: !spec.facilities.is_empty(),
                });
            }
        }
        Ok(invitations)
    }

    /// Renews the certificate `current` that `peer` connects with.
    async fn renew(
        &self,
        peer: &PeerIdentity,
        current: &CertFacts,
        request: pb::RenewCertificateRequest,
    ) -> Result<pb::IssuedCertificate, EnrolError> {
        let issuing = self.coord.issuing()?;
        if self.coord.identity.is_revoked(&peer.name) {
            return Err(EnrolError::Revoked(peer.name.clone()));
        }
        match self
            .coord
            .identity
            .certificate_revocation(&current.serial, &current.key_sha256)
        {
            Some(Revoked::Serial(serial)) => return Err(EnrolError::CertificateRevoked(serial)),
            Some(Revoked::Key(serial)) => return Err(EnrolError::KeyRevoked(serial)),
            None => {}
        }
        let signer = issuing.signer.as_ref().ok_or(EnrolError::NoSigner)?;
        let issued = signer.sign_renewal(
            &request.csr_der,
            peer.role,
            &peer.name,
            issuing.validity,
            &current.key_sha256,
        )?;
        self.coord
            .store
            .record_renewal(
                &certificate_row(&issued, peer.role, &peer.name, "renew"),
                &current.serial,
                &peer.to_string(),
            )
            .await?;
        info!(identity = %peer, sha256 = %issued.sha256, renewed = %current.serial, "certificate renewed");
        Ok(issued_pb(&issued, &issuing, &peer.name))
    }
}

#[tonic::async_trait]
impl EnrolmentService for EnrolmentApi {
    async fn get_ca_certificate(
        &self,
        _request: Request<pb::GetCaCertificateRequest>,
    ) -> Result<Response<pb::CaCertificate>, Status> {
        let issuing = self.coord.issuing().map_err(ServiceError::from)?;
        Ok(Response::new(pb::CaCertificate {
            ca_pem: issuing.ca_pem.clone(),
            sha256: issuing.ca_sha256.clone(),
            server_time_unix_ms: self.coord.clock.unix_ms(),
        }))
    }

    #[instrument(skip_all)]
    async fn enrol(
        &self,
        request: Request<pb::EnrolRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let remote = request.remote_addr();
        match self
            .enrol(request.into_inner(), remote.map(|addr| addr.ip()))
            .await
        {
            Ok(issued) => {
                self.coord.metrics.enrolment(true);
                Ok(Response::new(issued))
            }
            Err(e) => {
                self.coord.metrics.enrolment(false);
                info!(?remote, reason = %e, "enrolment refused");
                Err(ServiceError::from(e).into())
            }
        }
    }

    #[instrument(skip_all, fields(facility))]
    async fn renew_certificate(
        &self,
        request: Request<pb::RenewCertificateRequest>,
    ) -> Result<Response<pb::IssuedCertificate>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        tracing::Span::current().record("facility", peer.name.as_str());
        let leaf = request
            .peer_certs()
            .and_then(|certs| certs.first().cloned())
            .ok_or_else(|| {
                ServiceError::unauthenticated("no verified client certificate on this connection")
            })?;
        let current = CertFacts::of(&leaf).map_err(|e| {
            ServiceError::unauthenticated(format!("the client certificate is unreadable: {e}"))
        })?;
        self.renew(&peer, &current, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| ServiceError::from(e).into())
    }
}

pub struct IdentityApi {
    coord: Coordinator,
}

impl IdentityApi {
    async fn add(
        &self,
        peer: &PeerIdentity,
        request: pb::AddFacilityRequest,
    ) -> Result<pb::AddFacilityResponse, EnrolError> {
        harambee_link::identity::validate_name(&request.name)
            .map_err(|e| EnrolError::InvalidArgument(e.to_string()))?;
        if !request.coordinator.starts_with("https://") {
            return Err(EnrolError::InvalidArgument(format!(
                "the coordinator address for the token must be https://HOST:PORT, not {:?}",
                request.coordinator
            )));
        }
        let lifetime = match request.expires_s {
            0 => DEFAULT_TOKEN_LIFETIME,
            s => Duration::from_secs(s),
        };
        if lifetime > MAX_TOKEN_LIFETIME {
            return Err(EnrolError::InvalidArgument(format!(
                "a token may live at most {} days",
                MAX_TOKEN_LIFETIME.as_secs() / 86_400
            )));
        }
        let issuing = self.coord.issuing()?;
        if issuing.signer.is_none() {
            return Err(EnrolError::NoSigner);
        }
        let now = now_ms();
        let expires_ms = now.saturating_add(lifetime.as_millis() as i64);
        let server_name = Some(request.server_name.as_str()).filter(|n| !n.is_empty());
        let token = Token::generate(
            &request.coordinator,
            server_name,
            &request.name,
            &issuing.ca_sha256,
            expires_ms,
        );
        let row = TokenRow {
            id: token.id.clone(),
            facility: request.name.clone(),
            secret_sha256: token.secret_sha256(),
            created_ms: now,
            expires_ms,
            used_ms: None,
            withdrawn_ms: None,
        };
        let detail = format!(
            "token {} expires {}{}",
            token.id,
            format_time(expires_ms),
            if request.reenrol {
                ", re-enrolment"
            } else {
                ""
            }
        );
        let action = AdminActionRow {
            at_ms: now,
            ..admin_action(peer, AdminActionKind::FacilityAdded, &request.name, detail)
        };
        let facility = match self
            .coord
            .store
            .add_facility(&request.name, &row, request.reenrol, &action)
            .await
        {
            Err(StoreError::FacilityRevoked(name)) => return Err(EnrolError::AddRevoked(name)),
            other => other?,
        };
        info!(facility = %request.name, operator = %peer.name, token_id = %token.id, "facility added; enrolment token issued");
        Ok(pb::AddFacilityResponse {
            facility: Some(self.facility_pb(&facility, None)),
            token: token.text,
            token_expires_unix_ms: expires_ms,
        })
    }

    async fn revoke(
        &self,
        peer: &PeerIdentity,
        request: pb::RevokeFacilityRequest,
    ) -> Result<pb::Facility, EnrolError> {
        harambee_link::identity::validate_name(&request.name)
            .map_err(|e| EnrolError::InvalidArgument(e.to_string()))?;
        let action = admin_action(
            peer,
            AdminActionKind::FacilityRevoked,
            &request.name,
            request.reason.clone(),
        );
        let facility = self
            .coord
            .store
            .revoke_facility(&request.name, &request.reason, &action)
            .await?;
        self.coord.apply_revocation(&request.name).await;
        info!(facility = %request.name, operator = %peer.name, reason = %request.reason, "facility revoked");
        let expiry = self
            .coord
            .store
            .latest_certificate_expiry(Role::Agent.as_str())
            .await?;
        Ok(self.facility_pb(&facility, expiry.get(&facility.name).copied()))
    }

    async fn revoke_certificate(
        &self,
        peer: &PeerIdentity,
        request: pb::RevokeCertificateRequest,
    ) -> Result<pb::RevokedCertificate, EnrolError> {
        let given = match request.serial.trim() {
            "" => None,
            text => Some(
                pki::parse_serial(text).map_err(|e| EnrolError::InvalidArgument(e.to_string()))?,
            ),
        };
        let facts = match request.certificate_pem.trim() {
            "" => None,
            pem => {
                let der = <rustls::pki_types::CertificateDer as rustls::pki_types::pem::PemObject>::from_pem_slice(
                    pem.as_bytes(),
                )
                    .map_err(|e| EnrolError::BadCertificate(e.to_string()))?;
                Some(CertFacts::of(&der).map_err(|e| EnrolError::BadCertificate(e.to_string()))?)
            }
        };
        let serial = match (&given, &facts) {
            (None, None) => {
                return Err(EnrolError::InvalidArgument(
                    "name the certificate to revoke: its serial number, or the certificate itself"
                        .to_owned(),
                ));
            }
            (Some(given), Some(facts)) if *given != facts.serial => {
                return Err(EnrolError::InvalidArgument(format!(
                    "serial {given} is not the serial of the certificate given ({})",
                    facts.serial
                )));
            }
            (Some(serial), _) => serial.clone(),
            (None, Some(facts)) => facts.serial.clone(),
        };
        let now = now_ms();
        let row = RevokedCertificateRow {
            serial,
            identity: facts
                .as_ref()
                .map(|f| f.identity.clone())
                .unwrap_or_default(),
            key_sha256: facts
                .as_ref()
                .map(|f| f.key_sha256.clone())
                .unwrap_or_default(),
            revoked_ms: now,
            revoked_by: peer.to_string(),
            reason: request.reason.clone(),
        };
        let action = AdminActionRow {
            at_ms: now,
            ..admin_action(
                peer,
                AdminActionKind::CertificateRevoked,
                &row.serial,
                request.reason,
            )
        };
        let revoked = self.coord.store.revoke_certificate(&row, &action).await?;
        self.coord
            .identity
            .add_revoked_certificates([revoked.clone()]);
        self.coord.disconnect_revoked_certificate(&revoked).await;
        info!(serial = %revoked.serial, identity = %revoked.identity, operator = %peer.name, reason = %revoked.reason, "certificate revoked");
        Ok(pb::RevokedCertificate {
            serial: revoked.serial,
            identity: revoked.identity,
            key_sha256: revoked.key_sha256,
            revoked_unix_ms: revoked.revoked_ms,
            revoked_by: revoked.revoked_by,
            reason: revoked.reason,
        })
    }

    fn facility_pb(&self, row: &FacilityRow, cert_not_after_ms: Option<i64>) -> pb::Facility {
        pb::Facility {
            name: row.name.clone(),
            status: row.status.as_str().to_owned(),
            created_unix_ms: row.created_ms,
            created_by: row.created_by.clone(),
            enrolled_unix_ms: row.enrolled_ms.unwrap_or(0),
            revoked_unix_ms: row.revoked_ms.unwrap_or(0),
            revoked_by: row.revoked_by.clone().unwrap_or_default(),
            revoked_reason: row.revoked_reason.clone().unwrap_or_default(),
            cert_not_after_unix_ms: cert_not_after_ms.unwrap_or(0),
            connected: self.coord.registry.is_connected(&row.name),
        }
    }
}

#[tonic::async_trait]
impl IdentityService for IdentityApi {
    #[instrument(skip_all, fields(operator))]
    async fn add_facility(
        &self,
        request: Request<pb::AddFacilityRequest>,
    ) -> Result<Response<pb::AddFacilityResponse>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        tracing::Span::current().record("operator", peer.name.as_str());
        self.add(&peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| ServiceError::from(e).into())
    }

    #[instrument(skip_all, fields(operator))]
    async fn revoke_facility(
        &self,
        request: Request<pb::RevokeFacilityRequest>,
    ) -> Result<Response<pb::Facility>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        tracing::Span::current().record("operator", peer.name.as_str());
        self.revoke(&peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| ServiceError::from(e).into())
    }

    #[instrument(skip_all, fields(operator))]
    async fn revoke_certificate(
        &self,
        request: Request<pb::RevokeCertificateRequest>,
    ) -> Result<Response<pb::RevokedCertificate>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        tracing::Span::current().record("operator", peer.name.as_str());
        self.revoke_certificate(&peer, request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| ServiceError::from(e).into())
    }

    async fn list_facilities(
        &self,
        request: Request<pb::ListFacilitiesRequest>,
    ) -> Result<Response<pb::ListFacilitiesResponse>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        let rows = self
            .coord
            .store
            .facilities()
            .await
            .map_err(ServiceError::from)?;
        let expiry = self
            .coord
            .store
            .latest_certificate_expiry(Role::Agent.as_str())
            .await
            .map_err(ServiceError::from)?;
        let facilities = rows
            .iter()
            .map(|row| self.facility_pb(row, expiry.get(&row.name).copied()))
            .collect();
        Ok(Response::new(pb::ListFacilitiesResponse { facilities }))
    }

    async fn list_admin_actions(
        &self,
        request: Request<pb::ListAdminActionsRequest>,
    ) -> Result<Response<pb::ListAdminActionsResponse>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        let request = request.into_inner();
        let limit = match request.limit {
            0 => 1000,
            n => n.min(MAX_ACTIONS_PER_CALL),
        };
        let rows = self
            .coord
            .store
            .admin_actions(request.after_id, u64::from(limit))
            .await
            .map_err(ServiceError::from)?;
        let actions = rows
            .into_iter()
            .map(|a| pb::AdminAction {
                id: a.id,
                at_unix_ms: a.at_ms,
                actor: a.actor,
                actor_cert_sha256: a.actor_cert_sha256,
                action: a.action.as_str().to_owned(),
                subject: a.subject,
                detail: a.detail,
            })
            .collect();
        Ok(Response::new(pb::ListAdminActionsResponse { actions }))
    }
}

fn admin_action(
    actor: &PeerIdentity,
    action: AdminActionKind,
    subject: &str,
    detail: String,
) -> AdminActionRow {
    AdminActionRow {
        id: 0,
        at_ms: now_ms(),
        actor: actor.to_string(),
        actor_cert_sha256: actor.cert_sha256.clone(),
        action,
        subject: subject.to_owned(),
        detail,
    }
}

fn refused(refusal: TokenRefusal) -> EnrolError {
    match refusal {
        TokenRefusal::Used(at) => EnrolError::Used(format_time(at)),
        TokenRefusal::Withdrawn(at) => EnrolError::Withdrawn(format_time(at)),
        TokenRefusal::Expired(at) => EnrolError::Expired(format_time(at)),
    }
}

fn certificate_row(issued: &IssuedCert, role: Role, name: &str, via: &str) -> CertificateRow {
    CertificateRow {
        serial: issued.serial.clone(),
        sha256: issued.sha256.clone(),
        role: role.as_str().to_owned(),
        name: name.to_owned(),
        not_before_ms: issued.not_before.unix_timestamp() * 1000,
        not_after_ms: issued.not_after.unix_timestamp() * 1000,
        issued_ms: now_ms(),
        via: via.to_owned(),
        key_sha256: Some(issued.key_sha256.clone()),
    }
}

fn issued_pb(issued: &IssuedCert, issuing: &Issuing, facility: &str) -> pb::IssuedCertificate {
    pb::IssuedCertificate {
        certificate_pem: issued.chain_pem.clone(),
        ca_pem: issuing.ca_pem.clone(),
        sha256: issued.sha256.clone(),
        not_after_unix_ms: issued.not_after.unix_timestamp() * 1000,
        facility: facility.to_owned(),
        federations: Vec::new(),
    }
}

/// Compares without an early exit, so timing does not tell how much of a hash matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`, for messages.
pub fn format_time(unix_ms: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix_ms.div_euclid(1000)) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("{unix_ms} ms after the Unix epoch"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_well() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14 22:13:20 UTC");
    }

    #[test]
    fn hashes_compare_in_full() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
