//! Users and API tokens as stored. Secrets arrive already hashed (msec-identity); this module
//! never sees a password or a token secret.

use crate::db::P;
use crate::{now_ms, Store, StoreError};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct User {
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub created_ms: i64,
    pub disabled: bool,
}

/// A user to create; `password_hash` is an Argon2id PHC string.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: String,
    pub tenant: String,
    pub roles: Vec<String>,
    pub password_hash: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ApiToken {
    pub id: String,
    pub principal: String,
    pub scopes: Vec<String>,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked: bool,
}

/// A token to store: its public id, the SHA-256 of its secret, whom it acts for, what for and
/// until when.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub id: String,
    pub principal: String,
    pub scopes: Vec<String>,
    pub secret_hash: [u8; 32],
    pub expires_ms: i64,
}

fn list(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

impl Store {
    /// Adds a user; the change is a logged administrative action by `actor` (as are all
    /// changes to principals below).
    pub fn add_user(&mut self, u: &NewUser, actor: &str) -> Result<User, StoreError> {
        // `*`: a platform-wide user of no tenant, such as the first administrator.
        if !crate::valid_tenant(&u.tenant) && u.tenant != "*" {
            return Err(StoreError::Invalid(format!(
                "{} (got {:?})",
                crate::TENANT_RULE,
                crate::bounded(&u.tenant, 80)
            )));
        }
        let roles = u.roles.join(",");
        self.transaction(|s| {
            s.db.exec(
                "INSERT INTO users (id, tenant, roles, password_hash, created_ms) VALUES ($1, $2, $3, $4, $5)",
                &[P::Text(&u.id), P::Text(&u.tenant), P::Text(&roles), P::Text(&u.password_hash), P::I64(now_ms())],
            )
            .map_err(|e| match e {
                StoreError::Conflict(_) => StoreError::Conflict(format!("user {:?} already exists", u.id)),
                other => other,
            })?;
            s.admin_in_tx(actor, "user.add", &u.id, &format!("tenant {}, roles {roles}", u.tenant))?;
            bump_access(&mut s.db)
        })?;
        self.users()?
            .into_iter()
            .find(|x| x.id == u.id)
            .ok_or_else(|| StoreError::Backend("user vanished".into()))
    }

    pub fn users(&mut self) -> Result<Vec<User>, StoreError> {
        self.db.query(
            "SELECT id, tenant, roles, created_ms, disabled_ms FROM users ORDER BY id",
            &[],
            |r| {
                Ok(User {
                    id: r.text(0)?,
                    tenant: r.text(1)?,
                    roles: list(&r.text(2)?),
                    created_ms: r.i64(3)?,
                    disabled: r.opt_i64(4)?.is_some(),
                })
            },
        )
    }

    /// The stored password hash of an enabled user, for login.
    pub fn password_hash(&mut self, id: &str) -> Result<Option<String>, StoreError> {
        let rows = self.db.query(
            "SELECT password_hash FROM users WHERE id = $1 AND disabled_ms IS NULL",
            &[P::Text(id)],
            |r| r.text(0),
        )?;
        Ok(rows.into_iter().next())
    }

    /// Disables a user; false if there is no such enabled user.
    pub fn disable_user(&mut self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.transaction(|s| {
            let n = s.db.exec(
                "UPDATE users SET disabled_ms = $2 WHERE id = $1 AND disabled_ms IS NULL",
                &[P::Text(id), P::I64(now_ms())],
            )?;
            if n > 0 {
                s.admin_in_tx(actor, "user.disable", id, "")?;
                bump_access(&mut s.db)?;
            }
            Ok(n > 0)
        })
    }

    /// Stores a token (its secret only as a hash; the log entry names the token id, never the
    /// secret).
    pub fn add_token(&mut self, t: &NewToken, actor: &str) -> Result<(), StoreError> {
        let scopes = t.scopes.join(",");
        self.transaction(|s| {
            s.db.exec(
                "INSERT INTO api_tokens (id, principal, scopes, secret_hash, created_ms, expires_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                &[P::Text(&t.id), P::Text(&t.principal), P::Text(&scopes), P::Bytes(&t.secret_hash), P::I64(now_ms()), P::I64(t.expires_ms)],
            )?;
            s.admin_in_tx(actor, "token.create", &t.id, &format!("for {}, scopes {scopes}", t.principal))?;
            Ok(())
        })
    }

    fn token_rows(&mut self, only: Option<&str>) -> Result<Vec<(ApiToken, Vec<u8>)>, StoreError> {
        let (sql, params) = match only {
            Some(id) => (
                "SELECT id, principal, scopes, created_ms, expires_ms, revoked_ms, secret_hash FROM api_tokens WHERE id = $1",
                vec![P::Text(id)],
            ),
            None => ("SELECT id, principal, scopes, created_ms, expires_ms, revoked_ms, secret_hash FROM api_tokens ORDER BY created_ms, id", vec![]),
        };
        self.db.query(sql, &params, |r| {
            Ok((
                ApiToken {
                    id: r.text(0)?,
                    principal: r.text(1)?,
                    scopes: list(&r.text(2)?),
                    created_ms: r.i64(3)?,
                    expires_ms: r.i64(4)?,
                    revoked: r.opt_i64(5)?.is_some(),
                },
                r.bytes(6)?,
            ))
        })
    }

    /// A token and its stored secret hash, to check a presented token.
    pub fn token(&mut self, id: &str) -> Result<Option<(ApiToken, Vec<u8>)>, StoreError> {
        Ok(self.token_rows(Some(id))?.into_iter().next())
    }

    pub fn tokens(&mut self) -> Result<Vec<ApiToken>, StoreError> {
        Ok(self.token_rows(None)?.into_iter().map(|(t, _)| t).collect())
    }

    /// Revokes a token; false if there is no such unrevoked token.
    pub fn revoke_token(&mut self, id: &str, actor: &str) -> Result<bool, StoreError> {
        self.transaction(|s| {
            let n = s.db.exec(
                "UPDATE api_tokens SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                &[P::Text(id), P::I64(now_ms())],
            )?;
            if n > 0 {
                s.admin_in_tx(actor, "token.revoke", id, "")?;
                bump_access(&mut s.db)?;
            }
            Ok(n > 0)
        })
    }
}

/// A stored access rule (see msec-policy); `subject` is a principal id, or `role:NAME`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Grant {
    pub id: i64,
    pub effect: String,
    pub subject: String,
    pub actions: Vec<String>,
    pub resource: String,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub purpose: Option<String>,
    pub created_by: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone)]
pub struct NewGrant {
    pub effect: String,
    pub subject: String,
    pub actions: Vec<String>,
    pub resource: String,
    pub valid_from_ms: Option<i64>,
    pub valid_until_ms: Option<i64>,
    pub purpose: Option<String>,
}

pub(crate) fn bump_access(db: &mut crate::db::Db) -> Result<(), StoreError> {
    db.exec(
        "UPDATE access_state SET version = version + 1 WHERE id = 1",
        &[],
    )?;
    Ok(())
}

/// Longest resource pattern a grant may name.
const MAX_GRANT_RESOURCE_CHARS: usize = 256;

/// Whether a grant may name `resource`: resources land in events and the dashboard, so they are
/// bounded whoever adds the grant (the API checks early, before the change counts against the
/// caller's rate limit; the store checks for every caller).
pub fn valid_grant_resource(resource: &str) -> Result<(), String> {
    if resource.chars().count() > MAX_GRANT_RESOURCE_CHARS || resource.chars().any(char::is_control)
    {
        return Err(format!(
            "resource: at most {MAX_GRANT_RESOURCE_CHARS} characters, no control characters"
        ));
    }
    Ok(())
}

impl Store {
    pub fn user(&mut self, id: &str) -> Result<Option<User>, StoreError> {
        Ok(self.users()?.into_iter().find(|u| u.id == id))
    }

    /// Bumped by every change of users, tokens or grants: a cheap "did anything change?".
    pub fn access_version(&mut self) -> Result<i64, StoreError> {
        Ok(self
            .db
            .query("SELECT version FROM access_state WHERE id = 1", &[], |r| {
                r.i64(0)
            })?
            .first()
            .copied()
            .unwrap_or(0))
    }

    pub fn add_grant(&mut self, g: &NewGrant, actor: &str) -> Result<Grant, StoreError> {
        // A grant to a bare role reaches its holders in every tenant: few mean that (a
        // resident granting `role:operator` means her own tenant's operators).
        if let Some(role) = g.subject.strip_prefix("role:") {
            if !role.contains(':') && !crate::UNQUALIFIED_ROLES.contains(&role) {
                return Err(StoreError::Invalid(format!(
                    "name the tenant of role {role:?}, e.g. role:santander:{role} (only {} may be granted in every tenant at once)",
                    crate::UNQUALIFIED_ROLES.join(" and ")
                )));
            }
        }
        valid_grant_resource(&g.resource).map_err(StoreError::Invalid)?;
        match (g.valid_from_ms, g.valid_until_ms) {
            (Some(from), Some(until)) if from >= until => {
                return Err(StoreError::Invalid(format!(
                    "a grant valid from {from} until {until} would never be valid"
                )))
            }
            (_, Some(until)) if until <= now_ms() => {
                return Err(StoreError::Invalid(format!(
                    "a grant valid until {until} has already expired"
                )))
            }
            _ => {}
        }
        let actions = g.actions.join(",");
        self.transaction(|s| {
            let now = now_ms();
            let id = s
                .db
                .query(
                    "INSERT INTO grants (effect, subject, actions, resource, valid_from_ms, valid_until_ms, purpose, created_by, created_ms) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id",
                    &[
                        P::Text(&g.effect),
                        P::Text(&g.subject),
                        P::Text(&actions),
                        P::Text(&g.resource),
                        P::OptI64(g.valid_from_ms),
                        P::OptI64(g.valid_until_ms),
                        P::OptText(g.purpose.as_deref()),
                        P::Text(actor),
                        P::I64(now),
                    ],
                    |r| r.i64(0),
                )?
                .first()
                .copied()
                .ok_or_else(|| StoreError::Backend("INSERT returned no id".into()))?;
            s.admin_in_tx(actor, "grant.create", &id.to_string(), &format!("{} {} {} on {}", g.effect, g.subject, actions, g.resource))?;
            bump_access(&mut s.db)?;
            Ok(Grant {
                id,
                effect: g.effect.clone(),
                subject: g.subject.clone(),
                actions: g.actions.clone(),
                resource: g.resource.clone(),
                valid_from_ms: g.valid_from_ms,
                valid_until_ms: g.valid_until_ms,
                purpose: g.purpose.clone(),
                created_by: actor.into(),
                created_ms: now,
            })
        })
    }

    /// Revokes a grant; false if there is no such active grant.
    pub fn revoke_grant(&mut self, id: i64, actor: &str) -> Result<bool, StoreError> {
        self.transaction(|s| {
            let n = s.db.exec(
                "UPDATE grants SET revoked_ms = $2 WHERE id = $1 AND revoked_ms IS NULL",
                &[P::I64(id), P::I64(now_ms())],
            )?;
            if n > 0 {
                s.admin_in_tx(actor, "grant.revoke", &id.to_string(), "")?;
                bump_access(&mut s.db)?;
            }
            Ok(n > 0)
        })
    }

    /// Active (unrevoked) grants, oldest first.
    pub fn grants(&mut self) -> Result<Vec<Grant>, StoreError> {
        self.db.query(
            "SELECT id, effect, subject, actions, resource, valid_from_ms, valid_until_ms, purpose, created_by, created_ms \
             FROM grants WHERE revoked_ms IS NULL ORDER BY id",
            &[],
            |r| {
                Ok(Grant {
                    id: r.i64(0)?,
                    effect: r.text(1)?,
                    subject: r.text(2)?,
                    actions: list(&r.text(3)?),
                    resource: r.text(4)?,
                    valid_from_ms: r.opt_i64(5)?,
                    valid_until_ms: r.opt_i64(6)?,
                    purpose: r.opt_text(7)?,
                    created_by: r.text(8)?,
                    created_ms: r.i64(9)?,
                })
            },
        )
    }

    /// Stores a login session by the SHA-256 of its secret.
    pub fn create_session(
        &mut self,
        id_hash: &[u8; 32],
        principal: &str,
        expires_ms: i64,
    ) -> Result<(), StoreError> {
        self.db.exec(
            "INSERT INTO sessions (id_hash, principal, created_ms, expires_ms) VALUES ($1, $2, $3, $4)",
            &[P::Bytes(id_hash), P::Text(principal), P::I64(now_ms()), P::I64(expires_ms)],
        )?;
        Ok(())
    }

    /// The principal of a live session (not revoked, not expired, user not disabled).
    pub fn session(&mut self, id_hash: &[u8; 32]) -> Result<Option<(String, i64)>, StoreError> {
        let rows = self.db.query(
            "SELECT s.principal, s.expires_ms FROM sessions s JOIN users u ON u.id = s.principal \
             WHERE s.id_hash = $1 AND s.revoked_ms IS NULL AND s.expires_ms > $2 AND u.disabled_ms IS NULL",
            &[P::Bytes(id_hash), P::I64(now_ms())],
            |r| Ok((r.text(0)?, r.i64(1)?)),
        )?;
        Ok(rows.into_iter().next())
    }

    pub fn revoke_session(&mut self, id_hash: &[u8; 32]) -> Result<bool, StoreError> {
        Ok(self.db.exec(
            "UPDATE sessions SET revoked_ms = $2 WHERE id_hash = $1 AND revoked_ms IS NULL",
            &[P::Bytes(id_hash), P::I64(now_ms())],
        )? > 0)
    }
}
