//! Data-subject exports over HTTP (GDPR articles 15 and 20): everything held about a subject,
//! decrypted, with the log position of each record (proofs: `/api/v1/log/proof`). Allowed to
//! whoever may `read` the subject's data: the resident, their operators, administrators.

use crate::client::Client;
use crate::problem::PathParam;
use crate::{auth, AppState, Problem};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use msec_policy::Action;
use msec_store::{ExportJson, StoreError};
use std::io::Write;
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// Exports run on connections of their own, at most this many at once in this process: each
/// holds a database connection and a thread for as long as its client takes to read it.
static EXPORTS: Semaphore = Semaphore::const_new(2);

/// How long an export waits for its client to take the next chunk before giving up.
const CLIENT_PATIENCE: Duration = Duration::from_secs(60);

/// How long one export may take in all, however steadily its client reads: a slow reader
/// must not hold one of the [`EXPORTS`] for good.
const EXPORT_TIME_LIMIT: Duration = Duration::from_secs(30 * 60);

/// The size of the chunks an export is sent in.
const CHUNK: usize = 64 * 1024;

/// What the export's reader hands the HTTP answer. The answer ends well only after `Done`:
/// however else the channel ends (a failure, the reader gone), the connection is cut short,
/// so that a truncated export cannot pass for a whole one.
enum Piece {
    Chunk(Bytes),
    Done,
    Failed(StoreError),
}

pub(crate) async fn export(
    State(s): State<AppState>,
    Client(peer): Client,
    method: Method,
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
    // Answered before an export takes one of the few places: nothing held, or erased.
    let lookup = subject.clone();
    s.db.call(move |db| db.exportable(&lookup)).await?;
    // HEAD learns whether there is an export to fetch, without one being read for nothing.
    if method == Method::HEAD {
        return Ok(([(header::CONTENT_TYPE, "application/json")], Body::empty()).into_response());
    }
    let Ok(permit) = EXPORTS.try_acquire() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "other exports are under way; retry shortly",
        ));
    };
    // The export is read page by page on a connection of its own (opened off the API's
    // database thread) and sent as it is read: a large one holds up neither the API's other
    // requests nor the server's memory.
    let connector = s.db.call(|db| Ok(db.connector())).await?;
    let (tx, mut rx) = mpsc::channel::<Piece>(4);
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut out = Chunks {
            tx: tx.clone(),
            runtime,
            buf: Vec::with_capacity(CHUNK),
            deadline: std::time::Instant::now() + EXPORT_TIME_LIMIT,
        };
        let mut json = ExportJson::default();
        let result = connector.open().and_then(|mut store| {
            out.write_all(b"{\"subject\":")
                .and_then(|()| serde_json::to_writer(&mut out, &subject).map_err(Into::into))
                .map_err(unsent)?;
            store.export_subject_in_parts(&subject, &mut |part| {
                json.part(&mut out, part).map_err(unsent)
            })?;
            json.finish(&mut out).map_err(unsent)?;
            out.finish().map_err(unsent)
        });
        if let Err(e) = result {
            // Without waiting: a client that stopped reading may never make room for it, and
            // the channel closing without `Done` cuts the answer short all the same.
            let _ = tx.try_send(Piece::Failed(e));
        }
    });
    let first = match rx.recv().await {
        Some(Piece::Chunk(chunk)) => chunk,
        Some(Piece::Failed(e)) => return Err(e.into()),
        Some(Piece::Done) | None => {
            return Err(StoreError::Backend("the export ended before it began".into()).into())
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        streamed(first, rx),
    )
        .into_response())
}

/// The answer's body: `first`, then the reader's chunks until it says `Done`; cut short
/// (an error, which makes the server drop the connection) however else they end.
fn streamed(first: Bytes, rx: mpsc::Receiver<Piece>) -> Body {
    let rest = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        let cut = |why: String| {
            tracing::error!(error = %why, "a subject export ended early; its answer was cut short");
            std::io::Error::other("the export ended early")
        };
        match rx.recv().await {
            Some(Piece::Chunk(chunk)) => Some((Ok(chunk), Some(rx))),
            Some(Piece::Done) => None,
            Some(Piece::Failed(e)) => Some((Err(cut(e.to_string())), None)),
            None => Some((Err(cut("its reader stopped".into())), None)),
        }
    });
    Body::from_stream(futures_util::StreamExt::chain(
        futures_util::stream::iter([Ok(first)]),
        rest,
    ))
}

/// An export that could not be sent: its client went away, stopped reading or took too long.
fn unsent(e: std::io::Error) -> StoreError {
    StoreError::Backend(format!("the export could not be sent: {e}"))
}

/// Writes into `CHUNK`-sized pieces sent to the HTTP answer, waiting for the client to take
/// them (at most [`CLIENT_PATIENCE`] each, and until the deadline in all).
struct Chunks {
    tx: mpsc::Sender<Piece>,
    runtime: tokio::runtime::Handle,
    buf: Vec<u8>,
    deadline: std::time::Instant,
}

impl Chunks {
    fn send(&mut self, piece: Piece) -> std::io::Result<()> {
        let left = self
            .deadline
            .saturating_duration_since(std::time::Instant::now());
        let sent = self.runtime.block_on(tokio::time::timeout(
            left.min(CLIENT_PATIENCE),
            self.tx.send(piece),
        ));
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(std::io::Error::other("the client went away")),
            Err(_) if left <= CLIENT_PATIENCE => Err(std::io::Error::other(format!(
                "it took longer than {} minutes",
                EXPORT_TIME_LIMIT.as_secs() / 60
            ))),
            Err(_) => Err(std::io::Error::other("the client stopped reading")),
        }
    }

    /// Sends what is left, then says that the export is whole.
    fn finish(&mut self) -> std::io::Result<()> {
        self.flush()?;
        self.send(Piece::Done)
    }
}

impl Write for Chunks {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.send(Piece::Chunk(chunk))
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn received(pieces: Vec<Piece>, close: bool) -> Result<Bytes, String> {
        let (tx, rx) = mpsc::channel(8);
        for piece in pieces {
            tx.send(piece).await.unwrap();
        }
        // Unless closed, the channel stays open while the body is read: a reader still at
        // work, or hung.
        let _open = (!close).then_some(tx);
        let body = super::streamed(Bytes::from_static(b"{"), rx);
        tokio::time::timeout(
            Duration::from_secs(1),
            axum::body::to_bytes(body, usize::MAX),
        )
        .await
        .map_err(|_| "still waiting".to_string())?
        .map_err(|e| e.to_string())
    }

    /// Only an answer whose reader said it is done ends well; any other end is an error, which
    /// the server turns into a connection cut short.
    #[tokio::test]
    async fn an_export_ends_well_only_when_its_reader_says_so() {
        let chunk = |b: &'static [u8]| Piece::Chunk(Bytes::from_static(b));
        assert_eq!(
            received(vec![chunk(b"\"a\""), Piece::Done], false).await,
            Ok(Bytes::from_static(b"{\"a\""))
        );
        assert!(received(vec![chunk(b"\"a\"")], true).await.is_err());
        let failed = Piece::Failed(StoreError::Backend("gone".into()));
        assert!(received(vec![chunk(b"\"a\""), failed], false)
            .await
            .is_err());
        assert_eq!(
            received(vec![chunk(b"\"a\"")], false).await,
            Err("still waiting".into())
        );
    }
}
