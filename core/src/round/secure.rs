//! Secure aggregation inside a round: the server side of SecAgg+ (`harambee-secagg`) between
//! the end of local training and evaluation. The coordinator only ever holds masked vectors
//! (folded into one running sum on arrival) and learns only the weighted sum.
//!
//! The participants are the facilities that finished training; each gets an id (1-based,
//! in facility-name order). Each stage ends when every facility still in it has answered,
//! or at its deadline; those who did not answer are dropouts, recovered from shares.

use std::collections::{BTreeMap, BTreeSet};

use harambee_secagg::ed25519_dalek::VerifyingKey;
use harambee_secagg::{
    AfterMaskedInputs, Aggregate, CollectingAdvertisements, CollectingMaskedInputs,
    CollectingShares, CollectingSignatures, CollectingUnmaskShares, ConsistencyProof,
    ConsistencySignature, EncryptedShare, MaskedInput, Params, ServerError, ServerRound,
    SignedAdvertisement, UnmaskRequest, UnmaskShares, Word,
};

use super::{SecureConfig, Stage};
use crate::FacilityId;

/// What the coordinator sends a facility at a secure-aggregation stage.
#[derive(Debug, Clone, PartialEq)]
pub enum SecAggOut {
    /// Stage 1: the round's parameters and the facility's id; answer with an advertisement.
    Advertise { params: Params, my_id: u32 },
    /// Stage 2: its neighbours' signed advertisements, and who they are (to check their
    /// certificates); answer with encrypted shares.
    PeerKeys {
        advertisements: Vec<SignedAdvertisement>,
        peers: Vec<(u32, FacilityId)>,
    },
    /// Stage 3: the shares addressed to it; answer with the masked input.
    Shares(Vec<EncryptedShare>),
    /// Stage 4: the survivors; answer with unmask shares, or sign the request first.
    Unmask {
        request: UnmaskRequest,
        sign_first: bool,
    },
    /// Consistency check: every survivor's signature; answer with unmask shares.
    Consistency(ConsistencyProof),
}

/// What a facility sends at a secure-aggregation stage.
#[derive(Debug, Clone, PartialEq)]
pub enum SecAggIn {
    Advertise(SignedAdvertisement),
    Shares(Vec<EncryptedShare>),
    Masked(MaskedInput),
    /// A masked input as it came off the network: little-endian words in the pieces the
    /// transport delivered, added to the sum without a decoded copy
    /// ([`harambee_secagg::CollectingMaskedInputs::receive_le_pieces`]).
    MaskedPieces(MaskedPieces),
    Signature(ConsistencySignature),
    Unmask(UnmaskShares),
}

/// See [`SecAggIn::MaskedPieces`].
#[derive(Debug, Clone, PartialEq)]
pub struct MaskedPieces {
    pub round_id: u64,
    pub sender: u32,
    pub word: harambee_secagg::Word,
    pub pieces: Vec<bytes::Bytes>,
}

impl SecAggIn {
    fn stage(&self) -> Stage {
        match self {
            SecAggIn::Advertise(_) => Stage::AdvertiseKeys,
            SecAggIn::Shares(_) => Stage::ShareKeys,
            SecAggIn::Masked(_) | SecAggIn::MaskedPieces(_) => Stage::MaskedInput,
            SecAggIn::Signature(_) | SecAggIn::Unmask(_) => Stage::Unmasking,
        }
    }
}

enum Server {
    Keys(CollectingAdvertisements),
    Shares(CollectingShares),
    Masked(CollectingMaskedInputs),
    Signatures(CollectingSignatures),
    Unmask(CollectingUnmaskShares),
    Done,
}

/// The server side of one round's secure aggregation.
pub(super) struct SecureRound {
    params: Params,
    ids: BTreeMap<FacilityId, u32>,
    names: BTreeMap<u32, FacilityId>,
    server: Server,
    /// Facilities still owed an answer at this stage.
    awaiting: BTreeSet<u32>,
}

/// The next step after a stage closed.
pub(super) enum Advance {
    /// Send these messages; the round is now at `stage`.
    Next {
        stage: Stage,
        messages: Vec<(FacilityId, SecAggOut)>,
    },
    Done(Aggregate),
}

impl std::fmt::Debug for SecureRound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureRound")
            .field("participants", &self.ids)
            .field("awaiting", &self.awaiting)
            .finish()
    }
}

impl SecureRound {
    /// Starts secure aggregation over `trained` (facility → identity key), with the noise
    /// calibrated so that `min_survivors` shares carry all of it and nothing unmasked for
    /// fewer survivors ([`Params::for_round`]; n_min is at least the threshold).
    pub(super) fn start(
        round_id: u64,
        trained: &BTreeMap<FacilityId, VerifyingKey>,
        vector_len: usize,
        config: &SecureConfig,
        min_survivors: usize,
    ) -> Result<(SecureRound, Vec<(FacilityId, SecAggOut)>), ServerError> {
        let ids: BTreeMap<FacilityId, u32> = trained
            .keys()
            .zip(1u32..)
            .map(|(a, i)| (a.clone(), i))
            .collect();
        let names: BTreeMap<u32, FacilityId> = ids.iter().map(|(a, &i)| (i, a.clone())).collect();
        let participants: Vec<u32> = names.keys().copied().collect();
        // Exactly what each agent recomputes (`harambee_secagg::Expectation`): n_min =
        // max(min_survivors, t), each agent's noise share calibrated so that n_min shares
        // carry the full noise; the server and every client refuse to unmask fewer.
        let mut params = Params::for_round_with(
            round_id,
            &participants,
            vector_len,
            config.clip,
            config.max_weight,
            config.noise_stddev,
            min_survivors,
            harambee_secagg::GraphTargets::with_failure_probability(config.failure_probability),
        )?;
        params.consistency_check = config.consistency_check;
        let keys = trained.iter().map(|(a, k)| (ids[a], *k)).collect();
        let server = ServerRound::new(params.clone(), keys)?;
        let messages = ids
            .iter()
            .map(|(agent, &my_id)| {
                (
                    agent.clone(),
                    SecAggOut::Advertise {
                        params: params.clone(),
                        my_id,
                    },
                )
            })
            .collect();
        let round = SecureRound {
            params,
            awaiting: names.keys().copied().collect(),
            ids,
            names,
            server: Server::Keys(server),
        };
        Ok((round, messages))
    }

    pub(super) fn params(&self) -> &Params {
        &self.params
    }

    pub(super) fn id_of(&self, agent: &str) -> Option<u32> {
        self.ids.get(agent).copied()
    }

    pub(super) fn name_of(&self, id: u32) -> &FacilityId {
        &self.names[&id]
    }

    /// The shape of a masked input: word size and number of words.
    pub(super) fn masked_shape(&self) -> (Word, usize) {
        (self.params.word, self.params.vector_len + 1)
    }

    /// Whether every facility still in the stage has answered.
    pub(super) fn stage_complete(&self) -> bool {
        self.awaiting.is_empty()
    }

    /// `agent` will not answer at this stage (lost, or its message was refused).
    pub(super) fn give_up_on(&mut self, agent: &str) {
        if let Some(id) = self.id_of(agent) {
            self.awaiting.remove(&id);
        }
    }

    /// Bytes the server holds from one facility at the current stage (a masked input is
    /// folded into the running sum, so it holds none of it).
    pub(super) fn stored_bytes(&self, agent: &str) -> usize {
        let Some(id) = self.id_of(agent) else {
            return 0;
        };
        match &self.server {
            Server::Keys(s) => s.stored_bytes(id),
            Server::Shares(s) => s.stored_bytes(id),
            Server::Masked(s) => s.stored_bytes(id),
            Server::Unmask(s) => s.stored_bytes(id),
            Server::Signatures(_) | Server::Done => 0,
        }
    }

    /// One facility's message. On error the message is refused and the facility is no
    /// longer awaited at this stage.
    pub(super) fn receive(
        &mut self,
        current: Stage,
        agent: &str,
        msg: SecAggIn,
    ) -> Result<(), SecAggRefusal> {
        let from = self.id_of(agent).ok_or(SecAggRefusal::NotParticipant)?;
        if msg.stage() != current {
            return Err(SecAggRefusal::WrongStage {
                expected: current,
                got: msg.stage(),
            });
        }
        if !self.awaiting.contains(&from) {
            return Err(SecAggRefusal::NotAwaited);
        }
        let result = match (&mut self.server, msg) {
            (Server::Keys(s), SecAggIn::Advertise(ad)) => s.receive(from, ad),
            (Server::Shares(s), SecAggIn::Shares(shares)) => s.receive(from, shares),
            (Server::Masked(s), SecAggIn::Masked(input)) => s.receive(from, input),
            (Server::Masked(s), SecAggIn::MaskedPieces(input)) => s.receive_le_pieces(
                from,
                input.round_id,
                input.sender,
                input.word,
                &input.pieces,
            ),
            (Server::Signatures(s), SecAggIn::Signature(sig)) => s.receive(from, sig),
            (Server::Unmask(s), SecAggIn::Unmask(shares)) => s.receive(from, shares),
            _ => {
                return Err(SecAggRefusal::WrongStage {
                    expected: current,
                    got: current,
                });
            }
        };
        self.awaiting.remove(&from);
        result.map_err(SecAggRefusal::Protocol)
    }

    /// Closes the current stage (everyone answered, or its deadline passed).
    pub(super) fn advance(&mut self, unmask_threads: usize) -> Result<Advance, ServerError> {
        let server = std::mem::replace(&mut self.server, Server::Done);
        let (next, stage, messages): (Server, Stage, Vec<(u32, SecAggOut)>) = match server {
            Server::Keys(s) => {
                let (next, routes) = s.finish()?;
                // The consistency check has every client verify every survivor's signature,
                // so then each gets every participant's certificate, not only its neighbours'.
                let everyone: Vec<(u32, FacilityId)> = self
                    .names
                    .iter()
                    .map(|(&id, name)| (id, name.clone()))
                    .collect();
                let consistency = self.params.consistency_check;
                let messages = routes
                    .into_iter()
                    .map(|(id, ads)| {
                        let peers = if consistency {
                            everyone.clone()
                        } else {
                            ads.iter()
                                .map(|ad| (ad.sender, self.names[&ad.sender].clone()))
                                .collect()
                        };
                        (
                            id,
                            SecAggOut::PeerKeys {
                                advertisements: ads,
                                peers,
                            },
                        )
                    })
                    .collect();
                (Server::Shares(next), Stage::ShareKeys, messages)
            }
            Server::Shares(s) => {
                let (next, routes) = s.finish()?;
                (
                    Server::Masked(next),
                    Stage::MaskedInput,
                    routes
                        .into_iter()
                        .map(|(id, sh)| (id, SecAggOut::Shares(sh)))
                        .collect(),
                )
            }
            Server::Masked(s) => match s.finish()? {
                AfterMaskedInputs::Unmask(next, requests) => {
                    let messages = requests.into_iter().map(|(id, request)| {
                        (
                            id,
                            SecAggOut::Unmask {
                                request,
                                sign_first: false,
                            },
                        )
                    });
                    (Server::Unmask(next), Stage::Unmasking, messages.collect())
                }
                AfterMaskedInputs::ConsistencyCheck(next, requests) => {
                    let messages = requests.into_iter().map(|(id, request)| {
                        (
                            id,
                            SecAggOut::Unmask {
                                request,
                                sign_first: true,
                            },
                        )
                    });
                    (
                        Server::Signatures(next),
                        Stage::Unmasking,
                        messages.collect(),
                    )
                }
            },
            Server::Signatures(s) => {
                let (next, proofs) = s.finish()?;
                (
                    Server::Unmask(next),
                    Stage::Unmasking,
                    proofs
                        .into_iter()
                        .map(|(id, p)| (id, SecAggOut::Consistency(p)))
                        .collect(),
                )
            }
            Server::Unmask(s) => {
                return s.finish_with_threads(unmask_threads).map(Advance::Done);
            }
            Server::Done => unreachable!("advance after the aggregate"),
        };
        self.server = next;
        self.awaiting = messages.iter().map(|(id, _)| *id).collect();
        let messages = messages
            .into_iter()
            .map(|(id, m)| (self.names[&id].clone(), m))
            .collect();
        Ok(Advance::Next { stage, messages })
    }
}

/// Why a secure-aggregation message was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SecAggRefusal {
    #[error("not a participant of this round's secure aggregation")]
    NotParticipant,
    #[error("sent a {got} message during {expected}")]
    WrongStage { expected: Stage, got: Stage },
    #[error("not expected to answer at this stage (already answered, dropped or pruned)")]
    NotAwaited,
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error(transparent)]
    Protocol(ServerError),
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use harambee_secagg::ed25519_dalek::SigningKey;
    use harambee_secagg::{Expectation, ParamsPolicy};

    use super::*;

    fn trained(n: u8) -> BTreeMap<FacilityId, VerifyingKey> {
        (1..=n)
            .map(|i| {
                let key = SigningKey::from_bytes(&[i; 32]).verifying_key();
                (FacilityId::from(format!("site-{i:02}")), key)
            })
            .collect()
    }

    fn config(noise_stddev: f64) -> SecureConfig {
        SecureConfig {
            clip: 1.0,
            max_weight: 1,
            stage_timeout: Duration::from_secs(10),
            consistency_check: true,
            noise_stddev,
            failure_probability: harambee_secagg::DESIGN_FAILURE_PROBABILITY,
        }
    }

    fn offered(min_survivors: usize, noise_stddev: f64) -> Params {
        let (round, _) =
            SecureRound::start(7, &trained(10), 50, &config(noise_stddev), min_survivors).unwrap();
        round.params().clone()
    }

    #[test]
    fn the_round_sets_n_min_to_its_min_survivors_and_calibrates_the_noise_to_it() {
        // Ten facilities: complete graph, t = 5.
        let p = offered(8, 0.3);
        assert_eq!((p.threshold, p.n_min), (5, 8));
        assert!(p.consistency_check);
        // n_min shares carry the full target: sqrt(8) · sigma_q · c / L = 0.3.
        let total = (p.n_min as f64).sqrt() * p.noise_stddev * p.quant_step();
        assert!((total / 0.3 - 1.0).abs() < 1e-9, "{total}");
        // A minimum below the threshold: n_min is the threshold.
        assert_eq!(offered(2, 0.0).n_min, 5);
    }

    #[test]
    fn an_agent_recomputes_exactly_what_the_round_offers() {
        let expectation = |min_survivors| Expectation {
            round_id: 7,
            vector_len: 50,
            clip: 1.0,
            max_weight: 1,
            noise_stddev: 0.3,
            min_survivors,
            failure_probability: harambee_secagg::DESIGN_FAILURE_PROBABILITY,
            policy: ParamsPolicy {
                require_distributed_noise: true,
                require_consistency_check: true,
                ..ParamsPolicy::default()
            },
        };
        expectation(8).check(&offered(8, 0.3)).unwrap();
        // Calibrated to another minimum than the task declared: refused.
        assert!(expectation(8).check(&offered(6, 0.3)).is_err());
    }
}
