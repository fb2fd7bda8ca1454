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
//! Session resumption is off (no tickets, no session cache): every connection runs a full
//! handshake, so every connection's client certificate is verified, expiry included.
//! Connections are long-lived, so this costs nothing that matters.
//!
//! Use it as:
//!
//! ```text
//! let config = tls::load_server_config(&PkiPaths::new(dir))?;
//! let listener = tokio::net::TcpListener::bind(addr).await?;
//! Server::builder()
//!     .add_service(svc)
//!     .serve_with_incoming_shutdown(tls::tls_incoming(listener, config), shutdown)
//!     .await?;
//! ```
//!
//! The streams yielded by [`tls_incoming`] are `tokio_rustls::server::TlsStream`s, for which
//! tonic (feature `tls-connect-info`) implements `Connected`; that is what makes
//! `Request::peer_certs()` and `Request::remote_addr()` work with a custom incoming stream.
//! Do not wrap them in another type, or the certificates silently disappear from requests.

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
use tokio::task::JoinSet;
use tokio_rustls::LazyConfigAcceptor;
use tokio_rustls::server::TlsStream;

use crate::pki::PkiPaths;

/// A client that has not finished its TLS handshake by then is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in flight at once; beyond this the listener stops accepting until some finish
/// (each finishes within [`HANDSHAKE_TIMEOUT`]).
pub const MAX_PENDING_HANDSHAKES: usize = 1024;
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
/// holds up others. Failed handshakes are logged (peer address and reason) and dropped;
/// the stream yields only established connections, and never ends or yields `Err` (accept
/// errors are logged and retried).
///
/// Connections whose ClientHello offers the enrolment ALPN protocol are served without a
/// client-certificate request (see the module documentation); all others with `config`.
///
/// Dropping the stream closes the listener and aborts handshakes still in flight. Pass it
/// to tonic's `serve_with_incoming_shutdown`.
pub fn tls_incoming(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
) -> impl Stream<Item = Result<TlsStream<TcpStream>, io::Error>> + Send + 'static {
    let enrolment = enrolment_config(&config);
    let state = Incoming {
        listener,
        configs: Arc::new(Configs {
            main: config,
            enrolment,
        }),
        handshakes: JoinSet::new(),
    };
    futures::stream::unfold(state, |mut state| async move {
        let stream = state.next().await;
        Some((Ok(stream), state))
    })
}

struct Incoming {
    listener: TcpListener,
    configs: Arc<Configs>,
    handshakes: JoinSet<Option<TlsStream<TcpStream>>>,
}

/// The server configurations a connection is served with, chosen from its ClientHello.
struct Configs {
    /// Client certificate required.
    main: Arc<rustls::ServerConfig>,
    /// For connections offering the enrolment ALPN protocol: no client certificate asked
    /// for. `None` if it could not be derived (then everyone gets `main`).
    enrolment: Option<Arc<rustls::ServerConfig>>,
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
    /// The next established connection. Both branches are cancel-safe.
    async fn next(&mut self) -> TlsStream<TcpStream> {
        loop {
            tokio::select! {
                accepted = self.listener.accept(),
                    if self.handshakes.len() < MAX_PENDING_HANDSHAKES =>
                {
                    match accepted {
                        Ok((tcp, peer)) => {
                            self.handshakes.spawn(handshake(self.configs.clone(), tcp, peer));
                        }
                        Err(error) => {
                            tracing::warn!(%error, "accepting a TCP connection failed");
                            tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        }
                    }
                }
                Some(joined) = self.handshakes.join_next() => {
                    match joined {
                        Ok(Some(stream)) => return stream,
                        Ok(None) => {}
                        Err(error) => tracing::warn!(%error, "tls handshake task failed"),
                    }
                }
            }
        }
    }
}

async fn handshake(
    configs: Arc<Configs>,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<TlsStream<TcpStream>> {
    // gRPC messages are small and latency-bound; Nagle only delays them.
    let _ = tcp.set_nodelay(true);
    let accept = async {
        let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await?;
        let enrolling = start
            .client_hello()
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == harambee_link::token::ENROL_ALPN));
        let config = match (&configs.enrolment, enrolling) {
            (Some(enrolment), true) => {
                tracing::debug!(%peer, "enrolment connection (no client certificate requested)");
                enrolment.clone()
            }
            _ => configs.main.clone(),
        };
        start.into_stream(config).await
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(stream)) => {
            tracing::debug!(%peer, "tls handshake complete");
            Some(stream)
        }
        Ok(Err(error)) => {
            match tls_error(&error) {
                // The peer spoke TLS and was refused: bad certificate, wrong version, ...
                // worth an operator's attention.
                Some(reason) => tracing::info!(%peer, %reason, "tls handshake refused"),
                // Resets, EOF: port scanners and load-balancer probes.
                None => tracing::debug!(%peer, %error, "tls handshake failed"),
            }
            None
        }
        Err(_) => {
            tracing::debug!(%peer, timeout_s = HANDSHAKE_TIMEOUT.as_secs(), "tls handshake timed out");
            None
        }
    }
}

fn tls_error(error: &io::Error) -> Option<&rustls::Error> {
    error.get_ref()?.downcast_ref::<rustls::Error>()
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
