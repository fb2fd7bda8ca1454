//! `AgentService`: task streams, liveness, model download, update upload, metrics.

use futures::StreamExt;
use harambee_core::{FacilityId, UpdateError};
use harambee_proto::pb::{self, agent_service_server::AgentService, upload_update_request::Part};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};

use super::{BoxStream, blob_chunks};
use crate::round::driver::RoundInput;
use crate::round::registry::HeartbeatRefusal;
use crate::service::caller::require_role;
use crate::service::error::ServiceError;
use crate::state::{Coordinator, now_ms};
use crate::store::ledger_view;
use crate::wire;
use ed25519_dalek::VerifyingKey;
use harambee_link::identity::Role;
use harambee_privacy::ledger::SignedReceipt;

pub struct AgentApi {
    coord: Coordinator,
}

impl AgentApi {
    pub fn new(coord: Coordinator) -> AgentApi {
        AgentApi { coord }
    }
}

#[tonic::async_trait]
impl AgentService for AgentApi {
    type OpenTaskStreamStream = BoxStream<pb::Task>;
    type DownloadModelStream = BoxStream<pb::Chunk>;

    #[instrument(skip_all, fields(facility))]
    async fn open_task_stream(
        &self,
        request: Request<pb::OpenTaskStreamRequest>,
    ) -> Result<Response<Self::OpenTaskStreamStream>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        tracing::Span::current().record("facility", peer.name.as_str());
        self.coord
            .store
            .record_agent_seen(&peer.name, &peer.cert_sha256, now_ms())
            .await
            .map_err(ServiceError::from)?;
        let chain = peer_chain(&request);
        self.record_key(&peer.name, &chain).await?;
        let instance = request.get_ref().instance.clone();
        let (conn_id, rx) = self
            .coord
            .registry
            .connect(
                &peer.name,
                &instance,
                chain,
                self.coord.clock.now(),
                self.coord.settings.liveness_timeout,
            )
            .map_err(|c| {
                warn!(%instance, holder = %c.holder, "a second agent process with this identity was refused");
                ServiceError::already_exists(format!(
                    "another agent process of facility {} (instance {}) is connected and heartbeated {:.1} s ago: one process per identity; stop the other one (a cloned machine, or a service and a manual run?). Until it stops, this one is refused",
                    peer.name,
                    c.holder,
                    c.quiet.as_secs_f64()
                ))
            })?;
        info!(agent_version = %request.get_ref().agent_version, %instance, "task stream opened");
        self.coord
            .registry
            .set_version(&peer.name, conn_id, &request.get_ref().agent_version);
        self.coord.broadcast_connected(&peer.name).await;
        // When the agent goes away, tonic drops this stream and the guard with it.
        let guard = StreamGuard {
            coord: self.coord.clone(),
            facility: peer.name.clone(),
            conn_id,
        };
        let stream = ReceiverStream::new(rx)
            .chain(futures::stream::once(async {
                Err(
                    ServiceError::unavailable("task stream replaced or coordinator shutting down")
                        .into(),
                )
            }))
            .map(move |item| {
                let _ = &guard;
                item
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        if let Some(status) = request.get_ref().privacy.clone() {
            check_privacy_status(&status)?;
            self.coord.registry.set_privacy(&peer.name, status);
        }
        let instance = &request.get_ref().instance;
        let notice = self
            .coord
            .registry
            .heartbeat(&peer.name, instance, self.coord.clock.now())
            .map_err(|refusal| match refusal {
                HeartbeatRefusal::NoStream => ServiceError::failed_precondition(
                    "no open task stream for this facility; open one first",
                ),
                HeartbeatRefusal::OtherInstance(holder) => ServiceError::already_exists(format!(
                    "another agent process of this facility (instance {holder}) holds its task stream"
                )),
            })?;
        Ok(Response::new(pb::HeartbeatResponse {
            server_time_unix_ms: now_ms(),
            interval_ms: self.coord.settings.heartbeat_interval.as_millis() as u32,
            notice: notice.unwrap_or_default(),
        }))
    }

    #[instrument(skip_all, fields(facility))]
    async fn download_model(
        &self,
        request: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        tracing::Span::current().record("facility", peer.name.as_str());
        let req = request.into_inner();
        if !self.coord.is_entitled(&peer.name, &req.digest) {
            return Err(ServiceError::permission_denied(format!(
                "model {} was not offered to this facility",
                req.digest
            ))
            .into());
        }
        let total = self
            .coord
            .blobs
            .size(&req.digest)
            .await
            .map_err(ServiceError::from)?;
        if req.offset > total {
            return Err(ServiceError::out_of_range(format!(
                "offset {} is past the model's {total} bytes",
                req.offset
            ))
            .into());
        }
        Ok(Response::new(blob_chunks(
            self.coord.clone(),
            req.digest,
            req.offset,
            total,
        )))
    }

    #[instrument(skip_all, fields(facility, round_id))]
    async fn upload_update(
        &self,
        request: Request<Streaming<pb::UploadUpdateRequest>>,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        let peer_chain = peer_chain(&request);
        let span = tracing::Span::current();
        span.record("facility", peer.name.as_str());
        let mut parts = request.into_inner();
        let header = match parts.message().await?.and_then(|m| m.part) {
            Some(Part::Header(h)) => h,
            _ => {
                return Err(
                    ServiceError::invalid_argument("an upload starts with its header").into(),
                );
            }
        };
        span.record("round_id", header.round_id);
        let Some(round) = self.coord.active_round_by_id(header.round_id) else {
            // A retry whose first attempt was accepted, but whose answer was lost, may
            // arrive after the round ended: the ledger holds it, and the answer is OK.
            return self.repeated_upload(&peer.name, &header, parts).await;
        };
        let receipt_key = peer_receipt_key(&peer_chain)?;
        if header.masked {
            return self
                .receive_masked(&peer.name, &receipt_key, header, parts, round)
                .await;
        }
        if header.n_params != round.n_params as u64 {
            let error = UpdateError::WrongLength {
                expected: round.n_params,
                got: header.n_params as usize,
            };
            let (reply, answer) = oneshot::channel();
            let input = RoundInput::Reject {
                agent: peer.name.as_str().into(),
                error,
                reply,
            };
            round.inputs.send(input).await.map_err(|_| round_gone())?;
            return Err(ServiceError::from(answer.await.map_err(|_| round_gone())?).into());
        }
        let expected_bytes = round.n_params * 4;
        // Held until the round has taken the values (this call returns).
        let _budget = self.coord.reserve_upload(expected_bytes).await;
        // Decoded as the chunks arrive: no copy of the raw bytes is kept.
        let mut values = F32Decoder::with_capacity(round.n_params);
        let mut hasher = Sha256::new();
        while let Some(message) = parts.message().await? {
            let Some(Part::Data(data)) = message.part else {
                return Err(ServiceError::invalid_argument(
                    "only data chunks may follow the header",
                )
                .into());
            };
            if data.len() > harambee_proto::CHUNK_BYTES {
                return Err(ServiceError::invalid_argument(format!(
                    "chunk of {} bytes exceeds {}",
                    data.len(),
                    harambee_proto::CHUNK_BYTES
                ))
                .into());
            }
            if values.bytes() + data.len() > expected_bytes {
                return Err(ServiceError::invalid_argument(format!(
                    "update exceeds the model's {expected_bytes} bytes"
                ))
                .into());
            }
            hasher.update(&data);
            values.push(&data);
            // An upload that progresses is a facility alive, whatever its heartbeats do
            // behind it on a slow link.
            self.coord
                .registry
                .progress(&peer.name, self.coord.clock.now());
        }
        if values.bytes() != expected_bytes {
            return Err(ServiceError::invalid_argument(format!(
                "update ended after {} of {expected_bytes} bytes",
                values.bytes()
            ))
            .into());
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(&header.sha256) {
            return Err(
                ServiceError::data_loss("update checksum mismatch; upload it again").into(),
            );
        }
        let receipt = check_receipt(
            &peer.name,
            &receipt_key,
            &header,
            &round,
            &digest,
            expected_bytes,
        )?;
        let values = values.finish();
        let (reply, answer) = oneshot::channel();
        let input = RoundInput::Update {
            agent: peer.name.as_str().into(),
            n_samples: header.n_samples,
            digest,
            values,
            receipt,
            reply,
        };
        round.inputs.send(input).await.map_err(|_| round_gone())?;
        answer
            .await
            .map_err(|_| round_gone())?
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::UploadUpdateResponse {}))
    }

    async fn report_metrics(
        &self,
        request: Request<pb::ReportMetricsRequest>,
    ) -> Result<Response<pb::ReportMetricsResponse>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        let req = request.into_inner();
        let metrics = match (req.withheld, req.metrics) {
            (true, None) => None,
            (false, Some(m)) => Some(wire::metrics_from_pb(m)?),
            (true, Some(_)) => {
                return Err(
                    ServiceError::invalid_argument("withheld metrics must not be sent").into(),
                );
            }
            (false, None) => return Err(ServiceError::invalid_argument("no metrics").into()),
        };
        let round = self.coord.active_round_by_id(req.round_id).ok_or_else(|| {
            ServiceError::failed_precondition(format!("round {} is not running", req.round_id))
        })?;
        let (reply, answer) = oneshot::channel();
        round
            .inputs
            .send(RoundInput::Metrics {
                agent: peer.name.into(),
                metrics,
                reply,
            })
            .await
            .map_err(|_| round_gone())?;
        answer
            .await
            .map_err(|_| round_gone())?
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::ReportMetricsResponse {}))
    }

    #[instrument(skip_all, fields(facility, round_id))]
    async fn submit_sec_agg(
        &self,
        request: Request<pb::SecAggSubmission>,
    ) -> Result<Response<pb::SecAggAck>, Status> {
        use harambee_core::round::SecAggIn;
        use harambee_secagg::{
            ConsistencySignature, EncryptedShare, Message, SignedAdvertisement, UnmaskShares,
        };
        use pb::sec_agg_submission::Part;
        let peer = require_role(&request, Role::Agent)?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("facility", peer.name.as_str())
            .record("round_id", req.round_id);
        let round = self.coord.active_round_by_id(req.round_id).ok_or_else(|| {
            ServiceError::failed_precondition(format!("round {} is not running", req.round_id))
        })?;
        let malformed = |e: harambee_secagg::DecodeError| {
            ServiceError::invalid_argument(format!("malformed secure-aggregation message: {e}"))
        };
        let (reply, answer) = oneshot::channel();
        let agent = FacilityId::from(peer.name.as_str());
        let input = match req
            .part
            .ok_or_else(|| ServiceError::invalid_argument("empty secure-aggregation submission"))?
        {
            Part::Trained(t) => RoundInput::Trained {
                agent,
                n_samples: t.n_samples,
                reply,
            },
            Part::Advertise(b) => RoundInput::SecAgg {
                agent,
                msg: SecAggIn::Advertise(SignedAdvertisement::decode(&b).map_err(malformed)?),
                known_tree_size: req.known_tree_size,
                reply,
            },
            Part::Shares(s) => {
                let shares = s
                    .shares
                    .iter()
                    .map(|b| EncryptedShare::decode(b))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(malformed)?;
                RoundInput::SecAgg {
                    agent,
                    msg: SecAggIn::Shares(shares),
                    known_tree_size: 0,
                    reply,
                }
            }
            Part::ConsistencySignature(b) => RoundInput::SecAgg {
                agent,
                msg: SecAggIn::Signature(ConsistencySignature::decode(&b).map_err(malformed)?),
                known_tree_size: 0,
                reply,
            },
            Part::Unmask(b) => RoundInput::SecAgg {
                agent,
                msg: SecAggIn::Unmask(UnmaskShares::decode(&b).map_err(malformed)?),
                known_tree_size: 0,
                reply,
            },
        };
        round.inputs.send(input).await.map_err(|_| round_gone())?;
        answer
            .await
            .map_err(|_| round_gone())?
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::SecAggAck {}))
    }

    #[instrument(skip_all, fields(facility, round_id))]
    async fn decline_task(
        &self,
        request: Request<pb::DeclineTaskRequest>,
    ) -> Result<Response<pb::DeclineTaskResponse>, Status> {
        let peer = require_role(&request, Role::Agent)?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("facility", peer.name.as_str())
            .record("round_id", req.round_id);
        let reason: String = req.reason.chars().take(500).collect();
        info!(%reason, "facility declined its task");
        let round = self.coord.active_round_by_id(req.round_id).ok_or_else(|| {
            ServiceError::failed_precondition(format!("round {} is not running", req.round_id))
        })?;
        let input = RoundInput::Dropout {
            agent: peer.name.into(),
            reason: format!("declined: {reason}"),
        };
        round.inputs.send(input).await.map_err(|_| round_gone())?;
        Ok(Response::new(pb::DeclineTaskResponse {}))
    }

    #[instrument(skip_all, fields(facility, round_id))]
    async fn get_ledger_proof(
        &self,
        request: Request<pb::LedgerProofRequest>,
    ) -> Result<Response<pb::LedgerProof>, Status> {
        use harambee_privacy::ledger::LedgerEvent;
        let peer = require_role(&request, Role::Agent)?;
        let req = request.into_inner();
        tracing::Span::current()
            .record("facility", peer.name.as_str())
            .record("round_id", req.round_id);
        let round = self
            .coord
            .store
            .round(req.round_id)
            .await
            .map_err(ServiceError::from)?;
        let round =
            round.ok_or_else(|| ServiceError::not_found(format!("no round {}", req.round_id)))?;
        let federation = round.federation;
        // Read after the round: a round that has ended wrote its contributions with its end.
        let ended = round.state.is_terminal();
        let ledger = self
            .coord
            .ledger
            .synced(&self.coord.store)
            .await
            .map_err(ServiceError::from)?;
        let line = ledger
            .lines()
            .iter()
            .rev()
            .find(|l| matches!(&l.event, LedgerEvent::Contribution(c) if c.facility == peer.name && c.federation == federation && c.round_id == req.round_id))
            .ok_or_else(|| {
                let missing = format!("the ledger holds no contribution of {} to round {}", peer.name, req.round_id);
                if ended {
                    // It never will: an upload this coordinator accepted is always recorded.
                    ServiceError::data_loss(format!("{missing}, which has ended"))
                } else {
                    ServiceError::not_found(missing)
                }
            })?;
        let head = self.coord.ledger.sign(&ledger, now_ms());
        let size = head.head.tree_size;
        if req.known_tree_size > size {
            return Err(ServiceError::out_of_range(format!(
                "known tree size {} exceeds the ledger's {size} entries",
                req.known_tree_size
            ))
            .into());
        }
        let inclusion = ledger
            .inclusion_proof(line.index, size)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let consistency = if req.known_tree_size == 0 {
            Vec::new()
        } else {
            ledger
                .consistency_proof(req.known_tree_size, size)
                .map_err(|e| ServiceError::Internal(e.to_string()))?
        };
        let key_rotations = ledger_view::rotation_proofs(&ledger, req.known_tree_size, size)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok(Response::new(pb::LedgerProof {
            entry: line
                .to_json()
                .map_err(|e| ServiceError::Internal(e.to_string()))?,
            index: line.index,
            inclusion_proof: super::audit::hashes(inclusion),
            signed_tree_head: super::audit::head_json(&head),
            consistency_proof: super::audit::hashes(consistency),
            ledger_key: self.coord.ledger.verifying_key().to_bytes().to_vec(),
            key_rotations: key_rotations
                .into_iter()
                .map(|(entry, proof)| pb::LedgerKeyRotationProof {
                    entry,
                    inclusion_proof: super::audit::hashes(proof),
                })
                .collect(),
        }))
    }

    async fn cosign_tree_head(
        &self,
        request: Request<pb::CosignTreeHeadRequest>,
    ) -> Result<Response<pb::CosignTreeHeadResponse>, Status> {
        use harambee_privacy::ledger::{Cosignature, SignedTreeHead};
        let peer = require_role(&request, Role::Agent)?;
        let key = peer_receipt_key(&peer_chain(&request))?;
        let req = request.into_inner();
        let head: SignedTreeHead = serde_json::from_str(&req.signed_tree_head)
            .map_err(|e| ServiceError::invalid_argument(format!("malformed tree head: {e}")))?;
        let cosignature: Cosignature = serde_json::from_str(&req.cosignature).map_err(|e| {
            ServiceError::invalid_argument(format!("malformed countersignature: {e}"))
        })?;
        head.verify(&self.coord.ledger.verifying_key())
            .map_err(|_| {
                ServiceError::invalid_argument(
                    "the tree head is not signed with this coordinator's ledger key",
                )
            })?;
        if cosignature.facility != peer.name {
            return Err(ServiceError::permission_denied(format!(
                "a countersignature of {} sent by {}",
                cosignature.facility, peer.name
            ))
            .into());
        }
        cosignature.verify(&head.head, &key).map_err(|_| {
            ServiceError::invalid_argument(
                "the countersignature does not verify with the facility's certificate key",
            )
        })?;
        self.coord
            .store
            .record_cosignature(&head.head, &cosignature, now_ms())
            .await
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::CosignTreeHeadResponse {}))
    }
}

/// The certificate chain the caller connected with (DER, leaf first).
fn peer_chain<T>(request: &Request<T>) -> Vec<Vec<u8>> {
    request
        .peer_certs()
        .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
        .unwrap_or_default()
}

/// The facility's Ed25519 key, from the leaf of the certificate chain it connected with:
/// the key its egress receipts and countersignatures must verify with.
fn peer_receipt_key(chain: &[Vec<u8>]) -> Result<VerifyingKey, ServiceError> {
    let leaf = chain
        .first()
        .ok_or_else(|| ServiceError::unauthenticated("no client certificate"))?;
    harambee_link::identity::ed25519_key_of(leaf).map_err(|e| {
        ServiceError::permission_denied(format!(
            "the client certificate has no Ed25519 key to check receipts with: {e}"
        ))
    })
}

/// A heartbeat's privacy status must be finite and sized for the accountant's orders.
fn check_privacy_status(status: &pb::PrivacyStatus) -> Result<(), ServiceError> {
    let orders = harambee_privacy::accountant::default_orders().len();
    if !status.rdp.is_empty() && status.rdp.len() != orders {
        return Err(ServiceError::invalid_argument(format!(
            "privacy status carries {} RDP values, not {orders}",
            status.rdp.len()
        )));
    }
    let finite = [status.epsilon_spent, status.delta]
        .iter()
        .chain(&status.max_epsilon)
        .all(|x| x.is_finite() && *x >= 0.0);
    // An order at which nothing is bounded carries +inf.
    if !finite || status.rdp.iter().any(|x| x.is_nan() || *x < 0.0) {
        return Err(ServiceError::invalid_argument(
            "privacy status values must be non-negative numbers",
        ));
    }
    Ok(())
}

/// Parses and checks an upload's egress receipt: signed by the uploading facility's
/// certificate key, and stating exactly this upload (facility, federation, round, SHA-256
/// and size of the bytes received). Whether its privacy parameters are the federation's is
/// for the round's driver to check.
fn check_receipt(
    facility: &str,
    key: &VerifyingKey,
    header: &pb::UpdateHeader,
    round: &crate::round::context::ActiveRound,
    digest: &str,
    n_bytes: usize,
) -> Result<SignedReceipt, ServiceError> {
    if header.receipt.is_empty() {
        return Err(ServiceError::invalid_argument(
            "an upload must carry its facility's signed egress receipt",
        ));
    }
    let signed: SignedReceipt = serde_json::from_str(&header.receipt)
        .map_err(|e| ServiceError::invalid_argument(format!("malformed egress receipt: {e}")))?;
    signed.verify(key).map_err(|_| {
        ServiceError::invalid_argument(
            "the egress receipt's signature does not verify with the facility's certificate key",
        )
    })?;
    let r = &signed.receipt;
    let mismatch = if r.facility != facility {
        Some(format!("names facility {:?}", r.facility))
    } else if r.federation != round.federation {
        Some(format!(
            "names federation {:?}, not {:?}",
            r.federation, round.federation
        ))
    } else if r.round_id != header.round_id {
        Some(format!(
            "names round {}, not {}",
            r.round_id, header.round_id
        ))
    } else if r.update_sha256.to_hex() != digest.to_ascii_lowercase() {
        Some("states another SHA-256 than the bytes received".to_owned())
    } else if r.bytes != n_bytes as u64 {
        Some(format!("states {} bytes, {n_bytes} were received", r.bytes))
    } else {
        None
    };
    match mismatch {
        Some(what) => Err(ServiceError::invalid_argument(format!(
            "the egress receipt does not describe this upload: it {what}"
        ))),
        None => Ok(signed),
    }
}

impl AgentApi {
    /// Records in the ledger the key a facility's receipts will be signed with, when the
    /// ledger does not hold it yet (certificates issued by `pki issue` rather than enrolment,
    /// or a new key): an auditor then checks every receipt against a recorded key.
    async fn record_key(&self, facility: &str, chain: &[Vec<u8>]) -> Result<(), ServiceError> {
        use harambee_privacy::ledger::{LedgerEvent, enrolled_receipt_keys};
        let Ok(key) = peer_receipt_key(chain) else {
            return Ok(());
        };
        let known = {
            let ledger = self
                .coord
                .ledger
                .synced(&self.coord.store)
                .await
                .map_err(ServiceError::from)?;
            enrolled_receipt_keys(ledger.lines()).get(facility) == Some(&key)
        };
        if !known {
            let event = LedgerEvent::FacilityEnrolled {
                facility: facility.to_owned(),
                receipt_key: Some(key),
            };
            self.coord
                .store
                .append_ledger(now_ms(), vec![event])
                .await
                .map_err(ServiceError::from)?;
        }
        Ok(())
    }

    /// An upload to a round that is no longer running: OK when the ledger holds this
    /// facility's contribution to the round with the same SHA-256 and the bytes sent are
    /// those (a retry after a lost response); otherwise the round is simply not running.
    async fn repeated_upload(
        &self,
        facility: &str,
        header: &pb::UpdateHeader,
        mut parts: Streaming<pb::UploadUpdateRequest>,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        use harambee_privacy::ledger::LedgerEvent;
        let not_running = || {
            ServiceError::failed_precondition(format!("round {} is not running", header.round_id))
        };
        let accepted_bytes = {
            let ledger = self
                .coord
                .ledger
                .synced(&self.coord.store)
                .await
                .map_err(ServiceError::from)?;
            ledger.lines().iter().rev().find_map(|l| match &l.event {
                LedgerEvent::Contribution(c)
                    if c.facility == facility
                        && c.round_id == header.round_id
                        && c.upload_sha256
                            .to_hex()
                            .eq_ignore_ascii_case(&header.sha256) =>
                {
                    Some(c.bytes)
                }
                _ => None,
            })
        };
        let Some(expected) = accepted_bytes else {
            return Err(not_running().into());
        };
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        while let Some(message) = parts.message().await? {
            let Some(Part::Data(data)) = message.part else {
                return Err(ServiceError::invalid_argument(
                    "only data chunks may follow the header",
                )
                .into());
            };
            received += data.len() as u64;
            if received > expected {
                return Err(not_running().into());
            }
            hasher.update(&data);
        }
        if received != expected
            || !hex::encode(hasher.finalize()).eq_ignore_ascii_case(&header.sha256)
        {
            return Err(not_running().into());
        }
        info!("the same upload again after the round ended (a retry); the ledger holds it");
        Ok(Response::new(pb::UploadUpdateResponse {}))
    }

    /// A secure-aggregation masked input: at most one word (of up to 8 bytes) per parameter
    /// plus one; the round checks the exact shape and folds it into its running sum.
    async fn receive_masked(
        &self,
        facility: &str,
        receipt_key: &VerifyingKey,
        header: pb::UpdateHeader,
        mut parts: Streaming<pb::UploadUpdateRequest>,
        round: crate::round::context::ActiveRound,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        let max_bytes = (round.n_params + 1) * 8;
        let declared = usize::try_from(header.n_params).unwrap_or(usize::MAX);
        if declared > round.n_params + 1 {
            return Err(ServiceError::invalid_argument(format!(
                "masked input of {declared} words for a model of {} parameters",
                round.n_params
            ))
            .into());
        }
        // Held until the round has added the input into its sum (this call returns). Sized
        // by the byte count the egress receipt states (32- or 64-bit words), checked with
        // its signature once the bytes are in; at most the largest input the model allows.
        let max_bytes = max_bytes.min(declared.saturating_mul(8));
        let stated = serde_json::from_str::<SignedReceipt>(&header.receipt)
            .ok()
            .and_then(|signed| usize::try_from(signed.receipt.bytes).ok())
            .unwrap_or(declared.saturating_mul(4));
        let _budget = self.coord.reserve_upload(stated.min(max_bytes)).await;
        // The chunks as received (views of the transport's buffers, not copies); the round
        // adds them into its sum straight from there.
        let mut pieces: Vec<bytes::Bytes> = Vec::new();
        let mut received = 0usize;
        let mut hasher = Sha256::new();
        while let Some(message) = parts.message().await? {
            let Some(Part::Data(data)) = message.part else {
                return Err(ServiceError::invalid_argument(
                    "only data chunks may follow the header",
                )
                .into());
            };
            if data.len() > harambee_proto::CHUNK_BYTES || received + data.len() > max_bytes {
                return Err(ServiceError::invalid_argument(
                    "masked input larger than the model allows",
                )
                .into());
            }
            hasher.update(&data);
            received += data.len();
            pieces.push(data);
            self.coord
                .registry
                .progress(facility, self.coord.clock.now());
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(&header.sha256) {
            return Err(
                ServiceError::data_loss("masked input checksum mismatch; upload it again").into(),
            );
        }
        let receipt = check_receipt(facility, receipt_key, &header, &round, &digest, received)?;
        let (reply, answer) = oneshot::channel();
        let input = RoundInput::Masked {
            agent: facility.into(),
            pieces,
            receipt,
            reply,
        };
        round.inputs.send(input).await.map_err(|_| round_gone())?;
        answer
            .await
            .map_err(|_| round_gone())?
            .map_err(ServiceError::from)?;
        Ok(Response::new(pb::UploadUpdateResponse {}))
    }
}

/// Little-endian `f32` values decoded from chunks split at any byte boundary.
struct F32Decoder {
    values: Vec<f32>,
    carry: [u8; 4],
    carried: usize,
}

impl F32Decoder {
    fn with_capacity(n: usize) -> F32Decoder {
        F32Decoder {
            values: Vec::with_capacity(n),
            carry: [0; 4],
            carried: 0,
        }
    }

    /// Bytes taken so far.
    fn bytes(&self) -> usize {
        self.values.len() * 4 + self.carried
    }

    fn push(&mut self, mut data: &[u8]) {
        if self.carried > 0 {
            let take = (4 - self.carried).min(data.len());
            self.carry[self.carried..self.carried + take].copy_from_slice(&data[..take]);
            self.carried += take;
            data = &data[take..];
            if self.carried < 4 {
                return;
            }
            self.values.push(f32::from_le_bytes(self.carry));
            self.carried = 0;
        }
        let words = data.chunks_exact(4);
        let rest = words.remainder();
        self.values
            .extend(words.map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]])));
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carried = rest.len();
    }

    /// The values; a trailing partial word (which the length check refuses first) is dropped.
    fn finish(self) -> Vec<f32> {
        self.values
    }
}

/// Ends a task stream's registration when the stream is dropped. A facility that has not
/// reconnected within one heartbeat interval is reported gone to running rounds: a link
/// that drops briefly is forgiven, a crashed agent is noticed in seconds rather than at the
/// liveness timeout.
struct StreamGuard {
    coord: Coordinator,
    facility: String,
    conn_id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.coord.registry.disconnect(&self.facility, self.conn_id);
        let coord = self.coord.clone();
        let facility = std::mem::take(&mut self.facility);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                // A link that drops briefly is forgiven: gone only if not back within the
                // reconnection grace.
                tokio::time::sleep(coord.settings.reconnect_grace).await;
                if !coord.registry.is_connected(&facility) {
                    info!(%facility, "task stream closed and not reopened");
                    coord
                        .broadcast_dropout(&facility, "connection closed")
                        .await;
                }
            });
        }
    }
}

fn round_gone() -> ServiceError {
    ServiceError::failed_precondition("the round ended")
}

#[cfg(test)]
mod tests {
    use super::F32Decoder;

    /// Chunks cut anywhere, even inside a value, decode to the values.
    #[test]
    fn values_split_across_chunks_decode_whole() {
        let values: Vec<f32> = (0..1000).map(|i| i as f32 * 0.37 - 100.0).collect();
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for cut in [1usize, 3, 4, 5, 7, 1024, 4000] {
            let mut decoder = F32Decoder::with_capacity(values.len());
            for chunk in bytes.chunks(cut) {
                decoder.push(chunk);
            }
            assert_eq!(decoder.bytes(), bytes.len());
            assert_eq!(decoder.finish(), values, "chunks of {cut}");
        }
        let mut partial = F32Decoder::with_capacity(2);
        partial.push(&bytes[..6]);
        assert_eq!(
            partial.bytes(),
            6,
            "a partial value counts towards the length check"
        );
    }
}
