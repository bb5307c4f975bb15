//! The transparency log's mathematics and formats: Merkle tree hashing, inclusion and
//! consistency proofs exactly as RFC 9162 section 2.1, and signed tree heads as C2SP
//! `tlog-checkpoint` + `signed-note` (Ed25519).
//!
//! This crate owns hashes and proofs only. It knows nothing of HTTP, of databases or of what a
//! leaf means: callers hand it leaf bytes that must never contain personal data in clear (a log
//! is append-only; erasure happens elsewhere, by destroying keys).

mod checkpoint;
mod leaf;
mod tree;

pub use checkpoint::{
    check_log_key, verify_alarm, Checkpoint, CheckpointError, CosignerKey, NoteKey,
};
pub use leaf::{encode_leaf, hash_leaf, Field, LEAF_TAG};
pub use tree::{
    leaf_hash, node_hash, root_of, verify_consistency, verify_inclusion, Hash, ProofError, Tree,
    EMPTY_ROOT,
};
