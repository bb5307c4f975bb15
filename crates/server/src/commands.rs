//! Actuator commands over HTTP: an authorised `act` becomes a command signed with the
//! platform's command key (docs/protocol.md, "Actuator commands") and published over MQTT to the
//! device, which verifies it before acting. The signing key never leaves this process.

use crate::client::Client;
use crate::problem::PathParam;
use crate::{auth, AppState, Problem};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use msec_device::{commands_topic, Command, CommandSigner, CommandValue};
use msec_ingest::CommandPublisher;
use msec_policy::Action;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};

/// How long a command stays valid: long enough for a queued QoS 1 delivery, short enough
/// that a stale command cannot surprise anyone.
const LIFETIME_SECS: i64 = 60;

/// Signs and sends commands for the platform.
pub struct Commander {
    signer: CommandSigner,
    publisher: CommandPublisher,
    topic_root: String,
    /// Command ids only grow (the devices' replay guard); milliseconds since the epoch, or one
    /// more than the last, whichever is larger.
    last_id: AtomicU64,
}

impl Commander {
    /// `last_issued`: the largest command id issued before (`Store::last_command_id`), so
    /// that ids keep growing across restarts and a clock set back.
    pub fn new(
        signer: CommandSigner,
        publisher: CommandPublisher,
        topic_root: &str,
        last_issued: u64,
    ) -> Commander {
        Commander {
            signer,
            publisher,
            topic_root: topic_root.to_string(),
            last_id: AtomicU64::new(last_issued),
        }
    }

    pub fn public_key(&self) -> [u8; 32] {
        self.signer.public_key()
    }

    fn next_id(&self) -> u64 {
        next_id(&self.last_id, msec_store::now_ms().max(1) as u64)
    }
}

/// The clock in milliseconds, or one more than `last`, whichever is larger; stored in `last`.
fn next_id(last_id: &AtomicU64, now_ms: u64) -> u64 {
    let mut last = last_id.load(Ordering::Relaxed);
    loop {
        let next = now_ms.max(last + 1);
        match last_id.compare_exchange(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_only_grow_whatever_the_clock_does() {
        // A restart after ids ran ahead of the clock (it was set forward, then back).
        let last = AtomicU64::new(2_000_000);
        assert_eq!(next_id(&last, 1_000_000), 2_000_001);
        assert_eq!(next_id(&last, 1_000_000), 2_000_002);
        assert_eq!(next_id(&last, 3_000_000), 3_000_000);
        assert_eq!(next_id(&last, 3_000_000), 3_000_001);
    }
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CommandRequest {
    /// What to act on, e.g. `plug/switch`.
    resource: String,
    /// `true`/`false`, a number or a short text.
    value: serde_json::Value,
}

pub(crate) async fn send(
    State(s): State<AppState>,
    Client(peer): Client,
    headers: HeaderMap,
    PathParam(id): PathParam,
    body: axum::body::Body,
) -> Result<Response, Problem> {
    let p = auth::caller(&s, &headers, peer, true).await?;
    let device = crate::device_for(&s, &p, &id, Action::Act, peer).await?;
    let Some(commander) = s.commands.clone() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commands_unavailable",
            "this platform was started without actuator commands",
        ));
    };
    let body = crate::small_body(body, 1024, "a command").await?;
    let req: CommandRequest = serde_json::from_slice(&body)
        .map_err(|e| Problem::bad_request(format!("command JSON: {e}")))?;
    if device.status != msec_store::DeviceStatus::Active {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "revoked_device",
            "the device is revoked; it takes no commands",
        ));
    }
    let value = match req.value {
        serde_json::Value::Bool(b) => CommandValue::Bool(b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => CommandValue::Integer(i),
            None => CommandValue::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(t) => CommandValue::Text(t),
        _ => {
            return Err(Problem::bad_request(
                "value must be a boolean, a number or a text",
            ))
        }
    };
    let now = msec_store::now_ms() / 1000;
    let command = Command {
        target: device.id.clone(),
        resource: req.resource,
        value,
        command_id: commander.next_id(),
        issued_at: now,
        expires_at: now + LIFETIME_SECS,
    };
    // The device would refuse what sealing refuses (sizes, characters): a 400 here, not a
    // silent drop there.
    let bytes = commander.signer.seal(&command).map_err(|r| {
        Problem::bad_request(format!(
            "the command would be refused by the device: {}",
            r.reason()
        ))
    })?;
    let topic = commands_topic(&commander.topic_root, &device.tenant, &device.id);
    // Logged before it is sent: an actuation must never reach a device without its trace in
    // the transparency log. If the broker does not confirm it, a second entry says so (the
    // device may or may not have received it).
    let (actor, target, detail) = (
        p.id.clone(),
        device.id.clone(),
        format!(
            "command {} {} on topic {topic}",
            command.command_id, command.resource
        ),
    );
    s.db.call(move |db| db.log_admin(&actor, "device.command", &target, &detail))
        .await?;
    if let Err(e) = commander.publisher.publish(&topic, bytes).await {
        let (actor, target, detail) = (
            p.id.clone(),
            device.id.clone(),
            format!(
                "command {}: the broker did not confirm it: {e}",
                command.command_id
            ),
        );
        // Best effort: the answer below tells the caller either way.
        let _ = s
            .db
            .call(move |db| db.log_admin(&actor, "device.command_unconfirmed", &target, &detail))
            .await;
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!(
                "the broker did not confirm the command ({e}); the device may or may not receive it"
            ),
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "command_id": command.command_id, "topic": topic, "expires_at": command.expires_at })),
    )
        .into_response())
}

/// The platform's command verification key, which devices pin.
pub(crate) async fn key(State(s): State<AppState>) -> Result<Response, Problem> {
    let Some(c) = s.commands.as_ref() else {
        return Err(Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "commands_unavailable",
            "this platform was started without actuator commands",
        ));
    };
    Ok(Json(json!({
        "public_key": hex::encode(c.public_key()),
        "key_id": hex::encode(msec_envelope::key_id(&c.public_key())),
    }))
    .into_response())
}
