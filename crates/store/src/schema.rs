//! Versioned schema migrations, applied in order on open. A migration, once released, is never
//! edited: new needs get a new version.

use crate::db::{Db, P};
use crate::StoreError;

/// (version, SQL). The SQL is written to be valid on SQLite and PostgreSQL alike;
/// `{BLOB}`, `{SERIAL}` and `{INDEX}` are the only engine-specific spellings.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        location_lat DOUBLE PRECISION,
        location_lon DOUBLE PRECISION,
        location_label TEXT,
        public_key {BLOB} NOT NULL UNIQUE,
        key_id {BLOB} NOT NULL UNIQUE,
        status TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        last_seen_ms BIGINT,
        last_sequence BIGINT,
        battery DOUBLE PRECISION,
        link DOUBLE PRECISION
    );
    CREATE INDEX devices_updated ON devices (updated_ms);
    CREATE TABLE readings (
        device_id TEXT NOT NULL REFERENCES devices (id),
        sequence BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        envelope {BLOB} NOT NULL,
        digest {BLOB} NOT NULL,
        measurements TEXT NOT NULL,
        PRIMARY KEY (device_id, sequence)
    );
    CREATE TABLE security_events (
        id {SERIAL},
        at_ms BIGINT NOT NULL,
        reason TEXT NOT NULL,
        device_id TEXT,
        source TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX security_events_reason ON security_events (reason);",
    ),
    (
        2,
        "CREATE TABLE users (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        roles TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        disabled_ms BIGINT
    );
    CREATE TABLE api_tokens (
        id TEXT PRIMARY KEY,
        principal TEXT NOT NULL,
        scopes TEXT NOT NULL,
        secret_hash {BLOB} NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    );",
    ),
    (
        // Encryption at rest and the transparency log. Devices and readings are recreated with
        // their personal fields sealed; `migrate` refuses to run this over stored plaintext.
        3,
        "DROP TABLE readings;
    DROP TABLE devices;
    CREATE TABLE devices (
        id TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        owner TEXT NOT NULL,
        kind TEXT NOT NULL,
        profile {BLOB} NOT NULL,
        public_key {BLOB} NOT NULL UNIQUE,
        key_id {BLOB} NOT NULL UNIQUE,
        status TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        updated_ms BIGINT NOT NULL,
        last_seen_ms BIGINT,
        last_sequence BIGINT,
        battery DOUBLE PRECISION,
        link DOUBLE PRECISION
    );
    CREATE INDEX devices_updated ON devices (updated_ms);
    CREATE INDEX devices_owner ON devices (owner);
    CREATE TABLE readings (
        device_id TEXT NOT NULL REFERENCES devices (id),
        sequence BIGINT NOT NULL,
        issued_at BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        digest {BLOB} NOT NULL,
        sealed {BLOB} NOT NULL,
        PRIMARY KEY (device_id, sequence)
    );
    CREATE TABLE subject_keys (
        subject TEXT PRIMARY KEY,
        kek_id TEXT,
        wrapped {BLOB},
        created_ms BIGINT NOT NULL,
        erased_ms BIGINT
    );
    CREATE TABLE vault_state (id BIGINT PRIMARY KEY, epoch BIGINT NOT NULL);
    INSERT INTO vault_state (id, epoch) VALUES (1, 0);
    CREATE TABLE admin_actions (
        id {SERIAL},
        at_ms BIGINT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE TABLE consents (
        id {SERIAL},
        subject TEXT NOT NULL,
        grantee TEXT NOT NULL,
        purpose TEXT NOT NULL,
        given_ms BIGINT NOT NULL,
        withdrawn_ms BIGINT
    );
    CREATE INDEX consents_subject ON consents (subject);
    CREATE TABLE log_leaves (
        idx BIGINT PRIMARY KEY,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        hash {BLOB} NOT NULL,
        UNIQUE (kind, ref)
    );
    CREATE TABLE checkpoints (
        size BIGINT PRIMARY KEY,
        at_ms BIGINT NOT NULL,
        note TEXT NOT NULL
    );
    CREATE TABLE cosignatures (
        size BIGINT NOT NULL,
        witness TEXT NOT NULL,
        line TEXT NOT NULL,
        at_ms BIGINT NOT NULL,
        PRIMARY KEY (size, witness)
    );",
    ),
    (
        // Access control: login sessions (secrets hashed), stored grants, and a version that
        // every change of who-may-do-what bumps, so running processes reload at once.
        4,
        "CREATE TABLE sessions (
        id_hash {BLOB} PRIMARY KEY,
        principal TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        expires_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    );
    CREATE TABLE grants (
        id {SERIAL},
        effect TEXT NOT NULL,
        subject TEXT NOT NULL,
        actions TEXT NOT NULL,
        resource TEXT NOT NULL,
        valid_from_ms BIGINT,
        valid_until_ms BIGINT,
        purpose TEXT,
        created_by TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        revoked_ms BIGINT
    );
    CREATE TABLE access_state (id BIGINT PRIMARY KEY, version BIGINT NOT NULL);
    INSERT INTO access_state (id, version) VALUES (1, 0);",
    ),
    (
        // The tenant an event concerns, so each tenant's auditors read their own events only
        // (events stored before it have none: only platform-wide auditors see them); and a
        // nonce per event, so that a batch committed again after a COMMIT whose answer was lost
        // stores its events once; and the KEK the last rotation or re-wrap put data keys under,
        // so that a process still on an older one makes no new keys under it.
        5,
        "ALTER TABLE security_events ADD COLUMN tenant TEXT;
    CREATE INDEX security_events_tenant ON security_events (tenant, id);
    ALTER TABLE security_events ADD COLUMN nonce {BLOB};
    CREATE UNIQUE INDEX security_events_nonce ON security_events (nonce);
    ALTER TABLE vault_state ADD COLUMN kek_id TEXT;",
    ),
    (
        // A reading's log index moves into its own row, and the log's unique (kind, ref) index
        // leaves readings out. A reading's ref is DEVICE/SEQUENCE: every commit inserted into
        // as many far-apart pages of that index as it had devices, 43 % of SQLite's log
        // volume at 5,000 readings/s from 100 devices, now written once with the reading.
        // Readings stay unique by their primary key. On SQLite the index becomes the table's
        // own key ({INDEX}), so the log is one B-tree instead of two.
        6,
        "ALTER TABLE readings ADD COLUMN leaf BIGINT;
    UPDATE readings SET leaf = (SELECT l.idx FROM log_leaves l
        WHERE l.kind = 'reading' AND l.ref = readings.device_id || '/' || readings.sequence);
    CREATE TABLE log_leaves_6 (
        idx {INDEX} PRIMARY KEY,
        kind TEXT NOT NULL,
        ref TEXT NOT NULL,
        hash {BLOB} NOT NULL
    );
    INSERT INTO log_leaves_6 (idx, kind, ref, hash) SELECT idx, kind, ref, hash FROM log_leaves;
    DROP TABLE log_leaves;
    ALTER TABLE log_leaves_6 RENAME TO log_leaves;
    CREATE UNIQUE INDEX log_leaves_record ON log_leaves (kind, ref) WHERE kind <> 'reading';",
    ),
];

pub(crate) fn current_version(db: &mut Db) -> Result<i64, StoreError> {
    let v = db.query(
        "SELECT COALESCE(MAX(version), 0) FROM msec_schema",
        &[],
        |r| r.i64(0),
    )?;
    Ok(v.into_iter().next().unwrap_or(0))
}

/// Takes PostgreSQL's migration lock for the current transaction (SQLite's BEGIN IMMEDIATE
/// already serialises writers).
fn lock(db: &mut Db) -> Result<(), StoreError> {
    if db.engine() == "postgres" {
        db.query("SELECT pg_advisory_xact_lock(726374)", &[], |_| Ok(()))?;
    }
    Ok(())
}

pub(crate) fn migrate(db: &mut Db) -> Result<(), StoreError> {
    let newest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    // Up to date, the usual start: nothing to write, so no lock to wait for (a process that
    // only reads must not queue behind writers). Fails, and goes on below, on a new database.
    if current_version(db).is_ok_and(|v| v == newest) {
        return Ok(());
    }
    // Under the lock too: two PostgreSQL sessions creating the same table at once can both
    // pass IF NOT EXISTS, and one then fails.
    db.begin()?;
    let created = lock(db).and_then(|()| {
        db.batch("CREATE TABLE IF NOT EXISTS msec_schema (version BIGINT PRIMARY KEY, applied_ms BIGINT NOT NULL)")
    });
    match created {
        Ok(_) => db.commit()?,
        Err(e) => {
            let _ = db.rollback();
            return Err(e);
        }
    }
    let current = current_version(db)?;
    if current > newest {
        return Err(StoreError::Backend(format!(
            "the database has schema version {current}, newer than this msec understands ({newest}); upgrade msec"
        )));
    }
    if (1..3).contains(&current) {
        let stored = db.query(
            "SELECT (SELECT COUNT(*) FROM devices) + (SELECT COUNT(*) FROM readings)",
            &[],
            |r| r.i64(0),
        )?;
        if stored.first().copied().unwrap_or(0) > 0 {
            return Err(StoreError::Backend(format!(
                "this database (schema version {current}) holds devices and readings stored before \
                 msec encrypted data at rest; this version cannot re-encrypt them in place. Keep the \
                 old data directory for reference and start msec with a new --data-dir or database"
            )));
        }
    }
    for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > current) {
        let sql = db.dialect(sql);
        db.begin()?;
        // Another process starting at the same moment may have applied it meanwhile: checked
        // again under a lock (SQLite's BEGIN IMMEDIATE already is one), or both would run it
        // and one fail to start.
        let done = lock(db).and_then(|()| current_version(db));
        match done {
            Ok(now) if now >= *version => {
                db.commit()?;
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                let _ = db.rollback();
                return Err(e);
            }
        }
        let applied = db.batch(&sql).and_then(|_| {
            db.exec(
                "INSERT INTO msec_schema (version, applied_ms) VALUES ($1, $2)",
                &[P::I64(*version), P::I64(crate::now_ms())],
            )
        });
        match applied {
            Ok(_) => db.commit()?,
            Err(e) => {
                let _ = db.rollback();
                return Err(StoreError::Backend(format!(
                    "migration {version} failed: {e}"
                )));
            }
        }
    }
    Ok(())
}
