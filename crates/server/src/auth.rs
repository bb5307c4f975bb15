//! HTTP side of access control: who is calling (session cookie or bearer token), CSRF for
//! cookie-authenticated changes, login/logout, and turning every refusal into exactly one
//! security event and a problem+json answer.

use crate::client::Client;
use crate::{AppState, Problem};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_access::{Denied, Principal};
use msec_ingest::Source;
use msec_policy::Action;
use serde_json::json;
use std::net::SocketAddr;

/// The session cookie's name over plain HTTP (the loopback demo).
const COOKIE: &str = "msec_session";
/// Its name over HTTPS: browsers keep a `__Host-` cookie only if it is `Secure`, has `Path=/`
/// and no `Domain`, so another host of the same site (a sibling subdomain) cannot plant one
/// and log a visitor into its own account.
const SECURE_COOKIE: &str = "__Host-msec_session";

/// The name the session cookie has on this request's transport; only that one is read.
fn cookie_name(headers: &HeaderMap) -> &'static str {
    if crate::client::over_https(headers) {
        SECURE_COOKIE
    } else {
        COOKIE
    }
}

fn now_ms() -> i64 {
    msec_store::now_ms()
}

/// Records the refusal as a security event and answers with the matching status.
pub(crate) async fn refuse(s: &AppState, d: Denied, peer: SocketAddr) -> Problem {
    if d.reason == msec_access::UNAVAILABLE {
        // Nobody was refused: the database could not answer.
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, d.reason, d.detail);
    }
    let who = d.principal.clone().unwrap_or_else(|| "-".into());
    let rule = d.rule.as_deref().unwrap_or("-").to_owned();
    // Resources and names in the detail come from the request: bound them before they reach
    // the log and the dashboard.
    let detail = msec_store::bounded(&format!("{} (principal {who}, rule {rule})", d.detail), 600);
    let event = s
        .ingest
        .record_denial(
            d.reason,
            detail,
            Source::Http(peer.to_string()),
            d.tenant.map(String::from),
        )
        .await;
    let status = match d.reason {
        "unauthenticated" | "invalid_token" | "login_failed" => StatusCode::UNAUTHORIZED,
        "rate_limited" => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::FORBIDDEN,
    };
    let mut p = Problem::new(status, d.reason, d.answer.map_or(d.detail, String::from));
    p.extra = json!({ "security_event_id": event });
    p
}

/// [`refuse`] as a response, with `Retry-After` when the refusal says how long to wait.
pub(crate) async fn refusal_response(s: &AppState, d: Denied, peer: SocketAddr) -> Response {
    let retry_after = d.retry_after_s;
    let mut resp = refuse(s, d, peer).await.into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    let name = cookie_name(headers);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| {
            kv.trim()
                .strip_prefix(name)?
                .strip_prefix('=')
                .map(str::to_string)
        })
}

/// Runs a blocking access call off the async workers.
async fn blocking<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&msec_access::Access) -> T + Send + 'static,
) -> T {
    let a = s.access.clone();
    tokio::task::spawn_blocking(move || f(&a))
        .await
        .expect("access calls do not panic")
}

/// The authenticated caller. `changes` marks state-changing requests: with a session cookie
/// they must also carry the session's CSRF token in `X-CSRF-Token`.
pub(crate) async fn caller(
    s: &AppState,
    headers: &HeaderMap,
    peer: SocketAddr,
    changes: bool,
) -> Result<Principal, Problem> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    let result = if let Some(token) = bearer {
        blocking(s, move |a| a.token(&token, now_ms())).await
    } else if let Some(secret) = cookie(headers) {
        let csrf = headers
            .get("x-csrf-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let check = secret.clone();
        match blocking(s, move |a| a.session(&check)).await {
            Ok(p)
                if changes
                    && !msec_access::same_secret(&csrf, &msec_access::csrf_token(&secret)) =>
            {
                Err(Denied::new(
                    "csrf_failed",
                    "a change made with a session cookie needs the session's X-CSRF-Token header",
                )
                .of(&p))
            }
            other => other,
        }
    } else {
        Err(Denied::new(
            "unauthenticated",
            "log in (POST /api/v1/login) or send Authorization: Bearer <API token>",
        ))
    };
    match result {
        Ok(p) => Ok(p),
        Err(d) => Err(refuse(s, d, peer).await),
    }
}

/// Allows or refuses (with its one security event) `action` on `resource` for `p`. Every
/// endpoint's permission check goes through here.
pub async fn authorize(
    s: &AppState,
    p: &Principal,
    action: Action,
    resource: &str,
    peer: SocketAddr,
) -> Result<(), Problem> {
    match s.access.require(p, action, resource, now_ms()) {
        Ok(()) => Ok(()),
        Err(d) => Err(refuse(s, d, peer).await),
    }
}

/// Stands for the tenant of something that does not exist. No tenant can be named `*`, so
/// only platform-wide permissions (administrators) cover a resource under it.
pub(crate) const NO_TENANT: &str = "*";

/// [`authorize`] for things whose existence is itself information (a device, a person): the
/// caller passes a resource under [`NO_TENANT`] for one that does not exist, and a refusal
/// reads the same either way, so that only those who may see everything can tell unknown from
/// forbidden. The security event keeps the full detail.
pub(crate) async fn authorize_hidden(
    s: &AppState,
    p: &Principal,
    action: Action,
    resource: &str,
    what: &str,
    peer: SocketAddr,
) -> Result<(), Problem> {
    authorize(s, p, action, resource, peer)
        .await
        .map_err(|mut e| {
            e.detail = format!("you may not {action} {what}");
            e
        })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    user: String,
    password: String,
}

/// `Secure` (and the `__Host-` name) when the request reached us over HTTPS, through a trusted
/// proxy that says so; browsers refuse Secure cookies over plain HTTP, which is what the
/// loopback demo speaks.
fn set_cookie(headers: &HeaderMap, value: &str, max_age_s: i64) -> HeaderValue {
    let name = cookie_name(headers);
    let secure = if name == SECURE_COOKIE {
        "; Secure"
    } else {
        ""
    };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path=/; Max-Age={max_age_s}{secure}"
    ))
    .expect("cookie values are base64url")
}

pub(crate) async fn login(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    // A login needs no session, so no CSRF token guards it; a JSON content type does. A form on
    // another site can post only form or plain-text bodies without the browser asking us first,
    // and could otherwise log a visitor into the attacker's account (login CSRF).
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a login is JSON: send Content-Type: application/json",
        ));
    }
    let body = crate::small_body(body, 4096, "a login").await?;
    let l: Login = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("login JSON: {e}")))?;
    let from = peer.ip().to_string();
    // Each Argon2id check holds 19 MiB and a core for a while: a burst of logins (from many
    // addresses, each under its throttle) waits for a turn here, not in a blocking thread.
    static PASSWORD_CHECKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(4);
    // The turn moves into the blocking work: a client that hangs up cannot free it while its
    // check still runs. (The semaphore is never closed, so acquiring cannot fail.)
    let turn = PASSWORD_CHECKS.acquire().await.ok();
    let checked = blocking(&s, move |a| {
        let _turn = turn;
        a.login(&l.user, &l.password, &from, now_ms())
    });
    match checked.await {
        Ok(session) => {
            let max_age = (session.expires_ms - now_ms()) / 1000;
            let mut resp = Json(json!({
                "principal": session.principal,
                "csrf": session.csrf,
                "expires_ms": session.expires_ms,
            }))
            .into_response();
            resp.headers_mut().insert(
                header::SET_COOKIE,
                set_cookie(&headers, &session.secret, max_age),
            );
            Ok(resp)
        }
        Err(d) => Ok(refusal_response(&s, d, peer).await),
    }
}

pub(crate) async fn logout(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    caller(&s, &headers, peer, true).await?;
    if let Some(secret) = cookie(&headers) {
        let _ = blocking(&s, move |a| a.logout(&secret)).await;
    }
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&headers, "", 0));
    Ok(resp)
}

/// Who am I, and (for a session) the CSRF token to send with changes.
pub(crate) async fn me(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = caller(&s, &headers, peer, false).await?;
    let csrf = cookie(&headers).map(|c| msec_access::csrf_token(&c));
    // Whether the security page has anything to show this caller.
    let may_audit = s.access.event_scope(&p, now_ms()) != msec_access::EventScope::Tenants(vec![]);
    Ok(Json(json!({ "principal": p, "csrf": csrf, "may_audit": may_audit })).into_response())
}
