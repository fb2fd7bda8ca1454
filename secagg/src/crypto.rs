//! Key derivation, share encryption and signature transcripts.
//!
//! Every derivation uses HKDF-SHA256 with the round's parameter digest as salt and a
//! domain-separating label plus the ids involved as info, so keys never repeat across
//! rounds, pairs or purposes. Signatures cover the digest too.

use chacha20poly1305::aead::{Aead, Payload};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};
use hkdf::Hkdf;
use sha2::{Digest, Sha256};
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::prg::Seed;
use crate::shamir::{SHARE_BYTES, Share};

/// Plaintext of an encrypted share: sender, recipient, self-mask share, key share.
pub(crate) const SHARE_PLAINTEXT_BYTES: usize = 4 + 4 + 2 * SHARE_BYTES;
/// Ciphertext size of an encrypted share (plaintext plus the Poly1305 tag).
pub const SHARE_CIPHERTEXT_BYTES: usize = SHARE_PLAINTEXT_BYTES + 16;

fn hkdf32(digest: &[u8; 32], ikm: &[u8], label: &[u8], ids: &[u32]) -> Seed {
    let hk = Hkdf::<Sha256>::new(Some(digest), ikm);
    let mut info = Vec::with_capacity(label.len() + 4 * ids.len());
    info.extend_from_slice(label);
    for id in ids {
        info.extend_from_slice(&id.to_le_bytes());
    }
    let mut okm = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
    hk.expand(&info, &mut okm[..]).expect("32-byte HKDF output");
    okm
}

/// X25519 with a contributory check; `None` for a low-order peer key.
fn agree(secret: &StaticSecret, peer: &[u8; 32]) -> Option<Zeroizing<[u8; 32]>> {
    let shared = secret.diffie_hellman(&PublicKey::from(*peer));
    shared
        .was_contributory()
        .then(|| Zeroizing::new(shared.to_bytes()))
}

/// The seed of the pairwise mask between `a` and `b` (symmetric in a, b).
pub(crate) fn pairwise_seed(
    digest: &[u8; 32],
    my_secret: &StaticSecret,
    peer_public: &[u8; 32],
    a: u32,
    b: u32,
) -> Option<Seed> {
    pair_derive(
        b"harambee-secagg/v1/pairwise-mask",
        digest,
        my_secret,
        peer_public,
        a,
        b,
    )
}

/// The seed of client `id`'s self mask, from its secret b.
pub(crate) fn self_mask_seed(digest: &[u8; 32], b: &[u8; 32], id: u32) -> Seed {
    hkdf32(digest, b, b"harambee-secagg/v1/self-mask", &[id])
}

/// Commitment to b, published in the signed advertisement so the server can check the
/// value it reconstructs.
pub(crate) fn self_mask_commitment(digest: &[u8; 32], b: &[u8; 32], id: u32) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(b"harambee-secagg/v1/self-mask-commitment");
    h.update(digest);
    h.update(id.to_le_bytes());
    h.update(b);
    h.finalize().into()
}

/// The AEAD key for shares between `a` and `b` (both directions; nonces differ). `None`
/// for a low-order peer key.
pub(crate) fn share_key(
    digest: &[u8; 32],
    my_secret: &StaticSecret,
    peer_public: &[u8; 32],
    a: u32,
    b: u32,
) -> Option<Seed> {
    pair_derive(
        b"harambee-secagg/v1/share-encryption",
        digest,
        my_secret,
        peer_public,
        a,
        b,
    )
}

/// A key for the pair {a, b} from their X25519 agreement, separated by `label`.
fn pair_derive(
    label: &[u8],
    digest: &[u8; 32],
    my_secret: &StaticSecret,
    peer_public: &[u8; 32],
    a: u32,
    b: u32,
) -> Option<Seed> {
    let shared = agree(my_secret, peer_public)?;
    Some(hkdf32(digest, &shared[..], label, &[a.min(b), a.max(b)]))
}

fn share_nonce(sender: u32, recipient: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[..4].copy_from_slice(&sender.to_le_bytes());
    n[4..8].copy_from_slice(&recipient.to_le_bytes());
    n
}

fn share_aad(digest: &[u8; 32], sender: u32, recipient: u32) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"harambee-secagg/v1/share");
    aad.extend_from_slice(digest);
    aad.extend_from_slice(&sender.to_le_bytes());
    aad.extend_from_slice(&recipient.to_le_bytes());
    aad
}

/// Encrypts `sender`'s shares for `recipient` under their [`share_key`].
pub(crate) fn seal_share(
    digest: &[u8; 32],
    key: &Seed,
    sender: u32,
    recipient: u32,
    self_mask_share: &Share,
    key_share: &Share,
) -> Vec<u8> {
    let mut plain = Zeroizing::new([0u8; SHARE_PLAINTEXT_BYTES]);
    plain[..4].copy_from_slice(&sender.to_le_bytes());
    plain[4..8].copy_from_slice(&recipient.to_le_bytes());
    plain[8..8 + SHARE_BYTES].copy_from_slice(&self_mask_share.to_bytes());
    plain[8 + SHARE_BYTES..].copy_from_slice(&key_share.to_bytes());
    let aead = ChaCha20Poly1305::new((&**key).into());
    let aad = share_aad(digest, sender, recipient);
    // ChaCha20-Poly1305 only fails for messages beyond 256 GiB.
    aead.encrypt(
        &share_nonce(sender, recipient).into(),
        Payload {
            msg: &plain[..],
            aad: &aad,
        },
    )
    .expect("share plaintext is tiny")
}

/// Decrypts and parses the shares `sender` sent to `recipient`: (self-mask share, key
/// share). `None` if anything is off.
pub(crate) fn open_share(
    digest: &[u8; 32],
    key: &Seed,
    sender: u32,
    recipient: u32,
    ciphertext: &[u8],
) -> Option<(Share, Share)> {
    if ciphertext.len() != SHARE_CIPHERTEXT_BYTES {
        return None;
    }
    let aead = ChaCha20Poly1305::new((&**key).into());
    let aad = share_aad(digest, sender, recipient);
    let plain = Zeroizing::new(
        aead.decrypt(
            &share_nonce(sender, recipient).into(),
            Payload {
                msg: ciphertext,
                aad: &aad,
            },
        )
        .ok()?,
    );
    if plain[..4] != sender.to_le_bytes() || plain[4..8] != recipient.to_le_bytes() {
        return None;
    }
    let b = Share::from_bytes(&plain[8..8 + SHARE_BYTES])?;
    let s = Share::from_bytes(&plain[8 + SHARE_BYTES..])?;
    Some((b, s))
}

/// What a client signs to advertise its keys.
pub(crate) fn advertisement_transcript(
    digest: &[u8; 32],
    sender: u32,
    cipher_public: &[u8; 32],
    mask_public: &[u8; 32],
    commitment: &[u8; 32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(160);
    m.extend_from_slice(b"harambee-secagg/v1/advertise");
    m.extend_from_slice(digest);
    m.extend_from_slice(&sender.to_le_bytes());
    m.extend_from_slice(cipher_public);
    m.extend_from_slice(mask_public);
    m.extend_from_slice(commitment);
    m
}

/// What a client signs in the consistency check: the survivor and dropout sets.
pub(crate) fn consistency_transcript(
    digest: &[u8; 32],
    signer: u32,
    survivors: &[u32],
    dropouts: &[u32],
) -> Vec<u8> {
    let mut m = Vec::with_capacity(64 + 4 * (survivors.len() + dropouts.len()));
    m.extend_from_slice(b"harambee-secagg/v1/consistency");
    m.extend_from_slice(digest);
    m.extend_from_slice(&signer.to_le_bytes());
    for list in [survivors, dropouts] {
        m.extend_from_slice(&(list.len() as u64).to_le_bytes());
        for id in list {
            m.extend_from_slice(&id.to_le_bytes());
        }
    }
    m
}

/// The X25519 public key of a secret given as bytes (for checking a reconstructed key).
pub(crate) fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    PublicKey::from(&StaticSecret::from(*secret)).to_bytes()
}

#[cfg(test)]
mod tests {
    use chacha20::ChaCha20Rng;
    use rand_core::SeedableRng;

    use super::*;

    #[test]
    fn shares_round_trip_and_are_bound_to_round_and_direction() {
        let mut rng = ChaCha20Rng::seed_from_u64(3);
        let a = StaticSecret::random_from_rng(&mut rng);
        let b = StaticSecret::random_from_rng(&mut rng);
        let pa = PublicKey::from(&a).to_bytes();
        let pb = PublicKey::from(&b).to_bytes();
        let d1 = [1u8; 32];
        let d2 = [2u8; 32];
        let s1 = Share { ys: [1; 8] };
        let s2 = Share { ys: [2; 8] };
        let ka = share_key(&d1, &a, &pb, 10, 20).unwrap();
        let kb = share_key(&d1, &b, &pa, 20, 10).unwrap();
        assert_eq!(*ka, *kb, "both ends derive the same key");
        let ct = seal_share(&d1, &ka, 10, 20, &s1, &s2);
        assert_eq!(ct.len(), SHARE_CIPHERTEXT_BYTES);
        let (x, y) = open_share(&d1, &kb, 10, 20, &ct).unwrap();
        assert_eq!((x, y), (s1, s2));
        let other_round = share_key(&d2, &b, &pa, 20, 10).unwrap();
        assert!(
            open_share(&d2, &other_round, 10, 20, &ct).is_none(),
            "other round"
        );
        assert!(
            open_share(&d1, &kb, 20, 10, &ct).is_none(),
            "other direction"
        );
        assert!(
            open_share(&d1, &kb, 10, 21, &ct).is_none(),
            "other recipient"
        );
        let mut tampered = ct.clone();
        tampered[3] ^= 1;
        assert!(open_share(&d1, &kb, 10, 20, &tampered).is_none());
        assert!(
            share_key(&d1, &a, &[0u8; 32], 10, 20).is_none(),
            "low-order key"
        );
    }

    #[test]
    fn pairwise_seed_is_symmetric_and_low_order_keys_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(4);
        let a = StaticSecret::random_from_rng(&mut rng);
        let b = StaticSecret::random_from_rng(&mut rng);
        let pa = PublicKey::from(&a).to_bytes();
        let pb = PublicKey::from(&b).to_bytes();
        let d = [7u8; 32];
        assert_eq!(
            *pairwise_seed(&d, &a, &pb, 1, 2).unwrap(),
            *pairwise_seed(&d, &b, &pa, 2, 1).unwrap()
        );
        assert_ne!(
            *pairwise_seed(&d, &a, &pb, 1, 2).unwrap(),
            *pairwise_seed(&[8u8; 32], &a, &pb, 1, 2).unwrap()
        );
        assert!(pairwise_seed(&d, &a, &[0u8; 32], 1, 2).is_none());
        assert_eq!(public_of(&a.to_bytes()), pa);
    }
}
