//! The SecAgg+ parameters a coordinator offers (`pb::SecAggParams`, after
//! `link::convert::params_from_pb` has mapped word size and PRG names) as the agent checks
//! them: `Params::validate`, every accessor a client uses on validated parameters, and
//! `Expectation::check`. An honest offer (`Params::for_round` on the client's own terms)
//! must pass the check under a policy that asks nothing more.

#![no_main]

use arbitrary::Arbitrary;
use harambee_secagg::{Expectation, MaskPrg, Params, ParamsPolicy, Word};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Offer {
    round_id: u64,
    participants: Vec<u32>,
    vector_len: usize,
    neighbours: usize,
    threshold: usize,
    clip: f32,
    quant_bits: u32,
    max_weight: u64,
    word64: bool,
    aes: bool,
    consistency_check: bool,
    noise_stddev: f64,
    n_min: usize,
    /// The client's own terms, for `Expectation`.
    expected_noise: f64,
    min_survivors: usize,
    min_threshold_fraction: f64,
    honest: bool,
}

fuzz_target!(|offer: Offer| {
    let params = Params {
        round_id: offer.round_id,
        participants: offer.participants,
        vector_len: offer.vector_len,
        neighbours: offer.neighbours,
        threshold: offer.threshold,
        clip: offer.clip,
        quant_bits: offer.quant_bits,
        max_weight: offer.max_weight,
        word: if offer.word64 { Word::U64 } else { Word::U32 },
        prg: if offer.aes {
            MaskPrg::Aes128Ctr
        } else {
            MaskPrg::ChaCha20
        },
        consistency_check: offer.consistency_check,
        noise_stddev: offer.noise_stddev,
        n_min: offer.n_min,
    };
    let expectation = Expectation {
        round_id: offer.round_id,
        vector_len: offer.vector_len,
        clip: offer.clip,
        max_weight: offer.max_weight,
        noise_stddev: offer.expected_noise,
        min_survivors: offer.min_survivors,
        failure_probability: harambee_secagg::DESIGN_FAILURE_PROBABILITY,
        policy: ParamsPolicy {
            min_threshold_fraction: offer.min_threshold_fraction,
            require_consistency_check: offer.consistency_check,
            require_distributed_noise: false,
            min_contributors: 0,
            max_failure_probability: harambee_secagg::DESIGN_FAILURE_PROBABILITY,
        },
    };
    if offer.honest {
        // What an honest coordinator derives from the same terms is accepted.
        let Ok(mut honest) = Params::for_round(
            offer.round_id,
            &params.participants,
            offer.vector_len,
            offer.clip,
            offer.max_weight,
            offer.expected_noise,
            offer.min_survivors,
        ) else {
            return;
        };
        honest
            .validate()
            .expect("for_round returned invalid parameters");
        honest.consistency_check = offer.consistency_check;
        let lenient = Expectation {
            policy: ParamsPolicy {
                min_threshold_fraction: 0.0,
                ..expectation.policy.clone()
            },
            ..expectation
        };
        if let Err(e) = lenient.check(&honest) {
            panic!("an honest offer was refused: {e}");
        }
        return;
    }
    if params.validate().is_err() {
        let _ = expectation.check(&params);
        return;
    }
    let _ = params.digest();
    let _ = params.degree();
    let _ = params.is_complete_graph();
    let _ = params.quant_step();
    let _ = params.error_bound(params.max_weight);
    let _ = params.noise_clamp();
    let _ = params.consistency_quorum();
    let _ = params.guaranteed_dropout_tolerance();
    if params.n() <= 256 {
        let first = params.participants[0];
        let neighbours = params.graph_neighbours(first);
        assert_eq!(neighbours.len(), params.degree());
    }
    let _ = expectation.check(&params);
});
