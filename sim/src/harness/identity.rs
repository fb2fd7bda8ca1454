//! What the identity tests share on top of the [`super::Harness`]: a coordinator that can enrol (the
//! harness's own does not load the CA key), clients of the identity services, enrolled
//! agents, and a raw gRPC call that reaches any method by path.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harambee_agent::config::AgentConfig;
use harambee_coordinator::pki::PkiPaths;
use harambee_coordinator::server;
use harambee_link::identity::Role;
use harambee_proto::pb::{
    self, enrolment_service_client::EnrolmentServiceClient,
    identity_service_client::IdentityServiceClient,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use super::Harness;

/// Default certificate validity in these tests.
pub const NINETY_DAYS: Duration = Duration::from_secs(90 * 86_400);

/// A coordinator with enrolment enabled, on the storage and PKI of a [`Harness`].
pub struct Coord {
    pub h: Harness,
    pub validity: Duration,
    server: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    agents: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

impl Coord {
    /// A fresh PKI (CA key on the host) and SQLite database; certificates issued by
    /// enrolment and renewal are valid for `validity`.
    pub async fn start(validity: Duration) -> Coord {
        Coord::start_on(Harness::prepare(None), validity).await
    }

    pub async fn start_on(h: Harness, validity: Duration) -> Coord {
        let mut c = Coord {
            h,
            validity,
            server: None,
            agents: Vec::new(),
        };
        c.start_server().await;
        c
    }

    async fn start_server(&mut self) {
        let coord = server::open(&self.h.storage, self.h.settings.clone())
            .await
            .unwrap();
        assert!(
            coord
                .enable_issuing(&PkiPaths::new(&self.h.pki), self.validity)
                .unwrap(),
            "the PKI holds a signing key"
        );
        let tls =
            harambee_coordinator::server::tls::load_server_config(&PkiPaths::new(&self.h.pki))
                .unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.h.port))
            .await
            .unwrap();
        self.h.port = listener.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(coord, listener, tls, async {
            let _ = rx.await;
        }));
        self.server = Some((tx, task));
    }

    pub async fn stop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            task.await.unwrap().unwrap();
        }
    }

    /// Stops the coordinator and starts a new one on the same port, database and PKI: a new
    /// process in all that matters (nothing in memory survives).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.start_server().await;
    }

    pub fn endpoint(&self) -> String {
        self.h.endpoint()
    }

    pub async fn identity(&self, role: Role, name: &str) -> IdentityServiceClient<Channel> {
        IdentityServiceClient::new(self.h.channel(role, name).await)
    }

    pub async fn operator(&self) -> IdentityServiceClient<Channel> {
        self.identity(Role::Operator, "admin").await
    }

    /// Adds `facility` as operator `admin` and returns its token.
    pub async fn add_facility(&self, facility: &str, expires_s: u64) -> String {
        let request = pb::AddFacilityRequest {
            name: facility.to_owned(),
            expires_s,
            reenrol: false,
            coordinator: self.endpoint(),
            server_name: String::new(),
        };
        self.operator()
            .await
            .add_facility(request)
            .await
            .unwrap()
            .into_inner()
            .token
    }

    pub async fn revoke(&self, facility: &str) -> pb::Facility {
        let request = pb::RevokeFacilityRequest {
            name: facility.to_owned(),
            reason: "test".to_owned(),
        };
        self.operator()
            .await
            .revoke_facility(request)
            .await
            .unwrap()
            .into_inner()
    }

    /// An `EnrolmentService` client on a connection without a client certificate.
    pub async fn enrolment_without_certificate(&self) -> EnrolmentServiceClient<Channel> {
        let ca = std::fs::read(PkiPaths::new(&self.h.pki).ca_cert()).unwrap();
        let channel = harambee_agent::enrol::connect_without_certificate(
            &self.endpoint(),
            &ca,
            "",
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        EnrolmentServiceClient::new(channel)
    }

    /// A data directory with the bundled CSV of one site, for an enrolled agent.
    pub fn site_dir(&self, name: &str) -> PathBuf {
        let base = self.h.dir.path().join("sites").join(name);
        let sites = crate::demo::write_facilities(&base, Some(1)).unwrap();
        sites[0].dir.clone()
    }

    /// Adds `facility`, enrols it into a fresh directory holding a data set, and returns
    /// the agent's configuration (fast reconnects, as in the harness).
    pub async fn enrol_agent(&self, facility: &str) -> AgentConfig {
        let token = self.add_facility(facility, 3600).await;
        let dir = self.site_dir(facility);
        harambee_agent::enrol::enrol(&token, &dir, Duration::from_secs(5))
            .await
            .unwrap();
        agent_config(&dir)
    }

    /// Runs a real agent with `config` in this process.
    pub fn spawn_agent(&mut self, config: &AgentConfig) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(harambee_agent::runtime::run(config.clone(), async {
            let _ = rx.await;
        }));
        self.agents.push((tx, task));
    }

    pub async fn stop_agents(&mut self) {
        for (tx, task) in self.agents.drain(..) {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// Loads the `agent.toml` that `enrol` wrote in `dir`, after adding the harness's fast
/// network settings.
pub fn agent_config(dir: &Path) -> AgentConfig {
    let path = dir.join("agent.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    if !text.contains("[network]") {
        text.push_str("\n[network]\nconnect_timeout_s = 5\nmax_backoff_s = 2\n");
        std::fs::write(&path, text).unwrap();
    }
    AgentConfig::load(&path).unwrap()
}

/// The facilities the operator sees, by name: (connected, certificate sha256).
pub async fn agents(c: &Coord) -> Vec<pb::Agent> {
    let mut admin = c.h.admin().await;
    admin
        .list_agents(pb::ListAgentsRequest {})
        .await
        .unwrap()
        .into_inner()
        .agents
}

/// Polls `check` every 100 ms until it holds, failing after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Bytes in, bytes out: calls any gRPC method by path, whatever its message types.
#[derive(Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// Calls `Service.Method` (`/harambee.v1.Service/Method`) with one empty message (every field at its
/// default) as a bidirectional stream, which every kind of method accepts on the wire.
/// `Ok` if the call got past the server's checks far enough to answer with headers.
pub async fn raw_call(channel: Channel, rpc: &str) -> Result<(), tonic::Status> {
    // `Service.Method` of harambee.v1, or a fully qualified `package.Service.Method`.
    let full = if rpc.starts_with("grpc.") {
        rpc.to_owned()
    } else {
        format!("harambee.v1.{rpc}")
    };
    let (service, method) = full.rsplit_once('.').unwrap();
    let path: tonic::codegen::http::uri::PathAndQuery =
        format!("/{service}/{method}").parse().unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let request = tonic::Request::new(futures::stream::iter(vec![Vec::<u8>::new()]));
    let call = grpc.streaming(request, path, RawCodec);
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Ok(result) => result.map(|_| ()),
        Err(_) => panic!("{rpc} did not answer within 10 s"),
    }
}
