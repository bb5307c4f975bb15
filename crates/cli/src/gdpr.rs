//! `msec keys`, `msec export`, `msec erase` and `msec consent`: encryption keys and the rights
//! of data subjects.

use crate::config::StoreArgs;
use crate::platform::{with_existing_store, with_store};
use anyhow::{bail, Context, Result};
use msec_ledger::Tree;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

#[derive(clap::Subcommand)]
pub enum KeysCommand {
    /// Create the key-encryption key file (mode 0600) for a new deployment.
    ///
    /// `msec serve` and `msec demo` do this on first start too. Back the file up apart from
    /// database backups: whoever has both can read everything.
    Init {
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Replace the key-encryption key: every data key is re-wrapped, no payload is re-encrypted,
    /// and the old key is destroyed (database backups taken before need the old key file).
    Rotate {
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Re-wrap every data key under MSEC_KEK's new key (rotating a key from the environment)
    ///
    /// Rotating a key from the environment: set MSEC_KEK to a new KEK-ID:64-HEX-DIGITS and
    /// MSEC_KEK_PREVIOUS to the old value, restart every msec process on the database with
    /// both, run this, then remove MSEC_KEK_PREVIOUS and destroy the old key: database backups
    /// taken before can no longer be decrypted. With a key file, use `msec keys rotate`.
    #[command(verbatim_doc_comment)]
    Rewrap {
        #[command(flatten)]
        platform: StoreArgs,
    },
}

#[derive(clap::Subcommand)]
pub enum ConsentCommand {
    /// Record that SUBJECT consented to GRANTEE using their data for PURPOSE
    ///
    /// Example:  msec consent give --subject resident-007 --grantee caregiver:ana --purpose tele-assistance
    #[command(verbatim_doc_comment)]
    Give {
        /// Whose data, e.g. resident-007 (a device's owner)
        #[arg(long)]
        subject: String,
        /// Who may use it, e.g. caregiver:ana
        #[arg(long)]
        grantee: String,
        /// What for, e.g. tele-assistance
        #[arg(long)]
        purpose: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Withdraw a consent by its id (logged as an administrative action).
    Withdraw {
        /// The consent's id, as `msec consent list` shows it
        id: i64,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// List a subject's consents, withdrawn ones included.
    List {
        /// Whose consents, e.g. resident-007
        #[arg(long)]
        subject: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// The data subject (a device owner, e.g. resident-007)
    #[arg(long)]
    subject: String,
    /// Write to this file (created with mode 0600) instead of standard output
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[command(flatten)]
    platform: StoreArgs,
}

#[derive(clap::Args)]
pub struct EraseArgs {
    /// The data subject to erase
    #[arg(long)]
    subject: String,
    /// Confirm: the subject's data becomes unreadable for good, in this database and its backups
    #[arg(long)]
    yes: bool,
    /// Erase a subject nothing is held about yet, so that nothing ever can be (without it, msec
    /// refuses: a misspelt name would erase nobody and still rotate the key-encryption key)
    #[arg(long)]
    unknown_subject: bool,
    #[command(flatten)]
    platform: StoreArgs,
}

pub async fn keys(cmd: KeysCommand) -> Result<()> {
    match cmd {
        KeysCommand::Init { platform } => {
            let settings = platform.resolve()?;
            if std::env::var_os("MSEC_KEK").is_some() {
                bail!("MSEC_KEK is set: the key comes from the environment, there is no file to create");
            }
            let ring = msec_vault::FileKeys::new(&settings.keys).init()?;
            println!(
                "created {} (key {}); back it up separately from the database",
                settings.keys.display(),
                ring.current_id()
            );
            Ok(())
        }
        KeysCommand::Rewrap { platform } => {
            if std::env::var_os("MSEC_KEK").is_none() {
                bail!("MSEC_KEK is not set: with a key file, `msec keys rotate` makes the new key and re-wraps");
            }
            let (kek, n) = with_existing_store(&platform, |s| Ok(s.rewrap_keys("cli")?)).await?;
            println!("re-wrapped {n} data keys under {kek}; now remove MSEC_KEK_PREVIOUS and destroy the old key");
            Ok(())
        }
        KeysCommand::Rotate { platform } => {
            let (kek, n) = with_existing_store(&platform, |s| Ok(s.rotate_keys("cli")?)).await?;
            println!("rotated: new key {kek}; {n} data keys re-wrapped, no payload re-encrypted; the old key is destroyed");
            Ok(())
        }
    }
}

pub async fn consent(cmd: ConsentCommand) -> Result<()> {
    match cmd {
        ConsentCommand::Give {
            subject,
            grantee,
            purpose,
            platform,
        } => {
            let (c, known) = with_store(&platform, move |s| {
                let c = s.give_consent(&subject, &grantee, &purpose)?;
                Ok((c, !s.subject_tenants(&subject)?.is_empty()))
            })
            .await?;
            println!(
                "consent {} recorded: {} allows {} for {}",
                c.id, c.subject, c.grantee, c.purpose
            );
            // Kept either way (a resident may consent before their devices are registered),
            // but a misspelt subject would otherwise pass unnoticed.
            if !known {
                eprintln!(
                    "note: no device owner or user is called {:?} yet; if that is a typo, withdraw consent {} and give it again",
                    c.subject, c.id
                );
            }
            Ok(())
        }
        ConsentCommand::Withdraw { id, platform } => {
            if with_existing_store(&platform, move |s| Ok(s.withdraw_consent(id, "cli")?)).await? {
                println!("consent {id} withdrawn");
                Ok(())
            } else {
                bail!("no active consent {id}")
            }
        }
        ConsentCommand::List { subject, platform } => {
            let list = with_existing_store(&platform, move |s| Ok(s.consents(&subject)?)).await?;
            println!("{}", serde_json::to_string_pretty(&list)?);
            Ok(())
        }
    }
}

pub async fn export(args: ExportArgs) -> Result<()> {
    let ExportArgs {
        subject,
        out,
        platform,
    } = args;
    let shown = out.clone();
    let readings = with_existing_store(&platform, move |s| {
        // Before anything is written: nothing held, or erased.
        s.exportable(&subject)?;
        // Proofs against the newest checkpoint, from a tree of the log.
        let checkpoint = s.latest_checkpoint()?;
        let size = checkpoint.as_ref().map_or(0, |(size, _)| *size);
        let mut tree = Tree::new();
        loop {
            let chunk = s.leaf_hashes(tree.size(), 100_000)?;
            if chunk.is_empty() {
                break;
            }
            chunk.into_iter().for_each(|h| {
                tree.push_hash(h);
            });
        }
        let mut sink = Sink::open(out.as_deref())?;
        write!(
            sink,
            "{{\"format\":\"msec-subject-export/v1\",\"exported_ms\":{},\"checkpoint\":{},\"subject\":{}",
            msec_store::now_ms(),
            serde_json::to_string(&checkpoint.map(|(_, note)| note))?,
            serde_json::to_string(&subject)?
        )?;
        // Written page by page as the store reads them: an export is never whole in memory.
        let mut json = msec_store::ExportJson::default();
        let mut readings = 0;
        let mut unwritten = None;
        let mut write = |part: msec_store::ExportPart| match part {
            msec_store::ExportPart::Records(records) => {
                let proofs: Vec<_> = records
                    .iter()
                    .map(|(record, index)| {
                        let proof = (*index < size)
                            .then(|| tree.inclusion_proof(*index, size).ok())
                            .flatten()
                            .map(|p| p.iter().map(hex::encode).collect::<Vec<_>>());
                        serde_json::json!({
                            "record": record,
                            "index": index,
                            "leaf_hash": tree.leaf(*index).map(hex::encode),
                            "inclusion_proof": proof,
                        })
                    })
                    .collect();
                json.items(&mut sink, "proofs", &proofs)
            }
            msec_store::ExportPart::Readings(page) => {
                readings += page.len();
                json.part(&mut sink, msec_store::ExportPart::Readings(page))
            }
            part => json.part(&mut sink, part),
        };
        let exported = s.export_subject_in_parts(&subject, &mut |part| {
            write(part).map_err(|e| {
                unwritten = Some(e);
                msec_store::StoreError::Invalid("the export could not be written".into())
            })
        });
        if let Some(e) = unwritten {
            return Err(anyhow::Error::new(e).context("cannot write the export"));
        }
        exported?;
        json.finish(&mut sink)?;
        sink.write_all(b"\n")?;
        sink.finish()?;
        Ok(readings)
    })
    .await?;
    if let Some(path) = shown {
        eprintln!(
            "wrote {} ({readings} readings, with inclusion proofs)",
            path.display()
        );
    }
    Ok(())
}

/// Where `msec export` writes: standard output, or a private file that takes its name only
/// once complete, so that a failed export never leaves a truncated one under it.
enum Sink {
    Stdout(BufWriter<std::io::Stdout>),
    File(msec_vault::PrivateFile),
}

impl Sink {
    fn open(path: Option<&Path>) -> Result<Sink> {
        Ok(match path {
            None => Sink::Stdout(BufWriter::new(std::io::stdout())),
            Some(path) => Sink::File(
                msec_vault::PrivateFile::create(path)
                    .with_context(|| format!("cannot write {}", path.display()))?,
            ),
        })
    }

    fn finish(self) -> Result<()> {
        match self {
            Sink::Stdout(mut w) => w.flush()?,
            Sink::File(f) => f.commit()?,
        }
        Ok(())
    }
}

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        match self {
            Sink::Stdout(w) => w.write(bytes),
            Sink::File(f) => f.write(bytes),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(w) => w.flush(),
            Sink::File(f) => f.flush(),
        }
    }
}

pub async fn erase(args: EraseArgs) -> Result<()> {
    if !args.yes {
        bail!(
            "erasing {:?} makes all of its data unreadable for good, here and in every backup; run again with --yes",
            args.subject
        );
    }
    let subject = args.subject.clone();
    let unknown_ok = args.unknown_subject;
    let e = with_existing_store(&args.platform, move |s| {
        let held =
            s.devices()?.iter().any(|d| d.owner == subject) || !s.consents(&subject)?.is_empty();
        if !held && !unknown_ok {
            bail!(
                "nothing is held about subject {subject:?}: check the name (`msec device list` \
                 shows owners), or pass --unknown-subject to erase it in advance"
            );
        }
        Ok(s.erase_subject(&subject, "cli")?)
    })
    .await
    .context("erasure failed")?;
    match &e.kek {
        Ok(kek) => println!(
            "erased {}: data key destroyed, {} device(s) revoked, key-encryption key rotated to {kek}; the log still verifies",
            e.subject, e.devices_revoked
        ),
        Err(why) => {
            println!(
                "erased {}: data key destroyed, {} device(s) revoked; the log still verifies",
                e.subject, e.devices_revoked
            );
            eprintln!(
                "WARNING: the key-encryption key was NOT rotated ({why}). Until it is (`msec keys rotate`; with MSEC_KEK, a new one in MSEC_KEK and the old in MSEC_KEK_PREVIOUS, then `msec keys rewrap`: see `msec keys rewrap --help`), database backups taken before now still hold {}'s data key under a key that exists: destroy them. Do not run the erasure again: it has taken effect.",
                e.subject
            );
        }
    }
    Ok(())
}
