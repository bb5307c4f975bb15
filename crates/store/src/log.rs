//! The store's side of the transparency log: which records get leaves and what each leaf
//! commits to (`docs/ledger.md` specifies the bytes), appending leaves in the same transaction
//! as their records, and re-deriving leaves from rows for audits.
//!
//! Leaves commit to stored bytes (ciphertexts, not plaintext), so crypto-shredding a subject
//! never breaks the log.

use crate::db::{Db, Row, P};
use crate::StoreError;
use msec_ledger::{encode_leaf, leaf_hash, Field, Hash};

/// The kinds of logged records, with their leaf kind byte and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordKind {
    Reading,
    Device,
    Event,
    Admin,
    Consent,
}

impl RecordKind {
    pub const ALL: [RecordKind; 5] = [
        RecordKind::Reading,
        RecordKind::Device,
        RecordKind::Event,
        RecordKind::Admin,
        RecordKind::Consent,
    ];
    pub fn code(self) -> u8 {
        match self {
            RecordKind::Reading => 1,
            RecordKind::Device => 2,
            RecordKind::Event => 3,
            RecordKind::Admin => 4,
            RecordKind::Consent => 5,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            RecordKind::Reading => "reading",
            RecordKind::Device => "device",
            RecordKind::Event => "event",
            RecordKind::Admin => "admin",
            RecordKind::Consent => "consent",
        }
    }
    fn from_name(s: &str) -> Option<RecordKind> {
        RecordKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// A logged record's identity: `reading:DEVICE/SEQUENCE`, `device:ID`, `event:N`, `admin:N`,
/// `consent:N`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordId {
    pub kind: RecordKind,
    pub reference: String,
}

impl std::fmt::Display for RecordId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.kind.name(), self.reference)
    }
}

impl std::str::FromStr for RecordId {
    type Err = String;
    fn from_str(s: &str) -> Result<RecordId, String> {
        let (kind, reference) = s.split_once(':').ok_or_else(|| {
            format!("{s:?} is not a record id (KIND:REFERENCE, e.g. reading:park-1/42)")
        })?;
        let kind = RecordKind::from_name(kind).ok_or_else(|| {
            format!("unknown record kind {kind:?} (reading, device, event, admin or consent)")
        })?;
        let numeric = !matches!(kind, RecordKind::Reading | RecordKind::Device);
        if reference.is_empty() || (numeric && reference.parse::<i64>().is_err()) {
            return Err(format!("{s:?}: bad reference for a {} record", kind.name()));
        }
        Ok(RecordId {
            kind,
            reference: reference.to_string(),
        })
    }
}

impl RecordId {
    pub(crate) fn new(kind: RecordKind, reference: impl Into<String>) -> RecordId {
        RecordId {
            kind,
            reference: reference.into(),
        }
    }
}

/// The SELECT that yields a kind's records in the column order `leaf_of` expects; `{WHERE}` is
/// replaced by a filter or nothing.
fn select(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Reading => {
            "SELECT device_id, sequence, issued_at, received_ms, digest, sealed FROM readings {WHERE}"
        }
        RecordKind::Device => {
            "SELECT id, tenant, owner, kind, public_key, created_ms, profile FROM devices {WHERE}"
        }
        RecordKind::Event => {
            "SELECT id, at_ms, reason, device_id, source, detail FROM security_events {WHERE}"
        }
        RecordKind::Admin => "SELECT id, at_ms, actor, action, target, detail FROM admin_actions {WHERE}",
        RecordKind::Consent => "SELECT id, subject, grantee, purpose, given_ms FROM consents {WHERE}",
    }
}

fn filter(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Reading => "WHERE device_id = $1 AND sequence = $2",
        RecordKind::Device => "WHERE id = $1",
        _ => "WHERE id = $1",
    }
}

/// (reference, leaf bytes) of one row of `select(kind)`.
fn leaf_of(kind: RecordKind, r: &dyn Row) -> Result<(String, Vec<u8>), StoreError> {
    Ok(match kind {
        RecordKind::Reading => {
            let (device, seq) = (r.text(0)?, r.i64(1)?);
            let leaf = reading_leaf(
                &device,
                seq,
                r.i64(2)?,
                r.i64(3)?,
                &r.bytes(4)?,
                &r.bytes(5)?,
            );
            (format!("{device}/{seq}"), leaf)
        }
        RecordKind::Device => {
            let id = r.text(0)?;
            let leaf = device_leaf(
                &id,
                &r.text(1)?,
                &r.text(2)?,
                &r.text(3)?,
                &r.bytes(4)?,
                r.i64(5)?,
                &r.bytes(6)?,
            );
            (id, leaf)
        }
        RecordKind::Event => {
            let id = r.i64(0)?;
            let device = r.opt_text(3)?;
            let leaf = event_leaf(
                id,
                r.i64(1)?,
                &r.text(2)?,
                device.as_deref(),
                &r.text(4)?,
                &r.text(5)?,
            );
            (id.to_string(), leaf)
        }
        RecordKind::Admin => {
            let id = r.i64(0)?;
            let leaf = admin_leaf(
                id,
                r.i64(1)?,
                &r.text(2)?,
                &r.text(3)?,
                &r.text(4)?,
                &r.text(5)?,
            );
            (id.to_string(), leaf)
        }
        RecordKind::Consent => {
            let id = r.i64(0)?;
            let leaf = consent_leaf(id, &r.text(1)?, &r.text(2)?, &r.text(3)?, r.i64(4)?);
            (id.to_string(), leaf)
        }
    })
}

pub(crate) fn reading_leaf(
    device: &str,
    sequence: i64,
    issued_at: i64,
    received_ms: i64,
    digest: &[u8],
    sealed: &[u8],
) -> Vec<u8> {
    encode_leaf(
        RecordKind::Reading.code(),
        &[
            Field::Text(device),
            Field::Int(sequence),
            Field::Int(issued_at),
            Field::Int(received_ms),
            Field::Bytes(digest),
            Field::Bytes(sealed),
        ],
    )
}

pub(crate) fn device_leaf(
    id: &str,
    tenant: &str,
    owner: &str,
    kind: &str,
    public_key: &[u8],
    created_ms: i64,
    profile: &[u8],
) -> Vec<u8> {
    encode_leaf(
        RecordKind::Device.code(),
        &[
            Field::Text(id),
            Field::Text(tenant),
            Field::Text(owner),
            Field::Text(kind),
            Field::Bytes(public_key),
            Field::Int(created_ms),
            Field::Bytes(profile),
        ],
    )
}

pub(crate) fn event_leaf(
    id: i64,
    at_ms: i64,
    reason: &str,
    device: Option<&str>,
    source: &str,
    detail: &str,
) -> Vec<u8> {
    encode_leaf(
        RecordKind::Event.code(),
        &[
            Field::Int(id),
            Field::Int(at_ms),
            Field::Text(reason),
            device.map_or(Field::Absent, Field::Text),
            Field::Text(source),
            Field::Text(detail),
        ],
    )
}

pub(crate) fn admin_leaf(
    id: i64,
    at_ms: i64,
    actor: &str,
    action: &str,
    target: &str,
    detail: &str,
) -> Vec<u8> {
    encode_leaf(
        RecordKind::Admin.code(),
        &[
            Field::Int(id),
            Field::Int(at_ms),
            Field::Text(actor),
            Field::Text(action),
            Field::Text(target),
            Field::Text(detail),
        ],
    )
}

pub(crate) fn consent_leaf(
    id: i64,
    subject: &str,
    grantee: &str,
    purpose: &str,
    given_ms: i64,
) -> Vec<u8> {
    encode_leaf(
        RecordKind::Consent.code(),
        &[
            Field::Int(id),
            Field::Text(subject),
            Field::Text(grantee),
            Field::Text(purpose),
            Field::Int(given_ms),
        ],
    )
}

/// Appends leaves after the current end of the log, inside the caller's transaction.
pub(crate) fn append(db: &mut Db, leaves: &[(RecordId, Hash)]) -> Result<(), StoreError> {
    if leaves.is_empty() {
        return Ok(());
    }
    if db.engine() == "postgres" {
        // Serialises appends across processes and connections so indices stay contiguous.
        // SQLite's BEGIN IMMEDIATE already serialises writers.
        db.query("SELECT pg_advisory_xact_lock(726373)", &[], |_| Ok(()))?;
    }
    let next = db
        .query(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves",
            &[],
            |r| r.i64(0),
        )?
        .first()
        .copied()
        .unwrap_or(0);
    db.insert_leaves(next, leaves)
}

/// What an audit scan of the records found, before the log itself is checked.
#[derive(Debug, Default)]
pub struct AuditScan {
    /// Stored leaf hashes, in log order.
    pub leaves: Vec<Hash>,
    /// Records checked.
    pub records: u64,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// A record's stored bytes or metadata no longer match its leaf.
    Modified,
    /// A leaf's record is gone.
    Deleted,
    /// A record that no leaf commits to.
    Inserted,
    /// The log holds fewer leaves than a trusted checkpoint covers.
    Rollback,
    /// The log's root differs from a trusted checkpoint of the same size.
    LogRewritten,
    /// A checkpoint could not be verified.
    BadCheckpoint,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub kind: FindingKind,
    pub record: String,
    pub detail: String,
}

impl crate::Store {
    /// Re-derives the leaf of every stored record and compares it with the log. Calls
    /// `progress(done, total)` as it goes.
    pub fn audit_scan(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<AuditScan, StoreError> {
        use std::collections::HashSet;
        let stored: Vec<(i64, Hash)> =
            self.db
                .query("SELECT idx, hash FROM log_leaves ORDER BY idx", &[], |r| {
                    Ok((r.i64(0)?, r.bytes(1)?.try_into().unwrap_or([0; 32])))
                })?;
        let total = stored.len() as u64;
        // A leaf's bytes name its record (kind and id are fields), so a record is intact exactly
        // when its re-derived leaf hash is in the log: matching hashes needs no record ids, and
        // ids are only looked up for what fails to match.
        let mut derived: HashSet<Hash> = HashSet::with_capacity(stored.len());
        let mut scan = AuditScan::default();
        for kind in RecordKind::ALL {
            let sql = select(kind).replace("{WHERE}", "");
            // Hashed as each row arrives: the leaf bytes (ciphertexts included) never pile up.
            let hashes = self
                .db
                .query(&sql, &[], |r| Ok(leaf_hash(&leaf_of(kind, r)?.1)))?;
            scan.records += hashes.len() as u64;
            derived.extend(hashes);
            progress(scan.records / 2, total);
        }
        let mut unmatched = Vec::new();
        for (i, (idx, hash)) in stored.into_iter().enumerate() {
            if idx != i as i64 {
                scan.findings.push(Finding {
                    kind: FindingKind::LogRewritten,
                    record: self.leaf_name(idx)?,
                    detail: format!("log position {i} holds leaf index {idx}"),
                });
            }
            if !derived.remove(&hash) {
                unmatched.push(idx);
            }
            scan.leaves.push(hash);
            if i % 65536 == 0 {
                progress(total / 2 + i as u64 / 2, total);
            }
        }
        if !unmatched.is_empty() || !derived.is_empty() {
            // Name the records whose leaves are missing from the log (modified or inserted).
            let mut leftover: HashSet<String> = HashSet::new();
            for kind in RecordKind::ALL {
                let sql = select(kind).replace("{WHERE}", "");
                for (reference, leaf) in self.db.query(&sql, &[], |r| leaf_of(kind, r))? {
                    if derived.contains(&leaf_hash(&leaf)) {
                        leftover.insert(format!("{}:{reference}", kind.name()));
                    }
                }
            }
            for idx in unmatched {
                let record = self.leaf_name(idx)?;
                let (kind, detail) = if leftover.remove(&record) {
                    (
                        FindingKind::Modified,
                        format!("stored bytes or metadata differ from log leaf {idx}"),
                    )
                } else {
                    (
                        FindingKind::Deleted,
                        format!("log leaf {idx} has no record"),
                    )
                };
                scan.findings.push(Finding {
                    kind,
                    record,
                    detail,
                });
            }
            let mut inserted: Vec<String> = leftover.into_iter().collect();
            inserted.sort();
            for record in inserted {
                scan.findings.push(Finding {
                    kind: FindingKind::Inserted,
                    record,
                    detail: "no log leaf commits to this record".into(),
                });
            }
        }
        progress(total, total);
        Ok(scan)
    }

    /// `kind:reference` of the leaf at `idx`, as the log says.
    fn leaf_name(&mut self, idx: i64) -> Result<String, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT kind, ref FROM log_leaves WHERE idx = $1",
                &[P::I64(idx)],
                |r| Ok(format!("{}:{}", r.text(0)?, r.text(1)?)),
            )?
            .into_iter()
            .next()
            .unwrap_or_else(|| format!("leaf {idx}")))
    }

    /// The leaf bytes re-derived from a record as stored now, and the record's log index.
    pub fn record_leaf(&mut self, id: &RecordId) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        let index = self.leaf_index(id)?;
        let sql = select(id.kind).replace("{WHERE}", filter(id.kind));
        let rows = match id.kind {
            RecordKind::Reading => {
                let (device, seq) = id
                    .reference
                    .rsplit_once('/')
                    .and_then(|(d, s)| Some((d, s.parse::<i64>().ok()?)))
                    .ok_or_else(|| StoreError::NotFound(format!("record {id}")))?;
                self.db.query(&sql, &[P::Text(device), P::I64(seq)], |r| {
                    leaf_of(id.kind, r)
                })?
            }
            RecordKind::Device => self
                .db
                .query(&sql, &[P::Text(&id.reference)], |r| leaf_of(id.kind, r))?,
            _ => {
                let n: i64 = id
                    .reference
                    .parse()
                    .map_err(|_| StoreError::NotFound(format!("record {id}")))?;
                self.db.query(&sql, &[P::I64(n)], |r| leaf_of(id.kind, r))?
            }
        };
        Ok(match (index, rows.into_iter().next()) {
            (Some(i), Some((_, leaf))) => Some((i, leaf)),
            _ => None,
        })
    }

    /// The log index of a record's leaf.
    pub fn leaf_index(&mut self, id: &RecordId) -> Result<Option<u64>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT idx FROM log_leaves WHERE kind = $1 AND ref = $2",
                &[P::Text(id.kind.name()), P::Text(&id.reference)],
                |r| r.i64(0),
            )?
            .first()
            .map(|&i| i as u64))
    }

    /// Leaf hashes from index `from` on, at most `limit`, in log order.
    pub fn leaf_hashes(&mut self, from: u64, limit: u64) -> Result<Vec<Hash>, StoreError> {
        self.db.query(
            "SELECT hash FROM log_leaves WHERE idx >= $1 ORDER BY idx LIMIT $2",
            &[P::I64(from as i64), P::I64(limit as i64)],
            |r| {
                r.bytes(0)?
                    .try_into()
                    .map_err(|_| StoreError::Tampered("a log leaf hash is not 32 bytes".into()))
            },
        )
    }

    pub fn save_checkpoint(&mut self, size: u64, note: &str) -> Result<(), StoreError> {
        self.db.exec(
            "INSERT INTO checkpoints (size, at_ms, note) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
            &[P::I64(size as i64), P::I64(crate::now_ms()), P::Text(note)],
        )?;
        Ok(())
    }

    /// The newest saved checkpoint as (size, signed note).
    pub fn latest_checkpoint(&mut self) -> Result<Option<(u64, String)>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1",
                &[],
                |r| Ok((r.i64(0)? as u64, r.text(1)?)),
            )?
            .into_iter()
            .next())
    }

    pub fn checkpoint_at(&mut self, size: u64) -> Result<Option<String>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT note FROM checkpoints WHERE size = $1",
                &[P::I64(size as i64)],
                |r| r.text(0),
            )?
            .into_iter()
            .next())
    }

    /// Stores a witness's cosignature line for the checkpoint of `size` (the caller verified it).
    pub fn add_cosignature(
        &mut self,
        size: u64,
        witness: &str,
        line: &str,
    ) -> Result<(), StoreError> {
        self.db.exec(
            "INSERT INTO cosignatures (size, witness, line, at_ms) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            &[P::I64(size as i64), P::Text(witness), P::Text(line), P::I64(crate::now_ms())],
        )?;
        Ok(())
    }

    /// Cosignature lines for the checkpoint of `size`, by witness name.
    pub fn cosignatures(&mut self, size: u64) -> Result<Vec<(String, String)>, StoreError> {
        self.db.query(
            "SELECT witness, line FROM cosignatures WHERE size = $1 ORDER BY witness",
            &[P::I64(size as i64)],
            |r| Ok((r.text(0)?, r.text(1)?)),
        )
    }

    /// Tree sizes that have cosignatures, newest first.
    pub fn cosigned_sizes(&mut self) -> Result<Vec<u64>, StoreError> {
        self.db.query(
            "SELECT DISTINCT size FROM cosignatures ORDER BY size DESC",
            &[],
            |r| Ok(r.i64(0)? as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    /// docs/ledger.md shows this leaf byte for byte; keep the two in step.
    #[test]
    fn documented_leaf_example_is_current() {
        let leaf = super::admin_leaf(1, 1_700_000_000_000, "cli", "device.revoke", "park-1", "");
        let doc = include_str!("../../../docs/ledger.md");
        assert!(
            doc.contains(&hex::encode(&leaf)),
            "docs/ledger.md leaf example is stale: {}",
            hex::encode(&leaf)
        );
        assert!(
            doc.contains(&hex::encode(msec_ledger::leaf_hash(&leaf))),
            "docs/ledger.md leaf hash is stale"
        );
    }
}
