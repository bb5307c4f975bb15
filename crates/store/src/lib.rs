//! Durable storage for msec: the device registry, accepted readings and security events, on
//! embedded SQLite (default) or PostgreSQL (production), behind one interface.
//!
//! Each method is written once in SQL that both engines accept; [`db::Db`] hides the driver
//! differences. The schema is versioned and migrated on open. This crate never verifies
//! signatures, never decides whether a reading is acceptable and never logs stored values: it
//! stores what the ingest pipeline decided, atomically, and answers queries.

mod db;
mod principals;
mod schema;

use db::{Db, Row, P};
use serde::Serialize;

pub use db::{redact, StoreError};
pub use principals::{ApiToken, NewToken, NewUser, User};

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Revoked,
}

/// A registered device as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Device {
    pub id: String,
    pub tenant: String,
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
}

#[derive(Debug, Clone)]
pub struct NewEvent {
    pub at_ms: i64,
    pub reason: String,
    pub device_id: Option<String>,
    pub source: String,
    pub detail: String,
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
}

const DEVICE_COLUMNS: &str = "id, tenant, name, kind, location_lat, location_lon, location_label, \
     public_key, key_id, status, created_ms, updated_ms, last_seen_ms, last_sequence, battery, link";

fn device_from(r: &dyn Row) -> Result<Device, StoreError> {
    let location = match (r.opt_f64(4)?, r.opt_f64(5)?) {
        (Some(lat), Some(lon)) => Some(Location {
            lat,
            lon,
            label: r.opt_text(6)?.unwrap_or_default(),
        }),
        _ => None,
    };
    Ok(Device {
        id: r.text(0)?,
        tenant: r.text(1)?,
        name: r.text(2)?,
        kind: r.text(3)?,
        location,
        public_key: r.bytes(7)?,
        key_id: r.bytes(8)?,
        status: if r.text(9)? == "revoked" {
            DeviceStatus::Revoked
        } else {
            DeviceStatus::Active
        },
        created_ms: r.i64(10)?,
        updated_ms: r.i64(11)?,
        last_seen_ms: r.opt_i64(12)?,
        last_sequence: r.opt_i64(13)?,
        battery: r.opt_f64(14)?,
        link: r.opt_f64(15)?,
    })
}

impl Store {
    /// Opens `postgres://…` / `postgresql://…` URLs on PostgreSQL, and `sqlite:PATH` or a plain
    /// path on SQLite, then applies any pending schema migrations.
    pub fn open(url: &str) -> Result<Store, StoreError> {
        let db = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Db::postgres(url)?
        } else {
            let path = url
                .strip_prefix("sqlite://")
                .or_else(|| url.strip_prefix("sqlite:"))
                .unwrap_or(url);
            Db::sqlite(std::path::Path::new(path))?
        };
        let mut store = Store { db };
        schema::migrate(&mut store.db)?;
        Ok(store)
    }

    /// "sqlite" or "postgres".
    pub fn engine(&self) -> &'static str {
        self.db.engine()
    }

    pub fn schema_version(&mut self) -> Result<i64, StoreError> {
        schema::current_version(&mut self.db)
    }

    pub fn register_device(&mut self, d: &NewDevice) -> Result<Device, StoreError> {
        let now = now_ms();
        let (lat, lon, label) = match &d.location {
            Some(l) => (Some(l.lat), Some(l.lon), Some(l.label.as_str())),
            None => (None, None, None),
        };
        if self.device(&d.id)?.is_some() {
            return Err(StoreError::Conflict(format!(
                "device {:?} is already registered",
                d.id
            )));
        }
        self.db.exec(
            "INSERT INTO devices (id, tenant, name, kind, location_lat, location_lon, location_label, \
             public_key, key_id, status, created_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $10)",
            &[
                P::Text(&d.id),
                P::Text(&d.tenant),
                P::Text(&d.name),
                P::Text(&d.kind),
                P::OptF64(lat),
                P::OptF64(lon),
                P::OptText(label),
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
        self.device(&d.id)?
            .ok_or_else(|| StoreError::Backend("device vanished after insert".into()))
    }

    pub fn device(&mut self, id: &str) -> Result<Option<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        Ok(self
            .db
            .query(&sql, &[P::Text(id)], device_from)?
            .into_iter()
            .next())
    }

    pub fn devices(&mut self) -> Result<Vec<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices ORDER BY tenant, id");
        self.db.query(&sql, &[], device_from)
    }

    /// Devices whose registration changed (registered or revoked) at or after `since_ms`: lets a
    /// running ingest pick up changes made by another process (the CLI) without a restart.
    pub fn devices_changed_since(&mut self, since_ms: i64) -> Result<Vec<Device>, StoreError> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE updated_ms >= $1");
        self.db.query(&sql, &[P::I64(since_ms)], device_from)
    }

    /// Revokes a device; its readings are rejected from then on. Returns false if unknown.
    pub fn revoke_device(&mut self, id: &str) -> Result<bool, StoreError> {
        let n = self.db.exec(
            "UPDATE devices SET status = 'revoked', updated_ms = $2 WHERE id = $1",
            &[P::Text(id), P::I64(now_ms())],
        )?;
        Ok(n > 0)
    }

    /// Commits a batch in one transaction and returns the ids given to its security events.
    /// Readings already stored (same device and sequence) are left untouched, which makes
    /// redelivery idempotent even across processes.
    pub fn commit(&mut self, batch: &Batch) -> Result<Vec<i64>, StoreError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        self.db.begin()?;
        let result = self.write_batch(batch);
        match result {
            Ok(ids) => self.db.commit().map(|()| ids),
            Err(e) => {
                let _ = self.db.rollback();
                Err(e)
            }
        }
    }

    fn write_batch(&mut self, batch: &Batch) -> Result<Vec<i64>, StoreError> {
        self.db.insert_readings(&batch.readings)?;
        let mut ids = Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let id = self.db.query(
                "INSERT INTO security_events (at_ms, reason, device_id, source, detail) \
                 VALUES ($1, $2, $3, $4, $5) RETURNING id",
                &[
                    P::I64(e.at_ms),
                    P::Text(&e.reason),
                    P::OptText(e.device_id.as_deref()),
                    P::Text(&e.source),
                    P::Text(&e.detail),
                ],
                |r| r.i64(0),
            )?;
            ids.extend(id);
        }
        for u in &batch.devices {
            self.db.exec(
                "UPDATE devices SET last_seen_ms = $2, last_sequence = $3, \
                 battery = COALESCE($4, battery), link = COALESCE($5, link) WHERE id = $1",
                &[
                    P::Text(&u.device_id),
                    P::I64(u.last_seen_ms),
                    P::I64(u.last_sequence),
                    P::OptF64(u.battery),
                    P::OptF64(u.link),
                ],
            )?;
        }
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

    /// Readings of one device, newest sequence first.
    pub fn readings(
        &mut self,
        device_id: &str,
        q: &ReadingQuery,
    ) -> Result<Vec<StoredReading>, StoreError> {
        let limit = i64::from(q.limit.clamp(1, 1000));
        self.db.query(
            "SELECT device_id, sequence, issued_at, received_ms, measurements FROM readings \
             WHERE device_id = $1 AND issued_at * 1000 >= $2 AND issued_at * 1000 <= $3 AND sequence < $4 \
             ORDER BY sequence DESC LIMIT $5",
            &[
                P::Text(device_id),
                P::I64(q.from_ms.unwrap_or(i64::MIN / 2)),
                P::I64(q.to_ms.unwrap_or(i64::MAX / 2)),
                P::I64(q.before_sequence.unwrap_or(i64::MAX)),
                P::I64(limit),
            ],
            |r| {
                Ok(StoredReading {
                    device_id: r.text(0)?,
                    sequence: r.i64(1)?,
                    issued_at: r.i64(2)?,
                    received_ms: r.i64(3)?,
                    measurements: serde_json::from_str(&r.text(4)?)
                        .map_err(|e| StoreError::Backend(format!("stored measurements: {e}")))?,
                })
            },
        )
    }

    /// Security events, newest first; `before_id` is the pagination cursor.
    pub fn security_events(
        &mut self,
        limit: u32,
        before_id: Option<i64>,
    ) -> Result<Vec<SecurityEvent>, StoreError> {
        self.db.query(
            "SELECT id, at_ms, reason, device_id, source, detail FROM security_events \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
            &[
                P::I64(before_id.unwrap_or(i64::MAX)),
                P::I64(i64::from(limit.clamp(1, 1000))),
            ],
            |r| {
                Ok(SecurityEvent {
                    id: r.i64(0)?,
                    at_ms: r.i64(1)?,
                    reason: r.text(2)?,
                    device_id: r.opt_text(3)?,
                    source: r.text(4)?,
                    detail: r.text(5)?,
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
