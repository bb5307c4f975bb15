//! Data-subject rights: consent records, export of everything held about a subject, erasure
//! by crypto-shredding, and KEK rotation (which erasure relies on to reach older backups).

use crate::db::P;
use crate::log::{RecordId, RecordKind};
use crate::{now_ms, Device, ReadingQuery, Store, StoreError, StoredReading};
use serde::Serialize;
use std::io::Write;

/// Who consented to what, when, and when it was withdrawn.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Consent {
    pub id: i64,
    pub subject: String,
    pub grantee: String,
    pub purpose: String,
    pub given_ms: i64,
    pub withdrawn_ms: Option<i64>,
}

/// Everything held about one subject, decrypted, each record with its log index: the parts of
/// [`Store::export_subject_in_parts`] gathered in memory (see [`Store::export_subject`]).
#[derive(Debug, Serialize)]
pub struct SubjectExport {
    pub subject: String,
    pub devices: Vec<Device>,
    pub readings: Vec<ExportedReading>,
    pub consents: Vec<Consent>,
    /// (record id, log index) of every record above.
    pub records: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct ExportedReading {
    #[serde(flatten)]
    pub reading: StoredReading,
    /// The device's signed COSE envelope as stored (its canonical form, docs/protocol.md
    /// section 3), hex: proof of origin.
    pub envelope: String,
}

/// One piece of a subject's export. [`Store::export_subject_in_parts`] hands them out in this
/// order: the devices once, the readings in pages (none if there are none), the consents once,
/// then the records in pages: the devices', the readings' in the order given, the consents'.
#[derive(Debug)]
pub enum ExportPart {
    Devices(Vec<Device>),
    Readings(Vec<ExportedReading>),
    Consents(Vec<Consent>),
    /// (record id, log index).
    Records(Vec<(String, u64)>),
}

/// Readings and records per [`ExportPart`]: a page of a subject's export stays small however
/// much is held about it (256 envelopes of at most 64 KiB: 16 MiB at worst).
const EXPORT_PAGE: u32 = 256;

/// What an erasure did.
#[derive(Debug, Serialize)]
pub struct Erasure {
    pub subject: String,
    pub devices_revoked: u64,
    /// The new key-encryption key's id; or why the KEK could not be rotated (keys from a
    /// read-only source), in which case backups taken before the erasure still hold the
    /// subject's data key wrapped under a KEK that exists.
    pub kek: Result<String, String>,
}

fn valid_subject(s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::NotFound(format!(
            "{s:?} is not a subject id (letters, digits and -_.:@, at most 128)"
        )))
    }
}

impl Store {
    pub fn is_erased(&mut self, subject: &str) -> Result<bool, StoreError> {
        let n = self.db.query(
            "SELECT COUNT(*) FROM subject_keys WHERE subject = $1 AND erased_ms IS NOT NULL",
            &[P::Text(subject)],
            |r| r.i64(0),
        )?;
        Ok(n.first().copied().unwrap_or(0) > 0)
    }

    pub fn give_consent(
        &mut self,
        subject: &str,
        grantee: &str,
        purpose: &str,
    ) -> Result<Consent, StoreError> {
        valid_subject(subject)?;
        let id_like = |c: char| c.is_ascii_alphanumeric() || "-_.:@".contains(c);
        if grantee.is_empty() || grantee.len() > 128 || !grantee.chars().all(id_like) {
            return Err(StoreError::Invalid(
                "a grantee is 1 to 128 characters of A-Z a-z 0-9 - _ . : @".into(),
            ));
        }
        if purpose.trim().is_empty()
            || purpose.chars().count() > 200
            || purpose.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid(
                "a purpose is 1 to 200 characters without control characters".into(),
            ));
        }
        self.transaction(|s| {
            let given = now_ms();
            let id = s
                .db
                .query(
                    "INSERT INTO consents (subject, grantee, purpose, given_ms) VALUES ($1, $2, $3, $4) RETURNING id",
                    &[P::Text(subject), P::Text(grantee), P::Text(purpose), P::I64(given)],
                    |r| r.i64(0),
                )?
                .first()
                .copied()
                .ok_or_else(|| StoreError::Backend("INSERT returned no id".into()))?;
            let leaf = crate::log::consent_leaf(id, subject, grantee, purpose, given);
            crate::log::append(&mut s.db, &[(RecordId::new(RecordKind::Consent, id.to_string()), leaf.hash())])?;
            Ok(Consent {
                id,
                subject: subject.into(),
                grantee: grantee.into(),
                purpose: purpose.into(),
                given_ms: given,
                withdrawn_ms: None,
            })
        })
    }

    /// Withdraws a consent; the withdrawal is a logged administrative action by `actor`.
    pub fn withdraw_consent(&mut self, id: i64, actor: &str) -> Result<bool, StoreError> {
        self.transaction(|s| {
            let n = s.db.exec(
                "UPDATE consents SET withdrawn_ms = $2 WHERE id = $1 AND withdrawn_ms IS NULL",
                &[P::I64(id), P::I64(now_ms())],
            )?;
            if n > 0 {
                s.admin_in_tx(actor, "consent.withdraw", &id.to_string(), "")?;
            }
            Ok(n > 0)
        })
    }

    /// The subject a consent (by id) is about, withdrawn or not.
    pub fn consent_subject(&mut self, id: i64) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT subject FROM consents WHERE id = $1",
                &[P::I64(id)],
                |r| r.text(0),
            )?
            .into_iter()
            .next())
    }

    pub fn consents(&mut self, subject: &str) -> Result<Vec<Consent>, StoreError> {
        self.db.query(
            "SELECT id, subject, grantee, purpose, given_ms, withdrawn_ms FROM consents WHERE subject = $1 ORDER BY id",
            &[P::Text(subject)],
            |r| {
                Ok(Consent {
                    id: r.i64(0)?,
                    subject: r.text(1)?,
                    grantee: r.text(2)?,
                    purpose: r.text(3)?,
                    given_ms: r.i64(4)?,
                    withdrawn_ms: r.opt_i64(5)?,
                })
            },
        )
    }

    /// Everything held about `subject`, decrypted, in memory: for exports known to be small
    /// (tests, the CLI's export with proofs). [`Store::export_subject_in_parts`] says what fails.
    pub fn export_subject(&mut self, subject: &str) -> Result<SubjectExport, StoreError> {
        let mut export = SubjectExport {
            subject: subject.into(),
            devices: Vec::new(),
            readings: Vec::new(),
            consents: Vec::new(),
            records: Vec::new(),
        };
        self.export_subject_in_parts(subject, &mut |part| {
            match part {
                ExportPart::Devices(d) => export.devices.extend(d),
                ExportPart::Readings(r) => export.readings.extend(r),
                ExportPart::Consents(c) => export.consents.extend(c),
                ExportPart::Records(r) => export.records.extend(r),
            }
            Ok(())
        })?;
        Ok(export)
    }

    /// Whether there is an export of `subject` to make: `Erased` after an erasure, `NotFound`
    /// when no device or consent is held about it. Cheap, so that a caller can answer before
    /// it sets an export going.
    pub fn exportable(&mut self, subject: &str) -> Result<(), StoreError> {
        valid_subject(subject)?;
        if self.is_erased(subject)? {
            return Err(StoreError::Erased(format!(
                "subject {subject:?} was erased; nothing about it can be decrypted any more"
            )));
        }
        let held = self.db.query(
            "SELECT (SELECT COUNT(*) FROM devices WHERE owner = $1) \
             + (SELECT COUNT(*) FROM consents WHERE subject = $1)",
            &[P::Text(subject)],
            |r| r.i64(0),
        )?;
        if held.first().is_none_or(|&n| n == 0) {
            return Err(StoreError::NotFound(format!(
                "nothing is held about subject {subject:?}"
            )));
        }
        Ok(())
    }

    /// Everything held about `subject`, decrypted, handed to `each` a page at a time (see
    /// [`ExportPart`] for the order), so that an export is never whole in memory. Fails before
    /// handing anything out with `Erased` after an erasure and `NotFound` when nothing is held;
    /// later, if a record cannot be decrypted (an erasure meanwhile) or `each` fails.
    /// Readings ingested meanwhile are left out, from the readings and the records alike.
    pub fn export_subject_in_parts(
        &mut self,
        subject: &str,
        each: &mut dyn FnMut(ExportPart) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        self.exportable(subject)?;
        let ids = self.db.query(
            "SELECT id FROM devices WHERE owner = $1 ORDER BY id",
            &[P::Text(subject)],
            |r| r.text(0),
        )?;
        let mut devices = Vec::new();
        for id in &ids {
            devices.extend(self.device(id)?);
        }
        let consents = self.consents(subject)?;
        let device_ids: Vec<String> = devices.iter().map(|d| d.id.clone()).collect();
        let consent_ids: Vec<i64> = consents.iter().map(|c| c.id).collect();
        each(ExportPart::Devices(devices))?;
        // Each device's newest reading at the time bounds both passes over its readings, so
        // that the records name exactly the readings exported while ingest goes on (a device's
        // later readings always have higher sequence numbers).
        let mut newest = Vec::with_capacity(device_ids.len());
        for id in &device_ids {
            let mut before = None;
            let mut first = None;
            loop {
                let page = self.sealed_readings(
                    id,
                    &ReadingQuery {
                        before_sequence: before,
                        limit: EXPORT_PAGE,
                        ..Default::default()
                    },
                )?;
                let Some(last) = page.last() else { break };
                before = Some(last.0.sequence);
                first = first.or(Some(page[0].0.sequence));
                each(ExportPart::Readings(
                    page.into_iter()
                        .map(|(reading, envelope)| ExportedReading {
                            reading,
                            envelope: hex::encode(envelope),
                        })
                        .collect(),
                ))?;
            }
            newest.push(first);
        }
        each(ExportPart::Consents(consents))?;
        let devices = device_ids
            .iter()
            .map(|id| RecordId::new(RecordKind::Device, id.clone()));
        each(ExportPart::Records(self.leaf_indices(devices)?))?;
        for (id, newest) in device_ids.iter().zip(newest) {
            // One past the newest exported reading: `sequence < before` below.
            let mut before = newest.map(|n| n.saturating_add(1));
            while let Some(below) = before {
                // A reading's leaf as its row points to it, where the log names it so (see
                // `leaf_index`).
                let page = self.db.query(
                    "SELECT r.sequence, l.idx FROM readings r LEFT JOIN log_leaves l \
                     ON l.idx = r.leaf AND l.kind = 'reading' AND l.ref = r.device_id || '/' || r.sequence \
                     WHERE r.device_id = $1 AND r.sequence < $2 ORDER BY r.sequence DESC LIMIT $3",
                    &[P::Text(id), P::I64(below), P::I64(i64::from(EXPORT_PAGE))],
                    |r| Ok((r.i64(0)?, r.opt_i64(1)?)),
                )?;
                before = page.last().map(|(seq, _)| *seq);
                if page.is_empty() {
                    break;
                }
                let records = page
                    .into_iter()
                    .map(|(seq, index)| {
                        let id = RecordId::new(RecordKind::Reading, format!("{id}/{seq}"));
                        let index = index.ok_or_else(|| {
                            StoreError::Tampered(format!("record {id} has no log leaf"))
                        })?;
                        Ok((id.to_string(), index as u64))
                    })
                    .collect::<Result<_, StoreError>>()?;
                each(ExportPart::Records(records))?;
            }
        }
        let consents = consent_ids
            .iter()
            .map(|c| RecordId::new(RecordKind::Consent, c.to_string()));
        each(ExportPart::Records(self.leaf_indices(consents)?))?;
        Ok(())
    }

    /// (record id, log index) of each record; every record has a leaf, or the log was
    /// tampered with.
    fn leaf_indices(
        &mut self,
        ids: impl Iterator<Item = RecordId>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        ids.map(|id| {
            let index = self
                .leaf_index(&id)?
                .ok_or_else(|| StoreError::Tampered(format!("record {id} has no log leaf")))?;
            Ok((id.to_string(), index))
        })
        .collect()
    }

    /// Crypto-shreds a subject: its data key is destroyed, its devices revoked, the erasure
    /// logged as an administrative action by `actor`, and the KEK rotated so the data key in any
    /// older copy of the database (a backup) is wrapped under a key that no longer exists.
    pub fn erase_subject(&mut self, subject: &str, actor: &str) -> Result<Erasure, StoreError> {
        valid_subject(subject)?;
        if self.is_erased(subject)? {
            return Err(StoreError::Conflict(format!(
                "subject {subject:?} is already erased"
            )));
        }
        // Bumping the key epoch (see `transact`): cached keys everywhere are dropped.
        let devices_revoked = self.transact(true, |s| {
            let now = now_ms();
            let updated = s.db.exec(
                "UPDATE subject_keys SET kek_id = NULL, wrapped = NULL, erased_ms = $2 WHERE subject = $1",
                &[P::Text(subject), P::I64(now)],
            )?;
            if updated == 0 {
                // No key yet: remember the erasure so none is ever created for it.
                s.db.exec(
                    "INSERT INTO subject_keys (subject, created_ms, erased_ms) VALUES ($1, $2, $2)",
                    &[P::Text(subject), P::I64(now)],
                )?;
            }
            let revoked = s.db.exec(
                "UPDATE devices SET status = 'revoked', updated_ms = $2 WHERE owner = $1 AND status <> 'revoked'",
                &[P::Text(subject), P::I64(now)],
            )?;
            // What the devices last reported of themselves is kept in clear for the registry
            // (battery, link quality, when last seen): it goes with the subject.
            s.db.exec(
                "UPDATE devices SET battery = NULL, link = NULL, last_seen_ms = NULL WHERE owner = $1",
                &[P::Text(subject)],
            )?;
            s.db.exec(
                "UPDATE consents SET withdrawn_ms = $2 WHERE subject = $1 AND withdrawn_ms IS NULL",
                &[P::Text(subject), P::I64(now)],
            )?;
            s.admin_in_tx(actor, "subject.erase", subject, &format!("{revoked} devices revoked"))?;
            Ok(revoked)
        })?;
        // The page that held the subject's wrapped data key is rewritten without it, but older
        // images of it stay in SQLite's write-ahead log until the log is reused: empty it now.
        // Best effort (readers may hold it), and moot once the KEK is rotated below.
        // A short wait, as the checkpoint thread's: it holds a running server's commits off.
        let wait = std::time::Duration::from_millis(50);
        if !matches!(
            self.db
                .checkpoint_wal(crate::db::Checkpoint::Truncate(wait)),
            Ok(Some(_))
        ) {
            tracing::warn!(subject, "could not empty the write-ahead log after the erasure; it is reused as ingest goes on");
        }
        // The erasure has taken effect: a rotation that fails is reported with it, not as a
        // failure that would invite running it again.
        let kek = self
            .rotate_keys(actor)
            .map(|(kek, _)| kek)
            .map_err(|e| e.to_string());
        Ok(Erasure {
            subject: subject.into(),
            devices_revoked,
            kek,
        })
    }

    /// Re-wraps every data key under the current KEK of keys that change outside msec (see
    /// `msec_vault::EnvKeys`), logged as an administrative action. Returns (KEK id, data keys
    /// re-wrapped).
    pub fn rewrap_keys(&mut self, actor: &str) -> Result<(String, usize), StoreError> {
        let (kek, n) = self.keys.rewrap(&mut self.db)?;
        self.log_admin(
            actor,
            "keys.rewrap",
            &kek,
            &format!("{n} data keys re-wrapped"),
        )?;
        Ok((kek, n))
    }

    /// Rotates the KEK: every data key re-wrapped, payloads untouched, the old KEK destroyed.
    /// Returns (new KEK id, data keys re-wrapped).
    pub fn rotate_keys(&mut self, actor: &str) -> Result<(String, usize), StoreError> {
        let (kek, n) = self.keys.rotate(&mut self.db)?;
        self.log_admin(
            actor,
            "keys.rotate",
            &kek,
            &format!("{n} data keys re-wrapped"),
        )?;
        Ok((kek, n))
    }
}

/// The export's JSON, written as its parts come: `{"subject":…,"devices":[…],"readings":[…],
/// "consents":[…],"records":[…]}`, the shape of [`SubjectExport`]. The caller writes the opening
/// and the subject, and may write an array of its own instead of a part ([`ExportJson::items`]).
#[derive(Default)]
pub struct ExportJson {
    /// The array being written, and whether it has an item yet.
    open: Option<(&'static str, bool)>,
}

impl ExportJson {
    pub fn part(&mut self, out: &mut impl Write, part: ExportPart) -> std::io::Result<()> {
        match part {
            ExportPart::Devices(items) => self.items(out, "devices", &items),
            ExportPart::Readings(items) => self.items(out, "readings", &items),
            ExportPart::Consents(items) => {
                // A subject without readings still has the (empty) array.
                self.items(out, "readings", &[] as &[()])?;
                self.items(out, "consents", &items)
            }
            ExportPart::Records(items) => self.items(out, "records", &items),
        }
    }

    pub fn items<T: serde::Serialize>(
        &mut self,
        out: &mut impl Write,
        array: &'static str,
        items: &[T],
    ) -> std::io::Result<()> {
        if self.open.map(|(name, _)| name) != Some(array) {
            if self.open.is_some() {
                out.write_all(b"]")?;
            }
            write!(out, ",\"{array}\":[")?;
            self.open = Some((array, false));
        }
        for item in items {
            if let Some((_, any)) = &mut self.open {
                if *any {
                    out.write_all(b",")?;
                }
                *any = true;
            }
            serde_json::to_writer(&mut *out, item)?;
        }
        Ok(())
    }

    pub fn finish(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        // A subject's records name at least its devices or its consents, so the last array
        // is always "records"; close whatever is open all the same.
        if self.open.is_some() {
            out.write_all(b"]")?;
        }
        out.write_all(b"}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(sequence: i64) -> ExportedReading {
        ExportedReading {
            reading: StoredReading {
                device_id: "d-1".into(),
                sequence,
                issued_at: 1_700_000_000 + sequence,
                received_ms: 1,
                measurements: serde_json::json!([{"n": "t", "u": "Cel", "v": 1.5}]),
            },
            envelope: "d28443".into(),
        }
    }

    fn consent() -> Consent {
        Consent {
            id: 7,
            subject: "bob".into(),
            grantee: "clinic".into(),
            purpose: "care \"night\"".into(),
            given_ms: 1,
            withdrawn_ms: None,
        }
    }

    /// Written part by part, the export reads as the whole `SubjectExport` would serialize.
    fn written(parts: Vec<ExportPart>) -> serde_json::Value {
        let mut out = b"{\"subject\":\"bob\"".to_vec();
        let mut json = ExportJson::default();
        for part in parts {
            json.part(&mut out, part).unwrap();
        }
        json.finish(&mut out).unwrap();
        serde_json::from_slice(&out)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out)))
    }

    fn whole(readings: Vec<ExportedReading>, records: Vec<(String, u64)>) -> serde_json::Value {
        serde_json::to_value(SubjectExport {
            subject: "bob".into(),
            devices: vec![],
            readings,
            consents: vec![consent()],
            records,
        })
        .unwrap()
    }

    #[test]
    fn pages_make_the_same_document_as_the_whole() {
        let records = |from: u64, to: u64| -> Vec<(String, u64)> {
            (from..to)
                .map(|i| (format!("reading:d-1/{i}"), i))
                .collect()
        };
        let parts = vec![
            ExportPart::Devices(vec![]),
            ExportPart::Readings(vec![reading(3), reading(2)]),
            ExportPart::Readings(vec![reading(1)]),
            ExportPart::Consents(vec![consent()]),
            ExportPart::Records(vec![]),
            ExportPart::Records(records(0, 2)),
            ExportPart::Records(records(2, 4)),
        ];
        assert_eq!(
            written(parts),
            whole(vec![reading(3), reading(2), reading(1)], records(0, 4))
        );
    }

    #[test]
    fn a_subject_without_readings_gets_empty_arrays() {
        let parts = vec![
            ExportPart::Devices(vec![]),
            ExportPart::Consents(vec![consent()]),
            ExportPart::Records(vec![("consent:7".into(), 0)]),
        ];
        assert_eq!(written(parts), whole(vec![], vec![("consent:7".into(), 0)]));
    }
}
