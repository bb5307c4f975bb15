//! The msec reading envelope: a SenML pack (RFC 8428, CBOR representation) carried as the
//! payload of a COSE_Sign1 (RFC 9052) signed with Ed25519 by the device.
//!
//! This crate owns the byte format — encoding, decoding, limits and signature checking — and
//! nothing else. It never performs I/O, never looks up devices and never decides policy (replay
//! windows, clock skew): callers get decoded, verified facts and decide. `docs/protocol.md` is
//! the normative description of what is implemented here; keep the two in step.

mod senml;

pub use senml::{
    encode as encode_senml, Measurement, SenmlError, Value, MAX_NAME_BYTES, MAX_RECORDS,
    MAX_UNIT_BYTES,
};

use coset::{
    cbor::value::Value as Cbor, iana, CborSerializable, CoseSign1, CoseSign1Builder,
    TaggedCborSerializable,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Default and recommended upper bound on one envelope, in bytes.
pub const DEFAULT_MAX_ENVELOPE_BYTES: usize = 64 * 1024;
/// COSE header parameter "CWT Claims" (RFC 9597).
pub const HEADER_CWT_CLAIMS: i64 = 15;
/// CWT claim "iat" (issued at, RFC 8392): NumericDate, integer seconds since the Unix epoch.
pub const CLAIM_IAT: i64 = 6;
/// CWT claim "cti" (CWT ID, RFC 8392): here the device's sequence number, 8 bytes big-endian.
pub const CLAIM_CTI: i64 = 7;
/// CoAP content-format of the payload: application/senml+cbor.
pub const CONTENT_FORMAT_SENML_CBOR: u64 = 112;
/// Length of a key id: the first 16 bytes of SHA-256 over the raw 32-byte Ed25519 public key.
pub const KEY_ID_LEN: usize = 16;

/// A key id, derived from the public key so that it can never disagree with it.
pub fn key_id(public_key: &[u8; 32]) -> [u8; KEY_ID_LEN] {
    let digest = Sha256::digest(public_key);
    let mut id = [0u8; KEY_ID_LEN];
    id.copy_from_slice(&digest[..KEY_ID_LEN]);
    id
}

/// Checks that 32 bytes are an Ed25519 public key a device may be registered with, and returns
/// its key id. Refuses encodings that are not curve points and the weak (small-order) keys for
/// which anyone could forge signatures.
pub fn registrable_key(public_key: &[u8; 32]) -> Result<[u8; KEY_ID_LEN], &'static str> {
    let key = VerifyingKey::from_bytes(public_key).map_err(|_| "not a valid Ed25519 public key")?;
    if key.is_weak() {
        return Err("a weak (small-order) Ed25519 key: anyone could forge its signatures");
    }
    Ok(key_id(public_key))
}

/// SHA-256 of an envelope in its canonical form ([`Unverified::canonical`], as msec stores it):
/// the identity of a stored reading, used to tell an idempotent redelivery from a replay with
/// different content.
pub fn digest(envelope: &[u8]) -> [u8; 32] {
    Sha256::digest(envelope).into()
}

/// Why an envelope could not be decoded or verified. `reason()` is the stable code that ends up
/// in security events, metrics and problem+json responses.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EnvelopeError {
    // Receivers read an oversized body only to one byte past the limit: `size` may be a floor.
    #[error("envelope of at least {size} bytes is over the limit of {limit} bytes")]
    Oversized { size: usize, limit: usize },
    #[error("not a COSE_Sign1 structure: {0}")]
    MalformedCose(String),
    #[error("protected header: {0}")]
    BadHeader(String),
    #[error("signature does not verify with the registered key")]
    BadSignature,
    #[error("SenML payload: {0}")]
    Senml(#[from] SenmlError),
}

impl EnvelopeError {
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Oversized { .. } => "oversized",
            EnvelopeError::MalformedCose(_) | EnvelopeError::BadHeader(_) => "malformed_envelope",
            EnvelopeError::BadSignature => "bad_signature",
            EnvelopeError::Senml(_) => "malformed_senml",
        }
    }
}

/// The facts in an envelope that can be read before its signature is checked. Nothing here is
/// trustworthy until [`Unverified::verify`] has succeeded.
#[derive(Debug)]
pub struct Unverified {
    pub key_id: [u8; KEY_ID_LEN],
    pub sequence: u64,
    pub issued_at: i64,
    sign1: CoseSign1,
}

/// A verified reading: the signature checked against a key the caller trusts, the SenML decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub key_id: [u8; KEY_ID_LEN],
    pub sequence: u64,
    /// Seconds since the Unix epoch, from the signed `iat` claim.
    pub issued_at: i64,
    pub measurements: Vec<Measurement>,
}

/// What went wrong in words a device developer can act on (coset's own texts name its
/// internals, such as `Io(EndOfFile)`).
fn explain(e: coset::CoseError) -> String {
    match e {
        coset::CoseError::DecodeFailed(_) => {
            "the body is not well-formed CBOR (cut short, or not CBOR at all)".into()
        }
        coset::CoseError::ExtraneousData => "bytes follow the COSE_Sign1 array".into(),
        coset::CoseError::UnexpectedItem(got, want) => {
            format!("found {got} where a COSE_Sign1 needs {want}")
        }
        other => other.to_string(),
    }
}

/// Decodes the envelope structure and its protected header. Checks the size first so that
/// hostile input is bounded before any parsing.
pub fn open(bytes: &[u8], max_bytes: usize) -> Result<Unverified, EnvelopeError> {
    if bytes.len() > max_bytes {
        return Err(EnvelopeError::Oversized {
            size: bytes.len(),
            limit: max_bytes,
        });
    }
    let sign1 = CoseSign1::from_tagged_slice(bytes)
        .or_else(|_| CoseSign1::from_slice(bytes))
        .map_err(|e| EnvelopeError::MalformedCose(explain(e)))?;
    let header = &sign1.protected.header;
    let bad = |m: &str| EnvelopeError::BadHeader(m.to_string());
    if header.alg
        != Some(coset::RegisteredLabelWithPrivate::Assigned(
            iana::Algorithm::EdDSA,
        ))
    {
        return Err(bad("alg must be EdDSA (-8)"));
    }
    if !header.crit.is_empty() {
        return Err(bad("crit lists parameters msec does not understand"));
    }
    match &header.content_type {
        Some(coset::ContentType::Assigned(f)) if *f as u64 == CONTENT_FORMAT_SENML_CBOR => {}
        _ => return Err(bad("content type must be 112 (application/senml+cbor)")),
    }
    let key_id: [u8; KEY_ID_LEN] = header
        .key_id
        .as_slice()
        .try_into()
        .map_err(|_| bad("kid must be 16 bytes"))?;
    let claims = header
        .rest
        .iter()
        .find(|(label, _)| *label == coset::Label::Int(HEADER_CWT_CLAIMS))
        .map(|(_, v)| v)
        .ok_or_else(|| bad("CWT claims (15) missing"))?;
    let Cbor::Map(claims) = claims else {
        return Err(bad("CWT claims (15) must be a map"));
    };
    // A claim given twice would mean one thing to a verifier that takes the first and another
    // to one that takes the last: refused.
    let claim = |label: i64| {
        let mut given = claims
            .iter()
            .filter(|(k, _)| k.as_integer().map(i128::from) == Some(label as i128))
            .map(|(_, v)| v);
        let first = given.next();
        if given.next().is_some() {
            return Err(bad("a CWT claim appears twice"));
        }
        Ok(first)
    };
    let issued_at = claim(CLAIM_IAT)?
        .and_then(|v| v.as_integer())
        .and_then(|i| i64::try_from(i128::from(i)).ok())
        .ok_or_else(|| bad("iat (6) missing or not an integer"))?;
    let sequence = claim(CLAIM_CTI)?
        .and_then(|v| v.as_bytes())
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| bad("cti (7) missing or not an 8-byte string"))?;
    if sign1.payload.is_none() {
        return Err(bad("detached payloads are not accepted"));
    }
    Ok(Unverified {
        key_id,
        sequence,
        issued_at,
        sign1,
    })
}

impl Unverified {
    /// The envelope as msec stores and identifies it: tag 18, an empty unprotected header, and
    /// the protected header, payload and signature exactly as they arrived, in shortest-form
    /// CBOR. Copies that differ only where no signature reaches (tag, unprotected header,
    /// length encodings) are thus one reading: anyone who sees a reading can re-frame it, and
    /// a re-framed copy that arrived first must not turn the device's own resend into a replay.
    /// An envelope sent in this form is stored byte for byte.
    pub fn canonical(&self) -> Result<Vec<u8>, EnvelopeError> {
        let mut copy = self.sign1.clone();
        copy.unprotected = coset::Header::default();
        copy.to_tagged_vec()
            .map_err(|e| EnvelopeError::MalformedCose(explain(e)))
    }

    /// Checks the signature with the device's registered key, then decodes the SenML.
    pub fn verify(&self, key: &VerifyingKey) -> Result<Reading, EnvelopeError> {
        self.sign1.verify_signature(b"", |sig, data| {
            let sig = Signature::from_slice(sig).map_err(|_| EnvelopeError::BadSignature)?;
            // Strict verification refuses malleable signatures and small-order components, so
            // that msec accepts exactly what a careful independent verifier accepts.
            key.verify_strict(data, &sig)
                .map_err(|_| EnvelopeError::BadSignature)
        })?;
        let payload = self.sign1.payload.as_deref().unwrap_or_default();
        let measurements = senml::decode(payload, self.issued_at as f64)?;
        Ok(Reading {
            key_id: self.key_id,
            sequence: self.sequence,
            issued_at: self.issued_at,
            measurements,
        })
    }
}

/// Signs `measurements` as the device holding `key`, after checking that msec would accept what
/// it signs, so that firmware learns of a mistake at once rather than from a refusal: a
/// sequence number below 2^63, a pack that docs/protocol.md section 4 allows (names, units,
/// finite numbers, base64url data) and the default size limit. Only the clock checks are left
/// to the receiver.
pub fn seal(
    key: &SigningKey,
    sequence: u64,
    issued_at: i64,
    measurements: &[Measurement],
) -> Result<Vec<u8>, EnvelopeError> {
    if sequence > i64::MAX as u64 {
        return Err(EnvelopeError::BadHeader(
            "sequence numbers must be below 2^63".into(),
        ));
    }
    let payload = senml::encode(measurements)?;
    senml::decode(&payload, issued_at as f64)?;
    let bytes = sign(key, sequence, issued_at, payload);
    if bytes.len() > DEFAULT_MAX_ENVELOPE_BYTES {
        return Err(EnvelopeError::Oversized {
            size: bytes.len(),
            limit: DEFAULT_MAX_ENVELOPE_BYTES,
        });
    }
    Ok(bytes)
}

/// Signs `payload` as it is into an envelope, with none of [`seal`]'s checks: what a device
/// that does not use this library might send. Tests of the receiving side use it to make what
/// msec must refuse (an envelope over the size limit, a sequence number of 2^63).
pub fn sign(key: &SigningKey, sequence: u64, issued_at: i64, payload: Vec<u8>) -> Vec<u8> {
    let protected = protected_header(&key.verifying_key().to_bytes(), sequence, issued_at).build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(b"", |data| key.sign(data).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        // Serialising a structure just built cannot fail; an empty envelope would be refused by
        // every receiver, which is the safe failure.
        .unwrap_or_default()
}

/// The protected header of section 3 of docs/protocol.md.
fn protected_header(public: &[u8; 32], sequence: u64, issued_at: i64) -> coset::HeaderBuilder {
    let claims = Cbor::Map(vec![
        (
            Cbor::Integer(CLAIM_IAT.into()),
            Cbor::Integer(issued_at.into()),
        ),
        (
            Cbor::Integer(CLAIM_CTI.into()),
            Cbor::Bytes(sequence.to_be_bytes().to_vec()),
        ),
    ]);
    coset::HeaderBuilder::new()
        .algorithm(iana::Algorithm::EdDSA)
        .key_id(key_id(public).to_vec())
        .content_format(iana::CoapContentFormat::SenmlCbor)
        .value(HEADER_CWT_CLAIMS, claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_envelopes_are_explained_in_plain_words() {
        let say = |bytes: &[u8]| open(bytes, 1024).unwrap_err().to_string();
        assert!(
            say(b"hello").contains("not well-formed CBOR"),
            "{}",
            say(b"hello")
        );
        assert!(say(&[0x01]).contains("found"), "{}", say(&[0x01]));
        assert!(!say(b"hello").contains("EndOfFile"));
    }

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn sample() -> Vec<Measurement> {
        vec![
            Measurement::number(
                "urn:dev:msec:park-01:temperature",
                "Cel",
                1_700_000_000.25,
                21.5,
            ),
            Measurement::number("urn:dev:msec:park-01:co2", "ppm", 1_700_000_000.25, 415.0),
        ]
    }

    #[test]
    fn what_seal_makes_is_already_canonical_and_reframed_copies_are_not() {
        let bytes = seal(&key(), 42, 1_700_000_000, &sample()).unwrap();
        let canonical = open(&bytes, 4096).unwrap().canonical().unwrap();
        assert_eq!(canonical, bytes, "stored byte for byte");
        // Untagged, or with a non-shortest length head for the payload: the same reading.
        let untagged = &bytes[1..];
        assert_eq!(open(untagged, 4096).unwrap().canonical().unwrap(), bytes);
        let env = open(&bytes, 4096).unwrap();
        let payload = env.sign1.payload.clone().unwrap();
        let at = bytes
            .windows(payload.len())
            .position(|w| w == payload.as_slice())
            .unwrap();
        assert_eq!(
            usize::from(bytes[at - 1]),
            payload.len(),
            "a one-byte length head"
        );
        assert_eq!(bytes[at - 2], 0x58);
        let mut long_head = bytes[..at - 2].to_vec();
        long_head.extend_from_slice(&[0x59, 0, payload.len() as u8]);
        long_head.extend_from_slice(&bytes[at..]);
        assert_eq!(open(&long_head, 4096).unwrap().canonical().unwrap(), bytes);
    }

    #[test]
    fn round_trip_verifies_and_decodes() {
        let bytes = seal(&key(), 42, 1_700_000_000, &sample()).unwrap();
        let env = open(&bytes, DEFAULT_MAX_ENVELOPE_BYTES).unwrap();
        assert_eq!(env.sequence, 42);
        assert_eq!(env.key_id, key_id(&key().verifying_key().to_bytes()));
        let reading = env.verify(&key().verifying_key()).unwrap();
        assert_eq!(reading.measurements, sample());
    }

    #[test]
    fn every_flipped_byte_is_rejected() {
        let bytes = seal(&key(), 1, 1_700_000_000, &sample()).unwrap();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x01;
            let result = open(&bad, DEFAULT_MAX_ENVELOPE_BYTES)
                .and_then(|e| e.verify(&key().verifying_key()));
            assert!(result.is_err(), "flipping byte {i} was accepted");
        }
    }

    /// A claim given twice, signed by the device itself, is refused: verifiers taking the first
    /// and the last would read different sequence numbers.
    #[test]
    fn a_claim_given_twice_is_malformed() {
        let k = key();
        for label in [CLAIM_IAT, CLAIM_CTI] {
            let value = |v: u8| match label {
                CLAIM_CTI => Cbor::Bytes([v; 8].to_vec()),
                _ => Cbor::Integer(1_700_000_000.into()),
            };
            let claims = Cbor::Map(vec![
                (
                    Cbor::Integer(CLAIM_IAT.into()),
                    Cbor::Integer(1_700_000_000.into()),
                ),
                (
                    Cbor::Integer(CLAIM_CTI.into()),
                    Cbor::Bytes(1u64.to_be_bytes().to_vec()),
                ),
                (Cbor::Integer(label.into()), value(2)),
            ]);
            let protected = coset::HeaderBuilder::new()
                .algorithm(iana::Algorithm::EdDSA)
                .key_id(key_id(&k.verifying_key().to_bytes()).to_vec())
                .content_format(iana::CoapContentFormat::SenmlCbor)
                .value(HEADER_CWT_CLAIMS, claims)
                .build();
            let bytes = CoseSign1Builder::new()
                .protected(protected)
                .payload(senml::encode(&sample()).unwrap())
                .create_signature(b"", |data| k.sign(data).to_bytes().to_vec())
                .build()
                .to_tagged_vec()
                .unwrap();
            let err = open(&bytes, DEFAULT_MAX_ENVELOPE_BYTES).unwrap_err();
            assert_eq!(err.reason(), "malformed_envelope", "claim {label}: {err}");
        }
    }

    #[test]
    fn other_key_is_bad_signature() {
        let bytes = seal(&key(), 1, 1_700_000_000, &sample()).unwrap();
        let other = SigningKey::from_bytes(&[8u8; 32]).verifying_key();
        let err = open(&bytes, 1 << 16).unwrap().verify(&other).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
    }

    #[test]
    fn weak_and_invalid_keys_cannot_be_registered() {
        assert!(registrable_key(&key().verifying_key().to_bytes()).is_ok());
        // The identity point (encoded as y = 1) has order 1: every signature "verifies".
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(registrable_key(&identity).unwrap_err().contains("weak"));
        // y = 2 is not on the curve.
        let mut off_curve = [0u8; 32];
        off_curve[0] = 2;
        assert!(registrable_key(&off_curve).is_err());
    }

    /// An envelope with `header`, signed correctly by `sign` (which gets the Sig_structure);
    /// without a payload, the payload is detached.
    fn signed(
        header: coset::Header,
        payload: Option<Vec<u8>>,
        sign: impl FnOnce(&[u8]) -> Vec<u8>,
    ) -> Vec<u8> {
        let builder = CoseSign1Builder::new().protected(header);
        match payload {
            Some(p) => builder.payload(p).create_signature(b"", sign),
            None => {
                builder.create_detached_signature(b"", &senml::encode(&sample()).unwrap(), sign)
            }
        }
        .build()
        .to_tagged_vec()
        .unwrap()
    }

    #[test]
    fn validly_signed_envelopes_that_break_the_header_rules_are_malformed() {
        let base = || protected_header(&key().verifying_key().to_bytes(), 1, 1_700_000_000);
        let payload = || Some(senml::encode(&sample()).unwrap());
        let sign = |data: &[u8]| key().sign(data).to_bytes().to_vec();
        let control = signed(base().build(), payload(), sign);
        assert!(open(&control, 1 << 16)
            .unwrap()
            .verify(&key().verifying_key())
            .is_ok());
        let cases = [
            (
                "crit",
                base().add_critical(iana::HeaderParameter::Alg).build(),
                payload(),
            ),
            (
                "alg",
                base().algorithm(iana::Algorithm::ES256).build(),
                payload(),
            ),
            (
                "content type",
                base()
                    .content_format(iana::CoapContentFormat::SenmlJson)
                    .build(),
                payload(),
            ),
            ("detached payload", base().build(), None),
        ];
        for (what, header, payload) in cases {
            let bytes = signed(header, payload, sign);
            let err = open(&bytes, 1 << 16).err();
            assert_eq!(
                err.map(|e| e.reason()),
                Some("malformed_envelope"),
                "{what} was not refused"
            );
        }
    }

    /// The key holder can make a signature with the identity as R and S = k·a: the cofactorless
    /// equation [S]B = R + [k]A holds, so a lax verifier accepts it, but R has small order and
    /// RFC 8032 verifiers that check it, as msec does, refuse it.
    #[test]
    fn signatures_only_lax_verifiers_accept_are_bad_signatures() {
        use sha2::Digest;
        let key = key();
        let public = key.verifying_key();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let mut lax_accepts = false;
        let bytes = signed(
            protected_header(&public.to_bytes(), 1, 1_700_000_000).build(),
            Some(senml::encode(&sample()).unwrap()),
            |data| {
                let hash: [u8; 64] = sha2::Sha512::new()
                    .chain_update(identity)
                    .chain_update(public.to_bytes())
                    .chain_update(data)
                    .finalize()
                    .into();
                let k = curve25519_dalek::Scalar::from_bytes_mod_order_wide(&hash);
                let sig = [identity, (k * key.to_scalar()).to_bytes()].concat();
                let parsed = Signature::from_slice(&sig).unwrap();
                lax_accepts = ed25519_dalek::Verifier::verify(&public, data, &parsed).is_ok();
                sig
            },
        );
        assert!(
            lax_accepts,
            "the forged signature should fool a lax verifier"
        );
        let err = open(&bytes, 1 << 16).unwrap().verify(&public).unwrap_err();
        assert_eq!(err.reason(), "bad_signature");
    }

    #[test]
    fn oversized_is_rejected_before_parsing() {
        let err = open(&[0u8; 100], 99).unwrap_err();
        assert_eq!(err.reason(), "oversized");
    }

    #[test]
    fn garbage_never_panics() {
        // A cheap deterministic sweep; tests/mutation_fuzz.rs covers this more deeply.
        let mut state = 0x2545F4914F6CDD1Du64;
        for len in 0..512usize {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = open(&bytes, 1 << 16).and_then(|e| e.verify(&key().verifying_key()));
        }
        let good = seal(&key(), 1, 1_700_000_000, &sample()).unwrap();
        for cut in 0..good.len() {
            assert!(open(&good[..cut], 1 << 16)
                .and_then(|e| e.verify(&key().verifying_key()))
                .is_err());
        }
    }
}
