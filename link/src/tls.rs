//! The client side of mutual TLS to the coordinator, shared by the agent and the
//! coordinator's admin CLI.
//!
//! [`connect`] opens a tonic [`Channel`] over our own connector (TCP, then tokio-rustls)
//! rather than tonic's `ClientTlsConfig`, because that is what lets us require TLS 1.3
//! (tonic's config always allows 1.2) and turn TLS failures into messages a facility's IT
//! staff can act on. The configuration uses the ring provider explicitly and does not rely
//! on a process-wide default provider.
//!
//! In TLS 1.3 the client finishes its handshake before the server has judged the client's
//! certificate, so a rejected certificate only shows up as an alert on the first read. The
//! connector therefore waits, after the handshake, for the server's first record (the
//! coordinator's HTTP/2 SETTINGS, sent unprompted) or its alert, at most
//! [`ACCEPTANCE_WAIT`]; a rejection becomes a [`FailureKind::ClientRejected`] error from
//! [`connect`] instead of an opaque transport error on the first call.
//!
//! The channel sends HTTP/2 PINGs every [`KEEPALIVE_INTERVAL`], also while idle, so that
//! NAT gateways and hospital firewalls do not silently drop the long-lived task stream.
//!
//! With a [`ProxyConfig`] naming a proxy for the coordinator's host, the connector opens
//! an HTTP CONNECT tunnel through it first ([`crate::proxy`]) and runs TLS inside it, so
//! the proxy sees only the coordinator's host and port; its refusals are told apart from
//! the coordinator's ([`FailureKind::ProxyUnreachable`], [`FailureKind::ProxyRefused`]).
//!
//! This module knows nothing of identities; the coordinator maps certificates to roles.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::proxy::{self, Proxy, ProxyConfig, TunnelError};

/// HTTP/2 PING interval, sent while idle too.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// A PING unanswered for this long closes the connection (and the channel reconnects).
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// After the handshake, how long to wait for the coordinator to accept or reject our
/// certificate before handing the connection over anyway.
pub const ACCEPTANCE_WAIT: Duration = Duration::from_secs(5);

/// The files an agent (or operator) needs to reach the coordinator, in PEM.
#[derive(Clone)]
pub struct ClientTls {
    /// The federation CA certificate(s) the coordinator's certificate must chain to.
    pub ca_pem: Vec<u8>,
    /// Our certificate (and intermediates, if any).
    pub cert_pem: Vec<u8>,
    /// Our private key.
    pub key_pem: Vec<u8>,
    /// The name the coordinator's certificate must be valid for (DNS name or IP address);
    /// empty means the host of the endpoint.
    pub server_name: String,
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the private key.
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Reads the three PEM files and checks that they parse and that the key belongs to the
    /// certificate, so mistakes surface at start-up naming the file at fault.
    pub fn from_files(
        ca: &Path,
        cert: &Path,
        key: &Path,
        server_name: &str,
    ) -> Result<Self, TlsError> {
        let tls = ClientTls {
            ca_pem: read(ca, "CA certificate")?,
            cert_pem: read(cert, "client certificate")?,
            key_pem: read(key, "client key")?,
            server_name: server_name.to_owned(),
        };
        parse_certs(&tls.ca_pem, "CA certificate", Some(ca))?;
        parse_certs(&tls.cert_pem, "client certificate", Some(cert))?;
        parse_key(&tls.key_pem, Some(key))?;
        match client_config(&tls) {
            Err(TlsError::Config(rustls::Error::InconsistentKeys(_))) => Err(TlsError::Pem {
                what: describe("client key", Some(key)),
                reason: format!("does not belong to the certificate {}", cert.display()),
            }),
            Err(other) => Err(other),
            Ok(_) => Ok(tls),
        }
    }
}

/// Why a connection attempt failed, for callers deciding whether retrying can help.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// No TCP connection (refused, unreachable, DNS); usually transient.
    Unreachable,
    /// TCP connect or TLS handshake took too long; usually transient.
    TimedOut,
    /// The server's certificate failed verification (wrong CA, name, expired).
    ServerNotTrusted,
    /// The coordinator refused our certificate.
    ClientRejected,
    /// The peer does not speak TLS 1.3 with HTTP/2, or broke the protocol: probably not
    /// the coordinator, or a middlebox in the way.
    Protocol,
    /// No TCP connection to the configured proxy; usually transient.
    ProxyUnreachable,
    /// The proxy refused the tunnel (authentication, policy) or did not answer as an HTTP
    /// proxy: its configuration, or ours, must change.
    ProxyRefused,
}

impl FailureKind {
    /// Whether retrying later can help without anyone changing configuration.
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            FailureKind::Unreachable | FailureKind::TimedOut | FailureKind::ProxyUnreachable
        )
    }
}

/// Errors of client TLS set-up and connection.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("CA certificate is not usable as a trust anchor: {0}")]
    TrustAnchor(String),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid coordinator endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error(
        "invalid coordinator server name {0:?}: expected a DNS name or an IP address from the coordinator's certificate"
    )]
    ServerName(String),
    #[error("cannot connect to the coordinator at {addr}: {reason}")]
    Connect {
        addr: String,
        kind: FailureKind,
        reason: String,
    },
}

impl TlsError {
    /// The kind of a connection failure; `None` for configuration errors, which retrying
    /// cannot fix.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            TlsError::Connect { kind, .. } => Some(*kind),
            _ => None,
        }
    }
}

/// The client configuration [`connect`] uses: ring provider, TLS 1.3 only, ALPN `h2`, our
/// certificate presented, the server verified against `tls.ca_pem`, no session resumption.
pub fn client_config(tls: &ClientTls) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(&tls.ca_pem, "CA certificate", None)? {
        roots
            .add(ca)
            .map_err(|e| TlsError::TrustAnchor(e.to_string()))?;
    }
    let chain = parse_certs(&tls.cert_pem, "client certificate", None)?;
    let key = parse_key(&tls.key_pem, None)?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// Connects to the coordinator at `endpoint` (`https://host:port`; the port defaults to
/// 443) directly, with mutual TLS, and returns a channel for any generated client.
///
/// `connect_timeout` bounds the TCP connect and, separately, the TLS handshake. The
/// channel reconnects by itself later, through the same checks. Errors name the address
/// and say what to check, e.g. a TLS-inspecting proxy when the coordinator's certificate
/// is not signed by the configured CA.
pub async fn connect(
    endpoint: &str,
    tls: &ClientTls,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    connect_via(endpoint, tls, &ProxyConfig::direct(), connect_timeout).await
}

/// [`connect`] through the proxy `proxies` names for the endpoint's host, if any (every
/// reconnection of the channel goes through it too).
pub async fn connect_via(
    endpoint: &str,
    tls: &ClientTls,
    proxies: &ProxyConfig,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    connect_with_config(
        endpoint,
        client_config(tls)?,
        &tls.server_name,
        proxies,
        connect_timeout,
    )
    .await
}

/// [`connect_via`] with a client configuration of the caller's, e.g. one without a client
/// certificate for enrolment (the agent's `enrol`). `server_name` empty means the host
/// of the endpoint.
pub async fn connect_with_config(
    endpoint: &str,
    config: Arc<ClientConfig>,
    server_name: &str,
    proxies: &ProxyConfig,
    connect_timeout: Duration,
) -> Result<Channel, TlsError> {
    let target = Target::parse(endpoint)?;
    let name = if server_name.is_empty() {
        target.host.clone()
    } else {
        server_name.to_owned()
    };
    let server_name =
        ServerName::try_from(name.clone()).map_err(|_| TlsError::ServerName(name.clone()))?;
    let connector = Connector {
        tls: TlsConnector::from(config),
        server_name,
        host: target.host.clone(),
        port: target.port,
        proxy: proxies.for_target(&target.host, target.port).cloned(),
        timeout: connect_timeout,
    };
    let endpoint_err = |e: tonic::transport::Error| TlsError::Endpoint {
        endpoint: endpoint.to_owned(),
        reason: e.to_string(),
    };
    // The connector does TLS itself; with an https URI tonic would refuse to connect
    // without its own TLS config, so the endpoint says http and the origin (which sets
    // :scheme and :authority on requests) says https.
    let origin: Uri = format!("https://{}", target.authority).parse().map_err(
        |e: tonic::codegen::http::uri::InvalidUri| TlsError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: e.to_string(),
        },
    )?;
    let channel = Endpoint::from_shared(format!("http://{}", target.authority))
        .map_err(endpoint_err)?
        .origin(origin)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true)
        .connect_with_connector(connector)
        .await;
    channel.map_err(|e| {
        let addr = target.addr();
        match find_failure(&e) {
            Some(failure) => TlsError::Connect {
                addr,
                kind: failure.kind,
                reason: failure.reason.clone(),
            },
            None => TlsError::Connect {
                addr,
                kind: FailureKind::Protocol,
                reason: format!("HTTP/2 connection failed: {}", error_chain(&e)),
            },
        }
    })
}

/// Host and port of an `https://` endpoint.
pub struct Target {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    authority: String,
}

impl Target {
    /// Parses `https://host[:port]`, the port defaulting to 443.
    pub fn parse(endpoint: &str) -> Result<Self, TlsError> {
        let invalid = |reason: &str| TlsError::Endpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        let uri: Uri = endpoint
            .parse()
            .map_err(|e: tonic::codegen::http::uri::InvalidUri| invalid(&e.to_string()))?;
        if uri.scheme_str() != Some("https") {
            return Err(invalid("expected https://host:port"));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(invalid("expected no path after host:port"));
        }
        let host = uri.host().ok_or_else(|| invalid("missing host"))?;
        let port = uri.port_u16().unwrap_or(443);
        // IPv6 literals come bracketed, as they must be in the authority.
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Target {
            authority: format!("{host}:{port}"),
            host: bare,
            port,
        })
    }

    /// `host:port`, bracketing an IPv6 address.
    pub fn addr(&self) -> String {
        self.authority.clone()
    }
}

/// Why one connection attempt failed; travels through tonic's error chain to [`connect`].
#[derive(Clone, Debug)]
struct Failure {
    kind: FailureKind,
    reason: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Failure {}

fn find_failure<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Failure> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(failure) = e.downcast_ref::<Failure>() {
            return Some(failure);
        }
        current = e.source();
    }
    None
}

fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut current = error.source();
    while let Some(e) = current {
        out.push_str(": ");
        out.push_str(&e.to_string());
        current = e.source();
    }
    out
}

/// tonic's connector: TCP to the coordinator (or a tunnel through the proxy), TLS, then
/// wait for its verdict on our certificate.
#[derive(Clone)]
struct Connector {
    tls: TlsConnector,
    server_name: ServerName<'static>,
    host: String,
    port: u16,
    proxy: Option<Proxy>,
    timeout: Duration,
}

impl tonic::codegen::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = Failure;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Failure>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        // The URI is our own rewritten http:// one; the connector already knows the target.
        let this = self.clone();
        Box::pin(async move { this.connect().await.map(TokioIo::new) })
    }
}

impl Connector {
    async fn connect(self) -> Result<TlsStream<TcpStream>, Failure> {
        let tcp = match &self.proxy {
            Some(proxy) => tunnel(proxy, &self.host, self.port, self.timeout).await?,
            None => self.tcp().await?,
        };
        self.tls_over(tcp).await
    }

    async fn tcp(&self) -> Result<TcpStream, Failure> {
        let addr = format!("{}:{}", self.host, self.port);
        let tcp = match tokio::time::timeout(
            self.timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(tcp_failure(&addr, self.port, &e)),
            Err(_) => {
                return Err(Failure {
                    kind: FailureKind::TimedOut,
                    reason: format!(
                        "no TCP connection to {addr} within {:?} (a firewall may be dropping outbound traffic to port {}; check the address and the facility's firewall)",
                        self.timeout, self.port
                    ),
                });
            }
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    async fn tls_over(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, Failure> {
        let started = Instant::now();
        let mut stream = match tokio::time::timeout(
            self.timeout,
            self.tls.connect(self.server_name.clone(), tcp),
        )
        .await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => return Err(handshake_failure(&e, &self.server_name)),
            Err(_) => {
                return Err(Failure {
                    kind: FailureKind::TimedOut,
                    reason: format!(
                        "the TLS handshake did not complete within {:?} (is a proxy holding the connection, or is something other than the coordinator listening on port {}?)",
                        self.timeout, self.port
                    ),
                });
            }
        };
        let wait = ACCEPTANCE_WAIT.min(self.timeout.saturating_sub(started.elapsed()));
        match tokio::time::timeout(wait, await_acceptance(&mut stream)).await {
            Ok(Ok(())) | Err(_) => Ok(stream),
            Ok(Err(failure)) => Err(failure),
        }
    }
}

/// A CONNECT tunnel to `host:port` through `proxy`, its failures named as the proxy's.
async fn tunnel(
    proxy: &Proxy,
    host: &str,
    port: u16,
    timeout: Duration,
) -> Result<TcpStream, Failure> {
    proxy::connect_through(proxy, host, port, timeout)
        .await
        .map_err(|e| {
            let (kind, what) = match e {
                proxy::ConnectError::ProxyUnreachable(reason) => (
                    FailureKind::ProxyUnreachable,
                    format!(
                        "cannot reach the proxy: {reason} (check the proxy's address and port, and that the facility firewall allows this machine to reach it)"
                    ),
                ),
                proxy::ConnectError::Tunnel(e @ TunnelError::UpstreamFailed { .. }) => {
                    (FailureKind::Unreachable, e.to_string())
                }
                proxy::ConnectError::Tunnel(e @ TunnelError::Io { .. }) => {
                    (FailureKind::ProxyUnreachable, e.to_string())
                }
                proxy::ConnectError::Tunnel(e) => (FailureKind::ProxyRefused, e.to_string()),
            };
            Failure {
                kind,
                reason: format!("through the proxy {proxy}: {what}"),
            }
        })
}

/// Reads the server's first post-handshake records into the rustls session (where
/// tokio-rustls will find the plaintext later) until there is application data, i.e. the
/// server accepted our certificate, or an alert or close, i.e. it did not.
async fn await_acceptance(stream: &mut TlsStream<TcpStream>) -> Result<(), Failure> {
    let (tcp, conn) = stream.get_mut();
    loop {
        // First what the handshake may already have read along, then the socket.
        let state = conn
            .process_new_packets()
            .map_err(|e| rustls_failure(&e, None))?;
        if state.plaintext_bytes_to_read() > 0 || conn.tls13_tickets_received() > 0 {
            return Ok(());
        }
        if state.peer_has_closed() {
            return Err(closed_after_handshake());
        }
        tcp.readable().await.map_err(|e| after_handshake_io(&e))?;
        match conn.read_tls(&mut NonBlocking(tcp)) {
            Ok(0) => return Err(closed_after_handshake()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(after_handshake_io(&e)),
        }
    }
}

/// `std::io::Read` over a tokio socket, reading only what is already there.
struct NonBlocking<'a>(&'a TcpStream);

impl io::Read for NonBlocking<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.try_read(buf)
    }
}

fn tcp_failure(addr: &str, port: u16, error: &io::Error) -> Failure {
    let hint = match error.kind() {
        io::ErrorKind::ConnectionRefused => {
            "nothing accepts connections there: is the coordinator running, and is this the right port?".to_owned()
        }
        _ => format!(
            "check the address, DNS, and that the facility firewall allows outbound connections to port {port}"
        ),
    };
    Failure {
        kind: FailureKind::Unreachable,
        reason: format!("cannot open a TCP connection to {addr}: {error} ({hint})"),
    }
}

fn handshake_failure(error: &io::Error, server_name: &ServerName<'_>) -> Failure {
    if let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return rustls_failure(tls, Some(server_name));
    }
    let reason = match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => format!(
            "the connection was closed during the TLS handshake ({error}); a firewall or proxy may be blocking TLS to the coordinator, or this is not the coordinator's port"
        ),
        _ => format!("TLS handshake failed: {error}"),
    };
    Failure {
        kind: FailureKind::Protocol,
        reason,
    }
}

fn after_handshake_io(error: &io::Error) -> Failure {
    if let Some(tls) = error
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        return rustls_failure(tls, None);
    }
    if matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe
    ) {
        return closed_after_handshake();
    }
    Failure {
        kind: FailureKind::Protocol,
        reason: format!("reading from the coordinator after the TLS handshake failed: {error}"),
    }
}

fn closed_after_handshake() -> Failure {
    Failure {
        kind: FailureKind::ClientRejected,
        reason: "the coordinator closed the connection right after the TLS handshake; it probably rejected this client's certificate (ask the federation operator whether it is still valid)".to_owned(),
    }
}

/// An actionable message for a rustls error, from either side of the handshake.
fn rustls_failure(error: &rustls::Error, server_name: Option<&ServerName<'_>>) -> Failure {
    use FailureKind::*;
    let (kind, reason) = match error {
        rustls::Error::InvalidCertificate(cert) => (ServerNotTrusted, server_cert_hint(cert, server_name)),
        rustls::Error::AlertReceived(alert) => alert_hint(*alert),
        rustls::Error::PeerIncompatible(_) => (
            Protocol,
            format!(
                "the server cannot do TLS 1.3 ({error}); the coordinator always can, so a proxy or another server answers at this address"
            ),
        ),
        rustls::Error::NoApplicationProtocol => (
            Protocol,
            "the server does not offer HTTP/2 (ALPN h2); a proxy or another server answers at this address".to_owned(),
        ),
        rustls::Error::InvalidMessage(_)
        | rustls::Error::InappropriateMessage { .. }
        | rustls::Error::InappropriateHandshakeMessage { .. }
        | rustls::Error::PeerMisbehaved(_)
        | rustls::Error::DecryptError => (
            Protocol,
            format!(
                "the server does not speak TLS as expected ({error}); is this the coordinator's port, and is a proxy or middlebox interfering?"
            ),
        ),
        other => (Protocol, format!("TLS failed: {other}")),
    };
    Failure { kind, reason }
}

fn server_cert_hint(error: &CertificateError, server_name: Option<&ServerName<'_>>) -> String {
    let name = server_name.map_or_else(
        || "the configured name".to_owned(),
        |n| format!("{:?}", n.to_str()),
    );
    match error {
        // BadSignature: an issuer with the configured CA's name but another key, e.g. the CA
        // of another federation (or a proxy imitating it).
        CertificateError::UnknownIssuer | CertificateError::BadSignature => {
            "the coordinator's certificate is not signed by the configured CA (is a TLS-inspecting proxy in the path? if so, exempt the coordinator's address from inspection; otherwise check that the CA file is this federation's)".to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => format!(
            "the coordinator's certificate is not valid for {name} ({error}); set the server name to one the certificate was issued for, or have the operator reissue it with this name"
        ),
        CertificateError::Expired
        | CertificateError::ExpiredContext { .. }
        | CertificateError::NotValidYet
        | CertificateError::NotValidYetContext { .. } => format!(
            "the coordinator's certificate is outside its validity period ({error}); check this machine's clock, otherwise the operator must renew the coordinator's certificate"
        ),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => format!(
            "the server presented a certificate that is not a server certificate ({error}); is a proxy or another server answering at this address?"
        ),
        other => format!("the coordinator's certificate was refused: {other}"),
    }
}

fn alert_hint(alert: AlertDescription) -> (FailureKind, String) {
    use FailureKind::*;
    let rejected = |why: &str| {
        (
            ClientRejected,
            format!("the coordinator rejected this client's certificate: {why}"),
        )
    };
    match alert {
        AlertDescription::CertificateRequired => rejected("no certificate was presented"),
        AlertDescription::UnknownCA => rejected(
            "it is not signed by the federation CA (was it issued for this federation? a TLS-inspecting proxy cannot forward client certificates: exempt the coordinator's address)",
        ),
        AlertDescription::CertificateExpired => rejected(
            "it is expired or not yet valid (check this machine's clock, otherwise ask the operator to renew it)",
        ),
        AlertDescription::CertificateRevoked => rejected("it has been revoked"),
        AlertDescription::UnsupportedCertificate => {
            rejected("it is not a client certificate (issued for a server?)")
        }
        // A bad signature on our certificate: issued by a CA with the federation CA's name
        // but another key. (A key that does not match the certificate is caught locally.)
        AlertDescription::DecryptError => rejected(
            "it is not signed by the federation CA's key (was it issued by another federation's CA?)",
        ),
        AlertDescription::BadCertificate
        | AlertDescription::CertificateUnknown
        | AlertDescription::AccessDenied => rejected(&format!(
            "{alert:?} (ask the federation operator to check and reissue it)"
        )),
        AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => (
            Protocol,
            format!(
                "the server refused the TLS handshake ({alert:?}); the coordinator requires TLS 1.3, so a proxy or another server may answer at this address"
            ),
        ),
        AlertDescription::NoApplicationProtocol => (
            Protocol,
            "the server does not offer HTTP/2 (ALPN h2); a proxy or another server answers at this address".to_owned(),
        ),
        other => (Protocol, format!("the server ended the TLS session with alert {other:?}")),
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn describe(what: &str, path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("{what} {}", path.display()),
        None => what.to_owned(),
    }
}

fn parse_certs(
    pem: &[u8],
    what: &str,
    path: Option<&Path>,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: describe(what, path),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: describe(what, path),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], path: Option<&Path>) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: describe("client key", path),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".to_owned(),
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let t = Target::parse("https://coord.example.org:8443").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("coord.example.org", 8443));
        let t = Target::parse("https://coord.example.org").unwrap();
        assert_eq!(t.port, 443);
        let t = Target::parse("https://[::1]:50051").unwrap();
        assert_eq!(
            (t.host.as_str(), t.authority.as_str()),
            ("::1", "[::1]:50051")
        );
        for bad in ["http://a:1", "a:1", "https://a:1/x", "https://"] {
            assert!(Target::parse(bad).is_err(), "{bad}");
        }
    }
}
