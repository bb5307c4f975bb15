//! Access decisions: may this principal perform this action on this resource, now, for this
//! purpose — and which rule said so.
//!
//! Rules are plain data: an effect (allow or deny), a subject (one principal, a role, or
//! anyone), actions, a resource path pattern and optional conditions. Evaluation is deny by
//! default and deny wins (see docs/access-control.md). This crate owns the decision only: it
//! never stores rules, never authenticates anyone and never logs — callers record denials as
//! security events.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Read,
    Subscribe,
    Act,
    Manage,
    Audit,
    Sell,
    Buy,
}

pub const ACTIONS: [Action; 7] = [
    Action::Read,
    Action::Subscribe,
    Action::Act,
    Action::Manage,
    Action::Audit,
    Action::Sell,
    Action::Buy,
];

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Read => "read",
            Action::Subscribe => "subscribe",
            Action::Act => "act",
            Action::Manage => "manage",
            Action::Audit => "audit",
            Action::Sell => "sell",
            Action::Buy => "buy",
        })
    }
}

impl FromStr for Action {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Action, PolicyError> {
        ACTIONS
            .into_iter()
            .find(|a| a.to_string() == s)
            .ok_or_else(|| {
                PolicyError::Invalid(format!(
                    "unknown action {s:?}; actions: read, subscribe, act, manage, audit, sell, buy"
                ))
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("invalid policy: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// Whom a rule is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Principal(String),
    Role(String),
    Anyone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    One,
    /// `**` (last only): zero or more remaining segments.
    Rest,
}

/// A resource path pattern: `tenant/provider/service/resource` with `*` for one segment and a
/// trailing `**` for any number, e.g. `santander/home-007/**` or `*/*/bed/occupancy`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(Vec<Segment>);

impl FromStr for Pattern {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Pattern, PolicyError> {
        let parts: Vec<&str> = s.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (i, p) in parts.iter().enumerate() {
            segments.push(match *p {
                "**" if i == parts.len() - 1 => Segment::Rest,
                "**" => {
                    return Err(PolicyError::Invalid(format!(
                        "{s:?}: ** may only end a pattern"
                    )))
                }
                "*" => Segment::One,
                "" => return Err(PolicyError::Invalid(format!("{s:?}: empty path segment"))),
                lit if lit.contains('*') => {
                    return Err(PolicyError::Invalid(format!(
                        "{s:?}: * stands for a whole segment"
                    )))
                }
                lit => Segment::Literal(lit.to_string()),
            });
        }
        Ok(Pattern(segments))
    }
}

impl Pattern {
    pub fn matches(&self, resource: &str) -> bool {
        let mut parts = resource.split('/');
        for seg in &self.0 {
            match seg {
                Segment::Rest => return true,
                Segment::One => {
                    if parts.next().is_none_or(str::is_empty) {
                        return false;
                    }
                }
                Segment::Literal(l) => {
                    if parts.next() != Some(l.as_str()) {
                        return false;
                    }
                }
            }
        }
        parts.next().is_none()
    }
}

/// Optional limits on when and why a rule applies. All present limits must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Conditions {
    /// Valid from this Unix millisecond (inclusive).
    pub valid_from_ms: Option<i64>,
    /// Valid until this Unix millisecond (exclusive).
    pub valid_until_ms: Option<i64>,
    /// Local hours [from, to) in which the rule applies; wraps midnight when from > to.
    pub hours: Option<(u8, u8)>,
    /// Offset of local time from UTC in minutes, for `hours`.
    pub utc_offset_minutes: i32,
    /// The request must declare this purpose.
    pub purpose: Option<String>,
}

impl Conditions {
    fn hold(&self, at_ms: i64, purpose: Option<&str>) -> bool {
        if self.valid_from_ms.is_some_and(|t| at_ms < t)
            || self.valid_until_ms.is_some_and(|t| at_ms >= t)
        {
            return false;
        }
        if let Some((from, to)) = self.hours {
            let minutes =
                (at_ms.div_euclid(60_000) + i64::from(self.utc_offset_minutes)).rem_euclid(1440);
            let hour = (minutes / 60) as u8;
            let inside = if from <= to {
                hour >= from && hour < to
            } else {
                hour >= from || hour < to
            };
            if !inside {
                return false;
            }
        }
        match &self.purpose {
            Some(p) => purpose == Some(p.as_str()),
            None => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub effect: Effect,
    pub subject: Subject,
    pub actions: Vec<Action>,
    pub resource: Pattern,
    pub conditions: Conditions,
}

/// What is being asked.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub principal: &'a str,
    pub roles: &'a [String],
    pub action: Action,
    pub resource: &'a str,
    pub at_ms: i64,
    pub purpose: Option<&'a str>,
}

/// The answer, with the rule that decided it (None: no rule allowed, so deny by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Option<String>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.rule, self.allowed) {
            (Some(r), true) => write!(f, "allow (rule {r})"),
            (Some(r), false) => write!(f, "deny (rule {r})"),
            (None, _) => write!(f, "deny (no rule allows it: deny by default)"),
        }
    }
}

/// Rules indexed by subject, so a decision looks only at the rules that can apply to the
/// asking principal and its roles, however many rules exist for others.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    rules: Vec<Rule>,
    by_subject: HashMap<Subject, Vec<usize>>,
}

impl PolicySet {
    /// Rule ids must be unique: a decision names its rule.
    pub fn new(rules: Vec<Rule>) -> Result<PolicySet, PolicyError> {
        let mut by_subject: HashMap<Subject, Vec<usize>> = HashMap::new();
        let mut ids = std::collections::HashSet::new();
        for (i, r) in rules.iter().enumerate() {
            if !ids.insert(r.id.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "rule id {:?} is used twice",
                    r.id
                )));
            }
            if r.actions.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "rule {:?} names no action",
                    r.id
                )));
            }
            by_subject.entry(r.subject.clone()).or_default().push(i);
        }
        Ok(PolicySet { rules, by_subject })
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Deny by default; among the rules that apply, any deny wins over every allow; the
    /// deciding rule is the earliest (in rule order) of the winning effect.
    pub fn decide(&self, req: &Request) -> Decision {
        let (mut allow, mut deny): (Option<usize>, Option<usize>) = (None, None);
        let mut consider = |subject: &Subject| {
            for &i in self
                .by_subject
                .get(subject)
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                let r = &self.rules[i];
                let slot = match r.effect {
                    Effect::Allow => &mut allow,
                    Effect::Deny => &mut deny,
                };
                if slot.is_some_and(|s| s < i) {
                    continue;
                }
                if r.actions.contains(&req.action)
                    && r.resource.matches(req.resource)
                    && r.conditions.hold(req.at_ms, req.purpose)
                {
                    *slot = Some(i);
                }
            }
        };
        consider(&Subject::Principal(req.principal.to_string()));
        for role in req.roles {
            consider(&Subject::Role(role.clone()));
        }
        consider(&Subject::Anyone);
        match (deny, allow) {
            (Some(d), _) => Decision {
                allowed: false,
                rule: Some(self.rules[d].id.clone()),
            },
            (None, Some(a)) => Decision {
                allowed: true,
                rule: Some(self.rules[a].id.clone()),
            },
            (None, None) => Decision {
                allowed: false,
                rule: None,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let p: Pattern = "santander/*/bed/**".parse().unwrap();
        assert!(p.matches("santander/home-007/bed/occupancy"));
        assert!(p.matches("santander/home-007/bed"));
        assert!(!p.matches("fujisawa/home-007/bed/occupancy"));
        assert!(!p.matches("santander/home-007/door/open"));
        let exact: Pattern = "a/b".parse().unwrap();
        assert!(exact.matches("a/b") && !exact.matches("a/b/c") && !exact.matches("a"));
        assert!(!"a/*".parse::<Pattern>().unwrap().matches("a/"));
        for bad in ["a/**/b", "a//b", "a/b*", ""] {
            assert!(bad.parse::<Pattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn hours_wrap_midnight() {
        let c = Conditions {
            hours: Some((22, 6)),
            ..Default::default()
        };
        let at = |h: i64| h * 3_600_000;
        assert!(
            c.hold(at(23), None)
                && c.hold(at(2), None)
                && !c.hold(at(12), None)
                && !c.hold(at(6), None)
        );
        let tokyo = Conditions {
            hours: Some((9, 17)),
            utc_offset_minutes: 540,
            ..Default::default()
        };
        assert!(tokyo.hold(at(1), None) && !tokyo.hold(at(9), None));
    }
}
