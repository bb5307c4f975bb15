//! `msec audit`: every record re-derived into its leaf and compared with the log, and the log
//! compared with every checkpoint it is known to have published (the newest witnessed one, the
//! one kept outside the database, and any a user saved).

use crate::{NotaryError, Witness};
use msec_ledger::Checkpoint;
use msec_store::{Finding, FindingKind, Store};

/// A checkpoint the auditor trusts more than the database: where it came from, and its note.
#[derive(Debug, Clone)]
pub struct TrustedCheckpoint {
    pub source: String,
    pub note: String,
}

#[derive(Debug, serde::Serialize)]
pub struct AuditReport {
    pub records: u64,
    pub leaves: u64,
    /// Tree size of the newest checkpoint with a quorum of witness cosignatures.
    pub witnessed_size: Option<u64>,
    /// "source: size" of each checkpoint the log was checked against.
    pub checkpoints: Vec<String>,
    pub findings: Vec<Finding>,
}

/// How many of `witnesses` validly cosigned `note`.
pub(crate) fn cosigners(note: &str, witnesses: &[Witness]) -> usize {
    witnesses
        .iter()
        .filter(|w| Checkpoint::verify_cosignature(note, &w.verifier_key).is_ok())
        .count()
}

pub fn audit(
    store: &mut Store,
    log_key: &str,
    trusted: &[TrustedCheckpoint],
    witnesses: &[Witness],
    quorum: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<AuditReport, NotaryError> {
    let scan = store.audit_scan(progress)?;
    let mut tree = scan.tree;
    let mut findings = scan.findings;
    let mut against: Vec<TrustedCheckpoint> = trusted.to_vec();

    // The newest checkpoint the witnesses vouched for. A rolled-back database may have lost it,
    // which is why the state file and saved checkpoints are checked too.
    let mut witnessed_size = None;
    for size in store.cosigned_sizes(quorum)? {
        let Some(mut note) = store.checkpoint_at(size)? else {
            continue;
        };
        for (_, line) in store.cosignatures(size)? {
            note.push_str(&line);
        }
        if cosigners(&note, witnesses) >= quorum.max(1) {
            witnessed_size = Some(size);
            against.push(TrustedCheckpoint {
                source: "newest witnessed checkpoint".into(),
                note,
            });
            break;
        }
    }
    if let Some((_, note)) = store.latest_checkpoint()? {
        against.push(TrustedCheckpoint {
            source: "newest stored checkpoint".into(),
            note,
        });
    }
    // A running platform goes on appending, and checkpointing, while the records are scanned:
    // the checkpoints just read may cover leaves the scan did not see. Those leaves are read
    // now (they are checked against their records by the next audit), so that a live log is
    // not mistaken for a rolled-back one.
    crate::load_new_leaves(store, &mut tree)?;
    let leaves = tree.size();

    let mut checked = Vec::new();
    for t in against {
        let cp = match Checkpoint::verify(&t.note, log_key) {
            Ok(cp) => cp,
            Err(e) => {
                findings.push(Finding {
                    kind: FindingKind::BadCheckpoint,
                    record: t.source.clone(),
                    detail: format!("not a valid checkpoint of this log: {e}"),
                });
                continue;
            }
        };
        checked.push(format!("{}: size {}", t.source, cp.size));
        if cp.size > tree.size() {
            findings.push(Finding {
                kind: FindingKind::Rollback,
                record: t.source,
                detail: format!(
                    "checkpoint covers {} leaves but the database holds {}: rolled back to an older state",
                    cp.size,
                    tree.size()
                ),
            });
        } else if tree.root(cp.size).ok() != Some(cp.root) {
            findings.push(Finding {
                kind: FindingKind::LogRewritten,
                record: t.source,
                detail: format!(
                    "the first {} leaves of the log no longer hash to the checkpoint's root (leaves rewritten, reordered or replaced)",
                    cp.size
                ),
            });
        }
    }
    Ok(AuditReport {
        records: scan.records,
        leaves,
        witnessed_size,
        checkpoints: checked,
        findings,
    })
}
