//! What the server sees of one client: its masked vector is statistically
//! indistinguishable from uniform words and shares nothing with the plaintext, and the
//! server keeps nothing per client that grows with the vector.

mod common;

use common::{Fixture, masked_stage, params};
use harambee_secagg::rand_core::SeedableRng;
use harambee_secagg::{ChaCha20Rng, MaskedWords, Params};

const D: usize = 1 << 16;

/// A smooth, low-entropy update: what a model delta looks like, far from uniform.
fn plaintext_input(d: usize) -> Vec<f32> {
    (0..d).map(|j| 0.3 * (j as f32 * 0.01).sin()).collect()
}

/// Pearson's chi-square statistic of `values` over 256 equally likely buckets.
fn chi_square(values: impl Iterator<Item = u8>) -> f64 {
    let mut counts = [0u64; 256];
    let mut n = 0u64;
    for v in values {
        counts[v as usize] += 1;
        n += 1;
    }
    let expected = n as f64 / 256.0;
    counts
        .iter()
        .map(|&c| (c as f64 - expected).powi(2) / expected)
        .sum()
}

/// 255 degrees of freedom: mean 255, standard deviation about 22.6. 400 is 6.4 standard
/// deviations out (p < 1e-8): far from flaky for uniform data, while structured data lands
/// in the thousands or millions.
const CHI_SQUARE_LIMIT: f64 = 400.0;

fn byte_views(words: &[u32]) -> [(String, f64); 3] {
    [
        (
            "low byte".into(),
            chi_square(words.iter().map(|w| *w as u8)),
        ),
        (
            "bits 12..20".into(),
            chi_square(words.iter().map(|w| (w >> 12) as u8)),
        ),
        (
            "top byte".into(),
            chi_square(words.iter().map(|w| (w >> 24) as u8)),
        ),
    ]
}

fn round_params() -> Params {
    params(77, &[1, 2, 3, 4], D, 3, 2)
}

#[test]
fn masked_vector_is_indistinguishable_from_uniform_and_unlike_the_plaintext() {
    let params = round_params();
    let fx = Fixture::new(params.clone(), 4);
    let mut rng = ChaCha20Rng::seed_from_u64(4);
    let mut s = common::shares_stage(&fx, &mut rng);
    for (&id, bundle) in &s.shares {
        s.server.receive(id, bundle.clone()).unwrap();
    }
    let (_, routes) = s.server.finish().unwrap();
    let input = plaintext_input(D);
    let client = s.clients.remove(&1).unwrap();
    let (_, masked) = client
        .handle_shares(routes[&1].clone(), &input, 3, &mut rng)
        .unwrap();
    let MaskedWords::U32(words) = masked.words else {
        panic!("32-bit words expected")
    };
    assert_eq!(words.len(), D + 1);

    // The plaintext the client would have sent without masks: each value rounds to the
    // floor or the ceiling of x * L / c, times the weight.
    let scale = params.quant_levels() as f64 / f64::from(params.clip);
    let plain: Vec<[u32; 2]> = input
        .iter()
        .map(|&x| {
            let v = f64::from(x) * scale;
            [(v.floor() as i64 * 3) as u32, (v.ceil() as i64 * 3) as u32]
        })
        .collect();

    for (view, chi) in byte_views(&words[..D]) {
        assert!(chi < CHI_SQUARE_LIMIT, "masked {view}: chi-square {chi:.0}");
    }
    // The same test has the power to tell the plaintext apart.
    let plain_words: Vec<u32> = plain.iter().map(|p| p[0]).collect();
    let worst = byte_views(&plain_words)
        .into_iter()
        .map(|(_, chi)| chi)
        .fold(0.0, f64::max);
    assert!(
        worst > 10.0 * CHI_SQUARE_LIMIT,
        "plaintext chi-square only {worst:.0}"
    );

    // No word equals its plaintext (each would with probability 2^-31).
    let equal = words
        .iter()
        .zip(&plain)
        .filter(|(w, p)| p.contains(w))
        .count();
    assert_eq!(equal, 0);
    assert_ne!(words[D], 3, "the weight is masked too");
}

#[test]
fn masked_vectors_of_the_same_input_in_two_rounds_are_unrelated() {
    // Fresh keys and masks every round: the difference of two rounds' vectors is uniform.
    let mut views = Vec::new();
    for round_id in [77, 78] {
        let params = Params {
            round_id,
            ..round_params()
        };
        let fx = Fixture::new(params, 4);
        let m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(round_id));
        let MaskedWords::U32(words) = m.masked[&2].words.clone() else {
            panic!("32-bit words expected")
        };
        views.push(words);
    }
    let diff: Vec<u32> = views[0]
        .iter()
        .zip(&views[1])
        .map(|(a, b)| a.wrapping_sub(*b))
        .collect();
    for (view, chi) in byte_views(&diff[..D]) {
        assert!(
            chi < CHI_SQUARE_LIMIT,
            "difference {view}: chi-square {chi:.0}"
        );
    }
}

#[test]
fn server_keeps_nothing_per_client_that_grows_with_the_vector() {
    let mut stored = Vec::new();
    for d in [10, D] {
        let fx = Fixture::new(params(5, &[1, 2, 3, 4], d, 3, 2), 4);
        let mut m = masked_stage(&fx, &mut ChaCha20Rng::seed_from_u64(1));
        m.server.receive(1, m.masked[&1].clone()).unwrap();
        stored.push(m.server.stored_bytes(1));
    }
    assert_eq!(stored[0], stored[1]);
    assert!(stored[0] < 1024, "{} bytes", stored[0]);
}
