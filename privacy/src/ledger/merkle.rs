//! The Merkle tree of RFC 9162 §2.1 (Certificate Transparency 2.0; the same tree as RFC 6962).
//!
//! For a list `D[n]` of leaf inputs, with `k` the largest power of two below `n`:
//!
//! - `MTH({}) = SHA-256()`;
//! - `MTH({d}) = SHA-256(0x00 || d)`;
//! - `MTH(D[n]) = SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))`.
//!
//! Inclusion proofs (`PATH`, §2.1.3.1) and consistency proofs (`PROOF`/`SUBPROOF`, §2.1.4.1)
//! are generated from those definitions and checked with the verification algorithms of
//! §2.1.3.2 and §2.1.4.2, plus the edge cases of the reference implementation
//! (transparency-dev/merkle): a consistency proof between equal sizes is empty and the roots must
//! be equal; any tree is consistent with the empty tree, by an empty proof.
//!
//! [`MerkleTree`] keeps every complete subtree's hash, so appending costs O(log n) hashes and a
//! root or proof for any earlier size costs O(log² n) at worst.

use sha2::{Digest, Sha256};

use super::{LedgerError, Sha256Digest};

/// Prefix of a leaf's hash input.
pub const LEAF_PREFIX: u8 = 0x00;
/// Prefix of an interior node's hash input.
pub const NODE_PREFIX: u8 = 0x01;

/// `SHA-256(0x00 || data)`: the hash of a leaf whose input is `data`.
pub fn hash_leaf(data: &[u8]) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update([LEAF_PREFIX]);
    h.update(data);
    Sha256Digest(h.finalize().into())
}

/// `SHA-256(0x01 || left || right)`: the hash of an interior node.
pub fn hash_children(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    let mut h = Sha256::new();
    h.update([NODE_PREFIX]);
    h.update(left.0);
    h.update(right.0);
    Sha256Digest(h.finalize().into())
}

/// The root of the empty tree, `SHA-256()` of nothing.
pub fn empty_root() -> Sha256Digest {
    Sha256Digest::of(&[])
}

/// An append-only Merkle tree over leaf hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[h][i]` is the hash of the complete subtree of `2^h` leaves starting at leaf
    /// `i · 2^h`; `levels[0]` are the leaf hashes.
    levels: Vec<Vec<Sha256Digest>>,
}

impl Default for MerkleTree {
    fn default() -> MerkleTree {
        MerkleTree::new()
    }
}

impl MerkleTree {
    pub fn new() -> MerkleTree {
        MerkleTree {
            levels: vec![Vec::new()],
        }
    }

    /// A tree over these leaf hashes, in order.
    pub fn from_leaf_hashes(leaf_hashes: impl IntoIterator<Item = Sha256Digest>) -> MerkleTree {
        let mut tree = MerkleTree::new();
        for h in leaf_hashes {
            tree.push(h);
        }
        tree
    }

    /// Appends a leaf by its hash ([`hash_leaf`] of its input); returns its index.
    pub fn push(&mut self, leaf_hash: Sha256Digest) -> u64 {
        let index = self.size();
        self.levels[0].push(leaf_hash);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let n = self.levels[level].len();
            let parent = hash_children(&self.levels[level][n - 2], &self.levels[level][n - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
        index
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels[0].len() as u64
    }

    pub fn leaf_hash(&self, index: u64) -> Option<Sha256Digest> {
        self.levels[0].get(usize::try_from(index).ok()?).copied()
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Sha256Digest {
        self.subtree(0, self.size())
    }

    /// The root the tree had when it held its first `tree_size` leaves.
    pub fn root_at(&self, tree_size: u64) -> Result<Sha256Digest, LedgerError> {
        self.check_size(tree_size)?;
        Ok(self.subtree(0, tree_size))
    }

    /// The audit path `PATH(index, D[tree_size])` (RFC 9162 §2.1.3.1), leaf-side first.
    pub fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Sha256Digest>, LedgerError> {
        self.check_size(tree_size)?;
        if index >= tree_size {
            return Err(LedgerError::IndexOutOfRange { index, tree_size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, tree_size, &mut proof);
        Ok(proof)
    }

    /// The consistency proof `PROOF(old_size, D[new_size])` (RFC 9162 §2.1.4.1); empty when
    /// `old_size` is 0 or equals `new_size`.
    pub fn consistency_proof(
        &self,
        old_size: u64,
        new_size: u64,
    ) -> Result<Vec<Sha256Digest>, LedgerError> {
        self.check_size(new_size)?;
        if old_size > new_size {
            return Err(LedgerError::SizesOutOfOrder { old_size, new_size });
        }
        let mut proof = Vec::new();
        if old_size > 0 {
            self.subproof(old_size, 0, new_size, true, &mut proof);
        }
        Ok(proof)
    }

    fn check_size(&self, tree_size: u64) -> Result<(), LedgerError> {
        if tree_size > self.size() {
            return Err(LedgerError::TreeSizeOutOfRange {
                tree_size,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// `MTH(D[start : start + n])`. Every range the recursion reaches from `(0, size)` starts at
    /// a multiple of its own size rounded up to a power of two, so each power-of-two range is a
    /// stored complete subtree.
    fn subtree(&self, start: u64, n: u64) -> Sha256Digest {
        if n == 0 {
            return empty_root();
        }
        if n.is_power_of_two() && start.is_multiple_of(n) {
            let h = n.trailing_zeros() as usize;
            return self.levels[h][(start >> h) as usize];
        }
        let k = split(n);
        hash_children(&self.subtree(start, k), &self.subtree(start + k, n - k))
    }

    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Sha256Digest>) {
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, k, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.subtree(start, k));
        }
    }

    fn subproof(&self, m: u64, start: u64, n: u64, complete: bool, out: &mut Vec<Sha256Digest>) {
        if m == n {
            if !complete {
                out.push(self.subtree(start, n));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, k, complete, out);
            out.push(self.subtree(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.subtree(start, k));
        }
    }
}

/// The largest power of two strictly below `n` (`n ≥ 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Checks that `proof` shows the leaf with hash `leaf_hash` at `index` in the tree of
/// `tree_size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Sha256Digest,
    index: u64,
    tree_size: u64,
    proof: &[Sha256Digest],
    root: &Sha256Digest,
) -> Result<(), LedgerError> {
    if index >= tree_size {
        return Err(LedgerError::IndexOutOfRange { index, tree_size });
    }
    let (mut fnode, mut snode) = (index, tree_size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if snode == 0 {
            return Err(LedgerError::InvalidProof("inclusion proof too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            r = hash_children(p, &r);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            r = hash_children(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(LedgerError::InvalidProof("inclusion proof too short"));
    }
    if r != *root {
        return Err(LedgerError::RootMismatch);
    }
    Ok(())
}

/// Checks that the tree of `new_size` leaves with root `new_root` extends the tree of
/// `old_size` leaves with root `old_root` (RFC 9162 §2.1.4.2): the old tree is a prefix of the
/// new one, so nothing that was logged has been changed or removed.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Sha256Digest,
    new_root: &Sha256Digest,
    proof: &[Sha256Digest],
) -> Result<(), LedgerError> {
    if old_size > new_size {
        return Err(LedgerError::SizesOutOfOrder { old_size, new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(LedgerError::InvalidProof(
                "consistency proof between equal sizes must be empty",
            ));
        }
        return if old_root == new_root {
            Ok(())
        } else {
            Err(LedgerError::RootMismatch)
        };
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(LedgerError::InvalidProof(
                "consistency proof from the empty tree must be empty",
            ));
        }
        return if *old_root == empty_root() {
            Ok(())
        } else {
            Err(LedgerError::RootMismatch)
        };
    }
    let Some((first, rest)) = proof.split_first() else {
        return Err(LedgerError::InvalidProof("empty consistency proof"));
    };
    // Step 2: when the old tree is complete, its root is the first node of the path.
    let (seed, rest) = if old_size.is_power_of_two() {
        (*old_root, proof)
    } else {
        (*first, rest)
    };
    let (mut fnode, mut snode) = (old_size - 1, new_size - 1);
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    let (mut fr, mut sr) = (seed, seed);
    for c in rest {
        if snode == 0 {
            return Err(LedgerError::InvalidProof("consistency proof too long"));
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = hash_children(c, &fr);
            sr = hash_children(c, &sr);
            while fnode & 1 == 0 && fnode != 0 {
                fnode >>= 1;
                snode >>= 1;
            }
        } else {
            sr = hash_children(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    if snode != 0 {
        return Err(LedgerError::InvalidProof("consistency proof too short"));
    }
    if fr != *old_root || sr != *new_root {
        return Err(LedgerError::RootMismatch);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_largest_power_of_two_below() {
        for (n, k) in [
            (2, 1),
            (3, 2),
            (4, 2),
            (5, 4),
            (7, 4),
            (8, 4),
            (9, 8),
            (63, 32),
            (28937, 16384),
        ] {
            assert_eq!(split(n), k, "n={n}");
        }
    }

    #[test]
    fn empty_tree() {
        let tree = MerkleTree::new();
        assert_eq!(tree.size(), 0);
        assert_eq!(tree.root(), empty_root());
        assert_eq!(MerkleTree::default().root(), empty_root());
        assert!(tree.inclusion_proof(0, 0).is_err());
        assert_eq!(tree.consistency_proof(0, 0).unwrap(), vec![]);
        assert!(verify_consistency(0, 0, &empty_root(), &empty_root(), &[]).is_ok());
    }
}
