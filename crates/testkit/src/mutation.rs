//! Deterministic mutation of valid inputs, for fuzzing parsers on stable Rust (coverage-guided
//! cargo-fuzz needs a nightly toolchain, which this project's machines do not have). A fixed
//! seed makes every failure reproducible: the failing test prints the mutated input.

/// A xorshift64 generator: fast, seedable, and good enough to pick mutations.
pub struct Rng(u64);

impl Rng {
    /// A generator from a non-zero seed (xorshift stays at zero forever).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next_u64() as u8).collect()
    }
}

/// One to four random edits of `input`: bit flips, byte rewrites, insertions, deletions,
/// truncations, and splices of a run of bytes from `other` (so that a mutation can introduce
/// well-formed fragments, which random bytes rarely are).
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let i = rng.below(v.len());
        match rng.below(6) {
            0 if !v.is_empty() => v[i] ^= 1 << rng.below(8),
            1 if !v.is_empty() => v[i] = rng.next_u64() as u8,
            2 => v.insert(i.min(v.len()), rng.next_u64() as u8),
            3 if !v.is_empty() => {
                v.remove(i);
            }
            4 => v.truncate(i),
            _ => {
                let j = rng.below(other.len());
                let at = i.min(v.len());
                v.splice(at..at, other[j..].iter().take(1 + rng.below(16)).copied());
            }
        }
    }
    v
}

/// [`mutate`] for text: the mutated bytes, read as UTF-8 with invalid sequences replaced, so
/// that text parsers see broken lines, separators and encodings but always a `&str`.
pub fn mutate_text(rng: &mut Rng, input: &str, other: &str) -> String {
    String::from_utf8_lossy(&mutate(rng, input.as_bytes(), other.as_bytes())).into_owned()
}
