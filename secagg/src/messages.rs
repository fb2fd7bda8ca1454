//! The messages of the protocol and their canonical binary encoding.
//!
//! Every encoding is `[version = 1][tag][body]`, integers little-endian, variable-length
//! fields prefixed by a u32 count. Decoding checks every length against the bytes that
//! remain before allocating, rejects trailing bytes, and never panics. A list of messages
//! (`Vec<T>`) encodes as `[version][0x80 | tag][u32 count][bodies]`.
//!
//! Messages travel through the server. Which ones go where:
//!
//! | stage | client sends (to the server) | server routes (to each client) |
//! |---|---|---|
//! | advertise keys | [`SignedAdvertisement`] | `Vec<SignedAdvertisement>` of its live neighbours |
//! | share keys | `Vec<EncryptedShare>`, one per live neighbour | `Vec<EncryptedShare>` addressed to it |
//! | masked input | [`MaskedInput`] | [`UnmaskRequest`] |
//! | consistency check (optional) | [`ConsistencySignature`] | [`ConsistencyProof`] |
//! | unmasking | [`UnmaskShares`] | — (the server outputs the [`crate::Aggregate`]) |

use crate::error::DecodeError;
use crate::params::Word;
use crate::shamir::SHARE_BYTES;

/// Version byte of every encoding.
pub const ENCODING_VERSION: u8 = 1;

/// A client's two X25519 public keys (one to encrypt shares, one to agree mask seeds) and
/// its commitment to its self-mask secret, signed with its Ed25519 identity key over the
/// round's parameter digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedAdvertisement {
    pub round_id: u64,
    pub sender: u32,
    pub cipher_public: [u8; 32],
    pub mask_public: [u8; 32],
    pub self_mask_commitment: [u8; 32],
    pub signature: [u8; 64],
}

/// Shamir shares of the sender's self-mask secret and mask key, encrypted to one
/// neighbour with ChaCha20-Poly1305 (the server cannot read them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptedShare {
    pub round_id: u64,
    pub sender: u32,
    pub recipient: u32,
    pub ciphertext: Vec<u8>,
}

/// A masked vector: d quantized, weighted values and then the weight, plus masks, modulo
/// 2^b. The variant matches [`crate::Params::word`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MaskedWords {
    U32(Vec<u32>),
    U64(Vec<u64>),
}

impl MaskedWords {
    /// The word size.
    pub fn word(&self) -> Word {
        match self {
            MaskedWords::U32(_) => Word::U32,
            MaskedWords::U64(_) => Word::U64,
        }
    }

    /// Number of words (d + 1).
    pub fn len(&self) -> usize {
        match self {
            MaskedWords::U32(v) => v.len(),
            MaskedWords::U64(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The words as little-endian bytes (what goes on the wire; stream it in chunks).
    pub fn to_le_bytes(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.len() * self.word().bytes()];
        match self {
            MaskedWords::U32(v) => {
                for (chunk, w) in out.chunks_exact_mut(4).zip(v) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
            }
            MaskedWords::U64(v) => {
                for (chunk, w) in out.chunks_exact_mut(8).zip(v) {
                    chunk.copy_from_slice(&w.to_le_bytes());
                }
            }
        }
        out
    }

    /// Parses little-endian words (the concatenated chunks).
    pub fn from_le_bytes(word: Word, bytes: &[u8]) -> Result<MaskedWords, DecodeError> {
        if !bytes.len().is_multiple_of(word.bytes()) {
            return Err(DecodeError::Misaligned {
                len: bytes.len(),
                word_bytes: word.bytes(),
            });
        }
        Ok(match word {
            Word::U32 => MaskedWords::U32(
                bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Word::U64 => MaskedWords::U64(
                bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
                    .collect(),
            ),
        })
    }
}

/// A client's masked input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MaskedInput {
    pub round_id: u64,
    pub sender: u32,
    pub words: MaskedWords,
}

/// The server's request to unmask: who sent a masked input (survivors; their self masks
/// are removed) and who shared keys but did not (dropouts; their pairwise masks are
/// removed). Sorted, disjoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskRequest {
    pub round_id: u64,
    pub survivors: Vec<u32>,
    pub dropouts: Vec<u32>,
}

/// One Shamir share revealed to the server: the share `sender` holds of `owner`'s secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealedShare {
    pub owner: u32,
    pub share: [u8; SHARE_BYTES],
}

/// A client's answer to the unmask request: its shares of each surviving neighbour's
/// self-mask secret and of each dropped neighbour's mask key, never both for one owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnmaskShares {
    pub round_id: u64,
    pub sender: u32,
    pub self_mask_shares: Vec<RevealedShare>,
    pub key_shares: Vec<RevealedShare>,
}

/// Consistency check: a client's signature over the survivor and dropout sets it was
/// sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencySignature {
    pub round_id: u64,
    pub sender: u32,
    pub signature: [u8; 64],
}

/// Consistency check: the sets and everyone's signatures over them, sent to each signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsistencyProof {
    pub round_id: u64,
    pub survivors: Vec<u32>,
    pub dropouts: Vec<u32>,
    pub signatures: Vec<(u32, [u8; 64])>,
}

/// Canonical binary encoding of a protocol message.
pub trait Message: Sized {
    /// The tag byte after the version.
    const TAG: u8;
    #[doc(hidden)]
    fn write_body(&self, w: &mut Vec<u8>);
    #[doc(hidden)]
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Smallest possible body, used to bound list counts before allocating.
    #[doc(hidden)]
    const MIN_BODY: usize;

    /// The canonical encoding.
    fn encode(&self) -> Vec<u8> {
        let mut w = vec![ENCODING_VERSION, Self::TAG];
        self.write_body(&mut w);
        w
    }

    /// Parses a canonical encoding; any other byte string is an error.
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        r.header(Self::TAG)?;
        let v = Self::read_body(&mut r)?;
        r.finish()?;
        Ok(v)
    }
}

/// Encodes a list of messages.
pub fn encode_list<T: Message>(items: &[T]) -> Vec<u8> {
    let mut w = vec![ENCODING_VERSION, 0x80 | T::TAG];
    put_u32(&mut w, items.len() as u32);
    for item in items {
        item.write_body(&mut w);
    }
    w
}

/// Decodes a list of messages encoded by [`encode_list`].
pub fn decode_list<T: Message>(bytes: &[u8]) -> Result<Vec<T>, DecodeError> {
    let mut r = Reader::new(bytes);
    r.header(0x80 | T::TAG)?;
    let count = r.count(T::MIN_BODY)?;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        out.push(T::read_body(&mut r)?);
    }
    r.finish()?;
    Ok(out)
}

impl Message for SignedAdvertisement {
    const TAG: u8 = 1;
    const MIN_BODY: usize = 8 + 4 + 96 + 64;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_u32(w, self.sender);
        w.extend_from_slice(&self.cipher_public);
        w.extend_from_slice(&self.mask_public);
        w.extend_from_slice(&self.self_mask_commitment);
        w.extend_from_slice(&self.signature);
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(SignedAdvertisement {
            round_id: r.u64()?,
            sender: r.u32()?,
            cipher_public: r.array()?,
            mask_public: r.array()?,
            self_mask_commitment: r.array()?,
            signature: r.array()?,
        })
    }
}

impl Message for EncryptedShare {
    const TAG: u8 = 2;
    const MIN_BODY: usize = 8 + 4 + 4 + 4;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_u32(w, self.sender);
        put_u32(w, self.recipient);
        put_bytes(w, &self.ciphertext);
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(EncryptedShare {
            round_id: r.u64()?,
            sender: r.u32()?,
            recipient: r.u32()?,
            ciphertext: r.bytes()?.to_vec(),
        })
    }
}

impl Message for MaskedInput {
    const TAG: u8 = 3;
    const MIN_BODY: usize = 8 + 4 + 1 + 4;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_u32(w, self.sender);
        w.push(self.words.word().tag());
        put_u32(w, self.words.len() as u32);
        w.extend_from_slice(&self.words.to_le_bytes());
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let round_id = r.u64()?;
        let sender = r.u32()?;
        let tag = r.u8()?;
        let word = Word::from_tag(tag).ok_or(DecodeError::WordTag(tag))?;
        let count = r.count(word.bytes())?;
        let words = MaskedWords::from_le_bytes(word, r.take(count * word.bytes())?)?;
        Ok(MaskedInput {
            round_id,
            sender,
            words,
        })
    }
}

impl Message for UnmaskRequest {
    const TAG: u8 = 4;
    const MIN_BODY: usize = 8 + 4 + 4;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_ids(w, &self.survivors);
        put_ids(w, &self.dropouts);
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(UnmaskRequest {
            round_id: r.u64()?,
            survivors: r.ids()?,
            dropouts: r.ids()?,
        })
    }
}

impl Message for UnmaskShares {
    const TAG: u8 = 5;
    const MIN_BODY: usize = 8 + 4 + 4 + 4;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_u32(w, self.sender);
        for list in [&self.self_mask_shares, &self.key_shares] {
            put_u32(w, list.len() as u32);
            for s in list {
                put_u32(w, s.owner);
                w.extend_from_slice(&s.share);
            }
        }
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let round_id = r.u64()?;
        let sender = r.u32()?;
        let mut lists = [Vec::new(), Vec::new()];
        for list in lists.iter_mut() {
            let count = r.count(4 + SHARE_BYTES)?;
            for _ in 0..count {
                list.push(RevealedShare {
                    owner: r.u32()?,
                    share: r.array()?,
                });
            }
        }
        let [self_mask_shares, key_shares] = lists;
        Ok(UnmaskShares {
            round_id,
            sender,
            self_mask_shares,
            key_shares,
        })
    }
}

impl Message for ConsistencySignature {
    const TAG: u8 = 6;
    const MIN_BODY: usize = 8 + 4 + 64;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_u32(w, self.sender);
        w.extend_from_slice(&self.signature);
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(ConsistencySignature {
            round_id: r.u64()?,
            sender: r.u32()?,
            signature: r.array()?,
        })
    }
}

impl Message for ConsistencyProof {
    const TAG: u8 = 7;
    const MIN_BODY: usize = 8 + 4 + 4 + 4;
    fn write_body(&self, w: &mut Vec<u8>) {
        put_u64(w, self.round_id);
        put_ids(w, &self.survivors);
        put_ids(w, &self.dropouts);
        put_u32(w, self.signatures.len() as u32);
        for (id, sig) in &self.signatures {
            put_u32(w, *id);
            w.extend_from_slice(sig);
        }
    }
    fn read_body(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let round_id = r.u64()?;
        let survivors = r.ids()?;
        let dropouts = r.ids()?;
        let count = r.count(4 + 64)?;
        let mut signatures = Vec::with_capacity(count);
        for _ in 0..count {
            signatures.push((r.u32()?, r.array()?));
        }
        Ok(ConsistencyProof {
            round_id,
            survivors,
            dropouts,
            signatures,
        })
    }
}

fn put_u32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

fn put_bytes(w: &mut Vec<u8>, b: &[u8]) {
    put_u32(w, b.len() as u32);
    w.extend_from_slice(b);
}

fn put_ids(w: &mut Vec<u8>, ids: &[u32]) {
    put_u32(w, ids.len() as u32);
    for id in ids {
        put_u32(w, *id);
    }
}

/// A bounds-checked cursor over an encoding.
#[doc(hidden)]
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A u32 count of items of at least `min_item_bytes` each, checked against what remains.
    fn count(&mut self, min_item_bytes: usize) -> Result<usize, DecodeError> {
        let count = self.u32()? as usize;
        let needed = count.saturating_mul(min_item_bytes.max(1));
        if needed > self.remaining() {
            return Err(DecodeError::Truncated {
                offset: self.pos,
                needed: needed - self.remaining(),
            });
        }
        Ok(count)
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let n = self.count(1)?;
        self.take(n)
    }

    fn ids(&mut self) -> Result<Vec<u32>, DecodeError> {
        let n = self.count(4)?;
        (0..n).map(|_| self.u32()).collect()
    }

    fn header(&mut self, tag: u8) -> Result<(), DecodeError> {
        let version = self.u8()?;
        if version != ENCODING_VERSION {
            return Err(DecodeError::Version(version));
        }
        let got = self.u8()?;
        if got != tag {
            return Err(DecodeError::Tag { expected: tag, got });
        }
        Ok(())
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn samples() -> (
        SignedAdvertisement,
        EncryptedShare,
        MaskedInput,
        MaskedInput,
        UnmaskRequest,
        UnmaskShares,
        ConsistencySignature,
        ConsistencyProof,
    ) {
        (
            SignedAdvertisement {
                round_id: 9,
                sender: 3,
                cipher_public: [1; 32],
                mask_public: [2; 32],
                self_mask_commitment: [3; 32],
                signature: [4; 64],
            },
            EncryptedShare {
                round_id: 9,
                sender: 3,
                recipient: 4,
                ciphertext: vec![5; 17],
            },
            MaskedInput {
                round_id: 9,
                sender: 3,
                words: MaskedWords::U32(vec![1, 2, u32::MAX]),
            },
            MaskedInput {
                round_id: 9,
                sender: 3,
                words: MaskedWords::U64(vec![u64::MAX, 0]),
            },
            UnmaskRequest {
                round_id: 9,
                survivors: vec![1, 2, 3],
                dropouts: vec![4],
            },
            UnmaskShares {
                round_id: 9,
                sender: 3,
                self_mask_shares: vec![RevealedShare {
                    owner: 1,
                    share: [6; SHARE_BYTES],
                }],
                key_shares: vec![RevealedShare {
                    owner: 4,
                    share: [7; SHARE_BYTES],
                }],
            },
            ConsistencySignature {
                round_id: 9,
                sender: 3,
                signature: [8; 64],
            },
            ConsistencyProof {
                round_id: 9,
                survivors: vec![1, 3],
                dropouts: vec![],
                signatures: vec![(1, [9; 64]), (3, [10; 64])],
            },
        )
    }

    fn round_trip<T: Message + PartialEq + std::fmt::Debug>(m: &T) -> Vec<u8> {
        let bytes = m.encode();
        assert_eq!(&T::decode(&bytes).unwrap(), m);
        // Every strict prefix and any extension is rejected.
        for cut in 0..bytes.len() {
            assert!(T::decode(&bytes[..cut]).is_err(), "prefix {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            T::decode(&longer).unwrap_err(),
            DecodeError::TrailingBytes(1)
        );
        bytes
    }

    #[test]
    fn every_message_round_trips_and_rejects_truncation() {
        let (a, b, c, c64, d, e, f, g) = samples();
        round_trip(&a);
        round_trip(&b);
        let bytes = round_trip(&c);
        assert_eq!(bytes.len(), 2 + 8 + 4 + 1 + 4 + 12);
        round_trip(&c64);
        round_trip(&d);
        round_trip(&e);
        round_trip(&f);
        round_trip(&g);
        let list = encode_list(&[b.clone(), b.clone()]);
        assert_eq!(
            decode_list::<EncryptedShare>(&list).unwrap(),
            vec![b.clone(), b]
        );
        assert!(decode_list::<SignedAdvertisement>(&list).is_err());
        assert_eq!(
            decode_list::<SignedAdvertisement>(&encode_list::<SignedAdvertisement>(&[])).unwrap(),
            vec![]
        );
    }

    #[test]
    fn wrong_version_tag_and_word_size_are_typed_errors() {
        let (a, _, c, ..) = samples();
        let mut bytes = a.encode();
        bytes[0] = 2;
        assert_eq!(
            SignedAdvertisement::decode(&bytes).unwrap_err(),
            DecodeError::Version(2)
        );
        assert_eq!(
            MaskedInput::decode(&a.encode()).unwrap_err(),
            DecodeError::Tag {
                expected: 3,
                got: 1
            }
        );
        let mut bytes = c.encode();
        bytes[14] = 5;
        assert_eq!(
            MaskedInput::decode(&bytes).unwrap_err(),
            DecodeError::WordTag(5)
        );
        assert_eq!(
            MaskedWords::from_le_bytes(Word::U64, &[0; 12]).unwrap_err(),
            DecodeError::Misaligned {
                len: 12,
                word_bytes: 8
            }
        );
    }

    #[test]
    fn huge_counts_do_not_allocate() {
        // A masked input claiming 2^32 - 1 words in 20 bytes.
        let mut bytes = vec![ENCODING_VERSION, 3];
        bytes.extend_from_slice(&9u64.to_le_bytes());
        bytes.extend_from_slice(&3u32.to_le_bytes());
        bytes.push(4);
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            MaskedInput::decode(&bytes),
            Err(DecodeError::Truncated { .. })
        ));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = SignedAdvertisement::decode(&bytes);
            let _ = EncryptedShare::decode(&bytes);
            let _ = MaskedInput::decode(&bytes);
            let _ = UnmaskRequest::decode(&bytes);
            let _ = UnmaskShares::decode(&bytes);
            let _ = ConsistencySignature::decode(&bytes);
            let _ = ConsistencyProof::decode(&bytes);
            let _ = decode_list::<EncryptedShare>(&bytes);
        }

        #[test]
        fn mutated_encodings_never_panic(pos in 0usize..400, byte: u8) {
            let (a, b, c, _, d, e, f, g) = samples();
            for mut bytes in [a.encode(), b.encode(), c.encode(), d.encode(), e.encode(), f.encode(), g.encode()] {
                let p = pos % bytes.len();
                bytes[p] = byte;
                let _ = SignedAdvertisement::decode(&bytes);
                let _ = EncryptedShare::decode(&bytes);
                let _ = MaskedInput::decode(&bytes);
                let _ = UnmaskRequest::decode(&bytes);
                let _ = UnmaskShares::decode(&bytes);
                let _ = ConsistencySignature::decode(&bytes);
                let _ = ConsistencyProof::decode(&bytes);
            }
        }
    }
}
