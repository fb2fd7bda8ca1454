//! Round parameters: who takes part, the neighbour graph, the threshold, quantization and
//! the modulus. [`Params::recommended`] derives safe defaults; the crate docs explain the
//! trade-offs.

use sha2::{Digest, Sha256};

use crate::error::ParamsError;
use crate::noise::DiscreteGaussian;

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
    /// The default dropout and collusion rates (10%) with another bound on the probability
    /// that a round fails or some client is exposed.
    pub fn with_failure_probability(failure_probability: f64) -> GraphTargets {
        GraphTargets {
            failure_probability,
            ..GraphTargets::default()
        }
    }

    /// The security parameter in bits: −log2(failure_probability) (10⁻⁶ ≈ 19.9 bits).
    pub fn bits(&self) -> f64 {
        -self.failure_probability.log2()
    }

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
/// Each client's noise sample is clamped to ±τ with τ = ⌈10σ⌉ ([`Params::noise_clamp`]).
/// The discrete Gaussian is σ²-subgaussian, so a sample is clamped with probability at
/// most 2·e^-50 < 4·10^-22; the clamped noise is within that total variation distance of
/// the unclamped noise per coordinate and client, which adds at most
/// n·d·4·10^-22 to the δ of any differential-privacy guarantee (4·10^-14 for n = 100,
/// d = 10^6). In exchange the no-wrap bound is certain, not probable.
pub const NOISE_CLAMP_STDDEVS: f64 = 10.0;

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
    /// σ of the discrete Gaussian noise each client adds to each of its (weighted,
    /// quantized) values, in quantization levels, i.e. integer units of the quantized
    /// word; 0 (the default) adds none. Finite, in 0..=2^40. Each sample is clamped to
    /// ±[`Params::noise_clamp`], which [`Params::validate`] counts in the no-wrap bound.
    /// See "Distributed noise" in the crate docs, [`crate::noise_share_levels`] to
    /// derive it from a target in value units, and [`Params::with_noise`] to set it.
    pub noise_stddev: f64,
    /// n_min: the fewest survivors whose inputs the round may unmask, which is the number
    /// of noise shares the noise target was calibrated to (see "Distributed noise" in the
    /// crate docs). The server refuses to unmask ([`crate::ServerError::BelowMinSurvivors`])
    /// and every client refuses to reveal any share
    /// ([`crate::ClientError::BelowMinSurvivors`]) when fewer clients survive.
    ///
    /// Invariant: t <= n_min <= n. At most n clients can survive; and a sum of fewer than
    /// t survivors can never be unmasked anyway (each survivor needs t surviving
    /// neighbours to recover its self mask), so t is the floor that costs nothing.
    /// [`Params::recommended`] sets n_min = t; [`Params::with_min_survivors`] raises it.
    pub n_min: usize,
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
    /// - prg: AES-128-CTR; no consistency check (semi-honest server); no noise (set it
    ///   with [`Params::with_noise`]); n_min = t (raise it with
    ///   [`Params::with_min_survivors`]).
    ///
    /// [`Params::for_round`] does all of it the way the coordinator does and an agent
    /// recomputes it.
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
        let threshold = degree / 2 + 1;
        let (word, quant_bits) = recommended_quantization(n, max_weight);
        let params = Params {
            round_id,
            participants: ids,
            vector_len,
            neighbours,
            threshold,
            clip,
            quant_bits,
            max_weight,
            word,
            prg: MaskPrg::Aes128Ctr,
            consistency_check: false,
            noise_stddev: 0.0,
            n_min: threshold,
        };
        params.validate()?;
        Ok(params)
    }

    /// The parameters of a round as the coordinator derives them and as each agent
    /// recomputes them to check what it is offered ([`crate::Expectation`]):
    /// [`Params::recommended`], then n_min = max(`min_survivors`, t)
    /// ([`Params::with_min_survivors`]), then, if `noise_stddev` (the standard deviation
    /// the sum must carry, in value units) is positive, each client's noise share
    /// calibrated so that n_min shares carry it ([`crate::noise_share_levels`],
    /// [`Params::with_noise`]). The consistency check stays off: it is the caller's
    /// choice (and the facility's policy), not derived.
    #[allow(clippy::too_many_arguments)]
    pub fn for_round(
        round_id: u64,
        participants: &[u32],
        vector_len: usize,
        clip: f32,
        max_weight: u64,
        noise_stddev: f64,
        min_survivors: usize,
    ) -> Result<Params, ParamsError> {
        Params::for_round_with(
            round_id,
            participants,
            vector_len,
            clip,
            max_weight,
            noise_stddev,
            min_survivors,
            GraphTargets::default(),
        )
    }

    /// [`Params::for_round`] with the neighbour graph sized for other [`GraphTargets`] (a
    /// federation's `failure_probability`), which each agent also recomputes and bounds by
    /// its policy ([`crate::ParamsPolicy::max_failure_probability`]).
    #[allow(clippy::too_many_arguments)]
    pub fn for_round_with(
        round_id: u64,
        participants: &[u32],
        vector_len: usize,
        clip: f32,
        max_weight: u64,
        noise_stddev: f64,
        min_survivors: usize,
        targets: GraphTargets,
    ) -> Result<Params, ParamsError> {
        let params = Params::recommended_for(
            round_id,
            participants,
            vector_len,
            clip,
            max_weight,
            targets,
        )?
        .with_min_survivors(min_survivors)?;
        if noise_stddev == 0.0 {
            return Ok(params);
        }
        if !(noise_stddev.is_finite() && noise_stddev > 0.0) {
            return Err(ParamsError::NoiseStddev(noise_stddev));
        }
        let share = crate::noise::noise_share_levels(noise_stddev, params.n_min, &params);
        params.with_noise(share)
    }

    /// These parameters with n_min = max(`min_survivors`, t): fewer survivors than that
    /// and nothing is unmasked. Fails ([`ParamsError::MinSurvivors`]) when that exceeds
    /// the number of participants.
    pub fn with_min_survivors(mut self, min_survivors: usize) -> Result<Params, ParamsError> {
        self.n_min = min_survivors.max(self.threshold);
        self.validate()?;
        Ok(self)
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
        if self.n_min < self.threshold || self.n_min > n {
            return Err(ParamsError::MinSurvivors {
                n_min: self.n_min,
                t: self.threshold,
                n,
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
        DiscreteGaussian::new(self.noise_stddev)?;
        if !fits(
            n,
            self.max_weight,
            self.quant_bits,
            bits,
            self.noise_clamp(),
        ) {
            return Err(ParamsError::CanWrap {
                n,
                max_weight: self.max_weight,
                quant_bits: self.quant_bits,
                word_bits: bits,
            });
        }
        Ok(())
    }

    /// These parameters with each client adding discrete Gaussian noise of standard
    /// deviation `stddev` levels (at the current quantization) to each value, and the
    /// quantization re-derived so that [`Params::validate`] passes with the noise.
    ///
    /// If the sum with noise fits the current word and quantization bits, only
    /// `noise_stddev` changes. Otherwise q is lowered to the most bits that fit (keeping
    /// 32-bit words while at least [`MIN_QUANT_BITS_32`] fit, as [`Params::recommended`]
    /// does, else switching to 64-bit words at up to the current q); q is never raised.
    /// When q drops, one level becomes wider, and the noise is rescaled to the new levels
    /// (`stddev · L_new / L_old`, in f64) so that its standard deviation in value units,
    /// `stddev / scale`, is what was asked for. So the workflow is
    /// `let p = Params::recommended(..)?; let s = noise_share_levels(S, n_min, &p);
    /// let p = p.with_noise(s)?;` and the noise in value units is as computed from `p`.
    /// Errors as [`Params::validate`] (a bad `stddev`, or noise that fits no word).
    pub fn with_noise(mut self, stddev: f64) -> Result<Params, ParamsError> {
        DiscreteGaussian::new(stddev)?;
        let (n, w, q0) = (self.n(), self.max_weight, self.quant_bits);
        let old_levels = self.quant_levels() as f64;
        let rescaled = |q: u32| {
            if q == q0 {
                stddev
            } else {
                stddev * ((1u64 << (q - 1)) - 1) as f64 / old_levels
            }
        };
        let best = |bits: u32| {
            (2..=q0.min(bits - 1))
                .rev()
                .find(|&q| fits(n, w, q, bits, noise_clamp(rescaled(q))))
        };
        let choice = match self.word {
            Word::U32 => match best(32) {
                Some(q) if q == q0 || q >= MIN_QUANT_BITS_32 => Some((Word::U32, q)),
                _ => best(64).map(|q| (Word::U64, q)),
            },
            Word::U64 => best(64).map(|q| (Word::U64, q)),
        };
        self.noise_stddev = stddev;
        if let Some((word, q)) = choice {
            self.noise_stddev = rescaled(q);
            self.word = word;
            self.quant_bits = q;
        }
        self.validate()?;
        Ok(self)
    }

    /// τ = ⌈[`NOISE_CLAMP_STDDEVS`] · σ⌉: each client's noise sample is clamped to
    /// [-τ, τ] (0 without noise). See [`NOISE_CLAMP_STDDEVS`] for what that costs.
    pub fn noise_clamp(&self) -> u64 {
        noise_clamp(self.noise_stddev)
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
        // k >= n - 1, without k + 1 overflowing: `validate` accepts any k >= n - 1.
        self.neighbours >= self.participants.len().saturating_sub(1)
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
    /// result (relative 2^-24 of at most `total_weight * c`). Without noise only: noise
    /// adds up to `n_inputs · τ / scale` on top (see [`Params::noise_clamp`]), typically
    /// `sqrt(n_inputs) · σ / scale`.
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
        h.update((self.n_min as u64).to_le_bytes());
        // Noise is appended only when set (the encoding stays unambiguous: every other
        // field has a fixed or prefixed length, and this one comes last).
        if self.noise_stddev != 0.0 {
            h.update(self.noise_stddev.to_bits().to_le_bytes());
        }
        h.finalize().into()
    }

    /// The scale that maps a clipped value to quantization levels: L / c.
    pub(crate) fn scale(&self) -> f64 {
        self.quant_levels() as f64 / f64::from(self.clip)
    }
}

/// τ for noise of standard deviation `stddev` (0 for 0; validated elsewhere).
fn noise_clamp(stddev: f64) -> u64 {
    // Saturating cast; validate() bounds stddev by 2^40 first.
    (stddev * NOISE_CLAMP_STDDEVS).ceil() as u64
}

/// True when n * (W * (2^(q-1) - 1) + τ) < 2^(b-1), so the centred sum of n clients'
/// weighted values plus their noise clamped at τ cannot wrap.
fn fits(n: usize, max_weight: u64, quant_bits: u32, word_bits: u32, noise_clamp: u64) -> bool {
    if quant_bits < 2 || quant_bits >= word_bits {
        return false;
    }
    let levels = (1u128 << (quant_bits - 1)) - 1;
    let bound = u128::from(max_weight)
        .checked_mul(levels)
        .and_then(|x| x.checked_add(u128::from(noise_clamp)))
        .and_then(|x| x.checked_mul(n as u128));
    matches!(bound, Some(b) if b < (1u128 << (word_bits - 1)))
}

fn max_quant_bits(n: usize, max_weight: u64, word_bits: u32) -> Option<u32> {
    (2..word_bits)
        .rev()
        .find(|&q| fits(n, max_weight, q, word_bits, 0))
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
        // The security-parameter table in lib.rs.
        let table: Vec<(f64, usize, usize)> =
            [1e-2, 1e-3, 1e-4, 1e-6, 2f64.powi(-30), 2f64.powi(-40)]
                .iter()
                .map(|&p| {
                    let t = GraphTargets::with_failure_probability(p);
                    (
                        (t.bits() * 10.0).round() / 10.0,
                        t.neighbours(100),
                        t.neighbours(1000),
                    )
                })
                .collect();
        assert_eq!(
            table,
            vec![
                (6.6, 16, 20),
                (10.0, 20, 24),
                (13.3, 24, 30),
                (19.9, 34, 38),
                (30.0, 46, 52),
                (40.0, 60, 64)
            ]
        );
    }

    /// Found by `fuzz/fuzz_targets/secagg_params.rs`: k + 1 overflowed for the largest k.
    #[test]
    fn any_k_of_at_least_n_minus_1_is_the_complete_graph() {
        let ids: Vec<u32> = (0..4).collect();
        let mut p = Params::recommended(1, &ids, 10, 1.0, 10).unwrap();
        for k in [3, 4, u32::MAX as usize, usize::MAX] {
            p.neighbours = k;
            p.validate().unwrap();
            assert!(p.is_complete_graph(), "k = {k}");
            assert_eq!(p.degree(), 3);
            assert_eq!(p.graph_neighbours(0), [1, 2, 3]);
        }
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
        // t = 5 here (complete graph of 10): n_min must lie in t..=n.
        check(&|p| p.n_min = 4, |e| {
            matches!(
                e,
                ParamsError::MinSurvivors {
                    n_min: 4,
                    t: 5,
                    n: 10
                }
            )
        });
        check(&|p| p.n_min = 11, |e| {
            matches!(e, ParamsError::MinSurvivors { n_min: 11, .. })
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
        for bad in [f64::NAN, -1.0, f64::INFINITY, 1e13] {
            check(&|p| p.noise_stddev = bad, |e| {
                matches!(e, ParamsError::NoiseStddev(_))
            });
        }
        // Noise the 32-bit word cannot hold on top of the weighted values.
        check(&|p| p.noise_stddev = 1e8, |e| {
            matches!(e, ParamsError::CanWrap { .. })
        });
        assert!(Params::recommended(1, &[3, 3, 4], 10, 1.0, 1).is_err());
    }

    #[test]
    fn no_wrap_condition_is_tight() {
        // n * W * L < 2^(b-1): 2 * 1 * (2^30 - 1) fits in 32 bits, 3 * ... does not.
        assert!(fits(2, 1, 31, 32, 0));
        assert!(!fits(3, 1, 31, 32, 0));
        assert!(!fits(1 << 15, 1 << 16, 2, 32, 0));
        assert!(fits((1 << 15) - 1, 1 << 16, 2, 32, 0));
        // n * (W * L + τ) < 2^(b-1): 2 * (2^30 - 1 + 1) = 2^31 does not fit.
        assert!(!fits(2, 1, 31, 32, 1));
        assert!(fits(2, 1, 30, 32, 1 << 29));
        assert!(!fits(2, 1, 30, 32, (1 << 29) + 1));
    }

    #[test]
    fn with_noise_keeps_or_rederives_the_quantization() {
        let ids: Vec<u32> = (0..100).collect();
        let p = Params::recommended(1, &ids, 10, 1.0, 100).unwrap();
        assert_eq!((p.word, p.quant_bits, p.noise_stddev), (Word::U32, 18, 0.0));
        // Headroom per client: 2^31 / 100 - 100 * (2^17 - 1) = 8_367_736 levels for τ.
        let small = p.clone().with_noise(800_000.0).unwrap();
        assert_eq!((small.word, small.quant_bits), (Word::U32, 18));
        assert_eq!(small.noise_stddev, 800_000.0);
        assert_eq!(small.noise_clamp(), 8_000_000);
        // Too much for q = 18: q drops to 17 and the noise is halved in levels (the same
        // in value units).
        let big = p.clone().with_noise(1_000_000.0).unwrap();
        assert_eq!((big.word, big.quant_bits), (Word::U32, 17));
        let in_values = big.noise_stddev / big.scale();
        assert!(
            (in_values / (1e6 / p.scale()) - 1.0).abs() < 1e-12,
            "{in_values}"
        );
        // Far too much for 32-bit words at q >= 16: 64-bit words at the same q.
        let huge = p.clone().with_noise(1e9).unwrap();
        assert_eq!(
            (huge.word, huge.quant_bits, huge.noise_stddev),
            (Word::U64, 18, 1e9)
        );
        huge.validate().unwrap();
        assert!(matches!(
            p.clone().with_noise(f64::NAN),
            Err(ParamsError::NoiseStddev(_))
        ));
        assert_eq!(p.clone().with_noise(0.0).unwrap(), p);
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
        let mut q = p.clone();
        q.noise_stddev = 1.5;
        assert_ne!(p.digest(), q.digest());
        let mut r = q.clone();
        r.noise_stddev = 1.25;
        assert_ne!(q.digest(), r.digest());
        let mut q = p.clone();
        q.n_min += 1;
        assert_ne!(p.digest(), q.digest());
        assert_eq!(p.digest(), p.clone().digest());
    }

    #[test]
    fn for_round_raises_n_min_to_the_round_minimum_and_calibrates_noise_to_it() {
        let ids: Vec<u32> = (1..=10).collect();
        let p = Params::recommended(1, &ids, 10, 1.0, 1).unwrap();
        assert_eq!((p.threshold, p.n_min), (5, 5), "recommended: n_min = t");
        // A minimum below t counts as t; above it, it is kept; above n, refused.
        assert_eq!(p.clone().with_min_survivors(2).unwrap().n_min, 5);
        assert_eq!(p.clone().with_min_survivors(8).unwrap().n_min, 8);
        assert!(matches!(
            p.clone().with_min_survivors(11),
            Err(ParamsError::MinSurvivors { n_min: 11, .. })
        ));
        // The noise: n_min shares of sigma_q levels carry S value units.
        let q = Params::for_round(1, &ids, 10, 1.0, 1, 0.5, 8).unwrap();
        assert_eq!(q.n_min, 8);
        let total = (q.n_min as f64).sqrt() * q.noise_stddev / q.scale();
        assert!((total / 0.5 - 1.0).abs() < 1e-12, "{total}");
        // Without noise it is recommended + n_min, nothing else.
        let r = Params::for_round(1, &ids, 10, 1.0, 1, 0.0, 8).unwrap();
        assert_eq!(r, p.with_min_survivors(8).unwrap());
        assert!(matches!(
            Params::for_round(1, &ids, 10, 1.0, 1, -1.0, 8),
            Err(ParamsError::NoiseStddev(_))
        ));
    }
}
