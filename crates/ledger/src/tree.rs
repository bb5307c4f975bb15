//! RFC 9162 section 2.1: the Merkle Tree Hash (MTH), audit paths and consistency proofs, and
//! the verification algorithms of sections 2.1.3.2 and 2.1.4.2.

use sha2::{Digest, Sha256};

pub type Hash = [u8; 32];

/// MTH({}) = SHA-256 of the empty string.
pub const EMPTY_ROOT: Hash = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// MTH({d}) = SHA-256(0x00 || d).
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(data);
    h.finalize().into()
}

/// SHA-256(0x01 || left || right).
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The largest power of two strictly smaller than `n` (n >= 2).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// MTH over already-hashed leaves.
pub fn root_of(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => EMPTY_ROOT,
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("index {index} is outside a tree of size {size}")]
    IndexOutOfRange { index: u64, size: u64 },
    #[error("tree size {size} is larger than the log ({len} leaves)")]
    SizeOutOfRange { size: u64, len: u64 },
    #[error("a consistency proof needs 0 < old size <= new size (got {old} and {new})")]
    BadSizes { old: u64, new: u64 },
}

/// An append-only Merkle tree with RFC 9162 roots and proofs for any prefix.
///
/// It keeps every complete, aligned subtree: `levels[h][j]` is the root of leaves
/// `j·2^h .. (j+1)·2^h`. An append costs one leaf hash plus, on average, one node hash; any
/// range root is then assembled from O(log n) stored subtrees, so roots cost O(log n) and
/// proofs O(log² n) instead of rehashing the log.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    levels: Vec<Vec<Hash>>,
}

impl Tree {
    pub fn new() -> Tree {
        Tree::default()
    }
    /// Rebuilds a tree from stored leaf hashes (in log order).
    pub fn from_leaf_hashes(leaves: impl IntoIterator<Item = Hash>) -> Tree {
        let mut t = Tree::new();
        for leaf in leaves {
            t.push_hash(leaf);
        }
        t
    }
    /// Appends a leaf (its data, not its hash) and returns its index.
    pub fn push(&mut self, data: &[u8]) -> u64 {
        self.push_hash(leaf_hash(data))
    }
    /// Appends an already-computed leaf hash and returns its index.
    pub fn push_hash(&mut self, leaf: Hash) -> u64 {
        let index = self.size();
        let mut node = leaf;
        let mut level = 0;
        loop {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            self.levels[level].push(node);
            let len = self.levels[level].len();
            // An even count closes a pair: its parent is now complete too.
            if len % 2 == 1 {
                break;
            }
            node = node_hash(&self.levels[level][len - 2], &self.levels[level][len - 1]);
            level += 1;
        }
        index
    }
    pub fn size(&self) -> u64 {
        self.levels.first().map_or(0, |l| l.len() as u64)
    }
    pub fn leaf(&self, index: u64) -> Option<&Hash> {
        self.levels.first()?.get(index as usize)
    }
    fn check(&self, size: u64) -> Result<(), ProofError> {
        if size > self.size() {
            return Err(ProofError::SizeOutOfRange {
                size,
                len: self.size(),
            });
        }
        Ok(())
    }
    /// MTH of leaves `start .. start + len`, where `start` is a multiple of the largest power of
    /// two not above `len` (true of every range the RFC 9162 recursion visits).
    fn range_root(&self, start: u64, len: u64) -> Hash {
        if len == 0 {
            return EMPTY_ROOT;
        }
        if len.is_power_of_two() {
            let h = len.trailing_zeros() as usize;
            return self.levels[h][(start >> h) as usize];
        }
        let k = 1u64 << (63 - (len - 1).leading_zeros());
        node_hash(
            &self.range_root(start, k),
            &self.range_root(start + k, len - k),
        )
    }
    /// The root of the first `size` leaves.
    pub fn root(&self, size: u64) -> Result<Hash, ProofError> {
        self.check(size)?;
        Ok(self.range_root(0, size))
    }
    /// The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 2.1.3.1).
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>, ProofError> {
        self.check(size)?;
        if index >= size {
            return Err(ProofError::IndexOutOfRange { index, size });
        }
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof);
        Ok(proof)
    }
    /// The consistency proof between the trees of the first `old` and `new` leaves
    /// (RFC 9162 2.1.4.1).
    pub fn consistency_proof(&self, old: u64, new: u64) -> Result<Vec<Hash>, ProofError> {
        self.check(new)?;
        if old == 0 || old > new {
            return Err(ProofError::BadSizes { old, new });
        }
        let mut proof = Vec::new();
        self.subproof(old, 0, new, true, &mut proof);
        Ok(proof)
    }

    /// PATH(m, D[start..start+n]), appended bottom-up.
    fn path(&self, m: u64, start: u64, n: u64, out: &mut Vec<Hash>) {
        if n <= 1 {
            return;
        }
        let k = split(n as usize) as u64;
        if m < k {
            self.path(m, start, k, out);
            out.push(self.range_root(start + k, n - k));
        } else {
            self.path(m - k, start + k, n - k, out);
            out.push(self.range_root(start, k));
        }
    }

    /// SUBPROOF(m, D[start..start+n], b), appended bottom-up.
    fn subproof(&self, m: u64, start: u64, n: u64, b: bool, out: &mut Vec<Hash>) {
        if m == n {
            if !b {
                out.push(self.range_root(start, n));
            }
            return;
        }
        let k = split(n as usize) as u64;
        if m <= k {
            self.subproof(m, start, k, b, out);
            out.push(self.range_root(start + k, n - k));
        } else {
            self.subproof(m - k, start + k, n - k, false, out);
            out.push(self.range_root(start, k));
        }
    }
}

/// Verifies an inclusion proof as RFC 9162 section 2.1.3.2 describes.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Verifies a consistency proof as RFC 9162 section 2.1.4.2 describes.
pub fn verify_consistency(
    old: u64,
    new: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old == 0 || old > new {
        return false;
    }
    if old == new {
        return proof.is_empty() && old_root == new_root;
    }
    if proof.is_empty() {
        return false;
    }
    // If old is a power of two, the old root itself starts the proof.
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f_n, mut s_n) = (old - 1, new - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && fr == *old_root && sr == *new_root
}
