//! Grants over HTTP: residents authorise (and revoke) caregivers for their own devices;
//! administrators manage any. Authority over a grant is `manage` on the literal prefix of its
//! resource pattern (`santander/resident-007/**` needs `manage` on `santander/resident-007`).

use crate::client::Client;
use crate::problem::PathParam;
use crate::{auth, AppState, Problem};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_policy::{Action, Pattern};
use msec_store::NewGrant;
use serde_json::json;

/// The part of a pattern before its first wildcard: what a grant is about.
pub(crate) fn scope(pattern: &str) -> String {
    pattern
        .split('/')
        .take_while(|seg| !seg.contains('*'))
        .collect::<Vec<_>>()
        .join("/")
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct GrantRequest {
    /// A principal id (`caregiver-ana`) or `role:NAME`.
    principal: String,
    actions: Vec<String>,
    resource: String,
    valid_from_ms: Option<i64>,
    valid_until_ms: Option<i64>,
    purpose: Option<String>,
}

pub(crate) async fn create(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, true).await?;
    let body = crate::small_body(body, 4096, "a grant").await?;
    let g: GrantRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("grant JSON: {e}")))?;
    let bad_subject = g.principal.is_empty()
        || g.principal.len() > 64
        || !g
            .principal
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b));
    if bad_subject {
        return Err(Problem::bad_request(
            "principal must be 1-64 characters of A-Z a-z 0-9 - _ . : @",
        ));
    }
    for a in &g.actions {
        a.parse::<Action>()
            .map_err(|e| Problem::bad_request(e.to_string()))?;
    }
    if g.actions.is_empty() {
        return Err(Problem::bad_request("a grant needs at least one action"));
    }
    msec_store::valid_grant_resource(&g.resource).map_err(Problem::bad_request)?;
    g.resource
        .parse::<Pattern>()
        .map_err(|e| Problem::bad_request(format!("resource: {e}")))?;
    let scope = scope(&g.resource);
    if scope.is_empty() {
        return Err(Problem::bad_request(
            "a grant's resource must start with a literal tenant",
        ));
    }
    auth::authorize(&s, &p, Action::Manage, &scope, peer).await?;
    if let Err(d) = s.access.count_grant_change(&p, msec_store::now_ms()) {
        return Ok(auth::refusal_response(&s, d, peer).await);
    }
    let new = NewGrant {
        effect: "allow".into(),
        subject: g.principal,
        actions: g.actions,
        resource: g.resource,
        valid_from_ms: g.valid_from_ms,
        valid_until_ms: g.valid_until_ms,
        purpose: g.purpose,
    };
    let actor = p.id.clone();
    let grant = s.db.call(move |db| db.add_grant(&new, &actor)).await?;
    reload(&s).await?;
    Ok((StatusCode::CREATED, Json(grant)).into_response())
}

/// Makes a change visible to the very next decision, open streams included.
async fn reload(s: &AppState) -> Result<(), Problem> {
    let a = s.access.clone();
    tokio::task::spawn_blocking(move || a.reload())
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "reload failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "cannot reload access rules");
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "retry later",
            )
        })
}

pub(crate) async fn revoke(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(id): PathParam,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, true).await?;
    let id: i64 = id
        .parse()
        .map_err(|_| Problem::bad_request("a grant id is a number (see GET /api/v1/grants)"))?;
    let grant =
        s.db.call(move |db| Ok(db.grants()?.into_iter().find(|g| g.id == id)))
            .await?;
    // A deny is a safeguard set over someone: lifting it takes managing the whole tenant, not
    // just the resources it covers (a resident manages her own data, yet must not lift a deny
    // an administrator set on it). Which grants exist is not everyone's to probe: an unknown
    // id is refused like a foreign one, except to those who may manage everything.
    let needed = match &grant {
        Some(g) if g.effect == "deny" => scope(&g.resource)
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string(),
        Some(g) => scope(&g.resource),
        None => auth::NO_TENANT.to_string(),
    };
    let shown = format!("grant {id}");
    auth::authorize_hidden(&s, &p, Action::Manage, &needed, &shown, peer).await?;
    if grant.is_none() {
        return Err(Problem::not_found(format!("no active grant {id}")));
    }
    if let Err(d) = s.access.count_grant_change(&p, msec_store::now_ms()) {
        return Ok(auth::refusal_response(&s, d, peer).await);
    }
    let actor = p.id.clone();
    s.db.call(move |db| db.revoke_grant(id, &actor)).await?;
    reload(&s).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The active grants the caller may manage.
pub(crate) async fn list(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    let now = msec_store::now_ms();
    let grants: Vec<_> =
        s.db.call(|db| db.grants())
            .await?
            .into_iter()
            .filter(|g| {
                s.access
                    .decide(&p, Action::Manage, &scope(&g.resource), now)
                    .allowed
            })
            .collect();
    Ok(Json(json!({ "grants": grants })).into_response())
}
