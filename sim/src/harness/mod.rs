//! A real federation in one test process: a coordinator serving mTLS gRPC on a loopback
//! port, and agents running the real agent runtime on their own CSV files.

pub mod browser;
pub mod identity;
pub mod proxy;
pub mod rogue;
pub mod scripted;
pub mod tinyproxy;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::demo::{self, Facility};
use harambee_agent::config::AgentConfig;
use harambee_coordinator::federation::{FederationSpec, KindName};
use harambee_coordinator::pki::{self, PkiPaths};
use harambee_coordinator::server::{self, Storage};
use harambee_coordinator::state::Settings;
use harambee_coordinator::wire;
use harambee_link::identity::Role;
use harambee_link::tls::ClientTls;
use harambee_proto::pb::{
    self, admin_service_client::AdminServiceClient, agent_service_client::AgentServiceClient,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub struct Harness {
    pub dir: tempfile::TempDir,
    pub pki: PathBuf,
    pub storage: Storage,
    pub port: u16,
    /// What [`Harness::start_coordinator`] runs with ([`test_settings`] unless changed).
    pub settings: Settings,
    server: Option<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
    agents: Vec<(oneshot::Sender<()>, JoinHandle<anyhow::Result<()>>)>,
}

/// Fast liveness so that dropouts show within a second or two.
pub fn test_settings() -> Settings {
    Settings {
        heartbeat_interval: Duration::from_millis(200),
        liveness_timeout: Duration::from_secs(2),
        reconnect_grace: Duration::from_secs(2),
        blob_retention: None,
        ..Settings::default()
    }
}

impl Harness {
    /// PKI and storage in a temp dir (`database_url` defaults to a SQLite file there);
    /// the coordinator is started on an ephemeral port.
    pub async fn start(database_url: Option<String>) -> Harness {
        let mut h = Harness::prepare(database_url);
        h.start_coordinator().await;
        h
    }

    /// PKI and storage only; the test runs the coordinator itself (e.g. as a process).
    pub fn prepare(database_url: Option<String>) -> Harness {
        init();
        let dir = tempfile::tempdir().unwrap();
        let pki = dir.path().join("pki");
        pki::init(&pki, &["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        pki::issue(&pki, Role::Operator, "admin", 1).unwrap();
        let storage = Storage {
            database_url: database_url.unwrap_or_else(|| {
                format!(
                    "sqlite://{}?mode=rwc",
                    dir.path().join("coordinator.db").display()
                )
            }),
            blob_dir: dir.path().join("blobs"),
            blobs_in_database: false,
            ledger_key: dir.path().join("ledger.key"),
        };
        Harness {
            dir,
            pki,
            storage,
            port: 0,
            settings: test_settings(),
            server: None,
            agents: Vec::new(),
        }
    }

    /// (Re)starts the coordinator on the same storage, on the same port if it had one.
    pub async fn start_coordinator(&mut self) {
        let coord = server::open(&self.storage, self.settings.clone())
            .await
            .unwrap();
        let tls = harambee_coordinator::server::tls::load_server_config(&PkiPaths::new(&self.pki))
            .unwrap();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .unwrap();
        self.port = listener.local_addr().unwrap().port();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::serve(coord, listener, tls, async {
            let _ = rx.await;
        }));
        self.server = Some((tx, task));
    }

    pub async fn stop_coordinator(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            task.await.unwrap().unwrap();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The bundled heart-disease data split into `n` facilities (default: its 4 sites).
    pub fn facilities(&self, n: Option<usize>) -> Vec<Facility> {
        let facilities = demo::write_facilities(self.dir.path(), n).unwrap();
        for f in &facilities {
            pki::issue(&self.pki, Role::Agent, &f.name, 1).unwrap();
        }
        facilities
    }

    /// Runs a real agent for `f` in this process, keeping copies of its uploads.
    pub fn spawn_agent(&mut self, f: &Facility) -> AgentConfig {
        self.spawn_agent_with(f, "")
    }

    /// [`Harness::spawn_agent`] with more TOML appended to the agent's configuration.
    /// A `[policy]` line given in `extra_toml` joins the open test policy ([`OPEN_POLICY`]).
    pub fn spawn_agent_with(&mut self, f: &Facility, extra_toml: &str) -> AgentConfig {
        let (policy_extra, rest) = match extra_toml.split_once("[policy]\n") {
            Some((before, after)) => {
                let end = after.find("\n[").map_or(after.len(), |i| i + 1);
                (
                    after[..end].to_owned(),
                    format!("{before}{}", &after[end..]),
                )
            }
            None => (String::new(), extra_toml.to_owned()),
        };
        let policy = format!("{OPEN_POLICY}{policy_extra}");
        let path = demo::write_agent_config(f, &self.endpoint(), &self.pki, &policy).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[egress]\nkeep_payloads = true\n");
        text.push_str(&rest);
        std::fs::write(&path, text).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(harambee_agent::runtime::run(config.clone(), async {
            let _ = rx.await;
        }));
        self.agents.push((tx, task));
        config
    }

    /// Runs a real agent for `f` against the coordinator at `endpoint` with exactly
    /// `policy` as its `[policy]` table (no open test policy), keeping copies of its uploads.
    pub fn spawn_agent_at(&mut self, f: &Facility, endpoint: &str, policy: &str) -> AgentConfig {
        let path = demo::write_agent_config(f, endpoint, &self.pki, policy).unwrap();
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[egress]\nkeep_payloads = true\n");
        std::fs::write(&path, text).unwrap();
        let config = AgentConfig::load(&path).unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(harambee_agent::runtime::run(config.clone(), async {
            let _ = rx.await;
        }));
        self.agents.push((tx, task));
        config
    }

    /// Runs a real agent with a configuration the test prepared.
    pub fn spawn_agent_config(&mut self, config: AgentConfig) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(harambee_agent::runtime::run(config, async {
            let _ = rx.await;
        }));
        self.agents.push((tx, task));
    }

    /// A channel authenticated with the certificate of `name` in `role` (issued if needed).
    pub async fn channel(&self, role: Role, name: &str) -> Channel {
        let paths = PkiPaths::new(&self.pki);
        if !paths.issued_cert(role, name).exists() {
            pki::issue(&self.pki, role, name, 1).unwrap();
        }
        let tls = ClientTls::from_files(
            &paths.ca_cert(),
            &paths.issued_cert(role, name),
            &paths.issued_key(role, name),
            "localhost",
        )
        .unwrap();
        harambee_link::tls::connect(&self.endpoint(), &tls, Duration::from_secs(5))
            .await
            .unwrap()
    }

    pub async fn admin(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channel(Role::Operator, "admin").await)
    }

    /// A raw AgentService client with the certificate of `facility`.
    pub async fn raw_agent(&self, facility: &str) -> AgentServiceClient<Channel> {
        AgentServiceClient::new(self.channel(Role::Agent, facility).await)
            .max_decoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(harambee_proto::MAX_MESSAGE_BYTES)
    }

    /// Stops the `index`-th agent spawned (and still running), in spawn order.
    pub async fn stop_agent(&mut self, index: usize) {
        let (tx, task) = self.agents.remove(index);
        let _ = tx.send(());
        let _ = task.await;
    }

    /// The ledger exported as an auditor into `name` in the harness's directory (its head
    /// file beside it).
    pub async fn export_ledger(&self, name: &str) -> PathBuf {
        let out = self.dir.path().join(name);
        harambee_coordinator::cli::audit::export(
            self.channel(Role::Auditor, "auditor").await,
            &out,
        )
        .await
        .unwrap();
        out
    }

    pub async fn stop_agents(&mut self) {
        for (tx, task) in self.agents.drain(..) {
            let _ = tx.send(());
            let _ = task.await;
        }
    }
}

/// The policy of test agents: any federation, model kind and label, plain uploads and
/// rounds without the consistency check allowed, sums of two, no privacy budget. The
/// adversarial tests use the defaults instead.
pub const OPEN_POLICY: &str = "allowed_federations = [\"*\"]\nallowed_model_kinds = [\"*\"]\nallowed_labels = [\"*\"]\nrequire_secure_aggregation = false\nrequire_consistency_check = false\nmin_contributors = 2\n";

/// The privacy status a hand-driven agent reports: its policy allows everything.
pub fn open_status() -> pb::PrivacyStatus {
    pb::PrivacyStatus {
        allowed_federations: vec!["*".into()],
        allowed_model_kinds: vec!["*".into()],
        delta: 1e-5,
        ..Default::default()
    }
}

/// A heartbeat of a hand-driven agent whose policy allows everything.
pub fn open_heartbeat() -> pb::HeartbeatRequest {
    pb::HeartbeatRequest {
        busy_round_id: 0,
        privacy: Some(open_status()),
        instance: String::new(),
    }
}

/// The egress receipt (JSON) a hand-driven agent `facility` signs for `payload`.
pub fn receipt_for(
    pki: &Path,
    facility: &str,
    federation: &str,
    round_id: u64,
    payload: &[u8],
) -> String {
    let key_pem = std::fs::read(PkiPaths::new(pki).issued_key(Role::Agent, facility)).unwrap();
    let key = harambee_link::identity::signing_key_from_pem(&key_pem).unwrap();
    let receipt = harambee_privacy::ledger::EgressReceipt {
        facility: facility.to_owned(),
        federation: federation.to_owned(),
        round_id,
        update_sha256: harambee_privacy::ledger::Sha256Digest::of(payload),
        bytes: payload.len() as u64,
        policy_sha256: harambee_privacy::ledger::Sha256Digest::of(b"test policy"),
        clipping_norm: 0.0,
        noise_multiplier: 0.0,
        epsilon_spent: 0.0,
        delta: 1e-5,
        aggregation: None,
        secagg_params: None,
        dp_sgd: None,
    }
    .sign(&key)
    .unwrap();
    serde_json::to_string(&receipt).unwrap()
}

/// The demo's federation over `facilities`, with test deadlines.
pub fn spec(facilities: &[Facility], min_agents: u32, training_s: u32) -> FederationSpec {
    let mut spec = demo::federation_spec(KindName::LogisticRegression, 2, facilities);
    spec.min_agents = min_agents;
    spec.deadlines.selecting_s = 20;
    spec.deadlines.training_s = training_s;
    spec.deadlines.evaluating_s = 20;
    spec
}

/// The same federation with secure aggregation turned off (the coordinator sees updates).
pub fn plain(mut spec: FederationSpec) -> FederationSpec {
    spec.secure_aggregation.enabled = false;
    spec
}

pub async fn create_federation(
    admin: &mut AdminServiceClient<Channel>,
    spec: &FederationSpec,
) -> pb::Federation {
    admin
        .create_federation(pb::CreateFederationRequest {
            config: Some(wire::federation_config(spec, 0)),
            init_from: None,
        })
        .await
        .unwrap()
        .into_inner()
}

pub async fn wait_connected(admin: &mut AdminServiceClient<Channel>, names: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let agents = admin
            .list_agents(pb::ListAgentsRequest {})
            .await
            .unwrap()
            .into_inner()
            .agents;
        if names
            .iter()
            .all(|n| agents.iter().any(|a| a.facility == *n && a.connected))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agents {names:?} did not connect; known: {agents:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn run_round(admin: &mut AdminServiceClient<Channel>, federation: &str) -> pb::Round {
    let round = admin
        .start_round(pb::StartRoundRequest {
            federation: federation.to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    wait_round(admin, round.id).await
}

pub async fn wait_round(admin: &mut AdminServiceClient<Channel>, round_id: u64) -> pb::Round {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let round = admin
            .get_round(pb::GetRoundRequest { round_id })
            .await
            .unwrap()
            .into_inner();
        if matches!(
            round.state(),
            pb::RoundState::Committed | pb::RoundState::Failed
        ) {
            return round;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "round {round_id} did not end: {round:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A model version's parameters, through the operator's export RPC.
pub async fn export(
    admin: &mut AdminServiceClient<Channel>,
    federation: &str,
    version: u32,
) -> Vec<f32> {
    use futures::StreamExt;
    let mut stream = admin
        .export_model(pb::ExportModelRequest {
            federation: federation.to_owned(),
            version: Some(version),
        })
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(part) = stream.next().await {
        if let Some(pb::export_model_response::Part::Chunk(c)) = part.unwrap().part {
            bytes.extend_from_slice(&c.data);
        }
    }
    harambee_core::params::from_le_bytes(&bytes).unwrap()
}

/// `audit verify` of a ledger export against a facility's own privacy log (the key it
/// pinned): the report and whether it verified.
pub fn audit_facility(ledger: &Path, config: &AgentConfig) -> (String, bool) {
    harambee_agent::audit::verify_report(&harambee_agent::audit::VerifyArgs {
        ledger: ledger.to_owned(),
        head: None,
        ledger_key: None,
        receipts: Some(config.state_dir.join(harambee_privacy::log::LOG_FILE)),
        model_card: None,
    })
    .unwrap()
}

/// The updates an agent uploaded in `round_id`, read back from its own egress log and
/// payload copies: (n_samples, values).
pub fn uploads_of(config: &AgentConfig, round_id: u64) -> Vec<(u64, Vec<f32>)> {
    let log = std::fs::read_to_string(config.state_dir.join("egress.jsonl")).unwrap_or_default();
    log.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["kind"] == "update" && r["round_id"] == round_id)
        .map(|r| {
            let sha = r["sha256"].as_str().unwrap();
            let bytes =
                std::fs::read(config.state_dir.join("egress").join(format!("{sha}.f32"))).unwrap();
            (
                r["n_samples"].as_u64().unwrap(),
                harambee_core::params::from_le_bytes(&bytes).unwrap(),
            )
        })
        .collect()
}

/// The update an agent held (unmasked) in a secure round, and its training sample count.
pub fn unmasked_of(config: &AgentConfig, round_id: u64) -> Option<(u64, Vec<f32>)> {
    let log = std::fs::read_to_string(config.state_dir.join("egress.jsonl")).ok()?;
    let n = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|r| r["kind"] == "trained" && r["round_id"] == round_id)?["n_samples"]
        .as_u64()?;
    let bytes = std::fs::read(
        config
            .state_dir
            .join("egress")
            .join(format!("round-{round_id}-unmasked.f32")),
    )
    .ok()?;
    Some((n, harambee_core::params::from_le_bytes(&bytes).unwrap()))
}

/// A fresh PostgreSQL database for one test, dropped by [`PgDatabase::drop_now`].
pub struct PgDatabase {
    admin: sea_orm::DatabaseConnection,
    pub name: String,
    pub url: String,
}

impl PgDatabase {
    pub async fn create() -> PgDatabase {
        use sea_orm::ConnectionTrait;
        let base =
            std::env::var("HARAMBEE_TEST_PG_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned());
        let admin = sea_orm::Database::connect(base.as_str())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is unreachable at {base}: {e}; start it or set HARAMBEE_TEST_PG_URL"
                )
            });
        let name = format!("harambee_e2e_{:016x}", rand::random::<u64>());
        admin
            .execute_unprepared(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap();
        let server = base.rsplit_once('/').map(|(s, _)| s).unwrap_or(&base);
        let url = format!("{server}/{name}");
        PgDatabase { admin, name, url }
    }

    pub async fn drop_now(self) {
        use sea_orm::ConnectionTrait;
        self.admin
            .execute_unprepared(&format!("DROP DATABASE {} WITH (FORCE)", self.name))
            .await
            .unwrap();
    }
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}
