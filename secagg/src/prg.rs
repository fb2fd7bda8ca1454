//! Mask expansion: 256-bit seeds become keystreams that are added to (or subtracted
//! from) a vector of words, modulo 2^32 or 2^64.
//!
//! All masks of one vector are expanded together, one cache-sized chunk of the output at
//! a time: for each chunk, each mask's keystream is written into a small stack buffer and
//! added with wrapping arithmetic. The output is read and written once per call however
//! many masks there are, and no mask is ever materialised as a vector.

use aes::Aes128;
use chacha20::ChaCha20;
use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use zeroize::{Zeroize, Zeroizing};

use crate::params::MaskPrg;

/// Keystream bytes generated per mask per chunk. 16 KiB of keystream plus 16 KiB of output
/// stay in a 48 KiB L1 data cache, and the AES backends run at full speed at this size.
const CHUNK_BYTES: usize = 16 * 1024;

/// A mask seed: a 256-bit key for the keystream.
pub type Seed = Zeroizing<[u8; 32]>;

/// Whether a mask is added or subtracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Add,
    Sub,
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for u32 {}
    impl Sealed for u64 {}
}

/// A word of the masked arithmetic: `u32` or `u64` (sealed).
pub trait MaskWord: sealed::Sealed + Copy + Default + Send + Sync + 'static {
    const BYTES: usize;
    fn from_le(bytes: &[u8]) -> Self;
    fn wrapping_add(self, other: Self) -> Self;
    fn wrapping_sub(self, other: Self) -> Self;
    /// Two's complement embedding of a signed integer (wraps).
    fn from_i64(v: i64) -> Self;
    /// The centred representative in [-2^(b-1), 2^(b-1)).
    fn centred(self) -> i64;
}

impl MaskWord for u32 {
    const BYTES: usize = 4;
    #[inline(always)]
    fn from_le(b: &[u8]) -> Self {
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }
    #[inline(always)]
    fn wrapping_add(self, o: Self) -> Self {
        u32::wrapping_add(self, o)
    }
    #[inline(always)]
    fn wrapping_sub(self, o: Self) -> Self {
        u32::wrapping_sub(self, o)
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v as u32
    }
    #[inline(always)]
    fn centred(self) -> i64 {
        i64::from(self as i32)
    }
}

impl MaskWord for u64 {
    const BYTES: usize = 8;
    #[inline(always)]
    fn from_le(b: &[u8]) -> Self {
        u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
    }
    #[inline(always)]
    fn wrapping_add(self, o: Self) -> Self {
        u64::wrapping_add(self, o)
    }
    #[inline(always)]
    fn wrapping_sub(self, o: Self) -> Self {
        u64::wrapping_sub(self, o)
    }
    #[inline(always)]
    fn from_i64(v: i64) -> Self {
        v as u64
    }
    #[inline(always)]
    fn centred(self) -> i64 {
        self as i64
    }
}

/// One keystream, positioned at its start.
///
/// AES-128-CTR is `ctr::Ctr64LE<Aes128>` with a zero IV: block i is
/// AES_K(le64(i) || 0^64). (A hand-rolled variant writing counter blocks and calling
/// `encrypt_blocks` was measured no faster, so the well-kept crate is used as is.)
#[allow(missing_debug_implementations)]
pub enum Keystream {
    Aes(Box<ctr::Ctr64LE<Aes128>>),
    ChaCha20(Box<ChaCha20>),
}

impl Keystream {
    /// The keystream of `seed` (AES-128 uses its first 16 bytes; the IV/nonce is zero:
    /// every seed is a fresh key used for exactly one mask).
    pub fn new(prg: MaskPrg, seed: &[u8; 32]) -> Keystream {
        match prg {
            MaskPrg::Aes128Ctr => {
                let mut key = [0u8; 16];
                key.copy_from_slice(&seed[..16]);
                let ks = ctr::Ctr64LE::<Aes128>::new(&key.into(), &[0u8; 16].into());
                key.zeroize();
                Keystream::Aes(Box::new(ks))
            }
            MaskPrg::ChaCha20 => {
                Keystream::ChaCha20(Box::new(ChaCha20::new(seed.into(), &[0u8; 12].into())))
            }
        }
    }

    /// Positions the keystream at byte `offset`, so that several threads can each expand
    /// their own part of a vector.
    pub fn seek(&mut self, offset: u64) {
        match self {
            Keystream::Aes(c) => c.seek(offset),
            Keystream::ChaCha20(c) => c.seek(offset),
        }
    }

    /// Writes the next `buf.len()` keystream bytes.
    #[inline]
    pub fn fill(&mut self, buf: &mut [u8]) {
        match self {
            Keystream::Aes(c) => c.write_keystream(buf),
            Keystream::ChaCha20(c) => c.write_keystream(buf),
        }
    }
}

/// Adds (or subtracts) the keystream of each `(seed, sign)` to `out`, word by word,
/// modulo 2^(8 * W::BYTES). Words are read from the keystream in little-endian order.
pub fn apply_masks<W: MaskWord>(prg: MaskPrg, out: &mut [W], masks: &[(Seed, Sign)]) {
    expand(prg, out, masks, Unchanged);
}

/// [`apply_masks`] on `threads` threads, each expanding every mask over its own part of
/// `out` (the keystreams are seeked to the part's offset). Same result.
pub fn apply_masks_parallel<W: MaskWord>(
    prg: MaskPrg,
    out: &mut [W],
    masks: &[(Seed, Sign)],
    threads: usize,
) {
    // Parts start at multiples of 64 bytes of keystream, and of whole chunks.
    let align = CHUNK_BYTES / W::BYTES;
    let part = out.len().div_ceil(threads.max(1)).div_ceil(align) * align;
    if threads <= 1 || part >= out.len() {
        return apply_masks(prg, out, masks);
    }
    std::thread::scope(|scope| {
        for (i, piece) in out.chunks_mut(part).enumerate() {
            scope.spawn(move || {
                let offset = (i * part * W::BYTES) as u64;
                let mut streams: Vec<(Keystream, Sign)> = masks
                    .iter()
                    .map(|(s, sign)| {
                        let mut ks = Keystream::new(prg, s);
                        ks.seek(offset);
                        (ks, *sign)
                    })
                    .collect();
                expand_streams(piece, &mut streams, Unchanged);
            });
        }
    });
}

/// Writes the plain words of a chunk before the masks are added (see [`expand`]). A trait
/// rather than a closure so that `#[inline(always)]` carries the code into the
/// AVX2-compiled loop.
pub(crate) trait ChunkInit<W> {
    fn init(&mut self, start: usize, chunk: &mut [W]);
}

/// Leaves the words as they are.
struct Unchanged;

impl<W> ChunkInit<W> for Unchanged {
    #[inline(always)]
    fn init(&mut self, _start: usize, _chunk: &mut [W]) {}
}

/// Fills `out` chunk by chunk: `init.init(start, chunk)` writes the plain words of positions
/// `start..start + chunk.len()`, then every mask is added to the chunk while it is still
/// in cache.
pub(crate) fn expand<W: MaskWord, F: ChunkInit<W>>(
    prg: MaskPrg,
    out: &mut [W],
    masks: &[(Seed, Sign)],
    init: F,
) {
    let mut streams: Vec<(Keystream, Sign)> = masks
        .iter()
        .map(|(s, sign)| (Keystream::new(prg, s), *sign))
        .collect();
    expand_streams(out, &mut streams, init);
}

/// [`expand`] on keystreams already positioned at the start of `out`.
fn expand_streams<W: MaskWord, F: ChunkInit<W>>(
    out: &mut [W],
    streams: &mut [(Keystream, Sign)],
    init: F,
) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above. One of the workspace's two
        // uses of `unsafe` (calling a `#[target_feature]` function).
        #[allow(unsafe_code)]
        unsafe {
            expand_avx2(out, streams, init)
        };
        return;
    }
    expand_chunks(out, streams, init);
}

/// [`expand_chunks`] compiled for AVX2: the word additions and the quantization (inlined
/// through `init`) then use 256-bit vectors. About 15% faster per client than the SSE2
/// baseline; the keystreams pick their own SIMD backends at run time either way.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn expand_avx2<W: MaskWord, F: ChunkInit<W>>(
    out: &mut [W],
    streams: &mut [(Keystream, Sign)],
    init: F,
) {
    expand_chunks(out, streams, init);
}

#[inline(always)]
fn expand_chunks<W: MaskWord, F: ChunkInit<W>>(
    out: &mut [W],
    streams: &mut [(Keystream, Sign)],
    mut init: F,
) {
    let mut buf = Zeroizing::new([0u8; CHUNK_BYTES]);
    let words_per_chunk = CHUNK_BYTES / W::BYTES;
    for (i, chunk) in out.chunks_mut(words_per_chunk).enumerate() {
        init.init(i * words_per_chunk, chunk);
        let bytes = &mut buf[..chunk.len() * W::BYTES];
        for (stream, sign) in streams.iter_mut() {
            stream.fill(bytes);
            match sign {
                Sign::Add => add_words(chunk, bytes),
                Sign::Sub => sub_words(chunk, bytes),
            }
        }
    }
}

#[inline(always)]
fn add_words<W: MaskWord>(out: &mut [W], ks: &[u8]) {
    for (o, k) in out.iter_mut().zip(ks.chunks_exact(W::BYTES)) {
        *o = o.wrapping_add(W::from_le(k));
    }
}

#[inline(always)]
fn sub_words<W: MaskWord>(out: &mut [W], ks: &[u8]) {
    for (o, k) in out.iter_mut().zip(ks.chunks_exact(W::BYTES)) {
        *o = o.wrapping_sub(W::from_le(k));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seed(b: u8) -> Seed {
        Zeroizing::new([b; 32])
    }

    #[test]
    fn add_then_sub_cancels_for_both_prgs_and_words() {
        for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
            let orig: Vec<u32> = (0..10_000u32).collect();
            let mut v = orig.clone();
            apply_masks(prg, &mut v, &[(seed(1), Sign::Add), (seed(2), Sign::Add)]);
            assert_ne!(v, orig);
            apply_masks(prg, &mut v, &[(seed(2), Sign::Sub), (seed(1), Sign::Sub)]);
            assert_eq!(v, orig);
            let orig: Vec<u64> = (0..5_000u64).collect();
            let mut v = orig.clone();
            apply_masks(prg, &mut v, &[(seed(3), Sign::Sub)]);
            apply_masks(prg, &mut v, &[(seed(3), Sign::Add)]);
            assert_eq!(v, orig);
        }
    }

    #[test]
    fn expansion_is_a_prefix_stream_across_chunk_boundaries() {
        // A mask over a long vector starts with the mask over a short one, and equals the
        // raw keystream read as little-endian words.
        for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
            let long_len = CHUNK_BYTES / 4 * 2 + 3;
            let mut long = vec![0u32; long_len];
            apply_masks(prg, &mut long, &[(seed(9), Sign::Add)]);
            let mut short = vec![0u32; 5];
            apply_masks(prg, &mut short, &[(seed(9), Sign::Add)]);
            assert_eq!(&long[..5], &short[..]);
            let mut raw = vec![0u8; long_len * 4];
            Keystream::new(prg, &seed(9)).fill(&mut raw);
            let words: Vec<u32> = raw
                .chunks_exact(4)
                .map(<u32 as MaskWord>::from_le)
                .collect();
            assert_eq!(long, words);
        }
    }

    #[test]
    fn keystreams_continue_across_uneven_calls_and_seek() {
        for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
            let s = seed(6);
            let mut want = vec![0u8; 5000];
            Keystream::new(prg, &s).fill(&mut want);
            let mut ks = Keystream::new(prg, &s);
            let mut got = vec![0u8; 5000];
            let mut at = 0;
            for len in [3usize, 13, 16, 1, 31, 64, 1024, 7, 4, 8, 2000] {
                ks.fill(&mut got[at..at + len]);
                at += len;
            }
            ks.fill(&mut got[at..]);
            assert_eq!(got, want);
            let mut sought = Keystream::new(prg, &s);
            sought.seek(1024);
            let mut tail = vec![0u8; 100];
            sought.fill(&mut tail);
            assert_eq!(tail, want[1024..1124]);
        }
    }

    #[test]
    fn parallel_expansion_equals_sequential() {
        for prg in [MaskPrg::Aes128Ctr, MaskPrg::ChaCha20] {
            let masks = [
                (seed(1), Sign::Add),
                (seed(2), Sign::Sub),
                (seed(3), Sign::Add),
            ];
            let len = CHUNK_BYTES / 4 * 5 + 7;
            let plain: Vec<u32> = (0..len as u32).collect();
            let mut one = plain.clone();
            apply_masks(prg, &mut one, &masks);
            for threads in [2, 3, 8] {
                let mut v = plain.clone();
                apply_masks_parallel(prg, &mut v, &masks, threads);
                assert_eq!(v, one, "{prg:?} on {threads} threads");
            }
            let mut wide: Vec<u64> = vec![5; len];
            let mut wide_par = wide.clone();
            apply_masks(prg, &mut wide, &masks);
            apply_masks_parallel(prg, &mut wide_par, &masks, 2);
            assert_eq!(wide, wide_par);
        }
    }

    #[test]
    fn prgs_differ_and_seeds_differ() {
        let mut a = vec![0u32; 64];
        let mut b = vec![0u32; 64];
        let mut c = vec![0u32; 64];
        apply_masks(MaskPrg::Aes128Ctr, &mut a, &[(seed(1), Sign::Add)]);
        apply_masks(MaskPrg::ChaCha20, &mut b, &[(seed(1), Sign::Add)]);
        apply_masks(MaskPrg::Aes128Ctr, &mut c, &[(seed(2), Sign::Add)]);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn aes_keystream_matches_the_aes_block_function() {
        // Known answer: AES-128-CTR with a zero IV is AES_K(0), AES_K(1), ... (little-endian
        // 64-bit counter in the first half of the block).
        use aes::cipher::{BlockCipherEncrypt, KeyInit};
        let s = seed(5);
        let cipher = Aes128::new((&s[..16]).try_into().unwrap());
        let mut expected = Vec::new();
        for i in 0u64..3 {
            let mut block = [0u8; 16];
            block[..8].copy_from_slice(&i.to_le_bytes());
            let mut b = block.into();
            cipher.encrypt_block(&mut b);
            expected.extend_from_slice(&b[..]);
        }
        let mut got = vec![0u8; 48];
        Keystream::new(MaskPrg::Aes128Ctr, &s).fill(&mut got);
        assert_eq!(got, expected);
    }
}
