//! The lower bound a round's aggregation work could reach on this machine, measured in the
//! same run as the round: the bytes each party must process, divided by the rates at which
//! this machine's CPU does each kind of work (one core, best of a few repetitions).
//!
//! What a secure round's coordinator cannot avoid: decrypting what it receives (TLS 1.3 with
//! AES-256-GCM, the suite rustls with ring picks first), hashing it (each upload's SHA-256 is
//! what the facility's receipt and the ledger record), adding it into the running sum, and
//! expanding the masks it removes: one self mask per survivor and one pairwise mask per
//! (dropout, surviving neighbour) pair. A plain round's coordinator decrypts, hashes and adds
//! (f32 into an f64 sum). An agent expands its k + 1 masks (secure), hashes and encrypts its
//! upload; quantization, training and the key agreement are left out, so the agent's bound
//! is an underestimate.

use std::hint::black_box;
use std::time::{Duration, Instant};

use harambee_secagg::prg::{Sign, apply_masks};
use harambee_secagg::{MaskPrg, Params};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Bytes per second of each kind of work, on one core.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Rates {
    /// Mask keystream expanded and added into a vector of 32-bit words.
    pub keystream: f64,
    /// Little-endian 32-bit words added into a running sum (wrapping).
    pub add_words: f64,
    /// Little-endian f32 values added into an f64 running sum.
    pub add_f32: f64,
    pub sha256: f64,
    /// AES-256-GCM open of 16 KiB records (TLS 1.3 receive).
    pub tls_decrypt: f64,
    /// AES-256-GCM seal of 16 KiB records (TLS 1.3 send).
    pub tls_encrypt: f64,
}

fn best_of(reps: usize, mut f: impl FnMut()) -> Duration {
    (0..reps)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .min()
        .expect("at least one repetition")
}

impl Rates {
    /// Measures each rate over buffers of a few MiB (so memory bandwidth, not cache,
    /// limits them, as in a round of a large model); about a second in all.
    pub fn measure() -> Rates {
        const WORDS: usize = 1 << 22; // 16 MiB of 32-bit words
        const REPS: usize = 3;
        let bytes = (WORDS * 4) as f64;
        let rate = |d: Duration, n: f64| n / d.as_secs_f64().max(1e-9);

        let mut sum = vec![0u32; WORDS];
        let masks: Vec<(Zeroizing<[u8; 32]>, Sign)> = (0..4u8)
            .map(|i| (Zeroizing::new([i + 1; 32]), Sign::Add))
            .collect();
        let t = best_of(REPS, || {
            apply_masks(MaskPrg::Aes128Ctr, &mut sum, &masks);
            black_box(&sum);
        });
        let keystream = rate(t, bytes * masks.len() as f64);

        let input: Vec<u8> = (0..WORDS * 4).map(|i| i as u8).collect();
        let t = best_of(REPS, || {
            for (s, w) in sum.iter_mut().zip(input.chunks_exact(4)) {
                *s = s.wrapping_add(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            }
            black_box(&sum);
        });
        let add_words = rate(t, bytes);

        let mut acc = vec![0f64; WORDS];
        let t = best_of(REPS, || {
            for (s, w) in acc.iter_mut().zip(input.chunks_exact(4)) {
                *s += f64::from(f32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            }
            black_box(&acc);
        });
        let add_f32 = rate(t, bytes);

        let t = best_of(REPS, || {
            black_box(Sha256::digest(&input));
        });
        let sha256 = rate(t, bytes);

        let (tls_encrypt, tls_decrypt) = aes_gcm_rates(&input, REPS);
        Rates {
            keystream,
            add_words,
            add_f32,
            sha256,
            tls_decrypt,
            tls_encrypt,
        }
    }
}

/// Seal and open rates of AES-256-GCM over 16 KiB records, as TLS 1.3 moves bulk data.
fn aes_gcm_rates(input: &[u8], reps: usize) -> (f64, f64) {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    const RECORD: usize = 16 * 1024;
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[7u8; 32]).expect("a 32-byte key"));
    let nonce = |i: usize| {
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&(i as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let records: Vec<&[u8]> = input.chunks(RECORD).collect();
    // Each record is copied into a buffer and sealed or opened in place, as a TLS stack
    // reads a record into its buffer and decrypts it there.
    let mut buf = Vec::with_capacity(RECORD + AES_256_GCM.tag_len());
    let t_seal = best_of(reps, || {
        for (i, r) in records.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(r);
            key.seal_in_place_append_tag(nonce(i), Aad::empty(), &mut buf)
                .expect("sealing");
            black_box(&buf);
        }
    });
    let sealed: Vec<Vec<u8>> = records
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let mut b = r.to_vec();
            key.seal_in_place_append_tag(nonce(i), Aad::empty(), &mut b)
                .expect("sealing");
            b
        })
        .collect();
    let t_open = best_of(reps, || {
        for (i, s) in sealed.iter().enumerate() {
            buf.clear();
            buf.extend_from_slice(s);
            black_box(
                key.open_in_place(nonce(i), Aad::empty(), &mut buf)
                    .expect("opening")
                    .len(),
            );
        }
    });
    let n = input.len() as f64;
    (
        n / t_seal.as_secs_f64().max(1e-9),
        n / t_open.as_secs_f64().max(1e-9),
    )
}

/// A round's shape, as far as the bound needs it.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub agents: usize,
    pub dropouts: usize,
    /// Model parameters (d).
    pub params: usize,
    pub secure: bool,
    /// Neighbours of each client (k); unused for plain rounds.
    pub degree: usize,
    /// Bytes per masked word (4 or 8); unused for plain rounds.
    pub word_bytes: usize,
}

impl Shape {
    /// The shape of a secure round as an honest coordinator sizes it
    /// ([`Params::recommended`]).
    pub fn secure(
        agents: usize,
        dropouts: usize,
        params: usize,
        max_weight: u64,
        failure_probability: f64,
    ) -> anyhow::Result<Shape> {
        let ids: Vec<u32> = (1..=agents as u32).collect();
        let p = Params::recommended_for(
            1,
            &ids,
            params,
            1.0,
            max_weight,
            harambee_secagg::GraphTargets::with_failure_probability(failure_probability),
        )?;
        Ok(Shape {
            agents,
            dropouts,
            params,
            secure: true,
            degree: p.degree(),
            word_bytes: p.word.bytes(),
        })
    }

    pub fn plain(agents: usize, params: usize) -> Shape {
        Shape {
            agents,
            dropouts: 0,
            params,
            secure: false,
            degree: 0,
            word_bytes: 4,
        }
    }
}

/// The two bounds, in seconds of one core, with the coordinator's parts.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Bound {
    pub coordinator_s: f64,
    pub agent_s: f64,
    /// Bytes the coordinator receives (uploads only).
    pub received_bytes: f64,
    /// Mask keystream bytes the coordinator expands (secure rounds).
    pub keystream_bytes: f64,
}

impl Bound {
    /// The bound of `shape` at `rates`. In a secure round the survivors' pairwise masks
    /// with a dropout are counted at their expected number, degree × survivors / (n − 1)
    /// per dropout (the graph places clients at random).
    pub fn of(shape: &Shape, rates: &Rates) -> Bound {
        let survivors = (shape.agents - shape.dropouts) as f64;
        if shape.secure {
            let vector = ((shape.params + 1) * shape.word_bytes) as f64;
            let received = survivors * vector;
            let pairwise = shape.dropouts as f64 * shape.degree as f64 * survivors
                / (shape.agents.saturating_sub(1).max(1)) as f64;
            let keystream = (survivors + pairwise) * vector;
            let per_byte = 1.0 / rates.tls_decrypt + 1.0 / rates.sha256 + 1.0 / rates.add_words;
            let coordinator_s = received * per_byte + keystream / rates.keystream;
            let agent_s = (shape.degree as f64 + 1.0) * vector / rates.keystream
                + vector * (1.0 / rates.sha256 + 1.0 / rates.tls_encrypt);
            Bound {
                coordinator_s,
                agent_s,
                received_bytes: received,
                keystream_bytes: keystream,
            }
        } else {
            let update = (shape.params * 4) as f64;
            let received = shape.agents as f64 * update;
            let per_byte = 1.0 / rates.tls_decrypt + 1.0 / rates.sha256 + 1.0 / rates.add_f32;
            Bound {
                coordinator_s: received * per_byte,
                agent_s: update * (1.0 / rates.sha256 + 1.0 / rates.tls_encrypt),
                received_bytes: received,
                keystream_bytes: 0.0,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bound adds up the work the module docs list, byte for byte.
    #[test]
    fn a_bound_counts_each_byte_once_per_kind_of_work() {
        let rates = Rates {
            keystream: 10e9,
            add_words: 5e9,
            add_f32: 4e9,
            sha256: 2e9,
            tls_decrypt: 4e9,
            tls_encrypt: 4e9,
        };
        let shape = Shape {
            agents: 11,
            dropouts: 1,
            params: 999,
            secure: true,
            degree: 4,
            word_bytes: 4,
        };
        let b = Bound::of(&shape, &rates);
        // 10 survivors × 4000 bytes; 10 self masks + 1 × 4 × 10/10 pairwise masks.
        assert_eq!(b.received_bytes, 40_000.0);
        assert_eq!(b.keystream_bytes, 14.0 * 4000.0);
        let want = 40_000.0 * (1.0 / 4e9 + 1.0 / 2e9 + 1.0 / 5e9) + 56_000.0 / 10e9;
        assert!((b.coordinator_s - want).abs() < 1e-15, "{b:?}");
        let agent = 5.0 * 4000.0 / 10e9 + 4000.0 * (1.0 / 2e9 + 1.0 / 4e9);
        assert!((b.agent_s - agent).abs() < 1e-15, "{b:?}");

        let plain = Bound::of(&Shape::plain(10, 1000), &rates);
        assert_eq!(plain.received_bytes, 40_000.0);
        assert_eq!(plain.keystream_bytes, 0.0);
    }
}
