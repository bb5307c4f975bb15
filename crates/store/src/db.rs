//! The two database drivers behind one small surface: run a statement, run a query and map its
//! rows, transactions. SQL is written once with `$n` placeholders (PostgreSQL's spelling);
//! SQLite gets them rewritten to its `?n`.

use msec_ledger::Hash;

use crate::log::RecordId;
use crate::DeviceUpdate;
use std::path::Path;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the database: {0}")]
    Open(String),
    // The kinds below carry a whole sentence for the person who asked (the CLI prints it as it
    // is; the API maps the kind to a status): no prefix of their own.
    #[error("{0}")]
    Conflict(String),
    #[error("database error: {0}")]
    Backend(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Erased(String),
    #[error("encryption keys: {0}")]
    Keys(String),
    #[error("stored data failed an integrity check: {0}")]
    Tampered(String),
    /// What the caller asked to store breaks a rule (a latitude of 999, a name with a newline).
    #[error("{0}")]
    Invalid(String),
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        match &e {
            rusqlite::Error::SqliteFailure(f, _)
                if f.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                StoreError::Conflict(format!("the database refused the change: {e}"))
            }
            _ => StoreError::Backend(e.to_string()),
        }
    }
}

impl From<postgres::Error> for StoreError {
    fn from(e: postgres::Error) -> Self {
        if e.code() == Some(&postgres::error::SqlState::UNIQUE_VIOLATION) {
            // The server's message only: its DETAIL would show the conflicting key's values
            // to whoever receives the error (an API client).
            let why = e
                .as_db_error()
                .map_or(e.to_string(), |d| d.message().to_string());
            return StoreError::Conflict(format!("the database refused the change: {why}"));
        }
        // The Display of a postgres::Error hides the server's message; the source carries it.
        match std::error::Error::source(&e) {
            Some(src) => StoreError::Backend(format!("{e}: {src}")),
            None => StoreError::Backend(e.to_string()),
        }
    }
}

/// A statement parameter, convertible to either driver's type.
#[derive(Debug)]
pub(crate) enum P<'a> {
    I64(i64),
    OptI64(Option<i64>),
    Text(&'a str),
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
}

impl rusqlite::ToSql for P<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        match self {
            P::I64(v) => v.to_sql(),
            P::OptI64(v) => v.to_sql(),
            P::Text(v) => v.to_sql(),
            P::OptText(v) => v.to_sql(),
            P::Bytes(v) => v.to_sql(),
        }
    }
}

impl postgres::types::ToSql for P<'_> {
    fn to_sql(
        &self,
        ty: &postgres::types::Type,
        out: &mut postgres::types::private::BytesMut,
    ) -> Result<postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        match self {
            P::I64(v) => v.to_sql(ty, out),
            P::OptI64(v) => v.to_sql(ty, out),
            P::Text(v) => v.to_sql(ty, out),
            P::OptText(v) => v.to_sql(ty, out),
            P::Bytes(v) => v.to_sql(ty, out),
        }
    }
    // Every statement in this crate binds parameters to columns of the matching type (BIGINT,
    // DOUBLE PRECISION, TEXT, BYTEA), so the server-inferred type is always the right one.
    fn accepts(_: &postgres::types::Type) -> bool {
        true
    }
    postgres::types::to_sql_checked!();
}

/// Typed access to a result row, whichever driver produced it.
pub(crate) trait Row {
    fn i64(&self, i: usize) -> Result<i64, StoreError>;
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError>;
    fn opt_f64(&self, i: usize) -> Result<Option<f64>, StoreError>;
    fn text(&self, i: usize) -> Result<String, StoreError>;
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError>;
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError>;
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError>;
    // Borrowed forms, for scans that only hash what they read (an audit touches every record).
    fn str_ref(&self, i: usize) -> Result<&str, StoreError>;
    fn opt_str_ref(&self, i: usize) -> Result<Option<&str>, StoreError>;
    fn bytes_ref(&self, i: usize) -> Result<&[u8], StoreError>;
}

fn column_type(i: usize, e: rusqlite::types::FromSqlError) -> StoreError {
    StoreError::Backend(format!("column {i}: {e}"))
}

impl Row for rusqlite::Row<'_> {
    fn i64(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_f64(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.get(i)?)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.get(i)?)
    }
    fn str_ref(&self, i: usize) -> Result<&str, StoreError> {
        self.get_ref(i)?.as_str().map_err(|e| column_type(i, e))
    }
    fn opt_str_ref(&self, i: usize) -> Result<Option<&str>, StoreError> {
        self.get_ref(i)?
            .as_str_or_null()
            .map_err(|e| column_type(i, e))
    }
    fn bytes_ref(&self, i: usize) -> Result<&[u8], StoreError> {
        self.get_ref(i)?.as_blob().map_err(|e| column_type(i, e))
    }
}

impl Row for postgres::Row {
    fn i64(&self, i: usize) -> Result<i64, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_i64(&self, i: usize) -> Result<Option<i64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_f64(&self, i: usize) -> Result<Option<f64>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<String, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_text(&self, i: usize) -> Result<Option<String>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn bytes(&self, i: usize) -> Result<Vec<u8>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_bytes(&self, i: usize) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn str_ref(&self, i: usize) -> Result<&str, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn opt_str_ref(&self, i: usize) -> Result<Option<&str>, StoreError> {
        Ok(self.try_get(i)?)
    }
    fn bytes_ref(&self, i: usize) -> Result<&[u8], StoreError> {
        Ok(self.try_get(i)?)
    }
}

/// How long an SQLite connection waits for another's write lock before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// What [`Db::checkpoint_wal`] does (SQLite's checkpoint modes), and how long it may hold
/// commits off waiting for readers.
pub(crate) enum Checkpoint {
    Passive,
    Restart(Duration),
    Truncate(Duration),
}

pub(crate) enum Db {
    Sqlite(rusqlite::Connection),
    Postgres(Box<Pg>),
}

/// A PostgreSQL connection that prepares each statement once. Unprepared, every statement
/// costs two round trips (parse, then execute), and a commit runs several of them.
pub(crate) struct Pg {
    client: postgres::Client,
    statements: std::collections::HashMap<String, postgres::Statement>,
    /// To connect again after the server went away (a restart, a failover): a connection,
    /// once closed, stays closed.
    url: String,
    /// Between BEGIN and COMMIT/ROLLBACK a new connection must not be made: what followed would
    /// run outside the transaction.
    in_transaction: bool,
    /// An error that did not come from the server (a reset, a timeout) left the connection in
    /// doubt; the driver does not always mark it closed.
    broken: bool,
}

impl Pg {
    /// Bounds the cache: some SQL is assembled at run time.
    const MAX_STATEMENTS: usize = 256;

    fn connect(url: &str) -> Result<postgres::Client, StoreError> {
        let failed = |e: postgres::Error| {
            let detail = std::error::Error::source(&e)
                .map(|s| format!(": {s}"))
                .unwrap_or_default();
            StoreError::Open(format!("PostgreSQL at {}: {e}{detail}", redact(url)))
        };
        let mut config: postgres::Config = url.parse().map_err(failed)?;
        // A server that vanishes without a word (a partition, a dead host) must not hold a call
        // for the kernel's quarter of an hour: the writer could never report the outage, nor
        // /healthz answer. The URL's own settings win.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(Duration::from_secs(30));
        }
        if config.get_keepalives_idle() == Duration::from_secs(2 * 3600) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        config.connect(postgres::NoTls).map_err(failed)
    }

    /// Connects again if the connection was closed or broken, outside a transaction.
    fn ensure_connected(&mut self) -> Result<(), StoreError> {
        if (self.broken || self.client.is_closed()) && !self.in_transaction {
            self.client = Pg::connect(&self.url)?;
            self.statements.clear();
            self.broken = false;
            tracing::info!("connected to PostgreSQL again");
        }
        Ok(())
    }

    fn begin(&mut self) -> Result<(), StoreError> {
        self.ensure_connected()?;
        // Named, whatever the server's default: the log's append reads its last index after
        // taking its lock, which under a snapshot taken earlier could be stale.
        let result = self
            .client
            .batch_execute("BEGIN ISOLATION LEVEL READ COMMITTED");
        self.checked(result)?;
        self.in_transaction = true;
        Ok(())
    }

    /// COMMIT or ROLLBACK: either way the transaction is over, even when the statement fails.
    fn end(&mut self, sql: &str) -> Result<(), StoreError> {
        self.in_transaction = false;
        let result = self.client.batch_execute(sql);
        self.checked(result)
    }

    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, StoreError> {
        self.ensure_connected()?;
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let prepared = self.client.prepare(sql);
        let s = self.checked(prepared)?;
        if self.statements.len() >= Self::MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<u64, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.client.execute(&statement, params);
        self.checked(result)
    }

    fn query(
        &mut self,
        sql: &str,
        params: &[&(dyn postgres::types::ToSql + Sync)],
    ) -> Result<Vec<postgres::Row>, StoreError> {
        let statement = self.statement(sql)?;
        let result = self.client.query(&statement, params);
        self.checked(result)
    }

    /// A prepared statement outlives schema changes made by other connections (a newer msec
    /// migrating); after any error the next attempt prepares afresh. An error the server did
    /// not send leaves the connection in doubt: the next use outside a transaction connects
    /// again.
    fn checked<T>(&mut self, result: Result<T, postgres::Error>) -> Result<T, StoreError> {
        if let Err(e) = &result {
            self.statements.clear();
            // The server's own farewell (terminating the session, shutting down: FATAL, class
            // 57P or 08) can come before the driver marks the connection closed.
            let ended = e.as_db_error().is_none_or(|d| {
                matches!(d.severity(), "FATAL" | "PANIC")
                    || d.code().code().starts_with("57P")
                    || d.code().code().starts_with("08")
            });
            if ended {
                self.broken = true;
            }
        }
        Ok(result?)
    }

    fn batch_execute(&mut self, sql: &str) -> Result<(), StoreError> {
        self.ensure_connected()?;
        let result = self.client.batch_execute(sql);
        self.checked(result)
    }
}

/// The file of a SQLite database URL (`sqlite:PATH`, `sqlite://PATH` or a bare path); `None`
/// for PostgreSQL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return None;
    }
    Some(
        url.strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .unwrap_or(url),
    )
}

fn sqlite_sql(sql: &str) -> String {
    sql.replace('$', "?")
}

impl Db {
    /// `postgres://…` or `postgresql://…`, or a SQLite path, optionally prefixed `sqlite:` or
    /// `sqlite://`. Any other scheme (`mysql://…`, `SQLITE:…`, `file:…`) is refused rather than taken for a
    /// file name, and so are an empty path and `:memory:`, which would keep no promise of
    /// durability.
    pub(crate) fn open(url: &str) -> Result<Db, StoreError> {
        let Some(path) = sqlite_path(url) else {
            return Db::postgres(url);
        };
        let scheme = path.split_once(':').map(|(s, _)| s).filter(|s| {
            s.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        });
        if let Some(scheme) = scheme {
            return Err(StoreError::Open(format!(
                "unsupported database URL scheme {scheme:?}: use postgres://… or sqlite:PATH"
            )));
        }
        if path.is_empty() || path.starts_with(":memory:") {
            return Err(StoreError::Open(
                "an SQLite database needs a file path (sqlite:PATH); in memory, nothing would be durable".into(),
            ));
        }
        Db::sqlite(Path::new(path))
    }

    pub(crate) fn sqlite(path: &Path) -> Result<Db, StoreError> {
        // The database holds password and token hashes, device owners and the addresses in
        // security events: only msec's own user may read what msec creates, like the key files
        // beside it. What exists already (`/tmp`, a database an operator shared with a group)
        // keeps its permissions.
        if let Some(dir) = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && !d.exists())
        {
            msec_vault::create_private_dir(dir)
                .map_err(|e| StoreError::Open(format!("cannot create {}: {e}", dir.display())))?;
        }
        let created = !path.exists();
        let conn = rusqlite::Connection::open(path)
            .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        // WAL lets the API read while ingest writes; synchronous=FULL makes a commit survive
        // power loss, which is what "acknowledged only after a durable commit" promises.
        // secure_delete: content a change frees (an erased subject's wrapped data key) is
        // overwritten, not left in the page's free space.
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON; \
             PRAGMA secure_delete = ON;",
        )
        .and_then(|()| conn.busy_timeout(SQLITE_BUSY_TIMEOUT))
        .map_err(|e| StoreError::Open(format!("{}: {e}", path.display())))?;
        // SQLite creates its log files with the database file's mode.
        #[cfg(unix)]
        for suffix in ["", "-wal", "-shm"].into_iter().filter(|_| created) {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
            match std::fs::set_permissions(&file, private) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(StoreError::Open(format!(
                        "cannot make {} private: {e}",
                        Path::new(&file).display()
                    )))
                }
            }
        }
        Ok(Db::Sqlite(conn))
    }

    pub(crate) fn postgres(url: &str) -> Result<Db, StoreError> {
        Ok(Db::Postgres(Box::new(Pg {
            client: Pg::connect(url)?,
            statements: Default::default(),
            url: url.to_string(),
            in_transaction: false,
            broken: false,
        })))
    }

    /// SQLite: stops this connection's commits from copying the write-ahead log into the
    /// database file (see [`crate::WalCheckpointer`]). Nothing to do on PostgreSQL.
    pub(crate) fn leave_checkpoints_to_others(&mut self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch("PRAGMA wal_autocheckpoint = 0")?),
            Db::Postgres(_) => Ok(()),
        }
    }

    /// SQLite: copies the write-ahead log into the database file; returns the log's size in
    /// bytes, or `None` when readers of older snapshots kept it from finishing. A PASSIVE
    /// checkpoint copies what it can without waiting for or blocking anyone, but never lets the
    /// log start over while commits keep arriving. A RESTART one holds off commits until it has
    /// copied the rest, so the next commit writes the log from its start again, reusing the
    /// file; a TRUNCATE one also empties the file. Both wait at most `wait` for readers (and
    /// hold commits off that long), then this connection waits as long as before again.
    pub(crate) fn checkpoint_wal(&mut self, mode: Checkpoint) -> Result<Option<u64>, StoreError> {
        let Db::Sqlite(c) = self else {
            return Ok(Some(0));
        };
        let (sql, wait) = match mode {
            Checkpoint::Passive => ("PRAGMA wal_checkpoint(PASSIVE)", None),
            Checkpoint::Restart(wait) => ("PRAGMA wal_checkpoint(RESTART)", Some(wait)),
            Checkpoint::Truncate(wait) => ("PRAGMA wal_checkpoint(TRUNCATE)", Some(wait)),
        };
        if let Some(wait) = wait {
            c.busy_timeout(wait)?;
        }
        let page: u64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        // Columns: busy (1 if it gave up waiting), pages in the log, pages copied.
        let result = c.query_row(sql, [], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)));
        if wait.is_some() {
            c.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
        }
        let (busy, pages) = result?;
        Ok((busy == 0).then(|| page * pages.max(0) as u64))
    }

    pub(crate) fn engine(&self) -> &'static str {
        match self {
            Db::Sqlite(_) => "sqlite",
            Db::Postgres(_) => "postgres",
        }
    }

    /// Rewrites the few type names that differ between the engines.
    pub(crate) fn dialect(&self, sql: &str) -> String {
        match self {
            Db::Sqlite(_) => sql
                .replace("{BLOB}", "BLOB")
                .replace("{SERIAL}", "INTEGER PRIMARY KEY AUTOINCREMENT")
                // A 64-bit key that SQLite makes the table's row id.
                .replace("{INDEX}", "INTEGER"),
            Db::Postgres(_) => sql
                .replace("{BLOB}", "BYTEA")
                .replace("{SERIAL}", "BIGSERIAL PRIMARY KEY")
                .replace("{INDEX}", "BIGINT"),
        }
    }

    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Db::Postgres(c) => c.batch_execute(sql),
        }
    }

    pub(crate) fn begin(&mut self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch("BEGIN IMMEDIATE")?),
            Db::Postgres(c) => c.begin(),
        }
    }

    pub(crate) fn commit(&mut self) -> Result<(), StoreError> {
        let result = match self {
            Db::Sqlite(c) => c.execute_batch("COMMIT").map_err(StoreError::from),
            Db::Postgres(c) => c.end("COMMIT"),
        };
        if result.is_err() {
            // A COMMIT that failed (SQLite busy, say) may leave the transaction open, and every
            // later BEGIN on this connection would fail on it.
            let _ = self.rollback();
        }
        result
    }

    pub(crate) fn rollback(&mut self) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => Ok(c.execute_batch("ROLLBACK")?),
            Db::Postgres(c) => c.end("ROLLBACK"),
        }
    }

    pub(crate) fn exec(&mut self, sql: &str, params: &[P]) -> Result<u64, StoreError> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
                Ok(stmt.execute(rusqlite::params_from_iter(params.iter()))? as u64)
            }
            Db::Postgres(c) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                Ok(c.execute(sql, &refs)?)
            }
        }
    }

    pub(crate) fn query<T>(
        &mut self,
        sql: &str,
        params: &[P],
        map: impl Fn(&dyn Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, StoreError> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(&sqlite_sql(sql))?;
                let mut rows = stmt.query(rusqlite::params_from_iter(params.iter()))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    out.push(map(row)?);
                }
                Ok(out)
            }
            Db::Postgres(c) => {
                let refs: Vec<&(dyn postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| p as &(dyn postgres::types::ToSql + Sync))
                    .collect();
                c.query(sql, &refs)?.iter().map(|r| map(r)).collect()
            }
        }
    }

    /// Inserts sealed readings, skipping any (device, sequence) already stored, and returns
    /// the positions (in `readings`) of those actually inserted. The k-th one inserted gets log
    /// index `first_leaf + k`, where the caller appends its leaf. PostgreSQL gets one round trip
    /// per batch (UNNEST over arrays) because per-row round trips would cap ingest at the network
    /// latency; SQLite is in-process, so a cached prepared statement is fastest.
    pub(crate) fn insert_readings(
        &mut self,
        readings: &[SealedReading],
        first_leaf: i64,
    ) -> Result<Vec<usize>, StoreError> {
        if readings.is_empty() {
            return Ok(Vec::new());
        }
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO readings (device_id, sequence, issued_at, received_ms, digest, sealed, leaf) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                )?;
                let mut inserted = Vec::with_capacity(readings.len());
                for (i, r) in readings.iter().enumerate() {
                    let n = stmt.execute(rusqlite::params![
                        r.device_id,
                        r.sequence,
                        r.issued_at,
                        r.received_ms,
                        &r.digest[..],
                        r.sealed,
                        first_leaf + inserted.len() as i64,
                    ])?;
                    if n == 1 {
                        inserted.push(i);
                    }
                }
                Ok(inserted)
            }
            Db::Postgres(c) => {
                let ids: Vec<&str> = readings.iter().map(|r| r.device_id.as_str()).collect();
                let seqs: Vec<i64> = readings.iter().map(|r| r.sequence).collect();
                let issued: Vec<i64> = readings.iter().map(|r| r.issued_at).collect();
                let received: Vec<i64> = readings.iter().map(|r| r.received_ms).collect();
                let digests: Vec<&[u8]> = readings.iter().map(|r| &r.digest[..]).collect();
                let sealed: Vec<&[u8]> = readings.iter().map(|r| r.sealed.as_slice()).collect();
                // Numbered as if every one is new, as they are unless a batch is committed again
                // (its COMMIT's answer was lost) or another process stored some of them.
                let leaves: Vec<i64> = (0..readings.len() as i64).map(|i| first_leaf + i).collect();
                let rows = c.query(
                    "INSERT INTO readings (device_id, sequence, issued_at, received_ms, digest, sealed, leaf) \
                     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::int8[], $5::bytea[], $6::bytea[], $7::int8[]) \
                     ON CONFLICT DO NOTHING RETURNING leaf",
                    &[&ids, &seqs, &issued, &received, &digests, &sealed, &leaves],
                )?;
                // Each row inserted says which position it came from, also when a batch holds
                // one (device, sequence) twice and only the first is stored.
                let mut inserted = Vec::with_capacity(rows.len());
                for row in rows {
                    inserted.push((row.try_get::<_, i64>(0)? - first_leaf) as usize);
                }
                inserted.sort_unstable();
                if inserted.len() < readings.len() {
                    // Some were skipped: those inserted after the first gap are renumbered.
                    let ids: Vec<&str> = inserted.iter().map(|&i| ids[i]).collect();
                    let seqs: Vec<i64> = inserted.iter().map(|&i| seqs[i]).collect();
                    let leaves: Vec<i64> =
                        (0..inserted.len() as i64).map(|k| first_leaf + k).collect();
                    c.execute(
                        "UPDATE readings AS r SET leaf = u.leaf \
                         FROM UNNEST($1::text[], $2::int8[], $3::int8[]) AS u(id, seq, leaf) \
                         WHERE r.device_id = u.id AND r.sequence = u.seq AND r.leaf <> u.leaf",
                        &[&ids, &seqs, &leaves],
                    )?;
                }
                Ok(inserted)
            }
        }
    }

    /// Records what a batch of accepted readings taught about their devices. One statement on
    /// PostgreSQL: a batch touches up to every device of a city, and a round trip per device
    /// would put their count into every commit's latency.
    pub(crate) fn update_devices(&mut self, updates: &[DeviceUpdate]) -> Result<(), StoreError> {
        // Active devices only: a reading that raced its device's revocation or its owner's
        // erasure (which clears these) must not write them back.
        const SQLITE: &str = "UPDATE devices SET last_seen_ms = ?2, last_sequence = ?3, \
             battery = COALESCE(?4, battery), link = COALESCE(?5, link) \
             WHERE id = ?1 AND status = 'active'";
        if updates.is_empty() {
            return Ok(());
        }
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(SQLITE)?;
                for u in updates {
                    stmt.execute(rusqlite::params![
                        u.device_id,
                        u.last_seen_ms,
                        u.last_sequence,
                        u.battery,
                        u.link
                    ])?;
                }
                Ok(())
            }
            Db::Postgres(c) => {
                let ids: Vec<&str> = updates.iter().map(|u| u.device_id.as_str()).collect();
                let seen: Vec<i64> = updates.iter().map(|u| u.last_seen_ms).collect();
                let seqs: Vec<i64> = updates.iter().map(|u| u.last_sequence).collect();
                let battery: Vec<Option<f64>> = updates.iter().map(|u| u.battery).collect();
                let link: Vec<Option<f64>> = updates.iter().map(|u| u.link).collect();
                c.execute(
                    "UPDATE devices AS d SET last_seen_ms = u.seen, last_sequence = u.seq, \
                     battery = COALESCE(u.battery, d.battery), link = COALESCE(u.link, d.link) \
                     FROM UNNEST($1::text[], $2::int8[], $3::int8[], $4::float8[], $5::float8[]) \
                     AS u(id, seen, seq, battery, link) WHERE d.id = u.id AND d.status = 'active'",
                    &[&ids, &seen, &seqs, &battery, &link],
                )?;
                Ok(())
            }
        }
    }

    /// Inserts log leaves at consecutive indices from `first`.
    pub(crate) fn insert_leaves(
        &mut self,
        first: i64,
        leaves: &[(RecordId, Hash)],
    ) -> Result<(), StoreError> {
        match self {
            Db::Sqlite(c) => {
                let mut stmt = c.prepare_cached(
                    "INSERT INTO log_leaves (idx, kind, ref, hash) VALUES (?1, ?2, ?3, ?4)",
                )?;
                for (i, (id, hash)) in leaves.iter().enumerate() {
                    stmt.execute(rusqlite::params![
                        first + i as i64,
                        id.kind.name(),
                        id.reference,
                        &hash[..]
                    ])?;
                }
                Ok(())
            }
            Db::Postgres(c) => {
                let idx: Vec<i64> = (0..leaves.len() as i64).map(|i| first + i).collect();
                let kinds: Vec<&str> = leaves.iter().map(|(id, _)| id.kind.name()).collect();
                let refs: Vec<&str> = leaves.iter().map(|(id, _)| id.reference.as_str()).collect();
                let hashes: Vec<&[u8]> = leaves.iter().map(|(_, h)| &h[..]).collect();
                c.execute(
                    "INSERT INTO log_leaves (idx, kind, ref, hash) \
                     SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::bytea[])",
                    &[&idx, &kinds, &refs, &hashes],
                )?;
                Ok(())
            }
        }
    }
}

/// A reading as inserted: metadata in clear, envelope and values sealed.
pub(crate) struct SealedReading {
    pub device_id: String,
    pub sequence: i64,
    pub issued_at: i64,
    pub received_ms: i64,
    pub digest: [u8; 32],
    pub sealed: Vec<u8>,
}

/// A database URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    redact_userinfo(&redact_password_params(url))
}

/// Hides the value of every `password=` query parameter (which the PostgreSQL client accepts
/// too), wherever it stands, before anything else looks for an '@'.
fn redact_password_params(url: &str) -> String {
    let mut out = String::with_capacity(url.len());
    let mut rest = url;
    while let Some(i) = rest.find(['?', '&']) {
        out.push_str(&rest[..=i]);
        rest = &rest[i + 1..];
        let is_password = rest
            .get(..9)
            .is_some_and(|k| k.eq_ignore_ascii_case("password="));
        if is_password {
            out.push_str(&rest[..9]);
            out.push_str("***");
            rest = &rest[rest.find('&').unwrap_or(rest.len())..];
        }
    }
    out.push_str(rest);
    out
}

fn redact_userinfo(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.find(':') {
                Some(colon) => format!(
                    "{}{}:***{}",
                    &url[..scheme + 3],
                    &creds[..colon],
                    &url[at..]
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_passwords_only() {
        assert_eq!(
            super::redact("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(super::redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(
            super::redact("postgres://u@h/db?sslmode=disable&password=secret"),
            "postgres://u@h/db?sslmode=disable&password=***"
        );
        assert_eq!(
            super::redact("postgres://u:a@b@h/db?application_name=msec"),
            "postgres://u:***@h/db?application_name=msec"
        );
        assert_eq!(
            super::redact("postgres://u:pa?ss@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(
            super::redact("postgres://u@h/db?password=se@cret&sslmode=disable"),
            "postgres://u@h/db?password=***&sslmode=disable"
        );
        assert_eq!(super::redact("/tmp/x.db"), "/tmp/x.db");
    }
}
