//! Who is asking, and may they: login sessions, API tokens, login throttling, and access
//! decisions over the built-in role rules plus the grants stored in the database.
//!
//! It owns authentication and the assembly of the rule set; the decisions themselves are
//! msec-policy's. It never speaks HTTP (the server maps cookies and headers to calls here) and
//! never records security events itself: every refusal comes back as a [`Denied`] with a reason
//! code, and the caller records exactly one event for it.

mod throttle;

use msec_policy::{
    Action, Conditions, Decision, Effect, Pattern, PolicySet, Request, Rule, Subject,
};
use msec_store::{Grant, Store, StoreError};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use msec_policy::Action as AccessAction;
pub use throttle::Throttle;

/// How long a login session lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);

/// A refusal, with the reason code its security event carries.
#[derive(Debug, Clone, PartialEq)]
pub struct Denied {
    /// `unauthenticated`, `login_failed`, `rate_limited`, `invalid_token`, `csrf_failed` or
    /// `forbidden`; or [`UNAVAILABLE`], when the database failed and nobody was refused.
    pub reason: &'static str,
    /// Safe to show and to log: never a secret.
    pub detail: String,
    /// The principal, if known.
    pub principal: Option<String>,
    /// The tenant whose auditors see the event: for `forbidden`, the refused resource's (see
    /// [`Access::require`]), else the refused principal's; None for platform-wide events.
    pub tenant: Option<Box<str>>, // boxed: refusals travel in `Result`s, so kept small
    /// The rule that decided a `forbidden`, if one did (else deny by default).
    pub rule: Option<Box<str>>,
    /// For `rate_limited`: seconds until the lock ends.
    pub retry_after_s: Option<u32>,
    /// What the refused client is told, where `detail` (for the security event) says more
    /// than it may learn: whether a user name exists.
    pub answer: Option<Box<str>>, // boxed, as `tenant`
}

/// The reason of a [`Denied`] that is no refusal: the database could not answer. The caller
/// should retry; it is not a security event.
pub const UNAVAILABLE: &str = "storage_unavailable";

fn unavailable(e: impl std::fmt::Display) -> Denied {
    tracing::error!(error = %e, "database error while checking credentials");
    Denied::new(UNAVAILABLE, "the database is unavailable; retry later")
}

impl Denied {
    pub fn new(reason: &'static str, detail: impl Into<String>) -> Denied {
        Denied {
            reason,
            detail: detail.into(),
            principal: None,
            tenant: None,
            rule: None,
            retry_after_s: None,
            answer: None,
        }
    }

    /// The same refusal, of `p`.
    pub fn of(mut self, p: &Principal) -> Denied {
        self.principal = Some(p.id.clone());
        // Platform-wide users (`*`) and service accounts (no tenant) have no tenant's auditors.
        self.tenant = Some(p.tenant.as_str())
            .filter(|t| msec_store::valid_tenant(t))
            .map(Box::from);
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("stored grant {0} is invalid: {1}")]
    BadGrant(i64, String),
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Principal {
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    /// For API tokens: the only actions the token may be used for.
    pub scopes: Option<Vec<String>>,
}

/// A successful login: the session secret (the cookie value, shown once) and its CSRF token.
pub struct Session {
    pub secret: String,
    pub csrf: String,
    pub principal: Principal,
    pub expires_ms: i64,
}

/// Never shows the cookie secret or the CSRF token, wherever a session is printed.
impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("principal", &self.principal.id)
            .field("expires_ms", &self.expires_ms)
            .finish_non_exhaustive()
    }
}

/// The resource path of a device's data: `tenant/owner/device`.
pub fn device_resource(tenant: &str, owner: &str, device: &str) -> String {
    format!("{tenant}/{owner}/{device}")
}

/// The resource audited to read every security event (platform-wide ones included) and the
/// log's administration. No tenant may be named `platform` (`msec_store::valid_tenant`), so no
/// tenant's rules reach it.
pub const SECURITY_EVENTS: &str = "platform/security-events";

/// The resource audited to read the security events of one tenant.
pub fn tenant_events(tenant: &str) -> String {
    format!("{SECURITY_EVENTS}/{tenant}")
}

/// Which security events a principal may read.
#[derive(Debug, Clone, PartialEq)]
pub enum EventScope {
    All,
    /// Only those of these tenants (none, when empty).
    Tenants(Vec<String>),
}

fn sha256(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

fn b64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// The CSRF token of a session: derived from its secret, so nothing more is stored, and useless
/// without the (HttpOnly) cookie.
pub fn csrf_token(session_secret: &str) -> String {
    b64(&sha256(
        format!("msec-csrf/v1\n{session_secret}").as_bytes(),
    ))
}

/// Constant-time equality of two secrets' texts.
pub fn same_secret(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The rule set in force and the store version it was built from.
struct Snapshot {
    version: i64,
    set: Arc<PolicySet>,
    /// The tenants known when it was built (from users and devices).
    tenants: Arc<Vec<String>>,
}

pub struct Access {
    store: Mutex<Store>,
    snapshot: RwLock<Snapshot>,
    throttle: Mutex<Throttle>,
    /// When each principal's grant changes of the last minute were made (see
    /// [`Access::count_grant_change`]).
    grant_changes: Mutex<HashMap<String, VecDeque<i64>>>,
}

/// Grant changes one principal may make through the API in a minute. Each rebuilds the rule
/// set that every decision reads and adds a log leaf; a resident needs a handful a day.
pub const GRANT_CHANGES_PER_MINUTE: u32 = 30;

fn role_rule(id: &str, role: &str, actions: &[Action], resource: &str) -> Rule {
    Rule {
        id: id.into(),
        effect: Effect::Allow,
        subject: Subject::Role(role.into()),
        actions: actions.to_vec(),
        resource: resource.parse().expect("built-in patterns are valid"),
        conditions: Conditions::default(),
    }
}

/// The built-in rules for the pilots' roles (docs/access-control.md lists them), for the tenants
/// and residents known now, followed by the stored grants.
fn snapshot(store: &mut Store, version: i64) -> Result<Snapshot, AccessError> {
    use Action::*;
    let users = store.users()?;
    let mut tenants: Vec<String> = users.iter().map(|u| u.tenant.clone()).collect();
    // Tenants only: reading whole devices would decrypt every profile on each rebuild.
    tenants.extend(store.device_tenants()?);
    tenants.sort();
    tenants.dedup();
    let mut rules = vec![
        // Caregivers observe; acting on a resident's devices stays with residents and operators.
        Rule {
            id: "caregivers-never-act".into(),
            effect: Effect::Deny,
            subject: Subject::Role("caregiver".into()),
            actions: vec![Act],
            resource: "**".parse().expect("valid"),
            conditions: Conditions::default(),
        },
        role_rule(
            "admins",
            "admin",
            &[Read, Subscribe, Act, Manage, Audit],
            "**",
        ),
    ];
    // Names that could not be created today (reserved, or from before tenants were checked)
    // get no rules: `platform/**` would cover every tenant's events.
    for t in tenants.iter().filter(|t| msec_store::valid_tenant(t)) {
        rules.push(role_rule(
            &format!("{t}-operators"),
            &format!("{t}:operator"),
            &[Read, Subscribe, Act],
            &format!("{t}/**"),
        ));
        // Auditors check the trail, not people's data.
        rules.push(role_rule(
            &format!("{t}-auditors"),
            &format!("{t}:auditor"),
            &[Audit],
            &format!("{t}/**"),
        ));
        rules.push(role_rule(
            &format!("{t}-auditors-events"),
            &format!("{t}:auditor"),
            &[Audit],
            &tenant_events(t),
        ));
        // Public infrastructure is owned by the tenant itself: open data for citizens.
        rules.push(role_rule(
            &format!("{t}-citizens"),
            &format!("{t}:citizen"),
            &[Read, Subscribe],
            &format!("{t}/{t}/**"),
        ));
        rules.push(role_rule(
            &format!("{t}-providers"),
            &format!("{t}:data-provider"),
            &[Sell],
            &format!("{t}/{t}/**"),
        ));
        rules.push(role_rule(
            &format!("{t}-buyers"),
            &format!("{t}:data-buyer"),
            &[Buy],
            &format!("{t}/{t}/**"),
        ));
    }
    // Residents own the data of their devices, and decide who else sees it.
    for u in users
        .iter()
        .filter(|u| !u.disabled && u.roles.iter().any(|r| r == "resident"))
        // As for tenants' rules: a resident of `platform` would own `platform/…`.
        .filter(|u| msec_store::valid_tenant(&u.tenant))
    {
        rules.push(Rule {
            // `:` is in no tenant name, so no tenant's rule (`T-operators`) can take this id:
            // a clash would stop every later rebuild of the rules.
            id: format!("owner:{}", u.id),
            effect: Effect::Allow,
            subject: Subject::Principal(u.id.clone()),
            actions: vec![Read, Subscribe, Act, Manage],
            resource: format!("{}/{}/**", u.tenant, u.id)
                .parse()
                .map_err(|e| AccessError::BadGrant(0, format!("user id {:?}: {e}", u.id)))?,
            conditions: Conditions::default(),
        });
    }
    for g in store.grants()? {
        rules.push(grant_rule(&g)?);
    }
    let set = PolicySet::new(rules).map_err(|e| AccessError::BadGrant(0, e.to_string()))?;
    Ok(Snapshot {
        version,
        set: Arc::new(set),
        tenants: Arc::new(tenants),
    })
}

fn grant_rule(g: &Grant) -> Result<Rule, AccessError> {
    let bad = |m: String| AccessError::BadGrant(g.id, m);
    Ok(Rule {
        id: format!("grant-{}", g.id),
        effect: match g.effect.as_str() {
            "allow" => Effect::Allow,
            "deny" => Effect::Deny,
            other => return Err(bad(format!("effect {other:?}"))),
        },
        subject: match g.subject.strip_prefix("role:") {
            Some(role) => Subject::Role(role.into()),
            None => Subject::Principal(g.subject.clone()),
        },
        actions: g
            .actions
            .iter()
            .map(|a| a.parse::<Action>().map_err(|e| bad(e.to_string())))
            .collect::<Result<_, _>>()?,
        resource: g
            .resource
            .parse::<Pattern>()
            .map_err(|e| bad(e.to_string()))?,
        conditions: Conditions {
            valid_from_ms: g.valid_from_ms,
            valid_until_ms: g.valid_until_ms,
            purpose: g.purpose.clone(),
            ..Default::default()
        },
    })
}

/// The roles a user's request carries: each as it is and qualified by the user's tenant
/// (`santander:operator`). Built-in tenant rules name qualified roles; new grants to a bare role
/// other than [`msec_store::UNQUALIFIED_ROLES`] are refused (they would reach every tenant), but
/// grants stored before that keep matching as they did (a deny among them must not lapse).
fn request_roles(tenant: &str, roles: &[String]) -> Vec<String> {
    let mut out = roles.to_vec();
    out.extend(roles.iter().map(|r| format!("{tenant}:{r}")));
    out
}

impl Access {
    pub fn open(mut store: Store) -> Result<Access, AccessError> {
        let version = store.access_version()?;
        let snapshot = snapshot(&mut store, version)?;
        Ok(Access {
            store: Mutex::new(store),
            snapshot: RwLock::new(snapshot),
            throttle: Mutex::new(Throttle::default()),
            grant_changes: Mutex::new(HashMap::new()),
        })
    }

    /// Counts one grant change by `p`; refused (`rate_limited`, with the seconds to wait) once
    /// [`GRANT_CHANGES_PER_MINUTE`] were made in the 60 s before `now_ms`.
    pub fn count_grant_change(&self, p: &Principal, now_ms: i64) -> Result<(), Denied> {
        let since = now_ms.saturating_sub(60_000);
        let mut changes = self.grant_changes.lock().unwrap_or_else(|e| e.into_inner());
        // Principals are authenticated, so few; forget idle ones now and then all the same.
        if changes.len() > 10_000 {
            changes.retain(|_, times| times.back().is_some_and(|t| *t > since));
        }
        let times = changes.entry(p.id.clone()).or_default();
        while times.front().is_some_and(|t| *t <= since) {
            times.pop_front();
        }
        if times.len() >= GRANT_CHANGES_PER_MINUTE as usize {
            // Allowed again once the oldest of them is a minute old.
            let oldest = times.front().copied().unwrap_or(now_ms);
            let wait = (oldest - since) / 1000 + 1;
            let mut d = Denied::new(
                "rate_limited",
                format!(
                    "at most {GRANT_CHANGES_PER_MINUTE} grant changes a minute; retry in {wait} s"
                ),
            )
            .of(p);
            d.retry_after_s = Some(u32::try_from(wait).unwrap_or(u32::MAX));
            return Err(d);
        }
        times.push_back(now_ms);
        Ok(())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Rebuilds the rule set if users, tokens or grants changed (in any process). Cheap when
    /// nothing did: one indexed read.
    pub fn refresh(&self) -> Result<(), AccessError> {
        let mut store = self.store();
        let version = store.access_version()?;
        if version
            == self
                .snapshot
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .version
        {
            return Ok(());
        }
        let snapshot = snapshot(&mut store, version)?;
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
        Ok(())
    }

    /// Rebuilds the rule set now (after a change made through this process, so that it holds
    /// for the very next decision, open streams included).
    pub fn reload(&self) -> Result<(), AccessError> {
        let mut store = self.store();
        let version = store.access_version()?;
        let snapshot = snapshot(&mut store, version)?;
        *self.snapshot.write().unwrap_or_else(|p| p.into_inner()) = snapshot;
        Ok(())
    }

    /// How a login's user name appears in its security event, and the principal it names: as
    /// typed when an enabled user has it; otherwise only its length, since such a name is often
    /// a password typed into the wrong field.
    fn login_name(&self, user: &str) -> (String, Option<Principal>) {
        match self.store().user(user) {
            Ok(Some(u)) if !u.disabled => {
                let shown = msec_store::bounded(user, 64);
                let p = Principal {
                    id: shown.clone(),
                    tenant: u.tenant,
                    roles: Vec::new(),
                    scopes: None,
                };
                (format!("{shown:?}"), Some(p))
            }
            _ => (
                format!(
                    "a name of {} characters that no enabled user has (not recorded: it may be a mistyped password)",
                    user.chars().count()
                ),
                None,
            ),
        }
    }

    fn principal(
        &self,
        id: &str,
        scopes: Option<Vec<String>>,
    ) -> Result<Option<Principal>, AccessError> {
        Ok(self
            .store()
            .user(id)?
            .filter(|u| !u.disabled)
            .map(|u| Principal {
                id: u.id,
                tenant: u.tenant,
                roles: u.roles,
                scopes,
            }))
    }

    /// Checks a user's password (Argon2id) under the login throttle; on success opens a session.
    pub fn login(
        &self,
        user: &str,
        password: &str,
        from: &str,
        now_ms: i64,
    ) -> Result<Session, Denied> {
        // The throttle's lock ends with this statement: `login_name` takes the store's.
        let begun = self
            .throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .begin(user, from, now_ms);
        if let Err((until, what)) = begun {
            let (shown, principal) = self.login_name(user);
            let mut d = Denied::new(
                "rate_limited",
                format!("login for {shown} refused: too many failed logins {what}; locked for {} more seconds", (until - now_ms).max(0) / 1000 + 1),
            );
            if let Some(p) = principal {
                d = d.of(&p);
            }
            let retry = u32::try_from((until - now_ms).max(0) / 1000 + 1).unwrap_or(u32::MAX);
            d.retry_after_s = Some(retry);
            d.answer = Some(format!("too many failed logins; try again in {retry} seconds").into());
            return Err(d);
        }
        // A database failure judges nothing: take the attempt's advance count back.
        let not_judged = |e: StoreError| {
            self.throttle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .withdraw(user, from, now_ms);
            unavailable(e)
        };
        let hash = self.store().password_hash(user).map_err(not_judged)?;
        // Unknown users cost an Argon2id verification too, so timing does not reveal them.
        let ok = match &hash {
            Some(h) => msec_identity::verify_password(password, h),
            None => {
                let _ = msec_identity::verify_password(password, msec_identity::decoy_hash());
                false
            }
        };
        let principal = if ok {
            self.principal(user, None).map_err(|e| match e {
                AccessError::Store(e) => not_judged(e),
                other => unavailable(other),
            })?
        } else {
            None
        };
        let Some(principal) = principal else {
            // The attempt already counts as a failure (see `Throttle::begin`).
            let (shown, principal) = self.login_name(user);
            let mut d = Denied::new(
                "login_failed",
                format!("wrong user name or password for {shown}"),
            );
            d.answer = Some("wrong user name or password".into());
            return Err(match principal {
                Some(p) => d.of(&p),
                None => d,
            });
        };
        self.throttle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .succeeded(user, from, now_ms);
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw)
            .map_err(|_| Denied::new("login_failed", "no randomness available"))?;
        let secret = b64(&raw);
        let expires_ms = now_ms + SESSION_TTL.as_millis() as i64;
        self.store()
            .create_session(&sha256(secret.as_bytes()), &principal.id, expires_ms)
            .map_err(unavailable)?;
        Ok(Session {
            csrf: csrf_token(&secret),
            secret,
            principal,
            expires_ms,
        })
    }

    pub fn logout(&self, secret: &str) -> Result<bool, AccessError> {
        Ok(self.store().revoke_session(&sha256(secret.as_bytes()))?)
    }

    /// The principal of a session cookie.
    pub fn session(&self, secret: &str) -> Result<Principal, Denied> {
        let found = self
            .store()
            .session(&sha256(secret.as_bytes()))
            .map_err(unavailable)?;
        let principal = match found {
            Some((id, _)) => self.principal(&id, None).map_err(unavailable)?,
            None => None,
        };
        principal.ok_or_else(|| {
            Denied::new(
                "unauthenticated",
                "the session is unknown, expired or logged out; log in again",
            )
        })
    }

    /// The principal of an API token (`msec_<id>_<secret>`), limited to the token's scopes.
    pub fn token(&self, text: &str, now_ms: i64) -> Result<Principal, Denied> {
        let invalid = || {
            Denied::new(
                "invalid_token",
                "the API token is unknown, revoked, expired or malformed",
            )
        };
        let id = msec_identity::token_id(text).ok_or_else(invalid)?;
        let (token, hash) = self
            .store()
            .token(id)
            .map_err(unavailable)?
            .ok_or_else(invalid)?;
        let stored = msec_identity::StoredToken {
            id: id.to_string(),
            secret_hash: hash.as_slice().try_into().map_err(|_| invalid())?,
        };
        if token.revoked
            || token.expires_ms <= now_ms
            || !msec_identity::verify_token(text, &stored)
        {
            return Err(invalid());
        }
        let mut p = self
            .named_or_unavailable(&token.principal)?
            .ok_or_else(invalid)?;
        p.scopes = Some(token.scopes);
        Ok(p)
    }

    /// A principal by id: an enabled user with its roles, or, for an id that is no user, a
    /// service account (no roles; only grants name it). A disabled user is nobody.
    pub fn named(&self, id: &str) -> Option<Principal> {
        self.named_or_unavailable(id).ok().flatten()
    }

    fn named_or_unavailable(&self, id: &str) -> Result<Option<Principal>, Denied> {
        Ok(match self.store().user(id).map_err(unavailable)? {
            Some(u) if u.disabled => None,
            Some(u) => Some(Principal {
                id: u.id,
                tenant: u.tenant,
                roles: u.roles,
                scopes: None,
            }),
            None => Some(Principal {
                id: id.to_string(),
                tenant: String::new(),
                roles: Vec::new(),
                scopes: None,
            }),
        })
    }

    /// The decision for one request, with the deciding rule. Token scopes narrow it further.
    pub fn decide(&self, p: &Principal, action: Action, resource: &str, now_ms: i64) -> Decision {
        let set = self
            .snapshot
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .set
            .clone();
        let roles = request_roles(&p.tenant, &p.roles);
        let d = set.decide(&Request {
            principal: &p.id,
            roles: &roles,
            action,
            resource,
            at_ms: now_ms,
            purpose: None,
        });
        match &p.scopes {
            Some(scopes) if d.allowed && !scopes.iter().any(|s| s == &action.to_string()) => {
                Decision {
                    allowed: false,
                    rule: Some("token-scope".into()),
                }
            }
            _ => d,
        }
    }

    /// The security events `p` may read: all of them with `audit` on [`SECURITY_EVENTS`], else
    /// those of each known tenant T with `audit` on [`tenant_events`]`(T)`.
    pub fn event_scope(&self, p: &Principal, now_ms: i64) -> EventScope {
        if self
            .decide(p, Action::Audit, SECURITY_EVENTS, now_ms)
            .allowed
        {
            return EventScope::All;
        }
        let tenants = (self.snapshot.read().unwrap_or_else(|p| p.into_inner()))
            .tenants
            .clone();
        EventScope::Tenants(
            tenants
                .iter()
                .filter(|t| {
                    self.decide(p, Action::Audit, &tenant_events(t), now_ms)
                        .allowed
                })
                .cloned()
                .collect(),
        )
    }

    /// Whether `tenant` is one of the tenants known from users and devices.
    pub fn known_tenant(&self, tenant: &str) -> bool {
        let snapshot = self.snapshot.read().unwrap_or_else(|p| p.into_inner());
        snapshot
            .tenants
            .binary_search_by(|t| t.as_str().cmp(tenant))
            .is_ok()
            && msec_store::valid_tenant(tenant)
    }

    /// Whether `p` may read one event of `tenant` (None: a platform-wide event).
    pub fn may_read_event(&self, p: &Principal, tenant: Option<&str>, now_ms: i64) -> bool {
        self.decide(p, Action::Audit, SECURITY_EVENTS, now_ms)
            .allowed
            || tenant.is_some_and(|t| {
                self.decide(p, Action::Audit, &tenant_events(t), now_ms)
                    .allowed
            })
    }

    /// `decide`, as a result whose refusal is ready to become a security event.
    pub fn require(
        &self,
        p: &Principal,
        action: Action,
        resource: &str,
        now_ms: i64,
    ) -> Result<(), Denied> {
        let d = self.decide(p, action, resource, now_ms);
        if d.allowed {
            return Ok(());
        }
        let by = d
            .rule
            .as_deref()
            .map_or("no rule allows it (deny by default)".to_string(), |r| {
                format!("rule {r}")
            });
        let mut denied = Denied::new(
            "forbidden",
            format!("{} may not {action} {resource}: {by}", p.id),
        )
        .of(p);
        denied.rule = d.rule.map(String::into_boxed_str);
        // The event names the resource, so it is the resource's tenant's to read (another
        // tenant's auditors must not learn what exists there); none for a tenant nobody knows
        // (requests name any text) or for things that do not exist (`*/…`).
        let tenant = resource.split('/').next().unwrap_or_default();
        denied.tenant = self.known_tenant(tenant).then(|| Box::from(tenant));
        Err(denied)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_printed_session_never_shows_its_secrets() {
        let session = super::Session {
            secret: "cookie-secret-value".into(),
            csrf: "csrf-token-value".into(),
            principal: super::Principal {
                id: "ana".into(),
                tenant: "t".into(),
                roles: vec![],
                scopes: None,
            },
            expires_ms: 1,
        };
        let shown = format!("{session:?} {session:#?}");
        assert!(
            !shown.contains("cookie-secret") && !shown.contains("csrf-token"),
            "{shown}"
        );
        assert!(shown.contains("ana"));
    }
}
