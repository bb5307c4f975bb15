//! Data-subject exports over HTTP (GDPR articles 15 and 20): everything held about a subject,
//! decrypted, with the log position of each record (proofs: `/api/v1/log/proof`). Allowed to
//! whoever may `read` the subject's data: the resident, their operators, administrators.

use crate::client::Client;
use crate::problem::PathParam;
use crate::{auth, AppState, Problem};
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_policy::Action;

pub(crate) async fn export(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(subject): PathParam,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    // Whether msec holds anything about a person is itself personal data.
    let shown = format!("subject {:?}", msec_store::bounded(&subject, 64));
    let tenants = authorize(&s, &p, Action::Read, &subject, &shown, peer).await?;
    if tenants.is_empty() {
        return Err(Problem::not_found(format!("nothing is held about {shown}")));
    }
    // A tenant owns its public infrastructure; it is no person with a right of access, and
    // exporting everything every park monitor ever sent in one answer would tie the server up.
    if tenants.contains(&subject) {
        return Err(Problem::bad_request(format!(
            "{shown} is a tenant, not a data subject: read its devices' readings page by page (GET /api/v1/devices/{{id}}/readings)"
        )));
    }
    let export = s.db.call(move |db| db.export_subject(&subject)).await?;
    Ok(Json(export).into_response())
}

/// Allows or refuses `action` on a subject's data, `TENANT/SUBJECT`, in every tenant it has
/// data in (one, unless data predates that rule: an export holds them all); returns those
/// tenants. A subject msec holds nothing about is checked under [`auth::NO_TENANT`], so that
/// only those who may see everything can tell it from a forbidden one.
pub(crate) async fn authorize(
    s: &AppState,
    p: &msec_access::Principal,
    action: Action,
    subject: &str,
    shown: &str,
    peer: std::net::SocketAddr,
) -> Result<Vec<String>, Problem> {
    let lookup = subject.to_string();
    let tenants = s.db.call(move |db| db.subject_tenants(&lookup)).await?;
    if tenants.is_empty() {
        let unknown = format!("{}/{}", auth::NO_TENANT, msec_store::bounded(subject, 64));
        auth::authorize_hidden(s, p, action, &unknown, shown, peer).await?;
    }
    for tenant in &tenants {
        let resource = format!("{tenant}/{subject}");
        auth::authorize_hidden(s, p, action, &resource, shown, peer).await?;
    }
    Ok(tenants)
}
