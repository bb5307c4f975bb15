//! The device side of msec, as a library for device firmware, gateways and our simulators.
//!
//! It owns a device's identity (an Ed25519 key and the key id derived from it), its sequence
//! counter, the sealing of readings into envelopes and the checking of actuator commands
//! ([`command`]). It never talks to the network and never sees another device's key: how the
//! bytes travel (MQTT, HTTP) is the caller's choice.

pub mod command;

pub use command::{
    Command, CommandRefusal, CommandSigner, CommandValue, CommandVerifier, MAX_COMMAND_BYTES,
};

use ed25519_dalek::SigningKey;
use msec_envelope::{key_id, seal, KEY_ID_LEN};
use serde::{Deserialize, Serialize};

pub use msec_envelope::{EnvelopeError, Measurement, Value};

/// The MQTT topic a device publishes its readings on: `{root}/v1/{tenant}/{device}/readings`.
pub fn readings_topic(root: &str, tenant: &str, device_id: &str) -> String {
    format!("{root}/v1/{tenant}/{device_id}/readings")
}

/// The MQTT topic a device receives actuator commands on: `{root}/v1/{tenant}/{device}/commands`.
pub fn commands_topic(root: &str, tenant: &str, device_id: &str) -> String {
    format!("{root}/v1/{tenant}/{device_id}/commands")
}

/// A device's private identity. The seed is secret: `Debug` never prints it.
#[derive(Clone)]
pub struct DeviceKey(SigningKey);

impl std::fmt::Debug for DeviceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceKey(kid={})", hex::encode(self.key_id()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    #[error("a device seed is 32 bytes written as 64 hex digits")]
    BadSeed,
    #[error("unusable Ed25519 public key: {0}")]
    BadPublicKey(&'static str),
}

impl DeviceKey {
    /// A fresh key from the operating system's CSPRNG.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(DeviceKey(SigningKey::from_bytes(&seed)))
    }
    pub fn from_seed(seed: [u8; 32]) -> Self {
        DeviceKey(SigningKey::from_bytes(&seed))
    }
    pub fn from_seed_hex(hex_seed: &str) -> Result<Self, KeyError> {
        let bytes = hex::decode(hex_seed.trim()).map_err(|_| KeyError::BadSeed)?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| KeyError::BadSeed)?;
        Ok(Self::from_seed(seed))
    }
    pub fn seed_hex(&self) -> String {
        hex::encode(self.0.to_bytes())
    }
    pub fn public_key(&self) -> [u8; 32] {
        self.0.verifying_key().to_bytes()
    }
    pub fn key_id(&self) -> [u8; KEY_ID_LEN] {
        key_id(&self.public_key())
    }
}

/// What a device stores about itself (`msec device keygen` writes one). `next_sequence` keeps
/// a restart from reusing sequence numbers only if the device writes it back durably before it
/// sends the readings it numbers (e.g. a block ahead at a time); one that cannot uses
/// [`Device::clocked`] instead.
#[derive(Clone, Serialize, Deserialize)]
pub struct DeviceFile {
    pub device_id: String,
    pub tenant: String,
    /// Hex Ed25519 seed. Keep this file readable only by the device (mode 0600).
    pub seed: String,
    pub public_key: String,
    pub next_sequence: u64,
}

/// Never shows the seed, wherever a device file is printed.
impl std::fmt::Debug for DeviceFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFile")
            .field("device_id", &self.device_id)
            .field("tenant", &self.tenant)
            .field("public_key", &self.public_key)
            .field("next_sequence", &self.next_sequence)
            .finish_non_exhaustive()
    }
}

/// A device that seals readings: identity plus a strictly increasing sequence number.
#[derive(Debug)]
pub struct Device {
    id: String,
    key: DeviceKey,
    next_sequence: u64,
    /// Sequence numbers follow the clock (see [`Device::clocked`]).
    clocked: bool,
}

impl Device {
    /// `next_sequence` must be larger than any sequence this key ever used, or msec rejects the
    /// readings as replays: for a device that stores its counter durably. One that does not
    /// uses [`Device::clocked`].
    pub fn new(id: impl Into<String>, key: DeviceKey, next_sequence: u64) -> Self {
        Device {
            id: id.into(),
            key,
            next_sequence,
            clocked: false,
        }
    }

    /// A device without a durable counter: each reading's sequence number is its clock in
    /// microseconds since the Unix epoch, or one more than the last, whichever is larger. It is
    /// taken at every reading, not only at start: after a restart that follows a clock set
    /// back (a fast clock corrected), readings are refused as replays only until the clock
    /// passes the last number sent before, not for as many readings as the clock was ahead.
    pub fn clocked(id: impl Into<String>, key: DeviceKey) -> Self {
        Device {
            id: id.into(),
            key,
            next_sequence: 1,
            clocked: true,
        }
    }
    pub fn id(&self) -> &str {
        &self.id
    }
    pub fn key(&self) -> &DeviceKey {
        &self.key
    }
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }
    /// Signs the measurements into a COSE_Sign1 envelope and advances the sequence number. An
    /// error says what msec would refuse (a bad name or unit, a value that is not finite, too
    /// many records, too large, sequence numbers used up); the sequence number then stays.
    pub fn seal(
        &mut self,
        measurements: &[Measurement],
        now_unix_secs: f64,
    ) -> Result<Vec<u8>, EnvelopeError> {
        if self.clocked {
            self.next_sequence = self.next_sequence.max(clock_micros());
        }
        let sequence = self.next_sequence;
        let sealed = seal(
            &self.key.0,
            sequence,
            now_unix_secs.floor() as i64,
            measurements,
        )?;
        // Below 2^63, or `seal` refused it: the increment cannot overflow.
        self.next_sequence = sequence + 1;
        Ok(sealed)
    }
}

/// Microseconds since the Unix epoch (1 for a clock set before it).
fn clock_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Seconds since the Unix epoch as a float, the time unit of SenML.
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What msec would refuse is refused when it is sealed, and costs no sequence number.
    #[test]
    fn sealing_refuses_what_msec_would_refuse() {
        let mut d = Device::new("d1", DeviceKey::from_seed([3; 32]), 5);
        let ok = Measurement::number("t", "Cel", 1.0, 20.0);
        let data = |b64: &str| Measurement {
            name: "blob".into(),
            unit: None,
            time: 1.0,
            value: Value::Data(b64.into()),
        };
        let refused: Vec<Vec<Measurement>> = vec![
            vec![],
            vec![Measurement::number("t", "Cel", 1.0, f64::NAN)],
            vec![Measurement::number("t", "Cel", 1.0, f64::INFINITY)],
            vec![Measurement::number("t", "deg C", 1.0, 20.0)],
            vec![Measurement::number("", "Cel", 1.0, 20.0)],
            vec![data("not base64!")],
            vec![ok.clone(); msec_envelope::MAX_RECORDS + 1],
            vec![Measurement::text("big", 1.0, &"x".repeat(70_000))],
        ];
        for ms in refused {
            assert!(d.seal(&ms, 1.0).is_err(), "{:?}", ms.first());
            assert_eq!(d.next_sequence(), 5);
        }
        assert!(d.seal(&[ok.clone(), data("AP8")], 1.0).is_ok());
        assert_eq!(d.next_sequence(), 6);
        // Sequence numbers end below 2^63; the last one is used, then every seal is refused.
        let mut last = Device::new("d1", DeviceKey::from_seed([3; 32]), i64::MAX as u64);
        assert!(last.seal(std::slice::from_ref(&ok), 1.0).is_ok());
        let err = last.seal(&[ok], 1.0).unwrap_err();
        assert_eq!(err.reason(), "malformed_envelope", "{err}");
    }

    #[test]
    fn a_printed_device_file_never_shows_its_seed() {
        let key = DeviceKey::from_seed([7; 32]);
        let file = DeviceFile {
            device_id: "d1".into(),
            tenant: "t".into(),
            seed: key.seed_hex(),
            public_key: "00".into(),
            next_sequence: 1,
        };
        let shown = format!("{file:?} {file:#?}");
        assert!(!shown.contains(&key.seed_hex()[..16]), "{shown}");
        assert!(shown.contains("d1"));
    }

    #[test]
    fn a_clocked_device_follows_its_clock_at_every_reading() {
        let mut d = Device::clocked("d1", DeviceKey::from_seed([1; 32]));
        let seq = |d: &mut Device| {
            msec_envelope::open(
                &d.seal(&[Measurement::boolean("x", 1.0, true)], 5.0)
                    .unwrap(),
                1 << 16,
            )
            .unwrap()
            .sequence
        };
        let before = clock_micros();
        let (a, b) = (seq(&mut d), seq(&mut d));
        assert!(a >= before && b > a, "{before} {a} {b}");
        // Restarted after numbers had run ahead of the clock (it was fast, then set back):
        // it goes on one by one, and takes up the clock again once the clock passes them.
        let mut d = Device::clocked("d1", DeviceKey::from_seed([1; 32]));
        d.next_sequence = clock_micros() + 5_000;
        let ahead = seq(&mut d);
        assert_eq!(seq(&mut d), ahead + 1);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(seq(&mut d) > ahead + 5_000);
    }

    #[test]
    fn sequence_advances_and_key_id_matches() {
        let mut d = Device::new("d1", DeviceKey::from_seed([1; 32]), 10);
        let a = msec_envelope::open(
            &d.seal(&[Measurement::boolean("x", 1.0, true)], 5.0)
                .unwrap(),
            1 << 16,
        )
        .unwrap();
        let b = msec_envelope::open(
            &d.seal(&[Measurement::boolean("x", 1.0, true)], 5.0)
                .unwrap(),
            1 << 16,
        )
        .unwrap();
        assert_eq!((a.sequence, b.sequence), (10, 11));
        assert_eq!(a.key_id, d.key().key_id());
    }

    #[test]
    fn seed_round_trips_and_debug_hides_it() {
        let k = DeviceKey::generate().unwrap();
        assert_eq!(
            DeviceKey::from_seed_hex(&k.seed_hex())
                .unwrap()
                .public_key(),
            k.public_key()
        );
        assert!(!format!("{k:?}").contains(&k.seed_hex()));
        assert!(DeviceKey::from_seed_hex("abcd").is_err());
    }
}
