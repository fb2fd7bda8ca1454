//! State shared by the coordinator's services and round drivers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::round::context::{ActiveRound, ActiveRounds, Entitlements, RoundContext};
use crate::round::driver::RoundInput;
use crate::round::registry::Registry;
use crate::store::Store;
use crate::store::blobs::BlobStore;

/// Tunables of a running coordinator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// An agent whose heartbeats stop for longer is gone: dropped from its rounds. A shorter
    /// silence of its link is forgiven.
    pub liveness_timeout: Duration,
    /// A facility whose task stream closed (its process ended, or its link was cut) is
    /// dropped from its rounds unless it reconnects within this. Shorter than the liveness
    /// timeout when crashed agents should be noticed quickly, longer to forgive outages.
    pub reconnect_grace: Duration,
    /// Model blobs no version keeps (candidates of failed rounds) are removed once older
    /// than this; `None` keeps them all.
    pub blob_retention: Option<Duration>,
    /// Limits on connections, chiefly enrolment connections (no client certificate).
    pub connections: ConnectionLimits,
    /// Bytes of uploads (updates and masked inputs) held at once while they arrive, before
    /// the round takes them: an upload waits for its share of this budget before its data
    /// is read, so the coordinator's memory does not grow with the number of facilities
    /// uploading together. An upload larger than the budget is taken alone.
    pub upload_buffer_bytes: usize,
    /// HTTP/2 receive window of each connection and each stream: how many bytes a facility
    /// may send before the coordinator reads them. An upload waiting for the budget above
    /// has sent this much, held in the coordinator's memory, so n facilities uploading
    /// together cost up to n × this; one connection's throughput is at most this per round
    /// trip (256 KiB at 100 ms: 21 Mbit/s).
    pub receive_window_bytes: u32,
}

/// Default of [`Settings::upload_buffer_bytes`]: 128 MiB.
pub const UPLOAD_BUFFER_BYTES: usize = 128 << 20;
/// Default of [`Settings::receive_window_bytes`]: 256 KiB (the HTTP/2 library's own is 1 MiB).
pub const RECEIVE_WINDOW_BYTES: u32 = 256 << 10;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(30),
            reconnect_grace: Duration::from_secs(30),
            blob_retention: Some(Duration::from_secs(24 * 3600)),
            connections: Default::default(),
            upload_buffer_bytes: UPLOAD_BUFFER_BYTES,
            receive_window_bytes: RECEIVE_WINDOW_BYTES,
        }
    }
}

/// Default of [`ConnectionLimits::max_pending_handshakes`].
pub const MAX_PENDING_HANDSHAKES: usize = 256;
/// Default of [`ConnectionLimits::enrolment_idle`].
pub const ENROLMENT_IDLE: Duration = Duration::from_secs(10);
/// Default of [`ConnectionLimits::enrolment_lifetime`].
pub const ENROLMENT_LIFETIME: Duration = Duration::from_secs(60);
/// Default of [`ConnectionLimits::max_enrolment_connections`].
pub const MAX_ENROLMENT_CONNECTIONS: usize = 64;
/// Default of [`ConnectionLimits::drop_log_interval`].
pub const DROP_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// How many connections of each kind the coordinator keeps, and for how long. The defaults
/// are the constants above; tests shorten the durations.
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// An enrolment connection that moves no bytes for this long is closed.
    pub enrolment_idle: Duration,
    /// An enrolment connection is closed this long after its handshake, busy or not.
    pub enrolment_lifetime: Duration,
    /// Enrolment connections open at once, handshakes included; one more is closed right
    /// after its ClientHello.
    pub max_enrolment_connections: usize,
    /// Handshakes in flight at once; beyond this the listener stops accepting until some
    /// finish (each within the handshake timeout).
    pub max_pending_handshakes: usize,
    /// Connections dropped before being served are summed up in at most one INFO line per
    /// this long.
    pub drop_log_interval: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            enrolment_idle: ENROLMENT_IDLE,
            enrolment_lifetime: ENROLMENT_LIFETIME,
            max_enrolment_connections: MAX_ENROLMENT_CONNECTIONS,
            max_pending_handshakes: MAX_PENDING_HANDSHAKES,
            drop_log_interval: DROP_LOG_INTERVAL,
        }
    }
}

pub struct Inner {
    pub store: Store,
    pub blobs: BlobStore,
    pub registry: Arc<Registry>,
    pub settings: Settings,
    /// Running rounds, at most one per federation.
    pub active: ActiveRounds,
    /// Model blobs each facility may download (those of tasks sent to it).
    pub entitled: Entitlements,
    /// Revoked facilities and certificate issuing (`crate::identity`).
    pub identity: crate::identity::Identity,
    /// The privacy ledger's signing key and proof cache.
    pub ledger: Arc<crate::store::ledger_view::LedgerView>,
    /// What every service and driver reads the time from.
    pub clock: Arc<harambee_link::clock::Clock>,
    /// What the ops port serves (`server/ops.rs`).
    pub metrics: Arc<crate::metrics::Metrics>,
    /// [`Settings::upload_buffer_bytes`] as permits of [`UPLOAD_PERMIT_BYTES`].
    pub upload_budget: Arc<tokio::sync::Semaphore>,
}

/// One permit of the upload budget.
pub const UPLOAD_PERMIT_BYTES: usize = 1 << 20;

/// Cheap to clone; every service and driver holds one.
#[derive(Clone)]
pub struct Coordinator(pub Arc<Inner>);

impl std::ops::Deref for Coordinator {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Coordinator {
    pub fn new(
        store: Store,
        blobs: BlobStore,
        settings: Settings,
        ledger: crate::store::ledger_view::LedgerView,
    ) -> Coordinator {
        let registry = Arc::new(Registry::default());
        let metrics = Arc::new(crate::metrics::Metrics::new(registry.clone()));
        let settings_budget = settings.upload_buffer_bytes;
        Coordinator(Arc::new(Inner {
            store,
            blobs,
            registry,
            settings,
            active: ActiveRounds::default(),
            entitled: Entitlements::default(),
            identity: crate::identity::Identity::default(),
            ledger: Arc::new(ledger),
            clock: harambee_link::clock::Clock::system(),
            metrics,
            upload_budget: Arc::new(tokio::sync::Semaphore::new(
                (settings_budget / UPLOAD_PERMIT_BYTES).max(1),
            )),
        }))
    }

    /// Waits for `bytes` of the upload budget ([`Settings::upload_buffer_bytes`]), all at
    /// once (so two uploads never hold parts of it while each waits for more), at most the
    /// whole budget. Released when the permit is dropped.
    pub async fn reserve_upload(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let total = (self.settings.upload_buffer_bytes / UPLOAD_PERMIT_BYTES).max(1);
        let wanted = bytes.div_ceil(UPLOAD_PERMIT_BYTES).clamp(1, total);
        self.upload_budget
            .clone()
            .acquire_many_owned(wanted as u32)
            .await
            .expect("the upload budget is never closed")
    }

    /// The handles a round driver gets: not the whole coordinator.
    pub fn round_context(&self) -> RoundContext {
        RoundContext {
            store: self.store.clone(),
            blobs: self.blobs.clone(),
            registry: self.registry.clone(),
            clock: self.clock.clone(),
            active: self.active.clone(),
            entitlements: self.entitled.clone(),
            ledger: self.ledger.clone(),
            metrics: self.metrics.clone(),
        }
    }

    pub fn active_round_by_id(&self, round_id: u64) -> Option<ActiveRound> {
        self.active.by_id(round_id)
    }

    pub fn active_rounds(&self) -> Vec<ActiveRound> {
        self.active.all()
    }

    pub fn is_entitled(&self, facility: &str, digest: &str) -> bool {
        self.entitled.is_entitled(facility, digest)
    }

    /// Tells every running round that `facility` is gone.
    pub async fn broadcast_dropout(&self, facility: &str, reason: &str) {
        for round in self.active_rounds() {
            let input = RoundInput::Dropout {
                agent: facility.into(),
                reason: reason.to_owned(),
            };
            let _ = round.inputs.send(input).await;
        }
    }

    /// Tells every running round that `facility` (re)connected.
    pub async fn broadcast_connected(&self, facility: &str) {
        for round in self.active_rounds() {
            let _ = round
                .inputs
                .send(RoundInput::Connected {
                    agent: facility.into(),
                })
                .await;
        }
    }
}

/// Milliseconds since the Unix epoch, for persisted timestamps and wire deadlines.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
