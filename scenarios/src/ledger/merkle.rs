//! The Merkle tree over ledger entries, with inclusion and consistency
//! proofs as RFC 6962 defines them and RFC 9162 verifies them.
//!
//! [`MerkleTree`] keeps the hash of every complete power-of-two subtree
//! (level 0 holds the leaves), about two hashes per leaf. Any subtree the
//! RFC recursion visits is either one of those (a lookup) or a right edge
//! that splits into one of those and a smaller right edge, so roots at any
//! past size and proofs cost O(log n) hashes. Appending is amortised O(1).

use super::{node_hash, sha256, Hash};

/// An append-only Merkle tree of leaf hashes.
#[derive(Debug, Clone, Default)]
pub struct MerkleTree {
    /// `levels[j][i]` is the hash of leaves `i * 2^j .. (i + 1) * 2^j`.
    levels: Vec<Vec<Hash>>,
}

/// Why a proof cannot be produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProofError {
    /// The index or size lies beyond the tree.
    OutOfRange {
        /// What was asked for.
        asked: u64,
        /// The tree's size.
        size: u64,
    },
    /// A consistency proof needs `first <= second`.
    Backwards,
}

impl std::fmt::Display for ProofError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProofError::OutOfRange { asked, size } => {
                write!(f, "{asked} is beyond the ledger, which has {size} entries")
            }
            ProofError::Backwards => f.write_str("the first size must not exceed the second"),
        }
    }
}

impl MerkleTree {
    /// An empty tree.
    pub fn new() -> MerkleTree {
        MerkleTree::default()
    }

    /// A tree over `leaves`.
    pub fn from_leaves(leaves: impl IntoIterator<Item = Hash>) -> MerkleTree {
        let mut t = MerkleTree::new();
        for l in leaves {
            t.push(l);
        }
        t
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }

    /// Leaf `index`, if present.
    pub fn leaf(&self, index: u64) -> Option<Hash> {
        self.levels.first()?.get(usize::try_from(index).ok()?).copied()
    }

    /// Appends a leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut j = 0;
        while self.levels[j].len().is_multiple_of(2) {
            let n = self.levels[j].len();
            let h = node_hash(&self.levels[j][n - 2], &self.levels[j][n - 1]);
            if self.levels.len() == j + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[j + 1].push(h);
            j += 1;
        }
    }

    /// The root over the first `size` leaves (RFC 6962 MTH).
    pub fn root_at(&self, size: u64) -> Result<Hash, ProofError> {
        self.check(size)?;
        Ok(if size == 0 {
            sha256(b"")
        } else {
            self.subtree(0, size)
        })
    }

    /// The root over all leaves.
    pub fn root(&self) -> Hash {
        self.root_at(self.size()).unwrap_or_else(|_| sha256(b""))
    }

    /// The audit path of leaf `index` in the tree of the first `size`
    /// leaves (RFC 6962 PATH), leaf side first.
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check(size)?;
        if index >= size {
            return Err(ProofError::OutOfRange { asked: index, size });
        }
        let mut out = Vec::new();
        self.path(index, 0, size, &mut out);
        Ok(out)
    }

    /// The proof that the tree of size `first` is a prefix of the tree of
    /// size `second` (RFC 6962 PROOF).
    pub fn consistency_proof(&self, first: u64, second: u64) -> Result<Vec<Hash>, ProofError> {
        self.check(second)?;
        if first > second {
            return Err(ProofError::Backwards);
        }
        let mut out = Vec::new();
        if first > 0 && first < second {
            self.subproof(first, 0, second, true, &mut out);
        }
        Ok(out)
    }

    fn check(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::OutOfRange {
                asked: size,
                size: self.size(),
            });
        }
        Ok(())
    }

    /// MTH of leaves `start..end` (non-empty, within the tree). `start` is a
    /// multiple of every complete subtree size the recursion asks for.
    fn subtree(&self, start: u64, end: u64) -> Hash {
        let len = end - start;
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros() as usize;
            if let Some(h) = self.levels.get(level).and_then(|l| l.get((start / len) as usize)) {
                return *h;
            }
        }
        let k = split(len);
        node_hash(&self.subtree(start, start + k), &self.subtree(start + k, end))
    }

    fn path(&self, m: u64, start: u64, end: u64, out: &mut Vec<Hash>) {
        let n = end - start;
        if n <= 1 {
            return;
        }
        let k = split(n);
        if m < k {
            self.path(m, start, start + k, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.path(m - k, start + k, end, out);
            out.push(self.subtree(start, start + k));
        }
    }

    fn subproof(&self, m: u64, start: u64, end: u64, complete: bool, out: &mut Vec<Hash>) {
        let n = end - start;
        if m == n {
            if !complete {
                out.push(self.subtree(start, end));
            }
            return;
        }
        let k = split(n);
        if m <= k {
            self.subproof(m, start, start + k, complete, out);
            out.push(self.subtree(start + k, end));
        } else {
            self.subproof(m - k, start + k, end, false, out);
            out.push(self.subtree(start, start + k));
        }
    }
}

/// The largest power of two strictly below `n` (`n >= 2`).
fn split(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// Checks an inclusion proof (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// Checks a consistency proof between two tree heads (RFC 9162 section
/// 2.1.4.2). Equal sizes need equal roots and an empty proof; size 0 is a
/// prefix of everything.
pub fn verify_consistency(
    first: u64,
    second: u64,
    first_root: &Hash,
    second_root: &Hash,
    proof: &[Hash],
) -> bool {
    if first > second {
        return false;
    }
    if first == second {
        return proof.is_empty() && first_root == second_root;
    }
    if first == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if first.is_power_of_two() {
        path.push(*first_root);
    }
    path.extend_from_slice(proof);
    let (mut f, mut s) = (first - 1, second - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            while f & 1 == 0 && f != 0 {
                f >>= 1;
                s >>= 1;
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *first_root && sr == *second_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::super::{leaf_hash, merkle_root};
    use super::*;

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(&i.to_be_bytes())).collect()
    }

    #[test]
    fn roots_match_the_recursive_definition_at_every_size() {
        let l = leaves(70);
        let t = MerkleTree::from_leaves(l.iter().copied());
        for m in 0..=70u64 {
            assert_eq!(t.root_at(m).unwrap(), merkle_root(&l[..m as usize]), "size {m}");
        }
        assert!(t.root_at(71).is_err());
    }

    #[test]
    fn every_inclusion_proof_verifies_and_no_other_leaf_or_index_does() {
        let t = MerkleTree::from_leaves(leaves(33));
        for n in 1..=33u64 {
            let root = t.root_at(n).unwrap();
            for i in 0..n {
                let p = t.inclusion_proof(i, n).unwrap();
                let leaf = t.leaf(i).unwrap();
                assert!(verify_inclusion(i, n, &leaf, &p, &root), "{i} in {n}");
                // The same proof does not place the leaf elsewhere, nor
                // another leaf here, nor work against a larger tree.
                if n > 1 {
                    assert!(!verify_inclusion((i + 1) % n, n, &leaf, &p, &root));
                    let other = t.leaf((i + 1) % n).unwrap();
                    assert!(!verify_inclusion(i, n, &other, &p, &root));
                }
                if n < t.size() {
                    let bigger = t.root_at(n + 1).unwrap();
                    assert!(!verify_inclusion(i, n + 1, &leaf, &p, &bigger));
                }
                if let Some((_, shorter)) = p.split_last() {
                    assert!(!verify_inclusion(i, n, &leaf, shorter, &root));
                }
            }
        }
    }

    #[test]
    fn every_consistency_proof_verifies_and_a_fork_does_not() {
        let t = MerkleTree::from_leaves(leaves(33));
        // A history that agrees for 9 leaves and then diverges.
        let mut forked_leaves = leaves(33);
        forked_leaves[9] = leaf_hash(b"rewritten");
        let fork = MerkleTree::from_leaves(forked_leaves);
        for n in 0..=33u64 {
            for m in 0..=n {
                let p = t.consistency_proof(m, n).unwrap();
                let (rm, rn) = (t.root_at(m).unwrap(), t.root_at(n).unwrap());
                assert!(verify_consistency(m, n, &rm, &rn, &p), "{m} -> {n}");
                if m > 9 && m < n {
                    let fm = fork.root_at(m).unwrap();
                    assert!(!verify_consistency(m, n, &fm, &rn, &p), "fork {m} -> {n}");
                    let fp = fork.consistency_proof(m, n).unwrap();
                    assert!(!verify_consistency(m, n, &fm, &rn, &fp), "fork proof {m} -> {n}");
                }
            }
        }
        assert_eq!(t.consistency_proof(5, 4), Err(ProofError::Backwards));
    }

    #[test]
    fn rfc6962_reference_proof_shapes() {
        // The 7-leaf example of RFC 6962 section 2.1.3.
        let l = leaves(7);
        let t = MerkleTree::from_leaves(l.iter().copied());
        let h = |a: &Hash, b: &Hash| node_hash(a, b);
        let (a, b, c, d, e, f, g) = (l[0], l[1], l[2], l[3], l[4], l[5], l[6]);
        let (k, lnode, i) = (h(&a, &b), h(&c, &d), h(&e, &f));
        // PATH(a) = [b, h(c,d), h(h(e,f),g)].
        assert_eq!(t.inclusion_proof(0, 7).unwrap(), vec![b, lnode, h(&i, &g)]);
        // PATH(d) = [c, h(a,b), h(h(e,f),g)].
        assert_eq!(t.inclusion_proof(3, 7).unwrap(), vec![c, k, h(&i, &g)]);
        // PROOF(3, D[7]) = [c, d, h(a,b), h(h(e,f),g)].
        assert_eq!(t.consistency_proof(3, 7).unwrap(), vec![c, d, k, h(&i, &g)]);
        // PROOF(4, D[7]) = [h(h(e,f),g)].
        assert_eq!(t.consistency_proof(4, 7).unwrap(), vec![h(&i, &g)]);
        // PROOF(6, D[7]) = [h(e,f), g, h(h(a,b),h(c,d))].
        assert_eq!(t.consistency_proof(6, 7).unwrap(), vec![i, g, h(&k, &lnode)]);
    }
}
