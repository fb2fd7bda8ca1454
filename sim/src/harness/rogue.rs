//! A coordinator that does not follow the protocol, for the adversarial tests: it holds the
//! real server certificate and CA (a compromised or dishonest coordinator host would), serves
//! the agent service over the same mTLS, sends whatever tasks a test scripts, and records
//! everything the agents send it. Real agents connect to it as to the real coordinator.

use std::collections::HashMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use harambee_coordinator::pki::PkiPaths;
use harambee_coordinator::server::tls::{load_server_config, tls_incoming};
use harambee_link::identity::identity_from_cert;
use harambee_proto::pb::{self, agent_service_server::AgentService};
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

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    streams: Mutex<HashMap<String, mpsc::UnboundedSender<Result<pb::Task, Status>>>>,
    models: Mutex<HashMap<String, Vec<u8>>>,
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
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = pb::agent_service_server::AgentServiceServer::new(Service(state.clone()))
            .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(tls_incoming(listener, tls), async {
                    let _ = stopped.await;
                }),
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
        let mut bytes = 0;
        while let Some(part) = parts.next().await {
            match part?.part {
                Some(pb::upload_update_request::Part::Header(h)) => header = Some(h),
                Some(pb::upload_update_request::Part::Data(d)) => bytes += d.len(),
                None => {}
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        self.record(Seen::Upload {
            facility,
            header,
            bytes,
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
