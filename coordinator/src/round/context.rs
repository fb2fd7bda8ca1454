//! What a round driver may touch, and nothing more: the store and blobs it persists to, the
//! ledger view it proves facilities' enrolments with, the registry it sends tasks through,
//! the clock, the map of running rounds, the model entitlements and the metrics it records. The services hold the same handles inside `Coordinator`; the round layer
//! does not know that type.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use harambee_core::FacilityId;
use harambee_link::clock::Clock;
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::round::driver::RoundInput;
use crate::round::registry::Registry;
use crate::store::Store;
use crate::store::blobs::BlobStore;
use crate::store::ledger_view::LedgerView;

/// A round driver's view of the coordinator.
#[derive(Clone)]
pub struct RoundContext {
    pub store: Store,
    pub blobs: BlobStore,
    pub registry: Arc<Registry>,
    pub clock: Arc<Clock>,
    pub active: ActiveRounds,
    pub entitlements: Entitlements,
    pub ledger: Arc<LedgerView>,
    pub metrics: Arc<Metrics>,
}

/// The handle of a round whose driver is running.
#[derive(Clone)]
pub struct ActiveRound {
    pub round_id: u64,
    pub federation: String,
    pub n_params: usize,
    pub inputs: mpsc::Sender<RoundInput>,
}

/// Running rounds, at most one per federation.
#[derive(Clone, Default)]
pub struct ActiveRounds(Arc<Mutex<HashMap<String, ActiveRound>>>);

impl ActiveRounds {
    pub fn insert(&self, round: ActiveRound) {
        self.0
            .lock()
            .unwrap()
            .insert(round.federation.clone(), round);
    }

    pub fn remove(&self, federation: &str) {
        self.0.lock().unwrap().remove(federation);
    }

    pub fn contains(&self, federation: &str) -> bool {
        self.0.lock().unwrap().contains_key(federation)
    }

    pub fn by_id(&self, round_id: u64) -> Option<ActiveRound> {
        self.0
            .lock()
            .unwrap()
            .values()
            .find(|r| r.round_id == round_id)
            .cloned()
    }

    pub fn all(&self) -> Vec<ActiveRound> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

/// Model blobs each facility may download (those of tasks sent to it).
#[derive(Clone, Default)]
pub struct Entitlements(Arc<Mutex<HashMap<FacilityId, HashSet<String>>>>);

impl Entitlements {
    pub fn entitle(&self, facility: &str, digest: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(FacilityId::from(facility))
            .or_default()
            .insert(digest.to_owned());
    }

    pub fn is_entitled(&self, facility: &str, digest: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .get(facility)
            .is_some_and(|s| s.contains(digest))
    }
}
