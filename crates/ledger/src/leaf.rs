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
    out.extend_from_slice(LEAF_TAG);
    out.push(kind);
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
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(bytes);
    }
    out
}
