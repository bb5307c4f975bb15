//! Actuator commands: the platform signs a command for one device, the device verifies it before
//! acting. Specified byte for byte in docs/protocol.md section 7.
//!
//! This module owns the command envelope (encoding, limits, signature, freshness and replay
//! checks) and the device's replay state. It never does I/O, never acts on a command itself and
//! never lets a refused command advance the replay state; it must never panic on received bytes.

use coset::{
    cbor::value::Value as Cbor, iana, CborSerializable, CoseSign1, CoseSign1Builder,
    TaggedCborSerializable,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use msec_envelope::{key_id, registrable_key, KEY_ID_LEN};

use crate::KeyError;

/// Upper bound on one command envelope, checked before any parsing.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Upper bound on the target device id and on the resource path, in bytes.
pub const MAX_COMMAND_FIELD_BYTES: usize = 128;
/// Longest allowed `expires_at - issued_at`: a leaked command is useless after this.
pub const MAX_COMMAND_LIFETIME_SECS: i64 = 3600;
/// How far in the future `issued_at` may lie by default (device clocks drift), as for readings.
pub const DEFAULT_COMMAND_SKEW_SECS: u32 = 300;
/// Content type in the protected header. A text type of its own, so that nothing else the
/// platform key might ever sign can be mistaken for a command.
pub const COMMAND_CONTENT_TYPE: &str = "application/vnd.msec.command+cbor";

/// Payload map keys (section 7 of docs/protocol.md).
pub const KEY_TARGET: i64 = 1;
pub const KEY_RESOURCE: i64 = 2;
pub const KEY_VALUE: i64 = 3;
pub const KEY_COMMAND_ID: i64 = 4;
pub const KEY_ISSUED_AT: i64 = 5;
pub const KEY_EXPIRES_AT: i64 = 6;

/// The value a command sets. Floats must be finite.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandValue {
    Bool(bool),
    Integer(i64),
    Float(f64),
    Text(String),
}

/// A command for one device. Only trustworthy when returned by [`CommandVerifier::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// The device id the command is for.
    pub target: String,
    /// What to act on, e.g. `plug/switch`.
    pub resource: String,
    pub value: CommandValue,
    /// Strictly increasing per device, 1 to 2^63 - 1: the replay guard.
    pub command_id: u64,
    /// Unix seconds.
    pub issued_at: i64,
    /// Unix seconds; the command is refused from this second on.
    pub expires_at: i64,
}

/// Why a command was refused. `reason()` is the stable code for logs and reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandRefusal {
    #[error("command is larger than {MAX_COMMAND_BYTES} bytes, or a field exceeds {MAX_COMMAND_FIELD_BYTES} bytes")]
    Oversized,
    #[error("malformed command: {0}")]
    Malformed(&'static str),
    #[error("command is signed by a key other than the pinned platform key")]
    UnknownKey,
    #[error("command signature does not verify with the platform key")]
    BadSignature,
    #[error("command lifetime must be positive and at most {MAX_COMMAND_LIFETIME_SECS} seconds")]
    BadLifetime,
    #[error("command is addressed to another device")]
    WrongTarget,
    #[error("command has expired")]
    Expired,
    #[error("command is issued further in the future than the allowed clock skew")]
    NotYetValid,
    #[error("command id is not newer than the last accepted one")]
    Replayed,
}

impl CommandRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            CommandRefusal::Oversized => "oversized",
            CommandRefusal::Malformed(_) => "malformed",
            CommandRefusal::UnknownKey => "unknown_key",
            CommandRefusal::BadSignature => "bad_signature",
            CommandRefusal::BadLifetime => "bad_lifetime",
            CommandRefusal::WrongTarget => "wrong_target",
            CommandRefusal::Expired => "expired",
            CommandRefusal::NotYetValid => "not_yet_valid",
            CommandRefusal::Replayed => "replayed",
        }
    }
}

/// The platform's command key. The seed is secret: `Debug` prints only the key id.
#[derive(Clone)]
pub struct CommandSigner(SigningKey);

impl std::fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CommandSigner(kid={})", hex::encode(self.key_id()))
    }
}

impl CommandSigner {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self::from_seed(seed))
    }
    pub fn from_seed(seed: [u8; 32]) -> Self {
        CommandSigner(SigningKey::from_bytes(&seed))
    }
    /// The 32 bytes devices pin.
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(&self.public_key())
    }
    /// Signs a command into a tagged COSE_Sign1. Refuses, with the code a device would give, any
    /// command that every device would refuse whatever its clock or state.
    pub fn seal(&self, command: &Command) -> Result<Vec<u8>, CommandRefusal> {
        check_fields(command)?;
        let sign1 = CoseSign1Builder::new()
            .protected(protected_header(&self.key_id()))
            .payload(encode_payload(command))
            .create_signature(b"", |data| self.0.sign(data).to_bytes().to_vec())
            .build();
        let bytes = sign1
            .to_tagged_vec()
            .map_err(|_| CommandRefusal::Malformed("could not encode"))?;
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(CommandRefusal::Oversized);
        }
        Ok(bytes)
    }
}

/// The device side: the pinned platform key, the device's own id and its replay state. Not
/// `Clone`: two copies of the replay state would each accept the same command once.
#[derive(Debug)]
pub struct CommandVerifier {
    key: VerifyingKey,
    key_id: [u8; KEY_ID_LEN],
    device_id: String,
    last_accepted: u64,
    max_skew_secs: u32,
}

impl CommandVerifier {
    /// `platform_public_key` is pinned at provisioning, never learned over the network.
    /// `last_accepted` is the command id the device last accepted (0 if none), restored from
    /// durable storage: starting lower reopens the replay window.
    pub fn new(
        platform_public_key: &[u8; 32],
        device_id: impl Into<String>,
        last_accepted: u64,
    ) -> Result<Self, KeyError> {
        // A weak key would let anyone forge commands, so it is refused like a device key.
        let key_id = registrable_key(platform_public_key).map_err(KeyError::BadPublicKey)?;
        let key = VerifyingKey::from_bytes(platform_public_key)
            .map_err(|_| KeyError::BadPublicKey("not a valid Ed25519 public key"))?;
        Ok(CommandVerifier {
            key,
            key_id,
            device_id: device_id.into(),
            last_accepted,
            max_skew_secs: DEFAULT_COMMAND_SKEW_SECS,
        })
    }
    /// How far in the future `issued_at` may lie.
    pub fn with_max_skew(mut self, secs: u32) -> Self {
        self.max_skew_secs = secs;
        self
    }
    pub fn device_id(&self) -> &str {
        &self.device_id
    }
    /// Persist this after every accepted command, before acting on it.
    pub fn last_accepted(&self) -> u64 {
        self.last_accepted
    }
    /// Checks a received command in the documented order; on success records its id, so the
    /// same command (or an older one) is refused from now on.
    pub fn verify(&mut self, bytes: &[u8], now_unix_secs: i64) -> Result<Command, CommandRefusal> {
        let command = self.check(bytes, now_unix_secs)?;
        self.last_accepted = command.command_id;
        Ok(command)
    }

    fn check(&self, bytes: &[u8], now: i64) -> Result<Command, CommandRefusal> {
        let malformed = CommandRefusal::Malformed;
        if bytes.len() > MAX_COMMAND_BYTES {
            return Err(CommandRefusal::Oversized);
        }
        let sign1 = CoseSign1::from_tagged_slice(bytes)
            .map_err(|_| malformed("not a tagged COSE_Sign1"))?;
        let kid: [u8; KEY_ID_LEN] = sign1
            .protected
            .header
            .key_id
            .as_slice()
            .try_into()
            .map_err(|_| malformed("kid must be 16 bytes"))?;
        // Requiring the exact protected header bytes rules out unknown or critical parameters
        // and alternative encodings in one comparison.
        let expected = protected_header(&kid)
            .to_vec()
            .map_err(|_| malformed("protected header"))?;
        if sign1.protected.original_data.as_deref() != Some(expected.as_slice()) {
            return Err(malformed(
                "protected header is not exactly {1: -8, 3: ct, 4: kid}",
            ));
        }
        if !sign1.unprotected.is_empty() {
            return Err(malformed("unprotected header must be empty"));
        }
        let Some(payload) = sign1.payload.as_deref() else {
            return Err(malformed("detached payloads are not accepted"));
        };
        // One command, one byte string: without this, framing that the signature does not cover
        // (length encodings, untagged forms) could vary while the command stays valid.
        if sign1.clone().to_tagged_vec().ok().as_deref() != Some(bytes) {
            return Err(malformed("envelope is not in deterministic encoding"));
        }
        if kid != self.key_id {
            return Err(CommandRefusal::UnknownKey);
        }
        sign1.verify_signature(b"", |sig, data| {
            let sig = Signature::from_slice(sig).map_err(|_| CommandRefusal::BadSignature)?;
            // Strict: no malleable signatures, no small-order components.
            self.key
                .verify_strict(data, &sig)
                .map_err(|_| CommandRefusal::BadSignature)
        })?;
        // The payload is parsed only once it is known to come from the platform.
        let command = decode_payload(payload)?;
        check_fields(&command)?;
        if command.target != self.device_id {
            return Err(CommandRefusal::WrongTarget);
        }
        if now >= command.expires_at {
            return Err(CommandRefusal::Expired);
        }
        if command.issued_at > now.saturating_add(i64::from(self.max_skew_secs)) {
            return Err(CommandRefusal::NotYetValid);
        }
        if command.command_id <= self.last_accepted {
            return Err(CommandRefusal::Replayed);
        }
        Ok(command)
    }
}

fn protected_header(kid: &[u8; KEY_ID_LEN]) -> coset::Header {
    coset::HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .content_type(COMMAND_CONTENT_TYPE.to_string())
        .key_id(kid.to_vec())
        .build()
}

/// Deterministic CBOR (RFC 8949 section 4.2.1): keys ascending, shortest integer and float
/// forms, definite lengths; ciborium writes exactly that for this map.
fn encode_payload(command: &Command) -> Vec<u8> {
    let value = match &command.value {
        CommandValue::Bool(b) => Cbor::Bool(*b),
        CommandValue::Integer(i) => Cbor::Integer((*i).into()),
        CommandValue::Float(f) => Cbor::Float(*f),
        CommandValue::Text(t) => Cbor::Text(t.clone()),
    };
    let map = Cbor::Map(vec![
        (
            Cbor::Integer(KEY_TARGET.into()),
            Cbor::Text(command.target.clone()),
        ),
        (
            Cbor::Integer(KEY_RESOURCE.into()),
            Cbor::Text(command.resource.clone()),
        ),
        (Cbor::Integer(KEY_VALUE.into()), value),
        (
            Cbor::Integer(KEY_COMMAND_ID.into()),
            Cbor::Integer(command.command_id.into()),
        ),
        (
            Cbor::Integer(KEY_ISSUED_AT.into()),
            Cbor::Integer(command.issued_at.into()),
        ),
        (
            Cbor::Integer(KEY_EXPIRES_AT.into()),
            Cbor::Integer(command.expires_at.into()),
        ),
    ]);
    let mut out = Vec::new();
    // Writing a Value into a Vec cannot fail; an empty payload is refused by every device.
    let _ = ciborium::ser::into_writer(&map, &mut out);
    out
}

fn decode_payload(payload: &[u8]) -> Result<Command, CommandRefusal> {
    let malformed = CommandRefusal::Malformed;
    // ciborium bounds nesting depth, and the envelope size bounds everything else.
    let value: Cbor =
        ciborium::de::from_reader(payload).map_err(|_| malformed("payload is not CBOR"))?;
    let Cbor::Map(entries) = value else {
        return Err(malformed("payload must be a map"));
    };
    let keys: Vec<Option<i128>> = entries
        .iter()
        .map(|(k, _)| k.as_integer().map(i128::from))
        .collect();
    let expected: Vec<Option<i128>> = (KEY_TARGET..=KEY_EXPIRES_AT)
        .map(|k| Some(i128::from(k)))
        .collect();
    if keys != expected {
        return Err(malformed(
            "payload map must hold exactly keys 1 to 6, in order",
        ));
    }
    let mut values = entries.into_iter().map(|(_, v)| v);
    let mut next = || values.next().unwrap_or(Cbor::Null);
    let text = |v: Cbor, what: &'static str| match v {
        Cbor::Text(t) => Ok(t),
        _ => Err(malformed(what)),
    };
    let int = |v: Cbor, what: &'static str| match v {
        Cbor::Integer(i) => Ok(i128::from(i)),
        _ => Err(malformed(what)),
    };
    let target = text(next(), "target (1) must be text")?;
    let resource = text(next(), "resource (2) must be text")?;
    let value = match next() {
        Cbor::Bool(b) => CommandValue::Bool(b),
        Cbor::Integer(i) => CommandValue::Integer(
            i64::try_from(i128::from(i)).map_err(|_| malformed("value (3) out of range"))?,
        ),
        Cbor::Float(f) => CommandValue::Float(f),
        Cbor::Text(t) => CommandValue::Text(t),
        _ => return Err(malformed("value (3) must be a bool, number or text")),
    };
    let uint = |v: Cbor, what: &'static str| {
        int(v, what).and_then(|i| u64::try_from(i).map_err(|_| malformed(what)))
    };
    let command_id = uint(next(), "command id (4) must be an unsigned integer")?;
    let time = |v: Cbor, what: &'static str| {
        int(v, what).and_then(|i| {
            i64::try_from(i)
                .ok()
                .filter(|t| *t >= 0)
                .ok_or(malformed(what))
        })
    };
    let issued_at = time(
        next(),
        "issued_at (5) must be an unsigned integer below 2^63",
    )?;
    let expires_at = time(
        next(),
        "expires_at (6) must be an unsigned integer below 2^63",
    )?;
    let command = Command {
        target,
        resource,
        value,
        command_id,
        issued_at,
        expires_at,
    };
    if encode_payload(&command) != payload {
        return Err(malformed("payload is not in deterministic encoding"));
    }
    Ok(command)
}

/// The rules that hold whatever the device's clock and state: shared by signer and verifier.
fn check_fields(command: &Command) -> Result<(), CommandRefusal> {
    let malformed = CommandRefusal::Malformed;
    if command.target.is_empty() {
        return Err(malformed("target is empty"));
    }
    // A small alphabet keeps the path safe to log and to dispatch on in firmware.
    if command.resource.is_empty()
        || !command
            .resource
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
    {
        return Err(malformed(
            "resource must be 1 or more of A-Z a-z 0-9 . _ - /",
        ));
    }
    if matches!(command.value, CommandValue::Float(f) if !f.is_finite()) {
        return Err(malformed("value must be a finite number"));
    }
    if command.command_id == 0 || command.command_id > i64::MAX as u64 {
        return Err(malformed("command id must be between 1 and 2^63 - 1"));
    }
    if command.issued_at < 0 {
        return Err(malformed("issued_at must not be negative"));
    }
    if command.target.len() > MAX_COMMAND_FIELD_BYTES
        || command.resource.len() > MAX_COMMAND_FIELD_BYTES
    {
        return Err(CommandRefusal::Oversized);
    }
    let lifetime = command.expires_at.saturating_sub(command.issued_at);
    if lifetime <= 0 || lifetime > MAX_COMMAND_LIFETIME_SECS {
        return Err(CommandRefusal::BadLifetime);
    }
    Ok(())
}
