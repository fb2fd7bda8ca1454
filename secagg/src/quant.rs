//! Quantization: clip, scale, stochastically round, weight; and the way back.
//!
//! A value x becomes `Q(x) = round_stochastic(clip(x, -c, c) * L / c)`, an integer in
//! [-L, L] with L = 2^(q-1) - 1, rounded up with probability equal to the fractional part
//! (so E[Q(x)] = x * L / c and |Q(x) - x * L / c| < 1). The client sends
//! `w * Q(x)` for each value, then `w` itself as one extra word, all in two's complement
//! modulo 2^b. Because n * W * L < 2^(b-1) ([`crate::Params::validate`]), the sum of all
//! clients' words, read as a centred integer, is the exact integer sum, and dividing by
//! L / c gives the weighted sum within `total_weight * c / L`.
//!
//! With noise ([`crate::Params::noise_stddev`] = σ > 0), each value word becomes
//! `w * Q(x) + N` with N drawn from the discrete Gaussian N_Z(0, σ²) and clamped to ±τ
//! ([`crate::Params::noise_clamp`]), independently per value (the weight word gets none);
//! validation then guarantees n * (W * L + τ) < 2^(b-1), and the sum carries the summed
//! noise.

use chacha20::ChaCha20Rng;
use rand_core::{CryptoRng, SeedableRng};
use zeroize::Zeroizing;

use crate::error::ClientError;
use crate::noise::DiscreteGaussian;
use crate::params::MaskPrg;
use crate::params::Params;
use crate::prg::{ChunkInit, Keystream, MaskWord};

/// Values quantized per block of uniform draws.
const NOISE_BLOCK: usize = 1024;

/// Quantizes one client's input, a slice of positions at a time, so the client can
/// quantize and mask each cache-sized chunk in one pass.
pub(crate) struct Quantizer<'a> {
    input: &'a [f32],
    clip: f32,
    scale: f64,
    levels: i64,
    weight: i64,
    noise_stream: Keystream,
    noise: Zeroizing<[u8; 4 * NOISE_BLOCK]>,
    /// The discrete Gaussian noise, if the parameters ask for it.
    dp_noise: Option<DpNoise>,
    /// The next position `fill` expects (positions are filled in order).
    next: usize,
}

/// One client's discrete Gaussian noise: a sampler, its own CSPRNG seeded from the
/// injected one, and a block of clamped samples (secret: zeroized).
struct DpNoise {
    gaussian: DiscreteGaussian,
    clamp: i64,
    rng: ChaCha20Rng,
    block: Zeroizing<Vec<i64>>,
}

impl<'a> Quantizer<'a> {
    /// Checks the input (length d, finite values) and the weight (1..=W).
    pub(crate) fn new<R: CryptoRng + ?Sized>(
        params: &Params,
        input: &'a [f32],
        weight: u64,
        rng: &mut R,
    ) -> Result<Quantizer<'a>, ClientError> {
        if input.len() != params.vector_len {
            return Err(ClientError::InputLength {
                expected: params.vector_len,
                got: input.len(),
            });
        }
        if weight == 0 || weight > params.max_weight {
            return Err(ClientError::Weight {
                weight,
                max: params.max_weight,
            });
        }
        if let Some(index) = input.iter().position(|x| !x.is_finite()) {
            return Err(ClientError::NonFiniteInput { index });
        }
        // The uniform draws for stochastic rounding come from a keystream seeded by the
        // injected RNG (a CSPRNG is slower per word than AES-CTR).
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        // The noise gets its own ChaCha20 stream, seeded only when noise is on (so a
        // noiseless round draws exactly what it did before noise existed).
        let dp_noise = if params.noise_stddev > 0.0 {
            let mut noise_seed = Zeroizing::new([0u8; 32]);
            rng.fill_bytes(&mut noise_seed[..]);
            Some(DpNoise {
                gaussian: DiscreteGaussian::new(params.noise_stddev)?,
                // Validated: τ <= 10 * 2^40 + 1 and n * (W * L + τ) < 2^63.
                clamp: params.noise_clamp() as i64,
                rng: ChaCha20Rng::from_seed(*noise_seed),
                block: Zeroizing::new(vec![0; NOISE_BLOCK]),
            })
        } else {
            None
        };
        Ok(Quantizer {
            input,
            clip: params.clip,
            scale: params.scale(),
            levels: params.quant_levels() as i64,
            // weight <= W and n * W * L < 2^63, so weight * q fits.
            weight: weight as i64,
            noise_stream: Keystream::new(MaskPrg::Aes128Ctr, &seed),
            noise: Zeroizing::new([0u8; 4 * NOISE_BLOCK]),
            dp_noise,
            next: 0,
        })
    }

    /// Writes the words for positions `start..start + out.len()` of the d + 1 (the last
    /// position is the weight). Calls must cover the positions in order. Inlined into the
    /// (AVX2-compiled) mask expansion loop.
    #[inline(always)]
    pub(crate) fn fill<W: MaskWord>(&mut self, start: usize, out: &mut [W]) {
        debug_assert_eq!(start, self.next);
        self.next = start + out.len();
        let d = self.input.len();
        let values_end = (start + out.len()).min(d);
        let (values, weight_slot) = out.split_at_mut(values_end.saturating_sub(start));
        let (clip, scale, levels, w) = (self.clip, self.scale, self.levels, self.weight);
        let offset = levels as f64;
        let mut pos = start;
        for block in values.chunks_mut(NOISE_BLOCK) {
            let noise = &mut self.noise[..4 * block.len()];
            self.noise_stream.fill(noise);
            let input = &self.input[pos..pos + block.len()];
            pos += block.len();
            // Stochastic rounding as floor(v + u) with u uniform in [0, 1): rounds up with
            // probability frac(v). Shifting by L makes the argument non-negative and below
            // 2^31 (q <= 31), so the truncating cast to i32 is the floor and vectorizes.
            let quantize = |x: f32, r: &[u8]| -> i64 {
                let u = f64::from(u32::from_le_bytes([r[0], r[1], r[2], r[3]]))
                    * (1.0 / 4_294_967_296.0);
                let shifted = f64::from(x.clamp(-clip, clip)) * scale + offset + u;
                (i64::from(shifted as i32) - levels).min(levels)
            };
            let Some(dp) = &mut self.dp_noise else {
                for ((o, &x), r) in block.iter_mut().zip(input).zip(noise.chunks_exact(4)) {
                    *o = W::from_i64(quantize(x, r) * w);
                }
                continue;
            };
            // One independent noise sample per value; |w * Q + N| <= W * L + τ < 2^63.
            let samples = &mut dp.block[..block.len()];
            for n in samples.iter_mut() {
                *n = dp.gaussian.sample(&mut dp.rng).clamp(-dp.clamp, dp.clamp);
            }
            for (((o, &x), r), &n) in block
                .iter_mut()
                .zip(input)
                .zip(noise.chunks_exact(4))
                .zip(samples.iter())
            {
                *o = W::from_i64(quantize(x, r) * w + n);
            }
        }
        if let Some(slot) = weight_slot.first_mut() {
            *slot = W::from_i64(w);
        }
    }
}

impl<W: MaskWord> ChunkInit<W> for Quantizer<'_> {
    #[inline(always)]
    fn init(&mut self, start: usize, chunk: &mut [W]) {
        self.fill(start, chunk);
    }
}

/// Quantizes `input` with `weight` into `d + 1` words (the last one is the weight).
#[cfg(test)]
pub(crate) fn quantize<W: MaskWord, R: CryptoRng + ?Sized>(
    params: &Params,
    input: &[f32],
    weight: u64,
    rng: &mut R,
) -> Result<Vec<W>, ClientError> {
    let mut q = Quantizer::new(params, input, weight, rng)?;
    let mut out = vec![W::default(); input.len() + 1];
    // Uneven pieces, to exercise the chunked path.
    let mut start = 0;
    for piece in out.chunks_mut(1000) {
        q.fill(start, piece);
        start += piece.len();
    }
    Ok(out)
}

/// Reads the unmasked sum back: the weighted sum of values (plus the summed noise, if
/// any) and the total weight. `None` if the words cannot be the sum of `n_inputs` valid
/// inputs (a client cheated): each value must be within `total_weight * L + n_inputs * τ`.
pub(crate) fn dequantize<W: MaskWord>(
    params: &Params,
    sum: &[W],
    n_inputs: usize,
) -> Option<(Vec<f32>, u64)> {
    let (weight, values) = sum.split_last()?;
    let total_weight = u64::try_from(weight.centred()).ok()?;
    if total_weight < n_inputs as u64 || total_weight > n_inputs as u64 * params.max_weight {
        return None;
    }
    let limit = i128::from(total_weight) * i128::from(params.quant_levels())
        + n_inputs as i128 * i128::from(params.noise_clamp());
    let inv_scale = 1.0 / params.scale();
    let mut out = Vec::with_capacity(values.len());
    for v in values {
        let c = v.centred();
        if i128::from(c).abs() > limit {
            return None;
        }
        out.push((c as f64 * inv_scale) as f32);
    }
    Some((out, total_weight))
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;
    use crate::params::Word;

    fn params() -> Params {
        let mut p = Params::recommended(1, &[1, 2, 3], 5, 2.0, 10).unwrap();
        p.quant_bits = 8; // L = 127, step 2/127
        p.word = Word::U32;
        p.validate().unwrap();
        p
    }

    #[test]
    fn clips_weights_and_appends_the_weight() {
        let p = params();
        let mut rng = ChaCha20Rng::seed_from_u64(0);
        let q: Vec<u32> = quantize(&p, &[5.0, -5.0, 0.0, 2.0, -2.0], 3, &mut rng).unwrap();
        let c: Vec<i64> = q.iter().map(|w| w.centred()).collect();
        assert_eq!(c, vec![381, -381, 0, 381, -381, 3]);
        let (sum, w) = dequantize(&p, &q, 1).unwrap();
        assert_eq!(w, 3);
        assert_eq!(sum, vec![6.0, -6.0, 0.0, 6.0, -6.0]);
    }

    #[test]
    fn stochastic_rounding_is_unbiased_and_within_one_level() {
        let p = params();
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let x = 0.3f32; // 0.3 * 63.5 = 19.05 levels
        let n = 20_000;
        let mut total = 0i64;
        for _ in 0..n {
            let q: Vec<u64> = quantize(&p, &[x; 5], 1, &mut rng).unwrap();
            let v = q[0].centred();
            assert!(v == 19 || v == 20, "{v}");
            total += v;
        }
        let mean = total as f64 / n as f64;
        assert!((mean - 19.05).abs() < 0.02, "{mean}");
    }

    #[test]
    fn rejects_bad_inputs() {
        let p = params();
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let bad = |input: &[f32], w: u64| {
            quantize::<u32, _>(&p, input, w, &mut ChaCha20Rng::seed_from_u64(2)).unwrap_err()
        };
        assert_eq!(
            bad(&[0.0; 4], 1),
            ClientError::InputLength {
                expected: 5,
                got: 4
            }
        );
        assert_eq!(
            bad(&[0.0; 5], 0),
            ClientError::Weight { weight: 0, max: 10 }
        );
        assert_eq!(
            bad(&[0.0; 5], 11),
            ClientError::Weight {
                weight: 11,
                max: 10
            }
        );
        assert_eq!(
            bad(&[0.0, f32::NAN, 0.0, 0.0, 0.0], 1),
            ClientError::NonFiniteInput { index: 1 }
        );
        assert!(quantize::<u32, _>(&p, &[0.0; 5], 10, &mut rng).is_ok());
    }

    #[test]
    fn dequantize_rejects_impossible_sums() {
        let p = params();
        assert!(dequantize::<u32>(&p, &[0, 0], 1).is_none()); // zero weight
        assert!(dequantize::<u32>(&p, &[0, 11], 1).is_none()); // weight above W
        assert!(dequantize::<u32>(&p, &[128, 1], 1).is_none()); // beyond w * L
        assert!(dequantize::<u32>(&p, &[127, 1], 1).is_some());
    }

    #[test]
    fn noise_goes_on_values_only_and_dequantize_allows_its_clamp() {
        let mut p = params();
        p.noise_stddev = 2.0;
        p.validate().unwrap();
        assert_eq!(p.noise_clamp(), 20);
        let mut rng = ChaCha20Rng::seed_from_u64(5);
        let mut nonzero = 0;
        for _ in 0..200 {
            // Q(0) = 0 exactly, so the value words are pure noise.
            let q: Vec<u32> = quantize(&p, &[0.0; 5], 3, &mut rng).unwrap();
            assert_eq!(q[5].centred(), 3);
            assert!(q[..5].iter().all(|w| w.centred().abs() <= 20));
            nonzero += q[..5].iter().filter(|w| w.centred() != 0).count();
        }
        // P[N = 0] is about 0.2 at σ = 2.
        assert!((700..900).contains(&nonzero), "{nonzero}");
        // One input of weight 1: |sum| <= 127 + 20; two of total weight 3: 3 * 127 + 40.
        assert!(dequantize::<u32>(&p, &[147, 1], 1).is_some());
        assert!(dequantize::<u32>(&p, &[(-147i32) as u32, 1], 1).is_some());
        assert!(dequantize::<u32>(&p, &[148, 1], 1).is_none());
        assert!(dequantize::<u32>(&p, &[421, 3], 2).is_some());
        assert!(dequantize::<u32>(&p, &[422, 3], 2).is_none());
    }
}
