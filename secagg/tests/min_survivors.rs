//! n_min: a sum of fewer survivors than the noise was calibrated to is never unmasked. The
//! server refuses to go on, and every client refuses to reveal a share, even when a
//! dishonest server asks.

mod common;

use common::{Drops, Fixture, inputs, masked_stage, params, run};
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{ChaCha20Rng, ClientError, Params, ServerError, Stage, UnmaskRequest};

const IDS: [u32; 6] = [10, 20, 30, 40, 50, 60];

/// Six clients, complete graph (k = 5), t = 3, n_min = 5.
fn fixture(consistency_check: bool) -> Fixture {
    let mut p = params(1, &IDS, 8, 5, 3);
    p.n_min = 5;
    p.consistency_check = consistency_check;
    p.validate().unwrap();
    Fixture::new(p, 1)
}

fn drops(ids: &[u32], stage: Stage) -> Drops {
    Drops(ids.iter().map(|&id| (id, stage)).collect())
}

#[test]
fn server_unmasks_n_min_survivors_and_refuses_fewer() {
    for consistency_check in [false, true] {
        let fx = fixture(consistency_check);
        let inputs = inputs(&fx.params, 2);
        // One dropout: 5 survivors = n_min, unmasked.
        let agg = run(&fx, &inputs, &drops(&[20], Stage::MaskedInput), 3).unwrap();
        assert_eq!(agg.survivors, [10, 30, 40, 50, 60]);
        // Two dropouts: 4 survivors; t = 3 could still recover every mask, n_min refuses.
        let err = run(&fx, &inputs, &drops(&[20, 30], Stage::MaskedInput), 3).unwrap_err();
        assert_eq!(
            err,
            ServerError::BelowMinSurvivors {
                stage: Stage::MaskedInput,
                survivors: 4,
                n_min: 5
            }
        );
        assert!(err.to_string().contains("n_min = 5"), "{err}");
        // The same two with n_min = t: the sum of 4 is unmasked, which is what n_min
        // changes (with the consistency check the quorum of 5 signers refuses it too).
        let mut lax = fx.params.clone();
        lax.n_min = lax.threshold;
        let fx_lax = Fixture::new(lax, 1);
        let lax = run(&fx_lax, &inputs, &drops(&[20, 30], Stage::MaskedInput), 3);
        if consistency_check {
            assert!(matches!(lax, Err(ServerError::ConsistencyQuorum { .. })));
        } else {
            assert_eq!(lax.unwrap().survivors, [10, 40, 50, 60]);
        }
    }
}

#[test]
fn server_refuses_as_soon_as_too_few_are_live() {
    let fx = fixture(false);
    let inputs = inputs(&fx.params, 2);
    for stage in [Stage::AdvertiseKeys, Stage::ShareKeys] {
        let err = run(&fx, &inputs, &drops(&[20, 30], stage), 3).unwrap_err();
        assert_eq!(
            err,
            ServerError::BelowMinSurvivors {
                stage,
                survivors: 4,
                n_min: 5
            },
            "{stage}"
        );
    }
}

/// A request naming `survivors` (everyone else dropped).
fn request(params: &Params, survivors: &[u32]) -> UnmaskRequest {
    UnmaskRequest {
        round_id: params.round_id,
        survivors: survivors.to_vec(),
        dropouts: params
            .participants
            .iter()
            .copied()
            .filter(|id| !survivors.contains(id))
            .collect(),
    }
}

#[test]
fn clients_reveal_nothing_for_fewer_than_n_min_survivors() {
    // A dishonest server asks anyway: 4 survivors (>= t = 3, so only n_min stops it).
    let fx = fixture(false);
    let m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(5));
    let few = request(&fx.params, &[10, 20, 30, 40]);
    for (id, client) in m.clients {
        if !few.survivors.contains(&id) {
            continue;
        }
        assert_eq!(
            client.handle_unmask(&few),
            Err(ClientError::BelowMinSurvivors {
                survivors: 4,
                n_min: 5
            })
        );
    }
    // With the consistency check, they refuse to sign such a set too.
    let fx = fixture(true);
    let m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(5));
    for (id, client) in m.clients {
        if !few.survivors.contains(&id) {
            continue;
        }
        let err = client.sign_survivors(&few).map(|_| ()).unwrap_err();
        assert_eq!(
            err,
            ClientError::BelowMinSurvivors {
                survivors: 4,
                n_min: 5
            }
        );
    }
    // Five survivors are answered.
    let fx = fixture(false);
    let m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(5));
    let enough = request(&fx.params, &[10, 20, 30, 40, 50]);
    for (id, client) in m.clients {
        if enough.survivors.contains(&id) {
            client.handle_unmask(&enough).unwrap();
        }
    }
}
