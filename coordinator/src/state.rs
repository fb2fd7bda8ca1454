//! State shared by the coordinator's services and round drivers.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;

use crate::round::driver::RoundInput;
use crate::round::registry::Registry;
use crate::store::Store;
use crate::store::blobs::BlobStore;

/// Tunables of a running coordinator.
#[derive(Clone, Debug)]
pub struct Settings {
    /// How often agents are asked to heartbeat.
    pub heartbeat_interval: Duration,
    /// An agent silent for longer is dead: dropped from its rounds, its stream closed.
    pub liveness_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat_interval: Duration::from_secs(5),
            liveness_timeout: Duration::from_secs(20),
        }
    }
}

/// The handle of a round whose driver is running.
#[derive(Clone)]
pub struct ActiveRound {
    pub round_id: u64,
    pub federation: String,
    pub n_params: usize,
    pub inputs: mpsc::Sender<RoundInput>,
}

pub struct Inner {
    pub store: Store,
    pub blobs: BlobStore,
    pub registry: Registry,
    pub settings: Settings,
    /// Running rounds, at most one per federation.
    pub active: Mutex<HashMap<String, ActiveRound>>,
    /// Model blobs each facility may download (those of tasks sent to it).
    pub entitled: Mutex<HashMap<String, HashSet<String>>>,
    /// Revoked facilities and certificate issuing (`crate::server::access`, `crate::service::enrol`).
    pub identity: crate::server::access::Identity,
    /// The privacy ledger's signing key and proof cache.
    pub ledger: crate::store::ledger_view::LedgerView,
    /// What every service and driver reads the time from.
    pub clock: Arc<harambee_link::clock::Clock>,
}

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
        Coordinator(Arc::new(Inner {
            store,
            blobs,
            registry: Registry::default(),
            settings,
            active: Mutex::new(HashMap::new()),
            entitled: Mutex::new(HashMap::new()),
            identity: crate::server::access::Identity::default(),
            ledger,
            clock: harambee_link::clock::Clock::system(),
        }))
    }

    pub fn active_round_by_id(&self, round_id: u64) -> Option<ActiveRound> {
        self.active
            .lock()
            .unwrap()
            .values()
            .find(|r| r.round_id == round_id)
            .cloned()
    }

    pub fn active_rounds(&self) -> Vec<ActiveRound> {
        self.active.lock().unwrap().values().cloned().collect()
    }

    pub fn entitle(&self, facility: &str, digest: &str) {
        self.entitled
            .lock()
            .unwrap()
            .entry(facility.to_owned())
            .or_default()
            .insert(digest.to_owned());
    }

    pub fn is_entitled(&self, facility: &str, digest: &str) -> bool {
        self.entitled
            .lock()
            .unwrap()
            .get(facility)
            .is_some_and(|s| s.contains(digest))
    }

    /// Tells every running round that `facility` is gone.
    pub async fn broadcast_dropout(&self, facility: &str, reason: &str) {
        for round in self.active_rounds() {
            let input = RoundInput::Dropout {
                agent: facility.to_owned(),
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
                    agent: facility.to_owned(),
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
