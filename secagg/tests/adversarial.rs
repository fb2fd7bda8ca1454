//! Malformed, misrouted, replayed and forged messages: each is rejected with a typed error
//! that names the peer at fault, on the server and on the clients.

mod common;

use std::collections::BTreeMap;

use common::{Fixture, Masked, inputs, keys_stage, masked_stage, params, shares_stage};
use harambee_secagg::ed25519_dalek::SigningKey;
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AfterMaskedInputs, AwaitingUnmask, ChaCha20Rng, ClientError, ClientRound, EncryptedShare,
    MaskedWords, Params, ServerError, SignedAdvertisement, Stage, UnmaskRequest, UnmaskShares,
};

const IDS: [u32; 6] = [10, 20, 30, 40, 50, 60];

/// Six clients, k = 4, t = 3.
fn fixture(round_id: u64) -> Fixture {
    Fixture::new(params(round_id, &IDS, 8, 4, 3), 1)
}

fn rng() -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(99)
}

#[test]
fn wrong_vector_length_and_word_size_are_rejected() {
    let fx = fixture(1);
    let mut m = masked_stage(&fx, &mut rng());
    let mut short = m.masked[&10].clone();
    let MaskedWords::U32(words) = &mut short.words else {
        panic!("32-bit words expected")
    };
    words.pop();
    assert_eq!(
        m.server.receive(10, short),
        Err(ServerError::WrongLength {
            peer: 10,
            expected: 9,
            got: 8
        })
    );
    let mut wide = m.masked[&10].clone();
    wide.words = MaskedWords::U64(vec![0; 9]);
    assert_eq!(
        m.server.receive(10, wide),
        Err(ServerError::WrongWordSize {
            peer: 10,
            expected: 32,
            got: 64
        })
    );
    // The same refusals for an input still in its network pieces, made before any word
    // is added.
    let genuine = m.masked[&10].clone();
    let bytes = genuine.words.to_le_bytes();
    let short = common::uneven_pieces(&bytes[..bytes.len() - 4], 0);
    assert_eq!(
        m.server
            .receive_le_pieces(10, genuine.round_id, 10, genuine.words.word(), &short),
        Err(ServerError::WrongLength {
            peer: 10,
            expected: 9,
            got: 8
        })
    );
    let long = common::uneven_pieces(&[bytes.as_slice(), &[0u8; 4]].concat(), 1);
    assert!(matches!(
        m.server
            .receive_le_pieces(10, genuine.round_id, 10, genuine.words.word(), &long),
        Err(ServerError::WrongLength { peer: 10, .. })
    ));
    assert_eq!(
        m.server.receive_le_pieces(
            10,
            genuine.round_id,
            10,
            harambee_secagg::Word::U64,
            &[vec![0u8; 72]]
        ),
        Err(ServerError::WrongWordSize {
            peer: 10,
            expected: 32,
            got: 64
        })
    );
    // The genuine message is still accepted afterwards: a rejected message changes nothing
    // (the round's sum is checked at the end of every honest round in tests/sum.rs, where
    // half the clients' inputs arrive in pieces).
    m.server.receive(10, m.masked[&10].clone()).unwrap();

    // A client refuses an input of the wrong length, non-finite values and bad weights.
    let s = shares_stage(&fx, &mut rng());
    let (_, routes) = {
        let mut server = s.server;
        for (&id, bundle) in &s.shares {
            server.receive(id, bundle.clone()).unwrap();
        }
        server.finish().unwrap()
    };
    let mut clients = s.clients.into_iter();
    let (id, c) = clients.next().unwrap();
    let err = c
        .handle_shares(routes[&id].clone(), &[0.0; 7], 1, &mut rng())
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::InputLength {
            expected: 8,
            got: 7
        }
    );
    let (id, c) = clients.next().unwrap();
    let mut nan = [0.0f32; 8];
    nan[3] = f32::NAN;
    assert_eq!(
        c.handle_shares(routes[&id].clone(), &nan, 1, &mut rng())
            .unwrap_err(),
        ClientError::NonFiniteInput { index: 3 }
    );
    let (id, c) = clients.next().unwrap();
    assert_eq!(
        c.handle_shares(routes[&id].clone(), &[0.0; 8], 0, &mut rng())
            .unwrap_err(),
        ClientError::Weight { weight: 0, max: 10 }
    );
}

#[test]
fn duplicate_unknown_and_impersonating_senders_are_rejected() {
    let fx = fixture(1);
    let mut k = keys_stage(&fx, &mut rng());
    let ad = k.ads[&10].clone();
    k.server.receive(10, ad.clone()).unwrap();
    assert_eq!(
        k.server.receive(10, ad.clone()),
        Err(ServerError::Duplicate {
            peer: 10,
            stage: Stage::AdvertiseKeys
        })
    );
    assert_eq!(
        k.server.receive(11, ad.clone()),
        Err(ServerError::UnknownParticipant { peer: 11 })
    );
    assert_eq!(
        k.server.receive(20, ad.clone()),
        Err(ServerError::SenderMismatch {
            peer: 20,
            claimed: 10
        })
    );

    // Clients refuse repeated advertisements too.
    let fx2 = fixture(2);
    let s = shares_stage(&fx2, &mut rng());
    let mut k = keys_stage(&fx2, &mut rng());
    let (&id, _) = s.ad_routes.iter().next().unwrap();
    let mut ads = s.ad_routes[&id].clone();
    ads.push(ads[0].clone());
    let peer = ads[0].sender;
    let client = k.clients.remove(&id).unwrap();
    assert_eq!(
        client
            .handle_keys(ads, &fx2.verifying, &mut rng())
            .unwrap_err(),
        ClientError::Duplicate { peer }
    );

    // Masked inputs and shares: duplicates and strangers.
    let mut m = masked_stage(&fx, &mut rng());
    m.server.receive(20, m.masked[&20].clone()).unwrap();
    assert_eq!(
        m.server.receive(20, m.masked[&20].clone()),
        Err(ServerError::Duplicate {
            peer: 20,
            stage: Stage::MaskedInput
        })
    );
    assert_eq!(
        m.server.receive(7, m.masked[&20].clone()),
        Err(ServerError::UnknownParticipant { peer: 7 })
    );
    let mut s = shares_stage(&fx, &mut rng());
    s.server.receive(30, s.shares[&30].clone()).unwrap();
    assert_eq!(
        s.server.receive(30, s.shares[&30].clone()),
        Err(ServerError::Duplicate {
            peer: 30,
            stage: Stage::ShareKeys
        })
    );
    let mut repeated = s.shares[&40].clone();
    repeated[1] = repeated[0].clone();
    let recipient = repeated[0].recipient;
    assert_eq!(
        s.server.receive(40, repeated),
        Err(ServerError::DuplicateShare {
            peer: 40,
            recipient
        })
    );
    let mut partial = s.shares[&40].clone();
    let missing = partial.pop().unwrap().recipient;
    assert_eq!(
        s.server.receive(40, partial),
        Err(ServerError::IncompleteShares {
            peer: 40,
            missing: vec![missing]
        })
    );
}

#[test]
fn bad_signatures_and_substituted_keys_are_rejected() {
    let fx = fixture(1);
    let mut k = keys_stage(&fx, &mut rng());
    let mut forged = k.ads[&10].clone();
    forged.signature[0] ^= 1;
    assert_eq!(
        k.server.receive(10, forged),
        Err(ServerError::BadSignature { peer: 10 })
    );
    // Signed by someone else's identity (e.g. the server's own key).
    let (_, mallory_ad) = {
        let mallory = SigningKey::from_bytes(&[7u8; 32]);
        ClientRound::new(
            fx.params.clone(),
            10,
            mallory,
            &mut ChaCha20Rng::seed_from_u64(12345),
        )
        .unwrap()
    };
    assert_eq!(
        k.server.receive(10, mallory_ad.clone()),
        Err(ServerError::BadSignature { peer: 10 })
    );

    // A server that substitutes a peer's key is caught by the client, who checks
    // signatures against the identity keys from the certificates.
    let s = shares_stage(&fx, &mut rng());
    let mut k = keys_stage(&fx, &mut rng());
    for (swap_field, id) in [(0, 10u32), (1, 20), (2, 30)] {
        let mut ads = s.ad_routes[&id].clone();
        let peer = ads[0].sender;
        match swap_field {
            0 => ads[0].mask_public = mallory_ad.mask_public,
            1 => ads[0].cipher_public = mallory_ad.cipher_public,
            _ => {
                ads[0] = SignedAdvertisement {
                    sender: peer,
                    ..mallory_ad.clone()
                }
            }
        }
        let client = k.clients.remove(&id).unwrap();
        assert_eq!(
            client
                .handle_keys(ads, &fx.verifying, &mut rng())
                .unwrap_err(),
            ClientError::BadSignature { peer }
        );
    }
    // A client with no identity key for a peer refuses too.
    let client = k.clients.remove(&40).unwrap();
    let ads = s.ad_routes[&40].clone();
    let peer = ads[0].sender;
    let mut keys = fx.verifying.clone();
    keys.remove(&peer);
    assert_eq!(
        client.handle_keys(ads, &keys, &mut rng()).unwrap_err(),
        ClientError::UnknownPeer { peer }
    );
}

#[test]
fn advertisements_from_non_neighbours_are_refused_by_clients() {
    let ids: Vec<u32> = (1..=10).collect();
    let fx = Fixture::new(params(4, &ids, 3, 4, 2), 2);
    let mut k = keys_stage(&fx, &mut rng());
    let me = 1;
    let stranger = *ids
        .iter()
        .find(|&&v| v != me && !fx.params.graph_neighbours(me).contains(&v))
        .unwrap();
    let client = k.clients.remove(&me).unwrap();
    let err = client
        .handle_keys(vec![k.ads[&stranger].clone()], &fx.verifying, &mut rng())
        .unwrap_err();
    assert_eq!(err, ClientError::NotANeighbour { peer: stranger });
    // Too few live neighbours: below threshold.
    let client = k.clients.remove(&2).unwrap();
    let nb = fx.params.graph_neighbours(2);
    let err = client
        .handle_keys(vec![k.ads[&nb[0]].clone()], &fx.verifying, &mut rng())
        .unwrap_err();
    assert_eq!(err, ClientError::BelowThreshold { live: 1, needed: 2 });
}

#[test]
fn shares_for_the_wrong_recipient_are_rejected() {
    let ids: Vec<u32> = (1..=10).collect();
    let fx = Fixture::new(params(4, &ids, 3, 4, 2), 2);
    let mut s = shares_stage(&fx, &mut rng());
    // To a non-neighbour, to itself.
    let stranger = *ids
        .iter()
        .find(|&&v| v != 1 && !fx.params.graph_neighbours(1).contains(&v))
        .unwrap();
    for recipient in [stranger, 1] {
        let mut bundle = s.shares[&1].clone();
        bundle[0].recipient = recipient;
        assert_eq!(
            s.server.receive(1, bundle),
            Err(ServerError::MisaddressedShare { peer: 1, recipient })
        );
    }
    let mut short = s.shares[&1].clone();
    short[0].ciphertext.pop();
    assert_eq!(
        s.server.receive(1, short),
        Err(ServerError::MalformedShare {
            peer: 1,
            reason: "ciphertext length"
        })
    );
    // A share whose sender field names someone else.
    let mut spoofed = s.shares[&1].clone();
    spoofed[0].sender = 2;
    assert_eq!(
        s.server.receive(1, spoofed),
        Err(ServerError::SenderMismatch {
            peer: 1,
            claimed: 2
        })
    );

    for (&id, bundle) in &s.shares {
        s.server.receive(id, bundle.clone()).unwrap();
    }
    let (_, routes) = s.server.finish().unwrap();
    let inputs = inputs(&fx.params, 1);
    let mut clients = s.clients;
    // A client handed a share addressed to another client refuses it...
    let other = routes[&2][0].clone();
    let mut inbox = routes[&1].clone();
    inbox.push(other.clone());
    let c = clients.remove(&1).unwrap();
    let err = c
        .handle_shares(inbox, &inputs[&1].0, 1, &mut rng())
        .unwrap_err();
    assert_eq!(
        err,
        ClientError::MisaddressedShare {
            peer: other.sender,
            recipient: 2
        }
    );
    // ... and one relabelled as its own does not decrypt (the AEAD binds the recipient).
    let c = clients.remove(&3).unwrap();
    let mut inbox = routes[&3].clone();
    let sender = inbox[0].sender;
    let stolen = routes
        .iter()
        .find(|(to, v)| **to != 3 && v.iter().any(|s| s.sender == sender))
        .unwrap();
    let stolen = stolen.1.iter().find(|s| s.sender == sender).unwrap();
    inbox[0].ciphertext = stolen.ciphertext.clone();
    let err = c
        .handle_shares(inbox, &inputs[&3].0, 1, &mut rng())
        .unwrap_err();
    assert_eq!(err, ClientError::ShareDecryption { peer: sender });
}

#[test]
fn messages_replayed_from_an_earlier_round_are_rejected() {
    let old = fixture(1);
    let new = Fixture {
        params: Params {
            round_id: 2,
            ..old.params.clone()
        },
        signing: old.signing.clone(),
        verifying: old.verifying.clone(),
    };
    let old_round = masked_stage(&old, &mut rng());
    let old_shares = shares_stage(&old, &mut rng());
    let old_ads = keys_stage(&old, &mut rng()).ads;

    // Server: as sent, and with the round id rewritten (the signature covers it).
    let mut k = keys_stage(&new, &mut rng());
    let replay = old_ads[&10].clone();
    assert_eq!(
        k.server.receive(10, replay.clone()),
        Err(ServerError::WrongRound {
            peer: 10,
            got: 1,
            expected: 2
        })
    );
    let rewritten = SignedAdvertisement {
        round_id: 2,
        ..replay
    };
    assert_eq!(
        k.server.receive(10, rewritten.clone()),
        Err(ServerError::BadSignature { peer: 10 })
    );

    let mut s = shares_stage(&new, &mut rng());
    let err = s
        .server
        .receive(20, old_shares.shares[&20].clone())
        .unwrap_err();
    assert_eq!(
        err,
        ServerError::WrongRound {
            peer: 20,
            got: 1,
            expected: 2
        }
    );
    let mut m = masked_stage(&new, &mut rng());
    let err = m
        .server
        .receive(30, old_round.masked[&30].clone())
        .unwrap_err();
    assert_eq!(
        err,
        ServerError::WrongRound {
            peer: 30,
            got: 1,
            expected: 2
        }
    );

    // Clients: an old advertisement, as sent and rewritten.
    let s_new = shares_stage(&new, &mut rng());
    let mut k = keys_stage(&new, &mut rng());
    let id = 10;
    let mut ads = s_new.ad_routes[&id].clone();
    let peer = ads[0].sender;
    ads[0] = old_ads[&peer].clone();
    let c = k.clients.remove(&id).unwrap();
    assert_eq!(
        c.handle_keys(ads, &new.verifying, &mut rng()).unwrap_err(),
        ClientError::WrongRound {
            peer,
            got: 1,
            expected: 2
        }
    );
    let c = k.clients.remove(&20).unwrap();
    let mut ads20 = s_new.ad_routes[&20].clone();
    let peer20 = ads20[0].sender;
    ads20[0] = SignedAdvertisement {
        round_id: 2,
        ..old_ads[&peer20].clone()
    };
    assert_eq!(
        c.handle_keys(ads20, &new.verifying, &mut rng())
            .unwrap_err(),
        ClientError::BadSignature { peer: peer20 }
    );

    // An old share with its round id rewritten does not decrypt (the AEAD binds the round).
    let mut s = shares_stage(&new, &mut rng());
    for (&from, bundle) in &s.shares {
        s.server.receive(from, bundle.clone()).unwrap();
    }
    let (_, routes) = s.server.finish().unwrap();
    let mut inbox = routes[&40].clone();
    let sender = inbox[0].sender;
    let old_share = old_shares.shares[&sender][0].clone();
    inbox[0] = EncryptedShare {
        round_id: 2,
        recipient: 40,
        ..old_share
    };
    let c = s.clients.remove(&40).unwrap();
    let input = &inputs(&new.params, 1)[&40].0;
    assert_eq!(
        c.handle_shares(inbox, input, 1, &mut rng()).unwrap_err(),
        ClientError::ShareDecryption { peer: sender }
    );
}

fn unmask_requests(
    m: Masked,
) -> (
    BTreeMap<u32, AwaitingUnmask>,
    UnmaskRequest,
    harambee_secagg::CollectingUnmaskShares,
) {
    let mut server = m.server;
    for (&id, input) in &m.masked {
        if id != 60 {
            server.receive(id, input.clone()).unwrap();
        }
    }
    let AfterMaskedInputs::Unmask(server, routes) = server.finish().unwrap() else {
        panic!("no consistency check here")
    };
    let request = routes[&10].clone();
    assert_eq!(request.dropouts, vec![60]);
    (m.clients, request, server)
}

#[test]
fn unmask_requests_that_would_reveal_both_masks_are_refused() {
    let fx = fixture(1);
    let (mut clients, request, _) = unmask_requests(masked_stage(&fx, &mut rng()));
    let me = 10;
    let nb = clients[&me].live_neighbours();
    let survivor_nb = *nb.iter().find(|&&v| v != 60).unwrap();

    // A surviving neighbour also listed as dropped.
    let mut both = request.clone();
    both.dropouts.push(survivor_nb);
    both.dropouts.sort_unstable();
    let c = clients.remove(&me).unwrap();
    assert_eq!(
        c.handle_unmask(&both).unwrap_err(),
        ClientError::WouldRevealBothMasks { peer: survivor_nb }
    );

    // Fewer than t survivors.
    let c = clients.remove(&20).unwrap();
    let few = UnmaskRequest {
        survivors: vec![20, 30],
        dropouts: vec![10, 40, 50, 60],
        ..request.clone()
    };
    assert_eq!(
        c.handle_unmask(&few).unwrap_err(),
        ClientError::BelowThreshold { live: 2, needed: 3 }
    );

    // Told it dropped out itself.
    let c = clients.remove(&30).unwrap();
    let mut not_me = request.clone();
    not_me.survivors.retain(|&v| v != 30);
    not_me.dropouts = vec![30, 60];
    assert_eq!(
        c.handle_unmask(&not_me).unwrap_err(),
        ClientError::NotASurvivor
    );

    // A live neighbour in neither list.
    let c = clients.remove(&40).unwrap();
    let nb40 = c.live_neighbours();
    let hidden = *nb40.iter().find(|&&v| v != 60).unwrap();
    let mut unclassified = request.clone();
    unclassified.survivors.retain(|&v| v != hidden);
    let err = c.handle_unmask(&unclassified).unwrap_err();
    assert_eq!(
        err,
        ClientError::InconsistentUnmaskRequest {
            peer: hidden,
            reason: "live neighbour in neither list"
        }
    );

    // For another round.
    let c = clients.remove(&50).unwrap();
    let other = UnmaskRequest {
        round_id: 9,
        ..request.clone()
    };
    assert_eq!(
        c.handle_unmask(&other).unwrap_err(),
        ClientError::RequestForOtherRound {
            got: 9,
            expected: 1
        }
    );
}

#[test]
fn unmask_answers_with_unrequested_missing_or_false_shares_are_caught() {
    let fx = fixture(1);
    let (mut clients, request, mut server) = unmask_requests(masked_stage(&fx, &mut rng()));
    // Client 10's honest answer, then tampered versions.
    let honest = clients
        .remove(&10)
        .unwrap()
        .handle_unmask(&request)
        .unwrap();
    assert!(!honest.self_mask_shares.is_empty());
    let mut unrequested = honest.clone();
    let b = unrequested.self_mask_shares[0].clone();
    unrequested.key_shares.push(b.clone());
    assert_eq!(
        server.receive(10, unrequested),
        Err(ServerError::UnrequestedShare {
            peer: 10,
            owner: b.owner
        })
    );
    let mut missing = honest.clone();
    let gone = missing.self_mask_shares.remove(0).owner;
    assert_eq!(
        server.receive(10, missing),
        Err(ServerError::MissingShare {
            peer: 10,
            owner: gone
        })
    );
    let mut garbage = honest.clone();
    garbage.self_mask_shares[0].share = [0xff; 64];
    assert_eq!(
        server.receive(10, garbage),
        Err(ServerError::MalformedShare {
            peer: 10,
            reason: "not a field element"
        })
    );
    let from_dropout = UnmaskShares {
        sender: 60,
        ..honest.clone()
    };
    assert_eq!(
        server.receive(60, from_dropout),
        Err(ServerError::NotInStage {
            peer: 60,
            stage: Stage::Unmasking
        })
    );

    // A holder that lies with a well-formed but wrong share: the reconstructed secret does
    // not match the signed commitment, and the server says whose secret failed.
    let mut lying = honest.clone();
    lying.self_mask_shares[0].share[0] ^= 1;
    let victim = lying.self_mask_shares[0].owner;
    server.receive(10, lying).unwrap();
    for (id, c) in clients {
        if id != 60 {
            server
                .receive(id, c.handle_unmask(&request).unwrap())
                .unwrap();
        }
    }
    // Client 10 has the smallest id, so its share is among the first t used.
    assert_eq!(
        server.finish(),
        Err(ServerError::ReconstructionFailed { client: victim })
    );
}

#[test]
fn dropped_clients_cannot_rejoin_a_later_stage() {
    let fx = fixture(1);
    let mut k = keys_stage(&fx, &mut rng());
    for (&id, ad) in &k.ads {
        if id != 60 {
            k.server.receive(id, ad.clone()).unwrap();
        }
    }
    let (mut server, _) = k.server.finish().unwrap();
    let s = shares_stage(&fx, &mut rng());
    let err = server.receive(60, s.shares[&60].clone()).unwrap_err();
    assert_eq!(
        err,
        ServerError::NotInStage {
            peer: 60,
            stage: Stage::ShareKeys
        }
    );
    assert_eq!(err.peer(), Some(60));
}

#[test]
fn consistency_check_refuses_mismatched_or_thin_proofs() {
    let mut p = params(1, &IDS, 8, 4, 3);
    p.consistency_check = true;
    let fx = Fixture::new(p, 1);
    let m = masked_stage(&fx, &mut rng());
    let mut server = m.server;
    for (&id, input) in &m.masked {
        server.receive(id, input.clone()).unwrap();
    }
    let AfterMaskedInputs::ConsistencyCheck(mut server, routes) = server.finish().unwrap() else {
        panic!("consistency check expected")
    };
    let request = routes[&10].clone();
    let mut clients = m.clients;
    // Answering without the check is refused.
    let c = clients.remove(&10).unwrap();
    assert_eq!(
        c.handle_unmask(&request).unwrap_err(),
        ClientError::ConsistencyCheckRequired
    );

    let mut waiting = BTreeMap::new();
    for (id, c) in clients {
        let (c, sig) = c.sign_survivors(&request).unwrap();
        if id == 20 {
            let mut bad = sig.clone();
            bad.signature[5] ^= 1;
            assert_eq!(
                server.receive(20, bad),
                Err(ServerError::BadSignature { peer: 20 })
            );
        }
        server.receive(id, sig).unwrap();
        waiting.insert(id, c);
    }
    let (_, proofs) = server.finish().unwrap();
    let proof = proofs[&20].clone();
    assert_eq!(proof.signatures.len(), 5);
    assert_eq!(fx.params.consistency_quorum(), 5);

    // Another survivor set than the one signed.
    let c = waiting.remove(&20).unwrap();
    let mut other = proof.clone();
    other.survivors.pop();
    assert_eq!(
        c.handle_consistency(&other).unwrap_err(),
        ClientError::ConsistencyMismatch
    );
    // Too few signatures.
    let c = waiting.remove(&30).unwrap();
    let mut thin = proof.clone();
    thin.signatures.pop();
    assert_eq!(
        c.handle_consistency(&thin).unwrap_err(),
        ClientError::ConsistencyQuorum {
            valid: 4,
            needed: 5
        }
    );
    // A forged signature.
    let c = waiting.remove(&40).unwrap();
    let mut forged = proof.clone();
    forged.signatures[0].1[9] ^= 1;
    let signer = forged.signatures[0].0;
    assert_eq!(
        c.handle_consistency(&forged).unwrap_err(),
        ClientError::BadSignature { peer: signer }
    );
    // The genuine proof is accepted.
    let c = waiting.remove(&50).unwrap();
    assert!(c.handle_consistency(&proof).is_ok());
}

#[test]
fn errors_name_the_peer_at_fault() {
    assert_eq!(ServerError::BadSignature { peer: 3 }.peer(), Some(3));
    assert_eq!(ServerError::CorruptAggregate.peer(), None);
    assert_eq!(ClientError::ShareDecryption { peer: 4 }.peer(), Some(4));
    assert_eq!(ClientError::WouldRevealBothMasks { peer: 4 }.peer(), None);
    let msg = ServerError::WrongLength {
        peer: 3,
        expected: 9,
        got: 8,
    }
    .to_string();
    assert_eq!(msg, "peer 3 sent a vector of 8 words, expected 9");
}
