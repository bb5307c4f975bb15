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
            s.admin_in_tx(actor, "user.add", &u.id, &format!("tenant {}, roles {roles}", u.tenant))
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
            }
            Ok(n > 0)
        })
    }
}
