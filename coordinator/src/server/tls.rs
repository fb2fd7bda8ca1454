//! The coordinator's side of mutual TLS: the rustls server configuration, a TLS-accepting
//! connection stream for tonic.
//!
//! Every connection is TLS 1.3 (ring provider, no other version), offers ALPN `h2`, and must
//! present a client certificate that chains to the federation CA. The caller's role and
//! name then come from that certificate's `harambee://<role>/<name>` SAN (see
//! [`crate::pki`]); services check them with [`peer_identity`](crate::service::caller::peer_identity) and [`require_role`](crate::service::caller::require_role).
//!
//! One exception, for enrolment: an agent that has no certificate yet offers the extra ALPN
//! protocol `harambee-enrol/1` ([`harambee_link::token::ENROL_ALPN`]) next to `h2`. Such a
//! connection is served with the same server certificate but no client-certificate request,
//! and carries no identity; the access layer ([`crate::server::access`]) lets it call only
//! `EnrolmentService.GetCaCertificate` and `.Enrol` (the token authenticates), and the
//! services refuse it too since [`peer_identity`](crate::service::caller::peer_identity) finds no certificate. This keeps one port
//! for everything (hospital firewalls open one outbound port, see DESIGN.md), keeps every
//! ordinary connection's certificate checked during the handshake (a misconfigured agent
//! still gets a TLS `certificate_required` alert, not a later RPC error), and makes the
//! exception explicit in the ClientHello rather than making client certificates optional
//! for everyone. The choice is made per connection in [`tls_incoming`], from the
//! ClientHello, before any certificate is requested.
//!
//! A connection without identity is cheap to open and costs the coordinator a file
//! descriptor, so enrolment connections are few and short-lived ([`ConnectionLimits`]):
//!
//! - one that moves no bytes for [`ENROLMENT_IDLE`] (10 s), or that is older than
//!   [`ENROLMENT_LIFETIME`] (60 s) however busy, is closed (an enrolment is a couple of
//!   small unary calls on a fresh connection);
//! - at most [`MAX_ENROLMENT_CONNECTIONS`] (64) are open at once, handshakes included; one
//!   more is closed right after its ClientHello, so agents and operators always find
//!   descriptors left (an honest enrolment refused then fails, and succeeds when retried
//!   once slots free up: within 10 s of idle holders, 60 s of busy ones);
//! - handshakes in flight are bounded by [`MAX_PENDING_HANDSHAKES`] (256), each by
//!   [`HANDSHAKE_TIMEOUT`]; beyond that the listener stops accepting until some finish.
//!
//! Connections without identity therefore hold at most 256 + 64 descriptors: give the
//! coordinator an `RLIMIT_NOFILE` (systemd `LimitNOFILE`) of at least that plus one per agent
//! and operator connection and about 64 for the database pool and blob files. (The limit is
//! not read from the process: that needs `libc`, which the coordinator does not depend on.)
//!
//! The deadlines are enforced by the connection's own IO, in [`Connection`]: it wraps the
//! TLS stream, notes when bytes last moved, and fails reads and writes once a deadline has
//! passed, which ends tonic's connection task and closes the socket. This sees every byte
//! (a timer task could only shut the socket blindly, and needs a second descriptor per
//! connection) and keeps one port and one tonic server (a second server for enrolment
//! would split the services and the access layer in two). An enrolment call in flight counts
//! as idle while its handler runs; `Enrol`'s handler takes milliseconds, far below 10 s.
//!
//! Connections dropped before they are served (failed or refused handshakes, handshakes
//! timed out, enrolment connections over the cap, failed `accept`s) are each logged at
//! DEBUG, and summed up at INFO in at most one line per [`DROP_LOG_INTERVAL`] (10 s): the
//! count, and the last peer and reason. A flood of garbage costs a few log lines, not one per
//! connection.
//!
//! Session resumption is off (no tickets, no session cache): every connection runs a full
//! handshake, so every connection's client certificate is verified, expiry included.
//! Certificate-bearing connections are long-lived, so this costs nothing that matters.
//!
//! Use it as:
//!
//! ```text
//! let config = tls::load_server_config(&PkiPaths::new(dir))?;
//! let listener = tokio::net::TcpListener::bind(addr).await?;
//! Server::builder()
//!     .add_service(svc)
//!     .serve_with_incoming_shutdown(
//!         tls::tls_incoming(listener, config, ConnectionLimits::default()),
//!         shutdown,
//!     )
//!     .await?;
//! ```
//!
//! The streams yielded by [`tls_incoming`] are [`Connection`]s, whose tonic `Connected`
//! implementation is that of the `tokio_rustls::server::TlsStream` inside (tonic feature
//! `tls-connect-info`); that is what makes `Request::peer_certs()` and
//! `Request::remote_addr()` work with a custom incoming stream. A wrapper whose
//! `ConnectInfo` is anything else makes the certificates silently disappear from requests.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;

use crate::pki::PkiPaths;

mod connection;
mod drop_log;

pub use connection::Connection;
use drop_log::{DropLog, Dropped};

pub use crate::state::{
    ConnectionLimits, DROP_LOG_INTERVAL, ENROLMENT_IDLE, ENROLMENT_LIFETIME,
    MAX_ENROLMENT_CONNECTIONS, MAX_PENDING_HANDSHAKES,
};

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before trying again.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Errors building the server's TLS configuration.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: io::Error,
    },
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("CA certificate is not usable as a trust anchor: {0}")]
    TrustAnchor(String),
    #[error("cannot build the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A server configuration for the coordinator: ring provider, TLS 1.3 only, ALPN `h2`, and a
/// client certificate required and verified against the CA(s) in `ca_pem`.
///
/// `cert_pem` is the server certificate followed by any intermediates; `key_pem` its
/// private key (PKCS#8, SEC1 or PKCS#1).
pub fn server_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for ca in parse_certs(ca_pem, "CA certificate")? {
        roots
            .add(ca)
            .map_err(|e| TlsError::TrustAnchor(e.to_string()))?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = parse_certs(cert_pem, "server certificate")?;
    let key = parse_key(key_pem, "server key")?;

    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Ok(Arc::new(config))
}

/// [`server_config`] from the CA certificate and the coordinator's certificate and key in
/// a PKI directory.
pub fn load_server_config(paths: &PkiPaths) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let ca = read(&paths.ca_cert(), "CA certificate")?;
    let cert = read(&paths.server_cert(), "server certificate")?;
    let key = read(&paths.server_key(), "server key")?;
    let in_file = |e: TlsError, path: &Path| match e {
        TlsError::Pem { what, reason } => TlsError::Pem {
            what: format!("{what} {}", path.display()),
            reason,
        },
        other => other,
    };
    // Attribute PEM errors to the file they came from.
    parse_certs(&ca, "CA certificate").map_err(|e| in_file(e, &paths.ca_cert()))?;
    parse_certs(&cert, "server certificate").map_err(|e| in_file(e, &paths.server_cert()))?;
    parse_key(&key, "server key").map_err(|e| in_file(e, &paths.server_key()))?;
    server_config(&ca, &cert, &key)
}

/// Accepts TCP connections from `listener` and runs their TLS handshakes concurrently, each
/// on its own task and bounded by [`HANDSHAKE_TIMEOUT`], so a slow or hostile client never
/// holds up others. Failed handshakes are dropped and logged, rate-limited (see the module
/// documentation); the stream yields only established connections, and never ends or yields
/// `Err` (accept errors are logged the same way and retried).
///
/// Connections whose ClientHello offers the enrolment ALPN protocol are served without a
/// client-certificate request (see the module documentation), within `limits`; all others
/// with `config`.
///
/// Dropping the stream closes the listener and aborts handshakes still in flight. Pass it
/// to tonic's `serve_with_incoming_shutdown`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: ConnectionLimits,
) -> impl Stream<Item = Result<Connection, io::Error>> + Send + 'static {
    let enrolment = enrolment_config(&config);
    let state = Incoming {
        listener,
        shared: Arc::new(Shared {
            main: config,
            enrolment,
            enrolment_slots: Arc::new(Semaphore::new(limits.max_enrolment_connections)),
            limits: limits.clone(),
        }),
        handshakes: JoinSet::new(),
        drops: DropLog::new(limits.drop_log_interval),
    };
    futures::stream::unfold(state, |mut state| async move {
        let stream = state.next().await;
        Some((Ok(stream), state))
    })
}

struct Incoming {
    listener: TcpListener,
    shared: Arc<Shared>,
    handshakes: JoinSet<Result<Connection, Dropped>>,
    drops: DropLog,
}

/// What every handshake task reads: the server configurations a connection is served with,
/// chosen from its ClientHello, and the enrolment limits.
struct Shared {
    /// Client certificate required.
    main: Arc<rustls::ServerConfig>,
    /// For connections offering the enrolment ALPN protocol: no client certificate asked
    /// for. `None` if it could not be derived (then everyone gets `main`).
    enrolment: Option<Arc<rustls::ServerConfig>>,
    /// One permit per open enrolment connection.
    enrolment_slots: Arc<Semaphore>,
    limits: ConnectionLimits,
}

/// `main` without the client-certificate request: same provider, TLS 1.3 only, same server
/// certificate, ALPN and (absent) session resumption.
fn enrolment_config(main: &Arc<rustls::ServerConfig>) -> Option<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(main.crypto_provider().clone())
        .with_protocol_versions(&[&rustls::version::TLS13]);
    let builder = match builder {
        Ok(builder) => builder,
        Err(error) => {
            tracing::warn!(%error, "enrolment connections are disabled: no TLS 1.3 configuration");
            return None;
        }
    };
    let mut config = builder
        .with_no_client_auth()
        .with_cert_resolver(main.cert_resolver.clone());
    config.alpn_protocols = main.alpn_protocols.clone();
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(NoServerSessionStorage {});
    Some(Arc::new(config))
}

impl Incoming {
    /// The next established connection. All branches are cancel-safe.
    async fn next(&mut self) -> Connection {
        loop {
            let summary_due = self.drops.due().map(tokio::time::Instant::from_std);
            tokio::select! {
                accepted = self.listener.accept(),
                    if self.handshakes.len() < self.shared.limits.max_pending_handshakes =>
                {
                    match accepted {
                        Ok((tcp, peer)) => {
                            self.handshakes.spawn(handshake(self.shared.clone(), tcp, peer));
                        }
                        Err(error) => {
                            self.dropped(Dropped::Accept(error));
                            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        }
                    }
                }
                Some(joined) = self.handshakes.join_next() => {
                    match joined {
                        Ok(Ok(connection)) => return connection,
                        Ok(Err(dropped)) => self.dropped(dropped),
                        Err(error) => tracing::warn!(%error, "tls handshake task failed"),
                    }
                }
                () = tokio::time::sleep_until(summary_due.unwrap_or_else(tokio::time::Instant::now)),
                    if summary_due.is_some() =>
                {
                    if let Some(summary) = self.drops.summary(std::time::Instant::now()) {
                        summary.log();
                    }
                }
            }
        }
    }

    fn dropped(&mut self, dropped: Dropped) {
        dropped.log_debug();
        if let Some(summary) = self.drops.record(std::time::Instant::now(), dropped) {
            summary.log();
        }
    }
}

async fn handshake(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Result<Connection, Dropped> {
    // gRPC messages are small and latency-bound; Nagle only delays them.
    let _ = tcp.set_nodelay(true);
    let accept = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp)
            .await
            .map_err(|error| Dropped::handshake(peer, error))?;
        let enrolling = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == harambee_link::token::ENROL_ALPN));
        match (&shared.enrolment, enrolling) {
            (Some(enrolment), true) => {
                // Dropping `start` closes the connection right after its ClientHello.
                let slot = shared
                    .enrolment_slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Dropped::EnrolmentFull {
                        peer,
                        max: shared.limits.max_enrolment_connections,
                    })?;
                tracing::debug!(%peer, "enrolment connection (no client certificate requested)");
                let tls = start
                    .into_stream(enrolment.clone())
                    .await
                    .map_err(|error| Dropped::handshake(peer, error))?;
                Ok(Connection::enrolment(tls, &shared.limits, slot))
            }
            _ => {
                let tls = start
                    .into_stream(shared.main.clone())
                    .await
                    .map_err(|error| Dropped::handshake(peer, error))?;
                Ok(Connection::authenticated(tls))
            }
        }
    };
    let connection = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept)
        .await
        .map_err(|_| Dropped::TimedOut { peer })??;
    tracing::debug!(%peer, "tls handshake complete");
    Ok(connection)
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            reason: "no CERTIFICATE block found".to_owned(),
        });
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsError::Pem {
        what: what.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "no PRIVATE KEY block found".to_owned(),
            other => other.to_string(),
        },
    })
}
