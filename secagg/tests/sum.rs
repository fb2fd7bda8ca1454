//! The unmasked sum equals the plain weighted sum of the survivors' clipped inputs within
//! the quantization bound, for any parameters and dropouts the protocol can survive; for
//! dropouts it cannot survive, the server refuses with a typed error at the right stage.

mod common;

use std::collections::BTreeMap;

use common::{Drops, Fixture, check_sum, error_stage, expected, inputs, run};
use harambee_secagg::{MaskPrg, Params, Stage, Word};
use proptest::prelude::*;

const STAGES: [Stage; 5] = [
    Stage::AdvertiseKeys,
    Stage::ShareKeys,
    Stage::MaskedInput,
    Stage::ConsistencyCheck,
    Stage::Unmasking,
];

#[derive(Debug, Clone)]
struct Case {
    ids: Vec<u32>,
    d: usize,
    k: usize,
    t: usize,
    max_weight: u64,
    word: Word,
    prg: MaskPrg,
    consistency_check: bool,
    drops: Drops,
    seed: u64,
}

impl Case {
    fn params(&self) -> Params {
        let mut p =
            Params::recommended(self.seed, &self.ids, self.d, 0.5, self.max_weight).unwrap();
        p.neighbours = self.k;
        p.threshold = self.t;
        p.n_min = self.t;
        p.prg = self.prg;
        p.consistency_check = self.consistency_check;
        if self.word != p.word {
            p.word = self.word;
            // Keep the no-wrap condition: the most quantization bits that fit, at most 24.
            let n = self.ids.len() as u128;
            let max_q = (2..p.word.bits())
                .rev()
                .find(|&q| {
                    n * u128::from(self.max_weight) * ((1u128 << (q - 1)) - 1)
                        < 1u128 << (p.word.bits() - 1)
                })
                .unwrap();
            p.quant_bits = max_q.min(24);
        }
        p.validate().unwrap();
        p
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::btree_set(0u32..200, 2..12),
        any::<u64>(),
    )
        .prop_flat_map(|(ids, seed)| {
            let ids: Vec<u32> = ids.into_iter().collect();
            let n = ids.len();
            let ks: Vec<usize> = (2..n.saturating_sub(1)).step_by(2).chain([n - 1]).collect();
            let ids2 = ids.clone();
            (
                proptest::sample::select(ks),
                1usize..24,
                1u64..1000,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
            )
                .prop_flat_map(
                    move |(k, d, max_weight, wide, chacha, consistency_check)| {
                        let degree = k.min(n - 1);
                        let ids = ids2.clone();
                        // Each client drops at some stage with probability ~1/4.
                        let drop = proptest::option::weighted(
                            0.25,
                            proptest::sample::select(STAGES.to_vec()),
                        );
                        (1..=degree, proptest::collection::vec(drop, n)).prop_map(
                            move |(t, drops)| Case {
                                ids: ids.clone(),
                                d,
                                k,
                                t,
                                max_weight,
                                word: if wide { Word::U64 } else { Word::U32 },
                                prg: if chacha {
                                    MaskPrg::ChaCha20
                                } else {
                                    MaskPrg::Aes128Ctr
                                },
                                consistency_check,
                                drops: Drops(
                                    ids.iter()
                                        .zip(drops)
                                        .filter_map(|(&id, s)| s.map(|s| (id, s)))
                                        .collect(),
                                ),
                                seed,
                            },
                        )
                    },
                )
        })
}

fn check(case: &Case) {
    let params = case.params();
    let fx = Fixture::new(params.clone(), case.seed);
    let inputs = inputs(&params, case.seed);
    let outcome = run(&fx, &inputs, &case.drops, case.seed);
    match (expected(&params, &case.drops), outcome) {
        (Ok(survivors), Ok(agg)) => check_sum(&params, &inputs, &survivors, &agg),
        (Err(stage), Err(e)) => assert_eq!(error_stage(&e), Some(stage), "{e}"),
        (want, got) => panic!("expected {want:?}, got {got:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn unmasked_sum_matches_plain_sum_or_server_refuses(case in case()) {
        check(&case);
    }
}

/// A case with no dropouts must always succeed.
#[test]
fn no_dropouts_complete_graph_and_sparse_graph() {
    for (ids, k, t) in [
        (vec![1, 2], 1, 1),
        (vec![3, 9, 27, 81], 3, 2),
        ((0..20).collect::<Vec<u32>>(), 4, 3),
    ] {
        let case = Case {
            ids,
            d: 17,
            k,
            t,
            max_weight: 50,
            word: Word::U32,
            prg: MaskPrg::Aes128Ctr,
            consistency_check: false,
            drops: Drops::default(),
            seed: 11,
        };
        assert!(expected(&case.params(), &case.drops).is_ok());
        check(&case);
    }
}

/// Up to degree - t dropouts anywhere and at any stage are always survived.
#[test]
fn guaranteed_tolerance_is_survived_at_every_stage() {
    let ids: Vec<u32> = (100..116).collect();
    for stage in STAGES {
        let mut case = Case {
            ids: ids.clone(),
            d: 9,
            k: 6,
            t: 4,
            max_weight: 7,
            word: Word::U64,
            prg: MaskPrg::ChaCha20,
            consistency_check: stage == Stage::ConsistencyCheck,
            drops: Drops::default(),
            seed: 5,
        };
        let params = case.params();
        assert_eq!(params.guaranteed_dropout_tolerance(), 2);
        // Drop two neighbours of the same client: the worst placement.
        let nb = params.graph_neighbours(ids[0]);
        case.drops = Drops(BTreeMap::from([(nb[0], stage), (nb[1], stage)]));
        assert!(expected(&params, &case.drops).is_ok(), "{stage}");
        check(&case);
    }
}

/// One more dropout in the same neighbourhood is beyond the bound: at the first two stages
/// the client is pruned; later the server refuses with a typed error.
#[test]
fn beyond_the_bound_prunes_early_and_refuses_late() {
    let ids: Vec<u32> = (100..116).collect();
    for stage in STAGES {
        let mut case = Case {
            ids: ids.clone(),
            d: 9,
            k: 6,
            t: 4,
            max_weight: 7,
            word: Word::U32,
            prg: MaskPrg::Aes128Ctr,
            consistency_check: false,
            drops: Drops::default(),
            seed: 6,
        };
        let params = case.params();
        let nb = params.graph_neighbours(ids[0]);
        case.drops = Drops(nb[..3].iter().map(|&v| (v, stage)).collect());
        let want = expected(&params, &case.drops);
        match stage {
            // In a ring-shaped Harary graph pruning can cascade (each pruned client weakens
            // the next one along the ring) until nobody is left: then the round is refused
            // at that stage.
            Stage::AdvertiseKeys | Stage::ShareKeys => match &want {
                Ok(survivors) => assert!(
                    !survivors.contains(&ids[0]),
                    "client with too few neighbours is pruned"
                ),
                Err(at) => assert_eq!(*at, stage),
            },
            Stage::MaskedInput => assert_eq!(want, Err(Stage::MaskedInput)),
            // No consistency check in this case: these clients stop before unmasking.
            Stage::ConsistencyCheck | Stage::Unmasking => assert_eq!(want, Err(Stage::Unmasking)),
        }
        check(&case);
    }
}

/// Everyone but one client drops before unmasking: below threshold, a typed refusal.
#[test]
fn almost_everyone_dropping_is_refused() {
    let ids: Vec<u32> = (0..8).collect();
    for stage in [Stage::MaskedInput, Stage::Unmasking] {
        let case = Case {
            ids: ids.clone(),
            d: 3,
            k: 7,
            t: 4,
            max_weight: 3,
            word: Word::U32,
            prg: MaskPrg::Aes128Ctr,
            consistency_check: false,
            drops: Drops(ids[1..].iter().map(|&v| (v, stage)).collect()),
            seed: 8,
        };
        assert_eq!(expected(&case.params(), &case.drops), Err(stage));
        check(&case);
    }
}
