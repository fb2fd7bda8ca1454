//! Shamir secret sharing of 32-byte secrets over the prime field GF(2^61 - 1).
//!
//! A secret is split into eight 32-bit limbs; each limb is the constant term of its own
//! random polynomial of degree t - 1 with coefficients uniform in the field, so any t - 1
//! shares are independent of the secret (perfect secrecy per limb) and any t reconstruct
//! it by Lagrange interpolation at zero. Participant `id` holds the evaluations at
//! x = id + 1 (never zero, distinct for distinct ids).
//!
//! The field is small enough for u64 limbs with u128 products and Mersenne reduction; no
//! crate offering Shamir over a large prime field built without pulling a bigint or
//! elliptic-curve stack, and GF(256) crates cap the number of shares at 255.

use rand_core::CryptoRng;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The field modulus 2^61 - 1.
pub(crate) const P: u64 = (1 << 61) - 1;
/// 32-bit limbs per 32-byte secret.
pub(crate) const LIMBS: usize = 8;
/// Encoded size of one share (the limb evaluations; x is implied by the holder's id).
pub(crate) const SHARE_BYTES: usize = LIMBS * 8;

/// One holder's share of one secret.
#[derive(Clone, PartialEq, Eq, Zeroize, ZeroizeOnDrop)]
pub(crate) struct Share {
    pub(crate) ys: [u64; LIMBS],
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Share(..)")
    }
}

impl Share {
    pub(crate) fn to_bytes(&self) -> [u8; SHARE_BYTES] {
        let mut out = [0u8; SHARE_BYTES];
        for (chunk, y) in out.chunks_exact_mut(8).zip(self.ys.iter()) {
            chunk.copy_from_slice(&y.to_le_bytes());
        }
        out
    }

    /// Parses a share; `None` if a limb is not a field element.
    pub(crate) fn from_bytes(bytes: &[u8]) -> Option<Share> {
        if bytes.len() != SHARE_BYTES {
            return None;
        }
        let mut ys = [0u64; LIMBS];
        for (y, chunk) in ys.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut b = [0u8; 8];
            b.copy_from_slice(chunk);
            *y = u64::from_le_bytes(b);
            if *y >= P {
                return None;
            }
        }
        Some(Share { ys })
    }
}

/// The evaluation point of participant `id`.
pub(crate) fn x_of(id: u32) -> u64 {
    u64::from(id) + 1
}

/// Splits `secret` into shares for `holders` (distinct ids) with threshold `t`
/// (1 <= t <= holders.len()). Returns the shares in the order of `holders`.
pub(crate) fn split<R: CryptoRng + ?Sized>(
    secret: &[u8; 32],
    t: usize,
    holders: &[u32],
    rng: &mut R,
) -> Vec<Share> {
    debug_assert!(t >= 1 && t <= holders.len());
    // coeffs[limb][j] is the coefficient of x^j.
    let mut coeffs = vec![[0u64; LIMBS]; t];
    for (limb, chunk) in secret.chunks_exact(4).enumerate() {
        coeffs[0][limb] = u64::from(u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    for row in coeffs.iter_mut().skip(1) {
        for c in row.iter_mut() {
            *c = random_element(rng);
        }
    }
    let shares = holders
        .iter()
        .map(|&id| {
            let x = x_of(id);
            let mut ys = [0u64; LIMBS];
            for (limb, y) in ys.iter_mut().enumerate() {
                // Horner from the highest coefficient.
                let mut acc = 0u64;
                for row in coeffs.iter().rev() {
                    acc = add(mul(acc, x), row[limb]);
                }
                *y = acc;
            }
            Share { ys }
        })
        .collect();
    for row in coeffs.iter_mut() {
        row.zeroize();
    }
    shares
}

/// Reconstructs a secret from at least one share per distinct holder: interpolates at
/// zero through all given points. With exactly t honest shares this is the secret; with
/// more it is still the secret if all are honest. `None` if holders repeat or a limb is
/// not a 32-bit value (a sign of wrong shares).
pub(crate) fn combine(points: &[(u32, &Share)]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
    let lambdas = lagrange_at_zero(&points.iter().map(|&(id, _)| x_of(id)).collect::<Vec<_>>())?;
    let mut out = zeroize::Zeroizing::new([0u8; 32]);
    for limb in 0..LIMBS {
        let mut acc = 0u64;
        for (lambda, (_, share)) in lambdas.iter().zip(points) {
            acc = add(acc, mul(*lambda, share.ys[limb]));
        }
        let value = u32::try_from(acc).ok()?;
        out[limb * 4..limb * 4 + 4].copy_from_slice(&value.to_le_bytes());
    }
    Some(out)
}

/// Lagrange coefficients for interpolation at zero through `xs`; `None` on repeats.
fn lagrange_at_zero(xs: &[u64]) -> Option<Vec<u64>> {
    let mut out = Vec::with_capacity(xs.len());
    for (i, &xi) in xs.iter().enumerate() {
        let mut num = 1u64;
        let mut den = 1u64;
        for (j, &xj) in xs.iter().enumerate() {
            if i == j {
                continue;
            }
            if xi == xj {
                return None;
            }
            // prod x_j / (x_j - x_i)
            num = mul(num, xj);
            den = mul(den, sub(xj, xi));
        }
        out.push(mul(num, inv(den)));
    }
    Some(out)
}

fn random_element<R: CryptoRng + ?Sized>(rng: &mut R) -> u64 {
    loop {
        let x = rng.next_u64() >> 3;
        if x < P {
            return x;
        }
    }
}

fn add(a: u64, b: u64) -> u64 {
    let s = a + b; // < 2^62, no overflow
    if s >= P { s - P } else { s }
}

fn sub(a: u64, b: u64) -> u64 {
    if a >= b { a - b } else { a + P - b }
}

fn mul(a: u64, b: u64) -> u64 {
    let prod = u128::from(a) * u128::from(b);
    let lo = (prod as u64) & P;
    let hi = (prod >> 61) as u64;
    add(lo, hi)
}

fn inv(a: u64) -> u64 {
    // Fermat: a^(p-2).
    let mut result = 1u64;
    let mut base = a;
    let mut e = P - 2;
    while e > 0 {
        if e & 1 == 1 {
            result = mul(result, base);
        }
        base = mul(base, base);
        e >>= 1;
    }
    result
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use proptest::prelude::*;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn field_arithmetic() {
        assert_eq!(mul(P - 1, P - 1), 1);
        assert_eq!(add(P - 1, 1), 0);
        assert_eq!(sub(0, 1), P - 1);
        for a in [1u64, 2, 12345, P - 2, 1 << 40] {
            assert_eq!(mul(a, inv(a)), 1);
        }
    }

    proptest! {
        #[test]
        fn any_t_shares_reconstruct_and_fewer_do_not(seed: u64, secret: [u8; 32], n in 1usize..12, t_frac in 0.0f64..1.0) {
            let mut rng = ChaCha20Rng::seed_from_u64(seed);
            let t = 1 + ((n - 1) as f64 * t_frac) as usize;
            let holders: Vec<u32> = (0..n as u32).map(|i| i * 5 + 3).collect();
            let shares = split(&secret, t, &holders, &mut rng);
            // Every window of t consecutive holders reconstructs.
            for start in 0..=(n - t) {
                let pts: Vec<(u32, &Share)> = (start..start + t).map(|i| (holders[i], &shares[i])).collect();
                prop_assert_eq!(*combine(&pts).unwrap(), secret);
            }
            // All n shares reconstruct as well.
            let all: Vec<(u32, &Share)> = holders.iter().copied().zip(shares.iter()).collect();
            prop_assert_eq!(*combine(&all).unwrap(), secret);
            // t - 1 shares interpolate a different value (except with negligible probability).
            if t >= 2 {
                let pts: Vec<(u32, &Share)> = (0..t - 1).map(|i| (holders[i], &shares[i])).collect();
                prop_assert!(combine(&pts).map(|s| *s != secret).unwrap_or(true));
            }
        }
    }

    #[test]
    fn t_minus_one_shares_are_consistent_with_any_secret() {
        // Perfect secrecy, concretely: for t = 2, one share y = s + a*x; for any other
        // secret s' there is a coefficient a' giving the same y, so the share says nothing.
        let mut rng = ChaCha20Rng::seed_from_u64(1);
        let secret = [9u8; 32];
        let share = &split(&secret, 2, &[4, 8], &mut rng)[0];
        let x = x_of(4);
        let s0 = u64::from(u32::from_le_bytes([9, 9, 9, 9]));
        let a = mul(sub(share.ys[0], s0), inv(x));
        let other = 77u64;
        let a2 = mul(sub(share.ys[0], other), inv(x));
        assert_eq!(add(s0, mul(a, x)), add(other, mul(a2, x)));
    }

    #[test]
    fn tampered_or_repeated_shares_are_detected_or_wrong() {
        let mut rng = ChaCha20Rng::seed_from_u64(2);
        let secret = [1u8; 32];
        let holders = [1, 2, 3];
        let shares = split(&secret, 2, &holders, &mut rng);
        assert!(combine(&[(1, &shares[0]), (1, &shares[0])]).is_none());
        let mut bad = shares[1].clone();
        bad.ys[0] = add(bad.ys[0], 1);
        let got = combine(&[(1, &shares[0]), (2, &bad)]);
        assert!(got.map(|s| *s != secret).unwrap_or(true));
        assert!(Share::from_bytes(&[0xff; SHARE_BYTES]).is_none());
        assert!(Share::from_bytes(&[0; 3]).is_none());
        assert_eq!(
            Share::from_bytes(&shares[2].to_bytes()).as_ref(),
            Some(&shares[2])
        );
    }
}
