//! `AdminService`: what a national unit's operator does.

use harambee_proto::pb::{self, admin_service_server::AdminService, export_model_response::Part};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};
use tracing::{info, instrument};

use super::{BoxStream, blob_chunks};
use crate::federation::FederationSpec;
use crate::round::driver::RoundInput;
use crate::service::caller::{require_any_role, require_role};
use crate::service::error::ServiceError;
use crate::state::{Coordinator, now_ms};
use crate::store::AdminActionKind;
use crate::store::{FederationRow, ModelVersionRow};
use crate::wire;
use harambee_link::identity::Role;

pub struct AdminApi {
    coord: Coordinator,
}

impl AdminApi {
    pub fn new(coord: Coordinator) -> AdminApi {
        AdminApi { coord }
    }

    async fn spec(&self, federation: &str) -> Result<FederationSpec, ServiceError> {
        let row = self
            .coord
            .store
            .federation(federation)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| {
                ServiceError::not_found(format!("no federation named {federation:?}"))
            })?;
        serde_json::from_str(&row.config_json).map_err(|e| {
            ServiceError::Internal(format!(
                "stored federation {federation:?} is unreadable: {e}"
            ))
        })
    }

    async fn federation_pb(&self, row: &FederationRow) -> Result<pb::Federation, ServiceError> {
        let spec: FederationSpec = serde_json::from_str(&row.config_json).map_err(|e| {
            ServiceError::Internal(format!(
                "stored federation {:?} is unreadable: {e}",
                row.name
            ))
        })?;
        let latest = self
            .coord
            .store
            .latest_model(&row.name)
            .await
            .map_err(ServiceError::from)?;
        let n_params = latest.as_ref().map_or(0, |m| m.n_params as usize);
        Ok(pb::Federation {
            config: Some(wire::federation_config(&spec, n_params)),
            latest: latest.as_ref().map(wire::model_ref),
            created_unix_ms: row.created_ms,
        })
    }

    /// Parameters to start a federation from, checked against its model and schema.
    async fn initial_params(
        &self,
        spec: &FederationSpec,
        source: pb::model_source::Source,
    ) -> Result<Vec<f32>, ServiceError> {
        let model = spec.model_spec();
        match source {
            pb::model_source::Source::FederationVersion(from) => {
                let other = self.spec(&from.federation).await?;
                if other.model_spec() != model || other.schema != spec.schema {
                    return Err(ServiceError::invalid_argument(format!(
                        "federation {:?} has another model or feature schema; cannot start from it",
                        from.federation
                    )));
                }
                let row = self
                    .coord
                    .store
                    .model_version(&from.federation, from.version)
                    .await
                    .map_err(ServiceError::from)?
                    .ok_or_else(|| {
                        ServiceError::not_found(format!(
                            "federation {:?} has no version {}",
                            from.federation, from.version
                        ))
                    })?;
                let bytes = self
                    .coord
                    .blobs
                    .get(&row.digest)
                    .await
                    .map_err(ServiceError::from)?;
                harambee_core::params::from_le_bytes(&bytes)
                    .map_err(|e| ServiceError::Internal(e.to_string()))
            }
            pb::model_source::Source::Checkpoint(bytes) => {
                let checkpoint = harambee_models::checkpoint::load(&bytes).map_err(|e| {
                    ServiceError::invalid_argument(format!("unreadable checkpoint: {e}"))
                })?;
                checkpoint
                    .expect_spec(&model)
                    .map_err(|e| ServiceError::invalid_argument(e.to_string()))?;
                if checkpoint.schema != spec.schema {
                    return Err(ServiceError::invalid_argument(
                        "the checkpoint's feature schema differs from the federation's",
                    ));
                }
                if let Some(i) = checkpoint.params.iter().position(|v| !v.is_finite()) {
                    return Err(ServiceError::invalid_argument(format!(
                        "checkpoint parameter {i} is not finite"
                    )));
                }
                Ok(checkpoint.params)
            }
        }
    }

    /// A running round's participants as its driver sees them now; `None` when it is not
    /// running (or ended meanwhile): the stored ones are then final.
    async fn live_round(&self, round_id: u64) -> Option<crate::round::driver::LiveRound> {
        let round = self.coord.active_round_by_id(round_id)?;
        let (reply, answer) = tokio::sync::oneshot::channel();
        round
            .inputs
            .send(RoundInput::Participants { reply })
            .await
            .ok()?;
        tokio::time::timeout(std::time::Duration::from_secs(2), answer)
            .await
            .ok()?
            .ok()
    }

    async fn round_pb(&self, round_id: u64) -> Result<pb::Round, ServiceError> {
        let store = &self.coord.store;
        let row = store
            .round(round_id)
            .await
            .map_err(ServiceError::from)?
            .ok_or_else(|| ServiceError::not_found(format!("no round with id {round_id}")))?;
        let live = self.live_round(round_id).await;
        let (participants, not_selected) = match live {
            Some(live) => (live.participants, live.not_selected),
            None => (
                store
                    .participants(round_id)
                    .await
                    .map_err(ServiceError::from)?,
                Default::default(),
            ),
        };
        let base = store
            .model_version(&row.federation, row.base_version)
            .await
            .map_err(ServiceError::from)?;
        let result = match row.result_version {
            Some(v) => store
                .model_version(&row.federation, v)
                .await
                .map_err(ServiceError::from)?,
            None => None,
        };
        let spec = self.spec(&row.federation).await?;
        let mut round = wire::round(
            &row,
            &participants,
            base.as_ref(),
            result.as_ref(),
            spec.secure_aggregation.enabled,
        );
        if spec.privacy.mechanism != crate::federation::Mechanism::None {
            let ledger = self
                .coord
                .ledger
                .synced(store)
                .await
                .map_err(ServiceError::from)?;
            round.facility_epsilon =
                crate::round::eligibility::facility_epsilon(&spec, ledger.lines(), row.id);
        }
        round.stages = store
            .round_stages(round_id)
            .await
            .map_err(ServiceError::from)?
            .iter()
            .map(wire::round_stage)
            .collect();
        round.not_selected = not_selected
            .into_iter()
            .map(|(facility, reason)| pb::NotSelected {
                facility: facility.to_string(),
                reason,
            })
            .collect();
        Ok(round)
    }
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type ExportModelStream = BoxStream<pb::ExportModelResponse>;

    #[instrument(skip_all, fields(operator))]
    async fn create_federation(
        &self,
        request: Request<pb::CreateFederationRequest>,
    ) -> Result<Response<pb::Federation>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        tracing::Span::current().record("operator", peer.name.as_str());
        let request = request.into_inner();
        let config = request
            .config
            .ok_or_else(|| ServiceError::invalid_argument("no federation config"))?;
        let spec = wire::federation_spec(config)?;
        spec.validate()
            .map_err(|e| ServiceError::invalid_argument(e.to_string()))?;
        let model = spec.model_spec();
        let init = match request.init_from.and_then(|s| s.source) {
            None => model.init_params(spec.init_seed),
            Some(source) => self.initial_params(&spec, source).await?,
        };
        let bytes = harambee_core::params::to_le_bytes(&init);
        let digest = self
            .coord
            .blobs
            .put(&bytes)
            .await
            .map_err(ServiceError::from)?;
        let now = now_ms();
        let row = FederationRow {
            name: spec.name.clone(),
            config_json: serde_json::to_string(&spec).expect("spec serializes"),
            created_ms: now,
        };
        let initial = ModelVersionRow {
            federation: spec.name.clone(),
            version: 0,
            digest,
            size_bytes: bytes.len() as u64,
            n_params: init.len() as u64,
            round_id: None,
            created_ms: now,
            server_state: None,
        };
        self.coord
            .store
            .create_federation(&row, &initial)
            .await
            .map_err(ServiceError::from)?;
        info!(federation = %spec.name, n_params = init.len(), "federation created");
        self.coord
            .record_admin_action(
                &peer,
                AdminActionKind::FederationCreated,
                &spec.name,
                format!("{} parameters", init.len()),
            )
            .await?;
        Ok(Response::new(self.federation_pb(&row).await?))
    }

    async fn list_federations(
        &self,
        request: Request<pb::ListFederationsRequest>,
    ) -> Result<Response<pb::ListFederationsResponse>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        let rows = self
            .coord
            .store
            .federations()
            .await
            .map_err(ServiceError::from)?;
        let mut federations = Vec::with_capacity(rows.len());
        for row in &rows {
            federations.push(self.federation_pb(row).await?);
        }
        Ok(Response::new(pb::ListFederationsResponse { federations }))
    }

    #[instrument(skip_all, fields(operator, federation))]
    async fn start_round(
        &self,
        request: Request<pb::StartRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        let federation = request.into_inner().federation;
        tracing::Span::current()
            .record("operator", peer.name.as_str())
            .record("federation", federation.as_str());
        let row = crate::round::start::start(&self.coord.round_context(), &federation)
            .await
            .map_err(ServiceError::from)?;
        let round_id = row.id;
        info!(round_id, "round started");
        self.coord
            .record_admin_action(
                &peer,
                AdminActionKind::RoundStarted,
                &federation,
                format!("round {round_id}"),
            )
            .await?;
        Ok(Response::new(self.round_pb(round_id).await?))
    }

    #[instrument(skip_all, fields(operator, round_id))]
    async fn cancel_round(
        &self,
        request: Request<pb::CancelRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("operator", peer.name.as_str())
            .record("round_id", req.round_id);
        let round = self.coord.active_round_by_id(req.round_id).ok_or_else(|| {
            ServiceError::failed_precondition(format!("round {} is not running", req.round_id))
        })?;
        let said: String = req.reason.chars().take(500).collect();
        let reason = if said.trim().is_empty() {
            format!("cancelled by operator {}", peer.name)
        } else {
            format!("cancelled by operator {}: {}", peer.name, said.trim())
        };
        let (reply, done) = oneshot::channel();
        let gone = || ServiceError::failed_precondition(format!("round {} ended", req.round_id));
        round
            .inputs
            .send(RoundInput::Cancel { reason, reply })
            .await
            .map_err(|_| gone())?;
        done.await.map_err(|_| gone())?;
        info!("round cancelled");
        self.coord
            .record_admin_action(
                &peer,
                AdminActionKind::RoundCancelled,
                &round.federation,
                format!("round {}: {said}", req.round_id),
            )
            .await?;
        // The driver records the failure, then leaves the running rounds (a few seconds at
        // most, unless its storage is failing: the round is then answered as it stands).
        for _ in 0..500 {
            if self.coord.active_round_by_id(req.round_id).is_none() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(Response::new(self.round_pb(req.round_id).await?))
    }

    async fn get_round(
        &self,
        request: Request<pb::GetRoundRequest>,
    ) -> Result<Response<pb::Round>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        Ok(Response::new(
            self.round_pb(request.into_inner().round_id).await?,
        ))
    }

    async fn list_rounds(
        &self,
        request: Request<pb::ListRoundsRequest>,
    ) -> Result<Response<pb::ListRoundsResponse>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        let federation = request.into_inner().federation;
        self.spec(&federation).await?;
        let rows = self
            .coord
            .store
            .rounds(&federation)
            .await
            .map_err(ServiceError::from)?;
        let mut rounds = Vec::with_capacity(rows.len());
        for row in rows {
            rounds.push(self.round_pb(row.id).await?);
        }
        Ok(Response::new(pb::ListRoundsResponse { rounds }))
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        require_any_role(&request, &[Role::Operator, Role::Auditor])?;
        let rows = self
            .coord
            .store
            .agents()
            .await
            .map_err(ServiceError::from)?;
        let (now, now_ms) = (self.coord.clock.now(), self.coord.clock.unix_ms());
        let agents = rows
            .into_iter()
            .map(|a| {
                let privacy = self.coord.registry.privacy(&a.facility);
                let connected = self.coord.registry.is_connected(&a.facility);
                // While connected, last seen is its last heartbeat; the stored time is when
                // it last connected.
                let last_seen_ms = match self.coord.registry.last_heartbeat(&a.facility) {
                    Some(beat) if connected => {
                        let quiet = now.saturating_duration_since(beat).as_millis();
                        now_ms.saturating_sub(i64::try_from(quiet).unwrap_or(i64::MAX))
                    }
                    _ => a.last_seen_ms,
                };
                // The certificate it connected with, while connected.
                let cert_not_after_unix_ms = self
                    .coord
                    .registry
                    .certificate_chain(&a.facility)
                    .filter(|_| connected)
                    .and_then(|chain| {
                        let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
                        Some(cert.validity().not_after.timestamp().saturating_mul(1000))
                    })
                    .unwrap_or(0);
                let agent_version = self
                    .coord
                    .registry
                    .version(&a.facility)
                    .filter(|_| connected)
                    .unwrap_or_default();
                pb::Agent {
                    agent_version,
                    cert_not_after_unix_ms,
                    connected,
                    epsilon_spent: privacy.as_ref().map(|p| p.epsilon_spent),
                    max_epsilon: privacy.as_ref().and_then(|p| p.max_epsilon),
                    delta: privacy.as_ref().map(|p| p.delta),
                    facility: a.facility,
                    last_seen_unix_ms: last_seen_ms,
                    cert_sha256: a.cert_sha256,
                }
            })
            .collect();
        Ok(Response::new(pb::ListAgentsResponse { agents }))
    }

    #[instrument(skip_all, fields(operator, federation))]
    async fn export_model(
        &self,
        request: Request<pb::ExportModelRequest>,
    ) -> Result<Response<Self::ExportModelStream>, Status> {
        let peer = require_role(&request, Role::Operator)?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("operator", peer.name.as_str())
            .record("federation", req.federation.as_str());
        let spec = self.spec(&req.federation).await?;
        let store = &self.coord.store;
        let version = match req.version {
            Some(v) => store.model_version(&req.federation, v).await,
            None => store.latest_model(&req.federation).await,
        }
        .map_err(ServiceError::from)?
        .ok_or_else(|| {
            ServiceError::not_found(format!(
                "federation {:?} has no such model version",
                req.federation
            ))
        })?;
        let digest: harambee_privacy::ledger::Sha256Digest =
            version.digest.parse().map_err(|_| {
                ServiceError::Internal("stored model digest is not SHA-256 hex".to_owned())
            })?;
        let round = match version.round_id {
            Some(id) => Some(self.round_pb(id).await?),
            None => None,
        };
        let card = {
            let ledger = self
                .coord
                .ledger
                .synced(store)
                .await
                .map_err(ServiceError::from)?;
            let head = self.coord.ledger.sign(&ledger, now_ms());
            let commit =
                crate::card::commit_index(ledger.lines(), &req.federation, version.version);
            let inclusion_proof = match commit {
                Some(index) => ledger
                    .inclusion_proof(index, head.head.tree_size)
                    .map_err(ServiceError::from)?,
                None => Vec::new(),
            };
            crate::card::model_card(
                &spec,
                &version,
                digest,
                crate::card::CardInputs {
                    round: round.as_ref(),
                    lines: ledger.lines(),
                    head,
                    ledger_key_hex: hex::encode(self.coord.ledger.verifying_key().to_bytes()),
                    inclusion_proof,
                },
            )
        };
        let card_json = card.to_canonical_json().map_err(ServiceError::from)?;
        let card_sha256 = harambee_privacy::ledger::Sha256Digest::of(card_json.as_bytes());
        info!(version = version.version, "model exported");
        self.coord
            .record_admin_action(
                &peer,
                AdminActionKind::ModelExported,
                &req.federation,
                format!("version {}", version.version),
            )
            .await?;
        let exported = harambee_privacy::ledger::LedgerEvent::ModelExported {
            federation: req.federation.clone(),
            model_version: u64::from(version.version),
            model_sha256: digest,
            actor: format!("harambee://{}/{}", peer.role.as_str(), peer.name),
            model_card_sha256: Some(card_sha256),
        };
        self.coord
            .store
            .append_ledger(now_ms(), vec![exported])
            .await
            .map_err(ServiceError::from)?;
        let meta = pb::ExportModelResponse {
            part: Some(Part::Meta(pb::ModelVersion {
                federation: req.federation.clone(),
                version: version.version,
                model: Some(wire::model_ref(&version)),
                spec: Some(wire::model_spec(&spec, version.n_params as usize)),
                round_id: version.round_id.unwrap_or(0),
                model_card: card_json,
            })),
        };
        use futures::StreamExt;
        let chunks = blob_chunks(
            self.coord.clone(),
            version.digest.clone(),
            0,
            version.size_bytes,
        )
        .map(|c| {
            c.map(|c| pb::ExportModelResponse {
                part: Some(Part::Chunk(c)),
            })
        });
        Ok(Response::new(Box::pin(
            futures::stream::once(async { Ok(meta) }).chain(chunks),
        )))
    }
}
