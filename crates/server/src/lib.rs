//! The msec HTTP surface: the JSON API (described by `/api/openapi.json`), HTTP ingest,
//! Prometheus `/metrics`, live Server-Sent Events and the embedded dashboard.
//!
//! It owns request parsing, status codes and security headers. It never decides whether a
//! reading is acceptable (that is ingest's job) and never touches SQL (that is the store's):
//! handlers translate between HTTP and those two.

mod auth;
mod client;
mod commands;
mod db;
mod grants;
mod log;
mod problem;
mod subjects;

pub use auth::authorize;
pub use commands::Commander;
pub use db::DbHandle;
pub use problem::Problem;

use crate::client::Client;
use crate::problem::PathParam;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Request, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use msec_access::{device_resource, EventScope, Principal};
use msec_ingest::{Ingest, Live, Outcome, Source};
use msec_policy::Action;
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
    pub access: std::sync::Arc<msec_access::Access>,
    /// Actuator commands; `None` on a platform started without them.
    pub commands: Option<std::sync::Arc<Commander>>,
    /// Reverse proxies whose `X-Forwarded-For` names the client (see `client`).
    pub trusted_proxies: std::sync::Arc<[std::net::IpAddr]>,
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
        .route("/api/v1/devices/{id}/commands", post(commands::send))
        .route("/api/v1/commands/key", get(commands::key))
        .route("/api/v1/subjects/{subject}/export", get(subjects::export))
        .route("/api/v1/readings", post(post_reading))
        .route("/api/v1/security-events", get(security_events))
        .route("/api/v1/stats", get(stats))
        .route("/api/v1/stream", get(stream))
        .route("/api/v1/login", post(auth::login))
        .route("/api/v1/logout", post(auth::logout))
        .route("/api/v1/me", get(auth::me))
        .route("/api/v1/grants", get(grants::list).post(grants::create))
        .route("/api/v1/grants/{id}", axum::routing::delete(grants::revoke))
        .route("/api/v1/log", get(log::info))
        .route("/api/v1/log/checkpoint", get(log::checkpoint))
        .route("/api/v1/log/proof", get(log::proof))
        .route("/api/v1/log/consistency", get(log::consistency))
        .route("/api/v1/log/cosignatures", post(log::cosign))
        .route("/api/v1/log/alarms", post(log::alarm))
        .fallback(|| async { Problem::not_found("no such endpoint; see /api/openapi.json") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method; see /api/openapi.json",
            )
        })
        .layer(axum::middleware::from_fn(security_headers))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client::forwarded_proto_from_proxies_only,
        ))
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
    // Answers that depend on who asks (the API, and /metrics, read with a session too) are
    // kept by no cache, the browser's and shared proxies' included.
    let private = req.uri().path().starts_with("/api/") || req.uri().path() == "/metrics";
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
    if private {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

async fn healthz(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let engine =
        s.db.call(|db| db.schema_version().map(|v| (db.engine(), v)))
            .await?;
    // Reading works, but ingest cannot commit (a full disk, a read-only file): not healthy.
    if s.ingest
        .metrics()
        .commit_failing
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the database refuses commits; ingest is waiting for it (see the log)",
        ));
    }
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

/// Only the devices the caller may read are listed (no security event: filtering is not a
/// refused request).
async fn list_devices(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    let now = msec_store::now_ms();
    let devices: Vec<_> =
        s.db.call(|db| db.devices())
            .await?
            .into_iter()
            .filter(|d| {
                s.access
                    .decide(
                        &p,
                        Action::Read,
                        &device_resource(&d.tenant, &d.owner, &d.id),
                        now,
                    )
                    .allowed
            })
            .collect();
    Ok(Json(json!({ "devices": devices })))
}

/// The device, once the caller may perform `action` on its data.
pub(crate) async fn device_for(
    s: &AppState,
    p: &msec_access::Principal,
    id: &str,
    action: Action,
    peer: SocketAddr,
) -> Result<msec_store::Device, Problem> {
    let lookup = id.to_string();
    let d = s.db.call(move |db| db.device(&lookup)).await?;
    let shown = format!("device {:?}", msec_store::bounded(id, 64));
    let resource = match &d {
        Some(d) => device_resource(&d.tenant, &d.owner, &d.id),
        None => device_resource(
            auth::NO_TENANT,
            auth::NO_TENANT,
            &msec_store::bounded(id, 64),
        ),
    };
    auth::authorize_hidden(s, p, action, &resource, &shown, peer).await?;
    d.ok_or_else(|| Problem::not_found(format!("no {shown}")))
}

async fn show_device(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    Ok(Json(device_for(&s, &p, &id, Action::Read, peer).await?).into_response())
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

async fn register_device(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, true).await?;
    let body = small_body(body, 4096, "a registration").await?;
    let r: Registration = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("registration JSON: {e}")))?;
    // Permission first: a caller who may not register here learns nothing from the checks
    // below, and the attempt is recorded. `manage` on the whole tenant, not on the device's
    // path: device ids and keys are unique across msec, so a registration claims them for
    // good, and its conflicts tell whether they are taken (a resident, who manages her own
    // path, could otherwise take the id or public key of a device about to be installed,
    // and with the key receive its readings over HTTP).
    if !msec_store::valid_tenant(&r.tenant) {
        return Err(Problem::bad_request(msec_store::TENANT_RULE));
    }
    auth::authorize(&s, &p, Action::Manage, &r.tenant, peer).await?;
    let device = new_device(r)?;
    let stored = s.db.call(move |db| db.register_device(&device)).await?;
    s.ingest.refresh_device(&stored);
    Ok((StatusCode::CREATED, Json(stored)).into_response())
}

fn new_device(r: Registration) -> Result<NewDevice, Problem> {
    // Ids, tenant and owner are checked where every registration passes: the store.
    let owner = r.owner.unwrap_or_else(|| r.tenant.clone());
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
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, true).await?;
    device_for(&s, &p, &id, Action::Manage, peer).await?;
    let target = id.clone();
    let actor = p.id.clone();
    let device =
        s.db.call(move |db| {
            if db.revoke_device(&target, &actor)? {
                db.device(&target)
            } else {
                Ok(None)
            }
        })
        .await?
        // It exists (checked above): it was revoked already.
        .ok_or_else(|| {
            Problem::new(
                StatusCode::CONFLICT,
                "conflict",
                format!(
                    "device {:?} is already revoked",
                    msec_store::bounded(&id, 64)
                ),
            )
        })?;
    s.ingest.refresh_device(&device);
    Ok(Json(device).into_response())
}

async fn device_readings(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(id): PathParam,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    device_for(&s, &p, &id, Action::Read, peer).await?;
    let query = ReadingQuery {
        from_ms: int_param(&q, "from")?,
        to_ms: int_param(&q, "to")?,
        before_sequence: int_param(&q, "cursor")?,
        limit: limit_param(&q)?,
    };
    if let (Some(from), Some(to)) = (query.from_ms, query.to_ms) {
        if from > to {
            return Err(Problem::bad_request(format!(
                "from ({from}) is after to ({to}); both are Unix times in milliseconds"
            )));
        }
    }
    let limit = query.limit as usize;
    let lookup = id.clone();
    let readings =
        s.db.call(move |db| match db.device(&lookup)? {
            Some(_) => db.readings(&lookup, &query).map(Some),
            None => Ok(None),
        })
        .await?
        .ok_or_else(|| {
            Problem::not_found(format!("no device {:?}", msec_store::bounded(&id, 64)))
        })?;
    let next = (readings.len() == limit)
        .then(|| readings.last().map(|r| r.sequence.to_string()))
        .flatten();
    Ok(Json(json!({ "readings": readings, "next_cursor": next })))
}

/// The problem code of a body the client stopped sending: its own doing, never recorded.
pub(crate) const UNREADABLE_BODY: &str = "unreadable_body";

/// The longest `POST /api/v1/readings` waits for its commit.
const READING_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a request body of at most `max` bytes; `None` when it is longer (nothing past `max + 1`
/// bytes is read). Extractors like `Bytes` would buffer up to axum's 2 MB default first.
pub(crate) async fn read_at_most(body: Body, max: usize) -> Result<Option<Vec<u8>>, Problem> {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        // A client that hangs up mid-body: nothing to refuse, nothing to record.
        let chunk = chunk.map_err(|_| {
            Problem::new(
                StatusCode::BAD_REQUEST,
                UNREADABLE_BODY,
                "the request body could not be read",
            )
        })?;
        if out.len() + chunk.len() > max {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}

/// [`read_at_most`] for small JSON or text requests: a longer body is a 413.
pub(crate) async fn small_body(body: Body, max: usize, what: &str) -> Result<Vec<u8>, Problem> {
    read_at_most(body, max).await?.ok_or_else(|| {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "oversized",
            format!("{what} is at most {max} bytes"),
        )
    })
}

/// HTTP ingest: the body is one envelope (`application/cose; cose-type="cose-sign1"`).
async fn post_reading(
    State(s): State<AppState>,
    Client(peer): Client,
    body: Body,
) -> Result<Response, Problem> {
    let limit = s.ingest.config().max_envelope_bytes;
    // Read one byte past the limit: enough for ingest to see, and record, that it is too big,
    // without ever buffering an attacker's gigabyte.
    let bytes = read_at_most(body, limit)
        .await?
        .unwrap_or_else(|| vec![0u8; limit + 1]);
    // An outage holds ingest up (docs/operations.md); an HTTP device hears so after a while
    // instead of waiting on an open connection. Its reading may still be stored once the
    // database is back: sending it again is acknowledged as a duplicate.
    let submitted = tokio::time::timeout(
        READING_WAIT,
        s.ingest.submit(bytes, Source::Http(peer.to_string())),
    )
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the database is not answering; send the reading again later (a resend of a \
             reading already stored is acknowledged as a duplicate)",
        )
    })?;
    match submitted {
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
    Client(peer): Client,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Json<serde_json::Value>, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    let tenants = event_tenants(&s, &p, peer).await?;
    let limit = limit_param(&q)?;
    let cursor = int_param(&q, "cursor")?;
    let events =
        s.db.call(move |db| db.security_events(limit, cursor, tenants.as_deref()))
            .await?;
    let next = (events.len() == limit as usize)
        .then(|| events.last().map(|e| e.id.to_string()))
        .flatten();
    Ok(Json(json!({ "events": events, "next_cursor": next })))
}

/// The tenants whose security events `p` may read (None: all, platform-wide ones included);
/// refused, with its event, when none.
async fn event_tenants(
    s: &AppState,
    p: &Principal,
    peer: SocketAddr,
) -> Result<Option<Vec<String>>, Problem> {
    match s.access.event_scope(p, msec_store::now_ms()) {
        EventScope::All => Ok(None),
        EventScope::Tenants(t) if !t.is_empty() => Ok(Some(t)),
        // Refused as a request for all of them, which says what would allow it.
        EventScope::Tenants(_) => {
            auth::authorize(s, p, Action::Audit, msec_access::SECURITY_EVENTS, peer).await?;
            Ok(None)
        }
    }
}

/// Counts only, nothing about any one person: any authenticated caller may see them.
async fn stats(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, Problem> {
    auth::caller(&s, &headers, peer, false).await?;
    let (counts, by_reason) = s.db.stats().await?;
    let m = s.ingest.metrics();
    use std::sync::atomic::Ordering::Relaxed;
    Ok(Json(json!({
        "devices": counts.devices,
        "active_devices": counts.active_devices,
        "readings_stored": counts.readings,
        "accepted": m.accepted.load(Relaxed),
        "duplicates": m.duplicates.load(Relaxed),
        "rejected": counts.security_events,
        // Refusals past the event budget since start: counted, not stored one by one.
        "rejected_not_stored": m.suppressed.load(Relaxed),
        "rejected_by_reason": by_reason.into_iter().collect::<HashMap<_, _>>(),
    })))
}

/// Prometheus text exposition (version 0.0.4), for callers allowed to audit (a scraper uses an
/// API token with the `audit` scope).
async fn metrics(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    // Platform-wide counts, nothing about any one event: for anyone who audits events.
    event_tenants(&s, &p, peer).await?;
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
        "Commit attempts the database failed (each is retried; ingest waits meanwhile).",
        m.storage_failures.load(Relaxed),
    );
    counter(
        "msec_mqtt_qos0_dropped_total",
        "QoS 0 readings dropped because too many were already waiting (devices must publish with QoS 1).",
        m.qos0_dropped.load(Relaxed),
    );
    counter(
        "msec_security_events_suppressed_total",
        "Refusals past the event budget: counted by reason below and in events_suppressed events, not stored one by one.",
        m.suppressed.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP msec_ingest_commit_failing 1 while the database refuses ingest's work (ingest waits).\n# TYPE msec_ingest_commit_failing gauge\nmsec_ingest_commit_failing {}",
        u8::from(m.commit_failing.load(Relaxed))
    );
    let _ = writeln!(out, "# HELP msec_security_events_total Refusals by reason, each recorded as a security event of its own or, past the event budget, counted in an events_suppressed event.");
    let _ = writeln!(out, "# TYPE msec_security_events_total counter");
    for (reason, n) in m.rejected() {
        let _ = writeln!(out, "msec_security_events_total{{reason=\"{reason}\"}} {n}");
    }
    if let Ok((c, _)) = s.db.stats().await {
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
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response())
}

/// Live readings and security events as Server-Sent Events (`reading`, `security`), each
/// delivered only if the caller may `subscribe` to that device's data (or `audit`, for security
/// events) at that moment: a grant revoked while the stream is open stops delivery at once. The
/// caller's session or token is re-checked every few seconds; once it is gone the stream ends.
async fn stream(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>>, Problem>
{
    let p = auth::caller(&s, &headers, peer, false).await?;
    let rx = s.ingest.subscribe();
    let state = StreamState {
        s,
        p,
        headers,
        peer,
        owners: HashMap::new(),
        checked: std::time::Instant::now(),
    };
    let events = futures_util::stream::unfold((rx, state), |(mut rx, mut st)| async move {
        loop {
            // Re-check the caller at least every 3 s, also while no event comes, and before
            // delivering one that arrives later than that: a wait for the next event must not
            // carry an old check past a logout.
            let due = st.checked + RECHECK_EVERY;
            let item = tokio::select! {
                item = rx.recv() => Some(item),
                _ = tokio::time::sleep_until(due.into()) => None,
            };
            if st.checked.elapsed() >= RECHECK_EVERY {
                match auth::caller(&st.s, &st.headers, st.peer, false).await {
                    Ok(p) => st.p = p,
                    Err(_) => return None,
                }
                st.checked = std::time::Instant::now();
            }
            let Some(item) = item else { continue };
            let now = msec_store::now_ms();
            let event = match item {
                Ok(Live::Reading(r)) => {
                    let Some(resource) = st.resource(&r.device_id).await else {
                        continue;
                    };
                    if !st
                        .s
                        .access
                        .decide(&st.p, Action::Subscribe, &resource, now)
                        .allowed
                    {
                        continue;
                    }
                    Event::default().event("reading").json_data(&*r)
                }
                Ok(Live::Security(e)) => {
                    if !st.s.access.may_read_event(&st.p, e.tenant.as_deref(), now) {
                        continue;
                    }
                    Event::default().event("security").json_data(&*e)
                }
                // A slow client misses some live items; it can catch up through the API.
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            };
            match event {
                Ok(e) => return Some((Ok(e), (rx, st))),
                Err(_) => continue,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// How long a live stream relies on one check of its session or token.
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(3);

struct StreamState {
    s: AppState,
    p: msec_access::Principal,
    headers: HeaderMap,
    peer: SocketAddr,
    /// device id -> its resource path, looked up once per stream.
    owners: HashMap<String, String>,
    checked: std::time::Instant,
}

impl StreamState {
    async fn resource(&mut self, device: &str) -> Option<String> {
        if let Some(r) = self.owners.get(device) {
            return Some(r.clone());
        }
        let id = device.to_string();
        let d = self.s.db.call(move |db| db.device(&id)).await.ok()??;
        let r = device_resource(&d.tenant, &d.owner, &d.id);
        if self.owners.len() < 10_000 {
            self.owners.insert(device.to_string(), r.clone());
        }
        Some(r)
    }
}
