//! Distributed discrete Gaussian noise: a round whose clients add noise unmasks to the
//! weighted sum plus noise of the advertised variance, still survives dropouts, and still
//! refuses sums no set of valid (noisy) inputs could produce.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{Drops, Fixture, expected, inputs, masked_stage, run};
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{
    AfterMaskedInputs, Aggregate, ChaCha20Rng, ClientRound, MaskedWords, Params, ParamsError,
    ServerError, ServerRound, Stage, noise_share_levels,
};

const D: usize = 20_000;

/// n clients, complete graph, W = 10, c = 1, with noise giving the sum a total standard
/// deviation of `total_stddev` (value units) when at least `min_survivors` take part.
fn noisy_params(n: u32, d: usize, total_stddev: f64, min_survivors: usize) -> Params {
    let ids: Vec<u32> = (1..=n).collect();
    let p = Params::recommended(5, &ids, d, 1.0, 10).unwrap();
    let sigma = noise_share_levels(total_stddev, min_survivors, &p);
    p.with_noise(sigma).unwrap()
}

/// Per coordinate, the aggregate minus the exact weighted sum of the survivors' clipped
/// inputs: the summed noise (plus rounding), in value units.
fn residuals(
    params: &Params,
    inputs: &BTreeMap<u32, (Vec<f32>, u64)>,
    agg: &Aggregate,
) -> Vec<f64> {
    let c = params.clip;
    (0..params.vector_len)
        .map(|j| {
            let exact: f64 = agg
                .survivors
                .iter()
                .map(|u| f64::from(inputs[u].0[j].clamp(-c, c)) * inputs[u].1 as f64)
                .sum();
            f64::from(agg.sum[j]) - exact
        })
        .collect()
}

fn mean_and_variance(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// Checks the residual variance against n_inputs · σ_q² · step² within 10%, and that no
/// residual exceeds the quantization bound plus n_inputs · τ levels.
fn check_noise(params: &Params, inputs: &BTreeMap<u32, (Vec<f32>, u64)>, agg: &Aggregate) {
    let n_inputs = agg.survivors.len() as f64;
    let step = params.quant_step();
    let res = residuals(params, inputs, agg);
    let (mean, var) = mean_and_variance(&res);
    let want = n_inputs * (params.noise_stddev * step).powi(2);
    assert!(
        (var / want - 1.0).abs() < 0.10,
        "variance {var}, expected {want}"
    );
    assert!(
        mean.abs() < 5.0 * (want / res.len() as f64).sqrt(),
        "mean {mean}"
    );
    let bound =
        params.error_bound(agg.total_weight) + n_inputs * params.noise_clamp() as f64 * step;
    assert!(res.iter().all(|r| r.abs() <= bound));
}

#[test]
fn noisy_round_unmasks_to_the_sum_plus_noise_of_the_advertised_variance() {
    let n = 10;
    let total = 0.01;
    let params = noisy_params(n, D, total, n as usize);
    assert!(params.noise_stddev > 1000.0, "{}", params.noise_stddev);
    let fx = Fixture::new(params.clone(), 1);
    let inputs = inputs(&params, 1);
    let agg = run(&fx, &inputs, &Drops::default(), 1).unwrap();
    assert_eq!(agg.survivors.len(), n as usize);
    check_noise(&params, &inputs, &agg);
    // With n = n_min survivors the total is what noise_share_levels was asked for.
    let (_, var) = mean_and_variance(&residuals(&params, &inputs, &agg));
    assert!((var.sqrt() / total - 1.0).abs() < 0.05, "{}", var.sqrt());
}

#[test]
fn noisy_round_still_recovers_dropouts() {
    let n = 12;
    let ids: Vec<u32> = (1..=n).collect();
    let mut params = Params::recommended(6, &ids, D, 1.0, 10).unwrap();
    params.neighbours = 6;
    params.threshold = 3;
    params.n_min = 3;
    let sigma = noise_share_levels(0.01, 9, &params);
    let params = params.with_noise(sigma).unwrap();
    // Two drop after sharing keys (their pairwise masks must be removed, their noise is
    // not in the sum), one during unmasking.
    let drops = Drops(BTreeMap::from([
        (3, Stage::MaskedInput),
        (8, Stage::MaskedInput),
        (11, Stage::Unmasking),
    ]));
    let survivors = expected(&params, &drops).unwrap();
    let fx = Fixture::new(params.clone(), 2);
    let inputs = inputs(&params, 2);
    let agg = run(&fx, &inputs, &drops, 2).unwrap();
    assert_eq!(agg.survivors, survivors.iter().copied().collect::<Vec<_>>());
    assert_eq!(agg.survivors.len(), 10);
    assert_eq!(agg.dropouts, vec![3, 8]);
    check_noise(&params, &inputs, &agg);
}

#[test]
fn zero_noise_changes_nothing() {
    let ids: Vec<u32> = (1..=5).collect();
    let p = Params::recommended(7, &ids, 50, 1.0, 10).unwrap();
    assert_eq!(p.noise_stddev, 0.0);
    assert_eq!(p.noise_clamp(), 0);
    assert_eq!(p.clone().with_noise(0.0).unwrap(), p);
    let fx = Fixture::new(p.clone(), 3);
    let inputs = inputs(&p, 3);
    let agg = run(&fx, &inputs, &Drops::default(), 3).unwrap();
    let survivors: BTreeSet<u32> = ids.into_iter().collect();
    common::check_sum(&p, &inputs, &survivors, &agg);
}

#[test]
fn bad_noise_is_rejected_by_validate_and_both_sides() {
    let ids: Vec<u32> = (1..=5).collect();
    let good = Params::recommended(8, &ids, 50, 1.0, 10).unwrap();
    for bad in [f64::NAN, -0.5, f64::NEG_INFINITY, f64::INFINITY] {
        let mut p = good.clone();
        p.noise_stddev = bad;
        assert!(matches!(p.validate(), Err(ParamsError::NoiseStddev(_))));
        assert!(matches!(
            good.clone().with_noise(bad),
            Err(ParamsError::NoiseStddev(_))
        ));
        let fx = Fixture::new(good.clone(), 4);
        let err = ServerRound::new(p.clone(), fx.verifying.clone()).unwrap_err();
        assert!(matches!(
            err,
            ServerError::Params(ParamsError::NoiseStddev(_))
        ));
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        assert!(ClientRound::new(p, 1, fx.signing[&1].clone(), &mut rng).is_err());
    }
}

/// A client that adds more than W·L + τ to a coordinate (here: just beyond what all
/// survivors together may reach) makes the server refuse the aggregate.
#[test]
fn out_of_range_words_are_refused_with_noise_too() {
    let ids: Vec<u32> = (1..=6).collect();
    let mut params = Params::recommended(9, &ids, 8, 1.0, 10).unwrap();
    params.neighbours = 4;
    params.threshold = 3;
    params.n_min = 3;
    let params = params.with_noise(1000.0).unwrap();
    let tau = params.noise_clamp();
    assert_eq!(tau, 10_000);
    let fx = Fixture::new(params.clone(), 5);
    for (cheat, refused) in [(0u64, false), (1 << 30, true)] {
        let mut m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(5));
        if let MaskedWords::U32(words) = &mut m.masked.get_mut(&2).unwrap().words {
            words[0] = words[0].wrapping_add(cheat as u32);
        } else {
            panic!("expected 32-bit words");
        }
        let mut server = m.server;
        for (&id, input) in &m.masked {
            server.receive(id, input.clone()).unwrap();
        }
        let AfterMaskedInputs::Unmask(mut server, routes) = server.finish().unwrap() else {
            panic!("no consistency check here")
        };
        for (id, client) in m.clients {
            server
                .receive(id, client.handle_unmask(&routes[&id]).unwrap())
                .unwrap();
        }
        let outcome = server.finish();
        if refused {
            assert_eq!(outcome.unwrap_err(), ServerError::CorruptAggregate);
        } else {
            assert!(outcome.is_ok());
        }
    }
}
