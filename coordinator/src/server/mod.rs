//! Running a coordinator: open storage, recover from a crash, serve both services over mTLS;
//! the ops port (`ops.rs`: health, readiness, metrics).

pub mod access;
pub mod memory;
pub mod ops;
pub mod telemetry;
pub mod tls;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use futures::StreamExt;
use harambee_proto::MAX_MESSAGE_BYTES;
use harambee_proto::pb::admin_service_server::AdminServiceServer;
use harambee_proto::pb::agent_service_server::AgentServiceServer;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::service::admin::AdminApi;
use crate::service::agent::AgentApi;
use crate::state::{Coordinator, Settings, now_ms};
use crate::store::Store;
use crate::store::blobs::BlobStore;

/// Where a coordinator keeps its state.
#[derive(Clone, Debug)]
pub struct Storage {
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    pub blob_dir: PathBuf,
    /// Keep model blobs in the database instead of `blob_dir` (an active/standby pair on
    /// one PostgreSQL database then shares no file system).
    pub blobs_in_database: bool,
    /// The Ed25519 key that signs the privacy ledger's tree heads (created, mode 0600, only
    /// for an empty ledger; see `store::ledger_view::open_key`).
    pub ledger_key: PathBuf,
}

/// Why a round that a previous process left unfinished failed.
pub const INTERRUPTED: &str = "coordinator restarted during the round";

/// Opens storage and fails every round a previous process left unfinished: a round never
/// resumes half-way, nothing of it was applied, and the uploads it had accepted are in the
/// ledger with its failure.
pub async fn open(storage: &Storage, settings: Settings) -> anyhow::Result<Coordinator> {
    use anyhow::Context;
    let store = Store::connect(&storage.database_url)
        .await
        .with_context(|| format!("opening the database {}", redact_url(&storage.database_url)))?;
    let blobs = if storage.blobs_in_database {
        BlobStore::in_database(&store)
    } else {
        BlobStore::open(&storage.blob_dir)
            .await
            .with_context(|| format!("opening the blob store {}", storage.blob_dir.display()))?
    };
    let failed = store.fail_unfinished_rounds(INTERRUPTED, now_ms()).await?;
    if !failed.is_empty() {
        warn!(rounds = ?failed, "rounds left unfinished by a previous run were marked failed");
    }
    let ledger_key =
        crate::store::ledger_view::open_key(&store, &storage.ledger_key, now_ms()).await?;
    let coord = Coordinator::new(
        store,
        blobs,
        settings,
        crate::store::ledger_view::LedgerView::new(ledger_key),
    );
    // Refuses to start on a ledger whose stored entries do not match their leaf hashes.
    let ledger = coord
        .ledger
        .synced(&coord.store)
        .await
        .context("loading the privacy ledger")?;
    coord.metrics.ledger_size(ledger.size());
    for line in ledger.lines() {
        if let harambee_privacy::ledger::LedgerEvent::Contribution(c) = &line.event {
            coord.metrics.epsilon_spent(&c.facility, c.epsilon_spent);
        }
    }
    drop(ledger);
    Ok(coord)
}

/// Serves until `shutdown` resolves. The listener is already bound (tests bind 127.0.0.1:0).
pub async fn serve(
    coord: Coordinator,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    let _revocations = crate::server::access::watch_revocations(&coord).await?;
    let reaper = tokio::spawn(reap_dead_agents(coord.clone()));
    let sweeper = coord
        .settings
        .blob_retention
        .map(|retention| tokio::spawn(sweep_blobs(coord.clone(), retention)));
    retry_interrupted(&coord).await;
    let agent = AgentServiceServer::new(AgentApi::new(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let admin = AdminServiceServer::new(AdminApi::new(coord.clone()))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // grpc.health.v1 for authenticated callers (the access layer): SERVING while this
    // process serves, which it does only while it holds the database lease.
    let (_health, health) = tonic_health::server::health_reporter();
    info!(%addr, "coordinator listening (TLS 1.3, client certificates required)");
    let result = tonic::transport::Server::builder()
        .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
        // Keeps idle task streams alive through hospital NATs and firewalls.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        // What a facility may send before it is read, per stream and per connection: with
        // the upload budget, this bounds the memory of uploads waiting their turn.
        .initial_stream_window_size(coord.settings.receive_window_bytes)
        .initial_connection_window_size(coord.settings.receive_window_bytes)
        .layer(crate::server::access::AccessLayer::new(coord.clone()))
        .add_service(agent)
        .add_service(admin)
        .add_service(health)
        .add_service(crate::service::enrol::enrolment_service(coord.clone()))
        .add_service(crate::service::enrol::identity_service(coord.clone()))
        .add_service(
            harambee_proto::pb::audit_service_server::AuditServiceServer::new(
                crate::service::audit::AuditApi::new(coord.clone()),
            )
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(
            {
                let traffic = coord.metrics.traffic();
                crate::server::tls::tls_incoming(listener, tls, coord.settings.connections.clone())
                    .map(move |conn| conn.map(|conn| conn.counting(traffic.clone())))
            },
            shutdown,
        )
        .await;
    reaper.abort();
    if let Some(sweeper) = sweeper {
        sweeper.abort();
    }
    for round in coord.active_rounds() {
        drop(round.inputs);
    }
    result?;
    Ok(())
}

/// Starts a new round for each federation that asks for it (`retry_interrupted`) and
/// whose latest round a restart interrupted. Failures are logged: the operator can still
/// start the round by hand.
async fn retry_interrupted(coord: &Coordinator) {
    let federations = match coord.store.federations().await {
        Ok(federations) => federations,
        Err(e) => {
            warn!(error = %e, "could not list federations to retry interrupted rounds");
            return;
        }
    };
    let ctx = coord.round_context();
    for federation in federations {
        let asks = crate::round::start::spec_of(&ctx, &federation.name)
            .await
            .is_ok_and(|spec| spec.retry_interrupted);
        if !asks {
            continue;
        }
        let latest = match coord.store.rounds(&federation.name).await {
            Ok(rounds) => rounds.into_iter().last(),
            Err(e) => {
                warn!(federation = %federation.name, error = %e, "could not read its rounds");
                continue;
            }
        };
        let Some(interrupted) = latest.filter(|r| r.failure_reason.as_deref() == Some(INTERRUPTED))
        else {
            continue;
        };
        match crate::round::start::start(&ctx, &federation.name).await {
            Ok(row) => info!(
                federation = %federation.name,
                interrupted = interrupted.id,
                round_id = row.id,
                "round interrupted by the restart started again (retry_interrupted)"
            ),
            Err(e) => warn!(
                federation = %federation.name,
                interrupted = interrupted.id,
                error = %e,
                "could not start the interrupted round again"
            ),
        }
    }
}

/// How often unkept blobs are looked for.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// Removes, at start and then hourly, model blobs that no model version keeps once they
/// are older than `retention` (candidates of failed rounds; a running round's candidate is
/// younger than any sane retention, its base is a version).
async fn sweep_blobs(coord: Coordinator, retention: std::time::Duration) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let keep = match coord.store.model_digests().await {
            Ok(keep) => keep,
            Err(e) => {
                warn!(error = %e, "could not list model versions; no blob removed");
                continue;
            }
        };
        match coord.blobs.sweep(keep, retention).await {
            Ok(swept) if swept.blobs > 0 => info!(
                blobs = swept.blobs,
                bytes = swept.bytes,
                "removed model blobs no version keeps"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "sweeping model blobs failed"),
        }
    }
}

/// Declares agents dead when their heartbeats stop, and drops them from running rounds.
async fn reap_dead_agents(coord: Coordinator) {
    let period = coord
        .settings
        .heartbeat_interval
        .min(std::time::Duration::from_secs(1));
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        for facility in coord
            .registry
            .reap(coord.clock.now(), coord.settings.liveness_timeout)
        {
            info!(%facility, "heartbeats stopped; facility considered gone");
            coord
                .broadcast_dropout(&facility, "heartbeats stopped")
                .await;
        }
    }
}

/// A database URL without its password, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}@{}", &url[..scheme + 3], user, &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
