//! `msec witness`: an independent process that watches a log. It cosigns a checkpoint only
//! after checking the log's signature and that the checkpoint extends the last one it cosigned
//! (RFC 9162 consistency proof). A smaller tree, or another tree of the same or a larger size
//! (a split view), makes it refuse, report an alarm to the log, and exit non-zero.

use anyhow::{bail, Context, Result};
use msec_ledger::{Checkpoint, CosignerKey, Hash};
use msec_notary::{Judgement, Refusal, WitnessState};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(clap::Args)]
pub struct WitnessArgs {
    /// Base URL of the msec platform whose log to witness, e.g. http://127.0.0.1:8080
    #[arg(long, value_name = "URL", required_unless_present = "init")]
    log: Option<String>,
    /// This witness's key file (created on first use; its verifier key is printed so the
    /// platform can be started with --witness VKEY)
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The log's verifier key; without it the key the log presents on first contact is pinned
    #[arg(long, value_name = "VKEY")]
    log_key: Option<String>,
    /// Where the last cosigned checkpoint is kept [default: KEY with extension .state]
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Seconds between checks, 0.05 to 86400
    #[arg(long, default_value_t = 1.0, value_parser = interval_secs)]
    interval: f64,
    /// Check and cosign once, then exit
    #[arg(long)]
    once: bool,
    /// Only create the key file (if missing) and print the verifier key
    #[arg(long, conflicts_with = "log")]
    init: bool,
}

/// The longest one request to the log may take, answer included: a log that accepts a
/// connection and never answers must not hold the witness up for good.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

fn get(url: &str) -> Result<String> {
    let resp = ureq::get(url)
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .call()
        .with_context(|| format!("GET {url}"))?;
    answer("GET", url, resp)
}

fn post(url: &str, content_type: &str, body: String) -> Result<String> {
    let resp = ureq::post(url)
        .config()
        .http_status_as_error(false)
        .timeout_global(Some(HTTP_TIMEOUT))
        .build()
        .header("content-type", content_type)
        .send(body)
        .with_context(|| format!("POST {url}"))?;
    answer("POST", url, resp)
}

/// The body of a 2xx answer; otherwise an error that carries the platform's own explanation
/// (the `detail` of its problem+json), not just the status.
fn answer(method: &str, url: &str, mut resp: ureq::http::Response<ureq::Body>) -> Result<String> {
    let status = resp.status();
    let body = resp
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .with_context(|| format!("{method} {url}: reading the answer"))?;
    if status.is_success() {
        return Ok(body);
    }
    let detail = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|p| p["detail"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.chars().take(300).collect());
    Err(anyhow::Error::new(Refused {
        client_error: status.is_client_error(),
        message: format!(
            "{method} {url}: {status}: {}",
            msec_store::bounded(&detail, 300)
        ),
    }))
}

/// An answer other than 2xx from the log.
#[derive(Debug)]
struct Refused {
    /// 4xx: the log refuses what we sent, and sending it again changes nothing.
    client_error: bool,
    message: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refused {}

/// A failure that trying again cannot mend (this witness's own state, or a log that refuses
/// its cosignatures): a running witness stops on it too.
#[derive(Debug)]
struct Stop(String);

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

fn stop(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::Error::new(Stop(e.to_string()))
}

/// The longest pause between two checks of a running witness after failures.
const RETRY_AT_MOST: Duration = Duration::from_secs(60);

pub fn run(args: WitnessArgs) -> Result<()> {
    if let Some(log) = args
        .log
        .as_deref()
        .filter(|l| !l.starts_with("http://") && !l.starts_with("https://"))
    {
        bail!("--log {log:?} must be the platform's base URL, e.g. http://127.0.0.1:8080");
    }
    let (key, created) = msec_notary::load_or_create_cosigner(&args.key)?;
    if created {
        eprintln!(
            "created witness key {} ({})",
            args.key.display(),
            key.name()
        );
    }
    if args.init {
        // Alone on stdout, so scripts can capture it for the platform's --witness.
        println!("{}", key.verifier_key());
        return Ok(());
    }
    eprintln!("witness verifier key: {}", key.verifier_key());
    let log = args.log.as_deref().unwrap_or_default();
    if log.starts_with("https://") && !cfg!(feature = "tls") {
        bail!("this msec was built without TLS; build with `--features tls` to witness an https:// log");
    }
    let base = log.trim_end_matches('/').to_string();
    let state_path = args
        .state
        .clone()
        .unwrap_or_else(|| args.key.with_extension("state"));
    let key_file = std::fs::canonicalize(&args.key)
        .with_context(|| format!("cannot resolve {}", args.key.display()))?;
    if std::fs::symlink_metadata(&state_path).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "--state {} is a symbolic link; name the file itself",
            state_path.display()
        );
    }
    if state_path == args.key || std::fs::canonicalize(&state_path).is_ok_and(|s| s == key_file) {
        bail!(
            "--state {} is the key file: the first cosignature would overwrite the witness key",
            state_path.display()
        );
    }
    // One run per witness key: two that overlap (on one state file, or on two) could each
    // cosign a different view of the log.
    let mut lock_path = key_file.into_os_string();
    lock_path.push(".lock");
    let lock_path = PathBuf::from(lock_path);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("cannot open {}", lock_path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => bail!(
            "another witness is running with the key {} (it holds {}); two at once could cosign two views of the log",
            args.key.display(),
            lock_path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()))
        }
    }
    let interval = Duration::from_secs_f64(args.interval);
    let mut pause = interval;
    loop {
        if let Err(e) = check_and_cosign(&base, &key, args.log_key.as_deref(), &state_path) {
            let Some(alarm) = e.downcast_ref::<Alarm>() else {
                // Not the log's fault that we can tell (unreachable, an error answer): a
                // running witness tries again, less and less often; a single check reports it,
                // and so does a failure that trying again cannot mend.
                if args.once || e.downcast_ref::<Stop>().is_some() {
                    return Err(e);
                }
                eprintln!(
                    "witness check failed ({e:#}); trying again in {:.0} s",
                    pause.as_secs_f64()
                );
                std::thread::sleep(pause);
                pause = (pause * 2).min(RETRY_AT_MOST).max(interval);
                continue;
            };
            let time = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let body = serde_json::json!({
                "witness": key.name(),
                "kind": alarm.kind,
                "detail": alarm.detail,
                "time": time,
                "signature": key.sign_alarm(&alarm.origin, time, alarm.kind, &alarm.detail),
            });
            if let Err(report) = post(
                &format!("{base}/api/v1/log/alarms"),
                "application/json",
                body.to_string(),
            ) {
                eprintln!("(could not report the alarm to the log: {report:#})");
            }
            return Err(e);
        }
        if args.once {
            return Ok(());
        }
        pause = interval;
        std::thread::sleep(interval);
    }
}

/// A reason to stop trusting the log.
#[derive(Debug)]
struct Alarm {
    /// The log it is about (its verifier key's name).
    origin: String,
    kind: &'static str,
    detail: String,
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "REFUSING TO COSIGN ({}): {}", self.kind, self.detail)
    }
}

impl std::error::Error for Alarm {}

fn alarm(log_key: &str, kind: &'static str, detail: String) -> anyhow::Error {
    let origin = log_key.split('+').next().unwrap_or_default().to_string();
    anyhow::Error::new(Alarm {
        origin,
        kind,
        detail,
    })
}

fn check_and_cosign(
    base: &str,
    key: &CosignerKey,
    pinned: Option<&str>,
    state_path: &Path,
) -> Result<()> {
    // Only a missing file is a first contact: an unreadable one must not reset what this
    // witness has already vouched for.
    let last: Option<WitnessState> = match std::fs::read_to_string(state_path) {
        Ok(t) => Some(
            serde_json::from_str(&t)
                .map_err(|e| stop(format!("{} is corrupt: {e}", state_path.display())))?,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(stop(format!("cannot read {}: {e}", state_path.display()))),
    };
    let log_key = match (pinned, &last) {
        (Some(k), _) => k.to_string(),
        (None, Some(s)) => s.log_key.clone(),
        (None, None) => {
            let info: serde_json::Value =
                serde_json::from_str(&get(&format!("{base}/api/v1/log"))?)?;
            let k = info["verifier_key"]
                .as_str()
                .context("the log did not say its verifier key")?
                .to_string();
            println!(
                "pinned the log's key on first contact: {}",
                msec_store::bounded(&k, 200)
            );
            k
        }
    };
    let note = get(&format!("{base}/api/v1/log/checkpoint"))?;
    let mut consistency = |from: u64, to: u64| -> Result<Vec<Hash>, String> {
        let proof: serde_json::Value = get(&format!(
            "{base}/api/v1/log/consistency?from={from}&to={to}"
        ))
        .and_then(|text| Ok(serde_json::from_str(&text)?))
        .map_err(|e| format!("{e:#}"))?;
        proof["proof"]
            .as_array()
            .and_then(|hashes| {
                hashes
                    .iter()
                    .map(|h| {
                        h.as_str()
                            .and_then(|h| hex::decode(h).ok())
                            .and_then(|b| b.try_into().ok())
                    })
                    .collect()
            })
            .ok_or_else(|| "malformed consistency proof".to_string())
    };
    let judged = msec_notary::judge(last.as_ref(), &log_key, &note, &mut consistency);
    match judged {
        Err(Refusal::Alarm { kind, detail }) => Err(alarm(&log_key, kind, detail)),
        Err(e @ Refusal::NoProof(_)) => Err(e.into()),
        Ok(Judgement::Unchanged(cp)) => {
            // Already vouched for. The platform shows the cosignatures it holds: if ours is
            // missing (the last post failed after the state was saved), send it again.
            let ours = format!("\u{2014} {} ", key.name());
            if !note.lines().any(|l| l.starts_with(&ours)) {
                post_cosignature(base, key, &cp, &note)?;
            }
            Ok(())
        }
        Ok(Judgement::Extends(cp, state)) => {
            // Remember before telling anyone: this witness must never sign two conflicting
            // views.
            crate::simrun::write_private(state_path, &serde_json::to_string_pretty(&state)?)
                .map_err(|e| stop(format!("{e:#}")))?;
            post_cosignature(base, key, &cp, &note)
        }
    }
}

fn post_cosignature(base: &str, key: &CosignerKey, cp: &Checkpoint, note: &str) -> Result<()> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let line = key.cosign(cp, now);
    post(
        &format!("{base}/api/v1/log/cosignatures"),
        "text/plain",
        format!("{}{line}", note_without_cosignatures(note)),
    )
    .map_err(|e| match e.downcast_ref::<Refused>() {
        // Refused, not failed: e.g. this witness is not among those the log was started with.
        Some(r) if r.client_error => {
            stop(format!("the log refuses this witness's cosignature: {r}"))
        }
        _ => e,
    })?;
    println!(
        "cosigned {} size {}",
        msec_store::bounded(&cp.origin, 200),
        cp.size
    );
    Ok(())
}

/// The checkpoint body and its first signature line (the log's).
fn note_without_cosignatures(note: &str) -> String {
    let (body, sigs) = note.split_once("\n\n").unwrap_or((note, ""));
    format!("{body}\n\n{}\n", sigs.lines().next().unwrap_or_default())
}

fn interval_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.05..=86_400.0).contains(&s) => Ok(s),
        _ => Err("give a number of seconds from 0.05 to 86400".into()),
    }
}
