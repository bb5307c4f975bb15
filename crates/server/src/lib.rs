//! The msec HTTP surface: the JSON API (described by `/api/openapi.json`), HTTP ingest,
//! Prometheus `/metrics`, live Server-Sent Events and the embedded dashboard.
//!
//! It owns request parsing, status codes and security headers. It never decides whether a
//! reading is acceptable (that is ingest's job) and never touches SQL (that is the store's):
//! handlers translate between HTTP and those two.

mod db;
mod log;
mod problem;

pub use db::DbHandle;
pub use problem::Problem;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use msec_ingest::{Ingest, Live, Outcome, Source};
use msec_store::{Location, NewDevice, ReadingQuery};
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;

/// What every handler needs.
#[derive(Clone)]
pub struct AppState {
    pub db: DbHandle,
    pub ingest: Ingest,
    pub notary: std::sync::Arc<msec_notary::Notary>,
}

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");
const OPENAPI: &str = include_str!("../assets/openapi.json");

/// Content Security Policy for everything served: no inline script or style, nothing from
/// other origins, never framed.
pub const CSP: &str =
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/// The full router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { static_file("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/app.js",
            get(|| async { static_file("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/style.css",
            get(|| async { static_file("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/api/openapi.json",
            get(|| async { static_file("application/json", OPENAPI) }),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/api/v1/devices", get(list_devices).post(register_device))
        .route("/api/v1/devices/{id}", get(show_device))
        .route("/api/v1/devices/{id}/revoke", post(revoke_device))
        .route("/api/v1/devices/{id}/readings", get(device_readings))
        .route("/api/v1/readings", post(post_reading))
        .route("/api/v1/security-events", get(security_events))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/log", get(log::info))
        .route("/api/v1/log/checkpoint", get(log::checkpoint))
        .route("/api/v1/log/proof", get(log::proof))
        .route("/api/v1/log/consistency", get(log::consistency))
        .route("/api/v1/log/cosignatures", post(log::cosign))
        .route("/api/v1/log/alarms", post(log::alarm))
        .fallback(|| async { Problem::not_found("no such endpoint; see /api/openapi.json") })
        .layer(axum::middleware::from_fn(security_headers))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

async fn security_headers(req: Request<Body>, next: Next) -> Response {
    let api = req.uri().path().starts_with("/api/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    if api {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let engine =
        s.db.call(|db| db.schema_version().map(|v| (db.engine(), v)))
            .await?;
    Ok(Json(
        json!({"status": "ok", "database": engine.0, "schema_version": engine.1}),
    ))
}

/// Parses an optional integer query parameter, naming it in the error.
pub(crate) fn int_param(q: &HashMap<String, String>, name: &str) -> Result<Option<i64>, Problem> {
    q.get(name)
        .map(|v| {
            v.parse::<i64>().map_err(|_| {
                Problem::bad_request(format!("query parameter {name}={v:?} is not an integer"))
            })
        })
        .transpose()
}

fn limit_param(q: &HashMap<String, String>) -> Result<u32, Problem> {
    match int_param(q, "limit")? {
        None => Ok(100),
        Some(n) if (1..=1000).contains(&n) => Ok(n as u32),
        Some(n) => Err(Problem::bad_request(format!(
            "limit={n} is outside 1..=1000"
        ))),
    }
}

async fn list_devices(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let devices = s.db.call(|db| db.devices()).await?;
    Ok(Json(json!({ "devices": devices })))
}

async fn show_device(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let lookup = id.clone();
    match s.db.call(move |db| db.device(&lookup)).await? {
        Some(d) => Ok(Json(d).into_response()),
        None => Err(Problem::not_found(format!(
            "no device {:?}",
            msec_ingest::bounded(&id, 64)
        ))),
    }
}

/// Identifiers that appear in MQTT topics and URLs: short and unambiguous.
fn valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    id: String,
    tenant: String,
    /// The data subject; defaults to the tenant (public infrastructure).
    owner: Option<String>,
    name: Option<String>,
    kind: String,
    location: Option<Location>,
    /// Raw Ed25519 public key, hex.
    public_key: String,
}

/// Until identities and access control exist, changes to the registry are accepted only from
/// this machine (loopback peers); anything else is refused and recorded as a security event.
async fn require_local(s: &AppState, peer: SocketAddr, what: &str) -> Result<(), Problem> {
    if peer.ip().is_loopback() {
        return Ok(());
    }
    let detail = format!("{what} refused: registry changes are accepted only from this machine");
    let event = s
        .ingest
        .record_denial("forbidden", detail.clone(), Source::Http(peer.to_string()))
        .await;
    let mut p = Problem::new(StatusCode::FORBIDDEN, "forbidden", detail);
    p.extra = json!({ "security_event_id": event });
    Err(p)
}

async fn register_device(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: axum::body::Bytes,
) -> Result<Response, Problem> {
    require_local(&s, peer, "device registration").await?;
    let r: Registration = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("registration JSON: {e}")))?;
    let device = new_device(r)?;
    let stored = s.db.call(move |db| db.register_device(&device)).await?;
    s.ingest.refresh_device(&stored);
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

fn new_device(r: Registration) -> Result<NewDevice, Problem> {
    let owner = r.owner.unwrap_or_else(|| r.tenant.clone());
    if !valid_id(&r.id) || !valid_id(&r.tenant) || !valid_id(&owner) {
        return Err(Problem::bad_request(
            "id, tenant and owner must be 1-64 characters of A-Z a-z 0-9 . _ -",
        ));
    }
    let key: [u8; 32] = hex::decode(r.public_key.trim())
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or_else(|| {
            Problem::bad_request("public_key must be 64 hex digits (a raw Ed25519 public key)")
        })?;
    let key_id = msec_envelope::registrable_key(&key)
        .map_err(|e| Problem::bad_request(format!("public_key: {e}")))?;
    Ok(NewDevice {
        name: r.name.unwrap_or_else(|| r.id.clone()),
        id: r.id,
        tenant: r.tenant,
        owner,
        kind: r.kind,
        location: r.location,
        key_id,
        public_key: key,
    })
}

async fn revoke_device(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    require_local(&s, peer, "device revocation").await?;
    let target = id.clone();
    let device =
        s.db.call(move |db| {
            if db.revoke_device(&target, &format!("http:{peer}"))? {
                db.device(&target)
            } else {
                Ok(None)
            }
        })
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!("no device {:?}", msec_ingest::bounded(&id, 64)))
        })?;
    s.ingest.refresh_device(&device);
    Ok(Json(device).into_response())
}

async fn device_readings(
    State(s): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    let query = ReadingQuery {
        from_ms: int_param(&q, "from")?,
        to_ms: int_param(&q, "to")?,
        before_sequence: int_param(&q, "cursor")?,
        limit: limit_param(&q)?,
    };
    let limit = query.limit as usize;
    let lookup = id.clone();
    let readings =
        s.db.call(move |db| match db.device(&lookup)? {
            Some(_) => db.readings(&lookup, &query).map(Some),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!("no device {:?}", msec_ingest::bounded(&id, 64)))
        })?;
    let next = (readings.len() == limit)
        .then(|| readings.last().map(|r| r.sequence.to_string()))
        .flatten();
    Ok(Json(json!({ "readings": readings, "next_cursor": next })))
}

/// HTTP ingest: the body is one envelope (`application/cose; cose-type="cose-sign1"`).
async fn post_reading(
    State(s): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Body,
) -> Result<Response, Problem> {
    let limit = s.ingest.config().max_envelope_bytes;
    // Read one byte past the limit: enough for ingest to see, and record, that it is too big,
    // without ever buffering an attacker's gigabyte.
    let bytes = match axum::body::to_bytes(body, limit + 1).await {
        Ok(b) => b.to_vec(),
        Err(_) => vec![0u8; limit + 1],
    };
    match s.ingest.submit(bytes, Source::Http(peer.to_string())).await {
        Ok(Outcome::Stored {
            device_id,
            sequence,
        }) => Ok((
            StatusCode::CREATED,
            Json(json!({"status": "stored", "device_id": device_id, "sequence": sequence})),
        )
            .into_response()),
        Ok(Outcome::Duplicate {
            device_id,
            sequence,
        }) => Ok((
            StatusCode::OK,
            Json(json!({"status": "duplicate", "device_id": device_id, "sequence": sequence})),
        )
            .into_response()),
        Err(r) => {
            let status = match r.reason {
                "oversized" => StatusCode::PAYLOAD_TOO_LARGE,
                "malformed_envelope" | "malformed_senml" => StatusCode::BAD_REQUEST,
                "unknown_device" | "revoked_device" | "bad_signature" | "topic_mismatch" => {
                    StatusCode::FORBIDDEN
                }
                "replayed_sequence" => StatusCode::CONFLICT,
                "stale_timestamp" | "future_timestamp" => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            let mut p = Problem::new(status, r.reason, r.detail);
            p.extra = json!({"security_event_id": r.event_id});
            Err(p)
        }
    }
}

async fn security_events(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    let limit = limit_param(&q)?;
    let cursor = int_param(&q, "cursor")?;
    let events =
        s.db.call(move |db| db.security_events(limit, cursor))
            .await?;
    let next = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(json!({ "events": events, "next_cursor": next })))
}

async fn stats(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let (counts, by_reason) =
        s.db.call(|db| Ok((db.counts()?, db.security_event_counts()?)))
            .await?;
    let m = s.ingest.metrics();
    use std::sync::atomic::Ordering::Relaxed;
    Ok(Json(json!({
        "devices": counts.devices,
        "active_devices": counts.active_devices,
        "readings_stored": counts.readings,
        "accepted": m.accepted.load(Relaxed),
        "duplicates": m.duplicates.load(Relaxed),
        "rejected": counts.security_events,
        "rejected_by_reason": by_reason.into_iter().collect::<HashMap<_, _>>(),
    })))
}

/// Prometheus text exposition (version 0.0.4).
async fn metrics(State(s): State<AppState>) -> Response {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let m = s.ingest.metrics();
    let mut out = String::new();
    let mut counter = |name: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    };
    counter(
        "msec_readings_accepted_total",
        "Readings accepted and durably stored.",
        m.accepted.load(Relaxed),
    );
    counter(
        "msec_readings_duplicate_total",
        "Redelivered readings acknowledged without storing twice.",
        m.duplicates.load(Relaxed),
    );
    counter(
        "msec_ingest_batches_total",
        "Ingest transactions committed.",
        m.batches.load(Relaxed),
    );
    counter(
        "msec_ingest_storage_failures_total",
        "Batches refused because the database failed.",
        m.storage_failures.load(Relaxed),
    );
    let _ = writeln!(out, "# HELP msec_security_events_total Rejected readings, each recorded as a security event, by reason.");
    let _ = writeln!(out, "# TYPE msec_security_events_total counter");
    for (reason, n) in m.rejected() {
        let _ = writeln!(out, "msec_security_events_total{{reason=\"{reason}\"}} {n}");
    }
    if let Ok(c) = s.db.call(|db| db.counts()).await {
        let _ = writeln!(
            out,
            "# HELP msec_devices Registered devices by status.\n# TYPE msec_devices gauge"
        );
        let _ = writeln!(
            out,
            "msec_devices{{status=\"active\"}} {}",
            c.active_devices
        );
        let _ = writeln!(
            out,
            "msec_devices{{status=\"revoked\"}} {}",
            c.devices - c.active_devices
        );
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Live readings and security events as Server-Sent Events (`reading`, `security`).
async fn stream(
    State(s): State<AppState>,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = s.ingest.subscribe();
    let events = futures_util::stream::unfold(rx, |mut rx| async move {
        loop {
            let event = match rx.recv().await {
                Ok(Live::Reading(r)) => Event::default().event("reading").json_data(&*r),
                Ok(Live::Security(e)) => Event::default().event("security").json_data(&*e),
                // A slow client misses some live items; it can catch up through the API.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            match event {
                Ok(e) => return Some((Ok(e), rx)),
                Err(_) => continue,
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registry_changes_from_other_hosts_are_refused_and_recorded() {
        let dir = std::env::temp_dir().join(msec_testkit::unique("msec-local-"));
        let url = dir.join("msec.db").to_string_lossy().into_owned();
        let keys: std::sync::Arc<dyn msec_store::KekProvider> =
            std::sync::Arc::new(msec_vault::MemoryKeys::new());
        let open = || msec_store::Store::open(&url, keys.clone()).unwrap();
        let (ingest, _) = Ingest::start(open(), Default::default()).unwrap();
        let db = DbHandle::start(open()).unwrap();
        let key = msec_notary::LogKey::from_seed("test/log", [1; 32]).unwrap();
        let notary =
            msec_notary::Notary::open(open(), key, dir.join("checkpoint"), vec![], 0).unwrap();
        let state = AppState {
            db,
            ingest,
            notary: std::sync::Arc::new(notary),
        };
        // Only values here: no traffic goes to or comes from these documentation addresses.
        assert!(
            require_local(&state, "127.0.0.1:4000".parse().unwrap(), "x")
                .await
                .is_ok()
        );
        assert!(require_local(&state, "[::1]:4000".parse().unwrap(), "x")
            .await
            .is_ok());
        let refused = require_local(
            &state,
            "192.0.2.7:4000".parse().unwrap(),
            "device revocation",
        )
        .await
        .unwrap_err();
        assert_eq!(
            (refused.status, refused.code),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        assert!(refused.extra["security_event_id"].as_i64().is_some());
        let events = state
            .db
            .call(|db| db.security_events(10, None))
            .await
            .unwrap();
        assert_eq!(
            (events[0].reason.as_str(), events[0].source.as_str()),
            ("forbidden", "http 192.0.2.7:4000")
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
