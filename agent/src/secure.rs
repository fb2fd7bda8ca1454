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
    ClientRound, ConsistencyProof, EncryptedShare, Expectation, Message, ParamsPolicy,
    SignedAdvertisement, UnmaskRequest,
};

/// Where one round's client is.
enum State {
    /// Trained; waiting for the round's parameters, which must be what `expectation`
    /// recomputes.
    Trained {
        update: Vec<f32>,
        weight: u64,
        expectation: Expectation,
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
    /// Each peer facility's signing key as first seen (from the privacy log, then from
    /// certificates that verified): a certificate with another key for a facility is
    /// refused, whoever issued it.
    peer_keys: HashMap<String, VerifyingKey>,
    /// Keys pinned since the last [`SecureClients::take_new_peer_keys`], to be logged.
    new_peer_keys: Vec<(String, VerifyingKey)>,
    /// Rounds whose client this agent started (it advertised keys): each round gets one
    /// client, so one update is never masked under two sets of secrets. With the digest
    /// of the parameters it accepted, which the masked update's receipt states.
    advertised: HashMap<u64, [u8; 32]>,
}

impl SecureClients {
    pub fn new(signing_key: Option<SigningKey>, verifier: PeerVerifier) -> SecureClients {
        SecureClients {
            signing_key,
            verifier,
            rounds: HashMap::new(),
            federations: HashMap::new(),
            advertised: HashMap::new(),
            peer_keys: HashMap::new(),
            new_peer_keys: Vec::new(),
        }
    }

    /// Pins the keys the privacy log already knows for these facilities.
    pub fn pin_peers(&mut self, keys: impl IntoIterator<Item = (String, VerifyingKey)>) {
        self.peer_keys.extend(keys);
    }

    /// The key pinned for `facility`, if it has been seen.
    pub fn pinned_key(&self, facility: &str) -> Option<VerifyingKey> {
        self.peer_keys.get(facility).copied()
    }

    /// Keys pinned on first sight since the last call, for the privacy log.
    pub fn take_new_peer_keys(&mut self) -> Vec<(String, VerifyingKey)> {
        std::mem::take(&mut self.new_peer_keys)
    }

    /// A peer's certificate must carry the key pinned for its facility; a facility seen
    /// for the first time is pinned now.
    fn check_pinned(&mut self, facility: &str, key: VerifyingKey) -> Result<(), PeerKeyChanged> {
        match self.peer_keys.get(facility) {
            Some(pinned) if *pinned != key => Err(PeerKeyChanged {
                facility: facility.to_owned(),
                pinned: hex::encode(pinned.to_bytes()),
                offered: hex::encode(key.to_bytes()),
            }),
            Some(_) => Ok(()),
            None => {
                self.peer_keys.insert(facility.to_owned(), key);
                self.new_peer_keys.push((facility.to_owned(), key));
                Ok(())
            }
        }
    }

    /// Keeps a trained update for the masked stages of `round_id`; the round's parameters
    /// will be checked against `expectation` ([`expectation`] builds it from the train
    /// task). Refused once this agent has advertised keys for the round: a second client
    /// would mask the same update again under new secrets.
    pub fn trained(
        &mut self,
        round_id: u64,
        federation: &str,
        update: Vec<f32>,
        weight: u64,
        expectation: Expectation,
    ) -> anyhow::Result<()> {
        if self.advertised.contains_key(&round_id) {
            bail!(
                "round {round_id}: this agent already took part in its secure aggregation; a second update is refused"
            );
        }
        self.rounds.insert(
            round_id,
            State::Trained {
                update,
                weight,
                expectation,
            },
        );
        self.federations.insert(round_id, federation.to_owned());
        Ok(())
    }

    /// The digest of the parameters this agent accepted for `round_id` (`Params::digest`).
    pub fn accepted_params(&self, round_id: u64) -> Option<[u8; 32]> {
        self.advertised.get(&round_id).copied()
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
        one.advertised = self.advertised.clone();
        one.peer_keys = self.peer_keys.clone();
        one
    }

    /// Puts back what [`SecureClients::detach`] took, unless the round was forgotten
    /// (cancelled) in the meantime.
    pub fn attach(&mut self, other: SecureClients) {
        self.advertised.extend(other.advertised);
        for (facility, key) in other.new_peer_keys {
            if !self.peer_keys.contains_key(&facility) {
                self.peer_keys.insert(facility.clone(), key);
                self.new_peer_keys.push((facility, key));
            }
        }
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
            (
                State::Trained {
                    update,
                    weight,
                    expectation,
                },
                Stage::Advertise(t),
            ) => {
                let params = params_from_pb(t.params.as_ref().context("no parameters")?)?;
                // Recomputed from what this facility admitted; any difference and nothing
                // leaves (the round's state is dropped with the error).
                expectation.check(&params).with_context(|| {
                    format!("refusing round {round_id}'s secure-aggregation parameters")
                })?;
                let key = self
                    .signing_key
                    .clone()
                    .context("this agent's key is not Ed25519; re-issue its certificate")?;
                let params_digest = params.digest();
                let (next, ad) = ClientRound::new(params, t.my_id, key, &mut rng)?;
                self.advertised.insert(round_id, params_digest);
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
                    let key = self.verifier.verify_chain(
                        &peer.facility,
                        &peer.certificate,
                        &peer.intermediates,
                    )?;
                    self.check_pinned(&peer.facility, key)?;
                    keys.insert(peer.id, key);
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

/// What this facility expects of the secure-aggregation parameters of the round of `task`
/// (which carries `secure`), for an update of `vector_len` values: the task's clip, weight
/// cap and minimum survivors; the noise target noise_multiplier × clip_norm when the task
/// declares the distributed mechanism. Policy knobs: a strict majority threshold (0.5),
/// consistency check not required, distributed noise required when the task declares it,
/// at least 2 contributors. These knobs are defaults until the facility's `[policy]`
/// sets them.
pub fn expectation(
    task: &pb::TrainTask,
    secure: &pb::SecureAggregation,
    vector_len: usize,
    policy: &crate::config::PolicyConfig,
) -> Expectation {
    let distributed = task
        .privacy
        .as_ref()
        .filter(|p| p.mechanism == "distributed");
    Expectation {
        round_id: task.round_id,
        vector_len,
        clip: secure.clip,
        max_weight: secure.max_weight,
        noise_stddev: distributed.map_or(0.0, |p| p.noise_multiplier * p.clip_norm),
        min_survivors: (secure.min_survivors as usize).max(1),
        // 0: a coordinator that predates the field, which meant the default graph.
        failure_probability: if secure.failure_probability == 0.0 {
            harambee_secagg::DESIGN_FAILURE_PROBABILITY
        } else {
            secure.failure_probability
        },
        policy: ParamsPolicy {
            min_threshold_fraction: policy.min_threshold_fraction,
            require_consistency_check: policy.require_consistency_check,
            require_distributed_noise: policy.require_distributed_noise && distributed.is_some(),
            min_contributors: usize::try_from(policy.min_contributors).unwrap_or(usize::MAX),
            max_failure_probability: policy.max_graph_failure_probability,
        },
    }
}

/// A peer's certificate carries another key than the one this agent pinned for its
/// facility: a certificate minted for it by whoever holds a CA key, refused.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerKeyChanged {
    pub facility: String,
    pub pinned: String,
    pub offered: String,
}

impl std::fmt::Display for PeerKeyChanged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "peer {:?} presents signing key {}, but this agent pinned {} for it (a second certificate for a known facility is refused)",
            self.facility, self.offered, self.pinned
        )
    }
}

impl std::error::Error for PeerKeyChanged {}

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

#[cfg(test)]
mod tests {
    use harambee_link::convert::params_to_pb;
    use harambee_link::identity::{IDENTITY_SCHEME, signing_key_from_pem};
    use harambee_secagg::{
        AfterMaskedInputs, CollectingUnmaskShares, ConsistencySignature, MaskedInput, MaskedWords,
        Params, ServerRound, UnmaskShares,
    };
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose, SanType,
    };

    use super::*;

    const ROUND: u64 = 5;

    fn clients() -> SecureClients {
        let ca = rcgen::generate_simple_self_signed(vec!["test-ca".to_owned()]).unwrap();
        let verifier = PeerVerifier::from_ca_pem(ca.cert.pem().as_bytes()).unwrap();
        SecureClients::new(Some(SigningKey::from_bytes(&[7; 32])), verifier)
    }

    /// A train task of a federation with the distributed mechanism: S = 0.5 · 0.6.
    fn task(round_id: u64) -> pb::TrainTask {
        pb::TrainTask {
            round_id,
            federation: "f".into(),
            secure: Some(pb::SecureAggregation {
                clip: 1.0,
                max_weight: 1,
                min_survivors: 3,
                failure_probability: 0.0,
            }),
            privacy: Some(pb::PrivacyConfig {
                mechanism: "distributed".into(),
                clip_norm: 0.6,
                noise_multiplier: 0.5,
                delta: 1e-5,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// What an honest coordinator offers six participants for `task`.
    fn honest(round_id: u64) -> Params {
        let ids: Vec<u32> = (1..=6).collect();
        Params::for_round(round_id, &ids, 4, 1.0, 1, 0.5 * 0.6, 3).unwrap()
    }

    fn advertise(params: &Params) -> Stage {
        Stage::Advertise(pb::SecAggAdvertise {
            round_id: params.round_id,
            params: Some(params_to_pb(params)),
            my_id: 1,
            deadline_unix_ms: 0,
        })
    }

    /// The default policy without the consistency check (these rounds run without it).
    fn semi_honest_policy() -> crate::config::PolicyConfig {
        crate::config::PolicyConfig {
            require_consistency_check: false,
            ..Default::default()
        }
    }

    fn hold(c: &mut SecureClients, round_id: u64) -> anyhow::Result<()> {
        let t = task(round_id);
        let expectation = expectation(&t, t.secure.as_ref().unwrap(), 4, &semi_honest_policy());
        c.trained(round_id, "f", vec![0.1; 4], 1, expectation)
    }

    fn refusal(c: &mut SecureClients, params: &Params) -> String {
        match c.step(advertise(params)) {
            Ok(_) => panic!("parameters accepted: {params:?}"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn parameters_the_agent_does_not_recompute_are_refused_and_nothing_is_sent() {
        let mut bad = honest(ROUND);
        bad.threshold = 1;
        let mut noiseless = honest(ROUND);
        noiseless.noise_stddev = 0.0;
        let mut heavy = honest(ROUND);
        heavy.max_weight = 2;
        for (params, why) in [
            (&bad, "threshold 1 is not a strict majority of 5 neighbours"),
            (&noiseless, "requires distributed noise"),
            (&heavy, "weight cap: offered 2, expected 1"),
        ] {
            let mut c = clients();
            hold(&mut c, ROUND).unwrap();
            let e = refusal(&mut c, params);
            assert!(
                e.contains("refusing round 5's secure-aggregation parameters") && e.contains(why),
                "{e}"
            );
            // The round's client is gone with its update: nothing more can leave for it.
            let e = refusal(&mut c, &honest(ROUND));
            assert!(e.contains("no secure-aggregation state for round 5"), "{e}");
        }
    }

    /// Whoever holds a CA key can mint a valid certificate for a real facility; an agent
    /// that has seen the facility's key refuses the new one before anything leaves.
    #[test]
    fn a_second_certificate_for_a_known_facility_is_refused() {
        let (mut f, _, _) = up_to_unmask(false);
        let pinned = f.clients.get_mut(&1).unwrap().take_new_peer_keys();
        assert_eq!(
            pinned.len(),
            4,
            "every peer is pinned on first sight: {pinned:?}"
        );
        let (minted, _) = agent_certificate(&f.issuer, "site-2");
        let mut peers = f.peers.clone();
        peers[1].certificate = minted;
        let round = ROUND + 1;
        let ids = [1, 2, 3, 4];
        let params = Params::for_round(round, &ids, 4, 1.0, 1, 0.0, 3).unwrap();
        let c = f.clients.get_mut(&1).unwrap();
        let t = pb::TrainTask {
            privacy: None,
            ..task(round)
        };
        let expect = expectation(&t, t.secure.as_ref().unwrap(), 4, &semi_honest_policy());
        c.trained(round, "f", vec![0.25; 4], 1, expect).unwrap();
        c.step(Stage::Advertise(pb::SecAggAdvertise {
            round_id: round,
            params: Some(params_to_pb(&params)),
            my_id: 1,
            deadline_unix_ms: 0,
        }))
        .unwrap();
        let e = match c.step(Stage::ShareKeys(pb::SecAggShareKeys {
            round_id: round,
            advertisements: Vec::new(),
            peers,
            deadline_unix_ms: 0,
            ledger: None,
        })) {
            Ok(_) => panic!("key shares sent to a peer under a minted certificate"),
            Err(e) => e,
        };
        let changed = e
            .downcast_ref::<PeerKeyChanged>()
            .expect("a pinning refusal");
        assert_eq!(changed.facility, "site-2");
        assert!(c.take_new_peer_keys().is_empty());
    }

    #[test]
    fn honest_parameters_are_answered_once_per_round() {
        let mut c = clients();
        hold(&mut c, ROUND).unwrap();
        let reply = c.step(advertise(&honest(ROUND))).unwrap();
        assert!(matches!(
            reply,
            Reply::Submit(pb::sec_agg_submission::Part::Advertise(_))
        ));
        // A second update for a round this agent advertised in is refused (it would be
        // masked again under fresh secrets); another round is fine.
        let e = hold(&mut c, ROUND).unwrap_err();
        assert!(e.to_string().contains("already took part"), "{e}");
        c.forget(ROUND);
        assert!(hold(&mut c, ROUND).is_err());
        hold(&mut c, ROUND + 1).unwrap();
    }

    /// A CA and one Ed25519 agent certificate per participant, as the coordinator's PKI
    /// issues them: the agents' clients and the peers' certificates.
    struct Facilities {
        clients: BTreeMap<u32, SecureClients>,
        peers: Vec<pb::SecAggPeer>,
        keys: BTreeMap<u32, VerifyingKey>,
        issuer: Issuer<'static, KeyPair>,
    }

    /// A valid agent certificate for `facility` with a fresh key, from the same CA.
    fn agent_certificate(issuer: &Issuer<'static, KeyPair>, facility: &str) -> (Vec<u8>, KeyPair) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        let mut params = CertificateParams::default();
        let uri = format!("{IDENTITY_SCHEME}agent/{facility}");
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, issuer).unwrap();
        (cert.der().to_vec(), key)
    }

    fn facilities(ids: &[u32]) -> Facilities {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let (mut clients, mut peers, mut keys) = (BTreeMap::new(), Vec::new(), BTreeMap::new());
        for &id in ids {
            let facility = format!("site-{id}");
            let (certificate, key) = agent_certificate(&issuer, &facility);
            let signing = signing_key_from_pem(key.serialize_pem().as_bytes()).unwrap();
            keys.insert(id, signing.verifying_key());
            let verifier = PeerVerifier::from_ca_pem(ca.pem().as_bytes()).unwrap();
            clients.insert(id, SecureClients::new(Some(signing), verifier));
            peers.push(pb::SecAggPeer {
                id,
                facility,
                certificate,
                ..pb::SecAggPeer::default()
            });
        }
        Facilities {
            clients,
            peers,
            keys,
            issuer,
        }
    }

    fn submitted(reply: Reply) -> pb::sec_agg_submission::Part {
        match reply {
            Reply::Submit(part) => part,
            Reply::Masked { .. } => panic!("a masked input, expected a submission"),
        }
    }

    /// Runs four agents and a SecAgg+ server up to the unmask request: returns the agents,
    /// the server and the request each survivor got.
    fn up_to_unmask(consistency_check: bool) -> (Facilities, AfterMaskedInputs, Params) {
        let ids = [1, 2, 3, 4];
        let mut f = facilities(&ids);
        let mut params = Params::for_round(ROUND, &ids, 4, 1.0, 1, 0.0, 3).unwrap();
        params.consistency_check = consistency_check;
        let mut server = ServerRound::new(params.clone(), f.keys.clone()).unwrap();
        for (&id, c) in &mut f.clients {
            let t = pb::TrainTask {
                privacy: None,
                ..task(ROUND)
            };
            c.trained(
                ROUND,
                "f",
                vec![0.25; 4],
                1,
                expectation(&t, t.secure.as_ref().unwrap(), 4, &semi_honest_policy()),
            )
            .unwrap();
            let reply = c
                .step(Stage::Advertise(pb::SecAggAdvertise {
                    round_id: ROUND,
                    params: Some(params_to_pb(&params)),
                    my_id: id,
                    deadline_unix_ms: 0,
                }))
                .unwrap();
            let pb::sec_agg_submission::Part::Advertise(ad) = submitted(reply) else {
                panic!("an advertisement expected")
            };
            server
                .receive(id, SignedAdvertisement::decode(&ad).unwrap())
                .unwrap();
        }
        let (mut server, routes) = server.finish().unwrap();
        for (&id, c) in &mut f.clients {
            let reply = c
                .step(Stage::ShareKeys(pb::SecAggShareKeys {
                    round_id: ROUND,
                    advertisements: routes[&id].iter().map(Message::encode).collect(),
                    peers: f.peers.clone(),
                    deadline_unix_ms: 0,
                    ledger: None,
                }))
                .unwrap();
            let pb::sec_agg_submission::Part::Shares(shares) = submitted(reply) else {
                panic!("shares expected")
            };
            let shares = shares
                .shares
                .iter()
                .map(|b| EncryptedShare::decode(b).unwrap())
                .collect();
            server.receive(id, shares).unwrap();
        }
        let (mut server, routes) = server.finish().unwrap();
        for (&id, c) in &mut f.clients {
            let reply = c
                .step(Stage::MaskedInput(pb::SecAggMaskedInput {
                    round_id: ROUND,
                    shares: routes[&id].iter().map(Message::encode).collect(),
                    deadline_unix_ms: 0,
                }))
                .unwrap();
            let Reply::Masked { words, .. } = reply else {
                panic!("a masked input expected")
            };
            let words = MaskedWords::from_le_bytes(params.word, &words).unwrap();
            let input = MaskedInput {
                round_id: ROUND,
                sender: id,
                words,
            };
            server.receive(id, input).unwrap();
        }
        (f, server.finish().unwrap(), params)
    }

    fn unmask(request: &UnmaskRequest, sign_first: bool) -> Stage {
        Stage::Unmask(pb::SecAggUnmask {
            round_id: ROUND,
            request: request.encode(),
            sign_first,
            deadline_unix_ms: 0,
        })
    }

    /// Every agent's answer to `request`; the server adds them up.
    fn answer_all(
        f: &mut Facilities,
        mut server: CollectingUnmaskShares,
        stage: impl Fn(u32) -> Stage,
    ) -> CollectingUnmaskShares {
        for (&id, c) in &mut f.clients {
            let pb::sec_agg_submission::Part::Unmask(shares) =
                submitted(c.step(stage(id)).unwrap())
            else {
                panic!("unmask shares expected")
            };
            server
                .receive(id, UnmaskShares::decode(&shares).unwrap())
                .unwrap();
        }
        server
    }

    #[test]
    fn an_agent_answers_one_unmask_request_per_round_whatever_arrives() {
        let (mut f, after, params) = up_to_unmask(false);
        let AfterMaskedInputs::Unmask(server, requests) = after else {
            panic!("no consistency check in this round")
        };
        let request = requests[&1].clone();
        let server = answer_all(&mut f, server, |_| unmask(&request, false));
        let sum = server.finish().unwrap();
        assert_eq!(sum.total_weight, 4);
        // Asked again, or told that someone else dropped: nothing more leaves.
        let conflicting = UnmaskRequest {
            round_id: ROUND,
            survivors: vec![1, 2, 3],
            dropouts: vec![4],
        };
        for c in f.clients.values_mut() {
            for again in [&request, &conflicting] {
                let e = c.step(unmask(again, false)).err().expect("refused");
                assert!(e.to_string().contains("no secure-aggregation state"), "{e}");
            }
        }
        assert_eq!(params.n_min, 3);
    }

    #[test]
    fn after_signing_an_agent_reveals_only_against_the_proof_of_that_set() {
        let (mut f, after, _) = up_to_unmask(true);
        let AfterMaskedInputs::ConsistencyCheck(mut server, requests) = after else {
            panic!("a consistency round")
        };
        for (&id, c) in &mut f.clients {
            let reply = c.step(unmask(&requests[&id], true)).unwrap();
            let pb::sec_agg_submission::Part::ConsistencySignature(sig) = submitted(reply) else {
                panic!("a signature expected")
            };
            server
                .receive(id, ConsistencySignature::decode(&sig).unwrap())
                .unwrap();
        }
        // Before the proof, a plain unmask request (the same set, or another) is ignored:
        // the agent waits for the proof of the set it signed, and reveals nothing.
        let other = UnmaskRequest {
            round_id: ROUND,
            survivors: vec![1, 2, 3],
            dropouts: vec![4],
        };
        for c in f.clients.values_mut() {
            for request in [&requests[&1], &other] {
                let e = c.step(unmask(request, false)).err().expect("refused");
                assert!(
                    e.to_string().contains("waiting for a consistency proof"),
                    "{e}"
                );
            }
        }
        let (server, proofs) = server.finish().unwrap();
        let server = answer_all(&mut f, server, |id| {
            Stage::Consistency(pb::SecAggConsistency {
                round_id: ROUND,
                proof: proofs[&id].encode(),
                deadline_unix_ms: 0,
            })
        });
        assert_eq!(server.finish().unwrap().total_weight, 4);
        // And then nothing more, whatever arrives.
        for (&id, c) in &mut f.clients {
            let proof = Stage::Consistency(pb::SecAggConsistency {
                round_id: ROUND,
                proof: proofs[&id].encode(),
                deadline_unix_ms: 0,
            });
            for stage in [proof, unmask(&other, false), unmask(&other, true)] {
                let e = c.step(stage).err().expect("refused");
                assert!(e.to_string().contains("no secure-aggregation state"), "{e}");
            }
        }
    }
}
