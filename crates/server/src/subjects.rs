//! Data-subject exports over HTTP (GDPR articles 15 and 20): everything held about a subject,
//! decrypted, with the log position of each record (proofs: `/api/v1/log/proof`). Allowed to
//! whoever may `read` the subject's data: the resident, their operators, administrators.

use crate::client::Client;
use crate::{auth, AppState, Problem};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_policy::Action;

pub(crate) async fn export(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    Path(subject): Path<String>,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    let tenant = tenant_of(&s, &subject).await?;
    // Whether msec holds anything about a person is itself personal data.
    let shown = format!("subject {:?}", msec_store::bounded(&subject, 64));
    auth::authorize_hidden(
        &s,
        &p,
        Action::Read,
        &resource(&tenant, &subject),
        &shown,
        peer,
    )
    .await?;
    if tenant.is_none() {
        return Err(Problem::not_found(format!("nothing is held about {shown}")));
    }
    // A tenant owns its public infrastructure; it is no person with a right of access, and
    // exporting everything every park monitor ever sent in one answer would tie the server up.
    if tenant.as_deref() == Some(subject.as_str()) {
        return Err(Problem::bad_request(format!(
            "{shown} is a tenant, not a data subject: read its devices' readings page by page (GET /api/v1/devices/{{id}}/readings)"
        )));
    }
    let export = s.db.call(move |db| db.export_subject(&subject)).await?;
    Ok(Json(export).into_response())
}

/// A subject's tenant: the tenant of its devices, or of the user it is; `None` when msec holds
/// nothing about it.
pub(crate) async fn tenant_of(s: &AppState, subject: &str) -> Result<Option<String>, Problem> {
    let lookup = subject.to_string();
    Ok(s.db
        .call(move |db| {
            let from_devices = db
                .devices()?
                .into_iter()
                .find(|d| d.owner == lookup)
                .map(|d| d.tenant);
            Ok(from_devices.or(db.user(&lookup)?.map(|u| u.tenant)))
        })
        .await?)
}

/// The resource a subject's data is under: `TENANT/SUBJECT`, or under [`auth::NO_TENANT`] for
/// a subject msec holds nothing about (so that only those who may see everything can tell).
pub(crate) fn resource(tenant: &Option<String>, subject: &str) -> String {
    match tenant {
        Some(t) => format!("{t}/{subject}"),
        None => format!("{}/{}", auth::NO_TENANT, msec_store::bounded(subject, 64)),
    }
}
