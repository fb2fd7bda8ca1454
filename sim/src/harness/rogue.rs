//! A coordinator that does not follow the protocol, for the adversarial tests: it holds the
//! real server certificate and CA (a compromised or dishonest coordinator host would), serves
//! the agent service over the same mTLS, sends whatever tasks a test scripts, and records
//! everything the agents send it. Real agents connect to it as to the real coordinator.
//!
//! [`RogueRound`] drives a round's secure aggregation with the real SecAgg+ server
//! (`harambee_secagg::ServerRound`) the way the honest coordinator does, up to the unmask
//! request, and then lets the test write each agent whatever unmask request or consistency
//! proof it likes.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use harambee_coordinator::pki::PkiPaths;
use harambee_coordinator::server::tls::{ConnectionLimits, load_server_config, tls_incoming};
use harambee_coordinator::store::ledger_view::enrolment_proofs;
use harambee_coordinator::wire;
use harambee_core::FacilityId;
use harambee_core::round::SecAggOut;
use harambee_link::identity::{ed25519_key_of, identity_from_cert};
use harambee_privacy::ledger::{
    Ledger, LedgerEvent, LedgerLine, Sha256Digest, enrolled_receipt_keys,
};
use harambee_proto::pb::{self, agent_service_server::AgentService, sec_agg_submission::Part};
use harambee_secagg::ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_secagg::{
    AfterMaskedInputs, ConsistencySignature, EncryptedShare, MaskedInput, MaskedWords, Message,
    Params, ServerRound, SignedAdvertisement, UnmaskShares,
};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status, Streaming};

/// Something an agent sent the rogue coordinator.
#[derive(Clone, Debug)]
pub enum Seen {
    Declined {
        facility: String,
        round_id: u64,
        reason: String,
    },
    /// An update (plain or masked): its header and payload.
    Upload {
        facility: String,
        header: pb::UpdateHeader,
        bytes: usize,
        payload: Vec<u8>,
    },
    SecAgg {
        facility: String,
        submission: pb::SecAggSubmission,
    },
    Metrics {
        facility: String,
        request: pb::ReportMetricsRequest,
    },
}

impl Seen {
    pub fn facility(&self) -> &str {
        match self {
            Seen::Declined { facility, .. }
            | Seen::Upload { facility, .. }
            | Seen::SecAgg { facility, .. }
            | Seen::Metrics { facility, .. } => facility,
        }
    }
}

struct State {
    seen: Mutex<Vec<Seen>>,
    streams: Mutex<HashMap<String, mpsc::UnboundedSender<Result<pb::Task, Status>>>>,
    models: Mutex<HashMap<String, Vec<u8>>>,
    /// Each agent's certificate chain (leaf first), as its task stream presented it, or as
    /// a test presents it instead ([`Rogue::present`]).
    certificates: Mutex<HashMap<String, Vec<Vec<u8>>>>,
    /// The rogue's own privacy ledger: it records each agent's key when its task stream
    /// opens, as the honest coordinator does, and whatever a test adds ([`Rogue::enrol`]).
    ledger: Mutex<Ledger>,
    ledger_key: SigningKey,
}

impl State {
    fn new() -> State {
        State {
            seen: Mutex::default(),
            streams: Mutex::default(),
            models: Mutex::default(),
            certificates: Mutex::default(),
            ledger: Mutex::default(),
            ledger_key: SigningKey::from_bytes(&rand::random()),
        }
    }

    fn enrol(&self, facility: &str, key: VerifyingKey) {
        let mut ledger = self.ledger.lock().unwrap();
        if enrolled_receipt_keys(ledger.lines()).get(facility) != Some(&key) {
            let event = LedgerEvent::FacilityEnrolled {
                facility: facility.to_owned(),
                receipt_key: Some(key),
            };
            ledger.append(now_ms() as u64, event).unwrap();
        }
    }
}

/// The rogue coordinator, serving on a loopback port until dropped.
pub struct Rogue {
    pub port: u16,
    state: Arc<State>,
    _stop: oneshot::Sender<()>,
}

impl Rogue {
    /// Serves with the server certificate and CA of the PKI at `pki`.
    pub async fn start(pki: &Path) -> Rogue {
        let tls = load_server_config(&PkiPaths::new(pki)).unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State::new());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = pb::agent_service_server::AgentServiceServer::new(Service(state.clone()))
            .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tls_incoming(listener, tls, ConnectionLimits::default()),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        Rogue {
            port,
            state,
            _stop: stop,
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Offers `params` for download; returns the reference a task names.
    pub fn publish(&self, params: &[f32]) -> pb::ModelRef {
        let bytes = harambee_core::params::to_le_bytes(params);
        let digest = hex::encode(Sha256::digest(&bytes));
        let size_bytes = bytes.len() as u64;
        self.state
            .models
            .lock()
            .unwrap()
            .insert(digest.clone(), bytes);
        pb::ModelRef {
            digest,
            size_bytes,
            version: 1,
        }
    }

    /// Sends `task` to `facility` once its agent holds a task stream.
    pub async fn send(&self, facility: &str, task: pb::Task) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(stream) = self.state.streams.lock().unwrap().get(facility)
                && stream.send(Ok(task.clone())).is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{facility} never opened a task stream"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Presents `chain` (leaf first) as `facility`'s certificate to its peers from now on:
    /// a certificate the rogue's CA minted, say.
    pub fn present(&self, facility: &str, chain: Vec<Vec<u8>>) {
        self.state
            .certificates
            .lock()
            .unwrap()
            .insert(facility.to_owned(), chain);
    }

    /// Records in the rogue's ledger that `facility` enrolled under `key`.
    pub fn enrol(&self, facility: &str, key: VerifyingKey) {
        self.state.enrol(facility, key);
    }

    /// The rogue's ledger, as exported lines.
    pub fn ledger_lines(&self) -> Vec<LedgerLine> {
        self.state.ledger.lock().unwrap().lines().to_vec()
    }

    /// The ledger evidence of a peer-key stage for `facility`, which reported a head of
    /// `known_tree_size` entries: built from the rogue's ledger as the honest coordinator
    /// builds it from its own (entries for keys it did not record are left out).
    fn peer_ledger(
        &self,
        facility_known_tree_size: u64,
    ) -> (
        pb::LedgerHead,
        HashMap<FacilityId, (String, Vec<Sha256Digest>)>,
    ) {
        let ledger = self.state.ledger.lock().unwrap();
        let head = ledger.sign_head(now_ms() as u64, &self.state.ledger_key);
        let size = head.head.tree_size;
        let keys: Vec<(FacilityId, VerifyingKey)> = self
            .certificates()
            .into_iter()
            .filter_map(|(f, chain)| Some((f.into(), ed25519_key_of(chain.first()?).ok()?)))
            .collect();
        let enrolments = enrolment_proofs(&ledger, &keys, size).unwrap();
        let known = facility_known_tree_size.min(size);
        let head = pb::LedgerHead {
            signed_tree_head: serde_json::to_string(&head).unwrap(),
            ledger_key: self.state.ledger_key.verifying_key().to_bytes().to_vec(),
            from_tree_size: known,
            consistency_proof: wire::hashes(ledger.consistency_proof(known, size).unwrap()),
            key_rotations: Vec::new(),
        };
        (head, enrolments)
    }

    /// Each connected agent's certificate chain (leaf first), by facility.
    pub fn certificates(&self) -> HashMap<String, Vec<Vec<u8>>> {
        self.state.certificates.lock().unwrap().clone()
    }

    /// The secure-aggregation messages `facility` sent for `round_id`, in order.
    pub fn secagg_of(&self, round_id: u64, facility: &str) -> Vec<Part> {
        self.seen()
            .into_iter()
            .filter_map(|s| match s {
                Seen::SecAgg {
                    facility: f,
                    submission,
                } if f == facility && submission.round_id == round_id => submission.part,
                _ => None,
            })
            .collect()
    }

    /// Everything the agents sent so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Waits (up to a minute) for the first message that `matches`.
    pub async fn wait_for(&self, what: &str, matches: impl Fn(&Seen) -> bool) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(seen) = self.seen().into_iter().find(|s| matches(s)) {
                return seen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waited a minute for {what}; the agents sent {:#?}",
                self.seen()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Service(Arc<State>);

impl Service {
    fn facility<T>(request: &Request<T>) -> Result<String, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        let leaf = certs
            .first()
            .ok_or_else(|| Status::unauthenticated("no client certificate"))?;
        identity_from_cert(leaf)
            .map(|id| id.name)
            .map_err(|e| Status::unauthenticated(e.to_string()))
    }

    fn record(&self, seen: Seen) {
        self.0.seen.lock().unwrap().push(seen);
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Service {
    type OpenTaskStreamStream = BoxStream<pb::Task>;
    type DownloadModelStream = BoxStream<pb::Chunk>;

    async fn open_task_stream(
        &self,
        request: Request<pb::OpenTaskStreamRequest>,
    ) -> Result<Response<Self::OpenTaskStreamStream>, Status> {
        let facility = Self::facility(&request)?;
        let chain: Vec<Vec<u8>> = request
            .peer_certs()
            .map(|certs| certs.iter().map(|c| c.to_vec()).collect())
            .unwrap_or_default();
        if let Some(key) = chain.first().and_then(|leaf| ed25519_key_of(leaf).ok()) {
            self.0.enrol(&facility, key);
        }
        self.0
            .certificates
            .lock()
            .unwrap()
            .entry(facility.clone())
            .or_insert(chain);
        let (tx, rx) = mpsc::unbounded_channel();
        self.0.streams.lock().unwrap().insert(facility, tx);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|task| (task, rx))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn heartbeat(
        &self,
        _request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        Ok(Response::new(pb::HeartbeatResponse {
            server_time_unix_ms: 0,
            interval_ms: 200,
            notice: String::new(),
        }))
    }

    async fn download_model(
        &self,
        request: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        let request = request.into_inner();
        let bytes = self
            .0
            .models
            .lock()
            .unwrap()
            .get(&request.digest)
            .cloned()
            .ok_or_else(|| Status::not_found("no such model"))?;
        let offset = request.offset.min(bytes.len() as u64);
        let chunk = pb::Chunk {
            offset,
            total_bytes: bytes.len() as u64,
            data: bytes[offset as usize..].to_vec(),
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(chunk)]))))
    }

    async fn upload_update(
        &self,
        request: Request<Streaming<pb::UploadUpdateRequest>>,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        let facility = Self::facility(&request)?;
        let mut parts = request.into_inner();
        let mut header = None;
        let mut payload = Vec::new();
        while let Some(part) = parts.next().await {
            match part?.part {
                Some(pb::upload_update_request::Part::Header(h)) => header = Some(h),
                Some(pb::upload_update_request::Part::Data(d)) => payload.extend_from_slice(&d),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        self.record(Seen::Upload {
            facility,
            header,
            bytes: payload.len(),
            payload,
        });
        Ok(Response::new(pb::UploadUpdateResponse::default()))
    }

    async fn report_metrics(
        &self,
        request: Request<pb::ReportMetricsRequest>,
    ) -> Result<Response<pb::ReportMetricsResponse>, Status> {
        let facility = Self::facility(&request)?;
        self.record(Seen::Metrics {
            facility,
            request: request.into_inner(),
        });
        Ok(Response::new(pb::ReportMetricsResponse::default()))
    }

    async fn submit_sec_agg(
        &self,
        request: Request<pb::SecAggSubmission>,
    ) -> Result<Response<pb::SecAggAck>, Status> {
        let facility = Self::facility(&request)?;
        self.record(Seen::SecAgg {
            facility,
            submission: request.into_inner(),
        });
        Ok(Response::new(pb::SecAggAck::default()))
    }

    async fn decline_task(
        &self,
        request: Request<pb::DeclineTaskRequest>,
    ) -> Result<Response<pb::DeclineTaskResponse>, Status> {
        let facility = Self::facility(&request)?;
        let request = request.into_inner();
        self.record(Seen::Declined {
            facility,
            round_id: request.round_id,
            reason: request.reason,
        });
        Ok(Response::new(pb::DeclineTaskResponse::default()))
    }

    async fn get_ledger_proof(
        &self,
        _request: Request<pb::LedgerProofRequest>,
    ) -> Result<Response<pb::LedgerProof>, Status> {
        Err(Status::not_found("no ledger here"))
    }

    async fn cosign_tree_head(
        &self,
        _request: Request<pb::CosignTreeHeadRequest>,
    ) -> Result<Response<pb::CosignTreeHeadResponse>, Status> {
        Ok(Response::new(pb::CosignTreeHeadResponse::default()))
    }
}

/// One round's secure aggregation driven by the rogue over real agents that hold a trained
/// update for it: the participants get ids 1.. in facility-name order (as the coordinator
/// numbers them), and [`RogueRound::up_to_unmask`] runs the stages honestly with the real
/// SecAgg+ server. What it asks at the unmask stage is the test's.
pub struct RogueRound<'r> {
    rogue: &'r Rogue,
    pub round_id: u64,
    pub params: Params,
    /// Facility → id.
    pub ids: BTreeMap<String, u32>,
}

/// How long an agent gets to answer one stage.
const STAGE_MS: i64 = 60_000;

impl<'r> RogueRound<'r> {
    /// `facilities` take part with the parameters `params_for` derives for their ids.
    pub fn new(
        rogue: &'r Rogue,
        round_id: u64,
        facilities: &[String],
        params_for: impl FnOnce(&[u32]) -> Params,
    ) -> RogueRound<'r> {
        let mut names = facilities.to_vec();
        names.sort();
        let ids: BTreeMap<String, u32> = names.into_iter().zip(1u32..).collect();
        let participants: Vec<u32> = ids.values().copied().collect();
        RogueRound {
            rogue,
            round_id,
            params: params_for(&participants),
            ids,
        }
    }

    pub fn name_of(&self, id: u32) -> &str {
        self.ids
            .iter()
            .find(|(_, i)| **i == id)
            .map(|(name, _)| name.as_str())
            .expect("a participant")
    }

    /// Sends participant `id` the stage message `out`, encoded as the coordinator does.
    /// The peer-key stage carries the rogue ledger's evidence of the peers' keys, proven
    /// from the head the participant reported with its advertisement.
    pub async fn send(&self, id: u32, out: SecAggOut) {
        let deadline = now_ms() + STAGE_MS;
        let name = self.name_of(id);
        let parts = matches!(out, SecAggOut::PeerKeys { .. })
            .then(|| self.rogue.peer_ledger(self.known_tree_size(name)));
        let ledger = parts.as_ref().map(|(head, enrolments)| wire::PeerLedger {
            head: head.clone(),
            enrolments,
        });
        let certificates = self
            .rogue
            .certificates()
            .into_iter()
            .map(|(f, chain)| (FacilityId::from(f), chain))
            .collect();
        let task = wire::secagg_task(self.round_id, out, &certificates, ledger, deadline);
        self.rogue.send(name, task).await;
    }

    /// The ledger head size `name` reported with its advertisement in this round.
    fn known_tree_size(&self, name: &str) -> u64 {
        self.rogue
            .seen()
            .into_iter()
            .find_map(|s| match s {
                Seen::SecAgg {
                    facility,
                    submission,
                } if facility == name
                    && submission.round_id == self.round_id
                    && matches!(submission.part, Some(Part::Advertise(_))) =>
                {
                    Some(submission.known_tree_size)
                }
                _ => None,
            })
            .unwrap_or(0)
    }

    /// The first secure-aggregation message of participant `id` in this round that `pick`
    /// takes, waiting up to a minute for it.
    pub async fn answer(&self, id: u32, what: &str, pick: impl Fn(&Part) -> bool) -> Part {
        let name = self.name_of(id).to_owned();
        let round_id = self.round_id;
        let seen = self
            .rogue
            .wait_for(&format!("{what} of {name} in round {round_id}"), |s| {
                matches!(s, Seen::SecAgg { facility, submission }
                    if *facility == name && submission.round_id == round_id
                        && submission.part.as_ref().is_some_and(&pick))
            })
            .await;
        match seen {
            Seen::SecAgg { submission, .. } => submission.part.expect("picked"),
            _ => unreachable!(),
        }
    }

    /// Advertise keys, share keys and masked input, as the honest coordinator runs them,
    /// with the real SecAgg+ server; returns the server after the masked inputs, with the
    /// unmask request (or the request to sign) that it would send each survivor.
    pub async fn up_to_unmask(&self) -> AfterMaskedInputs {
        let certificates = self.rogue.certificates();
        let keys = self
            .ids
            .iter()
            .map(|(name, &id)| {
                let leaf = &certificates[name][0];
                (
                    id,
                    ed25519_key_of(leaf).expect("an Ed25519 agent certificate"),
                )
            })
            .collect();
        let mut server = ServerRound::new(self.params.clone(), keys).expect("valid parameters");
        for &id in self.ids.values() {
            let params = self.params.clone();
            self.send(id, SecAggOut::Advertise { params, my_id: id })
                .await;
        }
        for &id in self.ids.values() {
            let Part::Advertise(ad) = self
                .answer(id, "the advertisement", |p| matches!(p, Part::Advertise(_)))
                .await
            else {
                unreachable!()
            };
            server
                .receive(id, SignedAdvertisement::decode(&ad).unwrap())
                .unwrap();
        }
        let (mut server, routes) = server.finish().unwrap();
        // Every participant's certificate, as the coordinator sends under the consistency
        // check (each client verifies every survivor's signature).
        let everyone: Vec<(u32, harambee_core::FacilityId)> = self
            .ids
            .iter()
            .map(|(name, &id)| (id, name.as_str().into()))
            .collect();
        for (id, advertisements) in routes {
            let peers = everyone.clone();
            self.send(
                id,
                SecAggOut::PeerKeys {
                    advertisements,
                    peers,
                },
            )
            .await;
        }
        for &id in self.ids.values() {
            let Part::Shares(shares) = self
                .answer(id, "the key shares", |p| matches!(p, Part::Shares(_)))
                .await
            else {
                unreachable!()
            };
            let shares = shares
                .shares
                .iter()
                .map(|b| EncryptedShare::decode(b).unwrap())
                .collect();
            server.receive(id, shares).unwrap();
        }
        let (mut server, routes) = server.finish().unwrap();
        for (id, shares) in routes {
            self.send(id, SecAggOut::Shares(shares)).await;
        }
        for (name, &id) in &self.ids {
            let round_id = self.round_id;
            let seen = self
                .rogue
                .wait_for(&format!("the masked input of {name}"), |s| {
                    matches!(s, Seen::Upload { facility, header, .. }
                        if facility == name && header.round_id == round_id && header.masked)
                })
                .await;
            let Seen::Upload { payload, .. } = seen else {
                unreachable!()
            };
            let words = MaskedWords::from_le_bytes(self.params.word, &payload).unwrap();
            let input = MaskedInput {
                round_id,
                sender: id,
                words,
            };
            server.receive(id, input).unwrap();
        }
        server.finish().unwrap()
    }

    /// Participant `id`'s consistency signature (waiting up to a minute).
    pub async fn signature_of(&self, id: u32) -> ConsistencySignature {
        let Part::ConsistencySignature(sig) = self
            .answer(id, "the consistency signature", |p| {
                matches!(p, Part::ConsistencySignature(_))
            })
            .await
        else {
            unreachable!()
        };
        ConsistencySignature::decode(&sig).unwrap()
    }

    /// Participant `id`'s unmask shares (waiting up to a minute).
    pub async fn unmask_of(&self, id: u32) -> UnmaskShares {
        let Part::Unmask(shares) = self
            .answer(id, "the unmask shares", |p| matches!(p, Part::Unmask(_)))
            .await
        else {
            unreachable!()
        };
        UnmaskShares::decode(&shares).unwrap()
    }

    /// What the participants sent at the unmask stage of this round so far: consistency
    /// signatures and unmask shares, by id.
    pub fn unmask_stage(&self) -> Vec<(u32, Part)> {
        self.ids
            .iter()
            .flat_map(|(name, &id)| {
                self.rogue
                    .secagg_of(self.round_id, name)
                    .into_iter()
                    .filter(|p| matches!(p, Part::ConsistencySignature(_) | Part::Unmask(_)))
                    .map(move |p| (id, p))
            })
            .collect()
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}
