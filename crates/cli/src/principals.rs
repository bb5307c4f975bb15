//! `msec user …` and `msec token …`: people and service accounts. Passwords and token secrets
//! are hashed here (msec-identity) before anything reaches the database, and shown only once.

use crate::config::StoreArgs;
use crate::platform::{with_existing_store, with_store};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use msec_store::{NewToken, NewUser};

#[derive(Subcommand)]
pub enum UserCommand {
    /// Create a user. Without --password-stdin a strong password is generated and printed once
    ///
    /// Example:  msec user add --id user:olga --tenant santander --roles operator
    #[command(verbatim_doc_comment)]
    Add {
        /// User id, e.g. user:olga
        #[arg(long)]
        id: String,
        /// Tenant the user belongs to, e.g. santander
        #[arg(long)]
        tenant: String,
        /// Roles, comma-separated: admin, operator, caregiver, resident, citizen,
        /// data-provider, data-buyer, auditor
        #[arg(long, value_delimiter = ',', required = true)]
        roles: Vec<String>,
        /// Read the password from the first line of standard input (never from the command
        /// line, where other users of the machine could see it)
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// List users (never their password hashes).
    List {
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Disable a user: they can no longer log in.
    Disable {
        /// The user's id, as `msec user list` shows it
        id: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create an API token for a principal; the token is printed once and stored only hashed
    ///
    /// Example:  msec token create --principal svc:marketplace --scopes read,subscribe --days 30
    #[command(verbatim_doc_comment)]
    Create {
        /// Whom the token acts for, e.g. svc:marketplace or user:olga
        #[arg(long)]
        principal: String,
        /// Actions the token may be used for, comma-separated (read, subscribe, act, manage,
        /// audit, sell, buy)
        #[arg(long, value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Days until the token expires (1-365)
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..=365))]
        days: u32,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// List tokens (ids, principals, scopes, expiry — never secrets).
    List {
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Revoke a token by its id (the 16 hex digits after `msec_`).
    Revoke {
        /// The token's id, as `msec token list` shows it
        id: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
}

/// When a token expires (or expired), relative to `now`, in days.
fn expiry(expires_ms: i64, now: i64) -> String {
    let days = (expires_ms - now) as f64 / 86_400_000.0;
    if days >= 0.0 {
        format!("in {days:.1} days")
    } else {
        format!("{:.1} days ago", -days)
    }
}

const ROLES: [&str; 8] = [
    "admin",
    "operator",
    "caregiver",
    "resident",
    "citizen",
    "data-provider",
    "data-buyer",
    "auditor",
];

fn valid_principal(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:@".contains(&b))
}

pub async fn user(cmd: UserCommand) -> Result<()> {
    match cmd {
        UserCommand::Add {
            id,
            tenant,
            roles,
            password_stdin,
            platform,
        } => {
            if !valid_principal(&id) {
                bail!("a user id may use A-Z a-z 0-9 - _ . : @ (at most 128 characters)");
            }
            if !msec_store::valid_tenant(&tenant) {
                bail!("{}", msec_store::TENANT_RULE);
            }
            if let Some(bad) = roles.iter().find(|r| !ROLES.contains(&r.as_str())) {
                bail!("unknown role {bad:?}; roles: {}", ROLES.join(", "));
            }
            let (password, generated) = if password_stdin {
                let mut line = String::new();
                std::io::stdin()
                    .read_line(&mut line)
                    .context("cannot read the password from standard input")?;
                (line.trim_end_matches(['\r', '\n']).to_string(), false)
            } else {
                (msec_identity::generate_password()?, true)
            };
            let password_hash = msec_identity::hash_password(&password)?;
            let new = NewUser {
                id,
                tenant,
                roles,
                password_hash,
            };
            let user = with_store(&platform, move |s| Ok(s.add_user(&new, "cli")?)).await?;
            println!(
                "created {} in tenant {} with roles {}",
                user.id,
                user.tenant,
                user.roles.join(",")
            );
            if generated {
                println!("password (shown once, store it safely): {password}");
            }
            Ok(())
        }
        UserCommand::List { platform } => {
            let users = with_existing_store(&platform, |s| Ok(s.users()?)).await?;
            if users.is_empty() {
                println!("no users (see `msec user add --help`)");
            } else {
                println!("{:<24} {:<12} {:<30} STATUS", "ID", "TENANT", "ROLES");
            }
            for u in users {
                println!(
                    "{:<24} {:<12} {:<30} {}",
                    u.id,
                    u.tenant,
                    u.roles.join(","),
                    if u.disabled { "disabled" } else { "active" }
                );
            }
            Ok(())
        }
        UserCommand::Disable { id, platform } => {
            let target = id.clone();
            if with_existing_store(&platform, move |s| Ok(s.disable_user(&target, "cli")?)).await? {
                println!("disabled {id}");
                Ok(())
            } else {
                bail!("no enabled user {id:?}")
            }
        }
    }
}

pub async fn token(cmd: TokenCommand) -> Result<()> {
    match cmd {
        TokenCommand::Create {
            principal,
            scopes,
            days,
            platform,
        } => {
            if !valid_principal(&principal) {
                bail!("principal may use A-Z a-z 0-9 - _ . : @ (at most 128 characters)");
            }
            for scope in &scopes {
                scope.parse::<msec_policy::Action>()?;
            }
            if !(1..=365).contains(&days) {
                bail!("--days must be between 1 and 365");
            }
            let issued = msec_identity::issue_token()?;
            let stored = NewToken {
                id: issued.stored.id.clone(),
                principal: principal.clone(),
                scopes,
                secret_hash: issued.stored.secret_hash,
                expires_ms: msec_store::now_ms() + i64::from(days) * 86_400_000,
            };
            let is_user = with_store(&platform, move |s| {
                s.add_token(&stored, "cli")?;
                Ok(s.users()?.iter().any(|u| u.id == stored.principal))
            })
            .await?;
            if !is_user {
                // Legitimate (a service account), and also what a mistyped user id gives.
                eprintln!(
                    "note: {principal} is no user, so the token acts for a service account: it \
                     may do only what grants to {principal} allow (msec grant --principal \
                     {principal} …)"
                );
            }
            let unit = if days == 1 { "day" } else { "days" };
            println!("token id {} (expires in {days} {unit})", issued.stored.id);
            println!("token (shown once, store it safely): {}", issued.text);
            Ok(())
        }
        TokenCommand::List { platform } => {
            let now = msec_store::now_ms();
            let tokens = with_existing_store(&platform, |s| Ok(s.tokens()?)).await?;
            if tokens.is_empty() {
                println!("no tokens (see `msec token create --help`)");
            } else {
                println!(
                    "{:<16}  {:<24} {:<28} {:<8} EXPIRES",
                    "ID", "PRINCIPAL", "SCOPES", "STATUS"
                );
            }
            for t in tokens {
                let state = if t.revoked {
                    "revoked"
                } else if t.expires_ms <= now {
                    "expired"
                } else {
                    "active"
                };
                println!(
                    "{:<16}  {:<24} {:<28} {state:<8} {}",
                    t.id,
                    t.principal,
                    t.scopes.join(","),
                    expiry(t.expires_ms, now)
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id, platform } => {
            let target = id.clone();
            if with_existing_store(&platform, move |s| Ok(s.revoke_token(&target, "cli")?)).await? {
                println!("revoked token {id}");
                Ok(())
            } else {
                bail!("no active token {id:?}")
            }
        }
    }
}

#[derive(clap::Args)]
pub struct GrantArgs {
    /// Who receives the grant: a user or service id, or role:NAME
    #[arg(long, required_unless_present = "list")]
    principal: Option<String>,
    /// Actions, comma-separated: read, subscribe, act, manage, audit, sell, buy
    #[arg(long, value_delimiter = ',', required_unless_present = "list")]
    actions: Vec<String>,
    /// Resource pattern, e.g. santander/resident-007/** (see docs/access-control.md)
    #[arg(long, required_unless_present = "list")]
    resource: Option<String>,
    /// A deny rule instead of an allow (deny wins over any allow)
    #[arg(long)]
    deny: bool,
    /// Valid from this Unix time in milliseconds
    #[arg(long, value_name = "MS")]
    from_ms: Option<i64>,
    /// Valid until this Unix time in milliseconds (exclusive)
    #[arg(long, value_name = "MS")]
    until_ms: Option<i64>,
    /// Only requests declaring this purpose match
    #[arg(long)]
    purpose: Option<String>,
    /// List the active grants instead
    #[arg(long, conflicts_with_all = ["principal", "resource"])]
    list: bool,
    #[command(flatten)]
    platform: StoreArgs,
}

#[derive(clap::Args)]
pub struct RevokeArgs {
    /// The grant id (see `msec grant --list`)
    id: i64,
    #[command(flatten)]
    platform: StoreArgs,
}

pub async fn grant(a: GrantArgs) -> Result<()> {
    if a.list {
        let grants = with_existing_store(&a.platform, |s| Ok(s.grants()?)).await?;
        println!("{}", serde_json::to_string_pretty(&grants)?);
        return Ok(());
    }
    let (Some(principal), Some(resource)) = (a.principal, a.resource) else {
        bail!("give --principal, --actions and --resource");
    };
    let subject = principal.strip_prefix("role:").unwrap_or(&principal);
    if !valid_principal(subject) {
        bail!("principal may use A-Z a-z 0-9 - _ . : @ (at most 128 characters)");
    }
    for action in &a.actions {
        action.parse::<msec_policy::Action>()?;
    }
    resource.parse::<msec_policy::Pattern>()?;
    let new = msec_store::NewGrant {
        effect: if a.deny { "deny" } else { "allow" }.into(),
        subject: principal,
        actions: a.actions,
        resource,
        valid_from_ms: a.from_ms,
        valid_until_ms: a.until_ms,
        purpose: a.purpose,
    };
    let g = with_store(&a.platform, move |s| Ok(s.add_grant(&new, "cli")?)).await?;
    println!(
        "grant {}: {} {} {} on {} (a running server applies it within a second)",
        g.id,
        g.effect,
        g.subject,
        g.actions.join(","),
        g.resource
    );
    Ok(())
}

pub async fn revoke(a: RevokeArgs) -> Result<()> {
    let id = a.id;
    if with_existing_store(&a.platform, move |s| Ok(s.revoke_grant(id, "cli")?)).await? {
        println!("grant {id} revoked");
        Ok(())
    } else {
        bail!("no active grant {id} (see `msec grant --list`)")
    }
}
