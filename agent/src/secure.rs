//! The agent's side of secure aggregation (SecAgg+, `harambee-secagg`). After training, the
//! update stays here; it leaves only masked, and the coordinator learns only the sum over
//! the round's survivors. Each stage's task from the coordinator advances this facility's
//! client state machine by one step; its answer goes back through `SubmitSecAgg` (or, for
//! the masked input, `UploadUpdate`).

use std::collections::{BTreeMap, HashMap};

use anyhow::{Context, bail};
use harambee_link::convert::params_from_pb;
use harambee_link::identity::PeerVerifier;
use harambee_proto::pb;
use harambee_secagg::ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AwaitingConsistency, AwaitingPeerKeys, AwaitingShares, AwaitingUnmask, ChaCha20Rng,
    ClientRound, ConsistencyProof, EncryptedShare, Message, SignedAdvertisement, UnmaskRequest,
};

/// Where one round's client is.
enum State {
    /// Trained; waiting for the round's parameters.
    Trained {
        update: Vec<f32>,
        weight: u64,
    },
    Keys {
        next: AwaitingPeerKeys,
        update: Vec<f32>,
        weight: u64,
    },
    Shares {
        next: AwaitingShares,
        update: Vec<f32>,
        weight: u64,
    },
    Unmask(AwaitingUnmask),
    Consistency(AwaitingConsistency),
}

/// What to send the coordinator after a step.
pub enum Reply {
    Submit(pb::sec_agg_submission::Part),
    /// The masked input, as little-endian words, to stream through UploadUpdate.
    Masked {
        words: Vec<u8>,
        n_words: usize,
    },
}

/// Secure-aggregation clients of the rounds this agent takes part in.
pub struct SecureClients {
    signing_key: Option<SigningKey>,
    verifier: PeerVerifier,
    rounds: HashMap<u64, State>,
    federations: HashMap<u64, String>,
}

impl SecureClients {
    pub fn new(signing_key: Option<SigningKey>, verifier: PeerVerifier) -> SecureClients {
        SecureClients {
            signing_key,
            verifier,
            rounds: HashMap::new(),
            federations: HashMap::new(),
        }
    }

    /// Keeps a trained update for the masked stages of `round_id`.
    pub fn trained(&mut self, round_id: u64, federation: &str, update: Vec<f32>, weight: u64) {
        self.rounds
            .insert(round_id, State::Trained { update, weight });
        self.federations.insert(round_id, federation.to_owned());
    }

    pub fn federation_of(&self, round_id: u64) -> Option<String> {
        self.federations.get(&round_id).cloned()
    }

    /// Moves `round_id`'s client into a set of its own, to step it away from the others
    /// (a step can take a while); [`SecureClients::attach`] puts it back.
    pub fn detach(&mut self, round_id: u64) -> SecureClients {
        let mut one = SecureClients::new(self.signing_key.clone(), self.verifier.clone());
        if let Some(state) = self.rounds.remove(&round_id) {
            one.rounds.insert(round_id, state);
        }
        if let Some(federation) = self.federations.get(&round_id) {
            one.federations.insert(round_id, federation.clone());
        }
        one
    }

    /// Puts back what [`SecureClients::detach`] took, unless the round was forgotten
    /// (cancelled) in the meantime.
    pub fn attach(&mut self, other: SecureClients) {
        for (round_id, state) in other.rounds {
            if self.federations.contains_key(&round_id) {
                self.rounds.insert(round_id, state);
            }
        }
    }

    pub fn forget(&mut self, round_id: u64) {
        self.rounds.remove(&round_id);
        self.federations.remove(&round_id);
    }

    /// Advances `round_id`'s client with the coordinator's message for the next stage.
    pub fn step(&mut self, task: Stage) -> anyhow::Result<Reply> {
        let round_id = task.round_id();
        let state = self
            .rounds
            .remove(&round_id)
            .with_context(|| format!("no secure-aggregation state for round {round_id}"))?;
        let mut rng = ChaCha20Rng::from_seed(rand::random());
        let (state, reply) = match (state, task) {
            (State::Trained { update, weight }, Stage::Advertise(t)) => {
                let params = params_from_pb(t.params.as_ref().context("no parameters")?)?;
                if params.round_id != round_id || params.vector_len != update.len() {
                    bail!(
                        "secure-aggregation parameters do not match the round (round {}, {} values)",
                        params.round_id,
                        params.vector_len
                    );
                }
                let key = self
                    .signing_key
                    .clone()
                    .context("this agent's key is not Ed25519; re-issue its certificate")?;
                let (next, ad) = ClientRound::new(params, t.my_id, key, &mut rng)?;
                (
                    Some(State::Keys {
                        next,
                        update,
                        weight,
                    }),
                    Reply::Submit(pb::sec_agg_submission::Part::Advertise(ad.encode())),
                )
            }
            (
                State::Keys {
                    next,
                    update,
                    weight,
                },
                Stage::ShareKeys(t),
            ) => {
                let mut keys: BTreeMap<u32, VerifyingKey> = BTreeMap::new();
                for peer in &t.peers {
                    keys.insert(
                        peer.id,
                        self.verifier.verify_chain(
                            &peer.facility,
                            &peer.certificate,
                            &peer.intermediates,
                        )?,
                    );
                }
                let ads = t
                    .advertisements
                    .iter()
                    .map(|b| SignedAdvertisement::decode(b))
                    .collect::<Result<Vec<_>, _>>()?;
                let (next, shares) = next.handle_keys(ads, &keys, &mut rng)?;
                let shares = shares.iter().map(Message::encode).collect();
                (
                    Some(State::Shares {
                        next,
                        update,
                        weight,
                    }),
                    Reply::Submit(pb::sec_agg_submission::Part::Shares(pb::SecAggShares {
                        shares,
                    })),
                )
            }
            (
                State::Shares {
                    next,
                    update,
                    weight,
                },
                Stage::MaskedInput(t),
            ) => {
                let shares = t
                    .shares
                    .iter()
                    .map(|b| EncryptedShare::decode(b))
                    .collect::<Result<Vec<_>, _>>()?;
                let (next, masked) = next.handle_shares(shares, &update, weight, &mut rng)?;
                let n_words = masked.words.len();
                (
                    Some(State::Unmask(next)),
                    Reply::Masked {
                        words: masked.words.to_le_bytes(),
                        n_words,
                    },
                )
            }
            (State::Unmask(next), Stage::Unmask(t)) => {
                let request = UnmaskRequest::decode(&t.request)?;
                if t.sign_first {
                    let (next, signature) = next.sign_survivors(&request)?;
                    (
                        Some(State::Consistency(next)),
                        Reply::Submit(pb::sec_agg_submission::Part::ConsistencySignature(
                            signature.encode(),
                        )),
                    )
                } else {
                    let shares = next.handle_unmask(&request)?;
                    (
                        None,
                        Reply::Submit(pb::sec_agg_submission::Part::Unmask(shares.encode())),
                    )
                }
            }
            (State::Consistency(next), Stage::Consistency(t)) => {
                let proof = ConsistencyProof::decode(&t.proof)?;
                let shares = next.handle_consistency(&proof)?;
                (
                    None,
                    Reply::Submit(pb::sec_agg_submission::Part::Unmask(shares.encode())),
                )
            }
            (state, task) => {
                let expected = match &state {
                    State::Trained { .. } => "parameters",
                    State::Keys { .. } => "peer keys",
                    State::Shares { .. } => "key shares",
                    State::Unmask(_) => "an unmask request",
                    State::Consistency(_) => "a consistency proof",
                };
                self.rounds.insert(round_id, state);
                bail!(
                    "ignoring a {} message while waiting for {expected} (resent after a reconnect?)",
                    task.name()
                );
            }
        };
        if let Some(state) = state {
            self.rounds.insert(round_id, state);
        }
        Ok(reply)
    }
}

/// A secure-aggregation task.
#[derive(Debug)]
pub enum Stage {
    Advertise(pb::SecAggAdvertise),
    ShareKeys(pb::SecAggShareKeys),
    MaskedInput(pb::SecAggMaskedInput),
    Unmask(pb::SecAggUnmask),
    Consistency(pb::SecAggConsistency),
}

impl Stage {
    pub fn round_id(&self) -> u64 {
        match self {
            Stage::Advertise(t) => t.round_id,
            Stage::ShareKeys(t) => t.round_id,
            Stage::MaskedInput(t) => t.round_id,
            Stage::Unmask(t) => t.round_id,
            Stage::Consistency(t) => t.round_id,
        }
    }

    pub fn deadline_unix_ms(&self) -> i64 {
        match self {
            Stage::Advertise(t) => t.deadline_unix_ms,
            Stage::ShareKeys(t) => t.deadline_unix_ms,
            Stage::MaskedInput(t) => t.deadline_unix_ms,
            Stage::Unmask(t) => t.deadline_unix_ms,
            Stage::Consistency(t) => t.deadline_unix_ms,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Stage::Advertise(_) => "advertise-keys",
            Stage::ShareKeys(_) => "share-keys",
            Stage::MaskedInput(_) => "masked-input",
            Stage::Unmask(_) => "unmasking",
            Stage::Consistency(_) => "consistency",
        }
    }
}
