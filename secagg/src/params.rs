//! Round parameters: who takes part, the neighbour graph, the threshold, quantization and
//! the modulus. [`Params::recommended`] derives safe defaults; the crate docs explain the
//! trade-offs.

use sha2::{Digest, Sha256};

use crate::error::ParamsError;

/// Largest vector length a round accepts (the encoding uses 32-bit lengths and the weight
/// takes one extra word).
pub const MAX_VECTOR_LEN: usize = (u32::MAX - 1) as usize;

/// Per-client dropout probability that [`Params::recommended`] sizes the graph for.
pub const DESIGN_DROPOUT_RATE: f64 = 0.10;
/// Per-client probability of colluding with the server that [`Params::recommended`] sizes
/// the graph for.
pub const DESIGN_COLLUSION_RATE: f64 = 0.10;
/// Target probability (union bound over clients) that a round fails at
/// [`DESIGN_DROPOUT_RATE`], and that colluders at [`DESIGN_COLLUSION_RATE`] hold a
/// threshold of some honest client's shares.
pub const DESIGN_FAILURE_PROBABILITY: f64 = 1e-6;
/// What [`Params::recommended_for`] sizes the neighbour graph for: the smallest even k
/// such that, with t = floor(k/2) + 1, both union bounds over the n clients stay at or
/// below `failure_probability`:
/// - each client drops out independently with probability `dropout_rate`, and some client
///   keeps fewer than t live neighbours (the round fails);
/// - each client colludes with the server independently with probability
///   `collusion_rate`, and some client has t colluding neighbours (its input is exposed).
///
/// The default is 10%, 10%, 10^-6. Weaker targets mean smaller k and proportionally less
/// mask expansion: for n = 100, k = 34 at 10^-6, 24 at 10^-4, 20 at 10^-3.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GraphTargets {
    pub dropout_rate: f64,
    pub collusion_rate: f64,
    pub failure_probability: f64,
}

impl Default for GraphTargets {
    fn default() -> GraphTargets {
        GraphTargets {
            dropout_rate: DESIGN_DROPOUT_RATE,
            collusion_rate: DESIGN_COLLUSION_RATE,
            failure_probability: DESIGN_FAILURE_PROBABILITY,
        }
    }
}

impl GraphTargets {
    /// The neighbour count k for n participants (n - 1, the complete graph, when no
    /// smaller k meets the targets).
    pub fn neighbours(&self, n: usize) -> usize {
        let mut k = 2;
        while k + 1 < n {
            let t = k / 2 + 1;
            let nf = n as f64;
            // A client fails when more than k - t of its neighbours drop out...
            let p_fail = nf * binomial_tail(k, self.dropout_rate, k - t + 1);
            // ... and is exposed when t of them collude.
            let p_exposed = nf * binomial_tail(k, self.collusion_rate, t);
            if p_fail <= self.failure_probability && p_exposed <= self.failure_probability {
                return k;
            }
            k += 2;
        }
        n.saturating_sub(1)
    }
}

/// [`Params::recommended`] keeps 32-bit words while this many quantization bits fit.
pub const MIN_QUANT_BITS_32: u32 = 16;
/// Quantization beyond 24 bits buys nothing: f32 inputs have 24-bit mantissas.
pub const MAX_USEFUL_QUANT_BITS: u32 = 24;
/// The largest quantization [`Params::validate`] accepts (levels fit in an i32).
pub const MAX_QUANT_BITS: u32 = 31;

/// The modulus 2^b of the masked arithmetic, which is also the word on the wire.
///
/// Only the native widths are offered: the wire format is not bit-packed, so a modulus
/// below 2^32 would save no bandwidth, and wrapping `u32`/`u64` arithmetic is what the
/// CPU does fastest. [`Params::validate`] checks that the weighted sum of all inputs fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Word {
    /// b = 32: masked vectors are `Vec<u32>`.
    U32,
    /// b = 64: masked vectors are `Vec<u64>`.
    U64,
}

impl Word {
    /// b, the number of bits of the modulus 2^b.
    pub fn bits(self) -> u32 {
        match self {
            Word::U32 => 32,
            Word::U64 => 64,
        }
    }

    /// Bytes per word on the wire.
    pub fn bytes(self) -> usize {
        self.bits() as usize / 8
    }

    pub(crate) fn tag(self) -> u8 {
        match self {
            Word::U32 => 4,
            Word::U64 => 8,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Word> {
        match tag {
            4 => Some(Word::U32),
            8 => Some(Word::U64),
            _ => None,
        }
    }
}

/// The keystream that expands 256-bit seeds into masks. Every client and the server must
/// use the same one, so it is part of the parameters (and of their digest).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MaskPrg {
    /// AES-128 in counter mode (64-bit little-endian counter, zero IV, a fresh key per
    /// mask). The fastest here by far with AES-NI/VAES; slow on CPUs without AES
    /// instructions, where [`MaskPrg::ChaCha20`] is the better choice.
    Aes128Ctr,
    /// ChaCha20 (RFC 8439 block function, zero nonce, a fresh key per mask), with
    /// runtime-selected SSE2/AVX2 backends.
    ChaCha20,
}

impl MaskPrg {
    pub(crate) fn tag(self) -> u8 {
        match self {
            MaskPrg::Aes128Ctr => 1,
            MaskPrg::ChaCha20 => 2,
        }
    }
}

/// Everything all parties of one round must agree on. Build with [`Params::recommended`]
/// and adjust fields if needed; every constructor of a state machine calls
/// [`Params::validate`].
///
/// A SHA-256 digest of these parameters ([`Params::digest`]) is bound into every
/// signature, key derivation and AEAD associated data, so messages of one round (or of a
/// round whose parameters were presented differently to different clients) cannot be
/// used in another.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// Unique per round; never reuse one.
    pub round_id: u64,
    /// Participant ids, strictly increasing.
    pub participants: Vec<u32>,
    /// d, the length of each client's input vector.
    pub vector_len: usize,
    /// k, the number of neighbours of each client in the Harary graph. `k >= n - 1`
    /// means the complete graph (classic SecAgg); otherwise k must be even.
    pub neighbours: usize,
    /// t, how many of a client's neighbours must answer to reconstruct its secrets.
    pub threshold: usize,
    /// c: each input value is clipped to [-c, c] before quantization.
    pub clip: f32,
    /// q: clipped values are scaled to integers in [-(2^(q-1) - 1), 2^(q-1) - 1];
    /// 2 <= q <= 31 and q < b.
    pub quant_bits: u32,
    /// W: each client's weight is an integer in 1..=W.
    pub max_weight: u64,
    /// The modulus 2^b of the masked arithmetic.
    pub word: Word,
    /// The keystream used to expand masks.
    pub prg: MaskPrg,
    /// Run the consistency-check round of the active-adversary variant before unmasking.
    pub consistency_check: bool,
}

impl Params {
    /// Safe defaults for `participants` (any order, no duplicates) and inputs of
    /// `vector_len` values clipped to `[-clip, clip]` with weights in `1..=max_weight`.
    ///
    /// - k: the smallest even k such that, with t = floor(k/2) + 1, a round fails with
    ///   probability at most [`DESIGN_FAILURE_PROBABILITY`] when each client drops out
    ///   independently with probability [`DESIGN_DROPOUT_RATE`], and colluders chosen
    ///   independently with probability [`DESIGN_COLLUSION_RATE`] hold t shares of some
    ///   honest client with at most that probability; the complete graph (classic
    ///   SecAgg) when that k would be n - 1 or more.
    /// - t = floor(degree/2) + 1, a strict majority of each neighbourhood.
    /// - word: 32-bit while at least [`MIN_QUANT_BITS_32`] quantization bits fit without
    ///   wrapping, else 64-bit; q: as many bits as fit, at most
    ///   [`MAX_USEFUL_QUANT_BITS`].
    /// - prg: AES-128-CTR; no consistency check (semi-honest server).
    pub fn recommended(
        round_id: u64,
        participants: &[u32],
        vector_len: usize,
        clip: f32,
        max_weight: u64,
    ) -> Result<Params, ParamsError> {
        Params::recommended_for(
            round_id,
            participants,
            vector_len,
            clip,
            max_weight,
            GraphTargets::default(),
        )
    }

    /// [`Params::recommended`] with the graph sized for other [`GraphTargets`].
    pub fn recommended_for(
        round_id: u64,
        participants: &[u32],
        vector_len: usize,
        clip: f32,
        max_weight: u64,
        targets: GraphTargets,
    ) -> Result<Params, ParamsError> {
        let mut ids = participants.to_vec();
        ids.sort_unstable();
        let n = ids.len();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(ParamsError::ParticipantsNotSorted(w[0]));
        }
        if n < 2 {
            return Err(ParamsError::TooFewParticipants(n));
        }
        let neighbours = targets.neighbours(n);
        let degree = neighbours.min(n - 1);
        let (word, quant_bits) = recommended_quantization(n, max_weight);
        let params = Params {
            round_id,
            participants: ids,
            vector_len,
            neighbours,
            threshold: degree / 2 + 1,
            clip,
            quant_bits,
            max_weight,
            word,
            prg: MaskPrg::Aes128Ctr,
            consistency_check: false,
        };
        params.validate()?;
        Ok(params)
    }

    /// Checks every constraint the protocol relies on.
    pub fn validate(&self) -> Result<(), ParamsError> {
        let n = self.participants.len();
        if n < 2 {
            return Err(ParamsError::TooFewParticipants(n));
        }
        if let Some(w) = self.participants.windows(2).find(|w| w[0] >= w[1]) {
            return Err(ParamsError::ParticipantsNotSorted(w[1]));
        }
        if self.vector_len == 0 || self.vector_len > MAX_VECTOR_LEN {
            return Err(ParamsError::VectorLength {
                got: self.vector_len,
                max: MAX_VECTOR_LEN,
            });
        }
        let k = self.neighbours;
        if k < n - 1 && (k < 2 || !k.is_multiple_of(2)) {
            return Err(ParamsError::Neighbours { k, n });
        }
        let degree = self.degree();
        if self.threshold == 0 || self.threshold > degree {
            return Err(ParamsError::Threshold {
                t: self.threshold,
                degree,
            });
        }
        if !(self.clip.is_finite() && self.clip > 0.0) {
            return Err(ParamsError::Clip(self.clip));
        }
        let bits = self.word.bits();
        let max_quant_bits = (bits - 1).min(MAX_QUANT_BITS);
        if self.quant_bits < 2 || self.quant_bits > max_quant_bits {
            return Err(ParamsError::QuantBits {
                got: self.quant_bits,
                max: max_quant_bits,
            });
        }
        if self.max_weight == 0 {
            return Err(ParamsError::MaxWeight);
        }
        if !fits(n, self.max_weight, self.quant_bits, bits) {
            return Err(ParamsError::CanWrap {
                n,
                max_weight: self.max_weight,
                quant_bits: self.quant_bits,
                word_bits: bits,
            });
        }
        Ok(())
    }

    /// n, the number of participants.
    pub fn n(&self) -> usize {
        self.participants.len()
    }

    /// The number of neighbours each client has: min(k, n - 1).
    pub fn degree(&self) -> usize {
        self.neighbours
            .min(self.participants.len().saturating_sub(1))
    }

    /// The graph neighbours of participant `id` in this round, sorted (empty for a
    /// non-participant). Builds the graph: O(n log n); drivers rarely need it, tests and
    /// diagnostics do.
    pub fn graph_neighbours(&self, id: u32) -> Vec<u32> {
        crate::graph::Graph::new(self).neighbours(id)
    }

    /// True when every client is every other's neighbour (classic SecAgg).
    pub fn is_complete_graph(&self) -> bool {
        self.neighbours + 1 >= self.participants.len()
    }

    /// L = 2^(q-1) - 1, the largest quantized magnitude.
    pub fn quant_levels(&self) -> u64 {
        (1u64 << (self.quant_bits - 1)) - 1
    }

    /// The width of one quantization level, c / L.
    pub fn quant_step(&self) -> f64 {
        f64::from(self.clip) / self.quant_levels() as f64
    }

    /// The guaranteed bound on each coordinate of [`crate::Aggregate::sum`]: it is within
    /// `total_weight * c / L` of the exact weighted sum of the clipped inputs (stochastic
    /// rounding moves each value by less than one level), plus the f32 rounding of the
    /// result (relative 2^-24 of at most `total_weight * c`).
    pub fn error_bound(&self, total_weight: u64) -> f64 {
        let tw = total_weight as f64;
        tw * self.quant_step() + tw * f64::from(self.clip) * f64::from(f32::EPSILON)
    }

    /// How many dropouts (in total, in any stages, anywhere in the graph) a round always
    /// survives: every client keeps at least t live neighbours, and with the consistency
    /// check a quorum of survivors is left to sign. More random dropouts are usually
    /// survived too (see the crate docs).
    pub fn guaranteed_dropout_tolerance(&self) -> usize {
        let neighbourhood = self.degree() - self.threshold;
        if self.consistency_check {
            neighbourhood.min(self.n() - self.consistency_quorum())
        } else {
            neighbourhood
        }
    }

    /// Signatures needed in the consistency check: any two sets of this many signers share
    /// at least t members, so fewer than t colluders cannot make two honest clients accept
    /// different survivor sets.
    pub fn consistency_quorum(&self) -> usize {
        (self.n() + self.threshold - 1) / 2 + 1
    }

    /// SHA-256 of the canonical encoding of these parameters, bound into every signature,
    /// KDF and AEAD of the round.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"harambee-secagg/v1/params");
        h.update(self.round_id.to_le_bytes());
        h.update((self.participants.len() as u64).to_le_bytes());
        for id in &self.participants {
            h.update(id.to_le_bytes());
        }
        h.update((self.vector_len as u64).to_le_bytes());
        h.update((self.neighbours as u64).to_le_bytes());
        h.update((self.threshold as u64).to_le_bytes());
        h.update(self.clip.to_le_bytes());
        h.update(self.quant_bits.to_le_bytes());
        h.update(self.max_weight.to_le_bytes());
        h.update([
            self.word.tag(),
            self.prg.tag(),
            u8::from(self.consistency_check),
        ]);
        h.finalize().into()
    }

    /// The scale that maps a clipped value to quantization levels: L / c.
    pub(crate) fn scale(&self) -> f64 {
        self.quant_levels() as f64 / f64::from(self.clip)
    }
}

/// True when n * W * (2^(q-1) - 1) < 2^(b-1), so the centred sum cannot wrap.
fn fits(n: usize, max_weight: u64, quant_bits: u32, word_bits: u32) -> bool {
    if quant_bits < 2 || quant_bits >= word_bits {
        return false;
    }
    let levels = (1u128 << (quant_bits - 1)) - 1;
    let bound = (n as u128)
        .checked_mul(u128::from(max_weight))
        .and_then(|x| x.checked_mul(levels));
    matches!(bound, Some(b) if b < (1u128 << (word_bits - 1)))
}

fn max_quant_bits(n: usize, max_weight: u64, word_bits: u32) -> Option<u32> {
    (2..word_bits)
        .rev()
        .find(|&q| fits(n, max_weight, q, word_bits))
}

fn recommended_quantization(n: usize, max_weight: u64) -> (Word, u32) {
    if let Some(q) = max_quant_bits(n, max_weight, 32)
        && q >= MIN_QUANT_BITS_32
    {
        return (Word::U32, q.min(MAX_USEFUL_QUANT_BITS));
    }
    // If even 64 bits cannot hold 2 quantization bits, validate() reports it.
    let q = max_quant_bits(n, max_weight, 64).unwrap_or(2);
    (Word::U64, q.min(MAX_USEFUL_QUANT_BITS))
}

/// P[Binomial(k, p) >= m].
pub(crate) fn binomial_tail(k: usize, p: f64, m: usize) -> f64 {
    let mut pmf = (1.0 - p).powi(k as i32);
    let mut tail = 0.0;
    for i in 0..=k {
        if i >= m {
            tail += pmf;
        }
        pmf *= (k - i) as f64 / (i + 1) as f64 * p / (1.0 - p);
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recommended_defaults_validate_across_sizes() {
        for n in [2usize, 3, 5, 10, 30, 100, 1000, 5000] {
            let ids: Vec<u32> = (0..n as u32).map(|i| i * 3 + 1).collect();
            let p = Params::recommended(7, &ids, 1000, 1.0, 100).unwrap();
            assert!(p.threshold > p.degree() / 2, "n = {n}");
            assert!(p.degree() < n);
        }
    }

    #[test]
    fn recommended_neighbours_table() {
        // The documented table in lib.rs; change both together.
        let got: Vec<usize> = [10, 30, 100, 1000, 5000]
            .iter()
            .map(|&n| GraphTargets::default().neighbours(n))
            .collect();
        assert_eq!(got, vec![9, 29, 34, 38, 40]);
        let at = |p: f64| {
            GraphTargets {
                failure_probability: p,
                ..GraphTargets::default()
            }
            .neighbours(100)
        };
        assert_eq!(
            (at(1e-4), at(1e-3)),
            (24, 20),
            "the figures in GraphTargets' docs"
        );
        assert_eq!(GraphTargets::default().neighbours(2), 1);
    }

    #[test]
    fn word_choice_follows_headroom() {
        let ids: Vec<u32> = (0..100).collect();
        let p = Params::recommended(1, &ids, 10, 1.0, 100).unwrap();
        assert_eq!((p.word, p.quant_bits), (Word::U32, 18));
        let p = Params::recommended(1, &ids, 10, 1.0, 10_000).unwrap();
        assert_eq!(p.word, Word::U64);
        assert_eq!(p.quant_bits, MAX_USEFUL_QUANT_BITS);
        let p = Params::recommended(1, &ids[..4], 10, 1.0, 1).unwrap();
        assert_eq!((p.word, p.quant_bits), (Word::U32, MAX_USEFUL_QUANT_BITS));
    }

    #[test]
    fn validate_rejects_each_broken_field() {
        let ids: Vec<u32> = (0..10).collect();
        let good = Params::recommended(1, &ids, 10, 1.0, 10).unwrap();
        let check = |f: &dyn Fn(&mut Params), want: fn(&ParamsError) -> bool| {
            let mut p = good.clone();
            f(&mut p);
            let err = p.validate().unwrap_err();
            assert!(want(&err), "{err:?}");
        };
        check(&|p| p.participants = vec![1], |e| {
            matches!(e, ParamsError::TooFewParticipants(1))
        });
        check(&|p| p.participants.swap(0, 1), |e| {
            matches!(e, ParamsError::ParticipantsNotSorted(_))
        });
        check(&|p| p.vector_len = 0, |e| {
            matches!(e, ParamsError::VectorLength { .. })
        });
        check(&|p| p.neighbours = 3, |e| {
            matches!(e, ParamsError::Neighbours { .. })
        });
        check(&|p| p.threshold = 0, |e| {
            matches!(e, ParamsError::Threshold { .. })
        });
        check(&|p| p.threshold = 10, |e| {
            matches!(e, ParamsError::Threshold { .. })
        });
        check(&|p| p.clip = f32::NAN, |e| {
            matches!(e, ParamsError::Clip(_))
        });
        check(&|p| p.quant_bits = 32, |e| {
            matches!(e, ParamsError::QuantBits { .. })
        });
        check(&|p| p.max_weight = 0, |e| {
            matches!(e, ParamsError::MaxWeight)
        });
        check(&|p| p.max_weight = u64::from(u32::MAX), |e| {
            matches!(e, ParamsError::CanWrap { .. })
        });
        assert!(Params::recommended(1, &[3, 3, 4], 10, 1.0, 1).is_err());
    }

    #[test]
    fn no_wrap_condition_is_tight() {
        // n * W * L < 2^(b-1): 2 * 1 * (2^30 - 1) fits in 32 bits, 3 * ... does not.
        assert!(fits(2, 1, 31, 32));
        assert!(!fits(3, 1, 31, 32));
        assert!(!fits(1 << 15, 1 << 16, 2, 32));
        assert!(fits((1 << 15) - 1, 1 << 16, 2, 32));
    }

    #[test]
    fn digest_binds_every_field() {
        let ids: Vec<u32> = (0..10).collect();
        let p = Params::recommended(1, &ids, 10, 1.0, 10).unwrap();
        let mut q = p.clone();
        q.round_id = 2;
        assert_ne!(p.digest(), q.digest());
        let mut q = p.clone();
        q.consistency_check = true;
        assert_ne!(p.digest(), q.digest());
        let mut q = p.clone();
        q.threshold -= 1;
        assert_ne!(p.digest(), q.digest());
        assert_eq!(p.digest(), p.clone().digest());
    }
}
