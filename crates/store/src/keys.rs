//! Encryption at rest inside the store: one data key per subject, wrapped by the KEK and kept
//! in `subject_keys`; caches of unwrapped keys and device owners; KEK rotation and erasure.
//!
//! `vault_state.epoch` is bumped by every rotation and erasure, and every process checks it
//! before using a cached key, so an erasure made by the CLI takes effect in a running server.

use crate::db::{Db, P};
use crate::StoreError;
use msec_vault::{DataKey, KekProvider, KeyRing};
use std::collections::HashMap;
use std::sync::Arc;

pub(crate) struct Keys {
    provider: Arc<dyn KekProvider>,
    ring: KeyRing,
    epoch: i64,
    /// The KEK the database's data keys are (being) wrapped under, as the last rotation or
    /// re-wrap recorded it (`vault_state.kek_id`); None before any.
    database_kek: Option<String>,
    /// `None`: the subject was erased.
    deks: HashMap<String, Option<DataKey>>,
    owners: HashMap<String, String>,
}

fn keys_error(e: msec_vault::VaultError) -> StoreError {
    StoreError::Keys(e.to_string())
}

pub(crate) fn reading_aad(device: &str, sequence: i64) -> Vec<u8> {
    format!("msec-reading/v1\n{device}\n{sequence}").into_bytes()
}

pub(crate) fn profile_aad(device: &str) -> Vec<u8> {
    format!("msec-device/v1\n{device}").into_bytes()
}

impl Keys {
    pub(crate) fn new(provider: Arc<dyn KekProvider>) -> Result<Keys, StoreError> {
        let ring = provider.load().map_err(keys_error)?;
        Ok(Keys {
            provider,
            ring,
            epoch: -1,
            database_kek: None,
            deks: HashMap::new(),
            owners: HashMap::new(),
        })
    }

    pub(crate) fn provider(&self) -> Arc<dyn KekProvider> {
        self.provider.clone()
    }

    /// Drops cached keys if another process rotated keys or erased a subject since last time.
    /// `in_transaction`: called at the start of a write transaction, which may make data keys.
    pub(crate) fn sync(&mut self, db: &mut Db, in_transaction: bool) -> Result<(), StoreError> {
        // In a write transaction on PostgreSQL, the shared row lock makes a rotation pass wait
        // for this transaction, and this one for a pass under way (a pass takes the row first):
        // a data key made here is never wrapped under a KEK that a rotation then destroys.
        // Reads need no lock: they make no keys. (SQLite's write transactions already exclude
        // each other.)
        let sql = if in_transaction && db.engine() == "postgres" {
            "SELECT epoch, kek_id FROM vault_state WHERE id = 1 FOR SHARE"
        } else {
            "SELECT epoch, kek_id FROM vault_state WHERE id = 1"
        };
        let (epoch, kek) = db
            .query(sql, &[], |r| Ok((r.i64(0)?, r.opt_text(1)?)))?
            .into_iter()
            .next()
            .unwrap_or((0, None));
        if epoch != self.epoch {
            self.ring = self.provider.load().map_err(keys_error)?;
            self.deks.clear();
            self.epoch = epoch;
            self.database_kek = kek;
        }
        Ok(())
    }

    /// Refuses keys that unwrap none of this database's data keys (the wrong key file) before
    /// anything is written with them. A few stale rows (restored from a backup older than a
    /// rotation) only fail when read.
    pub(crate) fn check_matches(&mut self, db: &mut Db) -> Result<(), StoreError> {
        self.sync(db, false)?;
        let sample = db.query(
            "SELECT subject, kek_id, wrapped FROM subject_keys WHERE wrapped IS NOT NULL LIMIT 16",
            &[],
            |r| Ok((r.text(0)?, r.text(1)?, r.bytes(2)?)),
        )?;
        let mut last = None;
        for (subject, kek, wrapped) in &sample {
            match self.ring.unwrap(subject, kek, wrapped) {
                Ok(_) => return Ok(()),
                Err(e) => last = Some(e),
            }
        }
        match last {
            None => Ok(()),
            Some(e) => Err(StoreError::Keys(format!(
                "the keys from {} do not open this database's data keys ({e}); start with the key file this database was created with",
                self.provider.describe()
            ))),
        }
    }

    pub(crate) fn owner(&mut self, db: &mut Db, device: &str) -> Result<String, StoreError> {
        if let Some(o) = self.owners.get(device) {
            return Ok(o.clone());
        }
        let owner = db
            .query(
                "SELECT owner FROM devices WHERE id = $1",
                &[P::Text(device)],
                |r| r.text(0),
            )?
            .into_iter()
            .next()
            .ok_or_else(|| StoreError::NotFound(format!("no device {device:?} is registered")))?;
        self.owners.insert(device.to_string(), owner.clone());
        Ok(owner)
    }

    /// The subject's data key; with `create`, one is made (inside the caller's transaction) if
    /// the subject has none yet. `None` when the subject was erased or (without `create`) has
    /// no key.
    pub(crate) fn dek(
        &mut self,
        db: &mut Db,
        subject: &str,
        create: bool,
    ) -> Result<Option<DataKey>, StoreError> {
        if let Some(k) = self.deks.get(subject) {
            return Ok(k.clone());
        }
        let row = db.query(
            "SELECT kek_id, wrapped FROM subject_keys WHERE subject = $1",
            &[P::Text(subject)],
            |r| Ok((r.opt_text(0)?, r.opt_bytes(1)?)),
        )?;
        let key = match row.into_iter().next() {
            Some((Some(kek), Some(wrapped))) => Some(
                self.ring
                    .unwrap(subject, &kek, &wrapped)
                    .map_err(keys_error)?,
            ),
            Some(_) => None,
            None if create => {
                // A process still on a KEK that a rotation or re-wrap elsewhere replaced (one
                // started with the old MSEC_KEK alone, say) must not wrap keys under it: they
                // would be lost when that KEK is destroyed.
                if let Some(kek) = self.database_kek.as_deref() {
                    if kek != self.ring.current_id() {
                        return Err(StoreError::Keys(format!(
                            "the current key-encryption key here ({}, from {}) is not the database's ({kek}): keys were rotated or re-wrapped by another process; restart this one with the current key",
                            self.ring.current_id(),
                            self.provider.describe()
                        )));
                    }
                }
                let dek = DataKey::generate();
                let (kek, wrapped) = self.ring.wrap(subject, &dek);
                db.exec(
                    "INSERT INTO subject_keys (subject, kek_id, wrapped, created_ms) VALUES ($1, $2, $3, $4)",
                    &[P::Text(subject), P::Text(&kek), P::Bytes(&wrapped), P::I64(crate::now_ms())],
                )?;
                Some(dek)
            }
            None => return Ok(None),
        };
        // Keys created inside a transaction that later rolls back must not outlive it; callers
        // call `forget` on rollback.
        self.deks.insert(subject.to_string(), key.clone());
        Ok(key)
    }

    pub(crate) fn forget(&mut self) {
        self.deks.clear();
        self.owners.clear();
    }

    /// Re-wraps every live data key under a fresh KEK and destroys the old KEK, so data keys in
    /// older copies of the database (backups) can no longer be unwrapped. Payloads are not
    /// touched. Returns (new KEK id, data keys re-wrapped).
    pub(crate) fn rotate(&mut self, db: &mut Db) -> Result<(String, usize), StoreError> {
        let _one_at_a_time = self.provider.exclusive().map_err(keys_error)?;
        let mut ring = self.provider.load().map_err(keys_error)?;
        ring.begin_rotation();
        // The new KEK is saved before any data key depends on it, and the old one is kept until
        // every data key has been re-wrapped: a crash anywhere leaves a usable key file.
        self.provider.save(&ring).map_err(keys_error)?;
        let rewrapped = rewrap_all(db, &ring)?;
        ring.finish_rotation();
        self.provider.save(&ring).map_err(keys_error)?;
        // Once more, so that processes that loaded the key file since the last pass load it
        // again and drop the old KEK from memory.
        bump_epoch(db)?;
        let new_id = ring.current_id().to_string();
        self.ring = ring;
        self.deks.clear();
        Ok((new_id, rewrapped))
    }

    /// Re-wraps every data key not yet under the current KEK, for keys that change outside msec
    /// (`MSEC_KEK`, with the old one in `MSEC_KEK_PREVIOUS`): the provider's previous KEKs can
    /// be destroyed once this returns. Returns (current KEK id, data keys re-wrapped).
    pub(crate) fn rewrap(&mut self, db: &mut Db) -> Result<(String, usize), StoreError> {
        let _one_at_a_time = self.provider.exclusive().map_err(keys_error)?;
        let ring = self.provider.load().map_err(keys_error)?;
        let rewrapped = rewrap_all(db, &ring)?;
        bump_epoch(db)?;
        let current = ring.current_id().to_string();
        self.ring = ring;
        self.deks.clear();
        Ok((current, rewrapped))
    }
}

/// Re-wraps every live data key that is not under `ring`'s current KEK, in bounded passes.
fn rewrap_all(db: &mut Db, ring: &KeyRing) -> Result<usize, StoreError> {
    let current = ring.current_id().to_string();
    let mut rewrapped = 0;
    // Keys a running process adds under an older KEK while this runs are caught by the loop.
    loop {
        db.begin()?;
        let step = (|| {
            // First, so that a transaction that may wrap a new data key either commits before
            // this pass reads the keys, or sees the new epoch and KEK (see `sync`, `dek`).
            db.exec(
                "UPDATE vault_state SET epoch = epoch + 1, kek_id = $1 WHERE id = 1",
                &[P::Text(&current)],
            )?;
            // A bounded pass, so that writers wait on the vault row briefly each time; the
            // loop goes on until a pass finds nothing left.
            let rows = db.query(
                "SELECT subject, kek_id, wrapped FROM subject_keys \
                 WHERE wrapped IS NOT NULL AND kek_id <> $1 ORDER BY subject LIMIT 500",
                &[P::Text(&current)],
                |r| Ok((r.text(0)?, r.text(1)?, r.bytes(2)?)),
            )?;
            for (subject, kek, wrapped) in &rows {
                let dek = ring.unwrap(subject, kek, wrapped).map_err(keys_error)?;
                let (_, again) = ring.wrap(subject, &dek);
                db.exec(
                    "UPDATE subject_keys SET kek_id = $2, wrapped = $3 WHERE subject = $1",
                    &[P::Text(subject), P::Text(&current), P::Bytes(&again)],
                )?;
            }
            Ok::<usize, StoreError>(rows.len())
        })();
        match step {
            Ok(n) => {
                db.commit()?;
                rewrapped += n;
                if n == 0 {
                    return Ok(rewrapped);
                }
            }
            Err(e) => {
                let _ = db.rollback();
                return Err(e);
            }
        }
    }
}

pub(crate) fn bump_epoch(db: &mut Db) -> Result<(), StoreError> {
    db.exec("UPDATE vault_state SET epoch = epoch + 1 WHERE id = 1", &[])?;
    Ok(())
}

pub(crate) fn seal_reading(
    dek: &DataKey,
    device: &str,
    sequence: i64,
    envelope: &[u8],
    json: &str,
) -> Vec<u8> {
    let mut plain = Vec::with_capacity(4 + envelope.len() + json.len());
    plain.extend_from_slice(&(envelope.len() as u32).to_be_bytes());
    plain.extend_from_slice(envelope);
    plain.extend_from_slice(json.as_bytes());
    let sealed = dek.seal(&reading_aad(device, sequence), &plain);
    zeroize::Zeroize::zeroize(&mut plain);
    sealed
}

/// (envelope, measurements JSON) of a sealed reading.
pub(crate) fn open_reading(
    dek: &DataKey,
    device: &str,
    sequence: i64,
    sealed: &[u8],
) -> Result<(Vec<u8>, String), StoreError> {
    let plain = dek
        .open(&reading_aad(device, sequence), sealed)
        .map_err(|_| {
            StoreError::Tampered(format!("reading {device}/{sequence} does not decrypt"))
        })?;
    let bad = || StoreError::Tampered(format!("reading {device}/{sequence} is malformed"));
    let len = u32::from_be_bytes(
        plain
            .get(..4)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    ) as usize;
    let envelope = plain.get(4..4 + len).ok_or_else(bad)?.to_vec();
    let json = String::from_utf8(plain[4 + len..].to_vec()).map_err(|_| bad())?;
    Ok((envelope, json))
}
