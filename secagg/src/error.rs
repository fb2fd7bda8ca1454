//! Typed errors. Every error caused by a message names the peer at fault
//! ([`ServerError::peer`], [`ClientError::peer`]) so a driver can blame, log or
//! disconnect it; nothing built from network input panics.

use thiserror::Error;

/// A parameter set that cannot run a round ([`crate::Params::validate`]).
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParamsError {
    #[error("need at least 2 participants, got {0}")]
    TooFewParticipants(usize),
    #[error(
        "participant ids must be strictly increasing (sorted, no duplicates); offending id {0}"
    )]
    ParticipantsNotSorted(u32),
    #[error("vector length must be between 1 and {max}, got {got}")]
    VectorLength { got: usize, max: usize },
    #[error(
        "neighbours k must be even and at least 2 unless k >= n - 1 (complete graph); got k = {k} for n = {n}"
    )]
    Neighbours { k: usize, n: usize },
    #[error("threshold t must be between 1 and the graph degree {degree}, got {t}")]
    Threshold { t: usize, degree: usize },
    #[error(
        "minimum survivors n_min must be between the threshold {t} and the number of participants {n}, got {n_min}"
    )]
    MinSurvivors { n_min: usize, t: usize, n: usize },
    #[error("clipping range must be finite and positive, got {0}")]
    Clip(f32),
    #[error("quantization bits must be between 2 and {max} for this word size, got {got}")]
    QuantBits { got: u32, max: u32 },
    #[error("max weight must be at least 1")]
    MaxWeight,
    #[error("noise standard deviation must be finite and between 0 and 2^40 levels, got {0}")]
    NoiseStddev(f64),
    #[error(
        "the sum of {n} inputs of weight up to {max_weight} at {quant_bits} quantization bits (plus noise, if any) can wrap modulo 2^{word_bits}"
    )]
    CanWrap {
        n: usize,
        max_weight: u64,
        quant_bits: u32,
        word_bits: u32,
    },
}

/// A byte string that is not a canonical encoding of the expected message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("message truncated: needed {needed} more bytes at offset {offset}")]
    Truncated { offset: usize, needed: usize },
    #[error("unsupported encoding version {0}")]
    Version(u8),
    #[error("expected message tag {expected}, got {got}")]
    Tag { expected: u8, got: u8 },
    #[error("unknown word size tag {0}")]
    WordTag(u8),
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    #[error("byte length {len} is not a multiple of the word size {word_bytes}")]
    Misaligned { len: usize, word_bytes: usize },
    #[error("invalid field: {0}")]
    Invalid(&'static str),
}

/// The protocol stage an error or a dropout refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    AdvertiseKeys,
    ShareKeys,
    MaskedInput,
    ConsistencyCheck,
    Unmasking,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            Stage::AdvertiseKeys => "advertise keys",
            Stage::ShareKeys => "share keys",
            Stage::MaskedInput => "masked input",
            Stage::ConsistencyCheck => "consistency check",
            Stage::Unmasking => "unmasking",
        };
        f.write_str(name)
    }
}

/// Errors of the server state machine ([`crate::server`]).
///
/// Variants with a `peer` field reject one message and leave the stage as it was: the
/// driver may log the peer's fault and keep collecting. [`ServerError::BelowThreshold`],
/// [`ServerError::BelowMinSurvivors`], [`ServerError::ReconstructionFailed`] and
/// [`ServerError::CorruptAggregate`] come from `finish` and end the round.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ServerError {
    #[error("invalid parameters: {0}")]
    Params(#[from] ParamsError),
    #[error("no verifying key for participant {0}")]
    MissingVerifyingKey(u32),
    #[error("peer {peer} is not a participant of this round")]
    UnknownParticipant { peer: u32 },
    #[error("peer {peer} sent a message for round {got}, this is round {expected}")]
    WrongRound { peer: u32, got: u64, expected: u64 },
    #[error("peer {peer} sent a message claiming to come from {claimed}")]
    SenderMismatch { peer: u32, claimed: u32 },
    #[error("peer {peer} already sent its {stage} message")]
    Duplicate { peer: u32, stage: Stage },
    #[error("peer {peer} is not part of the {stage} stage (dropped or pruned earlier)")]
    NotInStage { peer: u32, stage: Stage },
    #[error("peer {peer} sent a bad signature")]
    BadSignature { peer: u32 },
    #[error("peer {peer} advertised a low-order public key")]
    BadPublicKey { peer: u32 },
    #[error("peer {peer} sent a share for {recipient}, who is not one of its live neighbours")]
    MisaddressedShare { peer: u32, recipient: u32 },
    #[error("peer {peer} sent two shares for {recipient}")]
    DuplicateShare { peer: u32, recipient: u32 },
    #[error("peer {peer} sent no share for its live neighbours {missing:?}")]
    IncompleteShares { peer: u32, missing: Vec<u32> },
    #[error("peer {peer} sent a malformed share ({reason})")]
    MalformedShare { peer: u32, reason: &'static str },
    #[error("peer {peer} sent a vector of {got} words, expected {expected}")]
    WrongLength {
        peer: u32,
        expected: usize,
        got: usize,
    },
    #[error("peer {peer} sent {got}-bit words, this round uses {expected}-bit words")]
    WrongWordSize { peer: u32, expected: u32, got: u32 },
    #[error("peer {peer} revealed a share of {owner} that the unmask request did not ask for")]
    UnrequestedShare { peer: u32, owner: u32 },
    #[error("peer {peer} omitted the share of {owner} that the unmask request asked for")]
    MissingShare { peer: u32, owner: u32 },
    #[error("below threshold at {stage}: {} clients lack {needed} live neighbours ({unrecoverable:?}); {live} clients live", unrecoverable.len())]
    BelowThreshold {
        stage: Stage,
        needed: usize,
        live: usize,
        unrecoverable: Vec<u32>,
    },
    #[error(
        "only {survivors} clients left at {stage}: this round unmasks no sum of fewer than n_min = {n_min}"
    )]
    BelowMinSurvivors {
        stage: Stage,
        survivors: usize,
        n_min: usize,
    },
    #[error("consistency check: {signed} signatures, need {needed}")]
    ConsistencyQuorum { signed: usize, needed: usize },
    #[error(
        "the shares held for client {client} do not reconstruct its committed secret (a share holder lied)"
    )]
    ReconstructionFailed { client: u32 },
    #[error(
        "the unmasked aggregate is out of range (some client sent an inconsistent masked input)"
    )]
    CorruptAggregate,
}

impl ServerError {
    /// The peer whose message caused this error, if one did.
    pub fn peer(&self) -> Option<u32> {
        match self {
            ServerError::UnknownParticipant { peer }
            | ServerError::WrongRound { peer, .. }
            | ServerError::SenderMismatch { peer, .. }
            | ServerError::Duplicate { peer, .. }
            | ServerError::NotInStage { peer, .. }
            | ServerError::BadSignature { peer }
            | ServerError::BadPublicKey { peer }
            | ServerError::MisaddressedShare { peer, .. }
            | ServerError::DuplicateShare { peer, .. }
            | ServerError::IncompleteShares { peer, .. }
            | ServerError::MalformedShare { peer, .. }
            | ServerError::WrongLength { peer, .. }
            | ServerError::WrongWordSize { peer, .. }
            | ServerError::UnrequestedShare { peer, .. }
            | ServerError::MissingShare { peer, .. } => Some(*peer),
            _ => None,
        }
    }
}

/// Errors of the client state machine ([`crate::client`]). A client that gets one
/// abandons the round: the stage struct was consumed and nothing more is revealed.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ClientError {
    #[error("invalid parameters: {0}")]
    Params(#[from] ParamsError),
    #[error("this client ({0}) is not a participant of the round")]
    NotAParticipant(u32),
    #[error("message from peer {peer} is for round {got}, this is round {expected}")]
    WrongRound { peer: u32, got: u64, expected: u64 },
    #[error("peer {peer} is not a live neighbour of this client")]
    NotANeighbour { peer: u32 },
    #[error("the server's message is for round {got}, this is round {expected}")]
    RequestForOtherRound { got: u64, expected: u64 },
    #[error("got two messages from peer {peer}")]
    Duplicate { peer: u32 },
    #[error("no verifying key for peer {peer}")]
    UnknownPeer { peer: u32 },
    #[error("peer {peer}'s signature does not verify")]
    BadSignature { peer: u32 },
    #[error("peer {peer} advertised a low-order public key")]
    BadPublicKey { peer: u32 },
    #[error("share from peer {peer} is addressed to {recipient}")]
    MisaddressedShare { peer: u32, recipient: u32 },
    #[error("share from peer {peer} does not decrypt or is malformed")]
    ShareDecryption { peer: u32 },
    #[error("only {live} live neighbours, threshold is {needed}")]
    BelowThreshold { live: usize, needed: usize },
    #[error(
        "unmask request names peer {peer} both as survivor and as dropout: answering would reveal both its masks"
    )]
    WouldRevealBothMasks { peer: u32 },
    #[error("unmask request is inconsistent about peer {peer} ({reason})")]
    InconsistentUnmaskRequest { peer: u32, reason: &'static str },
    #[error(
        "the unmask request names {survivors} survivors: this round reveals nothing for fewer than n_min = {n_min}"
    )]
    BelowMinSurvivors { survivors: usize, n_min: usize },
    #[error("the unmask request says this client dropped out")]
    NotASurvivor,
    #[error("this round requires the consistency check before unmasking")]
    ConsistencyCheckRequired,
    #[error("this round has no consistency check")]
    NoConsistencyCheck,
    #[error("consistency proof is for a different survivor set than the one signed")]
    ConsistencyMismatch,
    #[error("consistency proof has {valid} valid signatures, need {needed}")]
    ConsistencyQuorum { valid: usize, needed: usize },
    #[error("input has {got} values, expected {expected}")]
    InputLength { expected: usize, got: usize },
    #[error("input value at index {index} is not finite")]
    NonFiniteInput { index: usize },
    #[error("weight {weight} is outside 1..={max}")]
    Weight { weight: u64, max: u64 },
}

impl ClientError {
    /// The peer whose message caused this error, if one did (the server is at fault for
    /// errors about the unmask request or the consistency proof).
    pub fn peer(&self) -> Option<u32> {
        match self {
            ClientError::WrongRound { peer, .. }
            | ClientError::NotANeighbour { peer }
            | ClientError::Duplicate { peer }
            | ClientError::UnknownPeer { peer }
            | ClientError::BadSignature { peer }
            | ClientError::BadPublicKey { peer }
            | ClientError::MisaddressedShare { peer, .. }
            | ClientError::ShareDecryption { peer } => Some(*peer),
            _ => None,
        }
    }
}
