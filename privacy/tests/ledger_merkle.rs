//! The Merkle tree against published Certificate Transparency test vectors and against a naive
//! recomputation of the RFC 9162 definitions for every size up to 64.
//!
//! The vectors are those of RFC 6962's reference tests as published in transparency-dev/merkle
//! (`testonly/constants.go`, `testonly/reference_test.go`): eight leaves, the root of every
//! prefix, and some inclusion and consistency proofs.

use harambee_privacy::ledger::merkle::{
    MerkleTree, empty_root, hash_children, hash_leaf, verify_consistency, verify_inclusion,
};
use harambee_privacy::ledger::{LedgerError, Sha256Digest};

const LEAVES: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

const ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

/// (index, tree size, proof)
const INCLUSION: [(u64, u64, &[&str]); 6] = [
    (0, 1, &[]),
    (
        0,
        2,
        &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
    ),
    (
        1,
        2,
        &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
    ),
    (
        2,
        3,
        &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
    ),
    (
        1,
        5,
        &[
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        5,
        8,
        &[
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

/// (old size, new size, proof)
const CONSISTENCY: [(u64, u64, &[&str]); 4] = [
    (1, 1, &[]),
    (
        1,
        8,
        &[
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        2,
        5,
        &[
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        8,
        &[
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
];

fn d(hex: &str) -> Sha256Digest {
    hex.parse().unwrap()
}

fn ct_tree() -> MerkleTree {
    MerkleTree::from_leaf_hashes(LEAVES.iter().map(|l| hash_leaf(&hex::decode(l).unwrap())))
}

#[test]
fn ct_roots_of_every_prefix() {
    let tree = ct_tree();
    for (size, root) in ROOTS.iter().enumerate() {
        assert_eq!(tree.root_at(size as u64).unwrap(), d(root), "size {size}");
        let prefix = MerkleTree::from_leaf_hashes(
            LEAVES[..size]
                .iter()
                .map(|l| hash_leaf(&hex::decode(l).unwrap())),
        );
        assert_eq!(prefix.root(), d(root), "prefix of size {size}");
    }
    assert_eq!(empty_root(), d(ROOTS[0]));
}

#[test]
fn ct_inclusion_proofs() {
    let tree = ct_tree();
    for (index, size, proof) in INCLUSION {
        let want: Vec<Sha256Digest> = proof.iter().map(|h| d(h)).collect();
        assert_eq!(
            tree.inclusion_proof(index, size).unwrap(),
            want,
            "index {index} size {size}"
        );
        let leaf = hash_leaf(&hex::decode(LEAVES[index as usize]).unwrap());
        verify_inclusion(&leaf, index, size, &want, &d(ROOTS[size as usize])).unwrap();
    }
}

#[test]
fn ct_consistency_proofs() {
    let tree = ct_tree();
    for (old, new, proof) in CONSISTENCY {
        let want: Vec<Sha256Digest> = proof.iter().map(|h| d(h)).collect();
        assert_eq!(
            tree.consistency_proof(old, new).unwrap(),
            want,
            "{old} -> {new}"
        );
        verify_consistency(
            old,
            new,
            &d(ROOTS[old as usize]),
            &d(ROOTS[new as usize]),
            &want,
        )
        .unwrap();
    }
}

// The naive reference: RFC 9162 §2.1 transcribed recursively over leaf inputs.

fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn naive_root(leaves: &[Vec<u8>]) -> Sha256Digest {
    match leaves.len() {
        0 => Sha256Digest::of(&[]),
        1 => hash_leaf(&leaves[0]),
        n => {
            let k = split(n);
            hash_children(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

fn naive_path(m: usize, leaves: &[Vec<u8>]) -> Vec<Sha256Digest> {
    let n = leaves.len();
    if n <= 1 {
        return Vec::new();
    }
    let k = split(n);
    if m < k {
        let mut p = naive_path(m, &leaves[..k]);
        p.push(naive_root(&leaves[k..]));
        p
    } else {
        let mut p = naive_path(m - k, &leaves[k..]);
        p.push(naive_root(&leaves[..k]));
        p
    }
}

fn naive_subproof(m: usize, leaves: &[Vec<u8>], complete: bool) -> Vec<Sha256Digest> {
    let n = leaves.len();
    if m == n {
        return if complete {
            Vec::new()
        } else {
            vec![naive_root(leaves)]
        };
    }
    let k = split(n);
    if m <= k {
        let mut p = naive_subproof(m, &leaves[..k], complete);
        p.push(naive_root(&leaves[k..]));
        p
    } else {
        let mut p = naive_subproof(m - k, &leaves[k..], false);
        p.push(naive_root(&leaves[..k]));
        p
    }
}

fn naive_proof(m: usize, leaves: &[Vec<u8>]) -> Vec<Sha256Digest> {
    if m == 0 {
        Vec::new()
    } else {
        naive_subproof(m, leaves, true)
    }
}

fn leaves(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("leaf {i}").into_bytes()).collect()
}

fn flipped(proof: &[Sha256Digest], at: usize) -> Vec<Sha256Digest> {
    let mut p = proof.to_vec();
    p[at].0[at % 32] ^= 0x01;
    p
}

#[test]
fn every_size_up_to_64_matches_naive_definitions() {
    const MAX: usize = 64;
    let all = leaves(MAX);
    let tree = MerkleTree::from_leaf_hashes(all.iter().map(|l| hash_leaf(l)));
    for n in 0..=MAX {
        let root = naive_root(&all[..n]);
        assert_eq!(tree.root_at(n as u64).unwrap(), root, "root of size {n}");
        assert_eq!(
            MerkleTree::from_leaf_hashes(all[..n].iter().map(|l| hash_leaf(l))).root(),
            root
        );

        for m in 0..n {
            let proof = tree.inclusion_proof(m as u64, n as u64).unwrap();
            assert_eq!(proof, naive_path(m, &all[..n]), "inclusion of {m} in {n}");
            let leaf = hash_leaf(&all[m]);
            verify_inclusion(&leaf, m as u64, n as u64, &proof, &root).unwrap();
            // Wrong leaf, wrong index, any altered, missing or extra node: refused.
            assert!(
                verify_inclusion(&hash_leaf(b"other"), m as u64, n as u64, &proof, &root).is_err()
            );
            if (m ^ 1) < n {
                assert!(
                    verify_inclusion(&leaf, (m ^ 1) as u64, n as u64, &proof, &root).is_err(),
                    "index {} in {n}",
                    m ^ 1
                );
            }
            for at in 0..proof.len() {
                assert!(
                    verify_inclusion(&leaf, m as u64, n as u64, &flipped(&proof, at), &root)
                        .is_err()
                );
            }
            if !proof.is_empty() {
                assert!(
                    verify_inclusion(&leaf, m as u64, n as u64, &proof[..proof.len() - 1], &root)
                        .is_err()
                );
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_inclusion(&leaf, m as u64, n as u64, &longer, &root).is_err());
        }
        assert_eq!(
            tree.inclusion_proof(n as u64, n as u64),
            Err(LedgerError::IndexOutOfRange {
                index: n as u64,
                tree_size: n as u64
            })
        );

        for m in 0..=n {
            let old_root = naive_root(&all[..m]);
            let proof = tree.consistency_proof(m as u64, n as u64).unwrap();
            assert_eq!(proof, naive_proof(m, &all[..n]), "consistency {m} -> {n}");
            verify_consistency(m as u64, n as u64, &old_root, &root, &proof).unwrap();
            for at in 0..proof.len() {
                assert!(
                    verify_consistency(m as u64, n as u64, &old_root, &root, &flipped(&proof, at))
                        .is_err(),
                    "{m} -> {n} flip {at}"
                );
            }
            if !proof.is_empty() {
                assert!(
                    verify_consistency(
                        m as u64,
                        n as u64,
                        &old_root,
                        &root,
                        &proof[..proof.len() - 1]
                    )
                    .is_err()
                );
            }
            let mut longer = proof.clone();
            longer.push(root);
            assert!(verify_consistency(m as u64, n as u64, &old_root, &root, &longer).is_err());
            // A different old tree of the same size (a fork) is refused.
            let mut forked = all[..m].to_vec();
            if let Some(last) = forked.last_mut() {
                last.push(b'!');
                assert!(
                    verify_consistency(m as u64, n as u64, &naive_root(&forked), &root, &proof)
                        .is_err()
                );
            }
        }
    }
}

#[test]
fn edge_cases() {
    let all = leaves(8);
    let tree = MerkleTree::from_leaf_hashes(all.iter().map(|l| hash_leaf(l)));
    let root = |n: usize| naive_root(&all[..n]);
    // Size 1: the root is the leaf hash and the proof is empty.
    assert_eq!(tree.root_at(1).unwrap(), hash_leaf(&all[0]));
    verify_inclusion(&hash_leaf(&all[0]), 0, 1, &[], &root(1)).unwrap();
    // old == new: empty proof and equal roots, nothing else.
    verify_consistency(5, 5, &root(5), &root(5), &[]).unwrap();
    assert_eq!(
        verify_consistency(5, 5, &root(5), &root(6), &[]),
        Err(LedgerError::RootMismatch)
    );
    assert!(verify_consistency(5, 5, &root(5), &root(5), &[root(1)]).is_err());
    // From the empty tree: always consistent, by an empty proof, from the empty root.
    verify_consistency(0, 8, &empty_root(), &root(8), &[]).unwrap();
    assert!(verify_consistency(0, 8, &root(1), &root(8), &[]).is_err());
    assert!(verify_consistency(0, 8, &empty_root(), &root(8), &[root(1)]).is_err());
    // A non-trivial proof may not be empty; sizes may not go backwards or past the tree.
    assert!(verify_consistency(3, 8, &root(3), &root(8), &[]).is_err());
    assert_eq!(
        verify_consistency(8, 3, &root(8), &root(3), &[]),
        Err(LedgerError::SizesOutOfOrder {
            old_size: 8,
            new_size: 3
        })
    );
    assert!(tree.consistency_proof(8, 3).is_err());
    assert!(tree.consistency_proof(3, 9).is_err());
    assert!(tree.root_at(9).is_err());
    assert!(verify_inclusion(&hash_leaf(&all[0]), 8, 8, &[], &root(8)).is_err());
    // Powers of two: the old root is implied, not sent.
    for (old, new) in [(1, 2), (2, 4), (4, 8), (1, 8), (2, 8)] {
        let proof = tree.consistency_proof(old, new).unwrap();
        assert!(!proof.contains(&root(old as usize)), "{old} -> {new}");
        verify_consistency(old, new, &root(old as usize), &root(new as usize), &proof).unwrap();
    }
}

#[test]
fn incremental_roots_agree_with_rebuilding() {
    let all = leaves(300);
    let mut tree = MerkleTree::new();
    for (i, leaf) in all.iter().enumerate() {
        assert_eq!(tree.push(hash_leaf(leaf)), i as u64);
        if i % 37 == 0 || (i + 1).is_power_of_two() {
            assert_eq!(tree.root(), naive_root(&all[..=i]), "size {}", i + 1);
        }
    }
    // Proofs against an old size from the grown tree equal those of the old tree itself.
    let old = MerkleTree::from_leaf_hashes(all[..100].iter().map(|l| hash_leaf(l)));
    for m in [0u64, 1, 63, 64, 99] {
        assert_eq!(
            tree.inclusion_proof(m, 100).unwrap(),
            old.inclusion_proof(m, 100).unwrap()
        );
    }
    assert_eq!(
        tree.consistency_proof(37, 100).unwrap(),
        old.consistency_proof(37, 100).unwrap()
    );
}
