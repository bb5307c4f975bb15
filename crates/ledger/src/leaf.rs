//! The framing of log leaves: a version tag, a record-kind byte and length-prefixed fields, so
//! that no two different records can encode to the same bytes. What the kinds and fields mean
//! is the caller's (the store's) business; `docs/ledger.md` lists them.

/// First bytes of every leaf: the format version, then a newline.
pub const LEAF_TAG: &[u8] = b"msec-leaf/v1\n";

/// One field of a leaf.
pub enum Field<'a> {
    /// Raw bytes (ciphertexts, keys).
    Bytes(&'a [u8]),
    /// UTF-8 text.
    Text(&'a str),
    /// A signed 64-bit integer: 8 bytes, big-endian two's complement.
    Int(i64),
    /// An absent optional value: a field of length zero (distinct from any integer).
    Absent,
}

/// `LEAF_TAG || kind || (u32 big-endian length || bytes) for each field`.
pub fn encode_leaf(kind: u8, fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + fields.len() * 16);
    write_leaf(kind, fields, &mut |part| out.extend_from_slice(part));
    out
}

/// `leaf_hash(&encode_leaf(kind, fields))` without building the leaf: an audit hashes every
/// stored record, and copying each ciphertext into a fresh buffer first would cost more than
/// hashing it.
pub fn hash_leaf(kind: u8, fields: &[Field]) -> crate::Hash {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update([0u8]);
    write_leaf(kind, fields, &mut |part| h.update(part));
    h.finalize().into()
}

/// The one place that knows the leaf framing: feeds its parts, in order, to `out`.
fn write_leaf(kind: u8, fields: &[Field], out: &mut dyn FnMut(&[u8])) {
    out(LEAF_TAG);
    out(&[kind]);
    for f in fields {
        let int;
        let bytes: &[u8] = match f {
            Field::Bytes(b) => b,
            Field::Text(t) => t.as_bytes(),
            Field::Int(i) => {
                int = i.to_be_bytes();
                &int
            }
            Field::Absent => &[],
        };
        // Stored records are bounded far below 4 GiB (envelopes by the ingest size limit).
        out(&(bytes.len() as u32).to_be_bytes());
        out(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_hash_equals_hash_of_encoding() {
        let blob = vec![0xa5; 300];
        let fields = [
            Field::Text("park-1"),
            Field::Int(-7),
            Field::Absent,
            Field::Bytes(&blob),
        ];
        for kind in [1, 5, 255] {
            assert_eq!(
                hash_leaf(kind, &fields),
                crate::leaf_hash(&encode_leaf(kind, &fields))
            );
        }
        assert_ne!(hash_leaf(1, &fields), hash_leaf(2, &fields));
    }
}
