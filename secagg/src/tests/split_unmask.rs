//! "Never both shares", tried the way a dishonest server would: real clients, and a server
//! that keeps every masked vector, writes each client whatever unmask request it likes
//! (neighbour A told X survived, neighbour B told X dropped), collects every share
//! revealed, and then tries to strip all masks off X's own vector.
//!
//! What these tests show (the crate docs cite them):
//! - a client answers once per round: a second request, or a request after it signed a
//!   survivor set, gets nothing new;
//! - with a strict-majority threshold (the recommended t = ⌊k/2⌋ + 1) the server never
//!   holds t self-mask shares and t mask-key shares of the same client, however it splits
//!   the requests; with threshold 1 it does, and reads X's input;
//! - with the consistency check no split view gets anything revealed beyond one survivor
//!   set, and X's input stays hidden; without it a server that also lies about X's
//!   *neighbours* reads X's input (which is why a facility that distrusts the coordinator
//!   should require the consistency check).

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand_core::SeedableRng;
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::prg::Sign;
use crate::shamir::Share;
use crate::{
    AwaitingConsistency, AwaitingUnmask, ChaCha20Rng, ClientError, ClientRound, ConsistencyProof,
    ConsistencySignature, Expectation, MaskedInput, MaskedWords, Params, ParamsMismatch,
    ParamsPolicy, ServerRound, SignedAdvertisement, UnmaskRequest, UnmaskShares, crypto, prg,
    quant, shamir,
};

const D: usize = 16;
/// The target.
const X: u32 = 1;

/// One round driven up to the unmask request, with everything the server saw.
struct Round {
    params: Params,
    clients: BTreeMap<u32, AwaitingUnmask>,
    ads: BTreeMap<u32, SignedAdvertisement>,
    masked: BTreeMap<u32, MaskedInput>,
    inputs: BTreeMap<u32, Vec<f32>>,
}

/// Ten clients, complete graph, the recommended threshold (t = 5) unless `threshold`.
fn params(consistency_check: bool, threshold: Option<usize>) -> Params {
    let ids: Vec<u32> = (1..=10).collect();
    let mut p = Params::recommended(3, &ids, D, 1.0, 1).unwrap();
    assert_eq!((p.degree(), p.threshold), (9, 5));
    if let Some(t) = threshold {
        p.threshold = t;
    }
    p.consistency_check = consistency_check;
    p.validate().unwrap();
    p
}

fn round(params: Params, seed: u64) -> Round {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let ids = params.participants.clone();
    let signing: BTreeMap<u32, SigningKey> = ids
        .iter()
        .map(|&id| (id, SigningKey::generate(&mut rng)))
        .collect();
    let verifying: BTreeMap<_, _> = signing
        .iter()
        .map(|(&id, k)| (id, k.verifying_key()))
        .collect();
    // The server routes keys and shares honestly: the attack is in the unmask requests.
    let mut server = ServerRound::new(params.clone(), verifying.clone()).unwrap();
    let mut stage = BTreeMap::new();
    let mut ads = BTreeMap::new();
    for &id in &ids {
        let (c, ad) = ClientRound::new(params.clone(), id, signing[&id].clone(), &mut rng).unwrap();
        server.receive(id, ad.clone()).unwrap();
        ads.insert(id, ad);
        stage.insert(id, c);
    }
    let (mut server, routes) = server.finish().unwrap();
    let mut next = BTreeMap::new();
    for (id, c) in stage {
        let (c, shares) = c
            .handle_keys(routes[&id].clone(), &verifying, &mut rng)
            .unwrap();
        server.receive(id, shares).unwrap();
        next.insert(id, c);
    }
    let (_, routes) = server.finish().unwrap();
    let mut clients = BTreeMap::new();
    let mut masked = BTreeMap::new();
    let mut inputs = BTreeMap::new();
    for (id, c) in next {
        let input: Vec<f32> = (0..D)
            .map(|j| (id as f32 * 0.37 + j as f32 * 0.11).sin() * 0.9)
            .collect();
        let (c, m) = c
            .handle_shares(routes[&id].clone(), &input, 1, &mut rng)
            .unwrap();
        clients.insert(id, c);
        masked.insert(id, m);
        inputs.insert(id, input);
    }
    Round {
        params,
        clients,
        ads,
        masked,
        inputs,
    }
}

/// A request naming `survivors` (everyone else dropped).
fn request(params: &Params, survivors: &BTreeSet<u32>) -> UnmaskRequest {
    UnmaskRequest {
        round_id: params.round_id,
        survivors: survivors.iter().copied().collect(),
        dropouts: params
            .participants
            .iter()
            .copied()
            .filter(|id| !survivors.contains(id))
            .collect(),
    }
}

fn everyone_but(params: &Params, gone: &[u32]) -> BTreeSet<u32> {
    params
        .participants
        .iter()
        .copied()
        .filter(|id| !gone.contains(id))
        .collect()
}

/// Every share the server collected: owner → (holder, share), of self-mask secrets (b)
/// and of mask keys (s).
#[derive(Default)]
struct Loot {
    b: BTreeMap<u32, Vec<(u32, Share)>>,
    s: BTreeMap<u32, Vec<(u32, Share)>>,
}

impl Loot {
    fn take(&mut self, answer: &UnmaskShares) {
        for r in &answer.self_mask_shares {
            let share = Share::from_bytes(&r.share).unwrap();
            self.b
                .entry(r.owner)
                .or_default()
                .push((answer.sender, share));
        }
        for r in &answer.key_shares {
            let share = Share::from_bytes(&r.share).unwrap();
            self.s
                .entry(r.owner)
                .or_default()
                .push((answer.sender, share));
        }
    }

    /// (self-mask shares, mask-key shares) held of `owner`'s secrets, distinct holders.
    fn counts(&self, owner: u32) -> (usize, usize) {
        let distinct = |m: &BTreeMap<u32, Vec<(u32, Share)>>| {
            m.get(&owner).map_or(0, |v| {
                v.iter().map(|(h, _)| *h).collect::<BTreeSet<_>>().len()
            })
        };
        (distinct(&self.b), distinct(&self.s))
    }

    fn combine(shares: Option<&Vec<(u32, Share)>>, t: usize) -> Option<Zeroizing<[u8; 32]>> {
        let shares = shares?;
        if shares.len() < t {
            return None;
        }
        let points: Vec<(u32, &Share)> = shares.iter().take(t).map(|(h, s)| (*h, s)).collect();
        shamir::combine(&points)
    }

    /// `owner`'s self-mask secret, if the loot reconstructs it (checked against its
    /// commitment).
    fn self_mask_secret(&self, r: &Round, owner: u32) -> Option<Zeroizing<[u8; 32]>> {
        let secret = Self::combine(self.b.get(&owner), r.params.threshold)?;
        let commitment = crypto::self_mask_commitment(&r.params.digest(), &secret, owner);
        (commitment == r.ads[&owner].self_mask_commitment).then_some(secret)
    }

    /// `owner`'s mask key, if the loot reconstructs it (checked against its public key).
    fn mask_key(&self, r: &Round, owner: u32) -> Option<Zeroizing<[u8; 32]>> {
        let secret = Self::combine(self.s.get(&owner), r.params.threshold)?;
        (crypto::public_of(&secret) == r.ads[&owner].mask_public).then_some(secret)
    }

    /// X's input read off X's own masked vector, if the loot removes every mask on it:
    /// the self mask (b_X) and each pairwise mask (from X's key or the neighbour's).
    fn read_input(&self, r: &Round, x: u32) -> Option<Vec<f32>> {
        let digest = r.params.digest();
        let b = self.self_mask_secret(r, x)?;
        let mut masks = vec![(crypto::self_mask_seed(&digest, &b, x), Sign::Sub)];
        let own_key = self.mask_key(r, x);
        for y in r.params.graph_neighbours(x) {
            let seed = match (&own_key, self.mask_key(r, y)) {
                (Some(sx), _) => crypto::pairwise_seed(
                    &digest,
                    &StaticSecret::from(**sx),
                    &r.ads[&y].mask_public,
                    x,
                    y,
                )?,
                (None, Some(sy)) => crypto::pairwise_seed(
                    &digest,
                    &StaticSecret::from(*sy),
                    &r.ads[&x].mask_public,
                    y,
                    x,
                )?,
                (None, None) => return None,
            };
            // X added the mask if X < y, subtracted it otherwise: undo that.
            masks.push((seed, if x < y { Sign::Sub } else { Sign::Add }));
        }
        let MaskedWords::U32(mut words) = r.masked[&x].words.clone() else {
            return None;
        };
        prg::apply_masks(r.params.prg, &mut words, &masks);
        quant::dequantize(&r.params, &words, 1).map(|(values, _)| values)
    }
}

/// Asserts that `read` is X's input (within the quantization bound).
fn assert_is_input(r: &Round, read: &[f32]) {
    let bound = r.params.error_bound(1) as f32;
    for (got, want) in read.iter().zip(&r.inputs[&X]) {
        assert!((got - want).abs() <= bound, "{got} vs {want}");
    }
}

/// Splits X's neighbours: the first `told_survived` are told X survived, the rest that X
/// dropped (everyone else survived, in both stories). Without the consistency check.
fn split_without_consistency(r: Round, told_survived: usize) -> (Round, Loot) {
    let mut r = r;
    let survived = request(&r.params, &everyone_but(&r.params, &[]));
    let dropped = request(&r.params, &everyone_but(&r.params, &[X]));
    let neighbours = r.params.graph_neighbours(X);
    let mut loot = Loot::default();
    for (id, client) in std::mem::take(&mut r.clients) {
        let story = match neighbours.iter().position(|&v| v == id) {
            Some(i) if i >= told_survived => &dropped,
            _ => &survived,
        };
        loot.take(&client.handle_unmask(story).unwrap());
    }
    (r, loot)
}

#[test]
fn split_requests_never_yield_both_secrets_of_a_client_at_the_recommended_threshold() {
    // Every way to split X's nine neighbours between the two stories.
    for told_survived in 0..=9 {
        let (r, loot) = split_without_consistency(round(params(false, None), 1), told_survived);
        let (b, s) = loot.counts(X);
        assert_eq!((b, s), (told_survived, 9 - told_survived));
        // Each neighbour revealed one of the two: 9 shares, t = 5 of each would take 10.
        assert!(b < 5 || s < 5, "split {told_survived}: {b} and {s} shares");
        assert!(
            loot.self_mask_secret(&r, X).is_none() || loot.mask_key(&r, X).is_none(),
            "split {told_survived}"
        );
        assert_eq!(loot.read_input(&r, X), None, "split {told_survived}");
    }
}

#[test]
fn with_threshold_one_the_same_split_reads_the_input_and_the_check_refuses_it() {
    let weak = params(false, Some(1));
    let (r, loot) = split_without_consistency(round(weak.clone(), 2), 1);
    // One neighbour's self-mask share is b_X, the others' key shares are s_X.
    assert!(loot.self_mask_secret(&r, X).is_some());
    assert!(loot.mask_key(&r, X).is_some());
    let read = loot.read_input(&r, X).expect("threshold 1 exposes X");
    assert_is_input(&r, &read);

    // So a client checking its expectation never takes part in such a round.
    let expectation = Expectation {
        round_id: weak.round_id,
        vector_len: D,
        clip: weak.clip,
        max_weight: weak.max_weight,
        noise_stddev: 0.0,
        min_survivors: 1,
        failure_probability: crate::DESIGN_FAILURE_PROBABILITY,
        policy: ParamsPolicy::default(),
    };
    expectation.check(&params(false, None)).unwrap();
    assert_eq!(
        expectation.check(&weak),
        Err(ParamsMismatch::ThresholdNotMajority {
            threshold: 1,
            degree: 9
        })
    );
}

#[test]
fn a_client_answers_once_and_after_signing_only_for_the_set_it_signed() {
    let r = round(params(true, None), 3);
    let p = r.params.clone();
    let mut clients = r.clients;
    // Asked to unmask directly in a consistency round: refused, nothing revealed.
    let c = clients.remove(&X).unwrap();
    let all = request(&p, &everyone_but(&p, &[]));
    assert_eq!(
        c.handle_unmask(&all).map(|_| ()),
        Err(ClientError::ConsistencyCheckRequired)
    );
    // Client 3 signs "X survived"; the server then shows it a valid quorum proof for
    // "X dropped", signed by the others. It reveals nothing, and the round is over for it
    // (the stage was consumed, so it cannot be asked again: see the compile-fail examples
    // on `AwaitingUnmask::handle_unmask` and `AwaitingConsistency`).
    let c3 = clients.remove(&3).unwrap();
    let (c3, _) = c3.sign_survivors(&all).unwrap();
    let dropped = request(&p, &everyone_but(&p, &[X]));
    let mut signatures = Vec::new();
    for (id, c) in clients {
        let (_, sig) = c.sign_survivors(&dropped).unwrap();
        signatures.push((id, sig.signature));
    }
    let proof = ConsistencyProof {
        round_id: p.round_id,
        survivors: dropped.survivors.clone(),
        dropouts: dropped.dropouts.clone(),
        signatures,
    };
    assert!(proof.signatures.len() >= p.consistency_quorum());
    assert_eq!(
        c3.handle_consistency(&proof).map(|_| ()),
        Err(ClientError::ConsistencyMismatch)
    );
}

/// With the consistency check: each client signs the story it was told, then gets the
/// proof the server can build for that story (its signers' signatures), and answers if
/// it holds. Returns the loot.
fn run_with_consistency(r: &mut Round, story_of: impl Fn(u32) -> UnmaskRequest) -> Loot {
    let p = r.params.clone();
    let mut signed: BTreeMap<u32, (AwaitingConsistency, UnmaskRequest)> = BTreeMap::new();
    let mut signatures: Vec<(UnmaskRequest, u32, ConsistencySignature)> = Vec::new();
    for (id, client) in std::mem::take(&mut r.clients) {
        let story = story_of(id);
        let (c, sig) = client.sign_survivors(&story).unwrap();
        signatures.push((story.clone(), id, sig));
        signed.insert(id, (c, story));
    }
    let mut loot = Loot::default();
    for (_, (c, story)) in signed {
        let proof = ConsistencyProof {
            round_id: p.round_id,
            survivors: story.survivors.clone(),
            dropouts: story.dropouts.clone(),
            signatures: signatures
                .iter()
                .filter(|(s, _, _)| *s == story)
                .map(|(_, id, sig)| (*id, sig.signature))
                .collect(),
        };
        match c.handle_consistency(&proof) {
            Ok(answer) => loot.take(&answer),
            Err(e) => assert!(matches!(e, ClientError::ConsistencyQuorum { .. }), "{e}"),
        }
    }
    loot
}

#[test]
fn with_the_consistency_check_split_requests_reveal_at_most_one_story() {
    let quorum = params(true, None).consistency_quorum();
    assert_eq!(quorum, 8);
    for told_survived in 0..=9 {
        let mut r = round(params(true, None), 4);
        let p = r.params.clone();
        let neighbours = p.graph_neighbours(X);
        let survived = request(&p, &everyone_but(&p, &[]));
        let dropped = request(&p, &everyone_but(&p, &[X]));
        let loot = run_with_consistency(&mut r, |id| {
            match neighbours.iter().position(|&v| v == id) {
                Some(i) if i >= told_survived => dropped.clone(),
                _ => survived.clone(),
            }
        });
        let (b, s) = loot.counts(X);
        // Only a story signed by a quorum of 8 gets answered; the two stories' signers
        // are disjoint, so at most one is, and X's shares come from one story only.
        assert!(b == 0 || s == 0, "split {told_survived}: {b} and {s}");
        assert!(b < 5 || s < 5);
        assert_eq!(loot.read_input(&r, X), None, "split {told_survived}");
    }
}

/// The server's other route to X: reconstruct b_X from neighbours told X survived, and
/// every *neighbour's* mask key from others told that neighbour dropped. Client Z (2..=10)
/// is told the survivors are X, Z and the next three (cyclically); X is told 1..=5.
fn neighbours_story(p: &Params, id: u32) -> UnmaskRequest {
    let survivors: BTreeSet<u32> = if id == X {
        (1..=5).collect()
    } else {
        let mut s: BTreeSet<u32> = (0..4).map(|i| 2 + (id - 2 + i) % 9).collect();
        s.insert(X);
        s
    };
    request(p, &survivors)
}

#[test]
fn without_the_consistency_check_lying_about_the_neighbours_reads_the_input() {
    // Each request on its own is valid (5 survivors >= n_min = t = 5), and no client
    // reveals both shares of any peer. Yet together they hand the server b_X and the mask
    // key of every neighbour of X: X's vector unmasks on its own.
    let mut r = round(params(false, None), 5);
    let p = r.params.clone();
    let mut loot = Loot::default();
    for (id, client) in std::mem::take(&mut r.clients) {
        loot.take(&client.handle_unmask(&neighbours_story(&p, id)).unwrap());
    }
    for &owner in &p.participants {
        let (b, s) = loot.counts(owner);
        assert!(b < 5 || s < 5, "client {owner}: {b} and {s} shares");
    }
    assert_eq!(loot.counts(X), (9, 0));
    let read = loot
        .read_input(&r, X)
        .expect("split views without the consistency check expose X");
    assert_is_input(&r, &read);

    // The same requests in a round with the consistency check: every client was told a
    // different story, no story reaches a quorum, nothing at all is revealed.
    let mut r = round(params(true, None), 5);
    let loot = run_with_consistency(&mut r, |id| neighbours_story(&p, id));
    assert!(loot.b.is_empty() && loot.s.is_empty());
    assert_eq!(loot.read_input(&r, X), None);
}
