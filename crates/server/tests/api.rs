//! The HTTP API end to end over a real socket: registry, HTTP ingest with each kind of answer,
//! queries, problem+json errors, metrics, security headers, OpenAPI coverage and live SSE.

use msec_device::{unix_now, Device, DeviceKey};
use msec_envelope::Measurement;
use msec_ingest::{Config, Ingest};
use msec_server::{AppState, DbHandle};
use msec_store::Store;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;

struct Reply {
    status: u16,
    /// Lower-cased, for matching; `head` keeps the original (cookie values are case-sensitive).
    headers: String,
    head: String,
    body: String,
}

impl Reply {
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// A test server and the credentials its requests carry.
#[derive(Clone, Copy)]
struct Srv {
    addr: SocketAddr,
    /// Extra request header lines (Authorization, Cookie, X-CSRF-Token), each ending in CRLF.
    auth: &'static str,
    /// The server's database, for changes a test makes behind its back.
    db: &'static str,
}

impl Srv {
    fn with(self, auth: String) -> Srv {
        Srv {
            auth: Box::leak(auth.into_boxed_str()),
            ..self
        }
    }
}

/// A deliberately tiny HTTP/1.1 client: one request per connection.
fn http(srv: Srv, method: &str, path: &str, content_type: &str, body: &[u8]) -> Reply {
    let mut s = TcpStream::connect(srv.addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{}Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n", srv.auth, body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let status = head[9..12].parse().unwrap();
    Reply {
        status,
        headers: head.to_ascii_lowercase(),
        head: head.to_string(),
        body: body.to_string(),
    }
}

fn get(addr: Srv, path: &str) -> Reply {
    http(addr, "GET", path, "text/plain", b"")
}

/// An API token for `principal` with `scopes`, stored behind the server's back; returns its id
/// and the caller presenting it. Call it before any device exists: a store opened with other
/// in-memory keys cannot open the data keys made from then on.
fn add_token(srv: Srv, principal: &str, scopes: &[&str], expires_ms: i64) -> (String, String, Srv) {
    let issued = msec_identity::issue_token().unwrap();
    Store::open(srv.db, Arc::new(msec_vault::MemoryKeys::new()))
        .unwrap()
        .add_token(
            &msec_store::NewToken {
                id: issued.stored.id.clone(),
                principal: principal.into(),
                scopes: scopes.iter().map(|s| s.to_string()).collect(),
                secret_hash: issued.stored.secret_hash,
                expires_ms,
            },
            "test",
        )
        .unwrap();
    let caller = srv.with(format!("Authorization: Bearer {}\r\n", issued.text));
    (issued.stored.id, issued.text, caller)
}

/// A user of tenant santander with one role and the password PASSWORD, added behind the
/// server's back (call it before any device exists; see [`add_token`]).
fn add_user(srv: Srv, id: &str, role: &str) {
    add_user_in(srv, id, "santander", role)
}

/// [`add_user`] in another tenant.
fn add_user_in(srv: Srv, id: &str, tenant: &str, role: &str) {
    Store::open(srv.db, Arc::new(msec_vault::MemoryKeys::new()))
        .unwrap()
        .add_user(
            &msec_store::NewUser {
                id: id.into(),
                tenant: tenant.into(),
                roles: vec![role.into()],
                password_hash: msec_identity::hash_password(PASSWORD).unwrap(),
            },
            "test",
        )
        .unwrap();
}

/// Logs in as admin with `extra` header lines; the reply, the session cookie
/// (`msec_session=…`) and its CSRF token.
fn login_admin(srv: Srv, extra: &'static str) -> (Reply, String, String) {
    login_as(srv, "admin", extra)
}

/// [`login_admin`] for any user whose password is PASSWORD.
fn login_as(srv: Srv, user: &str, extra: &'static str) -> (Reply, String, String) {
    let login = serde_json::json!({"user": user, "password": PASSWORD}).to_string();
    let r = http(
        Srv { auth: extra, ..srv },
        "POST",
        "/api/v1/login",
        "application/json",
        login.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let cookie = r
        .head
        .split("set-cookie: ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = r.json()["csrf"].as_str().unwrap().to_string();
    (r, cookie, csrf)
}

/// Opens `/api/v1/stream` with the header lines `auth`.
fn open_stream(srv: Srv, auth: &str) -> TcpStream {
    let mut sse = TcpStream::connect(srv.addr).unwrap();
    write!(
        sse,
        "GET /api/v1/stream HTTP/1.1\r\nHost: localhost\r\n{auth}Accept: text/event-stream\r\n\r\n"
    )
    .unwrap();
    sse.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    sse
}

/// What a stream delivers within `secs`, or until the server closes it.
fn read_for(sse: &mut TcpStream, secs: u64) -> String {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while std::time::Instant::now() < until {
        match sse.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(_) => {}
        }
    }
    seen
}

/// A platform on a scratch SQLite database with one administrator, `admin`, whose password is
/// PASSWORD; requests carry an admin API token.
async fn start() -> Srv {
    start_behind(&[]).await
}

/// [`start`], believing `X-Forwarded-For` from `trusted_proxies`.
async fn start_behind(trusted_proxies: &[std::net::IpAddr]) -> Srv {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-api-"));
    let url = dir.join("msec.db").to_string_lossy().into_owned();
    let keys: Arc<dyn msec_store::KekProvider> = Arc::new(msec_vault::MemoryKeys::new());
    let open = || Store::open(&url, keys.clone()).unwrap();
    let token = {
        let mut s = open();
        let hash = msec_identity::hash_password(PASSWORD).unwrap();
        s.add_user(
            &msec_store::NewUser {
                id: "admin".into(),
                tenant: "*".into(),
                roles: vec!["admin".into()],
                password_hash: hash,
            },
            "test",
        )
        .unwrap();
        let issued = msec_identity::issue_token().unwrap();
        s.add_token(
            &msec_store::NewToken {
                id: issued.stored.id.clone(),
                principal: "admin".into(),
                scopes: ["read", "subscribe", "act", "manage", "audit"]
                    .map(String::from)
                    .to_vec(),
                secret_hash: issued.stored.secret_hash,
                expires_ms: msec_store::now_ms() + 3_600_000,
            },
            "test",
        )
        .unwrap();
        issued.text
    };
    let access = Arc::new(msec_access::Access::open(open()).unwrap());
    // As `msec serve` does: users added behind the server's back get their rules.
    let refreshed = access.clone();
    // Ends when the test's database is gone.
    std::thread::spawn(move || {
        while refreshed.refresh().is_ok() {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    });
    let (ingest, _) = Ingest::start(open(), Config::default()).unwrap();
    let db = DbHandle::start(open()).unwrap();
    let key = msec_notary::LogKey::from_seed("test/log", [1; 32]).unwrap();
    let notary = Arc::new(
        msec_notary::Notary::open(open(), key, dir.join("checkpoint"), vec![], 0).unwrap(),
    );
    let publisher = notary.clone();
    std::thread::spawn(move || {
        publisher.run(
            std::time::Duration::from_millis(100),
            &std::sync::atomic::AtomicBool::new(false),
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(msec_server::serve(
        listener,
        AppState {
            db,
            ingest,
            notary,
            access,
            commands: None,
            trusted_proxies: trusted_proxies.into(),
        },
        std::future::pending(),
    ));
    let db = Box::leak(url.into_boxed_str());
    Srv { addr, auth: "", db }.with(format!("Authorization: Bearer {token}\r\n"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_end_to_end() {
    let addr = start().await;
    blocking(move || scenario(addr)).await;
}

const PASSWORD: &str = "correct horse battery staple";

fn scenario(addr: Srv) {
    let key = DeviceKey::generate().unwrap();
    let reg = serde_json::json!({
        "id": "park-env-01", "tenant": "santander", "kind": "environmental-monitor",
        "location": {"lat": 43.47, "lon": -3.81, "label": "Las Llamas"},
        "public_key": hex::encode(key.public_key()),
    });
    let r = http(
        addr,
        "POST",
        "/api/v1/devices",
        "application/json",
        reg.to_string().as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.json()["key_id"], hex::encode(key.key_id()));
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/v1/devices",
            "application/json",
            reg.to_string().as_bytes()
        )
        .status,
        409
    );
    for (id, tenant) in [("x y", "t"), ("x", "t/+"), ("x", "#")] {
        let reg = serde_json::json!({"id": id, "tenant": tenant, "kind": "k", "public_key": hex::encode(DeviceKey::generate().unwrap().public_key())});
        let bad = http(
            addr,
            "POST",
            "/api/v1/devices",
            "application/json",
            reg.to_string().as_bytes(),
        );
        assert_eq!(bad.status, 400, "{id} {tenant}: {}", bad.body);
        assert!(bad.body.contains("A-Z a-z 0-9"), "{}", bad.body);
    }
    let weak = format!(
        r#"{{"id":"w","tenant":"t","kind":"k","public_key":"01{}"}}"#,
        "00".repeat(31)
    );
    let r = http(
        addr,
        "POST",
        "/api/v1/devices",
        "application/json",
        weak.as_bytes(),
    );
    assert!(
        r.status == 400 && r.json()["detail"].as_str().unwrap().contains("weak"),
        "{}",
        r.body
    );
    assert!(r.headers.contains("content-type: application/problem+json"));
    assert_eq!(
        get(addr, "/api/v1/devices").json()["devices"][0]["id"],
        "park-env-01"
    );
    let missing = get(addr, "/api/v1/devices/nope");
    assert_eq!(
        (missing.status, missing.json()["type"].as_str().unwrap()),
        (404, "urn:msec:problem:not_found")
    );

    // HTTP ingest: stored, duplicate, forged, oversized, malformed.
    let mut dev = Device::new("park-env-01", key, 1);
    let now = unix_now();
    let cose = "application/cose; cose-type=\"cose-sign1\"";
    let env = dev
        .seal(
            &[
                Measurement::number("temperature", "Cel", now, 18.5),
                Measurement::number("battery", "%EL", now, 91.0),
            ],
            now,
        )
        .unwrap();
    let r = http(addr, "POST", "/api/v1/readings", cose, &env);
    assert_eq!(
        (r.status, r.json()["status"].as_str().unwrap()),
        (201, "stored")
    );
    let r = http(addr, "POST", "/api/v1/readings", cose, &env);
    assert_eq!(
        (r.status, r.json()["status"].as_str().unwrap()),
        (200, "duplicate")
    );
    let mut forged = dev
        .seal(&[Measurement::number("temperature", "Cel", now, 99.0)], now)
        .unwrap();
    let l = forged.len() - 1;
    forged[l] ^= 1;
    let r = http(addr, "POST", "/api/v1/readings", cose, &forged);
    assert_eq!(
        (r.status, r.json()["type"].as_str().unwrap()),
        (403, "urn:msec:problem:bad_signature")
    );
    assert!(r.json()["security_event_id"].as_i64().is_some());
    let r = http(addr, "POST", "/api/v1/readings", cose, &vec![0u8; 200_000]);
    assert_eq!(
        (r.status, r.json()["type"].as_str().unwrap()),
        (413, "urn:msec:problem:oversized")
    );
    let r = http(addr, "POST", "/api/v1/readings", cose, b"hello");
    assert_eq!(r.status, 400);

    // Queries.
    let page = get(addr, "/api/v1/devices/park-env-01/readings?limit=10").json();
    assert_eq!(page["readings"].as_array().unwrap().len(), 1);
    assert_eq!(page["readings"][0]["measurements"][0]["v"], 18.5);
    assert_eq!(
        get(addr, "/api/v1/devices/park-env-01").json()["battery"],
        91.0
    );
    assert_eq!(
        get(addr, "/api/v1/devices/park-env-01/readings?limit=abc").status,
        400
    );
    assert_eq!(
        get(addr, "/api/v1/devices/park-env-01/readings?limit=5000").status,
        400
    );
    let backwards = get(
        addr,
        "/api/v1/devices/park-env-01/readings?from=2000&to=1000",
    );
    assert_eq!(backwards.status, 400, "{}", backwards.body);
    // Errors are problem+json everywhere, a wrong method and an unparsable id included.
    for (method, path, status) in [
        ("PUT", "/api/v1/devices", 405),
        ("DELETE", "/api/v1/grants/abc", 400),
        ("GET", "/api/v1/devices/%FF", 400),
        ("GET", "/api/v1/subjects/%FF/export", 400),
    ] {
        let r = http(addr, method, path, "application/json", b"");
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        assert!(
            r.headers.contains("application/problem+json"),
            "{method} {path}: {}",
            r.headers
        );
    }
    let events = get(addr, "/api/v1/security-events").json();
    let reasons: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        ["malformed_envelope", "oversized", "bad_signature"]
    );
    let metrics = get(addr, "/metrics");
    assert!(
        metrics
            .body
            .contains("msec_security_events_total{reason=\"bad_signature\"} 1"),
        "{}",
        metrics.body
    );
    assert!(metrics.body.contains("msec_readings_accepted_total 1"));
    assert_eq!(
        get(addr, "/api/v1/stats").json()["rejected_by_reason"]["oversized"],
        1
    );

    // The transparency log: a checkpoint covering every record within a second, and a proof
    // for the stored reading that verifies against it.
    let mut checkpoint = String::new();
    for _ in 0..50 {
        checkpoint = get(addr, "/api/v1/log/checkpoint").body;
        if checkpoint.lines().nth(1) == Some("7") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let cp = msec_ledger::Checkpoint::verify(
        &checkpoint,
        get(addr, "/api/v1/log").json()["verifier_key"]
            .as_str()
            .unwrap(),
    )
    .expect("a signed checkpoint");
    assert_eq!(
        cp.size, 7,
        "user + token + device + reading + 3 events: {checkpoint}"
    );
    let p = get(addr, "/api/v1/log/proof?record=reading:park-env-01/1").json();
    let path: Vec<[u8; 32]> = p["proof"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            hex::decode(h.as_str().unwrap())
                .unwrap()
                .try_into()
                .unwrap()
        })
        .collect();
    let leaf: [u8; 32] = hex::decode(p["leaf_hash"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    assert!(msec_ledger::verify_inclusion(
        &leaf,
        p["index"].as_u64().unwrap(),
        cp.size,
        &path,
        &cp.root
    ));
    assert_eq!(
        get(addr, "/api/v1/log/proof?record=reading:park-env-01/9").status,
        404
    );
    assert_eq!(get(addr, "/api/v1/log/proof?record=bogus").status, 400);
    assert!(
        !get(addr, "/api/v1/log/consistency?from=3&to=7").json()["proof"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        get(addr, "/api/v1/log/consistency?from=3&to=99").status,
        404
    );
    let r = http(
        addr,
        "POST",
        "/api/v1/log/cosignatures",
        "text/plain",
        checkpoint.as_bytes(),
    );
    assert_eq!(
        (r.status, r.json()["type"].as_str().unwrap()),
        (422, "urn:msec:problem:refused")
    );
    assert!(
        r.json()["security_event_id"].as_i64().is_some(),
        "refused cosignature not recorded"
    );

    // Revocation over HTTP is effective for the very next reading.
    assert_eq!(
        http(
            addr,
            "POST",
            "/api/v1/devices/park-env-01/revoke",
            "text/plain",
            b""
        )
        .status,
        200
    );
    let again = http(
        addr,
        "POST",
        "/api/v1/devices/park-env-01/revoke",
        "text/plain",
        b"",
    );
    assert_eq!(again.status, 409, "{}", again.body);
    assert!(again.body.contains("already revoked"), "{}", again.body);
    let r = http(
        addr,
        "POST",
        "/api/v1/readings",
        cose,
        &dev.seal(&[Measurement::number("temperature", "Cel", now, 1.0)], now)
            .unwrap(),
    );
    assert_eq!(
        (r.status, r.json()["type"].as_str().unwrap()),
        (403, "urn:msec:problem:revoked_device")
    );

    // Security headers everywhere; health.
    let home = get(addr, "/");
    assert_eq!(home.status, 200);
    for h in [
        "content-security-policy: default-src 'self'; script-src 'self'",
        "x-content-type-options: nosniff",
        "x-frame-options: deny",
    ] {
        assert!(home.headers.contains(h), "missing {h}");
    }
    // What depends on who asks is cached nowhere.
    for path in ["/metrics", "/api/v1/devices"] {
        let r = get(addr, path);
        assert!(
            r.headers.contains("cache-control: no-store"),
            "{path}: {}",
            r.headers
        );
    }
    assert_eq!(get(addr, "/healthz").json()["database"], "sqlite");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_every_route() {
    let addr = start().await;
    let doc = blocking(move || get(addr, "/api/openapi.json").json()).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let src = include_str!("../src/lib.rs");
    let mut routes = 0;
    for call in src.split(".route(").skip(1) {
        let path = call.trim_start().split('"').nth(1).unwrap();
        if path.starts_with("/api/") || path == "/healthz" || path == "/metrics" {
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} is not in openapi.json"
            );
            routes += 1;
        }
    }
    assert!(routes >= 11, "found only {routes} documented routes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_delivers_readings() {
    let addr = start().await;
    blocking(move || {
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "d", "tenant": "t", "kind": "k", "public_key": hex::encode(key.public_key())});
        assert_eq!(http(addr, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes()).status, 201);
        let mut sse = TcpStream::connect(addr.addr).unwrap();
        write!(sse, "GET /api/v1/stream HTTP/1.1\r\nHost: localhost\r\n{}Accept: text/event-stream\r\n\r\n", addr.auth).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut dev = Device::new("d", key, 1);
        let now = unix_now();
        let env = dev.seal(&[Measurement::number("co2", "ppm", now, 420.0)], now).unwrap();
        assert_eq!(http(addr, "POST", "/api/v1/readings", "application/cose", &env).status, 201);
        sse.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
        let mut seen = String::new();
        let mut buf = [0u8; 4096];
        while !seen.contains("event: reading") {
            let n = sse.read(&mut buf).expect("stream stalled");
            assert!(n > 0, "stream closed");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(seen.contains("\"co2\""), "{seen}");
    })
    .await;
}

/// Security events reach only live streams whose caller may `audit`; readings only those who
/// may `subscribe` to the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_shows_each_caller_only_what_it_may_see() {
    let srv = start().await;
    blocking(move || {
        // A service account's token with these scopes but no role or grant.
        let (_, _, watcher_auth) = add_token(srv, "svc-watcher", &["read", "subscribe", "audit"], msec_store::now_ms() + 3_600_000);
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "d", "tenant": "t", "kind": "k", "public_key": hex::encode(key.public_key())});
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes()).status, 201);
        let mut admin = open_stream(srv, srv.auth);
        let mut watcher = open_stream(srv, watcher_auth.auth);
        std::thread::sleep(std::time::Duration::from_millis(300));
        let now = unix_now();
        let env = Device::new("d", key, 1).seal(&[Measurement::number("co2", "ppm", now, 420.0)], now).unwrap();
        assert_eq!(http(srv, "POST", "/api/v1/readings", "application/cose", &env).status, 201);
        assert_eq!(http(srv, "POST", "/api/v1/readings", "application/cose", b"\xd2\x84garbage").status, 400);
        let (saw_admin, saw_watcher) = (read_for(&mut admin, 2), read_for(&mut watcher, 1));
        assert!(saw_admin.contains("event: reading") && saw_admin.contains("event: security"), "{saw_admin}");
        assert!(saw_watcher.starts_with("HTTP/1.1 200"), "{saw_watcher}");
        assert!(!saw_watcher.contains("event: reading") && !saw_watcher.contains("event: security"), "{saw_watcher}");
    })
    .await;
}

/// Santander's auditors read Santander's security events and Fujisawa's read Fujisawa's, in the
/// list and live; events of no tenant (junk from nobody known) are the administrators'.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_auditors_read_only_that_tenants_events() {
    let srv = start().await;
    blocking(move || {
        let until = msec_store::now_ms() + 3_600_000;
        let mut auditor = std::collections::HashMap::new();
        for tenant in ["santander", "fujisawa"] {
            let id = format!("auditor-{tenant}");
            add_user_in(srv, &id, tenant, "auditor");
            auditor.insert(tenant, add_token(srv, &id, &["audit", "read"], until).2);
        }
        // Rules for the new users' tenants: the server refreshes them every 100 ms.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while auditor.values().any(|a| get(*a, "/api/v1/me").json()["may_audit"] != true) {
            assert!(std::time::Instant::now() < deadline, "the auditors' rules never came");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let mut streams: Vec<_> = ["santander", "fujisawa"]
            .iter()
            .map(|t| (*t, open_stream(srv, auditor[t].auth)))
            .collect();
        let now = unix_now();
        for (id, tenant) in [("s-1", "santander"), ("f-1", "fujisawa")] {
            let key = DeviceKey::generate().unwrap();
            let reg = serde_json::json!({"id": id, "tenant": tenant, "kind": "k", "public_key": hex::encode(key.public_key())});
            assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes()).status, 201);
            let mut forged = Device::new(id, key, 1).seal(&[Measurement::number("co2", "ppm", now, 420.0)], now).unwrap();
            *forged.last_mut().unwrap() ^= 1;
            let r = http(srv, "POST", "/api/v1/readings", "application/cose", &forged);
            assert_eq!((r.status, r.json()["type"].as_str()), (403, Some("urn:msec:problem:bad_signature")), "{}", r.body);
        }
        assert_eq!(http(srv, "POST", "/api/v1/readings", "application/cose", b"\xd2\x84junk").status, 400);
        // A refusal names what was refused: Fujisawa's auditor probing a Santander device is
        // Santander's event (Fujisawa's auditors must not learn what exists there), probing
        // one that does not exist is nobody's tenant's.
        assert_eq!(get(auditor["fujisawa"], "/api/v1/devices/s-1").status, 403);
        assert_eq!(get(auditor["fujisawa"], "/api/v1/devices/no-such-device").status, 403);

        let events = |caller: Srv| -> Vec<(String, String, String)> {
            let r = get(caller, "/api/v1/security-events?limit=1000");
            assert_eq!(r.status, 200, "{}", r.body);
            r.json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let text = |k: &str| e[k].as_str().unwrap_or("-").to_string();
                    (text("tenant"), text("reason"), text("device_id"))
                })
                .collect()
        };
        let all = events(srv);
        for expected in [
            ("santander", "bad_signature", "s-1"),
            ("fujisawa", "bad_signature", "f-1"),
            ("-", "malformed_envelope", "-"),
            ("santander", "forbidden", "-"),
        ] {
            let expected = (expected.0.to_string(), expected.1.to_string(), expected.2.to_string());
            assert!(all.contains(&expected), "{expected:?} not in {all:?}");
        }
        for tenant in ["santander", "fujisawa"] {
            let seen = events(auditor[tenant]);
            let theirs: Vec<_> = all.iter().filter(|e| e.0 == tenant).cloned().collect();
            assert_eq!(seen, theirs, "{tenant}'s auditor");
            assert!(seen.iter().any(|e| e.1 == "bad_signature"), "{seen:?}");
            assert!(!serde_json::to_string(&seen).unwrap().contains("no-such-device"));
            // The dashboard shows them their security page.
            assert_eq!(get(auditor[tenant], "/api/v1/me").json()["may_audit"], true);
            // Counts of every tenant, nothing about any one event.
            assert_eq!(get(auditor[tenant], "/metrics").status, 200);
        }
        // Log proofs of events follow the same line, once a checkpoint covers them (the log
        // publishes every 100 ms here).
        let listed = get(srv, "/api/v1/security-events?limit=1000").json();
        let newest = listed["events"][0]["id"].clone();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while get(srv, &format!("/api/v1/log/proof?record=event:{newest}")).status != 200 {
            assert!(std::time::Instant::now() < deadline, "no checkpoint covers the events");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let id_of = |tenant: &str| {
            listed["events"].as_array().unwrap().iter().find(|e| e["tenant"] == tenant).unwrap()["id"].clone()
        };
        let id_of_platform = || {
            listed["events"].as_array().unwrap().iter().find(|e| e["tenant"].is_null()).unwrap()["id"].clone()
        };
        let proof = |caller: Srv, id: &serde_json::Value| get(caller, &format!("/api/v1/log/proof?record=event:{id}")).status;
        assert_eq!(proof(auditor["santander"], &id_of("santander")), 200);
        assert_eq!(proof(auditor["santander"], &id_of("fujisawa")), 403);
        assert_eq!(proof(auditor["fujisawa"], &id_of("fujisawa")), 200);
        assert_eq!(proof(auditor["fujisawa"], &serde_json::json!(999_999)), 403);
        assert_eq!(proof(auditor["fujisawa"], &id_of_platform()), 403);
        assert_eq!(proof(srv, &id_of_platform()), 200);
        assert_eq!(get(auditor["fujisawa"], "/api/v1/log/proof?record=event:abc").status, 400);
        for (tenant, stream) in &mut streams {
            let seen = read_for(stream, 1);
            let (mine, other) = if *tenant == "santander" { ("s-1", "f-1") } else { ("f-1", "s-1") };
            assert!(seen.contains(&format!("\"device_id\":\"{mine}\"")), "{tenant}: {seen}");
            assert!(!seen.contains(&format!("\"device_id\":\"{other}\"")), "{tenant}: {seen}");
            assert!(!seen.contains("malformed_envelope"), "{tenant}: {seen}");
        }
    })
    .await;
}

/// A stream outlives neither its session nor the 3 s between checks of it, even when no event
/// comes along to trigger a check: after a logout and a quiet spell, the next reading is not
/// delivered on the old session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_stream_stops_after_logout() {
    let srv = start().await;
    blocking(move || {
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "d", "tenant": "t", "kind": "k", "public_key": hex::encode(key.public_key())});
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes()).status, 201);
        let (_, cookie, csrf) = login_admin(srv, "");
        let mut sse = open_stream(srv, &format!("Cookie: {cookie}\r\n"));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let mut dev = Device::new("d", key, 1);
        let mut post = |v: f64| {
            let now = unix_now();
            let env = dev.seal(&[Measurement::number("co2", "ppm", now, v)], now).unwrap();
            assert_eq!(http(srv, "POST", "/api/v1/readings", "application/cose", &env).status, 201);
        };
        post(1.0);
        assert!(read_for(&mut sse, 2).contains("event: reading"), "the stream works while logged in");
        let with_csrf = srv.with(format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n"));
        assert_eq!(http(with_csrf, "POST", "/api/v1/logout", "text/plain", b"").status, 204);
        // With no event at all, the stream still ends within the 3 s between checks.
        let quiet = read_for(&mut sse, 4);
        assert!(quiet.ends_with("0\r\n\r\n"), "the stream outlived its session: {quiet:?}");
        post(2.0);
        let after = read_for(&mut sse, 1);
        assert!(!after.contains("event: reading"), "a reading reached a logged-out session: {after}");
    })
    .await;
}

/// Every request that changes something, made with a session cookie, needs the session's CSRF
/// token: without it each is refused (403 `csrf_failed`, exactly one event) and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_by_cookie_needs_the_csrf_token() {
    let srv = start().await;
    blocking(move || {
        let key = DeviceKey::generate().unwrap();
        let reg = |id: &str| serde_json::json!({"id": id, "tenant": "santander", "kind": "k", "public_key": hex::encode(DeviceKey::generate().unwrap().public_key())}).to_string();
        let first = serde_json::json!({"id": "p-1", "tenant": "santander", "kind": "k", "public_key": hex::encode(key.public_key())}).to_string();
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", first.as_bytes()).status, 201);
        let grant = serde_json::json!({"principal": "ana", "actions": ["read"], "resource": "santander/**"}).to_string();
        let r = http(srv, "POST", "/api/v1/grants", "application/json", grant.as_bytes());
        assert_eq!(r.status, 201, "{}", r.body);
        let grant_id = r.json()["id"].as_i64().unwrap();
        let (_, cookie, _) = login_admin(srv, "");
        let session = srv.with(format!("Cookie: {cookie}\r\n"));
        let csrf_events = || {
            get(srv, "/api/v1/security-events?limit=1000").json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["reason"] == "csrf_failed")
                .count()
        };
        let other = reg("p-2");
        let delete_grant = format!("/api/v1/grants/{grant_id}");
        let changes: [(&str, &str, &[u8]); 6] = [
            ("POST", "/api/v1/devices", other.as_bytes()),
            ("POST", "/api/v1/devices/p-1/revoke", b""),
            ("POST", "/api/v1/devices/p-1/commands", br#"{"resource": "plug/switch", "value": true}"#),
            ("POST", "/api/v1/grants", grant.as_bytes()),
            ("DELETE", &delete_grant, b""),
            ("POST", "/api/v1/logout", b""),
        ];
        for (method, path, body) in changes {
            let before = csrf_events();
            let r = http(session, method, path, "application/json", body);
            assert_eq!(
                (r.status, r.json()["type"].as_str().unwrap_or_default()),
                (403, "urn:msec:problem:csrf_failed"),
                "{method} {path}: {}",
                r.body
            );
            assert_eq!(csrf_events(), before + 1, "{method} {path}: not one event");
        }
        // Nothing changed: the device is active, p-2 unknown, one grant, the session alive.
        assert_eq!(get(srv, "/api/v1/devices/p-1").json()["status"], "active");
        assert_eq!(get(srv, "/api/v1/devices/p-2").status, 404);
        assert_eq!(get(srv, "/api/v1/grants").json()["grants"].as_array().unwrap().len(), 1);
        assert_eq!(get(session, "/api/v1/me").status, 200);
    })
    .await;
}

/// Bodies are read to their limit and no further: a client announcing 10 GB, or streaming
/// chunks without end, hears 413 as soon as it has sent one byte past the limit, without the
/// server waiting for (or buffering) the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_without_reading_them_whole() {
    let srv = start().await;
    blocking(move || {
        let endpoints = [
            ("/api/v1/login", 4096),
            ("/api/v1/devices", 4096),
            ("/api/v1/grants", 4096),
            ("/api/v1/log/cosignatures", 8 * 1024),
            ("/api/v1/log/alarms", 8 * 1024),
            ("/api/v1/readings", 64 * 1024),
        ];
        for (path, limit) in endpoints {
            for chunked in [false, true] {
                let mut s = TcpStream::connect(srv.addr).unwrap();
                s.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                let framing = if chunked {
                    "Transfer-Encoding: chunked"
                } else {
                    "Content-Length: 10000000000"
                };
                write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\n{}Content-Type: application/json\r\n{framing}\r\n\r\n", srv.auth).unwrap();
                let body = vec![b'{'; limit + 2];
                if chunked {
                    write!(s, "{:x}\r\n", body.len()).unwrap();
                    s.write_all(&body).unwrap();
                    s.write_all(b"\r\n").unwrap();
                } else {
                    s.write_all(&body).unwrap();
                }
                // The rest never comes: the answer must not wait for it.
                let mut status = [0u8; 12];
                let read = s.read_exact(&mut status);
                assert!(
                    read.is_ok() && &status == b"HTTP/1.1 413",
                    "{path} (chunked: {chunked}): {read:?} {:?}",
                    String::from_utf8_lossy(&status)
                );
            }
        }
    })
    .await;
}

/// Text an attacker chooses (a user name, a device id in a URL) reaches security events only
/// cut short and without control characters: no forged log lines, no terminal escapes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_reaches_events_bounded_and_without_control_characters() {
    let srv = start().await;
    blocking(move || {
        let (_, _, nobody) = add_token(
            srv,
            "svc-nobody",
            &["read"],
            msec_store::now_ms() + 3_600_000,
        );
        let forged = format!("x\nFAKE LOG LINE\u{1b}[2J{}", "y".repeat(1000));
        let login =
            serde_json::json!({"user": forged, "password": "wrong password 123"}).to_string();
        assert_eq!(
            http(
                srv,
                "POST",
                "/api/v1/login",
                "application/json",
                login.as_bytes()
            )
            .status,
            401
        );
        let path = format!(
            "/api/v1/devices/x%0AFAKE%20LOG%20LINE%1B%5B2J{}",
            "y".repeat(1000)
        );
        assert_eq!(get(nobody, &path).status, 403);
        let events = get(srv, "/api/v1/security-events?limit=10").json()["events"]
            .as_array()
            .unwrap()
            .clone();
        for reason in ["login_failed", "forbidden"] {
            let e = events
                .iter()
                .find(|e| e["reason"] == reason)
                .unwrap_or_else(|| panic!("no {reason} event: {events:?}"));
            for field in ["detail", "source"] {
                let text = e[field].as_str().unwrap_or_default();
                assert!(
                    !text.chars().any(char::is_control),
                    "{reason} {field}: {text:?}"
                );
                assert!(
                    text.len() < 1000,
                    "{reason} {field} is {} bytes",
                    text.len()
                );
            }
            // A refused resource is named (bounded); a user name nobody has is not recorded
            // at all: it is often a password typed into the wrong field.
            let named = e["detail"].as_str().unwrap().contains("FAKE LOG LINE");
            assert_eq!(named, reason == "forbidden", "{e}");
        }
        // A known user's failed login names the user.
        let wrong =
            serde_json::json!({"user": "admin", "password": "not the password 1"}).to_string();
        assert_eq!(
            http(
                srv,
                "POST",
                "/api/v1/login",
                "application/json",
                wrong.as_bytes()
            )
            .status,
            401
        );
        let newest = &get(srv, "/api/v1/security-events?limit=1").json()["events"][0];
        assert_eq!(newest["reason"], "login_failed");
        assert!(
            newest["detail"].as_str().unwrap().contains("\"admin\""),
            "{newest}"
        );
        // The answer, though, is the same for a name nobody has: it tells no one which exist.
        let answer = |user: &str| {
            let body = serde_json::json!({"user": user, "password": "not the password 2"});
            let r = http(
                srv,
                "POST",
                "/api/v1/login",
                "application/json",
                body.to_string().as_bytes(),
            );
            (r.status, r.json()["detail"].clone())
        };
        assert_eq!(answer("admin"), answer("nobody-is-called-this"));
        // A password typed into the user field stays out of every event, the lockout's too.
        let typed = serde_json::json!({"user": "Secret-Passw0rd!", "password": "x"}).to_string();
        let replies: Vec<Reply> = (0..7)
            .map(|_| {
                http(
                    srv,
                    "POST",
                    "/api/v1/login",
                    "application/json",
                    typed.as_bytes(),
                )
            })
            .collect();
        let locked = replies
            .iter()
            .find(|r| r.status == 429)
            .expect("locked out within 7 attempts");
        // Nor does the lockout's answer tell whether the name exists.
        assert!(
            !locked.body.contains("characters") && !locked.body.contains("Secret"),
            "{}",
            locked.body
        );
        let all = get(srv, "/api/v1/security-events?limit=100").body;
        assert!(
            all.contains("rate_limited") && !all.contains("Secret-Passw0rd!"),
            "{all}"
        );
    })
    .await;
}

/// A consent is its subject's: she (and her tenant's operators) may have its log proof; another
/// resident may not, and cannot tell an unknown consent from hers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_get_log_proofs_of_their_own_consents_only() {
    let srv = start().await;
    blocking(move || {
        let store = || Store::open(srv.db, Arc::new(msec_vault::MemoryKeys::new())).unwrap();
        for id in ["resident-007", "resident-008"] {
            add_user(srv, id, "resident");
        }
        let consent = store()
            .give_consent("resident-007", "caregiver-ana", "care")
            .unwrap();
        // The users were added behind the server's back; a grant change through the API
        // rebuilds the rules at once (this test server polls for no other process's changes).
        let grant =
            serde_json::json!({"principal": "x", "actions": ["read"], "resource": "other/**"});
        assert_eq!(
            http(
                srv,
                "POST",
                "/api/v1/grants",
                "application/json",
                grant.to_string().as_bytes()
            )
            .status,
            201
        );
        let as_resident = |user: &str| {
            let (_, cookie, _) = login_as(srv, user, "");
            srv.with(format!("Cookie: {cookie}\r\n"))
        };
        let (own, other) = (as_resident("resident-007"), as_resident("resident-008"));
        let proof = format!("/api/v1/log/proof?record=consent:{}", consent.id);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = get(own, &proof);
            if r.status == 200 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} {}",
                r.status,
                r.body
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let refused = |path: &str, id: &str| {
            let r = get(other, path);
            (
                r.status,
                r.json()["detail"].as_str().unwrap().replace(id, "N"),
            )
        };
        let unknown = "/api/v1/log/proof?record=consent:99999";
        assert_eq!(
            refused(&proof, &consent.id.to_string()),
            refused(unknown, "99999")
        );
        assert_eq!(refused(unknown, "99999").0, 403);
        assert_eq!(get(srv, unknown).status, 404);
    })
    .await;
}

/// Residents see, create and revoke grants on their own data only (docs/access-control.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn residents_manage_only_their_own_grants() {
    let srv = start().await;
    blocking(move || {
        for id in ["resident-007", "resident-008"] {
            add_user(srv, id, "resident");
        }
        let grant = |resource: &str| serde_json::json!({"principal": "caregiver-ana", "actions": ["read"], "resource": resource}).to_string();
        let create = |as_: Srv, resource: &str| http(as_, "POST", "/api/v1/grants", "application/json", grant(resource).as_bytes());
        let own = create(srv, "santander/resident-007/**").json()["id"].as_i64().unwrap();
        let other = create(srv, "santander/resident-008/**").json()["id"].as_i64().unwrap();
        let (_, cookie, csrf) = login_as(srv, "resident-007", "");
        let resident = srv.with(format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n"));
        let listed = || -> Vec<i64> {
            get(resident, "/api/v1/grants").json()["grants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|g| g["id"].as_i64().unwrap())
                .collect()
        };
        // The server picks up the new users within half a second.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while listed() != [own] && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(listed(), [own], "a resident sees exactly her own grants");
        assert_eq!(create(resident, "santander/resident-008/**").status, 403);
        assert_eq!(create(resident, "santander/**").status, 403);
        // Nor may she register devices, even under her own path: a registration claims an id
        // and a key across msec (and its 409 tells whether they are taken).
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "home-007-new", "tenant": "santander", "owner": "resident-007", "kind": "k", "public_key": hex::encode(key.public_key())}).to_string();
        assert_eq!(http(resident, "POST", "/api/v1/devices", "application/json", reg.as_bytes()).status, 403);
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.as_bytes()).status, 201);
        let mine = create(resident, "santander/resident-007/home-007-bed");
        assert_eq!(mine.status, 201, "{}", mine.body);
        let delete = |id: i64| http(resident, "DELETE", &format!("/api/v1/grants/{id}"), "text/plain", b"").status;
        assert_eq!(delete(other), 403);
        // A grant id nobody has reads the same as a foreign one: ids are not hers to probe.
        let detail = |id: i64| {
            let r = http(resident, "DELETE", &format!("/api/v1/grants/{id}"), "text/plain", b"");
            (r.status, r.json()["detail"].as_str().unwrap().replace(&id.to_string(), "N"))
        };
        assert_eq!(detail(other), detail(99_999));
        assert_eq!(delete(own), 204);
        let remaining: Vec<i64> = get(srv, "/api/v1/grants").json()["grants"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["id"].as_i64().unwrap())
            .collect();
        assert_eq!(remaining, [other, mine.json()["id"].as_i64().unwrap()]);
    })
    .await;
}

/// Each grant change rebuilds the rules every decision reads: one caller gets 30 a minute, then
/// 429 with Retry-After and a `rate_limited` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_changes_are_rate_limited_per_caller() {
    let srv = start().await;
    blocking(move || {
        let grant = serde_json::json!({"principal": "ana", "actions": ["read"], "resource": "santander/**"}).to_string();
        let mut made = 0;
        let refused = loop {
            let r = http(srv, "POST", "/api/v1/grants", "application/json", grant.as_bytes());
            if r.status != 201 {
                break r;
            }
            made += 1;
            assert!(made <= 60, "no limit after {made} changes");
        };
        // 30 in any 60 s.
        assert_eq!(made, 30);
        assert_eq!(refused.status, 429, "{}", refused.body);
        assert!(refused.headers.contains("retry-after: "), "{}", refused.head);
        assert_eq!(refused.json()["type"], "urn:msec:problem:rate_limited");
        assert!(refused.json()["security_event_id"].is_i64(), "{}", refused.body);
        // Over-long or control-character resources are refused before anything is counted.
        let long = serde_json::json!({"principal": "ana", "actions": ["read"], "resource": format!("santander/{}", "x".repeat(300))}).to_string();
        assert_eq!(http(srv, "POST", "/api/v1/grants", "application/json", long.as_bytes()).status, 400);
    })
    .await;
}

/// A disabled user is nobody: their open session, their API tokens and their live stream all
/// stop, without a logout or a revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_user_is_nobody() {
    let srv = start().await;
    blocking(move || {
        let store = || Store::open(srv.db, Arc::new(msec_vault::MemoryKeys::new())).unwrap();
        add_user(srv, "olga", "operator");
        let (_, _, token) = add_token(
            srv,
            "olga",
            &["read", "subscribe"],
            msec_store::now_ms() + 3_600_000,
        );
        let (_, cookie, _) = login_as(srv, "olga", "");
        let session = srv.with(format!(
            "Cookie: {cookie}
"
        ));
        let mut sse = open_stream(
            srv,
            &format!(
                "Cookie: {cookie}
"
            ),
        );
        assert_eq!(get(session, "/api/v1/devices").status, 200);
        assert_eq!(get(token, "/api/v1/devices").status, 200);
        assert!(
            read_for(&mut sse, 1).starts_with("HTTP/1.1 200"),
            "the stream opens"
        );

        assert!(store().disable_user("olga", "test").unwrap());
        assert_eq!(get(session, "/api/v1/devices").status, 401);
        assert_eq!(get(token, "/api/v1/devices").status, 401);
        // The stream ends within the 3 s between its checks of the caller.
        let rest = read_for(&mut sse, 4);
        assert!(
            rest.ends_with("0\r\n\r\n"),
            "the stream outlived its user: {rest:?}"
        );
        // And the password no longer opens a session.
        let login = serde_json::json!({"user": "olga", "password": PASSWORD}).to_string();
        assert_eq!(
            http(
                srv,
                "POST",
                "/api/v1/login",
                "application/json",
                login.as_bytes()
            )
            .status,
            401
        );
    })
    .await;
}

/// Tokens stop working when revoked or expired, and a session's changes need its own CSRF
/// token, not another session's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_or_expired_tokens_and_foreign_csrf_tokens_are_refused() {
    let srv = start().await;
    blocking(move || {
        let token = |expires_ms: i64| add_token(srv, "admin", &["read"], expires_ms);
        let refused = |as_: Srv| {
            let r = get(as_, "/api/v1/devices");
            (r.status, r.json()["type"].as_str().unwrap_or_default().to_string())
        };
        let (_, expired_text, expired) = token(msec_store::now_ms() - 1);
        assert_eq!(refused(expired), (401, "urn:msec:problem:invalid_token".into()));
        let (id, live_text, live) = token(msec_store::now_ms() + 3_600_000);
        assert_eq!(get(live, "/api/v1/devices").status, 200);
        Store::open(srv.db, Arc::new(msec_vault::MemoryKeys::new()))
            .unwrap()
            .revoke_token(&id, "test")
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while get(live, "/api/v1/devices").status == 200 && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        assert_eq!(refused(live), (401, "urn:msec:problem:invalid_token".into()));
        // The refusals are security events, and none of them holds a token's secret.
        let events = get(srv, "/api/v1/security-events?limit=1000").body;
        assert!(events.matches("invalid_token").count() >= 2, "{events}");
        for text in [&expired_text, &live_text] {
            // msec_{16 hex digits of id}_{secret}; the secret itself may hold '_'.
            let secret = &text["msec_".len() + 17..];
            assert!(secret.len() >= 16 && !events.contains(secret), "a token secret reached the events");
        }

        let ((_, cookie_a, csrf_a), (_, _, csrf_b)) = (login_admin(srv, ""), login_admin(srv, ""));
        assert_ne!(csrf_a, csrf_b);
        let reg = serde_json::json!({"id": "c-1", "tenant": "t", "kind": "k", "public_key": hex::encode(DeviceKey::generate().unwrap().public_key())}).to_string();
        let foreign = srv.with(format!("Cookie: {cookie_a}\r\nX-CSRF-Token: {csrf_b}\r\n"));
        let r = http(foreign, "POST", "/api/v1/devices", "application/json", reg.as_bytes());
        assert_eq!((r.status, r.json()["type"].as_str().unwrap()), (403, "urn:msec:problem:csrf_failed"));
        let own = srv.with(format!("Cookie: {cookie_a}\r\nX-CSRF-Token: {csrf_a}\r\n"));
        assert_eq!(http(own, "POST", "/api/v1/devices", "application/json", reg.as_bytes()).status, 201);
    })
    .await;
}

/// The endpoint table of docs/access-control.md, through HTTP: a caller who is authenticated
/// but holds no role and no grant (a service account's token with every scope) sees no device
/// and is refused everything that needs a permission, each refusal one `forbidden` event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_refuse_an_authenticated_caller_without_permissions() {
    let srv = start().await;
    blocking(move || {
        let (_, _, nobody) = add_token(
            srv,
            "svc-nobody",
            &["read", "subscribe", "act", "manage", "audit"],
            msec_store::now_ms() + 3_600_000,
        );
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "p-1", "tenant": "santander", "kind": "k", "public_key": hex::encode(key.public_key())}).to_string();
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.as_bytes()).status, 201);
        let forbidden = || {
            get(srv, "/api/v1/security-events?limit=1000").json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["reason"] == "forbidden")
                .count()
        };
        // Authentication alone: an empty device list and the counts.
        let r = get(nobody, "/api/v1/devices");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(!r.body.contains("p-1"), "{}", r.body);
        assert_eq!(get(nobody, "/api/v1/stats").status, 200);
        let other = serde_json::json!({"id": "p-2", "tenant": "santander", "kind": "k", "public_key": hex::encode(DeviceKey::generate().unwrap().public_key())}).to_string();
        let refused: [(&str, &str, &[u8]); 7] = [
            ("GET", "/api/v1/devices/p-1", b""),
            ("GET", "/api/v1/devices/p-1/readings", b""),
            ("GET", "/api/v1/log/proof?record=event:1", b""),
            ("POST", "/api/v1/devices", other.as_bytes()),
            ("POST", "/api/v1/devices/p-1/revoke", b""),
            ("GET", "/api/v1/security-events", b""),
            ("GET", "/metrics", b""),
        ];
        for (i, (method, path, body)) in refused.into_iter().enumerate() {
            let before = forbidden();
            let r = http(nobody, method, path, "application/json", body);
            assert_eq!(r.status, 403, "{method} {path}: {}", r.body);
            assert_eq!(forbidden(), before + 1, "{method} {path}: not one event (case {i})");
        }
        // Unknown and forbidden read the same to this caller, so it cannot probe which devices
        // or people exist; each probe is still one event. An administrator learns what is unknown.
        for (known, unknown) in [
            ("/api/v1/devices/p-1", "/api/v1/devices/ghost"),
            ("/api/v1/subjects/santander/export", "/api/v1/subjects/ghost/export"),
            // Log positions are looked up by record id: the same question in another form.
            ("/api/v1/log/proof?record=device:p-1", "/api/v1/log/proof?record=device:ghost"),
            ("/api/v1/log/proof?record=reading:p-1/1", "/api/v1/log/proof?record=reading:ghost/1"),
        ] {
            let before = forbidden();
            let (a, b) = (get(nobody, known), get(nobody, unknown));
            assert_eq!((a.status, b.status), (403, 403), "{} {}", a.body, b.body);
            let detail = |r: &Reply, name: &str| r.json()["detail"].as_str().unwrap().replace(name, "X");
            assert_eq!(detail(&a, if known.contains("p-1") { "p-1" } else { "santander" }), detail(&b, "ghost"));
            assert_eq!(forbidden(), before + 2, "{unknown}");
            assert_eq!(get(srv, unknown).status, 404, "{unknown}");
        }
        // A tenant is no data subject: its public infrastructure is read device by device, not
        // exported whole (one answer with every park reading ever sent), even by an admin.
        let tenant = get(srv, "/api/v1/subjects/santander/export");
        assert_eq!(tenant.status, 400, "{}", tenant.body);
        // Anonymous callers learn nothing from the log by record id either.
        let anonymous = Srv { auth: "", ..srv };
        assert_eq!(get(anonymous, "/api/v1/log/proof?record=device:p-1").status, 401);
        // An administrator gets the proof, once a checkpoint covers the record.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let r = get(srv, "/api/v1/log/proof?record=device:p-1");
            if r.status == 200 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{} {}", r.status, r.body);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Nothing changed behind the refusals.
        let d = get(srv, "/api/v1/devices/p-1").json();
        assert_eq!(d["status"], "active", "{d}");
        assert_eq!(get(srv, "/api/v1/devices/p-2").status, 404);
    })
    .await;
}

/// Behind a trusted TLS-terminating proxy the session cookie is `Secure` and named `__Host-…`;
/// the database keeps only a hash of the session secret, so a copy of it opens no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_cookie_is_secure_behind_https_and_stored_hashed() {
    let srv = start_behind(&["127.0.0.1".parse().unwrap()]).await;
    blocking(move || {
        let (r, cookie, _) = login_admin(srv, "X-Forwarded-Proto: https\r\n");
        assert!(cookie.starts_with("__Host-msec_session="), "{cookie}");
        let https =
            |cookie: &str| srv.with(format!("X-Forwarded-Proto: https\r\nCookie: {cookie}\r\n"));
        let max_age: i64 = r
            .headers
            .split("max-age=")
            .nth(1)
            .unwrap()
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            r.headers.contains("; secure") && (28_790..=28_800).contains(&max_age),
            "8 hours: {}",
            r.headers
        );
        let secret = cookie.split_once('=').unwrap().1;
        assert!(secret.len() >= 20, "{cookie}");
        assert_eq!(get(https(&cookie), "/api/v1/me").status, 200);
        // The same secret under the plain-HTTP name, as another host of the site could plant
        // it, opens nothing over HTTPS.
        let secret_only = cookie.split_once('=').unwrap().1;
        let planted = format!("msec_session={secret_only}");
        assert_eq!(get(https(&planted), "/api/v1/me").status, 401);
        let mut stored = Vec::new();
        for suffix in ["", "-wal"] {
            if let Ok(bytes) = std::fs::read(format!("{}{suffix}", srv.db)) {
                stored.extend(bytes);
            }
        }
        assert!(!stored.is_empty());
        assert!(
            !stored.windows(secret.len()).any(|w| w == secret.as_bytes()),
            "the session secret is stored in the clear"
        );
        // Once its 8 hours are over (moved into the past here), the session opens nothing.
        msec_testkit::raw_sql(srv.db, "UPDATE sessions SET expires_ms = 1");
        assert_eq!(get(https(&cookie), "/api/v1/me").status, 401);
    })
    .await;
}

/// Only a trusted proxy says whether a request came over HTTPS: a client that sends
/// `X-Forwarded-Proto: https` itself gets the plain-HTTP cookie, which its browser keeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_trusted_proxy_makes_the_session_cookie_secure() {
    let srv = start().await;
    blocking(move || {
        let (r, cookie, _) = login_admin(srv, "X-Forwarded-Proto: https\r\n");
        assert!(cookie.starts_with("msec_session="), "{cookie}");
        assert!(!r.headers.contains("; secure"), "{}", r.head);
        let session = srv.with(format!("X-Forwarded-Proto: https\r\nCookie: {cookie}\r\n"));
        assert_eq!(get(session, "/api/v1/me").status, 200);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_sessions_csrf_tokens_and_lockout() {
    let srv = start().await;
    blocking(move || {
        let anon = Srv { auth: "", ..srv };
        let events = |reason: &str| {
            get(srv, "/api/v1/security-events?limit=1000").json()["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["reason"] == reason)
                .count()
        };
        // No credentials: 401 and a security event.
        let r = get(anon, "/api/v1/devices");
        assert_eq!((r.status, r.json()["type"].as_str().unwrap()), (401, "urn:msec:problem:unauthenticated"));
        assert_eq!(events("unauthenticated"), 1);
        let r = get(Srv { auth: "Authorization: Bearer msec_0123456789abcdef_forged\r\n", ..srv }, "/api/v1/devices");
        assert_eq!(r.status, 401);
        assert_eq!(events("invalid_token"), 1);

        // Login CSRF: another site's form can post plain text that happens to be JSON (an extra
        // field soaks up the form's `=`); a login must be application/json with known fields.
        let forged = br#"{"user":"admin","password":"PASSWORD","x":"=""}"#;
        let r = http(anon, "POST", "/api/v1/login", "text/plain", forged);
        assert_eq!(r.status, 415, "{}", r.body);
        let genuine = serde_json::json!({"user": "admin", "password": PASSWORD, "x": "="});
        let r = http(anon, "POST", "/api/v1/login", "application/json", genuine.to_string().as_bytes());
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(!r.headers.contains("set-cookie"), "{}", r.head);

        // A session: HttpOnly, SameSite=Strict cookie; changes need the CSRF token.
        let login = serde_json::json!({"user": "admin", "password": PASSWORD}).to_string();
        let r = http(anon, "POST", "/api/v1/login", "application/json", login.as_bytes());
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.headers.contains("httponly") && r.headers.contains("samesite=strict"), "{}", r.headers);
        assert!(!r.headers.contains("; secure"), "plain-HTTP loopback cannot keep a Secure cookie");
        let cookie = r.head.split("set-cookie: ").nth(1).unwrap().split(';').next().unwrap().to_string();
        let csrf = r.json()["csrf"].as_str().unwrap().to_string();
        let session = srv.with(format!("Cookie: {cookie}\r\n"));
        assert_eq!(get(session, "/api/v1/me").json()["principal"]["id"], "admin");
        let reg = serde_json::json!({"id": "s-1", "tenant": "t", "kind": "k", "public_key": hex::encode(DeviceKey::generate().unwrap().public_key())}).to_string();
        let r = http(session, "POST", "/api/v1/devices", "application/json", reg.as_bytes());
        assert_eq!((r.status, r.json()["type"].as_str().unwrap()), (403, "urn:msec:problem:csrf_failed"));
        let with_csrf = srv.with(format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n"));
        assert_eq!(http(with_csrf, "POST", "/api/v1/devices", "application/json", reg.as_bytes()).status, 201);
        assert_eq!(http(with_csrf, "POST", "/api/v1/logout", "text/plain", b"").status, 204);
        assert_eq!(get(session, "/api/v1/me").status, 401, "a logged-out session still works");

        // Wrong passwords: each one an event; the sixth attempt is refused before checking.
        let wrong = serde_json::json!({"user": "admin", "password": "not the password"}).to_string();
        for _ in 0..5 {
            assert_eq!(http(anon, "POST", "/api/v1/login", "application/json", wrong.as_bytes()).status, 401);
        }
        let r = http(anon, "POST", "/api/v1/login", "application/json", login.as_bytes());
        assert_eq!(r.status, 429, "locked out even with the right password");
        assert!(r.headers.contains("retry-after"));
        assert_eq!(events("login_failed"), 5);
        assert_eq!(events("rate_limited"), 1);
        let text = get(srv, "/api/v1/security-events?limit=1000").body;
        assert!(!text.contains(PASSWORD) && !text.contains("not the password"), "a password reached the event log");
    })
    .await;
}

/// Guesses sent at once cannot outrun the lockout: each attempt counts before its password is
/// checked, so of many concurrent wrong logins only the first five are checked at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_cannot_outrun_the_lockout() {
    let srv = start().await;
    blocking(move || {
        let anon = Srv { auth: "", ..srv };
        let wrong = serde_json::json!({"user": "admin", "password": "guess"}).to_string();
        let statuses: Vec<(u16, String)> = std::thread::scope(|scope| {
            let guesses: Vec<_> = (0..16)
                .map(|_| {
                    let wrong = wrong.clone();
                    scope.spawn(move || {
                        let r = http(
                            anon,
                            "POST",
                            "/api/v1/login",
                            "application/json",
                            wrong.as_bytes(),
                        );
                        (r.status, r.headers)
                    })
                })
                .collect();
            guesses.into_iter().map(|g| g.join().unwrap()).collect()
        });
        let checked = statuses.iter().filter(|(s, _)| *s == 401).count();
        let locked: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
        assert_eq!((checked, locked.len()), (5, 11), "{statuses:?}");
        // Retry-After says when the lock ends: within the 15-minute window.
        for (_, headers) in locked {
            let secs: i64 = headers
                .lines()
                .find_map(|l| l.strip_prefix("retry-after: "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            assert!((1..=900).contains(&secs), "{secs}");
        }
    })
    .await;
}

/// A database that cannot answer refuses nobody: logins and tokens get 503, no `login_failed`
/// or `invalid_token` event is made up, and the failed attempts count towards no lockout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_failure_is_no_failed_login() {
    let srv = start().await;
    blocking(move || {
        let anon = Srv { auth: "", ..srv };
        let login = serde_json::json!({"user": "admin", "password": PASSWORD}).to_string();
        msec_testkit::raw_sql(srv.db, "ALTER TABLE users RENAME TO users_away");
        for _ in 0..6 {
            let r = http(
                anon,
                "POST",
                "/api/v1/login",
                "application/json",
                login.as_bytes(),
            );
            assert_eq!(r.status, 503, "{}", r.body);
            assert_eq!(r.json()["type"], "urn:msec:problem:storage_unavailable");
        }
        assert_eq!(
            get(srv, "/api/v1/devices").status,
            503,
            "a token whose owner cannot be looked up"
        );
        msec_testkit::raw_sql(srv.db, "ALTER TABLE users_away RENAME TO users");
        let r = http(
            anon,
            "POST",
            "/api/v1/login",
            "application/json",
            login.as_bytes(),
        );
        assert_eq!(r.status, 200, "locked out by the outage: {}", r.body);
        let events = get(srv, "/api/v1/security-events?limit=1000").json();
        let made_up: Vec<_> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| {
                e["reason"] == "login_failed"
                    || e["reason"] == "invalid_token"
                    || e["reason"] == "rate_limited"
            })
            .collect();
        assert!(made_up.is_empty(), "{made_up:?}");
    })
    .await;
}

/// While the database refuses commits, an HTTP reading waits instead of being refused (nothing
/// accepted is lost, nothing is answered 503 that a retry would then find a replay), and
/// `/healthz` says ingest is waiting; once the database is back, the reading is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reading_waits_out_a_database_outage() {
    let srv = start().await;
    blocking(move || {
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "o-1", "tenant": "t", "kind": "k", "public_key": hex::encode(key.public_key())});
        assert_eq!(http(srv, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes()).status, 201);
        msec_testkit::raw_sql(srv.db, "ALTER TABLE readings RENAME TO readings_away");
        let now = unix_now();
        let envelope = Device::new("o-1", key, 1)
            .seal(&[Measurement::number("temperature", "Cel", now, 1.0)], now).unwrap();
        let cose = "application/cose; cose-type=\"cose-sign1\"";
        let posting = std::thread::spawn(move || http(srv, "POST", "/api/v1/readings", cose, &envelope));
        let mut health = get(srv, "/healthz");
        for _ in 0..50 {
            if health.status == 503 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            health = get(srv, "/healthz");
        }
        assert_eq!(health.status, 503, "{}", health.body);
        assert!(get(srv, "/metrics").body.contains("msec_ingest_commit_failing 1"));
        assert!(!posting.is_finished(), "the reading was answered during the outage");
        // A refusal is not held up: answered within seconds, its event stored later.
        let started = std::time::Instant::now();
        let refused = get(Srv { auth: "", ..srv }, "/api/v1/devices");
        assert_eq!(refused.status, 401);
        assert!(refused.json()["security_event_id"].is_null(), "{}", refused.body);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        msec_testkit::raw_sql(srv.db, "ALTER TABLE readings_away RENAME TO readings");
        let stored = posting.join().unwrap();
        assert_eq!(stored.status, 201, "{}", stored.body);
        assert_eq!(get(srv, "/healthz").status, 200);
        assert!(get(srv, "/metrics").body.contains("msec_ingest_commit_failing 0"));
    })
    .await;
}

/// Behind a trusted reverse proxy, the client named in `X-Forwarded-For` is who the login
/// throttle counts and the security events name: guesses through the proxy lock their own
/// address, not everyone behind the same proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled() {
    let srv = start_behind(&["127.0.0.1".parse().unwrap()]).await;
    blocking(move || {
        let from = |xff: &'static str| Srv { auth: xff, ..srv };
        let guesser = from("X-Forwarded-For: 10.0.0.1\r\n");
        for i in 0..5 {
            let wrong =
                serde_json::json!({"user": format!("u{i}"), "password": "guess"}).to_string();
            assert_eq!(
                http(
                    guesser,
                    "POST",
                    "/api/v1/login",
                    "application/json",
                    wrong.as_bytes()
                )
                .status,
                401
            );
        }
        let login = serde_json::json!({"user": "admin", "password": PASSWORD}).to_string();
        let r = http(
            guesser,
            "POST",
            "/api/v1/login",
            "application/json",
            login.as_bytes(),
        );
        assert_eq!(r.status, 429, "{}", r.body);
        let r = http(
            from("X-Forwarded-For: 10.0.0.2\r\n"),
            "POST",
            "/api/v1/login",
            "application/json",
            login.as_bytes(),
        );
        assert_eq!(
            r.status, 200,
            "another client behind the proxy is locked out: {}",
            r.body
        );
        let events = get(srv, "/api/v1/security-events?limit=100").json();
        let sources: Vec<_> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["reason"] == "login_failed")
            .map(|e| e["source"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(sources.len(), 5);
        assert!(
            sources.iter().all(|s| s == "http 10.0.0.1:0"),
            "{sources:?}"
        );
    })
    .await;
}

/// The body of a chunked HTTP/1.1 answer, its framing taken off.
fn dechunk(body: &str) -> String {
    let (mut rest, mut out) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return out;
        }
        out.push_str(&after[..size]);
        rest = after[size..]
            .strip_prefix("\r\n")
            .expect("a chunk ends in CRLF");
    }
}

/// A subject's export is sent as it is read (chunked), and what arrives is the whole document:
/// every reading, and a log position for each record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_export_streams_the_whole_document() {
    let srv = start().await;
    blocking(move || {
        let key = DeviceKey::generate().unwrap();
        let reg = serde_json::json!({"id": "home-9-bed", "tenant": "santander", "owner": "resident-9", "kind": "bed", "public_key": hex::encode(key.public_key())});
        let r = http(srv, "POST", "/api/v1/devices", "application/json", reg.to_string().as_bytes());
        assert_eq!(r.status, 201, "{}", r.body);
        let mut dev = Device::new("home-9-bed", key, 1);
        let cose = "application/cose; cose-type=\"cose-sign1\"";
        for i in 0..5 {
            let now = unix_now();
            let env = dev
                .seal(&[Measurement::number("occupied", "/", now, f64::from(i % 2))], now)
                .unwrap();
            assert_eq!(http(srv, "POST", "/api/v1/readings", cose, &env).status, 201);
        }
        let r = get(srv, "/api/v1/subjects/resident-9/export");
        assert_eq!(r.status, 200, "{}", r.body);
        assert!(r.headers.contains("transfer-encoding: chunked"), "{}", r.head);
        assert!(r.headers.contains("content-type: application/json"), "{}", r.head);
        let doc: serde_json::Value = serde_json::from_str(&dechunk(&r.body)).unwrap();
        assert_eq!(doc["subject"], "resident-9");
        assert_eq!(doc["devices"][0]["id"], "home-9-bed");
        let sequences: Vec<_> = doc["readings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(sequences, [5, 4, 3, 2, 1]);
        let records: Vec<_> = doc["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r[0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            records,
            [
                "device:home-9-bed",
                "reading:home-9-bed/5",
                "reading:home-9-bed/4",
                "reading:home-9-bed/3",
                "reading:home-9-bed/2",
                "reading:home-9-bed/1"
            ]
        );
        assert_eq!(doc["consents"], serde_json::json!([]));
        // HEAD says whether there is an export without reading one; it knows what GET knows.
        let head = http(srv, "HEAD", "/api/v1/subjects/resident-9/export", "text/plain", b"");
        assert_eq!((head.status, head.body.as_str()), (200, ""), "{}", head.head);
        assert!(head.headers.contains("content-type: application/json"), "{}", head.head);
        let ghost = http(srv, "HEAD", "/api/v1/subjects/resident-10/export", "text/plain", b"");
        assert_eq!(ghost.status, 404, "{}", ghost.head);
    })
    .await;
}
