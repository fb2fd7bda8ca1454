//! The client state machine: one struct per stage, each method consuming `self`.
//!
//! Call order (the driver moves each output to the server and each routed input back):
//!
//! 1. [`ClientRound::new`] → [`AwaitingPeerKeys`] + [`SignedAdvertisement`]
//! 2. [`AwaitingPeerKeys::handle_keys`] (the neighbours' advertisements) → [`AwaitingShares`]
//!    + `Vec<EncryptedShare>`
//! 3. [`AwaitingShares::handle_shares`] (the shares addressed to this client, and the
//!    input vector) → [`AwaitingUnmask`] + [`MaskedInput`]
//! 4. without consistency check: [`AwaitingUnmask::handle_unmask`] ([`UnmaskRequest`]) →
//!    [`UnmaskShares`], the last message; with it: [`AwaitingUnmask::sign_survivors`] →
//!    [`AwaitingConsistency`] + [`ConsistencySignature`], then
//!    [`AwaitingConsistency::handle_consistency`] ([`ConsistencyProof`]) → [`UnmaskShares`].
//!
//! An error ends the client's part in the round (the stage was consumed). Secrets (X25519
//! keys, the self-mask secret, shares held for peers) are zeroized when a stage is
//! dropped; the input is never kept.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::crypto;
use crate::error::ClientError;
use crate::graph::Graph;
use crate::messages::{
    ConsistencyProof, ConsistencySignature, EncryptedShare, MaskedInput, MaskedWords,
    RevealedShare, SignedAdvertisement, UnmaskRequest, UnmaskShares,
};
use crate::params::{Params, Word};
use crate::prg::{self, MaskWord, Seed, Sign};
use crate::quant;
use crate::shamir::{self, Share};

/// Entry point of the client side of one round.
#[derive(Debug)]
pub struct ClientRound;

impl ClientRound {
    /// Starts a round as participant `my_id`: draws two X25519 key pairs (one to encrypt
    /// shares, one to agree mask seeds) and the self-mask secret, and signs the
    /// advertisement of the public keys with `signing_key`, the client's identity key.
    // `ClientRound` only names the entry point; the round itself is the returned stage.
    #[allow(clippy::new_ret_no_self)]
    pub fn new<R: CryptoRng + ?Sized>(
        params: Params,
        my_id: u32,
        signing_key: SigningKey,
        rng: &mut R,
    ) -> Result<(AwaitingPeerKeys, SignedAdvertisement), ClientError> {
        params.validate()?;
        let graph = Graph::new(&params);
        if !graph.contains(my_id) {
            return Err(ClientError::NotAParticipant(my_id));
        }
        let digest = params.digest();
        let cipher_secret = StaticSecret::random_from_rng(rng);
        let mask_secret = StaticSecret::random_from_rng(rng);
        let mut self_mask_secret = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut self_mask_secret[..]);
        let cipher_public = PublicKey::from(&cipher_secret).to_bytes();
        let mask_public = PublicKey::from(&mask_secret).to_bytes();
        let commitment = crypto::self_mask_commitment(&digest, &self_mask_secret, my_id);
        let transcript = crypto::advertisement_transcript(
            &digest,
            my_id,
            &cipher_public,
            &mask_public,
            &commitment,
        );
        let signature = signing_key.sign(&transcript).to_bytes();
        let ad = SignedAdvertisement {
            round_id: params.round_id,
            sender: my_id,
            cipher_public,
            mask_public,
            self_mask_commitment: commitment,
            signature,
        };
        let neighbours = graph.neighbours(my_id);
        let common = Common {
            params,
            digest,
            me: my_id,
            neighbours,
            signing_key,
        };
        Ok((
            AwaitingPeerKeys {
                common,
                cipher_secret,
                mask_secret,
                self_mask_secret,
            },
            ad,
        ))
    }
}

/// State shared by all stages.
struct Common {
    params: Params,
    digest: [u8; 32],
    me: u32,
    /// Graph neighbours, sorted.
    neighbours: Vec<u32>,
    signing_key: SigningKey,
}

impl Common {
    fn is_neighbour(&self, id: u32) -> bool {
        self.neighbours.binary_search(&id).is_ok()
    }

    fn check_server_round(&self, got: u64) -> Result<(), ClientError> {
        if got != self.params.round_id {
            return Err(ClientError::RequestForOtherRound {
                got,
                expected: self.params.round_id,
            });
        }
        Ok(())
    }
}

/// A neighbour's advertised mask-agreement public key.
#[derive(Clone, Copy)]
struct PeerKeys {
    mask_public: [u8; 32],
}

/// Stage 1: waiting for the neighbours' signed advertisements.
pub struct AwaitingPeerKeys {
    common: Common,
    cipher_secret: StaticSecret,
    mask_secret: StaticSecret,
    self_mask_secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for AwaitingPeerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingPeerKeys")
            .field("me", &self.common.me)
            .finish_non_exhaustive()
    }
}

impl AwaitingPeerKeys {
    /// Takes the advertisements of the live neighbours (as routed by the server), checks
    /// each signature against `peer_keys` (the identity keys the driver took from the
    /// peers' certificates, so the server cannot substitute keys), and returns one
    /// encrypted share bundle per live neighbour.
    ///
    /// Every advertisement must be for this round, from a graph neighbour, once, with a
    /// valid signature; fewer than t live neighbours is [`ClientError::BelowThreshold`].
    pub fn handle_keys<R: CryptoRng + ?Sized>(
        self,
        ads: Vec<SignedAdvertisement>,
        peer_keys: &BTreeMap<u32, VerifyingKey>,
        rng: &mut R,
    ) -> Result<(AwaitingShares, Vec<EncryptedShare>), ClientError> {
        let c = &self.common;
        let mut peers = BTreeMap::new();
        for ad in &ads {
            let peer = ad.sender;
            if ad.round_id != c.params.round_id {
                return Err(ClientError::WrongRound {
                    peer,
                    got: ad.round_id,
                    expected: c.params.round_id,
                });
            }
            if !c.is_neighbour(peer) {
                return Err(ClientError::NotANeighbour { peer });
            }
            if peers.contains_key(&peer) {
                return Err(ClientError::Duplicate { peer });
            }
            let key = peer_keys
                .get(&peer)
                .ok_or(ClientError::UnknownPeer { peer })?;
            let transcript = crypto::advertisement_transcript(
                &c.digest,
                peer,
                &ad.cipher_public,
                &ad.mask_public,
                &ad.self_mask_commitment,
            );
            key.verify_strict(&transcript, &Signature::from_bytes(&ad.signature))
                .map_err(|_| ClientError::BadSignature { peer })?;
            peers.insert(
                peer,
                (
                    ad.cipher_public,
                    PeerKeys {
                        mask_public: ad.mask_public,
                    },
                ),
            );
        }
        let t = c.params.threshold;
        if peers.len() < t {
            return Err(ClientError::BelowThreshold {
                live: peers.len(),
                needed: t,
            });
        }
        let holders: Vec<u32> = peers.keys().copied().collect();
        let b_shares = shamir::split(&self.self_mask_secret, t, &holders, rng);
        let s_bytes = Zeroizing::new(self.mask_secret.to_bytes());
        let s_shares = shamir::split(&s_bytes, t, &holders, rng);
        let mut out = Vec::with_capacity(holders.len());
        let mut share_keys = BTreeMap::new();
        for ((&peer, b), s) in holders.iter().zip(&b_shares).zip(&s_shares) {
            // The same key decrypts the peer's shares to this client in the next stage.
            let key =
                crypto::share_key(&c.digest, &self.cipher_secret, &peers[&peer].0, c.me, peer)
                    .ok_or(ClientError::BadPublicKey { peer })?;
            let ciphertext = crypto::seal_share(&c.digest, &key, c.me, peer, b, s);
            out.push(EncryptedShare {
                round_id: c.params.round_id,
                sender: c.me,
                recipient: peer,
                ciphertext,
            });
            share_keys.insert(peer, key);
        }
        let verifying_keys = if c.params.consistency_check {
            c.params
                .participants
                .iter()
                .filter_map(|id| peer_keys.get(id).map(|k| (*id, *k)))
                .collect()
        } else {
            BTreeMap::new()
        };
        // The encryption secret is no longer needed: it is dropped (and zeroized) here.
        let next = AwaitingShares {
            common: self.common,
            mask_secret: self.mask_secret,
            self_mask_secret: self.self_mask_secret,
            peers: peers
                .into_iter()
                .map(|(id, (_, keys))| (id, keys))
                .collect(),
            share_keys,
            verifying_keys,
        };
        Ok((next, out))
    }
}

/// Stage 2: waiting for the shares the live neighbours encrypted to this client.
pub struct AwaitingShares {
    common: Common,
    mask_secret: StaticSecret,
    self_mask_secret: Zeroizing<[u8; 32]>,
    peers: BTreeMap<u32, PeerKeys>,
    /// The AEAD key shared with each live neighbour.
    share_keys: BTreeMap<u32, Seed>,
    verifying_keys: BTreeMap<u32, VerifyingKey>,
}

impl std::fmt::Debug for AwaitingShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingShares")
            .field("me", &self.common.me)
            .field("live_neighbours", &self.peers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AwaitingShares {
    /// Takes the shares addressed to this client (as routed by the server; their senders
    /// are the neighbours this client will mask with), and the input: `input` (length d)
    /// is clipped to [-c, c], stochastically rounded, multiplied by `weight` (1..=W),
    /// extended by the weight, and masked with the self mask and one pairwise mask per
    /// sender. `rng` drives the stochastic rounding and, with [`Params::noise_stddev`] > 0,
    /// seeds the discrete Gaussian noise added to each value.
    pub fn handle_shares<R: CryptoRng + ?Sized>(
        self,
        shares: Vec<EncryptedShare>,
        input: &[f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<(AwaitingUnmask, MaskedInput), ClientError> {
        let c = &self.common;
        // Checks the input before anything else.
        let quantizer = quant::Quantizer::new(&c.params, input, weight, rng)?;
        let mut held = BTreeMap::new();
        for share in &shares {
            let peer = share.sender;
            if share.round_id != c.params.round_id {
                return Err(ClientError::WrongRound {
                    peer,
                    got: share.round_id,
                    expected: c.params.round_id,
                });
            }
            if share.recipient != c.me {
                return Err(ClientError::MisaddressedShare {
                    peer,
                    recipient: share.recipient,
                });
            }
            let key = self
                .share_keys
                .get(&peer)
                .ok_or(ClientError::NotANeighbour { peer })?;
            if held.contains_key(&peer) {
                return Err(ClientError::Duplicate { peer });
            }
            let pair = crypto::open_share(&c.digest, key, peer, c.me, &share.ciphertext)
                .ok_or(ClientError::ShareDecryption { peer })?;
            held.insert(peer, pair);
        }
        let t = c.params.threshold;
        if held.len() < t {
            return Err(ClientError::BelowThreshold {
                live: held.len(),
                needed: t,
            });
        }
        let mut masks: Vec<(Seed, Sign)> = Vec::with_capacity(held.len() + 1);
        masks.push((
            crypto::self_mask_seed(&c.digest, &self.self_mask_secret, c.me),
            Sign::Add,
        ));
        for &peer in held.keys() {
            let seed = crypto::pairwise_seed(
                &c.digest,
                &self.mask_secret,
                &self.peers[&peer].mask_public,
                c.me,
                peer,
            )
            .ok_or(ClientError::BadPublicKey { peer })?;
            masks.push((seed, if c.me < peer { Sign::Add } else { Sign::Sub }));
        }
        let words = match c.params.word {
            Word::U32 => MaskedWords::U32(masked_vector(&c.params, quantizer, &masks)),
            Word::U64 => MaskedWords::U64(masked_vector(&c.params, quantizer, &masks)),
        };
        let message = MaskedInput {
            round_id: c.params.round_id,
            sender: c.me,
            words,
        };
        let next = AwaitingUnmask {
            common: self.common,
            held,
            verifying_keys: self.verifying_keys,
        };
        Ok((next, message))
    }
}

/// Quantizes and masks in one pass over the vector.
fn masked_vector<W: MaskWord>(
    params: &Params,
    quantizer: quant::Quantizer<'_>,
    masks: &[(Seed, Sign)],
) -> Vec<W> {
    let mut words = vec![W::default(); params.vector_len + 1];
    prg::expand(params.prg, &mut words, masks, quantizer);
    words
}

/// Stage 3: holding shares of the live neighbours' secrets, waiting for the unmask
/// request (or, with the consistency check, for the survivor set to sign).
pub struct AwaitingUnmask {
    common: Common,
    /// For each live neighbour: (share of its self-mask secret, share of its mask key).
    held: BTreeMap<u32, (Share, Share)>,
    verifying_keys: BTreeMap<u32, VerifyingKey>,
}

impl std::fmt::Debug for AwaitingUnmask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingUnmask")
            .field("me", &self.common.me)
            .field("live_neighbours", &self.held.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl AwaitingUnmask {
    /// The neighbours this client masked with (those whose shares it holds).
    pub fn live_neighbours(&self) -> Vec<u32> {
        self.held.keys().copied().collect()
    }

    /// Answers the unmask request (rounds without consistency check): reveals the share of
    /// each surviving neighbour's self-mask secret and of each dropped neighbour's mask
    /// key. Refuses a request that names a peer as both survivor and dropout
    /// ([`ClientError::WouldRevealBothMasks`]), leaves a live neighbour unclassified,
    /// claims this client dropped, or has fewer than t or fewer than [`Params::n_min`]
    /// survivors ([`ClientError::BelowMinSurvivors`]).
    ///
    /// A client answers once per round: the stage is consumed, so a second request (or a
    /// conflicting one) cannot even be put to it, and no copy of the shares is left
    /// anywhere to answer it from. One call compiles, two do not:
    ///
    /// ```no_run
    /// # fn ask_once(c: harambee_secagg::AwaitingUnmask, r: &harambee_secagg::UnmaskRequest) {
    /// let first = c.handle_unmask(r);
    /// # }
    /// ```
    ///
    /// ```compile_fail,E0382
    /// # fn ask_twice(c: harambee_secagg::AwaitingUnmask, r: &harambee_secagg::UnmaskRequest) {
    /// let first = c.handle_unmask(r);
    /// let second = c.handle_unmask(r); // use of moved value: `c`
    /// # }
    /// ```
    pub fn handle_unmask(self, request: &UnmaskRequest) -> Result<UnmaskShares, ClientError> {
        if self.common.params.consistency_check {
            return Err(ClientError::ConsistencyCheckRequired);
        }
        self.check_request(request)?;
        Ok(self.reveal(request))
    }

    /// Consistency check, first half: validates the request like
    /// [`AwaitingUnmask::handle_unmask`] and signs the survivor and dropout sets instead of
    /// revealing anything.
    pub fn sign_survivors(
        self,
        request: &UnmaskRequest,
    ) -> Result<(AwaitingConsistency, ConsistencySignature), ClientError> {
        if !self.common.params.consistency_check {
            return Err(ClientError::NoConsistencyCheck);
        }
        self.check_request(request)?;
        let c = &self.common;
        let transcript =
            crypto::consistency_transcript(&c.digest, c.me, &request.survivors, &request.dropouts);
        let signature = c.signing_key.sign(&transcript).to_bytes();
        let message = ConsistencySignature {
            round_id: c.params.round_id,
            sender: c.me,
            signature,
        };
        Ok((
            AwaitingConsistency {
                inner: self,
                request: request.clone(),
            },
            message,
        ))
    }

    fn check_request(&self, request: &UnmaskRequest) -> Result<(), ClientError> {
        let c = &self.common;
        c.check_server_round(request.round_id)?;
        let survivors = sorted_set(&request.survivors)?;
        let dropouts = sorted_set(&request.dropouts)?;
        if let Some(&peer) = survivors.intersection(&dropouts).next() {
            return Err(ClientError::WouldRevealBothMasks { peer });
        }
        if !survivors.contains(&c.me) {
            return Err(ClientError::NotASurvivor);
        }
        let t = c.params.threshold;
        if survivors.len() < t {
            return Err(ClientError::BelowThreshold {
                live: survivors.len(),
                needed: t,
            });
        }
        // The noise target holds, and each input hides among enough others, only with at
        // least n_min survivors: below that, reveal nothing (t <= n_min, so this is the
        // stronger floor).
        if survivors.len() < c.params.n_min {
            return Err(ClientError::BelowMinSurvivors {
                survivors: survivors.len(),
                n_min: c.params.n_min,
            });
        }
        for &peer in survivors.iter().chain(&dropouts) {
            if c.params.participants.binary_search(&peer).is_err() {
                return Err(ClientError::InconsistentUnmaskRequest {
                    peer,
                    reason: "not a participant",
                });
            }
            if peer != c.me && c.is_neighbour(peer) && !self.held.contains_key(&peer) {
                return Err(ClientError::InconsistentUnmaskRequest {
                    peer,
                    reason: "did not share keys with this client",
                });
            }
        }
        for &peer in self.held.keys() {
            if !survivors.contains(&peer) && !dropouts.contains(&peer) {
                return Err(ClientError::InconsistentUnmaskRequest {
                    peer,
                    reason: "live neighbour in neither list",
                });
            }
        }
        Ok(())
    }

    fn reveal(self, request: &UnmaskRequest) -> UnmaskShares {
        let mut self_mask_shares = Vec::new();
        let mut key_shares = Vec::new();
        for (&owner, (b, s)) in &self.held {
            // check_request made sure owner is in exactly one list.
            if request.survivors.binary_search(&owner).is_ok() {
                self_mask_shares.push(RevealedShare {
                    owner,
                    share: b.to_bytes(),
                });
            } else {
                key_shares.push(RevealedShare {
                    owner,
                    share: s.to_bytes(),
                });
            }
        }
        UnmaskShares {
            round_id: self.common.params.round_id,
            sender: self.common.me,
            self_mask_shares,
            key_shares,
        }
    }
}

fn sorted_set(ids: &[u32]) -> Result<BTreeSet<u32>, ClientError> {
    if let Some(w) = ids.windows(2).find(|w| w[0] >= w[1]) {
        return Err(ClientError::InconsistentUnmaskRequest {
            peer: w[1],
            reason: "list not sorted or repeated",
        });
    }
    Ok(ids.iter().copied().collect())
}

/// Consistency check, second half: this client signed one survivor set and waits for
/// proof that a quorum of participants signed the same one. It reveals shares for that
/// set only, once ([`AwaitingConsistency::handle_consistency`]); an unmask request can no
/// longer be put to it (the call that compiles on [`AwaitingUnmask`] does not compile
/// here):
///
/// ```compile_fail,E0599
/// # fn after_signing(c: harambee_secagg::AwaitingConsistency, r: &harambee_secagg::UnmaskRequest) {
/// let shares = c.handle_unmask(r); // no method `handle_unmask`
/// # }
/// ```
pub struct AwaitingConsistency {
    inner: AwaitingUnmask,
    request: UnmaskRequest,
}

impl std::fmt::Debug for AwaitingConsistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwaitingConsistency")
            .field("me", &self.inner.common.me)
            .finish_non_exhaustive()
    }
}

impl AwaitingConsistency {
    /// Reveals the shares once `proof` carries valid signatures over exactly the sets this
    /// client signed from at least [`Params::consistency_quorum`] distinct survivors.
    pub fn handle_consistency(self, proof: &ConsistencyProof) -> Result<UnmaskShares, ClientError> {
        let c = &self.inner.common;
        c.check_server_round(proof.round_id)?;
        if proof.survivors != self.request.survivors || proof.dropouts != self.request.dropouts {
            return Err(ClientError::ConsistencyMismatch);
        }
        let mut signers = BTreeSet::new();
        for (signer, signature) in &proof.signatures {
            let peer = *signer;
            if self.request.survivors.binary_search(&peer).is_err() {
                return Err(ClientError::ConsistencyMismatch);
            }
            if !signers.insert(peer) {
                return Err(ClientError::Duplicate { peer });
            }
            let key = self
                .inner
                .verifying_keys
                .get(&peer)
                .ok_or(ClientError::UnknownPeer { peer })?;
            let transcript =
                crypto::consistency_transcript(&c.digest, peer, &proof.survivors, &proof.dropouts);
            key.verify_strict(&transcript, &Signature::from_bytes(signature))
                .map_err(|_| ClientError::BadSignature { peer })?;
        }
        let needed = c.params.consistency_quorum();
        if signers.len() < needed {
            return Err(ClientError::ConsistencyQuorum {
                valid: signers.len(),
                needed,
            });
        }
        let request = self.request;
        Ok(self.inner.reveal(&request))
    }
}
