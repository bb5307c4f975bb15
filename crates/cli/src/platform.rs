//! Starting and stopping the whole platform: store, ingest, MQTT (embedded broker or an
//! external one), the HTTP API and dashboard. `serve`, `demo` and the benchmark share it.

use crate::config::{Broker, Settings, StoreArgs};
use anyhow::{bail, Context, Result};
use msec_ingest::{Ingest, MqttConfig};
use msec_notary::{LogKey, Notary};
use msec_store::Store;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub struct Platform {
    pub http: SocketAddr,
    pub broker_url: String,
    pub ingest: Ingest,
    stop: watch::Sender<bool>,
    /// Which part of the platform ended first, if one has (see [`Platform::failed`]).
    ended: watch::Receiver<Option<&'static str>>,
    consumer: JoinHandle<()>,
    server: JoinHandle<()>,
    writer: JoinHandle<()>,
    notary_stop: Arc<AtomicBool>,
    notary: std::thread::JoinHandle<()>,
    _claim: DataDirClaim,
}

/// Records, when dropped, that the part of the platform it was given to has ended, whether it
/// returned, panicked or was cancelled: the first part to end is the one [`Platform::failed`]
/// names.
struct EndGuard {
    part: &'static str,
    ended: Arc<watch::Sender<Option<&'static str>>>,
}

impl Drop for EndGuard {
    fn drop(&mut self) {
        self.ended.send_if_modified(|first| {
            let news = first.is_none();
            first.get_or_insert(self.part);
            news
        });
    }
}

impl EndGuard {
    fn new(part: &'static str, ended: &Arc<watch::Sender<Option<&'static str>>>) -> EndGuard {
        EndGuard {
            part,
            ended: ended.clone(),
        }
    }
}

/// The part that an [`EndGuard`] on `ended` named first, once there is one.
async fn first_ended(mut ended: watch::Receiver<Option<&'static str>>) -> &'static str {
    // Each guard names its part before letting go of the channel, so a closed channel has a
    // name in it already.
    let part = ended
        .wait_for(Option::is_some)
        .await
        .map_or(None, |part| *part);
    part.unwrap_or("a part of msec")
}

/// The claim of one platform on its data directory: two platforms on one directory would both
/// append to one transparency log and one checkpoint file.
pub struct DataDirClaim {
    /// Holding the open, locked file is the claim; closing it releases the lock.
    _lock: std::fs::File,
}

/// Creates the data directory and locks `DATA_DIR/msec.lock` for this process; the operating
/// system releases the lock when the process ends, however it ends.
pub fn claim_data_dir(s: &Settings) -> Result<DataDirClaim> {
    s.create_data_dir()?;
    let path = s.data_dir.join("msec.lock");
    let lock = lock_file(&path, || {
        format!(
            "another msec is already running on {} (it holds {}); stop it first, or give this \
             one its own --data-dir",
            s.data_dir.display(),
            path.display()
        )
    })?;
    Ok(DataDirClaim { _lock: lock })
}

/// Opens (creating it) and locks `path` for this process, or fails with `busy()` when another
/// holds it; the operating system releases the lock when the file closes or the process ends.
pub fn lock_file(path: &std::path::Path, busy: impl FnOnce() -> String) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => bail!("{}", busy()),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

/// How often the log publishes a checkpoint when it grew: well within the promised second.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Opens the settings' database off the async workers (the PostgreSQL driver blocks), with the
/// settings' encryption keys.
pub async fn open_store(settings: &Settings) -> Result<Store> {
    open_with(settings, settings.key_provider()?).await
}

/// [`open_store`] for what must exist already: the database (see [`require_database`]) and
/// its key-encryption key; creates neither, nor the data directory.
pub async fn open_existing_store(settings: &Settings) -> Result<Store> {
    require_database(settings)?;
    open_with(settings, settings.existing_key_provider()?).await
}

async fn open_with(
    settings: &Settings,
    keys: std::sync::Arc<dyn msec_store::KekProvider>,
) -> Result<Store> {
    let url = settings.database.clone();
    let shown = msec_store::redact(&url);
    match tokio::task::spawn_blocking(move || Store::open(&url, keys)).await? {
        Ok(store) => Ok(store),
        // Says already that it cannot open which database.
        Err(e @ msec_store::StoreError::Open(_)) => Err(e.into()),
        Err(e) => Err(anyhow::Error::from(e).context(format!("cannot open the database {shown}"))),
    }
}

/// Runs a blocking database operation off the async workers, on the database the settings
/// name, which it creates (with its key file) if there is none yet: for commands that add
/// something, which may well come before the first `msec serve`.
pub async fn with_store<T: Send + 'static>(
    platform: &StoreArgs,
    f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let settings = platform.resolve()?;
    let mut store = open_store(&settings).await?;
    tokio::task::spawn_blocking(move || f(&mut store)).await?
}

/// [`with_store`] for commands that read or change what exists (see [`require_database`]).
pub async fn with_existing_store<T: Send + 'static>(
    platform: &StoreArgs,
    f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
) -> Result<T> {
    let mut store = open_existing_store(&platform.resolve()?).await?;
    tokio::task::spawn_blocking(move || f(&mut store)).await?
}

/// With no database where the settings point (a mistyped --data-dir, the wrong directory),
/// says so, instead of letting a command create an empty one and a new key file there.
pub fn require_database(settings: &Settings) -> Result<()> {
    if let Some(path) = msec_store::sqlite_path(&settings.database) {
        if !std::path::Path::new(path).exists() {
            bail!(
                "no msec database at {path}: check --data-dir (or --database); `msec serve`, \
                 `msec demo` and the commands that add something (`msec device register`, \
                 `msec user add`, …) create one"
            );
        }
    }
    Ok(())
}

/// On a platform without users, creates the administrator `admin` with a random password and
/// returns it (to be shown once): nothing in msec has a default password.
pub async fn first_admin(settings: &Settings) -> Result<Option<String>> {
    let mut store = open_store(settings).await?;
    tokio::task::spawn_blocking(move || -> Result<Option<String>> {
        if !store.users()?.is_empty() {
            return Ok(None);
        }
        let password = msec_identity::generate_password()?;
        let user = msec_store::NewUser {
            id: "admin".into(),
            tenant: "*".into(),
            roles: vec!["admin".into()],
            password_hash: msec_identity::hash_password(&password)?,
        };
        store.add_user(&user, "first-start")?;
        Ok(Some(password))
    })
    .await?
}

/// Prints how to log in after `first_admin`.
pub fn announce_admin(password: Option<String>) {
    match password {
        Some(p) => {
            println!(
                "  First start: created the administrator. Log in as  admin  with password  {p}"
            );
            println!(
                "  (shown only now; add people with `msec user add`, see `msec user --help`)."
            );
        }
        None => println!("  Log in with your msec user (create one with `msec user add`)."),
    }
}

/// The platform's command-signing key (created on first use).
fn command_signer(settings: &Settings) -> Result<msec_device::CommandSigner> {
    let (_, seed, _) = msec_notary::load_or_create_seed(&settings.command_key_file(), |_| {
        "msec-platform-commands".into()
    })?;
    Ok(msec_device::CommandSigner::from_seed(*seed))
}

/// The public half of the command key, which (simulated) devices pin.
pub fn command_public_key(settings: &Settings) -> Result<Option<[u8; 32]>> {
    Ok(Some(command_signer(settings)?.public_key()))
}

/// The transparency log over the settings' database. Blocking.
pub fn open_notary(settings: &Settings, store: Store) -> Result<Notary> {
    let (key, created) = LogKey::load_or_create(&settings.log_key_file())?;
    if created {
        eprintln!(
            "created the log signing key {} (origin {}); verifier key: {}",
            settings.log_key_file().display(),
            key.origin(),
            key.verifier_key()
        );
    }
    Ok(Notary::open(
        store,
        key,
        settings.log_state_file(),
        settings.witnesses.clone(),
        settings.witness_quorum,
    )?)
}

/// The MQTT client ids of the platform's consumer and command publisher: stable across
/// restarts (so the broker keeps the consumer's session and queued readings), distinct per
/// topic root, and unguessable (see [`Settings::mqtt_client_secret`]).
fn client_ids(s: &Settings) -> Result<(String, String)> {
    let secret = s.mqtt_client_secret()?;
    Ok((
        format!("msec-ingest-{}-{secret}", s.topic_root),
        format!("msec-commands-{}-{secret}", s.topic_root),
    ))
}

impl Platform {
    pub async fn start(s: &Settings, claim: DataDirClaim) -> Result<Platform> {
        let listener = tokio::net::TcpListener::bind(s.http)
            .await
            .with_context(|| {
                format!(
                    "cannot listen for HTTP on {} (choose another address with --http)",
                    s.http
                )
            })?;
        let http = listener.local_addr()?;
        // The embedded broker's subscription for msec is made before it listens, so that no
        // reading a device sends from the first moment is acknowledged and then missed.
        let (broker_url, embedded) = match &s.broker {
            Broker::Embedded(addr) => {
                let filter = msec_ingest::readings_filter(&s.topic_root);
                let (addr, readings) = msec_broker::start_consuming(*addr, &filter)?;
                (format!("mqtt://{addr}"), Some(readings))
            }
            Broker::External(url) => (url.clone(), None),
        };
        let config = msec_ingest::Config {
            max_envelope_bytes: s.max_envelope_bytes,
            max_skew_secs: s.max_skew,
            max_age_secs: s.max_age,
            ..Default::default()
        };
        let notary_store = open_store(s).await?;
        let notary = {
            let s = s.clone();
            Arc::new(tokio::task::spawn_blocking(move || open_notary(&s, notary_store)).await??)
        };
        // Without its consumer, writer, HTTP server, checkpoints or access rules msec must
        // not run on: an embedded broker would go on acknowledging readings that nothing
        // stores, and revoked grants would go on counting.
        let (ended_tx, ended) = watch::channel(None);
        let ended_tx = Arc::new(ended_tx);
        let notary_stop = Arc::new(AtomicBool::new(false));
        let notary_thread = {
            let (n, stop) = (notary.clone(), notary_stop.clone());
            let guard = EndGuard::new("the transparency log's checkpoints", &ended_tx);
            std::thread::Builder::new()
                .name("msec-log".into())
                .spawn(move || {
                    let _guard = guard;
                    n.run(CHECKPOINT_EVERY, &stop)
                })?
        };
        let access_store = open_store(s).await?;
        let access = Arc::new(
            tokio::task::spawn_blocking(move || msec_access::Access::open(access_store)).await??,
        );
        {
            // Rule changes made by other processes (the CLI) apply within half a second.
            let (a, stop) = (access.clone(), notary_stop.clone());
            let guard = EndGuard::new("the refresher of access rules", &ended_tx);
            std::thread::Builder::new()
                .name("msec-access".into())
                .spawn(move || {
                    let _guard = guard;
                    while !stop.load(Ordering::Relaxed) {
                        if let Err(e) = a.refresh() {
                            tracing::error!(error = %e, "cannot refresh access rules");
                        }
                        std::thread::sleep(std::time::Duration::from_millis(500));
                    }
                })?;
        }
        let (consumer_id, publisher_id) = client_ids(s)?;
        let publisher = msec_ingest::CommandPublisher::connect(&broker_url, &publisher_id)
            .await
            .map_err(anyhow::Error::msg)
            .context("cannot connect the actuator-command publisher to the MQTT broker")?;
        let writer_store = open_store(s).await?;
        let (ingest, writer) =
            tokio::task::spawn_blocking(move || Ingest::start(writer_store, config))
                .await?
                .context("cannot start ingest")?;
        let writer = tokio::task::spawn_blocking({
            let guard = EndGuard::new("the ingest writer", &ended_tx);
            move || {
                let _guard = guard;
                let _ = writer.join();
            }
        });
        let db = msec_server::DbHandle::start(open_store(s).await?)?;
        tokio::spawn({
            let guard = EndGuard::new("the API's database connection", &ended_tx);
            let ended = db.ended();
            async move {
                let _guard = guard;
                ended.await;
            }
        });
        let last_command = db
            .call(|db| db.last_command_id())
            .await
            .context("cannot read the last actuator command's id")?;
        let commander = Arc::new(msec_server::Commander::new(
            command_signer(s)?,
            publisher,
            &s.topic_root,
            last_command.unwrap_or(0),
        ));
        let (stop, stopped) = watch::channel(false);
        let consumer = {
            let guard = EndGuard::new("the consumer of readings from the MQTT broker", &ended_tx);
            let (ingest, stopped) = (ingest.clone(), stopped.clone());
            let mqtt = match embedded {
                Some(readings) => Err(readings),
                None => Ok(
                    MqttConfig::from_url(&broker_url, &consumer_id, &s.topic_root)
                        .map_err(anyhow::Error::msg)?,
                ),
            };
            tokio::spawn(async move {
                let _guard = guard;
                match mqtt {
                    Err(readings) => msec_ingest::run_embedded(ingest, readings, stopped).await,
                    Ok(mqtt) => msec_ingest::run_mqtt(ingest, mqtt, stopped).await,
                }
            })
        };
        let state = msec_server::AppState {
            db,
            ingest: ingest.clone(),
            notary,
            access,
            commands: Some(commander),
            trusted_proxies: s.trusted_proxies.clone().into(),
        };
        let mut until_stop = stopped;
        let server = {
            let guard = EndGuard::new("the HTTP server", &ended_tx);
            tokio::spawn(async move {
                let _guard = guard;
                let stopped = async move {
                    let _ = until_stop.wait_for(|s| *s).await;
                };
                if let Err(e) = msec_server::serve(listener, state, stopped).await {
                    tracing::error!(error = %e, "the HTTP server failed");
                }
            })
        };
        tracing::info!(http = %http, broker = %msec_store::redact(&broker_url), database = %msec_store::redact(&s.database), "msec is running");
        Ok(Platform {
            http,
            broker_url,
            ingest,
            stop,
            ended,
            consumer,
            server,
            writer,
            notary_stop,
            notary: notary_thread,
            _claim: claim,
        })
    }

    /// Resolves, naming the part, when a part msec cannot run without (the consumer of
    /// readings, the ingest writer, the HTTP server, the API's database connection, the
    /// checkpoints of the transparency log, the refresher of access rules) has ended before
    /// [`Platform::shutdown`]:
    /// `serve` and `demo` then stop with an error, so that a supervisor restarts them.
    pub async fn failed(&self) -> &'static str {
        first_ended(self.ended.clone()).await
    }

    /// Stops taking input, acknowledges what was committed, and waits for the last commit.
    pub async fn shutdown(self) -> Result<()> {
        // A database outage must not hold the stop up: its commits are given up instead.
        self.ingest.stopping();
        let _ = self.stop.send(true);
        let _ = self.consumer.await;
        // Open live streams would hold a graceful HTTP shutdown forever; give them a moment.
        let mut server = self.server;
        if tokio::time::timeout(std::time::Duration::from_secs(3), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
        drop(self.ingest);
        // The writer commits each batch as it arrives, so everything acknowledged is already
        // durable; it exits once the last ingest handle (some may linger in closing HTTP
        // connections) is gone. Wait a little for a clean exit, not forever.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), self.writer).await;
        // One last checkpoint covers everything committed before the stop.
        self.notary_stop.store(true, Ordering::Relaxed);
        // Bounded like the writer: a database that stopped answering must not hold the stop.
        let notary = tokio::task::spawn_blocking(move || self.notary.join());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), notary).await;
        Ok(())
    }
}

/// Starts catching Ctrl-C and SIGTERM at once, so that a signal arriving while the platform is
/// still starting is not fatal, and returns a future that resolves on the first of them.
pub fn interrupts() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            (Ok(mut int), Ok(mut term)) => Box::pin(async move {
                tokio::select! {
                    _ = int.recv() => {},
                    _ = term.recv() => {},
                }
            }),
            _ => Box::pin(async {
                let _ = tokio::signal::ctrl_c().await;
            }),
        }
    }
    #[cfg(not(unix))]
    Box::pin(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn the_first_part_to_end_is_named_whether_it_returns_or_panics() {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let running = EndGuard::new("a part still running", &tx);
        let panics = {
            let guard = EndGuard::new("the part that panicked", &tx);
            tokio::spawn(async move {
                let _guard = guard;
                panic!("on purpose");
            })
        };
        assert!(panics.await.is_err());
        let returns = {
            let guard = EndGuard::new("a part that returned later", &tx);
            tokio::spawn(async move {
                let _guard = guard;
            })
        };
        returns.await.unwrap();
        drop(tx);
        let named = tokio::time::timeout(Duration::from_secs(5), first_ended(rx.clone())).await;
        assert_eq!(named.ok(), Some("the part that panicked"));
        drop(running);
        assert_eq!(first_ended(rx).await, "the part that panicked");
    }

    #[tokio::test]
    async fn nothing_is_named_while_every_part_runs() {
        let (tx, rx) = watch::channel(None);
        let tx = Arc::new(tx);
        let _running = EndGuard::new("a part", &tx);
        let waited = tokio::time::timeout(Duration::from_millis(200), first_ended(rx)).await;
        assert!(waited.is_err(), "a part was named while none had ended");
    }
}
