//! Signing keys of the log and of witnesses, kept as small JSON files readable only by their
//! owner: `{"name": …, "seed": <64 hex digits>}`.

use crate::NotaryError;
use msec_ledger::{Checkpoint, CosignerKey, NoteKey};
use std::path::Path;
use zeroize::Zeroizing;

#[derive(serde::Serialize, serde::Deserialize)]
struct KeyFile {
    name: String,
    seed: String,
}

/// Reads the named Ed25519 seed in `path`, creating the file with a fresh seed and
/// `default_name` if it does not exist. Returns (name, seed, created).
pub fn load_or_create_seed(
    path: &Path,
    default_name: impl FnOnce(&[u8; 32]) -> String,
) -> Result<(String, Zeroizing<[u8; 32]>, bool), NotaryError> {
    let shown = path.display();
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let file: KeyFile = serde_json::from_str(&text)
                .map_err(|e| NotaryError::Io(format!("{shown} is not a key file: {e}")))?;
            let seed_hex = Zeroizing::new(file.seed);
            let mut seed = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(seed_hex.as_bytes(), &mut seed[..])
                .map_err(|_| NotaryError::Io(format!("{shown}: the seed is not 64 hex digits")))?;
            Ok((file.name, seed, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = Zeroizing::new([0u8; 32]);
            getrandom::fill(&mut seed[..])
                .map_err(|e| NotaryError::Io(format!("no randomness: {e}")))?;
            let public = ed25519_dalek::SigningKey::from_bytes(&seed)
                .verifying_key()
                .to_bytes();
            let name = default_name(&public);
            let text = Zeroizing::new(
                serde_json::to_string_pretty(&KeyFile {
                    name: name.clone(),
                    seed: hex::encode(&seed[..]),
                })
                .expect("a key file serialises"),
            );
            msec_vault::write_private_new(path, text.as_bytes())
                .map_err(|e| NotaryError::Io(format!("cannot write {shown}: {e}")))?;
            Ok((name, seed, true))
        }
        Err(e) => Err(NotaryError::Io(format!("cannot read {shown}: {e}"))),
    }
}

/// The log's checkpoint-signing key; its name is the log's origin.
pub struct LogKey {
    key: NoteKey,
}

impl LogKey {
    /// Loads the log key from `path`, creating it on first use with an origin derived from
    /// the public key (`msec/log-<8 hex digits>`), so two deployments never share an origin.
    pub fn load_or_create(path: &Path) -> Result<(LogKey, bool), NotaryError> {
        let (name, seed, created) = load_or_create_seed(path, |public| {
            format!("msec/log-{}", hex::encode(&public[..4]))
        })?;
        Ok((
            LogKey {
                key: NoteKey::new(&name, *seed)?,
            },
            created,
        ))
    }
    pub fn from_seed(origin: &str, seed: [u8; 32]) -> Result<LogKey, NotaryError> {
        Ok(LogKey {
            key: NoteKey::new(origin, seed)?,
        })
    }
    pub fn origin(&self) -> &str {
        self.key.name()
    }
    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }
    pub fn sign(&self, cp: &Checkpoint) -> String {
        cp.sign(&self.key)
    }
}

/// Loads a witness's cosigning key, creating it (named `witness-<8 hex digits>`) on first use.
pub fn load_or_create_cosigner(path: &Path) -> Result<(CosignerKey, bool), NotaryError> {
    let (name, seed, created) = load_or_create_seed(path, |public| {
        format!("msec/witness-{}", hex::encode(&public[..4]))
    })?;
    Ok((CosignerKey::new(&name, *seed)?, created))
}
