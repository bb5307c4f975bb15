//! `msec policy explain`: what the access rules decide for one request, and which rule decided,
//! over the rules in force (built-in role rules plus stored grants) or a TOML rules file.

use anyhow::{bail, Context, Result};
use clap::Args;
use msec_policy::{Action, Conditions, Decision, Effect, PolicySet, Request, Rule, Subject};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Args)]
pub struct ExplainArgs {
    /// TOML file of [[rule]] tables (see docs/access-control.md) [default: the rules in force
    /// in the database: built-in role rules and stored grants]
    #[arg(long, value_name = "FILE")]
    pub policies: Option<PathBuf>,
    /// Who asks, e.g. user:maria
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub principal: String,
    /// The principal's roles, comma-separated, e.g. resident,caregiver (with --policies only;
    /// otherwise the user's stored roles count)
    #[arg(long, value_delimiter = ',', requires = "policies")]
    pub roles: Vec<String>,
    /// read, subscribe, act, manage, audit, sell or buy
    #[arg(long)]
    pub action: Action,
    /// Resource path, e.g. santander/home-007/bed/occupancy
    #[arg(long, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub resource: String,
    /// Declared purpose of the request, e.g. research
    #[arg(long)]
    pub purpose: Option<String>,
    /// Decide as of this Unix time in milliseconds [default: now]
    #[arg(long, value_name = "MS")]
    pub at: Option<i64>,
    #[command(flatten)]
    pub platform: crate::config::StoreArgs,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    rule: Vec<RuleEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleEntry {
    id: String,
    effect: String,
    principal: Option<String>,
    role: Option<String>,
    #[serde(default)]
    anyone: bool,
    actions: Vec<String>,
    resource: String,
    valid_from_ms: Option<i64>,
    valid_until_ms: Option<i64>,
    hours: Option<(u8, u8)>,
    #[serde(default)]
    utc_offset_minutes: i32,
    purpose: Option<String>,
}

fn rule(e: RuleEntry) -> Result<Rule> {
    let subject = match (e.principal, e.role, e.anyone) {
        (Some(p), None, false) => Subject::Principal(p),
        (None, Some(r), false) => Subject::Role(r),
        (None, None, true) => Subject::Anyone,
        _ => bail!(
            "rule {:?}: give exactly one of principal, role or anyone = true",
            e.id
        ),
    };
    let effect = match e.effect.as_str() {
        "allow" => Effect::Allow,
        "deny" => Effect::Deny,
        other => bail!(
            "rule {:?}: effect {other:?} is neither allow nor deny",
            e.id
        ),
    };
    if e.hours.is_some_and(|(a, b)| a > 23 || b > 24) {
        bail!("rule {:?}: hours are 0-24", e.id);
    }
    Ok(Rule {
        actions: e
            .actions
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()
            .with_context(|| format!("rule {:?}", e.id))?,
        resource: e
            .resource
            .parse()
            .with_context(|| format!("rule {:?}", e.id))?,
        conditions: Conditions {
            valid_from_ms: e.valid_from_ms,
            valid_until_ms: e.valid_until_ms,
            hours: e.hours,
            utc_offset_minutes: e.utc_offset_minutes,
            purpose: e.purpose,
        },
        id: e.id,
        effect,
        subject,
    })
}

pub fn load(path: &PathBuf) -> Result<PolicySet> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: File =
        toml::from_str(&text).with_context(|| format!("policy file {}", path.display()))?;
    let rules = file
        .rule
        .into_iter()
        .map(rule)
        .collect::<Result<Vec<_>>>()
        .with_context(|| format!("policy file {}", path.display()))?;
    Ok(PolicySet::new(rules)?)
}

pub async fn explain(args: ExplainArgs) -> Result<Decision> {
    let Some(path) = &args.policies else {
        let settings = args.platform.resolve()?;
        let store = crate::platform::open_existing_store(&settings).await?;
        return tokio::task::spawn_blocking(move || {
            let at = args.at.unwrap_or_else(msec_store::now_ms);
            let access = msec_access::Access::open(store)?;
            let p = access
                .named(&args.principal)
                .with_context(|| format!("{} is a disabled user", args.principal))?;
            Ok(access.decide(&p, args.action, &args.resource, at))
        })
        .await?;
    };
    let set = load(path)?;
    let request = Request {
        principal: &args.principal,
        roles: &args.roles,
        action: args.action,
        resource: &args.resource,
        at_ms: args.at.unwrap_or_else(msec_store::now_ms),
        purpose: args.purpose.as_deref(),
    };
    Ok(set.decide(&request))
}
