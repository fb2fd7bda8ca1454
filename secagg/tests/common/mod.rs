//! A whole round in one thread: n clients and the server, messages passed through their
//! binary encodings, clients dropping out at chosen stages; and an independent model of
//! which clients survive, to check the server against.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use harambee_secagg::ed25519_dalek::{SigningKey, VerifyingKey};
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AfterMaskedInputs, Aggregate, AwaitingPeerKeys, AwaitingShares, AwaitingUnmask, ChaCha20Rng,
    ClientRound, CollectingAdvertisements, CollectingMaskedInputs, CollectingShares,
    EncryptedShare, MaskedInput, Message, Params, ServerError, ServerRound, SignedAdvertisement,
    Stage, UnmaskShares, decode_list, encode_list,
};

/// Identity keys for every participant.
pub struct Fixture {
    pub params: Params,
    pub signing: BTreeMap<u32, SigningKey>,
    pub verifying: BTreeMap<u32, VerifyingKey>,
}

impl Fixture {
    pub fn new(params: Params, seed: u64) -> Fixture {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x5eed);
        let signing: BTreeMap<u32, SigningKey> = params
            .participants
            .iter()
            .map(|&id| (id, SigningKey::generate(&mut rng)))
            .collect();
        let verifying = signing
            .iter()
            .map(|(&id, k)| (id, k.verifying_key()))
            .collect();
        Fixture {
            params,
            signing,
            verifying,
        }
    }
}

/// `ids` as a round's participants with the recommended parameters, then `k` and `t`.
pub fn params(round_id: u64, ids: &[u32], d: usize, k: usize, t: usize) -> Params {
    let mut p = Params::recommended(round_id, ids, d, 1.0, 10).unwrap();
    p.neighbours = k;
    p.threshold = t;
    p.n_min = t;
    p.validate().unwrap();
    p
}

/// The stage at which each client stops answering (it sends nothing from then on).
#[derive(Debug, Clone, Default)]
pub struct Drops(pub BTreeMap<u32, Stage>);

impl Drops {
    pub fn stops(&self, id: u32, stage: Stage) -> bool {
        self.0.get(&id).is_some_and(|&s| s <= stage)
    }
}

/// Deterministic inputs: d values in [-1.5c, 1.5c] (some get clipped) and a weight.
pub fn inputs(params: &Params, seed: u64) -> BTreeMap<u32, (Vec<f32>, u64)> {
    use harambee_secagg::rand_core::Rng;
    let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x1a7a);
    params
        .participants
        .iter()
        .map(|&id| {
            let c = params.clip;
            let v = (0..params.vector_len)
                .map(|_| (rng.next_u32() as f32 / u32::MAX as f32 * 3.0 - 1.5) * c)
                .collect();
            let w = 1 + u64::from(rng.next_u32()) % params.max_weight;
            (id, (v, w))
        })
        .collect()
}

fn wire<T: Message>(m: T) -> T {
    T::decode(&m.encode()).unwrap()
}

fn wire_list<T: Message>(m: Vec<T>) -> Vec<T> {
    decode_list(&encode_list(&m)).unwrap()
}

/// `bytes` cut into pieces of 1, 3, 7, 1000 and 5 bytes in turn, starting at `offset` in
/// that cycle.
pub fn uneven_pieces(bytes: &[u8], offset: usize) -> Vec<Vec<u8>> {
    const SIZES: [usize; 5] = [1, 3, 7, 1000, 5];
    let mut pieces = Vec::new();
    let mut rest = bytes;
    let mut i = offset;
    while !rest.is_empty() {
        let n = SIZES[i % SIZES.len()].min(rest.len());
        pieces.push(rest[..n].to_vec());
        rest = &rest[n..];
        i += 1;
    }
    pieces
}

/// Runs a round with honest clients, `drops` deciding who stops when. Client errors panic
/// (honest clients never see one); the server's outcome is returned.
pub fn run(
    fx: &Fixture,
    inputs: &BTreeMap<u32, (Vec<f32>, u64)>,
    drops: &Drops,
    seed: u64,
) -> Result<Aggregate, ServerError> {
    let params = &fx.params;
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    let mut server = ServerRound::new(params.clone(), fx.verifying.clone()).unwrap();

    let mut stage = BTreeMap::new();
    for &id in &params.participants {
        let (client, ad) =
            ClientRound::new(params.clone(), id, fx.signing[&id].clone(), &mut rng).unwrap();
        if drops.stops(id, Stage::AdvertiseKeys) {
            continue;
        }
        server.receive(id, wire::<SignedAdvertisement>(ad)).unwrap();
        stage.insert(id, client);
    }
    let (mut server, routes) = server.finish()?;

    let mut next = BTreeMap::new();
    for (id, client) in stage {
        let Some(ads) = routes.get(&id) else { continue };
        let (client, shares) = client
            .handle_keys(wire_list(ads.clone()), &fx.verifying, &mut rng)
            .unwrap();
        if drops.stops(id, Stage::ShareKeys) {
            continue;
        }
        server
            .receive(id, wire_list::<EncryptedShare>(shares))
            .unwrap();
        next.insert(id, client);
    }
    let (mut server, routes) = server.finish()?;

    let mut stage = BTreeMap::new();
    for (id, client) in next {
        let Some(shares) = routes.get(&id) else {
            continue;
        };
        let (input, weight) = &inputs[&id];
        let (client, masked) = client
            .handle_shares(wire_list(shares.clone()), input, *weight, &mut rng)
            .unwrap();
        if drops.stops(id, Stage::MaskedInput) {
            continue;
        }
        if id % 2 == 0 {
            server.receive(id, wire::<MaskedInput>(masked)).unwrap();
        } else {
            // As the coordinator receives it: little-endian bytes in network chunks, here
            // split at uneven boundaries so that words straddle pieces.
            let pieces = uneven_pieces(&masked.words.to_le_bytes(), id as usize);
            server
                .receive_le_pieces(
                    id,
                    masked.round_id,
                    masked.sender,
                    masked.words.word(),
                    &pieces,
                )
                .unwrap();
        }
        stage.insert(id, client);
    }

    let mut answers: Vec<(u32, UnmaskShares)> = Vec::new();
    let mut server = match server.finish()? {
        AfterMaskedInputs::Unmask(server, routes) => {
            for (id, client) in stage {
                let Some(request) = routes.get(&id) else {
                    continue;
                };
                let answer = client.handle_unmask(&wire(request.clone())).unwrap();
                answers.push((id, answer));
            }
            server
        }
        AfterMaskedInputs::ConsistencyCheck(mut server, routes) => {
            let mut signed = BTreeMap::new();
            for (id, client) in stage {
                let Some(request) = routes.get(&id) else {
                    continue;
                };
                let (client, sig) = client.sign_survivors(&wire(request.clone())).unwrap();
                if drops.stops(id, Stage::ConsistencyCheck) {
                    continue;
                }
                server.receive(id, wire(sig)).unwrap();
                signed.insert(id, client);
            }
            let (server, routes) = server.finish()?;
            for (id, client) in signed {
                let Some(proof) = routes.get(&id) else {
                    continue;
                };
                answers.push((id, client.handle_consistency(&wire(proof.clone())).unwrap()));
            }
            server
        }
    };
    for (id, answer) in answers {
        if drops.stops(id, Stage::Unmasking) {
            continue;
        }
        server.receive(id, wire(answer)).unwrap();
    }
    server.finish()
}

/// What the protocol must do with these drops, derived from the spec rather than the
/// server code: `Ok(survivors)` or `Err(stage at which it is below threshold)`.
pub fn expected(params: &Params, drops: &Drops) -> Result<BTreeSet<u32>, Stage> {
    let t = params.threshold;
    let nb: BTreeMap<u32, Vec<u32>> = params
        .participants
        .iter()
        .map(|&u| (u, params.graph_neighbours(u)))
        .collect();
    let deg = |u: u32, set: &BTreeSet<u32>| nb[&u].iter().filter(|v| set.contains(v)).count();
    let core = |mut set: BTreeSet<u32>| loop {
        let weak: Vec<u32> = set.iter().copied().filter(|&u| deg(u, &set) < t).collect();
        if weak.is_empty() {
            return set;
        }
        for u in weak {
            set.remove(&u);
        }
    };
    let answering = |set: &BTreeSet<u32>, stage: Stage| -> BTreeSet<u32> {
        set.iter()
            .copied()
            .filter(|&u| !drops.stops(u, stage))
            .collect()
    };
    let all: BTreeSet<u32> = params.participants.iter().copied().collect();
    let live1 = core(answering(&all, Stage::AdvertiseKeys));
    if live1.is_empty() || live1.len() < params.n_min {
        return Err(Stage::AdvertiseKeys);
    }
    let live2 = core(answering(&live1, Stage::ShareKeys));
    if live2.is_empty() || live2.len() < params.n_min {
        return Err(Stage::ShareKeys);
    }
    let survivors = answering(&live2, Stage::MaskedInput);
    let dropped: Vec<u32> = live2.difference(&survivors).copied().collect();
    let recoverable = |holders: &BTreeSet<u32>| {
        survivors.iter().all(|&u| deg(u, holders) >= t)
            && dropped
                .iter()
                .all(|&v| deg(v, &survivors) == 0 || deg(v, holders) >= t)
    };
    if survivors.is_empty() || !recoverable(&survivors) || survivors.len() < params.n_min {
        return Err(Stage::MaskedInput);
    }
    let mut asked = survivors.clone();
    if params.consistency_check {
        asked = answering(&survivors, Stage::ConsistencyCheck);
        if asked.len() < params.consistency_quorum() {
            return Err(Stage::ConsistencyCheck);
        }
    }
    let responders = answering(&asked, Stage::Unmasking);
    if !recoverable(&responders) {
        return Err(Stage::Unmasking);
    }
    Ok(survivors)
}

/// The stage a server error reports, for comparing with [`expected`].
pub fn error_stage(e: &ServerError) -> Option<Stage> {
    match e {
        ServerError::BelowThreshold { stage, .. }
        | ServerError::BelowMinSurvivors { stage, .. } => Some(*stage),
        ServerError::ConsistencyQuorum { .. } => Some(Stage::ConsistencyCheck),
        _ => None,
    }
}

/// Checks an aggregate against the plain weighted sum of the clipped inputs.
pub fn check_sum(
    params: &Params,
    inputs: &BTreeMap<u32, (Vec<f32>, u64)>,
    survivors: &BTreeSet<u32>,
    agg: &Aggregate,
) {
    assert_eq!(agg.survivors, survivors.iter().copied().collect::<Vec<_>>());
    let dropouts: Vec<u32> = params
        .participants
        .iter()
        .copied()
        .filter(|u| !survivors.contains(u))
        .collect();
    assert_eq!(agg.dropouts, dropouts);
    let total_weight: u64 = survivors.iter().map(|u| inputs[u].1).sum();
    assert_eq!(agg.total_weight, total_weight);
    let bound = params.error_bound(total_weight);
    let c = params.clip;
    for j in 0..params.vector_len {
        let exact: f64 = survivors
            .iter()
            .map(|u| f64::from(inputs[u].0[j].clamp(-c, c)) * inputs[u].1 as f64)
            .sum();
        let got = f64::from(agg.sum[j]);
        assert!(
            (got - exact).abs() <= bound,
            "coordinate {j}: got {got}, exact {exact}, bound {bound}"
        );
    }
}

/// All clients started, advertisements not yet delivered.
pub struct Keys {
    pub clients: BTreeMap<u32, AwaitingPeerKeys>,
    pub ads: BTreeMap<u32, SignedAdvertisement>,
    pub server: CollectingAdvertisements,
}

pub fn keys_stage(fx: &Fixture, rng: &mut ChaCha20Rng) -> Keys {
    let server = ServerRound::new(fx.params.clone(), fx.verifying.clone()).unwrap();
    let mut clients = BTreeMap::new();
    let mut ads = BTreeMap::new();
    for &id in &fx.params.participants {
        let (c, ad) =
            ClientRound::new(fx.params.clone(), id, fx.signing[&id].clone(), rng).unwrap();
        clients.insert(id, c);
        ads.insert(id, ad);
    }
    Keys {
        clients,
        ads,
        server,
    }
}

/// Advertisements delivered and routed; share bundles made, not yet delivered.
pub struct Shares {
    pub clients: BTreeMap<u32, AwaitingShares>,
    pub shares: BTreeMap<u32, Vec<EncryptedShare>>,
    pub server: CollectingShares,
    pub ad_routes: BTreeMap<u32, Vec<SignedAdvertisement>>,
}

pub fn shares_stage(fx: &Fixture, rng: &mut ChaCha20Rng) -> Shares {
    let mut k = keys_stage(fx, rng);
    for (&id, ad) in &k.ads {
        k.server.receive(id, ad.clone()).unwrap();
    }
    let (server, ad_routes) = k.server.finish().unwrap();
    let mut clients = BTreeMap::new();
    let mut shares = BTreeMap::new();
    for (id, c) in k.clients {
        let (c, s) = c
            .handle_keys(ad_routes[&id].clone(), &fx.verifying, rng)
            .unwrap();
        clients.insert(id, c);
        shares.insert(id, s);
    }
    Shares {
        clients,
        shares,
        server,
        ad_routes,
    }
}

/// Shares delivered and routed; masked inputs made, not yet delivered.
pub struct Masked {
    pub clients: BTreeMap<u32, AwaitingUnmask>,
    pub masked: BTreeMap<u32, MaskedInput>,
    pub server: CollectingMaskedInputs,
    pub share_routes: BTreeMap<u32, Vec<EncryptedShare>>,
}

pub fn masked_stage(fx: &Fixture, rng: &mut ChaCha20Rng) -> Masked {
    let mut s = shares_stage(fx, rng);
    for (&id, bundle) in &s.shares {
        s.server.receive(id, bundle.clone()).unwrap();
    }
    let (server, share_routes) = s.server.finish().unwrap();
    let inputs = inputs(&fx.params, 3);
    let mut clients = BTreeMap::new();
    let mut masked = BTreeMap::new();
    for (id, c) in s.clients {
        let (input, w) = &inputs[&id];
        let (c, m) = c
            .handle_shares(share_routes[&id].clone(), input, *w, rng)
            .unwrap();
        clients.insert(id, c);
        masked.insert(id, m);
    }
    Masked {
        clients,
        masked,
        server,
        share_routes,
    }
}
