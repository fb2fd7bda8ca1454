//! Plain row types passed in and out of the store.

/// A federation and its configuration (opaque JSON owned by the caller).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationRow {
    pub name: String,
    pub config_json: String,
    pub created_ms: i64,
}

/// One model version of a federation; `digest` names the blob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelVersionRow {
    pub federation: String,
    pub version: u32,
    pub digest: String,
    pub size_bytes: u64,
    pub n_params: u64,
    /// The round that produced this version; `None` for the initial model.
    pub round_id: Option<u64>,
    pub created_ms: i64,
    /// The server optimizer's state after producing this version (JSON), if it keeps any.
    pub server_state: Option<String>,
}

string_enum! {
    /// Where a round is. `Committed` and `Failed` are terminal.
    pub enum RoundState ("round state") {
        Created = "created",
        Selecting = "selecting",
        Training = "training",
        AdvertiseKeys = "advertise_keys",
        ShareKeys = "share_keys",
        MaskedInput = "masked_input",
        Unmasking = "unmasking",
        Evaluating = "evaluating",
        Committed = "committed",
        Failed = "failed",
    }
}

impl RoundState {
    pub fn is_terminal(self) -> bool {
        matches!(self, RoundState::Committed | RoundState::Failed)
    }

    /// The position in a round's course (the order of `ALL`).
    pub(crate) fn order(self) -> usize {
        Self::ALL
            .iter()
            .position(|s| *s == self)
            .unwrap_or(usize::MAX)
    }

    pub(crate) fn terminal_strs() -> impl Iterator<Item = &'static str> {
        Self::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(Self::as_str)
    }
}

string_enum! {
    /// A facility's part in one round.
    pub enum ParticipantStatus ("participant status") {
        Selected = "selected",
        /// Secure aggregation: trained, holding its update for the masked stages.
        Trained = "trained",
        Uploaded = "uploaded",
        Rejected = "rejected",
        Dropped = "dropped",
    }
}

/// Text that names no variant of `RoundState` or `ParticipantStatus`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {text:?}")]
pub struct ParseEnumError {
    kind: &'static str,
    text: String,
}

impl ParseEnumError {
    pub(crate) fn new(kind: &'static str, text: &str) -> Self {
        ParseEnumError {
            kind,
            text: text.to_owned(),
        }
    }
}

/// One round of a federation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoundRow {
    pub id: u64,
    pub federation: String,
    /// 1, 2, 3, ... per federation.
    pub number: u32,
    pub state: RoundState,
    pub failure_reason: Option<String>,
    pub base_version: u32,
    pub result_version: Option<u32>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A stage a round entered, and when (Unix ms). The stage lasts until the next one
/// starts; a terminal state's time is the round's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StageRow {
    pub state: RoundState,
    pub started_ms: i64,
}

/// One facility in one round.
#[derive(Clone, Debug, PartialEq)]
pub struct ParticipantRow {
    pub round_id: u64,
    pub facility: String,
    pub status: ParticipantStatus,
    pub n_samples: u64,
    pub update_sha256: Option<String>,
    pub detail: Option<String>,
    pub metrics: Option<MetricsRow>,
}

/// Evaluation metrics a facility reported. Any of the floats may be NaN
/// (AUC is undefined when the local test set has one class); NaN is stored as
/// NULL and read back as NaN. Compare with `same_as`, since NaN != NaN.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MetricsRow {
    pub n_samples: u64,
    pub loss: f64,
    pub accuracy: f64,
    pub auc: f64,
    pub n_positives: u64,
    pub sensitivity: f64,
    pub specificity: f64,
    /// Expected calibration error.
    pub ece: f64,
}

impl MetricsRow {
    /// Equality that treats NaN as equal to NaN.
    pub fn same_as(&self, other: &MetricsRow) -> bool {
        fn same(a: f64, b: f64) -> bool {
            a == b || (a.is_nan() && b.is_nan())
        }
        self.n_samples == other.n_samples
            && same(self.loss, other.loss)
            && same(self.accuracy, other.accuracy)
            && same(self.auc, other.auc)
            && self.n_positives == other.n_positives
            && same(self.sensitivity, other.sensitivity)
            && same(self.specificity, other.specificity)
            && same(self.ece, other.ece)
    }
}

/// An agent (facility) the coordinator has seen, keyed by facility.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentRow {
    pub facility: String,
    pub cert_sha256: String,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}
