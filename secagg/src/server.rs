//! The server state machine: one struct per stage. At each stage the driver calls
//! `receive(from, msg)` for every message that arrives (`from` is the authenticated
//! sender, e.g. from its TLS client certificate), then `finish()` when every live client
//! has answered or the stage deadline passed. Clients that did not answer are dropouts.
//! `finish` returns the next stage and what to route to each client, or a typed error
//! that ends the round.
//!
//! 1. [`ServerRound::new`] → [`CollectingAdvertisements`]; finish → routes each client
//!    the `Vec<SignedAdvertisement>` of its live neighbours.
//! 2. [`CollectingShares`]; finish → routes each client the `Vec<EncryptedShare>`
//!    addressed to it.
//! 3. [`CollectingMaskedInputs`]; finish → [`AfterMaskedInputs`]: routes each survivor
//!    the [`UnmaskRequest`], next either [`CollectingUnmaskShares`] or (consistency check)
//!    [`CollectingSignatures`], whose finish routes each signer the [`ConsistencyProof`].
//! 4. [`CollectingUnmaskShares`]; finish → [`Aggregate`].
//!
//! At the first two stages the server prunes, repeatedly, every client with fewer than t
//! live neighbours (its secrets could never be reconstructed); pruned clients are
//! dropouts and get no routes. The server keeps no per-client vector: masked inputs are
//! added to one running sum on arrival ([`CollectingMaskedInputs::stored_bytes`]).
//!
//! A `receive` error rejects that one message and leaves the stage unchanged.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, VerifyingKey};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto::{self, SHARE_CIPHERTEXT_BYTES};
use crate::error::{ServerError, Stage};
use crate::graph::Graph;
use crate::messages::{
    ConsistencyProof, ConsistencySignature, EncryptedShare, MaskedInput, MaskedWords,
    SignedAdvertisement, UnmaskRequest, UnmaskShares,
};
use crate::params::{Params, Word};
use crate::prg::{self, MaskWord, Seed, Sign};
use crate::quant;
use crate::shamir::{SHARE_BYTES, Share};

/// The result of a round: the dequantized weighted sum of the survivors' clipped inputs
/// and the sum of their weights (divide to get the weighted mean).
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregate {
    /// Sum over survivors of `weight * clip(input)`, within
    /// [`Params::error_bound`]`(total_weight)` per coordinate; plus, with
    /// [`Params::noise_stddev`] > 0, the survivors' summed noise divided by the scale L / c.
    pub sum: Vec<f32>,
    /// Sum of the survivors' weights.
    pub total_weight: u64,
    /// The clients whose inputs are in the sum, sorted.
    pub survivors: Vec<u32>,
    /// Everyone else, sorted.
    pub dropouts: Vec<u32>,
    /// The stage at which each dropout stopped (missed the stage deadline, was pruned, or
    /// had its message rejected and never sent a valid one).
    pub dropped_at: BTreeMap<u32, Stage>,
}

/// Entry point of the server side of one round.
#[derive(Debug)]
pub struct ServerRound;

impl ServerRound {
    /// Starts a round. `verifying_keys` are the participants' Ed25519 identity keys (from
    /// their certificates); the server checks advertisement and consistency signatures
    /// with them so that it never forwards a forged one.
    // `ServerRound` only names the entry point; the round itself is the returned stage.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(
        params: Params,
        verifying_keys: BTreeMap<u32, VerifyingKey>,
    ) -> Result<CollectingAdvertisements, ServerError> {
        params.validate()?;
        if let Some(&id) = params
            .participants
            .iter()
            .find(|id| !verifying_keys.contains_key(id))
        {
            return Err(ServerError::MissingVerifyingKey(id));
        }
        let digest = params.digest();
        let graph = Graph::new(&params);
        let core = Core {
            params,
            digest,
            graph,
            verifying_keys,
            dropped_at: BTreeMap::new(),
        };
        Ok(CollectingAdvertisements {
            core,
            ads: BTreeMap::new(),
        })
    }
}

/// State shared by all stages.
#[derive(Debug)]
struct Core {
    params: Params,
    digest: [u8; 32],
    graph: Graph,
    verifying_keys: BTreeMap<u32, VerifyingKey>,
    dropped_at: BTreeMap<u32, Stage>,
}

impl Core {
    fn round_id(&self) -> u64 {
        self.params.round_id
    }

    /// Checks that `from` may speak in a stage whose live set is `live`.
    fn check_sender(
        &self,
        from: u32,
        claimed: u32,
        round_id: u64,
        live: &BTreeSet<u32>,
        stage: Stage,
    ) -> Result<(), ServerError> {
        if !self.graph.contains(from) {
            return Err(ServerError::UnknownParticipant { peer: from });
        }
        if claimed != from {
            return Err(ServerError::SenderMismatch {
                peer: from,
                claimed,
            });
        }
        if round_id != self.round_id() {
            return Err(ServerError::WrongRound {
                peer: from,
                got: round_id,
                expected: self.round_id(),
            });
        }
        if !live.contains(&from) {
            return Err(ServerError::NotInStage { peer: from, stage });
        }
        Ok(())
    }

    fn mark_dropped(&mut self, ids: impl IntoIterator<Item = u32>, stage: Stage) {
        for id in ids {
            self.dropped_at.entry(id).or_insert(stage);
        }
    }

    /// Repeatedly removes clients with fewer than t live neighbours; marks them dropped.
    fn prune(&mut self, mut live: BTreeSet<u32>, stage: Stage) -> BTreeSet<u32> {
        let t = self.params.threshold;
        loop {
            let weak: Vec<u32> = live
                .iter()
                .copied()
                .filter(|&u| self.graph.live_degree(u, &live) < t)
                .collect();
            if weak.is_empty() {
                break;
            }
            for u in &weak {
                live.remove(u);
            }
            self.mark_dropped(weak, stage);
        }
        let gone: Vec<u32> = self
            .params
            .participants
            .iter()
            .copied()
            .filter(|u| !live.contains(u))
            .collect();
        self.mark_dropped(gone, stage);
        live
    }

    fn below_threshold(
        &self,
        stage: Stage,
        live: &BTreeSet<u32>,
        unrecoverable: Vec<u32>,
    ) -> ServerError {
        ServerError::BelowThreshold {
            stage,
            needed: self.params.threshold,
            live: live.len(),
            unrecoverable,
        }
    }

    fn dropouts(&self) -> Vec<u32> {
        self.dropped_at.keys().copied().collect()
    }

    /// Refuses to go on when fewer than n_min clients are left (live, or survivors from
    /// the masked input on): their noise shares would not reach the target, and their sum
    /// would hide each of them among fewer than the round promised.
    fn check_min_survivors(&self, stage: Stage, left: &BTreeSet<u32>) -> Result<(), ServerError> {
        if left.len() < self.params.n_min {
            return Err(ServerError::BelowMinSurvivors {
                stage,
                survivors: left.len(),
                n_min: self.params.n_min,
            });
        }
        Ok(())
    }
}

fn is_low_order(public: &[u8; 32]) -> bool {
    // Any clamped scalar maps a low-order point to the identity.
    !StaticSecret::from([1u8; 32])
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

/// Stage 1: collecting signed key advertisements.
#[derive(Debug)]
pub struct CollectingAdvertisements {
    core: Core,
    ads: BTreeMap<u32, SignedAdvertisement>,
}

impl CollectingAdvertisements {
    /// Accepts `from`'s advertisement after checking round, sender, signature and keys.
    pub fn receive(&mut self, from: u32, ad: SignedAdvertisement) -> Result<(), ServerError> {
        // Every participant may advertise.
        let live = BTreeSet::from([from]);
        self.core
            .check_sender(from, ad.sender, ad.round_id, &live, Stage::AdvertiseKeys)?;
        if self.ads.contains_key(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::AdvertiseKeys,
            });
        }
        let key = &self.core.verifying_keys[&from];
        let transcript = crypto::advertisement_transcript(
            &self.core.digest,
            from,
            &ad.cipher_public,
            &ad.mask_public,
            &ad.self_mask_commitment,
        );
        key.verify_strict(&transcript, &Signature::from_bytes(&ad.signature))
            .map_err(|_| ServerError::BadSignature { peer: from })?;
        if is_low_order(&ad.cipher_public) || is_low_order(&ad.mask_public) {
            return Err(ServerError::BadPublicKey { peer: from });
        }
        self.ads.insert(from, ad);
        Ok(())
    }

    /// Bytes held for `client` (its advertisement, if received).
    pub fn stored_bytes(&self, client: u32) -> usize {
        self.ads
            .get(&client)
            .map_or(0, |_| std::mem::size_of::<SignedAdvertisement>())
    }

    /// Clients that have answered so far.
    pub fn received(&self) -> Vec<u32> {
        self.ads.keys().copied().collect()
    }

    /// Closes the stage: routes each live client its live neighbours' advertisements.
    #[allow(clippy::type_complexity)]
    pub fn finish(
        mut self,
    ) -> Result<(CollectingShares, BTreeMap<u32, Vec<SignedAdvertisement>>), ServerError> {
        let answered: BTreeSet<u32> = self.ads.keys().copied().collect();
        let live = self.core.prune(answered.clone(), Stage::AdvertiseKeys);
        if live.is_empty() {
            let pruned = answered.into_iter().collect();
            return Err(self
                .core
                .below_threshold(Stage::AdvertiseKeys, &live, pruned));
        }
        self.core.check_min_survivors(Stage::AdvertiseKeys, &live)?;
        self.ads.retain(|id, _| live.contains(id));
        let mut routes = BTreeMap::new();
        let mut expected = BTreeMap::new();
        for &u in &live {
            let nb = self.core.graph.live_neighbours(u, &live);
            routes.insert(u, nb.iter().map(|v| self.ads[v].clone()).collect());
            expected.insert(u, nb);
        }
        let next = CollectingShares {
            core: self.core,
            ads: self.ads,
            live,
            expected,
            bundles: BTreeMap::new(),
        };
        Ok((next, routes))
    }
}

/// Stage 2: collecting each live client's encrypted shares for its live neighbours.
#[derive(Debug)]
pub struct CollectingShares {
    core: Core,
    ads: BTreeMap<u32, SignedAdvertisement>,
    live: BTreeSet<u32>,
    /// Each live client's live neighbours: exactly the recipients it must send shares to.
    expected: BTreeMap<u32, Vec<u32>>,
    bundles: BTreeMap<u32, Vec<EncryptedShare>>,
}

impl CollectingShares {
    /// Accepts `from`'s shares: one per live neighbour, each addressed from `from` for
    /// this round, of the right size.
    pub fn receive(&mut self, from: u32, shares: Vec<EncryptedShare>) -> Result<(), ServerError> {
        let round_id = shares.first().map_or(self.core.round_id(), |s| s.round_id);
        let claimed = shares.first().map_or(from, |s| s.sender);
        self.core
            .check_sender(from, claimed, round_id, &self.live, Stage::ShareKeys)?;
        if self.bundles.contains_key(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::ShareKeys,
            });
        }
        let expected = &self.expected[&from];
        let mut seen = BTreeSet::new();
        for share in &shares {
            self.core.check_sender(
                from,
                share.sender,
                share.round_id,
                &self.live,
                Stage::ShareKeys,
            )?;
            if expected.binary_search(&share.recipient).is_err() {
                return Err(ServerError::MisaddressedShare {
                    peer: from,
                    recipient: share.recipient,
                });
            }
            if !seen.insert(share.recipient) {
                return Err(ServerError::DuplicateShare {
                    peer: from,
                    recipient: share.recipient,
                });
            }
            if share.ciphertext.len() != SHARE_CIPHERTEXT_BYTES {
                return Err(ServerError::MalformedShare {
                    peer: from,
                    reason: "ciphertext length",
                });
            }
        }
        if seen.len() != expected.len() {
            let missing = expected
                .iter()
                .copied()
                .filter(|v| !seen.contains(v))
                .collect();
            return Err(ServerError::IncompleteShares {
                peer: from,
                missing,
            });
        }
        self.bundles.insert(from, shares);
        Ok(())
    }

    /// Bytes held for `client`: its advertisement and the ciphertexts it sent.
    pub fn stored_bytes(&self, client: u32) -> usize {
        let ad = self
            .ads
            .get(&client)
            .map_or(0, |_| std::mem::size_of::<SignedAdvertisement>());
        ad + self
            .bundles
            .get(&client)
            .map_or(0, |b| b.iter().map(|s| s.ciphertext.len() + 16).sum())
    }

    /// Clients that have answered so far.
    pub fn received(&self) -> Vec<u32> {
        self.bundles.keys().copied().collect()
    }

    /// Dropouts so far.
    pub fn dropouts(&self) -> Vec<u32> {
        self.core.dropouts()
    }

    /// Closes the stage: routes each live client the shares addressed to it.
    #[allow(clippy::type_complexity)]
    pub fn finish(
        mut self,
    ) -> Result<(CollectingMaskedInputs, BTreeMap<u32, Vec<EncryptedShare>>), ServerError> {
        let answered: BTreeSet<u32> = self.bundles.keys().copied().collect();
        let live = self.core.prune(answered.clone(), Stage::ShareKeys);
        if live.is_empty() {
            return Err(self.core.below_threshold(
                Stage::ShareKeys,
                &live,
                answered.into_iter().collect(),
            ));
        }
        self.core.check_min_survivors(Stage::ShareKeys, &live)?;
        let mut routes: BTreeMap<u32, Vec<EncryptedShare>> =
            live.iter().map(|&u| (u, Vec::new())).collect();
        for (sender, bundle) in std::mem::take(&mut self.bundles) {
            if !live.contains(&sender) {
                continue;
            }
            for share in bundle {
                if let Some(inbox) = routes.get_mut(&share.recipient) {
                    inbox.push(share);
                }
            }
        }
        self.ads.retain(|id, _| live.contains(id));
        let sum = match self.core.params.word {
            Word::U32 => MaskedWords::U32(vec![0; self.core.params.vector_len + 1]),
            Word::U64 => MaskedWords::U64(vec![0; self.core.params.vector_len + 1]),
        };
        let next = CollectingMaskedInputs {
            core: self.core,
            ads: self.ads,
            live,
            received: BTreeSet::new(),
            sum,
        };
        Ok((next, routes))
    }
}

/// Stage 3: adding up masked inputs as they arrive.
#[derive(Debug)]
pub struct CollectingMaskedInputs {
    core: Core,
    ads: BTreeMap<u32, SignedAdvertisement>,
    /// Clients that shared keys (and so are in their neighbours' masks).
    live: BTreeSet<u32>,
    received: BTreeSet<u32>,
    sum: MaskedWords,
}

/// What follows the masked-input stage.
#[derive(Debug)]
pub enum AfterMaskedInputs {
    /// Without consistency check: send each survivor its [`UnmaskRequest`].
    Unmask(CollectingUnmaskShares, BTreeMap<u32, UnmaskRequest>),
    /// With consistency check: send each survivor its [`UnmaskRequest`] to sign.
    ConsistencyCheck(CollectingSignatures, BTreeMap<u32, UnmaskRequest>),
}

impl CollectingMaskedInputs {
    /// Adds `from`'s masked vector into the running sum (after checking round, sender,
    /// word size and length d + 1). The vector itself is not kept.
    pub fn receive(&mut self, from: u32, input: MaskedInput) -> Result<(), ServerError> {
        self.core.check_sender(
            from,
            input.sender,
            input.round_id,
            &self.live,
            Stage::MaskedInput,
        )?;
        if self.received.contains(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::MaskedInput,
            });
        }
        let expected = self.core.params.vector_len + 1;
        if input.words.len() != expected {
            return Err(ServerError::WrongLength {
                peer: from,
                expected,
                got: input.words.len(),
            });
        }
        match (&mut self.sum, &input.words) {
            (MaskedWords::U32(sum), MaskedWords::U32(words)) => add_into(sum, words),
            (MaskedWords::U64(sum), MaskedWords::U64(words)) => add_into(sum, words),
            _ => {
                return Err(ServerError::WrongWordSize {
                    peer: from,
                    expected: self.core.params.word.bits(),
                    got: input.words.word().bits(),
                });
            }
        }
        self.received.insert(from);
        Ok(())
    }

    /// [`CollectingMaskedInputs::receive`] for a masked input still encoded as it arrived:
    /// its words little-endian, in `pieces` split at any byte boundary (network chunks).
    /// Every check is made before the first word is added, so a refused input leaves the
    /// sum as it was; the words are added straight from the pieces, with no decoded copy.
    pub fn receive_le_pieces<P: AsRef<[u8]>>(
        &mut self,
        from: u32,
        round_id: u64,
        sender: u32,
        word: Word,
        pieces: &[P],
    ) -> Result<(), ServerError> {
        self.core
            .check_sender(from, sender, round_id, &self.live, Stage::MaskedInput)?;
        if self.received.contains(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::MaskedInput,
            });
        }
        if word != self.core.params.word {
            return Err(ServerError::WrongWordSize {
                peer: from,
                expected: self.core.params.word.bits(),
                got: word.bits(),
            });
        }
        let expected = self.core.params.vector_len + 1;
        let total: usize = pieces.iter().map(|p| p.as_ref().len()).sum();
        if total != expected * word.bytes() {
            return Err(ServerError::WrongLength {
                peer: from,
                expected,
                got: total / word.bytes(),
            });
        }
        match &mut self.sum {
            MaskedWords::U32(sum) => add_le_pieces(sum, pieces),
            MaskedWords::U64(sum) => add_le_pieces(sum, pieces),
        }
        self.received.insert(from);
        Ok(())
    }

    /// Bytes held for `client`: its advertisement only; masked vectors are folded into one
    /// shared running sum on arrival.
    pub fn stored_bytes(&self, client: u32) -> usize {
        self.ads
            .get(&client)
            .map_or(0, |_| std::mem::size_of::<SignedAdvertisement>())
    }

    /// Clients that have answered so far.
    pub fn received(&self) -> Vec<u32> {
        self.received.iter().copied().collect()
    }

    /// Dropouts so far.
    pub fn dropouts(&self) -> Vec<u32> {
        self.core.dropouts()
    }

    /// Closes the stage. Fails with [`ServerError::BelowThreshold`] if some survivor, or
    /// some dropout whose masks are in the sum, has fewer than t surviving neighbours:
    /// its masks could never be removed; and with [`ServerError::BelowMinSurvivors`] if
    /// fewer than [`Params::n_min`] clients survived (nothing is asked of anyone then).
    pub fn finish(mut self) -> Result<AfterMaskedInputs, ServerError> {
        let survivors = self.received.clone();
        let dropped: Vec<u32> = self
            .live
            .iter()
            .copied()
            .filter(|u| !survivors.contains(u))
            .collect();
        self.core
            .mark_dropped(dropped.iter().copied(), Stage::MaskedInput);
        let unrecoverable = self.unrecoverable(&survivors, &dropped, &survivors);
        if survivors.is_empty() || !unrecoverable.is_empty() {
            return Err(self
                .core
                .below_threshold(Stage::MaskedInput, &survivors, unrecoverable));
        }
        self.core
            .check_min_survivors(Stage::MaskedInput, &survivors)?;
        let request = UnmaskRequest {
            round_id: self.core.round_id(),
            survivors: survivors.iter().copied().collect(),
            dropouts: dropped,
        };
        let routes: BTreeMap<u32, UnmaskRequest> =
            survivors.iter().map(|&u| (u, request.clone())).collect();
        let unmask = CollectingUnmaskShares {
            core: self.core,
            ads: self.ads,
            request,
            asked: survivors,
            responded: BTreeSet::new(),
            self_mask_shares: BTreeMap::new(),
            key_shares: BTreeMap::new(),
            sum: self.sum,
        };
        if unmask.core.params.consistency_check {
            let next = CollectingSignatures {
                unmask,
                signatures: BTreeMap::new(),
            };
            Ok(AfterMaskedInputs::ConsistencyCheck(next, routes))
        } else {
            Ok(AfterMaskedInputs::Unmask(unmask, routes))
        }
    }

    /// Clients (survivors, and dropouts with a surviving neighbour) with fewer than t
    /// neighbours in `holders`.
    fn unrecoverable(
        &self,
        survivors: &BTreeSet<u32>,
        dropped: &[u32],
        holders: &BTreeSet<u32>,
    ) -> Vec<u32> {
        unrecoverable(&self.core, survivors, dropped, holders)
    }
}

fn unrecoverable(
    core: &Core,
    survivors: &BTreeSet<u32>,
    dropped: &[u32],
    holders: &BTreeSet<u32>,
) -> Vec<u32> {
    let t = core.params.threshold;
    let mut out: Vec<u32> = survivors
        .iter()
        .copied()
        .filter(|&u| core.graph.live_degree(u, holders) < t)
        .collect();
    out.extend(dropped.iter().copied().filter(|&v| {
        core.graph.live_degree(v, survivors) > 0 && core.graph.live_degree(v, holders) < t
    }));
    out.sort_unstable();
    out
}

fn add_into<W: MaskWord>(sum: &mut [W], words: &[W]) {
    for (s, w) in sum.iter_mut().zip(words) {
        *s = s.wrapping_add(*w);
    }
}

/// Adds little-endian words, split across `pieces` at any byte boundary, into `sum`
/// (whose length the caller checked against the pieces' total).
fn add_le_pieces<W: MaskWord, P: AsRef<[u8]>>(sum: &mut [W], pieces: &[P]) {
    let mut next = 0;
    let mut carry = [0u8; 8];
    let mut carried = 0;
    for piece in pieces {
        let mut bytes = piece.as_ref();
        if carried > 0 {
            let take = (W::BYTES - carried).min(bytes.len());
            carry[carried..carried + take].copy_from_slice(&bytes[..take]);
            carried += take;
            bytes = &bytes[take..];
            if carried < W::BYTES {
                continue;
            }
            sum[next] = sum[next].wrapping_add(W::from_le(&carry[..W::BYTES]));
            next += 1;
        }
        let words = bytes.chunks_exact(W::BYTES);
        let rest = words.remainder();
        let n = bytes.len() / W::BYTES;
        for (s, w) in sum[next..next + n].iter_mut().zip(words) {
            *s = s.wrapping_add(W::from_le(w));
        }
        next += n;
        carry[..rest.len()].copy_from_slice(rest);
        carried = rest.len();
    }
}

/// Consistency check: collecting each survivor's signature over the survivor set.
#[derive(Debug)]
pub struct CollectingSignatures {
    unmask: CollectingUnmaskShares,
    signatures: BTreeMap<u32, [u8; 64]>,
}

impl CollectingSignatures {
    /// Accepts `from`'s signature over the sets in the unmask request.
    pub fn receive(&mut self, from: u32, sig: ConsistencySignature) -> Result<(), ServerError> {
        let core = &self.unmask.core;
        core.check_sender(
            from,
            sig.sender,
            sig.round_id,
            &self.unmask.asked,
            Stage::ConsistencyCheck,
        )?;
        if self.signatures.contains_key(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::ConsistencyCheck,
            });
        }
        let req = &self.unmask.request;
        let transcript =
            crypto::consistency_transcript(&core.digest, from, &req.survivors, &req.dropouts);
        core.verifying_keys[&from]
            .verify_strict(&transcript, &Signature::from_bytes(&sig.signature))
            .map_err(|_| ServerError::BadSignature { peer: from })?;
        self.signatures.insert(from, sig.signature);
        Ok(())
    }

    /// Clients that have answered so far.
    pub fn received(&self) -> Vec<u32> {
        self.signatures.keys().copied().collect()
    }

    /// Closes the stage: with at least [`Params::consistency_quorum`] signatures, routes
    /// the proof to each signer; only signers are asked for shares.
    pub fn finish(
        mut self,
    ) -> Result<(CollectingUnmaskShares, BTreeMap<u32, ConsistencyProof>), ServerError> {
        let needed = self.unmask.core.params.consistency_quorum();
        if self.signatures.len() < needed {
            return Err(ServerError::ConsistencyQuorum {
                signed: self.signatures.len(),
                needed,
            });
        }
        let proof = ConsistencyProof {
            round_id: self.unmask.core.round_id(),
            survivors: self.unmask.request.survivors.clone(),
            dropouts: self.unmask.request.dropouts.clone(),
            signatures: self
                .signatures
                .iter()
                .map(|(&id, sig)| (id, *sig))
                .collect(),
        };
        self.unmask.asked = self.signatures.keys().copied().collect();
        let routes = self
            .unmask
            .asked
            .iter()
            .map(|&u| (u, proof.clone()))
            .collect();
        Ok((self.unmask, routes))
    }
}

/// Stage 4: collecting shares to remove the survivors' self masks and the dropouts'
/// pairwise masks.
#[derive(Debug)]
pub struct CollectingUnmaskShares {
    core: Core,
    ads: BTreeMap<u32, SignedAdvertisement>,
    request: UnmaskRequest,
    /// Who may answer: the survivors (or, after a consistency check, the signers).
    asked: BTreeSet<u32>,
    responded: BTreeSet<u32>,
    /// Owner → (holder, share) of self-mask secrets (survivors).
    self_mask_shares: BTreeMap<u32, Vec<(u32, Share)>>,
    /// Owner → (holder, share) of mask keys (dropouts).
    key_shares: BTreeMap<u32, Vec<(u32, Share)>>,
    sum: MaskedWords,
}

impl CollectingUnmaskShares {
    /// Accepts `from`'s shares: exactly one self-mask share per surviving live neighbour
    /// and one key share per dropped live neighbour.
    pub fn receive(&mut self, from: u32, msg: UnmaskShares) -> Result<(), ServerError> {
        self.core.check_sender(
            from,
            msg.sender,
            msg.round_id,
            &self.asked,
            Stage::Unmasking,
        )?;
        if self.responded.contains(&from) {
            return Err(ServerError::Duplicate {
                peer: from,
                stage: Stage::Unmasking,
            });
        }
        let neighbours = self.core.graph.neighbours(from);
        let survivors = &self.request.survivors;
        let dropouts = &self.request.dropouts;
        let want_b: Vec<u32> = neighbours
            .iter()
            .copied()
            .filter(|v| survivors.binary_search(v).is_ok())
            .collect();
        let want_s: Vec<u32> = neighbours
            .iter()
            .copied()
            .filter(|v| dropouts.binary_search(v).is_ok())
            .collect();
        let b = parse_shares(from, &msg.self_mask_shares, &want_b)?;
        let s = parse_shares(from, &msg.key_shares, &want_s)?;
        for (owner, share) in b {
            self.self_mask_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        for (owner, share) in s {
            self.key_shares
                .entry(owner)
                .or_default()
                .push((from, share));
        }
        self.responded.insert(from);
        Ok(())
    }

    /// Bytes held for `client`: its advertisement and the shares it revealed.
    pub fn stored_bytes(&self, client: u32) -> usize {
        let ad = self
            .ads
            .get(&client)
            .map_or(0, |_| std::mem::size_of::<SignedAdvertisement>());
        let held = |m: &BTreeMap<u32, Vec<(u32, Share)>>| {
            m.values()
                .flatten()
                .filter(|(holder, _)| *holder == client)
                .count()
                * SHARE_BYTES
        };
        ad + held(&self.self_mask_shares) + held(&self.key_shares)
    }

    /// Clients that have answered so far.
    pub fn received(&self) -> Vec<u32> {
        self.responded.iter().copied().collect()
    }

    /// The survivors: clients whose masked inputs are in the sum.
    pub fn survivors(&self) -> &[u32] {
        &self.request.survivors
    }

    /// Closes the round: reconstructs each survivor's self-mask secret and each dropout's
    /// mask key from t shares, checks them against the signed advertisements, removes all
    /// masks from the sum and dequantizes it. CPU-bound (about 2.5 ms per mask per 10^6
    /// words here): run it off the async executor.
    pub fn finish(self) -> Result<Aggregate, ServerError> {
        self.finish_with_threads(1)
    }

    /// [`CollectingUnmaskShares::finish`], expanding the masks on `threads` scoped threads
    /// (each over its own part of the vector). Same result; worth it when cores are idle
    /// at the end of a round.
    pub fn finish_with_threads(self, threads: usize) -> Result<Aggregate, ServerError> {
        let core = &self.core;
        let survivors: BTreeSet<u32> = self.request.survivors.iter().copied().collect();
        // The masked-input stage already refused fewer; checked again where the masks come
        // off, so no path unmasks a sum of fewer than n_min inputs.
        core.check_min_survivors(Stage::Unmasking, &survivors)?;
        let unrecoverable =
            unrecoverable(core, &survivors, &self.request.dropouts, &self.responded);
        if !unrecoverable.is_empty() {
            return Err(core.below_threshold(Stage::Unmasking, &self.responded, unrecoverable));
        }
        let t = core.params.threshold;
        let mut masks: Vec<(Seed, Sign)> = Vec::new();
        for &u in &survivors {
            let secret = reconstruct(self.self_mask_shares.get(&u), t)
                .ok_or(ServerError::ReconstructionFailed { client: u })?;
            if crypto::self_mask_commitment(&core.digest, &secret, u)
                != self.ads[&u].self_mask_commitment
            {
                return Err(ServerError::ReconstructionFailed { client: u });
            }
            masks.push((crypto::self_mask_seed(&core.digest, &secret, u), Sign::Sub));
        }
        for &v in &self.request.dropouts {
            let holders = core.graph.live_neighbours(v, &survivors);
            if holders.is_empty() {
                continue;
            }
            let secret = reconstruct(self.key_shares.get(&v), t)
                .ok_or(ServerError::ReconstructionFailed { client: v })?;
            if crypto::public_of(&secret) != self.ads[&v].mask_public {
                return Err(ServerError::ReconstructionFailed { client: v });
            }
            let key = StaticSecret::from(*secret);
            for u in holders {
                let seed =
                    crypto::pairwise_seed(&core.digest, &key, &self.ads[&u].mask_public, u, v)
                        .ok_or(ServerError::ReconstructionFailed { client: v })?;
                // u added the mask if u < v and subtracted it otherwise; undo that.
                masks.push((seed, if u < v { Sign::Sub } else { Sign::Add }));
            }
        }
        let n_inputs = survivors.len();
        let dequantized = match self.sum {
            MaskedWords::U32(mut sum) => unmask(&core.params, &mut sum, &masks, n_inputs, threads),
            MaskedWords::U64(mut sum) => unmask(&core.params, &mut sum, &masks, n_inputs, threads),
        };
        let (sum, total_weight) = dequantized.ok_or(ServerError::CorruptAggregate)?;
        let mut dropped_at = self.core.dropped_at;
        for id in &survivors {
            dropped_at.remove(id);
        }
        Ok(Aggregate {
            sum,
            total_weight,
            survivors: survivors.into_iter().collect(),
            dropouts: dropped_at.keys().copied().collect(),
            dropped_at,
        })
    }
}

fn unmask<W: MaskWord>(
    params: &Params,
    sum: &mut [W],
    masks: &[(Seed, Sign)],
    n_inputs: usize,
    threads: usize,
) -> Option<(Vec<f32>, u64)> {
    prg::apply_masks_parallel(params.prg, sum, masks, threads);
    quant::dequantize(params, sum, n_inputs)
}

fn reconstruct(shares: Option<&Vec<(u32, Share)>>, t: usize) -> Option<Zeroizing<[u8; 32]>> {
    let shares = shares?;
    if shares.len() < t {
        return None;
    }
    let points: Vec<(u32, &Share)> = shares
        .iter()
        .take(t)
        .map(|(holder, share)| (*holder, share))
        .collect();
    crate::shamir::combine(&points)
}

/// Checks that `shares` holds exactly one well-formed share per owner in `wanted`.
fn parse_shares(
    from: u32,
    shares: &[crate::messages::RevealedShare],
    wanted: &[u32],
) -> Result<Vec<(u32, Share)>, ServerError> {
    let mut out: Vec<(u32, Share)> = Vec::with_capacity(wanted.len());
    for s in shares {
        if wanted.binary_search(&s.owner).is_err() {
            return Err(ServerError::UnrequestedShare {
                peer: from,
                owner: s.owner,
            });
        }
        if out.iter().any(|(o, _)| *o == s.owner) {
            return Err(ServerError::MalformedShare {
                peer: from,
                reason: "repeated owner",
            });
        }
        let share = Share::from_bytes(&s.share).ok_or(ServerError::MalformedShare {
            peer: from,
            reason: "not a field element",
        })?;
        out.push((s.owner, share));
    }
    if let Some(&owner) = wanted.iter().find(|w| !out.iter().any(|(o, _)| o == *w)) {
        return Err(ServerError::MissingShare { peer: from, owner });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use ed25519_dalek::{Signer, SigningKey};

    use super::*;

    #[test]
    fn low_order_public_keys_are_refused() {
        let params = Params::recommended(3, &[1, 2, 3], 4, 1.0, 1).unwrap();
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let keys = params
            .participants
            .iter()
            .map(|&id| (id, key.verifying_key()))
            .collect();
        let mut server = ServerRound::new(params.clone(), keys).unwrap();
        let digest = params.digest();
        // The identity point (all zero) has order 1; it is still validly signed.
        let good = PublicKey::from(&StaticSecret::from([9u8; 32])).to_bytes();
        for (cipher_public, mask_public) in [([0u8; 32], good), (good, [0u8; 32])] {
            let commitment = [0u8; 32];
            let transcript = crypto::advertisement_transcript(
                &digest,
                1,
                &cipher_public,
                &mask_public,
                &commitment,
            );
            let ad = SignedAdvertisement {
                round_id: 3,
                sender: 1,
                cipher_public,
                mask_public,
                self_mask_commitment: commitment,
                signature: key.sign(&transcript).to_bytes(),
            };
            assert_eq!(
                server.receive(1, ad),
                Err(ServerError::BadPublicKey { peer: 1 })
            );
        }
        assert!(is_low_order(&[0u8; 32]));
        assert!(!is_low_order(&good));
    }

    #[test]
    fn pruning_removes_clients_with_too_few_live_neighbours() {
        let ids: Vec<u32> = (0..12).collect();
        let mut params = Params::recommended(3, &ids, 4, 1.0, 1).unwrap();
        params.neighbours = 4;
        params.threshold = 2;
        params.n_min = 2;
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let keys = ids.iter().map(|&id| (id, key.verifying_key())).collect();
        let mut core = ServerRound::new(params.clone(), keys).unwrap().core;
        // Remove three of client 0's four neighbours: client 0 goes, nobody else does.
        let nb = params.graph_neighbours(0);
        let live: BTreeSet<u32> = ids
            .iter()
            .copied()
            .filter(|v| !nb[..3].contains(v))
            .collect();
        let pruned = core.prune(live.clone(), Stage::AdvertiseKeys);
        let mut want = live;
        want.remove(&0);
        assert_eq!(pruned, want);
        assert_eq!(core.dropped_at.get(&0), Some(&Stage::AdvertiseKeys));
        assert_eq!(core.dropouts().len(), 4);
    }
}
