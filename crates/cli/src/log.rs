//! `msec log …` and `msec audit`: checking the transparency log offline, from the database and
//! checkpoints a user kept, without trusting a running server.

use crate::config::{PlatformArgs, Settings, StoreArgs, WitnessesArgs};
use crate::platform::with_existing_store;
use anyhow::{bail, Context, Result};
use msec_ledger::{verify_consistency, verify_inclusion, Checkpoint, Tree};
use msec_notary::{AuditReport, LogKey, TrustedCheckpoint};
use msec_store::{RecordId, Store};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum LogCommand {
    /// Verify one record offline against a checkpoint you saved earlier
    ///
    /// Checks the checkpoint's signature, that today's log is consistent with it (nothing you
    /// saw was rewritten or dropped), and that the record, re-derived from the database as
    /// stored now, is included. Exits non-zero with the failing step otherwise.
    ///
    /// Example:
    ///   msec log checkpoint > saved.txt      (today)
    ///   msec log verify --record reading:park-env-01/42 --checkpoint saved.txt   (any day after)
    #[command(verbatim_doc_comment)]
    Verify {
        /// KIND:REFERENCE: reading:DEVICE/SEQUENCE, device:ID, event:N, admin:N or consent:N
        #[arg(long)]
        record: RecordId,
        /// A signed checkpoint saved earlier (C2SP text, as `msec log checkpoint` prints it)
        #[arg(long, value_name = "FILE")]
        checkpoint: PathBuf,
        /// The log's verifier key [default: from DATA_DIR/log-key.json]
        #[arg(long, value_name = "VKEY")]
        log_key: Option<String>,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Print the newest checkpoint the platform published, with witness cosignatures.
    Checkpoint {
        #[command(flatten)]
        platform: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct AuditArgs {
    /// Also check the log against this saved checkpoint (repeatable). The newest witnessed
    /// checkpoint and DATA_DIR/log-checkpoint.txt are always checked.
    #[arg(long, value_name = "FILE")]
    checkpoint: Vec<PathBuf>,
    /// The log's verifier key [default: from DATA_DIR/log-key.json]
    #[arg(long, value_name = "VKEY")]
    log_key: Option<String>,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    platform: StoreArgs,
    #[command(flatten)]
    witnessing: WitnessesArgs,
}

/// The log's verifier key: given, or read from the data directory (never created here).
fn verifier_key(settings: &Settings, given: Option<String>) -> Result<String> {
    if let Some(k) = given {
        msec_ledger::check_log_key(&k).with_context(|| format!("--log-key {k:?}"))?;
        return Ok(k);
    }
    let path = settings.log_key_file();
    if !path.exists() {
        bail!(
            "no log key at {} (the server creates it on first start); pass --log-key with the log's verifier key",
            path.display()
        );
    }
    Ok(LogKey::load_or_create(&path)?.0.verifier_key())
}

fn whole_tree(store: &mut Store) -> Result<Tree> {
    let mut tree = Tree::new();
    loop {
        let chunk = store.leaf_hashes(tree.size(), 100_000)?;
        if chunk.is_empty() {
            return Ok(tree);
        }
        for h in chunk {
            tree.push_hash(h);
        }
    }
}

pub async fn run(cmd: LogCommand) -> Result<()> {
    match cmd {
        LogCommand::Checkpoint { platform } => {
            let note = with_existing_store(&platform, |s| {
                let Some((size, mut note)) = s.latest_checkpoint()? else {
                    bail!(
                        "no checkpoint has been published yet (start `msec serve` or `msec demo`)"
                    );
                };
                for (_, line) in s.cosignatures(size)? {
                    note.push_str(&line);
                }
                Ok(note)
            })
            .await?;
            print!("{note}");
            Ok(())
        }
        LogCommand::Verify {
            record,
            checkpoint,
            log_key,
            platform,
        } => {
            let settings = platform.resolve()?;
            let vkey = verifier_key(&settings, log_key)?;
            let saved_note = std::fs::read_to_string(&checkpoint)
                .with_context(|| format!("cannot read {}", checkpoint.display()))?;
            let saved = Checkpoint::verify(&saved_note, &vkey).with_context(|| {
                format!(
                    "{} is not a checkpoint signed by this log",
                    checkpoint.display()
                )
            })?;
            println!(
                "signature    ok: {} signed by {}, size {}",
                checkpoint.display(),
                saved.origin,
                saved.size
            );
            let lines =
                with_existing_store(&platform, move |s| verify_record(s, &record, &saved, &vkey))
                    .await?;
            for l in lines {
                println!("{l}");
            }
            Ok(())
        }
    }
}

/// The steps of `log verify` after the signature, each a printed line; the first failure is
/// an error.
fn verify_record(
    s: &mut Store,
    record: &RecordId,
    saved: &Checkpoint,
    vkey: &str,
) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let tree = whole_tree(s)?;
    // The newest checkpoint the platform signed: the saved one must be a prefix of it.
    let newest = match s.latest_checkpoint()? {
        Some((_, note)) => Checkpoint::verify(&note, vkey)
            .context("the newest stored checkpoint is not validly signed")?,
        None => bail!("the database holds no checkpoint; is this the right --data-dir/--database?"),
    };
    if newest.size < saved.size {
        bail!(
            "ROLLBACK: your checkpoint covers {} records but the newest checkpoint in this database only {}",
            saved.size,
            newest.size
        );
    }
    if tree.size() < newest.size {
        bail!(
            "ROLLBACK: the log holds {} leaves, fewer than its own newest checkpoint ({})",
            tree.size(),
            newest.size
        );
    }
    let proof = tree
        .consistency_proof(saved.size.max(1), newest.size)
        .unwrap_or_default();
    let consistent = if saved.size == 0 {
        true
    } else if saved.size == newest.size {
        saved.root == newest.root && tree.root(newest.size).ok() == Some(newest.root)
    } else {
        verify_consistency(saved.size, newest.size, &saved.root, &newest.root, &proof)
            && tree.root(newest.size).ok() == Some(newest.root)
    };
    if !consistent {
        bail!("FORK: the log today is not an extension of your checkpoint: records you relied on were rewritten");
    }
    out.push(format!(
        "consistency  ok: size {} extends to size {} ({} proof hashes)",
        saved.size,
        newest.size,
        proof.len()
    ));
    let (index, leaf) = s.record_leaf(record)?.with_context(|| {
        format!("MISSING: record {record} is not in the database or has no log leaf")
    })?;
    let leaf = msec_ledger::leaf_hash(&leaf);
    let (against, name) = if index < saved.size {
        (saved, "your checkpoint")
    } else {
        (&newest, "the newest checkpoint")
    };
    if index >= against.size {
        bail!("record {record} was logged at index {index}, after the newest checkpoint; retry in a second");
    }
    let path = tree.inclusion_proof(index, against.size)?;
    if !verify_inclusion(&leaf, index, against.size, &path, &against.root) {
        bail!("MODIFIED: record {record} as stored now is not the record logged at index {index}");
    }
    out.push(format!(
        "inclusion    ok: {record} is leaf {index} of {name} (size {}, {} proof hashes)",
        against.size,
        path.len()
    ));
    out.push(format!("verified: {record} is in the log, unchanged, and the log never rewound or forked since your checkpoint"));
    Ok(out)
}

pub async fn audit(args: AuditArgs) -> Result<()> {
    let settings = PlatformArgs {
        store: args.platform.clone(),
        witnessing: args.witnessing.clone(),
        ..Default::default()
    }
    .resolve()?;
    let vkey = verifier_key(&settings, args.log_key.clone())?;
    let mut trusted = Vec::new();
    let state = settings.log_state_file();
    if state.exists() {
        trusted.push(TrustedCheckpoint {
            source: format!("{} (kept outside the database)", state.display()),
            note: std::fs::read_to_string(&state)
                .with_context(|| format!("cannot read {}", state.display()))?,
        });
    }
    for f in &args.checkpoint {
        trusted.push(TrustedCheckpoint {
            source: f.display().to_string(),
            note: std::fs::read_to_string(f)
                .with_context(|| format!("cannot read {}", f.display()))?,
        });
    }
    let (witnesses, quorum) = (settings.witnesses.clone(), settings.witness_quorum);
    let started = std::time::Instant::now();
    let report: AuditReport = with_existing_store(&args.platform, move |s| {
        let mut bar = Progress::new();
        let r = msec_notary::audit(
            s,
            &vkey,
            &trusted,
            &witnesses,
            quorum,
            &mut |done, total| bar.show(done, total),
        )?;
        bar.finish();
        Ok(r)
    })
    .await?;
    let secs = started.elapsed().as_secs_f64();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for f in &report.findings {
            println!(
                "{:<14} {:<28} {}",
                format!("{:?}", f.kind).to_lowercase(),
                f.record,
                f.detail
            );
        }
        println!(
            "audit: {} records and {} log leaves re-derived in {:.2} s ({:.0} records/s); checked against {}; witnessed up to {}; {} finding(s)",
            report.records,
            report.leaves,
            secs,
            report.records as f64 / secs.max(1e-9),
            if report.checkpoints.is_empty() { "no checkpoint".to_string() } else { report.checkpoints.join(", ") },
            report.witnessed_size.map_or("no witnessed checkpoint".into(), |s| format!("size {s}")),
            report.findings.len()
        );
    }
    if !report.findings.is_empty() {
        bail!(
            "the audit found {} problem(s); see above",
            report.findings.len()
        );
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal; nothing otherwise (the summary line says it).
struct Progress {
    tty: bool,
    last: std::time::Instant,
}

impl Progress {
    fn new() -> Progress {
        use std::io::IsTerminal;
        Progress {
            tty: std::io::stderr().is_terminal(),
            last: std::time::Instant::now(),
        }
    }
    fn show(&mut self, done: u64, total: u64) {
        if !self.tty || self.last.elapsed().as_millis() < 100 {
            return;
        }
        self.last = std::time::Instant::now();
        let frac = if total == 0 {
            1.0
        } else {
            done as f64 / total as f64
        };
        let filled = (frac * 30.0) as usize;
        eprint!(
            "\raudit [{}{}] {:>3.0}% {done}/{total}",
            "#".repeat(filled),
            " ".repeat(30 - filled.min(30)),
            frac * 100.0
        );
    }
    fn finish(&self) {
        if self.tty {
            eprintln!();
        }
    }
}
