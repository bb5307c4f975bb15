//! Signed tree heads in the C2SP formats: a `tlog-checkpoint` body (origin, tree size, base64
//! root hash, one per line) signed as a `signed-note` with an Ed25519 key.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// Signature type byte of Ed25519 in signed-note key hashes and verifier keys.
const ED25519: u8 = 0x01;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed verifier key: {0}")]
    BadKey(&'static str),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("no valid signature by {0} on this checkpoint")]
    NotSigned(String),
}

/// A log's signing key with its signed-note name.
pub struct NoteKey {
    name: String,
    key: SigningKey,
}

fn key_hash(name: &str, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', ED25519]);
    h.update(public);
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c == '+' || c.is_control())
}

impl NoteKey {
    /// `name` is how signatures are labelled, by convention the log's origin.
    pub fn new(name: &str, seed: [u8; 32]) -> Result<NoteKey, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::BadKey(
                "a key name is non-empty, without spaces or '+'",
            ));
        }
        Ok(NoteKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The public verifier key in signed-note text form: `name+hash+base64(0x01 || key)`.
    pub fn verifier_key(&self) -> String {
        let public = self.key.verifying_key().to_bytes();
        let mut raw = vec![ED25519];
        raw.extend_from_slice(&public);
        format!(
            "{}+{}+{}",
            self.name,
            hex8(&key_hash(&self.name, &public)),
            B64.encode(raw)
        )
    }
}

/// A tree size as C2SP writes it: ASCII decimal, no sign, no leading zeros.
fn decimal(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

fn hex8(b: &[u8; 4]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A tree head: the log's identity, its size, and the root over that many leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

impl Checkpoint {
    /// The checkpoint body (the note text that is signed).
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\n",
            self.origin,
            self.size,
            B64.encode(self.root)
        )
    }

    /// The body followed by a blank line and one signature line.
    pub fn sign(&self, key: &NoteKey) -> String {
        let body = self.body();
        let sig = key.key.sign(body.as_bytes());
        let public = key.key.verifying_key().to_bytes();
        let mut raw = key_hash(&key.name, &public).to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", key.name, B64.encode(raw))
    }

    /// Parses a signed checkpoint and checks it carries a valid signature by `verifier_key`.
    /// Signature lines from other keys (witness cosignatures, say) are allowed and ignored.
    pub fn verify(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
        let mut parts = verifier_key.splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::BadKey("expected name+hash+key"));
        };
        let raw = B64
            .decode(key_b64)
            .map_err(|_| CheckpointError::BadKey("key is not base64"))?;
        let (Some(&ED25519), Ok(public)) =
            (raw.first(), <[u8; 32]>::try_from(&raw[1.min(raw.len())..]))
        else {
            return Err(CheckpointError::BadKey("not an Ed25519 key"));
        };
        if hex8(&key_hash(name, &public)) != hash_hex {
            return Err(CheckpointError::BadKey(
                "key hash does not match name and key",
            ));
        }
        let vk = VerifyingKey::from_bytes(&public)
            .map_err(|_| CheckpointError::BadKey("not a curve point"))?;
        let (body, sigs) = note.split_once("\n\n").ok_or(CheckpointError::Malformed(
            "no blank line before signatures",
        ))?;
        let body = format!("{body}\n");
        let mut lines = body.lines();
        let origin = lines
            .next()
            .filter(|o| !o.is_empty())
            .ok_or(CheckpointError::Malformed("no origin"))?;
        let size = lines
            .next()
            .and_then(decimal)
            .ok_or(CheckpointError::Malformed(
                "tree size is not a decimal number",
            ))?;
        let root: Hash = lines
            .next()
            .and_then(|r| B64.decode(r).ok())
            .and_then(|r| r.try_into().ok())
            .ok_or(CheckpointError::Malformed(
                "root is not a base64 SHA-256 hash",
            ))?;
        let expected_hash = key_hash(name, &public);
        for line in sigs.lines() {
            let Some(rest) = line.strip_prefix("\u{2014} ") else {
                return Err(CheckpointError::Malformed(
                    "signature lines start with an em dash",
                ));
            };
            let Some((signer, sig_b64)) = rest.split_once(' ') else {
                continue;
            };
            if signer != name {
                continue;
            }
            let Ok(raw) = B64.decode(sig_b64) else {
                continue;
            };
            if raw.len() != 68 || raw[..4] != expected_hash {
                continue;
            }
            let Ok(sig) = Signature::from_slice(&raw[4..]) else {
                continue;
            };
            if vk.verify_strict(body.as_bytes(), &sig).is_ok() {
                return Ok(Checkpoint {
                    origin: origin.to_string(),
                    size,
                    root,
                });
            }
        }
        Err(CheckpointError::NotSigned(name.to_string()))
    }
}
