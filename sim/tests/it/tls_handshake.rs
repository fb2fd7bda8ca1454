//! Mutual TLS end to end over loopback: a real tonic server fed by `tls::tls_incoming`, the
//! agent's real client, and raw rustls clients for what the agent's client cannot do
//! (no certificate, TLS 1.2). Certificates come from `pki::init` / `pki::issue`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt};
use harambee_coordinator::pki::{self, PkiError, PkiPaths};
use harambee_coordinator::server::tls;
use harambee_coordinator::service::caller::require_role;
use harambee_link::identity::{IdentityError, PeerIdentity, Role};
use harambee_link::tls::{self as client, ClientTls, FailureKind, TlsError};
use harambee_proto::pb;
use harambee_proto::pb::agent_service_client::AgentServiceClient;
use harambee_proto::pb::agent_service_server::{AgentService, AgentServiceServer};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::{Code, Request, Response, Status};

const TIMEOUT: Duration = Duration::from_secs(5);

/// A federation: a PKI directory with a CA, the server certificate, and issued clients.
struct Federation {
    dir: tempfile::TempDir,
}

impl Federation {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        pki::init(dir.path(), &[]).unwrap();
        Federation { dir }
    }

    fn paths(&self) -> PkiPaths {
        PkiPaths::new(self.dir.path())
    }

    /// Client TLS files for a freshly issued certificate, trusting `ca_of`'s CA.
    fn client(&self, role: Role, name: &str, ca_of: &Federation) -> ClientTls {
        let (cert, key) = pki::issue(self.dir.path(), role, name, 90).unwrap();
        ClientTls::from_files(&ca_of.paths().ca_cert(), &cert, &key, "localhost").unwrap()
    }
}

/// Records who called `heartbeat`; the call requires the agent role.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<PeerIdentity>>>,
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl AgentService for Recorder {
    type OpenTaskStreamStream = BoxStream<pb::Task>;
    type DownloadModelStream = BoxStream<pb::Chunk>;

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let identity = require_role(&request, Role::Agent)?;
        self.seen.lock().unwrap().push(identity);
        Ok(Response::new(pb::HeartbeatResponse {
            server_time_unix_ms: 0,
            interval_ms: 1000,
            notice: String::new(),
        }))
    }

    async fn open_task_stream(
        &self,
        _: Request<pb::OpenTaskStreamRequest>,
    ) -> Result<Response<Self::OpenTaskStreamStream>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn download_model(
        &self,
        _: Request<pb::DownloadModelRequest>,
    ) -> Result<Response<Self::DownloadModelStream>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn upload_update(
        &self,
        _: Request<tonic::Streaming<pb::UploadUpdateRequest>>,
    ) -> Result<Response<pb::UploadUpdateResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn report_metrics(
        &self,
        _: Request<pb::ReportMetricsRequest>,
    ) -> Result<Response<pb::ReportMetricsResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn submit_sec_agg(
        &self,
        _: Request<pb::SecAggSubmission>,
    ) -> Result<Response<pb::SecAggAck>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn decline_task(
        &self,
        _: Request<pb::DeclineTaskRequest>,
    ) -> Result<Response<pb::DeclineTaskResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn get_ledger_proof(
        &self,
        _: Request<pb::LedgerProofRequest>,
    ) -> Result<Response<pb::LedgerProof>, Status> {
        Err(Status::unimplemented("test server"))
    }

    async fn cosign_tree_head(
        &self,
        _: Request<pb::CosignTreeHeadRequest>,
    ) -> Result<Response<pb::CosignTreeHeadResponse>, Status> {
        Err(Status::unimplemented("test server"))
    }
}

/// A tonic server over `tls_incoming` on 127.0.0.1:0, stopped when dropped.
struct TestServer {
    addr: SocketAddr,
    recorder: Recorder,
    _shutdown: tokio::sync::oneshot::Sender<()>,
}

impl TestServer {
    async fn start(federation: &Federation) -> Self {
        let config = tls::load_server_config(&federation.paths()).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let recorder = Recorder::default();
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(AgentServiceServer::new(recorder.clone()))
            .serve_with_incoming_shutdown(
                tls::tls_incoming(listener, config, tls::ConnectionLimits::default()),
                async {
                    let _ = stopped.await;
                },
            );
        tokio::spawn(server);
        TestServer {
            addr,
            recorder,
            _shutdown: shutdown,
        }
    }

    fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn seen(&self) -> Vec<PeerIdentity> {
        self.recorder.seen.lock().unwrap().clone()
    }
}

async fn heartbeat(channel: tonic::transport::Channel) -> Result<pb::HeartbeatResponse, Status> {
    let mut client = AgentServiceClient::new(channel);
    tokio::time::timeout(
        TIMEOUT,
        client.heartbeat(pb::HeartbeatRequest {
            busy_round_id: 0,
            privacy: None,
            instance: String::new(),
        }),
    )
    .await
    .expect("heartbeat timed out")
    .map(Response::into_inner)
}

fn connect_error(result: Result<tonic::transport::Channel, TlsError>) -> (FailureKind, String) {
    match result {
        Ok(_) => panic!("connection unexpectedly succeeded"),
        Err(e) => (
            e.failure_kind()
                .unwrap_or_else(|| panic!("not a connection failure: {e}")),
            e.to_string(),
        ),
    }
}

fn first_cert_der(path: &Path) -> Vec<u8> {
    CertificateDer::from_pem_file(path).unwrap().to_vec()
}

/// A raw rustls client config trusting `federation`'s CA, for handshakes the agent's own
/// client refuses to attempt.
fn raw_client_config(
    federation: &Federation,
    versions: &[&'static rustls::SupportedProtocolVersion],
    client_cert: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(federation.paths().ca_cert()).unwrap())
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_cert {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(cert).unwrap()],
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

/// Runs a raw TLS client against `addr` up to the server's first answer after the
/// handshake, and returns the rustls error that ended it.
async fn raw_handshake_error(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> rustls::Error {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = ServerName::try_from("localhost").unwrap();
    let io_error = match tokio::time::timeout(TIMEOUT, connector.connect(name, tcp))
        .await
        .unwrap()
    {
        Err(e) => e,
        // TLS 1.3: the client is done before the server has judged its certificate; the
        // verdict arrives as an alert on the first read.
        Ok(mut stream) => {
            let mut buf = [0u8; 64];
            match tokio::time::timeout(TIMEOUT, stream.read(&mut buf))
                .await
                .unwrap()
            {
                Err(e) => e,
                Ok(n) => panic!("server accepted the connection and sent {n} bytes"),
            }
        }
    };
    io_error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
        .unwrap_or_else(|| panic!("not a TLS error: {io_error:?}"))
        .clone()
}

#[tokio::test]
async fn tls_agent_from_the_federation_is_identified() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let agent = federation.client(Role::Agent, "kisumu-crh", &federation);

    let channel = client::connect(&server.endpoint(), &agent, TIMEOUT)
        .await
        .unwrap();
    heartbeat(channel).await.unwrap();

    let cert = federation.paths().issued_cert(Role::Agent, "kisumu-crh");
    assert_eq!(
        server.seen(),
        vec![PeerIdentity {
            role: Role::Agent,
            name: "kisumu-crh".to_owned(),
            cert_sha256: hex::encode(Sha256::digest(first_cert_der(&cert))),
        }]
    );
}

#[tokio::test]
async fn tls_server_name_defaults_to_the_endpoint_host() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let mut agent = federation.client(Role::Agent, "nakuru", &federation);
    // The endpoint host 127.0.0.1 is an IP SAN of the default server certificate.
    agent.server_name = String::new();
    let channel = client::connect(&server.endpoint(), &agent, TIMEOUT)
        .await
        .unwrap();
    heartbeat(channel).await.unwrap();
    assert_eq!(server.seen()[0].name, "nakuru");
}

#[tokio::test]
async fn tls_wrong_role_is_permission_denied() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let operator = federation.client(Role::Operator, "moh-ops", &federation);

    let channel = client::connect(&server.endpoint(), &operator, TIMEOUT)
        .await
        .unwrap();
    let status = heartbeat(channel).await.unwrap_err();

    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(
        status.message().contains("requires the agent role"),
        "{status:?}"
    );
    assert!(status.message().contains("operator"), "{status:?}");
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn tls_client_from_another_ca_is_refused_at_the_handshake() {
    let federation = Federation::new();
    let other = Federation::new();
    let server = TestServer::start(&federation).await;
    // Trusts the right CA, but its certificate comes from another federation's CA.
    let impostor = other.client(Role::Agent, "kisumu-crh", &federation);

    let (kind, message) =
        connect_error(client::connect(&server.endpoint(), &impostor, TIMEOUT).await);
    assert_eq!(kind, FailureKind::ClientRejected, "{message}");
    assert!(
        message.contains("not signed by the federation CA"),
        "{message}"
    );

    let (cert, key) = (
        other.paths().issued_cert(Role::Agent, "kisumu-crh"),
        other.paths().issued_key(Role::Agent, "kisumu-crh"),
    );
    let config = raw_client_config(&federation, &[&rustls::version::TLS13], Some((&cert, &key)));
    let error = raw_handshake_error(server.addr, config).await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
    );
    assert!(server.seen().is_empty());
}

#[tokio::test]
async fn tls_client_without_certificate_is_refused() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let config = raw_client_config(&federation, &[&rustls::version::TLS13], None);
    let error = raw_handshake_error(server.addr, config).await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
    );
}

#[tokio::test]
async fn tls_tls12_only_client_is_refused() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let (cert, key) = pki::issue(federation.dir.path(), Role::Agent, "old-stack", 90).unwrap();
    let config = raw_client_config(&federation, &[&rustls::version::TLS12], Some((&cert, &key)));
    let error = raw_handshake_error(server.addr, config).await;
    assert_eq!(
        error,
        rustls::Error::AlertReceived(rustls::AlertDescription::ProtocolVersion)
    );
}

#[tokio::test]
async fn tls_server_from_another_ca_is_not_trusted() {
    let federation = Federation::new();
    let other = Federation::new();
    let server = TestServer::start(&federation).await;
    // What an agent sees behind a TLS-inspecting proxy: a server certificate its CA did
    // not sign.
    let agent = federation.client(Role::Agent, "kisumu-crh", &other);

    let (kind, message) = connect_error(client::connect(&server.endpoint(), &agent, TIMEOUT).await);
    assert_eq!(kind, FailureKind::ServerNotTrusted, "{message}");
    assert!(
        message.contains("not signed by the configured CA"),
        "{message}"
    );
    assert!(message.contains("TLS-inspecting proxy"), "{message}");
}

#[tokio::test]
async fn tls_server_name_not_in_certificate_is_explained() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    let mut agent = federation.client(Role::Agent, "kisumu-crh", &federation);
    agent.server_name = "coordinator.health.go.ke".to_owned();

    let (kind, message) = connect_error(client::connect(&server.endpoint(), &agent, TIMEOUT).await);
    assert_eq!(kind, FailureKind::ServerNotTrusted, "{message}");
    assert!(
        message.contains("not valid for \"coordinator.health.go.ke\""),
        "{message}"
    );
}

#[tokio::test]
async fn tls_unreachable_coordinator_is_explained() {
    let federation = Federation::new();
    let agent = federation.client(Role::Agent, "kisumu-crh", &federation);
    // A port that was just free: nothing listens there.
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("https://127.0.0.1:{port}");

    let (kind, message) = connect_error(client::connect(&endpoint, &agent, TIMEOUT).await);
    assert_eq!(kind, FailureKind::Unreachable, "{message}");
    assert!(kind.is_transient());
    assert!(message.contains("is the coordinator running"), "{message}");
}

#[tokio::test]
async fn tls_slow_or_garbage_clients_do_not_block_others() {
    let federation = Federation::new();
    let server = TestServer::start(&federation).await;
    // Ten clients that connect and say nothing, one that speaks HTTP/1 in clear text.
    let mut idle = Vec::new();
    for _ in 0..10 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let mut garbage = TcpStream::connect(server.addr).await.unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();

    let agent = federation.client(Role::Agent, "kisumu-crh", &federation);
    let started = Instant::now();
    let channel = client::connect(&server.endpoint(), &agent, TIMEOUT)
        .await
        .unwrap();
    heartbeat(channel).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.seen().len(), 1);
    drop(idle);
}

#[tokio::test]
async fn tls_incoming_yields_only_established_connections() {
    let federation = Federation::new();
    let config = tls::load_server_config(&federation.paths()).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = Box::pin(tls::tls_incoming(
        listener,
        config,
        tls::ConnectionLimits::default(),
    ));

    // A client without a certificate: refused, never yielded.
    let no_cert = raw_client_config(&federation, &[&rustls::version::TLS13], None);
    let refused = tokio::spawn(raw_handshake_error(addr, no_cert));
    tokio::select! {
        _ = incoming.next() => panic!("a refused connection was yielded"),
        error = refused => assert_eq!(
            error.unwrap(),
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired)
        ),
    }

    // A good client: yielded, with its certificate on the session.
    let (cert, key) = pki::issue(federation.dir.path(), Role::Auditor, "auditor-1", 90).unwrap();
    let good = raw_client_config(&federation, &[&rustls::version::TLS13], Some((&cert, &key)));
    let client = tokio::spawn(async move {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(good)
            .connect(name, tcp)
            .await
            .unwrap()
    });
    let stream = tokio::time::timeout(TIMEOUT, incoming.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let (_, session) = stream.get_ref();
    assert_eq!(
        session.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(session.alpn_protocol(), Some(&b"h2"[..]));
    let identity =
        harambee_link::identity::identity_from_cert(&session.peer_certificates().unwrap()[0])
            .unwrap();
    assert_eq!(
        (identity.role, identity.name.as_str()),
        (Role::Auditor, "auditor-1")
    );
    drop(client.await.unwrap());
}

/// A certificate signed by `federation`'s CA with arbitrary SANs.
fn cert_with_sans(federation: &Federation, sans: Vec<rcgen::SanType>) -> Vec<u8> {
    let paths = federation.paths();
    let ca_key =
        rcgen::KeyPair::from_pem(&std::fs::read_to_string(paths.ca_key()).unwrap()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(paths.ca_cert()).unwrap(), ca_key)
            .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = sans;
    params
        .signed_by(&rcgen::KeyPair::generate().unwrap(), &issuer)
        .unwrap()
        .der()
        .to_vec()
}

fn uri(s: &str) -> rcgen::SanType {
    rcgen::SanType::URI(s.try_into().unwrap())
}

#[test]
fn tls_identity_from_cert_requires_one_valid_harambee_san() {
    let federation = Federation::new();
    let ok = cert_with_sans(&federation, vec![uri("harambee://operator/moh-ops")]);
    let identity = harambee_link::identity::identity_from_cert(&ok).unwrap();
    assert_eq!(
        (identity.role, identity.name.as_str()),
        (Role::Operator, "moh-ops")
    );

    let no_san = cert_with_sans(&federation, vec![]);
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&no_san),
        Err(IdentityError::MissingIdentity)
    ));
    let dns_only = cert_with_sans(
        &federation,
        vec![rcgen::SanType::DnsName("kisumu".try_into().unwrap())],
    );
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&dns_only),
        Err(IdentityError::MissingIdentity)
    ));
    let other_scheme = cert_with_sans(&federation, vec![uri("spiffe://agent/kisumu")]);
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&other_scheme),
        Err(IdentityError::MissingIdentity)
    ));

    let bad_role = cert_with_sans(&federation, vec![uri("harambee://admin/kisumu")]);
    assert!(
        matches!(harambee_link::identity::identity_from_cert(&bad_role), Err(IdentityError::InvalidRole(r)) if r == "admin")
    );
    let bad_name = cert_with_sans(&federation, vec![uri("harambee://agent/../etc")]);
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&bad_name),
        Err(IdentityError::MalformedIdentity(_))
    ));
    let no_name = cert_with_sans(&federation, vec![uri("harambee://agent")]);
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&no_name),
        Err(IdentityError::MalformedIdentity(_))
    ));
    let two = cert_with_sans(
        &federation,
        vec![uri("harambee://agent/a"), uri("harambee://operator/a")],
    );
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&two),
        Err(IdentityError::AmbiguousIdentity(2))
    ));

    // The coordinator's own certificate is no client identity.
    let server = first_cert_der(&federation.paths().server_cert());
    assert!(matches!(
        harambee_link::identity::identity_from_cert(&server),
        Err(IdentityError::MissingIdentity)
    ));
    assert!(matches!(
        harambee_link::identity::identity_from_cert(b"not der"),
        Err(IdentityError::BadCertificate(_))
    ));
}

#[test]
fn tls_init_refuses_to_overwrite_an_existing_ca() {
    let federation = Federation::new();
    let paths = federation.paths();
    let before = std::fs::read(paths.ca_cert()).unwrap();
    let error = pki::init(federation.dir.path(), &[]).unwrap_err();
    assert!(matches!(error, PkiError::AlreadyInitialized(_)), "{error}");
    assert_eq!(std::fs::read(paths.ca_cert()).unwrap(), before);

    // A bad server name is refused before anything is written.
    let dir = tempfile::tempdir().unwrap();
    let error = pki::init(dir.path(), &["bad name".to_owned()]).unwrap_err();
    assert!(
        matches!(error, PkiError::InvalidServerName { .. }),
        "{error}"
    );
    assert!(!PkiPaths::new(dir.path()).ca_key().exists());
}

#[test]
fn tls_private_keys_are_mode_0600() {
    let federation = Federation::new();
    let (cert, key) = pki::issue(federation.dir.path(), Role::Agent, "kisumu-crh", 30).unwrap();
    // Renewal replaces the pair and keeps the mode.
    let (_, key_again) = pki::issue(federation.dir.path(), Role::Agent, "kisumu-crh", 30).unwrap();
    assert_eq!(key, key_again);
    let paths = federation.paths();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    for key in [paths.ca_key(), paths.server_key(), key] {
        assert_eq!(mode(&key), 0o600, "{}", key.display());
    }
    for cert in [paths.ca_cert(), paths.server_cert(), cert] {
        assert_eq!(mode(&cert), 0o644, "{}", cert.display());
    }
    assert_eq!(mode(&paths.issued_dir()), 0o700);
}

#[test]
fn tls_client_files_with_a_foreign_key_are_refused_up_front() {
    let federation = Federation::new();
    let (cert, _) = pki::issue(federation.dir.path(), Role::Agent, "kisumu-crh", 90).unwrap();
    let (_, other_key) = pki::issue(federation.dir.path(), Role::Agent, "nakuru", 90).unwrap();
    let error = ClientTls::from_files(
        &federation.paths().ca_cert(),
        &cert,
        &other_key,
        "localhost",
    )
    .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("does not belong to the certificate"),
        "{message}"
    );
    assert!(message.contains("agent-nakuru.key"), "{message}");
}

#[test]
fn tls_issue_rejects_bad_names_and_missing_ca() {
    let federation = Federation::new();
    let error = pki::issue(federation.dir.path(), Role::Agent, "../ca", 90).unwrap_err();
    assert!(
        matches!(error, PkiError::Identity(IdentityError::InvalidName(_))),
        "{error}"
    );
    let error = pki::issue(federation.dir.path(), Role::Agent, "kisumu", 0).unwrap_err();
    assert!(matches!(error, PkiError::InvalidValidity(0)), "{error}");
    let error = pki::issue(federation.dir.path(), Role::Agent, "kisumu", u32::MAX).unwrap_err();
    assert!(matches!(error, PkiError::InvalidValidity(_)), "{error}");
    let empty = tempfile::tempdir().unwrap();
    let error = pki::issue(empty.path(), Role::Agent, "kisumu", 90).unwrap_err();
    assert!(matches!(error, PkiError::Io { .. }), "{error}");
}
