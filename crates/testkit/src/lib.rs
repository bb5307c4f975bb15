//! Test support shared by msec's crates: where the real services are, fresh isolated
//! PostgreSQL schemas, free loopback ports, unique names, and a mutator for fuzzing parsers.
//!
//! Tests against real services read their location from the environment. Without it they skip
//! with a loud line on stderr; with `MSEC_REQUIRE_SERVICES=1` (as CI sets) a missing service is a
//! failure, so nothing is silently untested. This crate is for tests only and never ships.

pub mod mutation;

/// A random suffix for names that must not collide between concurrent tests.
pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).expect("OS random source");
    format!("{prefix}{}", hex::encode(b))
}

fn required() -> bool {
    std::env::var("MSEC_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Called when a service is absent: panics under `MSEC_REQUIRE_SERVICES=1`, otherwise prints a
/// loud line saying what was not tested.
pub fn missing(what: &str, how: &str) {
    if required() {
        panic!("{what} is required (MSEC_REQUIRE_SERVICES=1) but unavailable: {how}");
    }
    eprintln!("\n!!!! SKIPPED: {what} was NOT tested: {how}\n");
}

/// Where tests look for services unless the environment says otherwise: the local defaults
/// of a developer machine and of CI.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const DEFAULT_MQTT_URL: &str = "mqtt://127.0.0.1:1883";

/// A PostgreSQL URL whose search_path points at a fresh, empty schema, or None (after
/// reporting) when PostgreSQL (`MSEC_TEST_DATABASE_URL`, default [`DEFAULT_DATABASE_URL`]) is
/// unreachable.
pub fn postgres_url() -> Option<String> {
    let base =
        std::env::var("MSEC_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_DATABASE_URL.into());
    let schema = unique("msec_test_");
    // The blocking driver may not run on an async worker thread: use a plain thread.
    let created = std::thread::scope(|s| {
        s.spawn(|| {
            let mut client = postgres::Client::connect(&base, postgres::NoTls)?;
            client.batch_execute(&format!("CREATE SCHEMA {schema}"))
        })
        .join()
        .expect("schema thread")
    });
    if let Err(e) = created {
        missing(
            "PostgreSQL",
            &format!("cannot create a schema at {base} (set MSEC_TEST_DATABASE_URL): {e}"),
        );
        return None;
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    Some(format!("{base}{sep}options=-csearch_path%3D{schema}"))
}

/// The external MQTT broker for tests (Mosquitto; `MSEC_TEST_MQTT_URL`, default
/// [`DEFAULT_MQTT_URL`]), or None after reporting.
pub fn mqtt_url() -> Option<String> {
    let url = std::env::var("MSEC_TEST_MQTT_URL").unwrap_or_else(|_| DEFAULT_MQTT_URL.into());
    let addr = url.trim_start_matches("mqtt://").to_string();
    if std::net::TcpStream::connect(&addr).is_err() {
        missing(
            "an external MQTT broker (Mosquitto)",
            &format!("nothing listens at {addr} (set MSEC_TEST_MQTT_URL)"),
        );
        return None;
    }
    Some(url)
}

/// A loopback port that was free a moment ago, from below the kernel's ephemeral range so that
/// no other test's socket is handed it before the server meant for it binds it.
pub fn free_port() -> u16 {
    msec_broker::free_port(std::net::Ipv4Addr::LOCALHOST.into()).expect("a free loopback port")
}

/// One in-memory key ring per test process, so every store a test opens on the same database
/// can decrypt what the others wrote.
pub fn test_keys() -> std::sync::Arc<msec_vault::MemoryKeys> {
    static KEYS: std::sync::OnceLock<std::sync::Arc<msec_vault::MemoryKeys>> =
        std::sync::OnceLock::new();
    KEYS.get_or_init(|| std::sync::Arc::new(msec_vault::MemoryKeys::new()))
        .clone()
}

/// Runs SQL directly against a test database (a `postgres://` URL or a SQLite path), bypassing
/// msec: how tests play an attacker with database access.
pub fn raw_sql(url: &str, sql: &str) {
    if url.starts_with("postgres") {
        postgres::Client::connect(url, postgres::NoTls)
            .expect("connect for raw SQL")
            .batch_execute(sql)
            .expect("raw SQL");
    } else {
        rusqlite::Connection::open(url.strip_prefix("sqlite:").unwrap_or(url))
            .expect("open for raw SQL")
            .execute_batch(sql)
            .expect("raw SQL");
    }
}
