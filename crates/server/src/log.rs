//! The transparency log over HTTP: checkpoints (C2SP text), inclusion and consistency proofs
//! (JSON, hashes in hex), and the witness side: cosignatures in, alarms in. Heads and
//! consistency proofs are public; an inclusion proof is looked up by record id, so it needs
//! the right to see that record.

use crate::client::Client;
use crate::{auth, AppState, Problem};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_ingest::Source;
use msec_notary::{Notary, NotaryError};
use msec_policy::Action;
use msec_store::{RecordId, RecordKind};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// Largest cosigned note or alarm accepted: a checkpoint with a few dozen signature lines.
const MAX_NOTE_BYTES: usize = 8 * 1024;

impl From<NotaryError> for Problem {
    fn from(e: NotaryError) -> Problem {
        match e {
            NotaryError::Store(e) => e.into(),
            NotaryError::NotFound(m) => Problem::not_found(m),
            NotaryError::Refused(m) => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", m),
            NotaryError::Checkpoint(e) => {
                Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "refused", e.to_string())
            }
            NotaryError::Io(m) => {
                tracing::error!(error = %m, "log state unavailable");
                Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "log_unavailable",
                    "the log is unavailable; retry later",
                )
            }
        }
    }
}

/// Runs a (blocking) notary call off the async workers.
async fn notary<T: Send + 'static>(
    s: &AppState,
    f: impl FnOnce(&Notary) -> Result<T, NotaryError> + Send + 'static,
) -> Result<T, Problem> {
    let n: Arc<Notary> = s.notary.clone();
    tokio::task::spawn_blocking(move || f(&n))
        .await
        .map_err(|_| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "log task failed",
            )
        })?
        .map_err(Problem::from)
}

fn note(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

pub(crate) async fn info(State(s): State<AppState>) -> Result<Json<serde_json::Value>, Problem> {
    let final_size = notary(&s, |n| n.final_size()).await?;
    let n = &s.notary;
    Ok(Json(json!({
        "origin": n.origin(),
        "verifier_key": n.verifier_key(),
        "size": n.size(),
        "final_size": final_size,
        "quorum": n.quorum(),
        "witnesses": n.witnesses().iter().map(|w| json!({"name": w.name, "verifier_key": w.verifier_key})).collect::<Vec<_>>(),
    })))
}

/// `?size=N` asks for the checkpoint of that size (witnesses and auditors replaying history).
pub(crate) async fn checkpoint(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let size = crate::int_param(&q, "size")?;
    let text = notary(&s, move |n| match size {
        Some(size) => n.checkpoint_at(size.max(0) as u64),
        None => n.latest(),
    })
    .await?
    .ok_or_else(|| Problem::not_found("no such checkpoint has been published (yet)"))?;
    Ok(note(text))
}

/// An inclusion proof for one record, to whoever may see the record. The log's heads and
/// consistency proofs are public, but a lookup by record id is not: that a reading with a given
/// sequence exists, or where it sits in the log, tells when a resident's sensor reported.
pub(crate) async fn proof(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, false).await?;
    let record: RecordId = q
        .get("record")
        .ok_or_else(|| Problem::bad_request("give ?record=KIND:REFERENCE, e.g. reading:park-1/42"))?
        .parse()
        .map_err(Problem::bad_request)?;
    match record.kind {
        RecordKind::Reading | RecordKind::Device => {
            // `reading:DEVICE/SEQUENCE`; device ids hold no '/'.
            let device = record.reference.split('/').next().unwrap_or_default();
            crate::device_for(&s, &p, device, Action::Read, peer).await?;
        }
        // A consent is the subject's: hers to see, and her tenant's operators'.
        RecordKind::Consent => {
            let id = record.reference.parse::<i64>().unwrap_or(-1);
            let subject = s.db.call(move |db| db.consent_subject(id)).await?;
            let shown = format!("consent {}", msec_store::bounded(&record.reference, 24));
            // An unknown consent is checked as a subject msec holds nothing about.
            let subject = subject.unwrap_or_else(|| record.reference.clone());
            crate::subjects::authorize(&s, &p, Action::Read, &subject, &shown, peer).await?;
        }
        // An event is its tenant's auditors' too; an unknown one reads as forbidden to them.
        RecordKind::Event => {
            let id = record.reference.parse::<i64>().unwrap_or(-1);
            let tenant = s.db.call(move |db| db.security_event_tenant(id)).await?;
            let theirs = tenant.is_some_and(|t| {
                s.access
                    .may_read_event(&p, t.as_deref(), msec_store::now_ms())
            });
            if !theirs {
                let shown = format!("event {}", msec_store::bounded(&record.reference, 24));
                let all = msec_access::SECURITY_EVENTS;
                auth::authorize_hidden(&s, &p, Action::Audit, all, &shown, peer).await?;
            }
        }
        RecordKind::Admin => {
            auth::authorize(&s, &p, Action::Audit, msec_access::SECURITY_EVENTS, peer).await?
        }
    }
    let inclusion = notary(&s, move |n| n.inclusion(&record)).await?;
    Ok(Json(inclusion).into_response())
}

pub(crate) async fn consistency(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Problem> {
    let (Some(from), Some(to)) = (crate::int_param(&q, "from")?, crate::int_param(&q, "to")?)
    else {
        return Err(Problem::bad_request("give ?from=OLD_SIZE&to=NEW_SIZE"));
    };
    if from <= 0 || to < from {
        return Err(Problem::bad_request("sizes must satisfy 0 < from <= to"));
    }
    let proof = notary(&s, move |n| n.consistency(from as u64, to as u64)).await?;
    Ok(Json(json!({
        "from": from,
        "to": to,
        "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
    }))
    .into_response())
}

/// A witness posts the checkpoint with its cosignature line appended.
pub(crate) async fn cosign(
    State(s): State<AppState>,
    Client(peer): Client,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let text = match crate::small_body(body, MAX_NOTE_BYTES, "a cosigned checkpoint")
        .await
        .and_then(|b| {
            String::from_utf8(b).map_err(|_| Problem::bad_request("a checkpoint is UTF-8 text"))
        }) {
        Ok(text) => text,
        Err(p) => return Err(record_refusal(&s, p, "bad_cosignature", "malformed", peer).await),
    };
    match notary(&s, move |n| n.add_cosignature(&text)).await {
        Ok(witness) => {
            Ok((StatusCode::CREATED, Json(json!({ "witness": witness }))).into_response())
        }
        Err(p) => Err(record_refusal(&s, p, "bad_cosignature", "refused", peer).await),
    }
}

/// Refusals of what claims to come from a witness are security events (a stranger probing or
/// forging them), the problem naming its event: a malformed request, or what the notary found
/// not to verify (422). The notary's other failures are the server's, not the caller's.
async fn record_refusal(
    s: &AppState,
    mut p: Problem,
    reason: &'static str,
    what: &str,
    peer: SocketAddr,
) -> Problem {
    let callers_fault = p.status.is_client_error() && p.code != crate::UNREADABLE_BODY;
    if callers_fault {
        let detail = format!("{what}: {}", msec_store::bounded(&p.detail, 300));
        let event = s
            .ingest
            .record_denial(reason, detail, Source::Http(peer.to_string()), None)
            .await;
        p.extra = json!({ "security_event_id": event });
    }
    p
}

#[derive(serde::Deserialize)]
struct Alarm {
    witness: String,
    kind: String,
    detail: String,
    /// Unix seconds, signed with the rest.
    #[serde(default)]
    time: u64,
    /// By the witness's cosigning key (`CosignerKey::sign_alarm`). Missing or empty, the alarm
    /// is refused like a forged one (and recorded), not as a malformed request.
    #[serde(default)]
    signature: String,
}

/// A configured witness reports that the log showed it a rollback or a split view. Recorded as
/// a security event once its signature checks out; the alarm's own text is bounded, never
/// trusted. An alarm nobody configured signed is refused and recorded as `bad_alarm`, so that
/// a stranger cannot raise false alarms.
pub(crate) async fn alarm(
    State(s): State<AppState>,
    Client(peer): Client,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let a: Alarm = match crate::small_body(body, MAX_NOTE_BYTES, "an alarm")
        .await
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| Problem::bad_request(format!("alarm JSON: {e}")))
        }) {
        Ok(a) => a,
        Err(p) => return Err(record_refusal(&s, p, "bad_alarm", "malformed alarm", peer).await),
    };
    let (time, witness, kind, detail, signature) = (
        a.time,
        a.witness.clone(),
        a.kind.clone(),
        a.detail.clone(),
        a.signature.clone(),
    );
    if let Err(p) = notary(&s, move |n| {
        n.check_alarm(time, &witness, &kind, &detail, &signature)
    })
    .await
    {
        let what = format!(
            "alarm claiming witness {} refused",
            msec_store::bounded(&a.witness, 80)
        );
        return Err(record_refusal(&s, p, "bad_alarm", &what, peer).await);
    }
    let detail = format!(
        "witness {} reports {}: {}",
        msec_store::bounded(&a.witness, 80),
        msec_store::bounded(&a.kind, 40),
        msec_store::bounded(&a.detail, 300)
    );
    tracing::warn!(peer = %peer, "{detail}");
    let event = s
        .ingest
        .record_denial(
            "witness_alarm",
            detail,
            Source::Http(peer.to_string()),
            None,
        )
        .await;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "security_event_id": event })),
    )
        .into_response())
}
