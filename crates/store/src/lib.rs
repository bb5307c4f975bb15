//! Durable storage for msec: the device registry, accepted readings and security events, on
//! embedded SQLite (default) or PostgreSQL (production), behind one interface.
//!
//! Each method is written once in SQL that both engines accept; [`db::Db`] hides the driver
//! differences. The schema is versioned and migrated on open. This crate never verifies
//! signatures, never decides whether a reading is acceptable and never logs stored values: it
//! stores what the ingest pipeline decided, atomically, and answers queries.

mod db;
mod gdpr;
mod keys;
mod log;
mod principals;
mod schema;

use db::{Db, Row, SealedReading, P};
use keys::Keys;
use serde::Serialize;
use std::sync::Arc;

pub use db::{redact, sqlite_path, StoreError};
pub use gdpr::{Consent, Erasure, ExportJson, ExportPart, ExportedReading, SubjectExport};
pub use log::{AuditScan, Finding, FindingKind, RecordId, RecordKind};
pub use msec_vault::{create_private_dir, KekProvider};
pub use principals::{valid_grant_resource, ApiToken, Grant, NewGrant, NewToken, NewUser, User};

/// Millisecond Unix time, the time unit of every stored timestamp.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Location {
    pub lat: f64,
    pub lon: f64,
    pub label: String,
}

/// Whether `s` may be a device id, tenant or owner: 1 to 64 characters of `A-Z a-z 0-9 . _ -`.
/// These appear in MQTT topics and URLs, where `/`, `+`, `#` or a space would change meaning.
pub fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The roles a grant may name without a tenant (`role:caregiver`); any other names its tenant
/// (`role:santander:operator`), since a bare one reaches that role in every tenant.
pub const UNQUALIFIED_ROLES: [&str; 2] = ["admin", "caregiver"];

/// The one tenant name no tenant may have: `platform/…` resources are the platform's own
/// (security events of every tenant), and a tenant's rules cover `TENANT/**`.
pub const RESERVED_TENANT: &str = "platform";

/// A tenant name: an id ([`valid_id`]) other than [`RESERVED_TENANT`].
pub fn valid_tenant(s: &str) -> bool {
    valid_id(s) && s != RESERVED_TENANT
}

/// What [`valid_tenant`] asks, for messages.
pub const TENANT_RULE: &str =
    "a tenant is 1 to 64 characters of A-Z a-z 0-9 . _ - and not \"platform\"";

/// What a registration may say about a device. Checked before anything is stored: a NaN
/// latitude, for one, would be stored as `null` and then fail every later read of the registry.
fn check_profile(d: &NewDevice) -> Result<(), StoreError> {
    for (what, id) in [
        ("a device id", &d.id),
        ("a tenant", &d.tenant),
        ("an owner", &d.owner),
    ] {
        if !valid_id(id) {
            return Err(StoreError::Invalid(format!(
                "{what} must be 1 to 64 characters of A-Z a-z 0-9 . _ - (got {:?})",
                bounded(id, 80)
            )));
        }
    }
    if !valid_tenant(&d.tenant) {
        return Err(StoreError::Invalid(format!(
            "{TENANT_RULE} (got {:?})",
            bounded(&d.tenant, 80)
        )));
    }
    let text = |what: &str, s: &str, max: usize| {
        if s.is_empty() || s.chars().count() > max || s.chars().any(char::is_control) {
            Err(StoreError::Invalid(format!(
                "{what} must be 1 to {max} characters without control characters"
            )))
        } else {
            Ok(())
        }
    };
    text("a device's name", &d.name, 128)?;
    text("a device's kind", &d.kind, 64)?;
    if let Some(l) = &d.location {
        if !(-90.0..=90.0).contains(&l.lat) || !(-180.0..=180.0).contains(&l.lon) {
            return Err(StoreError::Invalid(
                "a location needs a latitude from -90 to 90 and a longitude from -180 to 180"
                    .into(),
            ));
        }
        if !l.label.is_empty() {
            text("a location's label", &l.label, 128)?;
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Revoked,
}

/// A registered device as stored (name and location decrypted; both empty once its owner was
/// erased).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub id: String,
    pub tenant: String,
    /// The data subject the device's data is about (a resident, or the tenant itself for
    /// public infrastructure).
    pub owner: String,
    pub erased: bool,
    pub name: String,
    pub kind: String,
    pub location: Option<Location>,
    #[serde(serialize_with = "hex_bytes")]
    pub public_key: Vec<u8>,
    #[serde(serialize_with = "hex_bytes")]
    pub key_id: Vec<u8>,
    pub status: DeviceStatus,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub last_sequence: Option<i64>,
    pub battery: Option<f64>,
    pub link: Option<f64>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&b.iter().map(|x| format!("{x:02x}")).collect::<String>())
}

/// What it takes to register a device.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: String,
    pub tenant: String,
    pub owner: String,
    pub name: String,
    pub kind: String,
    pub location: Option<Location>,
    pub public_key: [u8; 32],
    pub key_id: [u8; 16],
}

/// An accepted reading, ready to be committed.
#[derive(Debug, Clone)]
pub struct NewReading {
    pub device_id: String,
    pub sequence: i64,
    pub issued_at: i64,
    pub received_ms: i64,
    pub envelope: Vec<u8>,
    pub digest: [u8; 32],
    /// Resolved SenML JSON records.
    pub measurements_json: String,
}

/// A stored reading as served by the API.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredReading {
    pub device_id: String,
    pub sequence: i64,
    pub issued_at: i64,
    pub received_ms: i64,
    pub measurements: serde_json::Value,
}

/// At most `max` characters of `s`, control characters replaced by `?`: the one way text from
/// the wire (topics, ids, user names, peers) enters a security event or a log line, so that it
/// can forge no line and carry no terminal escape.
pub fn bounded(s: &str, max: usize) -> String {
    s.chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// A security event: something that was refused or looked hostile. `detail` is written by msec,
/// never copied from attacker input without bounds, and carries no secrets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecurityEvent {
    pub id: i64,
    pub at_ms: i64,
    pub reason: String,
    pub device_id: Option<String>,
    pub source: String,
    pub detail: String,
    /// The tenant the event concerns (its device's, or its user's), whose auditors may read
    /// it; None for platform-wide events, which only platform-wide auditors read. A label for
    /// access, not logged: the transparency log covers the other fields.
    pub tenant: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub at_ms: i64,
    pub reason: String,
    pub device_id: Option<String>,
    pub source: String,
    pub detail: String,
    pub tenant: Option<String>,
    /// Unique per event ([`event_nonce`]): a batch committed again is stored once.
    pub nonce: [u8; 16],
}

/// A fresh event nonce: a random prefix drawn once per process, then a counter. Unique within
/// the process by construction, across processes with overwhelming probability.
pub fn event_nonce() -> [u8; 16] {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static PREFIX: OnceLock<[u8; 8]> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let prefix = PREFIX.get_or_init(|| {
        let mut p = [0u8; 8];
        if getrandom::fill(&mut p).is_err() {
            // Without randomness, the clock and the process id still differ between processes.
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            p = (now ^ u64::from(std::process::id()).rotate_left(40)).to_be_bytes();
        }
        p
    });
    let mut nonce = [0u8; 16];
    nonce[..8].copy_from_slice(prefix);
    nonce[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_be_bytes());
    nonce
}

/// Device metadata learnt from accepted readings.
#[derive(Debug, Clone, Default)]
pub struct DeviceUpdate {
    pub device_id: String,
    pub last_seen_ms: i64,
    pub last_sequence: i64,
    pub battery: Option<f64>,
    pub link: Option<f64>,
}

/// Everything the ingest pipeline commits at once: all or nothing.
#[derive(Debug, Default)]
pub struct Batch {
    pub readings: Vec<NewReading>,
    pub events: Vec<NewEvent>,
    pub devices: Vec<DeviceUpdate>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.readings.is_empty() && self.events.is_empty() && self.devices.is_empty()
    }
}

/// Filters for reading queries. `before_sequence` is the pagination cursor.
#[derive(Debug, Clone, Default)]
pub struct ReadingQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub before_sequence: Option<i64>,
    pub limit: u32,
}

/// Counts over stored data, for dashboards and restart-safe metrics.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub devices: i64,
    pub active_devices: i64,
    pub readings: i64,
    pub security_events: i64,
}

/// A connection to the msec database.
pub struct Store {
    db: Db,
    keys: Keys,
    /// Where `db` came from, so a scan can open more connections (may hold a password: never
    /// shown, see `redact`).
    url: String,
}

/// See [`Store::connector`].
pub struct Connector {
    url: String,
    keys: Arc<dyn KekProvider>,
}

impl Connector {
    /// A new connection; the schema is already migrated (by the store this came from).
    pub fn open(&self) -> Result<Store, StoreError> {
        Ok(Store {
            db: Db::open(&self.url)?,
            keys: Keys::new(self.keys.clone())?,
            url: self.url.clone(),
        })
    }
}

/// The thread started by [`Store::checkpoint_in_background`]; dropping this stops it.
pub struct WalCheckpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WalCheckpointer {
    const EVERY: std::time::Duration = std::time::Duration::from_millis(200);
    /// Longest a restarting checkpoint waits for readers, holding off commits meanwhile.
    const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(50);
    /// How long restarts pause after one gave up waiting for a reader.
    const AFTER_GIVING_UP: std::time::Duration = std::time::Duration::from_secs(5);
    /// The log size past which the ingest writer's checkpointer starts the log over.
    pub const LOG_LIMIT_BYTES: u64 = 64 << 20;
}

/// The checkpoint thread (see [`Store::checkpoint_in_background`]), until `stopped` closes.
fn checkpoint_loop(mut db: Db, stopped: std::sync::mpsc::Receiver<()>, log_limit: u64) {
    use std::time::Instant;
    let mut failing = false;
    let mut next_restart = Instant::now();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stopped.recv_timeout(WalCheckpointer::EVERY)
    {
        // Under steady ingest a passive checkpoint never catches up with the writer, so the
        // log would grow without end (630 MB after 125,000 readings). The passive pass has just
        // copied nearly all of it, so a restarting pass right after holds the writer off only
        // briefly. (TRUNCATE, which also frees the file, was tried: with the file regrown after
        // every pass, p50 at 5,000 readings/s went from 6 to 277 ms in one run of `msec bench
        // ingest`.) A restart must also wait for every reader, and holds commits off while it
        // waits; after one gave up, the next waits a while, or a long reader (an export) would
        // cost the writer that wait on every pass.
        let pass = match db.checkpoint_wal(db::Checkpoint::Passive) {
            Ok(Some(bytes)) if bytes > log_limit && Instant::now() >= next_restart => {
                let start = Instant::now();
                let done = db.checkpoint_wal(db::Checkpoint::Restart(WalCheckpointer::MAX_WAIT));
                let started_over = matches!(done, Ok(Some(_)));
                if !started_over {
                    next_restart = Instant::now() + WalCheckpointer::AFTER_GIVING_UP;
                }
                tracing::debug!(
                    bytes,
                    ms = start.elapsed().as_secs_f64() * 1e3,
                    started_over,
                    "restarting checkpoint of the SQLite log"
                );
                done
            }
            pass => pass,
        };
        match pass {
            Ok(_) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::error!(error = %e, "cannot checkpoint the SQLite log; it grows until this succeeds");
            }
            Err(_) => {}
        }
    }
}

impl Drop for WalCheckpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The personal fields of a device, sealed under its owner's data key.
#[derive(Serialize, serde::Deserialize)]
struct Profile {
    name: String,
    location: Option<Location>,
}

const DEVICE_COLUMNS: &str = "id, tenant, owner, kind, profile, public_key, key_id, status, \
     created_ms, updated_ms, last_seen_ms, last_sequence, battery, link";

/// A device row with its profile still sealed.
fn device_from(r: &dyn Row) -> Result<(Device, Vec<u8>), StoreError> {
    let device = Device {
        id: r.text(0)?,
        tenant: r.text(1)?,
        owner: r.text(2)?,
        erased: false,
        name: String::new(),
        kind: r.text(3)?,
        location: None,
        public_key: r.bytes(5)?,
        key_id: r.bytes(6)?,
        status: if r.text(7)? == "revoked" {
            DeviceStatus::Revoked
        } else {
            DeviceStatus::Active
        },
        created_ms: r.i64(8)?,
        updated_ms: r.i64(9)?,
        last_seen_ms: r.opt_i64(10)?,
        last_sequence: r.opt_i64(11)?,
        battery: r.opt_f64(12)?,
        link: r.opt_f64(13)?,
    };
    Ok((device, r.bytes(4)?))
}

impl Store {
    /// Opens `postgres://…` / `postgresql://…` URLs on PostgreSQL, and `sqlite:PATH` or a plain
    /// path on SQLite, then applies any pending schema migrations. `keys` provides the
    /// key-encryption key that protects every subject's data key.
    pub fn open(url: &str, keys: Arc<dyn KekProvider>) -> Result<Store, StoreError> {
        let mut store = Store {
            db: Db::open(url)?,
            keys: Keys::new(keys)?,
            url: url.to_string(),
        };
        schema::migrate(&mut store.db)?;
        store.keys.check_matches(&mut store.db)?;
        Ok(store)
    }

    /// What opens another connection to this database, with the same key-encryption key: for
    /// long reads (a subject's export) that must not hold up the connection they were asked
    /// on. Taking it is cheap; [`Connector::open`] connects (wherever the caller likes).
    pub fn connector(&self) -> Connector {
        Connector {
            url: self.url.clone(),
            keys: self.keys.provider(),
        }
    }

    /// Moves SQLite's WAL checkpoints off this connection onto a thread of their own. By
    /// default the connection whose commit pushes the log past 1,000 pages copies it into the
    /// database file and syncs that, inside the commit: on the ingest writer this stalled every
    /// reading queued behind it, for up to 150 ms at 5,000 readings/s. Here passive checkpoints
    /// on another connection run beside the writer, and once the log passes `log_limit` bytes a
    /// short restarting one starts it over. `None` on PostgreSQL, which checkpoints itself.
    pub fn checkpoint_in_background(
        &mut self,
        log_limit: u64,
    ) -> Result<Option<WalCheckpointer>, StoreError> {
        if self.engine() != "sqlite" {
            return Ok(None);
        }
        let other = Db::open(&self.url)?;
        self.db.leave_checkpoints_to_others()?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("msec-checkpoint".into())
            .spawn(move || checkpoint_loop(other, stopped, log_limit))
            .map_err(|e| StoreError::Backend(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(Some(WalCheckpointer {
            stop: Some(stop),
            thread: Some(thread),
        }))
    }

    /// "sqlite" or "postgres".
    pub fn engine(&self) -> &'static str {
        self.db.engine()
    }

    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        schema::current_version(&mut self.db)
    }

    /// Runs `f` in one transaction; key caches are dropped if it fails (it may have created
    /// data keys that the rollback discards).
    pub(crate) fn transaction<T>(
        &mut self,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.transact(false, f)
    }

    /// [`Store::transaction`]; with `changes_keys` (an erasure) the key epoch is bumped first,
    /// which on PostgreSQL takes the vault row exclusively before anything else: taking it
    /// shared and then exclusively, two erasures would wait on each other.
    fn transact<T>(
        &mut self,
        changes_keys: bool,
        f: impl FnOnce(&mut Store) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.db.begin()?;
        // Inside the transaction: a rotation that finished while this one waited to begin
        // must be seen before any data key is made (see `Keys::sync`).
        let synced = if changes_keys {
            keys::bump_epoch(&mut self.db).and_then(|()| self.keys.sync(&mut self.db, false))
        } else {
            self.keys.sync(&mut self.db, true)
        };
        if let Err(e) = synced {
            let _ = self.db.rollback();
            return Err(e);
        }
        match f(self) {
            Ok(v) => match self.db.commit() {
                Ok(()) => Ok(v),
                Err(e) => {
                    self.keys.forget();
                    Err(e)
                }
            },
            Err(e) => {
                let _ = self.db.rollback();
                self.keys.forget();
                Err(e)
            }
        }
    }

    pub fn register_device(&mut self, d: &NewDevice) -> Result<Device, StoreError> {
        check_profile(d)?;
        if self.device(&d.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "device {:?} is already registered",
                d.id
            )));
        }
        // A data subject belongs to one tenant: its data key, export and erasure are the
        // subject's, so a second tenant's device under the same name would fall under the
        // first tenant's export (and its erasure), and the reverse.
        // The answer does not name that tenant: whoever registers here may manage only this one.
        if self
            .subject_tenants(&d.owner)?
            .iter()
            .any(|t| *t != d.tenant)
        {
            return Err(StoreError::Invalid(format!(
                "owner {:?} is a data subject of another tenant; a subject belongs to one tenant",
                d.owner
            )));
        }
        self.transaction(|s| {
            let now = now_ms();
            let dek = s.keys.dek(&mut s.db, &d.owner, true)?.ok_or_else(|| {
                StoreError::Erased(format!(
                    "subject {:?} was erased; a device cannot be registered for it",
                    d.owner
                ))
            })?;
            let profile = serde_json::to_vec(&Profile {
                name: d.name.clone(),
                location: d.location.clone(),
            })
            .map_err(|e| StoreError::Backend(e.to_string()))?;
            let sealed = dek.seal(&keys::profile_aad(&d.id), &profile);
            // A tenant's first device makes the tenant known to access control, whose rules
            // (and whose list of tenants with security events) are rebuilt on a version change.
            let new_tenant = s
                .db
                .query(
                    "SELECT id FROM devices WHERE tenant = $1 LIMIT 1",
                    &[P::Text(&d.tenant)],
                    |r| r.text(0),
                )?
                .is_empty();
            s.db.exec(
                "INSERT INTO devices (id, tenant, owner, kind, profile, public_key, key_id, status, \
                 created_ms, updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, 'active', $8, $8)",
                &[
                    P::Text(&d.id),
                    P::Text(&d.tenant),
                    P::Text(&d.owner),
                    P::Text(&d.kind),
                    P::Bytes(&sealed),
                    P::Bytes(&d.public_key),
                    P::Bytes(&d.key_id),
                    P::I64(now),
                ],
            )
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!(
                    "device {:?} or its public key is already registered",
                    d.id
                )),
                other => other,
            })?;
            let leaf = log::device_leaf(&d.id, &d.tenant, &d.owner, &d.kind, &d.public_key, now, &sealed);
            log::append(
                &mut s.db,
                &[(RecordId::new(RecordKind::Device, d.id.clone()), leaf.hash())],
            )?;
            // After the log's lock, as user and grant changes do (the other order deadlocks
            // with them on PostgreSQL).
            if new_tenant {
                principals::bump_access(&mut s.db)?;
            }
            Ok(())
        })?;
        self.device(&d.id)?
            .ok_or_else(|| StoreError::Backend("device vanished after insert".into()))
    }

    /// Decrypts the profiles of device rows.
    fn open_devices(&mut self, rows: Vec<(Device, Vec<u8>)>) -> Result<Vec<Device>, StoreError> {
        self.keys.sync(&mut self.db, false)?;
        rows.into_iter()
            .map(|(mut d, sealed)| {
                match self.keys.dek(&mut self.db, &d.owner, false)? {
                    Some(dek) => {
                        let plain = dek.open(&keys::profile_aad(&d.id), &sealed).map_err(|_| {
                            StoreError::Tampered(format!(
                                "device {:?}: profile does not decrypt",
                                d.id
                            ))
                        })?;
                        let p: Profile = serde_json::from_slice(&plain).map_err(|_| {
                            StoreError::Tampered(format!("device {:?}: profile is malformed", d.id))
                        })?;
                        d.name = p.name;
                        d.location = p.location;
                    }
                    None => d.erased = true,
                }
                Ok(d)
            })
            .collect()
    }

    pub fn device(&mut self, id: &str) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        let rows = self.db.query(&sql, &[P::Text(id)], device_from)?;
        Ok(self.open_devices(rows)?.into_iter().next())
    }

    pub fn devices(&mut self) -> Result<Vec<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY tenant, id");
        let rows = self.db.query(&sql, &[], device_from)?;
        self.open_devices(rows)
    }

    /// The tenants that have devices, without opening any device's sealed profile.
    /// The tenants a data subject belongs to: those of the devices it owns and, if it is a
    /// user, the user's (one, unless data predates the check in `register_device`). Reads no
    /// encrypted field.
    pub fn subject_tenants(&mut self, subject: &str) -> Result<Vec<String>, StoreError> {
        let mut tenants = self.db.query(
            "SELECT DISTINCT tenant FROM devices WHERE owner = $1",
            &[P::Text(subject)],
            |r| r.text(0),
        )?;
        if let Some(u) = self.user(subject)? {
            tenants.push(u.tenant);
        }
        tenants.retain(|t| valid_tenant(t));
        tenants.sort();
        tenants.dedup();
        Ok(tenants)
    }

    pub fn device_tenants(&mut self) -> Result<Vec<String>, StoreError> {
        self.db.query(
            "SELECT DISTINCT tenant FROM devices ORDER BY tenant",
            &[],
            |r| r.text(0),
        )
    }

    /// Devices whose registration changed (registered or revoked) at or after `since_ms`: lets a
    /// running ingest pick up changes made by another process (the CLI) without a restart.
    pub fn devices_changed_since(&mut self, since_ms: i64) -> Result<Vec<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE updated_ms >= $1");
        let rows = self.db.query(&sql, &[P::I64(since_ms)], device_from)?;
        self.open_devices(rows)
    }

    /// Revokes a device; its readings are rejected from then on. Returns false if unknown.
    /// The revocation is a logged administrative action by `actor`.
    pub fn revoke_device(&mut self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.transaction(|s| {
            let n = s.db.exec(
                "UPDATE devices SET status = 'revoked', updated_ms = $2 WHERE id = $1 AND status <> 'revoked'",
                &[P::Text(id), P::I64(now_ms())],
            )?;
            if n > 0 {
                s.admin_in_tx(actor, "device.revoke", id, "")?;
            }
            Ok(n > 0)
        })
    }

    /// The largest actuator command id logged lately (`device.command`, detail `command ID
    /// …`): a restarted server issues only larger ones, whatever its clock says, since devices
    /// refuse an id not above the last they accepted. Among the last hundred, because commands
    /// sent at once may be logged out of order.
    pub fn last_command_id(&mut self) -> Result<Option<u64>, StoreError> {
        let details = self.db.query(
            "SELECT detail FROM admin_actions WHERE action = 'device.command' ORDER BY id DESC LIMIT 100",
            &[],
            |r| r.text(0),
        )?;
        Ok(details
            .iter()
            .filter_map(|d| d.strip_prefix("command ")?.split(' ').next()?.parse().ok())
            .max())
    }

    /// Records an administrative action (user, token, grant, key changes…) in the log.
    pub fn log_admin(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<i64, StoreError> {
        self.transaction(|s| s.admin_in_tx(actor, action, target, detail))
    }

    pub(crate) fn admin_in_tx(
        &mut self,
        actor: &str,
        action: &str,
        target: &str,
        detail: &str,
    ) -> Result<i64, StoreError> {
        let at = now_ms();
        let id = self
            .db
            .query(
                "INSERT INTO admin_actions (at_ms, actor, action, target, detail) VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[P::I64(at), P::Text(actor), P::Text(action), P::Text(target), P::Text(detail)],
                |r| r.i64(0),
            )?
            .first()
            .copied()
            .ok_or_else(|| StoreError::Backend("INSERT returned no id".into()))?;
        let leaf = log::admin_leaf(id, at, actor, action, target, detail);
        log::append(
            &mut self.db,
            &[(
                RecordId::new(RecordKind::Admin, id.to_string()),
                leaf.hash(),
            )],
        )?;
        Ok(id)
    }

    /// Commits a batch in one transaction and returns the ids given to its security events.
    /// Readings already stored (same device and sequence) are left untouched, which makes
    /// redelivery idempotent even across processes. Every record written gets its log leaf in
    /// the same transaction.
    pub fn commit(&mut self, batch: &Batch) -> Result<Vec<i64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.transaction(|s| s.write_batch(batch))
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<Vec<i64>, StoreError> {
        let mut sealed = Vec::with_capacity(batch.readings.len());
        for r in &batch.readings {
            let owner = self.keys.owner(&mut self.db, &r.device_id)?;
            // A reading that races its owner's erasure is sealed under a key nobody keeps:
            // accepted (its sender was valid when checked) and unreadable, like the rest.
            let dek = self
                .keys
                .dek(&mut self.db, &owner, true)?
                .unwrap_or_else(msec_vault::DataKey::generate);
            sealed.push(SealedReading {
                device_id: r.device_id.clone(),
                sequence: r.sequence,
                issued_at: r.issued_at,
                received_ms: r.received_ms,
                digest: r.digest,
                sealed: keys::seal_reading(
                    &dek,
                    &r.device_id,
                    r.sequence,
                    &r.envelope,
                    &r.measurements_json,
                ),
            });
        }
        // Device rows before the log's lock, the order of every other transaction that takes
        // both (a revocation, say): on PostgreSQL the opposite order deadlocks with it. The
        // lock comes before the readings, which are inserted with their log indices.
        self.db.update_devices(&batch.devices)?;
        let first_leaf = log::end(&mut self.db)?;
        let inserted = self.db.insert_readings(&sealed, first_leaf)?;
        let mut leaves = Vec::with_capacity(inserted.len() + batch.events.len());
        for i in inserted {
            let r = &sealed[i];
            let leaf = log::reading_leaf(
                &r.device_id,
                r.sequence,
                r.issued_at,
                r.received_ms,
                &r.digest,
                &r.sealed,
            );
            leaves.push((
                RecordId::new(
                    RecordKind::Reading,
                    format!("{}/{}", r.device_id, r.sequence),
                ),
                leaf.hash(),
            ));
        }
        let mut ids = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let inserted = self.db.query(
                "INSERT INTO security_events (at_ms, reason, device_id, source, detail, tenant, nonce) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (nonce) DO NOTHING RETURNING id",
                &[
                    P::I64(e.at_ms),
                    P::Text(&e.reason),
                    P::OptText(e.device_id.as_deref()),
                    P::Text(&e.source),
                    P::Text(&e.detail),
                    P::OptText(e.tenant.as_deref()),
                    P::Bytes(&e.nonce),
                ],
                |r| r.i64(0),
            )?;
            if inserted.is_empty() {
                // Committed before (its COMMIT's answer was lost): the same event, logged then.
                let stored = self.db.query(
                    "SELECT id FROM security_events WHERE nonce = $1",
                    &[P::Bytes(&e.nonce)],
                    |r| r.i64(0),
                )?;
                ids.extend(stored);
                continue;
            }
            for id in inserted {
                let leaf = log::event_leaf(
                    id,
                    e.at_ms,
                    &e.reason,
                    e.device_id.as_deref(),
                    &e.source,
                    &e.detail,
                );
                leaves.push((
                    RecordId::new(RecordKind::Event, id.to_string()),
                    leaf.hash(),
                ));
                ids.push(id);
            }
        }
        self.db.insert_leaves(first_leaf, &leaves)?;
        Ok(ids)
    }

    /// The digest of a stored reading, to tell a redelivery from a replay.
    pub fn reading_digest(
        &mut self,
        device_id: &str,
        sequence: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let rows = self.db.query(
            "SELECT digest FROM readings WHERE device_id = $1 AND sequence = $2",
            &[P::Text(device_id), P::I64(sequence)],
            |r| r.bytes(0),
        )?;
        Ok(rows.into_iter().next())
    }

    /// Readings of one device, newest sequence first, decrypted. `Erased` once the device's
    /// owner was erased.
    pub fn readings(
        &mut self,
        device_id: &str,
        q: &ReadingQuery,
    ) -> Result<Vec<StoredReading>, StoreError> {
        Ok(self
            .sealed_readings(device_id, q)?
            .into_iter()
            .map(|(r, _)| r)
            .collect())
    }

    /// Readings with their original signed envelopes.
    pub(crate) fn sealed_readings(
        &mut self,
        device_id: &str,
        q: &ReadingQuery,
    ) -> Result<Vec<(StoredReading, Vec<u8>)>, StoreError> {
        self.keys.sync(&mut self.db, false)?;
        let owner = self.keys.owner(&mut self.db, device_id)?;
        let limit = i64::from(q.limit.clamp(1, 1000));
        let rows = self.db.query(
            "SELECT device_id, sequence, issued_at, received_ms, sealed FROM readings \
             WHERE device_id = $1 AND issued_at * 1000 >= $2 AND issued_at * 1000 <= $3 AND sequence < $4 \
             ORDER BY sequence DESC LIMIT $5",
            &[
                P::Text(device_id),
                P::I64(q.from_ms.unwrap_or(i64::MIN / 2)),
                P::I64(q.to_ms.unwrap_or(i64::MAX / 2)),
                P::I64(q.before_sequence.unwrap_or(i64::MAX)),
                P::I64(limit),
            ],
            |r| Ok((r.text(0)?, r.i64(1)?, r.i64(2)?, r.i64(3)?, r.bytes(4)?)),
        )?;
        let dek = match self.keys.dek(&mut self.db, &owner, false)? {
            Some(k) => k,
            None if rows.is_empty() && !self.is_erased(&owner)? => return Ok(Vec::new()),
            None => {
                return Err(StoreError::Erased(format!(
                    "the data of device {device_id:?} was erased at its owner's request (GDPR \
                     article 17); its log entries remain, its contents can no longer be decrypted"
                )))
            }
        };
        rows.into_iter()
            .map(|(device_id, sequence, issued_at, received_ms, sealed)| {
                let (envelope, json) = keys::open_reading(&dek, &device_id, sequence, &sealed)?;
                let measurements = serde_json::from_str(&json)
                    .map_err(|e| StoreError::Tampered(format!("stored measurements: {e}")))?;
                Ok((
                    StoredReading {
                        device_id,
                        sequence,
                        issued_at,
                        received_ms,
                        measurements,
                    },
                    envelope,
                ))
            })
            .collect()
    }

    /// The tenant of security event `id`: None if there is no such event, `Some(None)` for a
    /// platform-wide one.
    pub fn security_event_tenant(&mut self, id: i64) -> Result<Option<Option<String>>, StoreError> {
        Ok(self
            .db
            .query(
                "SELECT tenant FROM security_events WHERE id = $1",
                &[P::I64(id)],
                |r| r.opt_text(0),
            )?
            .into_iter()
            .next())
    }

    /// Security events, newest first; `before_id` is the pagination cursor. `tenants`: only
    /// the events of these tenants, or all events (platform-wide ones included) for None.
    pub fn security_events(
        &mut self,
        limit: u32,
        before_id: Option<i64>,
        tenants: Option<&[String]>,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        let mut params = vec![
            P::I64(before_id.unwrap_or(i64::MAX)),
            P::I64(i64::from(limit.clamp(1, 1000))),
        ];
        let only = match tenants {
            None => String::new(),
            Some([]) => return Ok(Vec::new()),
            Some(tenants) => {
                params.extend(tenants.iter().map(|t| P::Text(t)));
                let list: Vec<String> = (3..3 + tenants.len()).map(|i| format!("${i}")).collect();
                format!(" AND tenant IN ({})", list.join(", "))
            }
        };
        self.db.query(
            &format!(
                "SELECT id, at_ms, reason, device_id, source, detail, tenant FROM security_events \
                 WHERE id < $1{only} ORDER BY id DESC LIMIT $2"
            ),
            &params,
            |r| {
                Ok(SecurityEvent {
                    id: r.i64(0)?,
                    at_ms: r.i64(1)?,
                    reason: r.text(2)?,
                    device_id: r.opt_text(3)?,
                    source: r.text(4)?,
                    detail: r.text(5)?,
                    tenant: r.opt_text(6)?,
                })
            },
        )
    }

    /// Security events per reason code, over all time.
    pub fn security_event_counts(&mut self) -> Result<Vec<(String, i64)>, StoreError> {
        self.db.query(
            "SELECT reason, COUNT(*) FROM security_events GROUP BY reason ORDER BY reason",
            &[],
            |r| Ok((r.text(0)?, r.i64(1)?)),
        )
    }

    pub fn counts(&mut self) -> Result<Counts, StoreError> {
        let one = |db: &mut Db, sql: &str| -> Result<i64, StoreError> {
            Ok(db
                .query(sql, &[], |r| r.i64(0))?
                .into_iter()
                .next()
                .unwrap_or(0))
        };
        Ok(Counts {
            devices: one(&mut self.db, "SELECT COUNT(*) FROM devices")?,
            active_devices: one(
                &mut self.db,
                "SELECT COUNT(*) FROM devices WHERE status = 'active'",
            )?,
            readings: one(&mut self.db, "SELECT COUNT(*) FROM readings")?,
            security_events: one(&mut self.db, "SELECT COUNT(*) FROM security_events")?,
        })
    }
}

#[cfg(test)]
mod tests {
    /// Text from the wire goes into logs and events only through `bounded`: no control
    /// character (a forged log line, a terminal escape) and no more than `max` characters.
    #[test]
    fn bounded_cuts_and_neutralises_control_characters() {
        assert_eq!(
            super::bounded("ok\nFAKE LOG LINE\u{1b}[2J", 100),
            "ok?FAKE LOG LINE?[2J"
        );
        assert_eq!(super::bounded("ééééé", 3), "ééé");
    }
}
