//! The ops port (`serve --ops-listen ADDR`, off unless given): plain HTTP/1.1 for load
//! balancers, Kubernetes probes and Prometheus.
//!
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when this coordinator serves: it holds the database lease, the
//!   database answers with every migration applied, and the ledger key is loaded; otherwise
//!   503 with a one-line reason (a `serve --standby` waiting for the lease is not ready).
//! - `GET /metrics`: the figures of [`crate::metrics`] in the Prometheus text format.
//!
//! It carries no secrets (counts, durations, facility names, ε) and asks for no client
//! certificate, so keep it on loopback or a cluster-internal network: `serve` warns when it
//! is bound elsewhere.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::state::Coordinator;

/// How long `/readyz` waits for the database.
pub const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a `serve` process stands, as `/readyz` reports it. Cheap to clone.
#[derive(Clone, Default)]
pub struct Readiness(Arc<Mutex<Phase>>);

#[derive(Clone, Default)]
enum Phase {
    /// Before the lease: waiting for it (a standby) or taking it.
    #[default]
    WaitingForLease,
    /// Lease held; opening storage, loading the ledger key, binding the gRPC port.
    Starting,
    /// Serving gRPC.
    Serving(Coordinator),
}

impl Readiness {
    /// The process holds the database lease.
    pub fn lease_taken(&self) {
        *self.0.lock().unwrap() = Phase::Starting;
    }

    /// Storage is open, the ledger key loaded, the gRPC port bound.
    pub fn serving(&self, coord: Coordinator) {
        *self.0.lock().unwrap() = Phase::Serving(coord);
    }

    fn phase(&self) -> Phase {
        self.0.lock().unwrap().clone()
    }

    /// `Ok` when ready; otherwise the one-line reason.
    pub async fn check(&self) -> Result<(), String> {
        let coord = match self.phase() {
            Phase::WaitingForLease => {
                return Err(
                    "not serving: waiting for the database lease (another coordinator holds it, or this one is taking it)"
                        .to_owned(),
                );
            }
            Phase::Starting => {
                return Err(
                    "not serving yet: opening the database, loading the ledger key".to_owned(),
                );
            }
            Phase::Serving(coord) => coord,
        };
        match tokio::time::timeout(DATABASE_TIMEOUT, coord.store.pending_migrations()).await {
            Err(_) => Err(format!(
                "the database did not answer within {DATABASE_TIMEOUT:?}"
            )),
            Ok(Err(e)) => Err(format!("the database does not answer: {e}")),
            Ok(Ok(0)) => Ok(()),
            Ok(Ok(n)) => Err(format!("{n} database migrations are not applied")),
        }
    }

    /// `/metrics`: the serving coordinator's figures, the ledger size brought up to date;
    /// nothing before it serves.
    pub async fn metrics(&self) -> String {
        let Phase::Serving(coord) = self.phase() else {
            return String::new();
        };
        match tokio::time::timeout(DATABASE_TIMEOUT, coord.ledger.synced(&coord.store)).await {
            Ok(Ok(ledger)) => coord.metrics.ledger_size(ledger.size()),
            Ok(Err(e)) => warn!(error = %e, "metrics: could not read the ledger's size"),
            Err(_) => warn!("metrics: the ledger's size took too long to read"),
        }
        coord.metrics.render()
    }
}

/// The ops port's routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(readiness)
}

async fn readyz(State(readiness): State<Readiness>) -> impl IntoResponse {
    match readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
    }
}

async fn metrics(State(readiness): State<Readiness>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, harambee_link::metrics::CONTENT_TYPE)],
        readiness.metrics().await,
    )
}

/// Binds the ops port, warning when it is reachable beyond this host.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    if !bound.ip().is_loopback() {
        warn!(
            %bound,
            "the ops port (health, readiness, metrics) is plain HTTP without authentication: keep it on loopback or a cluster-internal network"
        );
    }
    info!(%bound, "ops port listening (/healthz, /readyz, /metrics)");
    Ok(listener)
}

/// Serves the ops port until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    readiness: Readiness,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(readiness))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;
    use crate::store::Store;
    use crate::store::blobs::BlobStore;
    use crate::store::ledger_view::LedgerView;

    async fn coordinator(dir: &std::path::Path) -> Coordinator {
        let store = Store::connect("sqlite::memory:").await.unwrap();
        let blobs = BlobStore::open(&dir.join("blobs")).await.unwrap();
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        Coordinator::new(store, blobs, Settings::default(), LedgerView::new(key))
    }

    #[tokio::test]
    async fn readyz_names_why_it_is_not_ready_until_it_serves() {
        let dir = tempfile::tempdir().unwrap();
        let readiness = Readiness::default();
        let waiting = readiness.check().await.unwrap_err();
        assert!(
            waiting.contains("waiting for the database lease"),
            "{waiting}"
        );
        readiness.lease_taken();
        let starting = readiness.check().await.unwrap_err();
        assert!(starting.contains("loading the ledger key"), "{starting}");
        assert_eq!(readiness.metrics().await, "");
        let coord = coordinator(dir.path()).await;
        readiness.serving(coord.clone());
        assert_eq!(readiness.check().await, Ok(()));
        coord.store.clone().close().await.unwrap();
        let closed = readiness.check().await.unwrap_err();
        assert!(
            closed.starts_with("the database does not answer"),
            "{closed}"
        );
        assert!(!closed.contains('\n'), "{closed}");
    }

    #[tokio::test]
    async fn the_routes_answer_over_http() {
        let dir = tempfile::tempdir().unwrap();
        let readiness = Readiness::default();
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, readiness.clone(), async {
            let _ = stopped.await;
        }));
        assert_eq!(get(addr, "/healthz").await.0, 200);
        let (status, body) = get(addr, "/readyz").await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(get(addr, "/nothing").await.0, 404);
        let coord = coordinator(dir.path()).await;
        coord
            .metrics
            .round_ended(crate::metrics::Outcome::Committed);
        readiness.lease_taken();
        readiness.serving(coord);
        assert_eq!(get(addr, "/readyz").await, (200, "ready\n".to_owned()));
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(
            body.contains("harambee_rounds_total{outcome=\"committed\"} 1"),
            "{body}"
        );
        assert!(body.contains("harambee_ledger_entries 0"), "{body}");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// A plain HTTP/1.1 GET: the status and the body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: ops\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response[9..12].parse().unwrap();
        let body = response.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }
}
