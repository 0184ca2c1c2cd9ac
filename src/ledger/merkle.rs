//! The ledger as a Merkle tree in the way of RFC 9162 (Certificate Transparency 2.0): the
//! hashing, the root from the tree's right edge, and inclusion and consistency proofs, made
//! and checked.
//!
//! A proof is made from the hashes of perfect subtrees, asked of a [`Subtrees`]: the store
//! keeps them in tiles, a test keeps them in memory. Checking a proof needs nothing but the
//! proof, which is what lets a third party check it offline.

use ring::digest;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of nothing.
pub fn empty_root() -> Hash {
    sha256(&[&[]])
}

/// The hash of a leaf's data: SHA-256(0x00 || data).
pub fn leaf(data: &[u8]) -> Hash {
    sha256(&[&[0x00], data])
}

/// The hash of an interior node: SHA-256(0x01 || left || right).
pub fn node(left: &Hash, right: &Hash) -> Hash {
    sha256(&[&[0x01], left, right])
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for part in parts {
        ctx.update(part);
    }
    ctx.finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The largest power of two below `n` (n ≥ 2): where RFC 9162 splits a tree of `n` leaves.
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The root of a tree from its right edge: the roots of the perfect subtrees its leaves fall
/// into, largest first (one per bit set in its size). This is how a tree kept by its edge gets
/// its root in O(log n), with no pass over the leaves.
pub fn root_of_peaks(peaks: &[Hash]) -> Hash {
    let mut peaks = peaks.iter().rev();
    let Some(last) = peaks.next() else {
        return empty_root();
    };
    peaks.fold(*last, |right, left| node(left, &right))
}

/// Where the hashes of perfect subtrees come from: the subtree at `level` (2^level leaves)
/// and `index` covers leaves `index·2^level` to `(index+1)·2^level - 1`.
pub trait Subtrees {
    /// Why a hash could not be had.
    type Error;

    /// The hash of a perfect subtree wholly inside the tree.
    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error>;

    /// The hash of leaves `start..end`, where `start` is a multiple of the largest power of
    /// two below `end - start` (every range the proofs ask for is).
    fn range(&self, start: u64, end: u64) -> Result<Hash, Self::Error> {
        let n = end - start;
        if n.is_power_of_two() && start % n == 0 {
            return self.subtree(n.trailing_zeros() as u8, start / n);
        }
        let k = split(n);
        Ok(node(
            &self.range(start, start + k)?,
            &self.range(start + k, end)?,
        ))
    }
}

/// Why a proof cannot be made.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError<E> {
    /// The sizes or index asked about are not in the tree.
    #[error("{0}")]
    OutOfRange(String),
    /// A subtree hash could not be read.
    #[error("reading the tree: {0}")]
    Source(E),
}

/// The inclusion proof of leaf `index` in the tree of the first `size` leaves (RFC 9162
/// §2.1.3.1): the sibling hashes from the leaf up.
pub fn inclusion_proof<S: Subtrees>(
    tree: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if index >= size {
        return Err(ProofError::OutOfRange(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let mut path = Vec::new();
    let (mut start, mut end, mut m) = (0, size, index);
    // Down from the root, keeping the sibling of each half the leaf is in.
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            path.push(tree.range(start + k, end).map_err(ProofError::Source)?);
            end = start + k;
        } else {
            path.push(tree.range(start, start + k).map_err(ProofError::Source)?);
            start += k;
            m -= k;
        }
    }
    path.reverse();
    Ok(path)
}

/// The consistency proof between the trees of the first `old` and `new` leaves (RFC 9162
/// §2.1.4.1).
pub fn consistency_proof<S: Subtrees>(
    tree: &S,
    old: u64,
    new: u64,
) -> Result<Vec<Hash>, ProofError<S::Error>> {
    if old > new {
        return Err(ProofError::OutOfRange(format!(
            "a tree of {old} is not a prefix of one of {new}"
        )));
    }
    let mut proof = Vec::new();
    if old == 0 || old == new {
        return Ok(proof);
    }
    // SUBPROOF(m, D[start:end], b), iteratively: each step goes into one half and keeps the
    // other.
    let (mut start, mut end, mut m, mut whole) = (0, new, old, true);
    loop {
        let n = end - start;
        if m == n {
            if !whole {
                proof.push(tree.range(start, end).map_err(ProofError::Source)?);
            }
            break;
        }
        let k = split(n);
        if m <= k {
            proof.push(tree.range(start + k, end).map_err(ProofError::Source)?);
            end = start + k;
        } else {
            proof.push(tree.range(start, start + k).map_err(ProofError::Source)?);
            start += k;
            m -= k;
            whole = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Why a proof does not hold.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The index or sizes do not fit together.
    #[error("{0}")]
    OutOfRange(String),
    /// The proof has more or fewer hashes than the sizes call for.
    #[error("the proof has {got} hashes where {want} are needed")]
    Length { got: usize, want: usize },
    /// The proof leads to another root.
    #[error("the proof does not lead to the root")]
    Mismatch,
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root`
/// (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), VerifyError> {
    if index >= size {
        return Err(VerifyError::OutOfRange(format!(
            "leaf {index} is not in a tree of {size}"
        )));
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf_hash;
    for p in proof {
        if s == 0 {
            return Err(VerifyError::Length {
                got: proof.len(),
                want: inclusion_length(index, size),
            });
        }
        if f & 1 == 1 || f == s {
            r = node(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 {
        return Err(VerifyError::Length {
            got: proof.len(),
            want: inclusion_length(index, size),
        });
    }
    if r != *root {
        return Err(VerifyError::Mismatch);
    }
    Ok(())
}

/// How many hashes the inclusion proof of `index` in a tree of `size` has.
fn inclusion_length(index: u64, size: u64) -> usize {
    let (mut start, mut end, mut m, mut n) = (0u64, size, index, 0);
    while end - start > 1 {
        let k = split(end - start);
        if m < k {
            end = start + k;
        } else {
            start += k;
            m -= k;
        }
        n += 1;
    }
    n
}

/// Checks that the tree of `old` leaves with root `old_root` is a prefix of the tree of `new`
/// leaves with root `new_root` (RFC 9162 §2.1.4.2).
pub fn verify_consistency(
    old: u64,
    new: u64,
    proof: &[Hash],
    old_root: &Hash,
    new_root: &Hash,
) -> Result<(), VerifyError> {
    if old > new {
        return Err(VerifyError::OutOfRange(format!(
            "a tree of {old} is not a prefix of one of {new}"
        )));
    }
    if old == new || old == 0 {
        if !proof.is_empty() {
            return Err(VerifyError::Length {
                got: proof.len(),
                want: 0,
            });
        }
        // Any tree extends the empty one; a tree is consistent with itself only if it is it.
        return if old == 0 || old_root == new_root {
            Ok(())
        } else {
            Err(VerifyError::Mismatch)
        };
    }
    let mut proof = proof;
    // When the old tree is a perfect subtree on the left, its root starts the path.
    let first;
    if old.is_power_of_two() {
        first = *old_root;
    } else {
        let Some((head, rest)) = proof.split_first() else {
            return Err(VerifyError::Length { got: 0, want: 1 });
        };
        first = *head;
        proof = rest;
    }
    let (mut f, mut s) = (old - 1, new - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (first, first);
    for c in proof {
        if s == 0 {
            return Err(VerifyError::Mismatch);
        }
        if f & 1 == 1 || f == s {
            fr = node(c, &fr);
            sr = node(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    if s != 0 || fr != *old_root || sr != *new_root {
        return Err(VerifyError::Mismatch);
    }
    Ok(())
}

/// Every level of a tree, in memory: for tests, and for checking a whole log at once.
#[derive(Clone, Debug, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the perfect subtree at level `l`, index `i`.
    levels: Vec<Vec<Hash>>,
}

impl MemoryTree {
    /// Appends a leaf hash, completing the subtrees it closes.
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut hash = leaf_hash;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(hash);
            let row = &self.levels[level];
            if row.len() % 2 == 1 {
                break;
            }
            hash = node(&row[row.len() - 2], &row[row.len() - 1]);
            level += 1;
        }
    }

    /// How many leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError<std::convert::Infallible>> {
        match size {
            0 => Ok(empty_root()),
            n if n > self.size() => Err(ProofError::OutOfRange(format!(
                "a tree of {n} when {} leaves are held",
                self.size()
            ))),
            n => self.range(0, n).map_err(ProofError::Source),
        }
    }
}

impl Subtrees for MemoryTree {
    type Error = std::convert::Infallible;

    fn subtree(&self, level: u8, index: u64) -> Result<Hash, Self::Error> {
        Ok(self.levels[usize::from(level)][index as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(h: &Hash) -> String {
        h.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The leaves of the usual Certificate Transparency test tree.
    fn leaves() -> Vec<Vec<u8>> {
        [
            "",
            "00",
            "10",
            "2021",
            "3031",
            "40414243",
            "5051525354555657",
            "606162636465666768696a6b6c6d6e6f",
        ]
        .iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
    }

    fn tree(n: usize) -> MemoryTree {
        let mut t = MemoryTree::default();
        for l in leaves().iter().take(n) {
            t.push(leaf(l));
        }
        t
    }

    #[test]
    fn roots_match_the_reference_tree() {
        let want = [
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
        let t = tree(8);
        assert_eq!(hex(&root_of_peaks(&[])), want[0]);
        for size in 1..=8u64 {
            assert_eq!(hex(&t.root(size).unwrap()), want[size as usize]);
            // The perfect subtrees of the first `size` leaves, largest first.
            let mut peaks = Vec::new();
            let mut start = 0;
            for level in (0..4u8).rev().filter(|l| size >> l & 1 == 1) {
                peaks.push(t.subtree(level, start >> level).unwrap());
                start += 1 << level;
            }
            assert_eq!(
                hex(&root_of_peaks(&peaks)),
                want[size as usize],
                "size {size}"
            );
        }
    }

    #[test]
    fn proofs_match_the_reference_tree() {
        let t = tree(8);
        let path = |index, size| -> Vec<String> {
            inclusion_proof(&t, index, size)
                .unwrap()
                .iter()
                .map(hex)
                .collect()
        };
        assert_eq!(
            path(0, 8),
            [
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ]
        );
        assert_eq!(
            path(5, 8),
            [
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert!(path(0, 1).is_empty());
        let consistency = |old, new| -> Vec<String> {
            consistency_proof(&t, old, new)
                .unwrap()
                .iter()
                .map(hex)
                .collect()
        };
        assert_eq!(
            consistency(6, 8),
            [
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ]
        );
        assert!(consistency(1, 1).is_empty());
    }

    #[test]
    fn every_proof_of_every_size_checks_and_a_changed_one_does_not() {
        let mut t = MemoryTree::default();
        for i in 0..70u32 {
            t.push(leaf(&i.to_be_bytes()));
        }
        for size in 1..=70u64 {
            let root = t.root(size).unwrap();
            for index in 0..size {
                let leaf_hash = t.subtree(0, index).unwrap();
                let proof = inclusion_proof(&t, index, size).unwrap();
                verify_inclusion(&leaf_hash, index, size, &proof, &root).unwrap();
                assert_eq!(proof.len(), inclusion_length(index, size));
                if let Some(first) = proof.first() {
                    let mut bad = proof.clone();
                    bad[0] = node(first, &root);
                    assert_eq!(
                        verify_inclusion(&leaf_hash, index, size, &bad, &root),
                        Err(VerifyError::Mismatch)
                    );
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_inclusion(&leaf_hash, index, size, short, &root).is_err());
                }
                let mut long = proof.clone();
                long.push(root);
                assert!(verify_inclusion(&leaf_hash, index, size, &long, &root).is_err());
            }
            for old in 0..=size {
                let old_root = t.root(old).unwrap();
                let proof = consistency_proof(&t, old, size).unwrap();
                verify_consistency(old, size, &proof, &old_root, &root).unwrap();
                if old > 0 && old < size {
                    let other = leaf(b"not a root of this tree");
                    assert!(verify_consistency(old, size, &proof, &other, &root).is_err());
                    assert!(verify_consistency(old, size, &proof, &old_root, &other).is_err());
                    if !proof.is_empty() {
                        let short = &proof[..proof.len() - 1];
                        assert!(verify_consistency(old, size, short, &old_root, &root).is_err());
                    }
                }
            }
        }
    }

    #[test]
    fn out_of_range_questions_are_refused() {
        let t = tree(4);
        assert!(matches!(
            inclusion_proof(&t, 4, 4),
            Err(ProofError::OutOfRange(_))
        ));
        assert!(matches!(
            consistency_proof(&t, 5, 4),
            Err(ProofError::OutOfRange(_))
        ));
        assert!(t.root(5).is_err());
        let root = t.root(4).unwrap();
        assert!(verify_inclusion(&root, 4, 4, &[], &root).is_err());
        assert!(verify_consistency(5, 4, &[], &root, &root).is_err());
    }
}
