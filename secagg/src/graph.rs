//! The neighbour graph: a Harary graph H(k, n) over a pseudorandom ordering of the
//! participants.
//!
//! Positions 0..n sit on a ring; each position is joined to the k/2 positions on either
//! side (all others when k >= n - 1). H(k, n) is k-vertex-connected: removing any k - 1
//! clients leaves the rest connected. Which client sits at which position is a
//! Fisher–Yates shuffle seeded by SHA-256 of the round id and the participant list, so
//! neighbourhoods change every round and every party computes the same graph.

use std::collections::BTreeMap;

use chacha20::ChaCha20Rng;
use rand_core::{Rng, SeedableRng};
use sha2::{Digest, Sha256};

use crate::params::Params;

/// The graph of one round.
#[derive(Debug, Clone)]
pub(crate) struct Graph {
    /// Participant id at each ring position.
    order: Vec<u32>,
    /// Ring position of each participant.
    position: BTreeMap<u32, usize>,
    /// Half the neighbourhood (k/2), or `None` for the complete graph.
    half: Option<usize>,
}

impl Graph {
    /// The graph of a validated parameter set.
    pub(crate) fn new(params: &Params) -> Graph {
        let n = params.n();
        let mut order = params.participants.clone();
        let mut rng = ChaCha20Rng::from_seed(graph_seed(params));
        for i in (1..n).rev() {
            let j = uniform_below(&mut rng, i as u64 + 1) as usize;
            order.swap(i, j);
        }
        let position = order.iter().enumerate().map(|(p, &id)| (id, p)).collect();
        let half = (!params.is_complete_graph()).then_some(params.neighbours / 2);
        Graph {
            order,
            position,
            half,
        }
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.position.contains_key(&id)
    }

    /// The neighbours of `id`, sorted by id. Empty for a non-participant.
    pub(crate) fn neighbours(&self, id: u32) -> Vec<u32> {
        let Some(&p) = self.position.get(&id) else {
            return Vec::new();
        };
        let n = self.order.len();
        let mut out: Vec<u32> = match self.half {
            None => self.order.iter().copied().filter(|&v| v != id).collect(),
            Some(h) => (1..=h)
                .flat_map(|j| [self.order[(p + j) % n], self.order[(p + n - j) % n]])
                .collect(),
        };
        out.sort_unstable();
        out
    }

    #[cfg(test)]
    pub(crate) fn are_neighbours(&self, a: u32, b: u32) -> bool {
        let (Some(&pa), Some(&pb)) = (self.position.get(&a), self.position.get(&b)) else {
            return false;
        };
        if pa == pb {
            return false;
        }
        match self.half {
            None => true,
            Some(h) => {
                let n = self.order.len();
                let d = pa.abs_diff(pb);
                d.min(n - d) <= h
            }
        }
    }

    /// How many neighbours of `id` are in `live`.
    pub(crate) fn live_degree(&self, id: u32, live: &std::collections::BTreeSet<u32>) -> usize {
        match self.half {
            // Complete graph: everyone in `live` but `id` itself.
            None => live.len() - usize::from(live.contains(&id)),
            Some(_) => self
                .neighbours(id)
                .iter()
                .filter(|v| live.contains(v))
                .count(),
        }
    }

    /// The neighbours of `id` within `live`.
    pub(crate) fn live_neighbours(
        &self,
        id: u32,
        live: &std::collections::BTreeSet<u32>,
    ) -> Vec<u32> {
        self.neighbours(id)
            .into_iter()
            .filter(|v| live.contains(v))
            .collect()
    }
}

fn graph_seed(params: &Params) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"harambee-secagg/v1/graph");
    h.update(params.round_id.to_le_bytes());
    h.update((params.participants.len() as u64).to_le_bytes());
    for id in &params.participants {
        h.update(id.to_le_bytes());
    }
    h.finalize().into()
}

/// A uniform integer in `0..bound` (rejection sampling, no modulo bias).
fn uniform_below(rng: &mut ChaCha20Rng, bound: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % bound);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % bound;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn params(n: u32, k: usize) -> Params {
        let ids: Vec<u32> = (0..n).map(|i| 10 + 7 * i).collect();
        let mut p = Params::recommended(42, &ids, 4, 1.0, 1).unwrap();
        p.neighbours = k;
        p.threshold = 1;
        p.validate().unwrap();
        p
    }

    #[test]
    fn harary_graph_is_k_regular_and_symmetric() {
        for (n, k) in [(5, 2), (10, 4), (11, 6), (30, 8), (7, 6), (7, 100)] {
            let p = params(n, k);
            let g = Graph::new(&p);
            for &u in &p.participants {
                let nb = g.neighbours(u);
                assert_eq!(nb.len(), p.degree(), "n={n} k={k}");
                assert!(!nb.contains(&u));
                for &v in &nb {
                    assert!(g.are_neighbours(u, v) && g.are_neighbours(v, u));
                    assert!(g.neighbours(v).contains(&u));
                }
            }
        }
    }

    #[test]
    fn removing_fewer_than_k_nodes_keeps_it_connected() {
        let p = params(20, 4);
        let g = Graph::new(&p);
        // Remove 3 nodes in every way that touches one neighbourhood; the rest stays connected.
        let u = p.participants[0];
        let nb = g.neighbours(u);
        for skip in 0..nb.len() {
            let removed: BTreeSet<u32> = nb
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != skip)
                .map(|(_, &v)| v)
                .collect();
            let live: BTreeSet<u32> = p
                .participants
                .iter()
                .copied()
                .filter(|v| !removed.contains(v))
                .collect();
            let mut seen = BTreeSet::from([u]);
            let mut stack = vec![u];
            while let Some(x) = stack.pop() {
                for y in g.live_neighbours(x, &live) {
                    if seen.insert(y) {
                        stack.push(y);
                    }
                }
            }
            assert_eq!(seen, live);
        }
    }

    #[test]
    fn graph_depends_on_round_id_and_is_deterministic() {
        let p = params(40, 4);
        let mut q = p.clone();
        q.round_id += 1;
        let a = Graph::new(&p);
        assert_eq!(a.order, Graph::new(&p.clone()).order);
        assert_ne!(a.order, Graph::new(&q).order);
        assert!(!a.contains(3));
        assert!(a.neighbours(3).is_empty());
    }
}
