//! The notary keeps msec's transparency log honest: it mirrors the store's log leaves into a
//! Merkle tree, signs a checkpoint whenever the log grew (C2SP tlog-checkpoint), remembers the
//! newest one outside the database so a restart can neither fork nor rewind the log, answers
//! proofs, collects witness cosignatures, and audits the database against all of it.
//!
//! It never writes records (ingest and the CLI do, through the store) and knows nothing of
//! HTTP. Its methods block on the database: call them off async workers.

mod audit;
mod key;
mod witness;

pub use audit::{audit, AuditReport, TrustedCheckpoint};
pub use key::{load_or_create_cosigner, load_or_create_seed, LogKey};
pub use witness::{judge, Judgement, Refusal, WitnessState};

use msec_ledger::{Checkpoint, CheckpointError, Hash, Tree};
use msec_store::{RecordId, Store, StoreError};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum NotaryError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("{0}")]
    Refused(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("{0}")]
    Io(String),
}

/// A witness the platform trusts: its name and cosigner verifier key.
#[derive(Debug, Clone)]
pub struct Witness {
    pub name: String,
    pub verifier_key: String,
}

/// How far a witness alarm's time may be from the server's clock: bounds how long a captured
/// alarm could be posted again.
pub const ALARM_MAX_AGE_S: u64 = 600;

/// The latest checkpoint with the state that produced it.
#[derive(Debug, Clone)]
pub struct Published {
    pub checkpoint: Checkpoint,
    /// The signed note (log signature only).
    pub note: String,
}

pub struct Notary {
    store: Mutex<Store>,
    tree: RwLock<Tree>,
    key: LogKey,
    state_file: PathBuf,
    latest: RwLock<Option<Published>>,
    witnesses: Vec<Witness>,
    quorum: usize,
}

/// An inclusion proof of one record against a checkpoint.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Inclusion {
    pub record: String,
    pub index: u64,
    pub tree_size: u64,
    #[serde(serialize_with = "hex_hash")]
    pub leaf_hash: Hash,
    #[serde(serialize_with = "hex_hashes")]
    pub proof: Vec<Hash>,
    /// The signed checkpoint (with any cosignatures) the proof leads to.
    pub checkpoint: String,
}

fn hex_hash<S: serde::Serializer>(h: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(h))
}

pub fn hex_hashes<S: serde::Serializer>(hs: &[Hash], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(hs.iter().map(hex::encode))
}

const LOAD_CHUNK: u64 = 100_000;

/// Refuses a witness list that cannot work: a quorum larger than the list, or one witness
/// listed twice, by name or under another name with the same key (the signed message names no
/// witness, so its one signature would verify for both), which would count twice towards the
/// quorum. [`Notary::open`] checks it; callers can check before they create anything.
pub fn check_witnesses(witnesses: &[Witness], quorum: usize) -> Result<(), NotaryError> {
    if quorum > witnesses.len() {
        return Err(NotaryError::Refused(format!(
            "a quorum of {quorum} witness cosignatures needs at least {quorum} witnesses (got {})",
            witnesses.len()
        )));
    }
    let key_of = |w: &Witness| {
        w.verifier_key
            .trim()
            .splitn(3, '+')
            .nth(2)
            .map(str::to_owned)
    };
    for (i, w) in witnesses.iter().enumerate() {
        if let Some(twin) = witnesses[..i]
            .iter()
            .find(|o| o.name == w.name || key_of(o) == key_of(w))
        {
            return Err(NotaryError::Refused(format!(
                "witnesses {:?} and {:?} are the same witness (same name or same key); each witness counts once towards the quorum",
                twin.name, w.name
            )));
        }
    }
    Ok(())
}

impl Notary {
    /// Loads the log from `store` and checks it against the last checkpoint this platform
    /// published (kept in `state_file`): a database with fewer leaves, or with other leaves
    /// under that checkpoint, is refused rather than served.
    pub fn open(
        mut store: Store,
        key: LogKey,
        state_file: PathBuf,
        witnesses: Vec<Witness>,
        quorum: usize,
    ) -> Result<Notary, NotaryError> {
        check_witnesses(&witnesses, quorum)?;
        let mut tree = Tree::new();
        load_new_leaves(&mut store, &mut tree)?;
        let notary = Notary {
            store: Mutex::new(store),
            tree: RwLock::new(tree),
            key,
            state_file,
            latest: RwLock::new(None),
            witnesses,
            quorum,
        };
        if let Some(saved) = notary.saved_checkpoint()? {
            notary.check_against(&saved).map_err(|e| {
                NotaryError::Refused(format!(
                    "{e}; the database was rolled back or rewritten since checkpoint {} in {} was published. \
                     Restore the newest database backup, or run `msec audit` to see what changed. \
                     (If this is another database on purpose, that file belongs to the old one: \
                     give this one its own --data-dir.)",
                    saved.size,
                    notary.state_file.display()
                ))
            })?;
        }
        let last = notary.lock_store().latest_checkpoint()?;
        if let Some((_, note)) = last {
            let cp = Checkpoint::verify(&note, &notary.key.verifier_key())?;
            notary
                .check_against(&cp)
                .map_err(|e| NotaryError::Refused(format!("{e} (newest stored checkpoint)")))?;
            *notary.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(Published {
                checkpoint: cp,
                note,
            });
        }
        Ok(notary)
    }

    fn lock_store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn origin(&self) -> &str {
        self.key.origin()
    }

    pub fn verifier_key(&self) -> String {
        self.key.verifier_key()
    }

    pub fn witnesses(&self) -> &[Witness] {
        &self.witnesses
    }

    pub fn quorum(&self) -> usize {
        self.quorum
    }

    pub fn size(&self) -> u64 {
        self.tree.read().unwrap_or_else(|p| p.into_inner()).size()
    }

    fn saved_checkpoint(&self) -> Result<Option<Checkpoint>, NotaryError> {
        match std::fs::read_to_string(&self.state_file) {
            Ok(note) => Ok(Some(
                Checkpoint::verify(&note, &self.key.verifier_key()).map_err(|e| {
                    NotaryError::Refused(format!("{}: {e}", self.state_file.display()))
                })?,
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(NotaryError::Io(format!(
                "{}: {e}",
                self.state_file.display()
            ))),
        }
    }

    /// Is `cp` a prefix of the log as loaded now?
    fn check_against(&self, cp: &Checkpoint) -> Result<(), String> {
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        if tree.size() < cp.size {
            return Err(format!(
                "the log has {} leaves but checkpoint {} covers {}",
                tree.size(),
                cp.size,
                cp.size
            ));
        }
        match tree.root(cp.size) {
            Ok(root) if root == cp.root => Ok(()),
            _ => Err(format!(
                "the log's first {} leaves no longer match the checkpoint of that size",
                cp.size
            )),
        }
    }

    /// Picks up leaves appended since the last call and, if the log grew, signs and publishes a
    /// checkpoint (database, then state file). Returns the new checkpoint, if any.
    pub fn tick(&self) -> Result<Option<Published>, NotaryError> {
        let mut store = self.lock_store();
        let mut tree = self.tree.write().unwrap_or_else(|p| p.into_inner());
        load_new_leaves(&mut store, &mut tree)?;
        let size = tree.size();
        let published = self
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|p| p.checkpoint.size);
        if published == Some(size) {
            return Ok(None);
        }
        let checkpoint = Checkpoint {
            origin: self.key.origin().to_string(),
            size,
            root: tree.root(size).expect("the tree's own size is in range"),
        };
        drop(tree);
        let note = self.key.sign(&checkpoint);
        store.save_checkpoint(size, &note)?;
        write_atomically(&self.state_file, note.as_bytes()).map_err(|e| {
            NotaryError::Io(format!("cannot write {}: {e}", self.state_file.display()))
        })?;
        let p = Published { checkpoint, note };
        *self.latest.write().unwrap_or_else(|p| p.into_inner()) = Some(p.clone());
        Ok(Some(p))
    }

    /// Publishes checkpoints every `every` until `stop` turns true, then once more so the last
    /// checkpoint covers everything committed before the stop. Errors are logged and retried.
    pub fn run(&self, every: std::time::Duration, stop: &std::sync::atomic::AtomicBool) {
        loop {
            let stopping = stop.load(std::sync::atomic::Ordering::Relaxed);
            if let Err(e) = self.tick() {
                tracing::error!(error = %e, "cannot publish a log checkpoint; retrying");
            }
            if stopping {
                return;
            }
            std::thread::sleep(every);
        }
    }

    /// The newest checkpoint, with every stored cosignature appended.
    pub fn latest(&self) -> Result<Option<String>, NotaryError> {
        let Some(p) = self
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return Ok(None);
        };
        Ok(Some(self.with_cosignatures(p.checkpoint.size, &p.note)?))
    }

    fn with_cosignatures(&self, size: u64, note: &str) -> Result<String, NotaryError> {
        let lines = self.lock_store().cosignatures(size)?;
        Ok(lines
            .into_iter()
            .fold(note.to_string(), |mut n, (_, line)| {
                n.push_str(&line);
                n
            }))
    }

    /// The signed checkpoint of `size` (with cosignatures), if one was published.
    pub fn checkpoint_at(&self, size: u64) -> Result<Option<String>, NotaryError> {
        let note = self.lock_store().checkpoint_at(size)?;
        note.map(|n| self.with_cosignatures(size, &n)).transpose()
    }

    /// Proof that `record` is in the log, against the newest checkpoint.
    pub fn inclusion(&self, record: &RecordId) -> Result<Inclusion, NotaryError> {
        let latest = self
            .latest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| NotaryError::NotFound("no checkpoint has been published yet".into()))?;
        let index = self
            .lock_store()
            .leaf_index(record)?
            .ok_or_else(|| NotaryError::NotFound(format!("no log leaf for record {record}")))?;
        let size = latest.checkpoint.size;
        if index >= size {
            return Err(NotaryError::NotFound(format!(
                "record {record} is logged at index {index}, after the newest checkpoint (size {size}); retry in a second"
            )));
        }
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        let proof = tree
            .inclusion_proof(index, size)
            .map_err(|e| NotaryError::NotFound(e.to_string()))?;
        let leaf_hash = *tree.leaf(index).expect("index below size");
        drop(tree);
        Ok(Inclusion {
            record: record.to_string(),
            index,
            tree_size: size,
            leaf_hash,
            proof,
            checkpoint: self.with_cosignatures(size, &latest.note)?,
        })
    }

    /// RFC 9162 consistency proof between two published tree sizes.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Vec<Hash>, NotaryError> {
        let tree = self.tree.read().unwrap_or_else(|p| p.into_inner());
        if new > tree.size() {
            return Err(NotaryError::NotFound(format!(
                "the log has only {} leaves",
                tree.size()
            )));
        }
        tree.consistency_proof(old, new)
            .map_err(|e| NotaryError::Refused(e.to_string()))
    }

    /// Checks that a configured witness signed this alarm about this log, at a `time` (Unix
    /// seconds) within [`ALARM_MAX_AGE_S`] of now (see `msec_ledger::verify_alarm`).
    pub fn check_alarm(
        &self,
        time: u64,
        witness: &str,
        kind: &str,
        detail: &str,
        signature: &str,
    ) -> Result<(), NotaryError> {
        let w = self
            .witnesses
            .iter()
            .find(|w| w.name == witness)
            .ok_or_else(|| NotaryError::Refused("no configured witness has that name".into()))?;
        let now = (msec_store::now_ms() / 1000) as u64;
        if now.abs_diff(time) > ALARM_MAX_AGE_S {
            return Err(NotaryError::Refused(
                "the alarm's time is not within 10 minutes of this server's clock".into(),
            ));
        }
        msec_ledger::verify_alarm(
            &w.verifier_key,
            self.origin(),
            time,
            witness,
            kind,
            detail,
            signature,
        )
        .map_err(|_| NotaryError::Refused("the alarm's signature does not verify".into()))
    }

    /// Accepts a cosigned checkpoint from a witness: the note must be one this log published
    /// and carry a valid cosignature by a configured witness. Returns the witness name.
    pub fn add_cosignature(&self, note: &str) -> Result<String, NotaryError> {
        let cp = Checkpoint::verify(note, &self.key.verifier_key())
            .map_err(|e| NotaryError::Refused(format!("not a checkpoint of this log: {e}")))?;
        let ours = self.lock_store().checkpoint_at(cp.size)?.ok_or_else(|| {
            NotaryError::Refused(format!(
                "this log never published a checkpoint of size {}",
                cp.size
            ))
        })?;
        if Checkpoint::verify(&ours, &self.key.verifier_key())? != cp {
            return Err(NotaryError::Refused(
                "checkpoint differs from the one published at that size".into(),
            ));
        }
        for w in &self.witnesses {
            if Checkpoint::verify_cosignature(note, &w.verifier_key).is_ok() {
                let line = note
                    .lines()
                    .find(|l| {
                        l.strip_prefix("\u{2014} ")
                            .and_then(|r| r.split_once(' '))
                            .is_some_and(|(n, _)| n == w.name)
                            && Checkpoint::verify_cosignature(
                                &format!("{}\n{l}\n", cp.body()),
                                &w.verifier_key,
                            )
                            .is_ok()
                    })
                    .expect("a verified cosignature has its line");
                self.lock_store()
                    .add_cosignature(cp.size, &w.name, &format!("{line}\n"))?;
                return Ok(w.name.clone());
            }
        }
        Err(NotaryError::Refused(
            "no valid cosignature by a configured witness".into(),
        ))
    }

    /// The largest tree size with at least `quorum` valid witness cosignatures: every record
    /// below it is "final". `None` when no witnesses are required or none reached quorum yet.
    pub fn final_size(&self) -> Result<Option<u64>, NotaryError> {
        if self.quorum == 0 {
            return Ok(None);
        }
        let sizes = self.lock_store().cosigned_sizes(self.quorum)?;
        for size in sizes {
            if let Some(note) = self.checkpoint_at(size)? {
                if audit::cosigners(&note, &self.witnesses) >= self.quorum {
                    return Ok(Some(size));
                }
            }
        }
        Ok(None)
    }
}

fn load_new_leaves(store: &mut Store, tree: &mut Tree) -> Result<(), StoreError> {
    loop {
        let hashes = store.leaf_hashes(tree.size(), LOAD_CHUNK)?;
        let n = hashes.len() as u64;
        for h in hashes {
            tree.push_hash(h);
        }
        if n < LOAD_CHUNK {
            return Ok(());
        }
    }
}

pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}
