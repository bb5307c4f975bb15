//! The store's side of the transparency log: which records get leaves and what each leaf
//! commits to (`docs/ledger.md` specifies the bytes), appending leaves in the same transaction
//! as their records, and re-deriving leaves from rows for audits.
//!
//! Leaves commit to stored bytes (ciphertexts, not plaintext), so crypto-shredding a subject
//! never breaks the log.

use crate::db::{Db, Row, P};
use crate::StoreError;
use msec_ledger::{encode_leaf, hash_leaf, leaf_hash, Field, Hash, Tree};
use std::sync::atomic::{AtomicU64, Ordering};

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
            // `leaf` last: not part of the leaf, only where the audit checks the row's pointer.
            "SELECT device_id, sequence, issued_at, received_ms, digest, sealed, leaf FROM readings {WHERE}"
        }
        RecordKind::Device => {
            "SELECT id, tenant, owner, kind, public_key, created_ms, profile FROM devices {WHERE}"
        }
        RecordKind::Event => {
            "SELECT id, at_ms, reason, device_id, source, detail FROM security_events {WHERE}"
        }
        RecordKind::Admin => {
            "SELECT id, at_ms, actor, action, target, detail FROM admin_actions {WHERE}"
        }
        RecordKind::Consent => {
            "SELECT id, subject, grantee, purpose, given_ms FROM consents {WHERE}"
        }
    }
}

fn filter(kind: RecordKind) -> &'static str {
    match kind {
        RecordKind::Reading => "WHERE device_id = $1 AND sequence = $2",
        RecordKind::Device => "WHERE id = $1",
        _ => "WHERE id = $1",
    }
}

/// A record's leaf before encoding: its kind and its fields in the order `docs/ledger.md` lists.
pub(crate) struct Leaf<'a, const N: usize>(RecordKind, [Field<'a>; N]);

impl<const N: usize> Leaf<'_, N> {
    fn with<T>(&self, make: fn(u8, &[Field]) -> T) -> T {
        make(self.0.code(), &self.1)
    }
    pub(crate) fn hash(&self) -> Hash {
        self.with(hash_leaf)
    }
}

/// The leaf of one row of `select(kind)`, as bytes (`encode_leaf`) or only its hash
/// (`hash_leaf`). Reads the row in place: nothing is copied out of it.
fn row_leaf<T>(
    kind: RecordKind,
    r: &dyn Row,
    make: fn(u8, &[Field]) -> T,
) -> Result<T, StoreError> {
    Ok(match kind {
        RecordKind::Reading => reading_leaf(
            r.str_ref(0)?,
            r.i64(1)?,
            r.i64(2)?,
            r.i64(3)?,
            r.bytes_ref(4)?,
            r.bytes_ref(5)?,
        )
        .with(make),
        RecordKind::Device => device_leaf(
            r.str_ref(0)?,
            r.str_ref(1)?,
            r.str_ref(2)?,
            r.str_ref(3)?,
            r.bytes_ref(4)?,
            r.i64(5)?,
            r.bytes_ref(6)?,
        )
        .with(make),
        RecordKind::Event => event_leaf(
            r.i64(0)?,
            r.i64(1)?,
            r.str_ref(2)?,
            r.opt_str_ref(3)?,
            r.str_ref(4)?,
            r.str_ref(5)?,
        )
        .with(make),
        RecordKind::Admin => admin_leaf(
            r.i64(0)?,
            r.i64(1)?,
            r.str_ref(2)?,
            r.str_ref(3)?,
            r.str_ref(4)?,
            r.str_ref(5)?,
        )
        .with(make),
        RecordKind::Consent => consent_leaf(
            r.i64(0)?,
            r.str_ref(1)?,
            r.str_ref(2)?,
            r.str_ref(3)?,
            r.i64(4)?,
        )
        .with(make),
    })
}

/// `kind:reference` of one row of `select(kind)`.
fn row_name(kind: RecordKind, r: &dyn Row) -> Result<String, StoreError> {
    let reference = match kind {
        RecordKind::Reading => format!("{}/{}", r.str_ref(0)?, r.i64(1)?),
        RecordKind::Device => r.text(0)?,
        _ => r.i64(0)?.to_string(),
    };
    Ok(format!("{}:{reference}", kind.name()))
}

pub(crate) fn reading_leaf<'a>(
    device: &'a str,
    sequence: i64,
    issued_at: i64,
    received_ms: i64,
    digest: &'a [u8],
    sealed: &'a [u8],
) -> Leaf<'a, 6> {
    Leaf(
        RecordKind::Reading,
        [
            Field::Text(device),
            Field::Int(sequence),
            Field::Int(issued_at),
            Field::Int(received_ms),
            Field::Bytes(digest),
            Field::Bytes(sealed),
        ],
    )
}

pub(crate) fn device_leaf<'a>(
    id: &'a str,
    tenant: &'a str,
    owner: &'a str,
    kind: &'a str,
    public_key: &'a [u8],
    created_ms: i64,
    profile: &'a [u8],
) -> Leaf<'a, 7> {
    Leaf(
        RecordKind::Device,
        [
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

pub(crate) fn event_leaf<'a>(
    id: i64,
    at_ms: i64,
    reason: &'a str,
    device: Option<&'a str>,
    source: &'a str,
    detail: &'a str,
) -> Leaf<'a, 6> {
    Leaf(
        RecordKind::Event,
        [
            Field::Int(id),
            Field::Int(at_ms),
            Field::Text(reason),
            device.map_or(Field::Absent, Field::Text),
            Field::Text(source),
            Field::Text(detail),
        ],
    )
}

pub(crate) fn admin_leaf<'a>(
    id: i64,
    at_ms: i64,
    actor: &'a str,
    action: &'a str,
    target: &'a str,
    detail: &'a str,
) -> Leaf<'a, 6> {
    Leaf(
        RecordKind::Admin,
        [
            Field::Int(id),
            Field::Int(at_ms),
            Field::Text(actor),
            Field::Text(action),
            Field::Text(target),
            Field::Text(detail),
        ],
    )
}

pub(crate) fn consent_leaf<'a>(
    id: i64,
    subject: &'a str,
    grantee: &'a str,
    purpose: &'a str,
    given_ms: i64,
) -> Leaf<'a, 5> {
    Leaf(
        RecordKind::Consent,
        [
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
    let next = end(db)?;
    db.insert_leaves(next, leaves)
}

/// The index the next leaf gets. On PostgreSQL this takes the log's lock for the rest of the
/// caller's transaction, so that indices stay contiguous across processes and connections
/// (SQLite's BEGIN IMMEDIATE already serialises writers).
pub(crate) fn end(db: &mut Db) -> Result<i64, StoreError> {
    if db.engine() == "postgres" {
        db.query("SELECT pg_advisory_xact_lock(726373)", &[], |_| Ok(()))?;
    }
    Ok(db
        .query(
            "SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves",
            &[],
            |r| r.i64(0),
        )?
        .first()
        .copied()
        .unwrap_or(0))
}

/// What an audit scan of the records found, before the log itself is checked.
#[derive(Debug, Default)]
pub struct AuditScan {
    /// The log as stored, rebuilt from its leaf hashes.
    pub tree: Tree,
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

/// In a derived record's pair, where the record is no reading (only a reading's row says
/// where its leaf is).
const NOT_A_READING: i64 = i64::MIN;
/// A reading's row that says nothing of its leaf (NULL), or says the marker above: no index
/// is negative, so it is reported like any pointer that misses.
const NO_LEAF: i64 = -1;

/// Re-derives the leaf hashes of one share of the records on a connection of its own, sorted,
/// each with the log index its row gives for it (readings only). `readings` is the filter (a
/// WHERE clause over `$1` and `$2`) that picks the share's readings; the small tables all go to
/// share 0.
fn derive_share(
    url: &str,
    share: usize,
    readings: (&str, [i64; 2]),
    done: &AtomicU64,
) -> Result<Vec<(Hash, i64)>, StoreError> {
    let mut db = Db::open(url)?;
    let mut hashes = Vec::new();
    let seen = std::cell::Cell::new(0u64);
    for kind in RecordKind::ALL {
        let count = |r: &dyn Row| {
            // Counted locally and published in steps: a shared counter bumped per row would
            // bounce its cache line between the cores for every record.
            seen.set(seen.get() + 1);
            if seen.get().is_multiple_of(4096) {
                done.fetch_add(4096, Ordering::Relaxed);
            }
            let pointer = match kind {
                RecordKind::Reading => r
                    .opt_i64(6)?
                    .filter(|&p| p != NOT_A_READING)
                    .unwrap_or(NO_LEAF),
                _ => NOT_A_READING,
            };
            Ok((row_leaf(kind, r, hash_leaf)?, pointer))
        };
        if kind == RecordKind::Reading {
            let (filter, [a, b]) = readings;
            let sql = select(kind).replace("{WHERE}", filter);
            hashes.extend(db.query(&sql, &[P::I64(a), P::I64(b)], count)?);
        } else if share == 0 {
            hashes.extend(db.query(&select(kind).replace("{WHERE}", ""), &[], count)?);
        }
    }
    hashes.sort_unstable();
    Ok(hashes)
}

/// How the readings are shared out among `n` connections, as a filter and its parameters per
/// share; together the shares cover every row, whatever its values.
fn reading_shares(db: &mut Db, n: usize) -> Result<Vec<(&'static str, [i64; 2])>, StoreError> {
    if db.engine() == "postgres" {
        // No usable row order to split on: each connection takes a residue of the sequence.
        let filter = "WHERE COALESCE(((sequence % $1) + $1) % $1, 0) = $2";
        return Ok((0..n as i64).map(|k| (filter, [n as i64, k])).collect());
    }
    // Ranges of SQLite's rowid, so that each connection reads only its part of the table.
    let (lo, hi) = db
        .query("SELECT MIN(rowid), MAX(rowid) FROM readings", &[], |r| {
            Ok((r.opt_i64(0)?.unwrap_or(0), r.opt_i64(1)?.unwrap_or(0)))
        })?
        .first()
        .copied()
        .unwrap_or((0, 0));
    let step = ((hi as i128 - lo as i128 + 1) / n as i128).max(1);
    let bound =
        |k: usize| (lo as i128 + step * k as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    Ok((0..n)
        .map(|k| {
            let from = if k == 0 { i64::MIN } else { bound(k) };
            let to = if k + 1 == n {
                i64::MAX
            } else {
                bound(k + 1) - 1
            };
            ("WHERE rowid BETWEEN $1 AND $2", [from, to])
        })
        .collect())
}

/// What the audit needs of the log itself: its tree, the positions that hold another index
/// (position, index), and the leaf hashes with their indices sorted by hash.
type LogScan = (Tree, Vec<(usize, i64)>, Vec<(Hash, i64)>);

fn read_log(db: &mut Db) -> Result<LogScan, StoreError> {
    // In table order, sorted here only if need be: leaves are written in index order, and
    // walking the index instead costs a lookup per leaf on SQLite.
    let mut stored: Vec<(i64, Hash)> = db.query("SELECT idx, hash FROM log_leaves", &[], |r| {
        // A hash of the wrong length matches nothing, and so is reported.
        Ok((r.i64(0)?, r.bytes_ref(1)?.try_into().unwrap_or([0; 32])))
    })?;
    if !stored.is_sorted_by_key(|&(idx, _)| idx) {
        stored.sort_unstable_by_key(|&(idx, _)| idx);
    }
    let tree = Tree::from_leaf_hashes(stored.iter().map(|&(_, h)| h));
    let misplaced = (stored.iter().enumerate())
        .filter(|&(i, &(idx, _))| idx != i as i64)
        .map(|(i, &(idx, _))| (i, idx))
        .collect();
    // Matching by sorting rather than hashing into a set keeps the cost the same whatever
    // hashes a tampered database holds.
    let mut by_hash: Vec<(Hash, i64)> = stored.into_iter().map(|(i, h)| (h, i)).collect();
    by_hash.sort_unstable();
    Ok((tree, misplaced, by_hash))
}

impl crate::Store {
    /// Re-derives the leaf of every stored record and compares it with the log. Calls
    /// `progress(done, total)` as it goes.
    ///
    /// The records are hashed on one connection per core while another thread reads the log
    /// and rebuilds its tree. The connections see the database at slightly different moments, so
    /// with a platform writing meanwhile a record can look unlogged or a leaf orphaned; every
    /// such candidate is checked again on its own before it becomes a finding.
    pub fn audit_scan(
        &mut self,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<AuditScan, StoreError> {
        let total = self
            .db
            .query(
                "SELECT COALESCE(MAX(idx) + 1, 0) FROM log_leaves",
                &[],
                |r| r.i64(0),
            )?
            .first()
            .map_or(0, |&n| n as u64);
        progress(0, total);
        let cores = std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(8);
        let shares = reading_shares(&mut self.db, cores)?;
        let done = AtomicU64::new(0);
        let url = &self.url;
        let db = &mut self.db;
        let (tree, misplaced, by_hash, mut derived) = std::thread::scope(|scope| {
            let workers: Vec<_> = shares
                .into_iter()
                .enumerate()
                .map(|(share, filter)| {
                    let done = &done;
                    scope.spawn(move || derive_share(url, share, filter, done))
                })
                .collect();
            let log = scope.spawn(move || read_log(db));
            // This thread only reports progress until every scan is done.
            while !(log.is_finished() && workers.iter().all(|w| w.is_finished())) {
                progress(done.load(Ordering::Relaxed), total);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let panicked = || StoreError::Backend("an audit thread panicked".into());
            let (tree, misplaced, by_hash) = log.join().map_err(|_| panicked())??;
            let mut derived = Vec::with_capacity(by_hash.len());
            for worker in workers {
                derived.extend(worker.join().map_err(|_| panicked())??);
            }
            Ok::<_, StoreError>((tree, misplaced, by_hash, derived))
        })?;
        let mut scan = AuditScan {
            tree,
            records: derived.len() as u64,
            findings: Vec::new(),
        };
        for (i, idx) in misplaced {
            scan.findings.push(Finding {
                kind: FindingKind::LogRewritten,
                record: self.leaf_name(idx)?,
                detail: format!("log position {i} holds leaf index {idx}"),
            });
        }
        // The shares are sorted runs, which this sort merges in linear time.
        derived.sort();
        let (mut unmatched, mut leftover) = (Vec::new(), std::collections::HashSet::new());
        let mut misfiled = Vec::new();
        let mut d = derived.into_iter().peekable();
        for (hash, idx) in by_hash {
            while d
                .next_if(|x| x.0 < hash)
                .map(|x| leftover.insert(x.0))
                .is_some()
            {}
            match d.next_if(|x| x.0 == hash) {
                None => unmatched.push(idx),
                // A reading whose row points elsewhere: its proofs would fail.
                Some((_, pointer)) if pointer != NOT_A_READING && pointer != idx => {
                    misfiled.push((idx, pointer))
                }
                Some(_) => {}
            }
        }
        leftover.extend(d.map(|x| x.0));
        for (idx, pointer) in misfiled {
            scan.findings.push(Finding {
                kind: FindingKind::Modified,
                record: self.leaf_name(idx)?,
                detail: format!("its row names log leaf {pointer}, but its leaf is {idx}"),
            });
        }
        if !unmatched.is_empty() || !leftover.is_empty() {
            self.name_findings(unmatched, leftover, &mut scan.findings)?;
        }
        progress(total, total);
        Ok(scan)
    }

    /// Turns leaves without a matching record and records without a matching leaf into named
    /// findings, dropping those that a fresh look finds consistent (written during the scan).
    fn name_findings(
        &mut self,
        unmatched: Vec<i64>,
        leftover: std::collections::HashSet<Hash>,
        findings: &mut Vec<Finding>,
    ) -> Result<(), StoreError> {
        let mut unlogged = std::collections::BTreeSet::new();
        for kind in RecordKind::ALL {
            let sql = select(kind).replace("{WHERE}", "");
            let rows = self.db.query(&sql, &[], |r| {
                Ok((row_name(kind, r)?, row_leaf(kind, r, hash_leaf)?))
            })?;
            unlogged.extend(
                rows.into_iter()
                    .filter(|(_, hash)| leftover.contains(hash))
                    .map(|(name, _)| name),
            );
        }
        for idx in unmatched {
            let record = self.leaf_name(idx)?;
            let modified = unlogged.remove(&record);
            if self.consistent_now(&record, Some(idx))? {
                continue;
            }
            findings.push(if modified {
                Finding {
                    kind: FindingKind::Modified,
                    detail: format!("stored bytes or metadata differ from log leaf {idx}"),
                    record,
                }
            } else {
                Finding {
                    kind: FindingKind::Deleted,
                    detail: format!("log leaf {idx} has no record"),
                    record,
                }
            });
        }
        for record in unlogged {
            if !self.consistent_now(&record, None)? {
                findings.push(Finding {
                    kind: FindingKind::Inserted,
                    record,
                    detail: "no log leaf commits to this record".into(),
                });
            }
        }
        Ok(())
    }

    /// Whether the record named `kind:reference` exists and its leaf is in the log right now,
    /// at index `at` if given (a second leaf naming a record is not its leaf).
    fn consistent_now(&mut self, record: &str, at: Option<i64>) -> Result<bool, StoreError> {
        let Ok(id) = record.parse::<RecordId>() else {
            return Ok(false);
        };
        let Some((idx, leaf)) = self.record_leaf(&id)? else {
            return Ok(false);
        };
        if at.is_some_and(|at| at as u64 != idx) {
            return Ok(false);
        }
        Ok(self.leaf_hashes(idx, 1)?.first() == Some(&leaf_hash(&leaf)))
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
                    .ok_or_else(|| StoreError::NotFound(format!("no record {id}")))?;
                self.db.query(&sql, &[P::Text(device), P::I64(seq)], |r| {
                    row_leaf(id.kind, r, encode_leaf)
                })?
            }
            RecordKind::Device => self.db.query(&sql, &[P::Text(&id.reference)], |r| {
                row_leaf(id.kind, r, encode_leaf)
            })?,
            _ => {
                let n: i64 = id
                    .reference
                    .parse()
                    .map_err(|_| StoreError::NotFound(format!("no record {id}")))?;
                self.db
                    .query(&sql, &[P::I64(n)], |r| row_leaf(id.kind, r, encode_leaf))?
            }
        };
        Ok(match (index, rows.into_iter().next()) {
            (Some(i), Some(leaf)) => Some((i, leaf)),
            _ => None,
        })
    }

    /// The log index of a record's leaf: a reading's is kept in its row, other records' are
    /// found by name in the log (an index that leaves readings out, see schema version 6).
    pub fn leaf_index(&mut self, id: &RecordId) -> Result<Option<u64>, StoreError> {
        let found = match id.kind {
            RecordKind::Reading => {
                let Some((device, seq)) = id
                    .reference
                    .rsplit_once('/')
                    .and_then(|(d, s)| Some((d, s.parse::<i64>().ok()?)))
                else {
                    return Ok(None);
                };
                // The row's pointer counts only where the log names this reading: a pointer
                // changed behind msec's back must not lend another reading's leaf to proofs.
                self.db.query(
                    "SELECT l.idx FROM readings r JOIN log_leaves l ON l.idx = r.leaf \
                     WHERE r.device_id = $1 AND r.sequence = $2 AND l.kind = 'reading' AND l.ref = $3",
                    // The name as msec writes it (`d1/07` asks for `d1/7`).
                    &[P::Text(device), P::I64(seq), P::Text(&format!("{device}/{seq}"))],
                    |r| r.i64(0).map(Some),
                )?
            }
            // The index's own condition, spelled out: neither SQLite nor a prepared PostgreSQL
            // statement uses a partial index for a kind that is only a parameter.
            _ => self.db.query(
                "SELECT idx FROM log_leaves WHERE kind = $1 AND ref = $2 AND kind <> 'reading'",
                &[P::Text(id.kind.name()), P::Text(&id.reference)],
                |r| r.i64(0).map(Some),
            )?,
        };
        Ok(found.into_iter().flatten().next().map(|i| i as u64))
    }

    /// Leaf hashes from index `from` on, at most `limit`, in log order.
    pub fn leaf_hashes(&mut self, from: u64, limit: u64) -> Result<Vec<Hash>, StoreError> {
        self.db.query(
            "SELECT hash FROM log_leaves WHERE idx >= $1 ORDER BY idx LIMIT $2",
            &[
                P::I64(i64::try_from(from).unwrap_or(i64::MAX)),
                P::I64(i64::try_from(limit).unwrap_or(i64::MAX)),
            ],
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

    /// Tree sizes cosigned by at least `quorum` witnesses, newest first. The caller still
    /// verifies the lines; the count only spares it the sizes that cannot reach quorum (with
    /// a quorum of two and one witness down, that is every size since).
    pub fn cosigned_sizes(&mut self, quorum: usize) -> Result<Vec<u64>, StoreError> {
        self.db.query(
            "SELECT size FROM cosignatures GROUP BY size HAVING COUNT(*) >= $1 ORDER BY size DESC",
            &[P::I64(quorum.max(1) as i64)],
            |r| Ok(r.i64(0)? as u64),
        )
    }
}

#[cfg(test)]
mod tests {
    /// docs/ledger.md shows this leaf byte for byte; keep the two in step.
    #[test]
    fn documented_leaf_example_is_current() {
        let leaf = super::admin_leaf(1, 1_700_000_000_000, "cli", "device.revoke", "park-1", "")
            .with(msec_ledger::encode_leaf);
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
