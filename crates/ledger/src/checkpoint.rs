//! Signed tree heads in the C2SP formats: a `tlog-checkpoint` body (origin, tree size, base64
//! root hash, one per line) signed as a `signed-note` with an Ed25519 key.

use base64::{engine::general_purpose::STANDARD as B64, Engine};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::Hash;

/// Signature type byte of Ed25519 in signed-note key hashes and verifier keys.
const ED25519: u8 = 0x01;
/// Signature type byte of Ed25519 tlog-cosignature/v1 (timestamped) cosigner keys.
const COSIGNATURE_V1: u8 = 0x04;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("malformed verifier key: {0}")]
    BadKey(&'static str),
    #[error("malformed checkpoint: {0}")]
    Malformed(&'static str),
    #[error("no valid signature by {0} on this checkpoint")]
    NotSigned(String),
}

/// An Ed25519 signing key with its signed-note name: the common part of log and witness keys.
struct NamedKey {
    name: String,
    key: SigningKey,
}

impl NamedKey {
    fn new(name: &str, seed: [u8; 32]) -> Result<NamedKey, CheckpointError> {
        if !valid_name(name) {
            return Err(CheckpointError::BadKey(
                "a key name is non-empty, without spaces or '+'",
            ));
        }
        Ok(NamedKey {
            name: name.to_string(),
            key: SigningKey::from_bytes(&seed),
        })
    }
    fn public(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }
    fn hash(&self, kind: u8) -> [u8; 4] {
        typed_key_hash(&self.name, kind, &self.public())
    }
    /// `name+hash+base64(kind || public key)`.
    fn verifier_key(&self, kind: u8) -> String {
        let mut raw = vec![kind];
        raw.extend_from_slice(&self.public());
        format!(
            "{}+{}+{}",
            self.name,
            hex8(&self.hash(kind)),
            B64.encode(raw)
        )
    }
}

/// A log's signing key with its signed-note name.
pub struct NoteKey(NamedKey);

fn typed_key_hash(name: &str, kind: u8, public: &[u8; 32]) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update([b'\n', kind]);
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
        NamedKey::new(name, seed).map(NoteKey)
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The public verifier key in signed-note text form: `name+hash+base64(0x01 || key)`.
    pub fn verifier_key(&self) -> String {
        self.0.verifier_key(ED25519)
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
        let sig = key.0.key.sign(body.as_bytes());
        let mut raw = key.0.hash(ED25519).to_vec();
        raw.extend_from_slice(&sig.to_bytes());
        format!("{body}\n\u{2014} {} {}\n", key.0.name, B64.encode(raw))
    }

    /// Parses a signed checkpoint and checks it carries a valid signature by `verifier_key`.
    /// Signature lines from other keys (witness cosignatures, say) are allowed and ignored.
    pub fn verify(note: &str, verifier_key: &str) -> Result<Checkpoint, CheckpointError> {
        let key = VKey::parse(verifier_key, ED25519)?;
        let (body, sigs) = split_note(note)?;
        let checkpoint = Checkpoint::parse_body(&body)?;
        let valid = key.signatures(sigs).any(|raw| {
            Signature::from_slice(&raw)
                .is_ok_and(|sig| key.vk.verify_strict(body.as_bytes(), &sig).is_ok())
        });
        if valid {
            Ok(checkpoint)
        } else {
            Err(CheckpointError::NotSigned(key.name))
        }
    }

    /// Checks that `note` carries a valid tlog-cosignature/v1 by the cosigner `verifier_key`
    /// and returns the checkpoint with the cosignature's timestamp (Unix seconds).
    pub fn verify_cosignature(
        note: &str,
        verifier_key: &str,
    ) -> Result<(Checkpoint, u64), CheckpointError> {
        let key = VKey::parse(verifier_key, COSIGNATURE_V1)?;
        let (body, sigs) = split_note(note)?;
        let checkpoint = Checkpoint::parse_body(&body)?;
        for raw in key.signatures(sigs) {
            let (Ok(time), Ok(sig)) = (
                <[u8; 8]>::try_from(&raw[..8.min(raw.len())]),
                Signature::from_slice(&raw[8.min(raw.len())..]),
            ) else {
                continue;
            };
            let time = u64::from_be_bytes(time);
            if key
                .vk
                .verify_strict(cosigned_message(&body, time).as_bytes(), &sig)
                .is_ok()
            {
                return Ok((checkpoint, time));
            }
        }
        Err(CheckpointError::NotSigned(key.name))
    }

    /// Parses a checkpoint body (origin, size, root: three newline-terminated lines).
    pub fn parse_body(body: &str) -> Result<Checkpoint, CheckpointError> {
        let mut lines = body.split_terminator('\n');
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
        if !body.ends_with('\n') {
            return Err(CheckpointError::Malformed("body does not end in a newline"));
        }
        Ok(Checkpoint {
            origin: origin.to_string(),
            size,
            root,
        })
    }
}

/// The message a tlog-cosignature/v1 signs: a header line, a time line, the checkpoint body.
fn cosigned_message(body: &str, time: u64) -> String {
    format!("cosignature/v1\ntime {time}\n{body}")
}

/// What a witness signs to raise an alarm. Its own first line keeps it apart from anything a
/// cosigning key signs for tlog-cosignature/v1; the log's origin and the time bind it to one
/// log and moment (so it cannot be replayed against another log, or forever); each text field
/// goes in with its length, so no choice of text makes two different alarms sign the same bytes.
fn alarm_message(origin: &str, time: u64, witness: &str, kind: &str, detail: &str) -> Vec<u8> {
    let mut m = b"msec-witness-alarm/v1\n".to_vec();
    m.extend_from_slice(&time.to_be_bytes());
    for field in [origin, witness, kind, detail] {
        m.extend_from_slice(&(field.len() as u64).to_be_bytes());
        m.extend_from_slice(field.as_bytes());
    }
    m
}

/// Checks that the witness whose cosigner key is `verifier_key` signed this alarm (made with
/// [`CosignerKey::sign_alarm`]) under the name `witness`, about the log `origin` at `time`.
/// Whether `time` is recent is the caller's to judge.
/// Checks that `verifier_key` is a log's verifier key (`name+hash+key`, an Ed25519 signed-note
/// key), before anything is judged against it: a mistyped key must not read as a bad
/// checkpoint, or as nothing to check.
pub fn check_log_key(verifier_key: &str) -> Result<(), CheckpointError> {
    VKey::parse(verifier_key, ED25519).map(|_| ())
}

pub fn verify_alarm(
    verifier_key: &str,
    origin: &str,
    time: u64,
    witness: &str,
    kind: &str,
    detail: &str,
    signature: &str,
) -> Result<(), CheckpointError> {
    let key = VKey::parse(verifier_key, COSIGNATURE_V1)?;
    let signature = B64
        .decode(signature)
        .ok()
        .and_then(|raw| Signature::from_slice(&raw).ok());
    match signature {
        Some(sig)
            if key.name == witness
                && key
                    .vk
                    .verify_strict(&alarm_message(origin, time, witness, kind, detail), &sig)
                    .is_ok() =>
        {
            Ok(())
        }
        _ => Err(CheckpointError::NotSigned(key.name)),
    }
}

/// Splits a signed note into its body (with its final newline) and its signature lines.
fn split_note(note: &str) -> Result<(String, &str), CheckpointError> {
    let (body, sigs) = note.split_once("\n\n").ok_or(CheckpointError::Malformed(
        "no blank line before signatures",
    ))?;
    for line in sigs.lines() {
        if !line.starts_with("\u{2014} ") {
            return Err(CheckpointError::Malformed(
                "signature lines start with an em dash",
            ));
        }
    }
    Ok((format!("{body}\n"), sigs))
}

/// A parsed verifier key of an expected signature type.
struct VKey {
    name: String,
    hash: [u8; 4],
    vk: VerifyingKey,
}

impl VKey {
    fn parse(text: &str, kind: u8) -> Result<VKey, CheckpointError> {
        let mut parts = text.trim().splitn(3, '+');
        let (Some(name), Some(hash_hex), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(CheckpointError::BadKey("expected name+hash+key"));
        };
        let raw = B64
            .decode(key_b64)
            .map_err(|_| CheckpointError::BadKey("key is not base64"))?;
        let (Some(&found), Ok(public)) =
            (raw.first(), <[u8; 32]>::try_from(&raw[1.min(raw.len())..]))
        else {
            return Err(CheckpointError::BadKey("not an Ed25519 key"));
        };
        if found != kind {
            return Err(CheckpointError::BadKey(if kind == ED25519 {
                "not an Ed25519 signed-note key"
            } else {
                "not an Ed25519 cosignature/v1 key"
            }));
        }
        let hash = typed_key_hash(name, kind, &public);
        if hex8(&hash) != hash_hex {
            return Err(CheckpointError::BadKey(
                "key hash does not match name and key",
            ));
        }
        let vk = VerifyingKey::from_bytes(&public)
            .map_err(|_| CheckpointError::BadKey("not a curve point"))?;
        Ok(VKey {
            name: name.to_string(),
            hash,
            vk,
        })
    }

    /// The signature bytes (after the key hash) of the lines this key may have written.
    fn signatures<'a>(&'a self, sigs: &'a str) -> impl Iterator<Item = Vec<u8>> + 'a {
        sigs.lines().filter_map(move |line| {
            let (signer, sig_b64) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
            let raw = B64.decode(sig_b64).ok()?;
            (signer == self.name && raw.len() > 4 && raw[..4] == self.hash)
                .then(|| raw[4..].to_vec())
        })
    }
}

/// A witness's cosigning key (tlog-cosignature/v1, Ed25519) with its name.
pub struct CosignerKey(NamedKey);

impl CosignerKey {
    pub fn new(name: &str, seed: [u8; 32]) -> Result<CosignerKey, CheckpointError> {
        NamedKey::new(name, seed).map(CosignerKey)
    }
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// `name+hash+base64(0x04 || public key)`.
    pub fn verifier_key(&self) -> String {
        self.0.verifier_key(COSIGNATURE_V1)
    }
    /// The signature (base64) over an alarm this witness raises about the log `origin` at
    /// `time` (Unix seconds); see [`verify_alarm`].
    pub fn sign_alarm(&self, origin: &str, time: u64, kind: &str, detail: &str) -> String {
        let message = alarm_message(origin, time, &self.0.name, kind, detail);
        B64.encode(self.0.key.sign(&message).to_bytes())
    }
    /// The cosignature line (ending in a newline) over `checkpoint` at `time` (Unix seconds).
    pub fn cosign(&self, checkpoint: &Checkpoint, time: u64) -> String {
        let sig = self
            .0
            .key
            .sign(cosigned_message(&checkpoint.body(), time).as_bytes());
        let mut raw = self.0.hash(COSIGNATURE_V1).to_vec();
        raw.extend_from_slice(&time.to_be_bytes());
        raw.extend_from_slice(&sig.to_bytes());
        format!("\u{2014} {} {}\n", self.0.name, B64.encode(raw))
    }
}
