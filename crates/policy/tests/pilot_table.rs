//! A table of 336 access cases (8 pilot principals x 7 actions x 6 resources) against the
//! pilot policy. The expected answers are written out below as data — the allow list — not
//! derived from the rules, so the engine is checked against the specification.

use msec_policy::*;

const DAY: i64 = 86_400_000;
const NOW: i64 = 1_764_000_000_000; // inside every validity window below (a weekday, 16:00 UTC)

fn rule(id: &str, effect: Effect, subject: Subject, actions: &[Action], resource: &str) -> Rule {
    Rule {
        id: id.into(),
        effect,
        subject,
        actions: actions.to_vec(),
        resource: resource.parse().unwrap(),
        conditions: Conditions::default(),
    }
}

fn role(r: &str) -> Subject {
    Subject::Role(r.into())
}

fn pilot_policy() -> PolicySet {
    use Action::*;
    use Effect::*;
    let mut caregiver_grant = rule(
        "grant-juan-bed",
        Allow,
        Subject::Principal("user:juan".into()),
        &[Read, Subscribe],
        "santander/home-007/bed/**",
    );
    caregiver_grant.conditions = Conditions {
        valid_from_ms: Some(NOW - DAY),
        valid_until_ms: Some(NOW + DAY),
        ..Default::default()
    };
    let mut buyer = rule(
        "buyers-research",
        Allow,
        role("data-buyer"),
        &[Buy],
        "santander/park/**",
    );
    buyer.conditions.purpose = Some("research".into());
    PolicySet::new(vec![
        rule("admins", Allow, role("admin"), &ACTIONS, "**"),
        rule(
            "operators",
            Allow,
            role("operator"),
            &[Read, Subscribe, Act],
            "santander/**",
        ),
        rule(
            "maria-home",
            Allow,
            Subject::Principal("user:maria".into()),
            &[Read, Subscribe, Act, Manage],
            "santander/home-007/**",
        ),
        caregiver_grant,
        rule(
            "caregivers-never-act",
            Deny,
            role("caregiver"),
            &[Act],
            "**",
        ),
        rule(
            "citizens-park",
            Allow,
            role("citizen"),
            &[Read, Subscribe],
            "santander/park/**",
        ),
        rule(
            "providers-sell-park",
            Allow,
            role("data-provider"),
            &[Sell],
            "santander/park/**",
        ),
        buyer,
        rule("auditors", Allow, role("auditor"), &[Audit], "**"),
        rule(
            "no-camera-streams",
            Deny,
            Subject::Anyone,
            &[Subscribe],
            "*/*/camera/**",
        ),
    ])
    .unwrap()
}

const RESOURCES: [&str; 6] = [
    "santander/home-007/bed/occupancy",
    "santander/home-007/plug/switch",
    "santander/home-007/camera/frames",
    "santander/home-008/bed/occupancy",
    "santander/park/env-01/temperature",
    "fujisawa/truck-01/gps/position",
];

/// (principal, roles, allowed "action resource-number" pairs).
fn expectations() -> Vec<(&'static str, &'static str, Vec<&'static str>)> {
    let all_but_camera_subscribe: Vec<&str> = vec![
        "read 0",
        "subscribe 0",
        "act 0",
        "manage 0",
        "audit 0",
        "sell 0",
        "buy 0",
        "read 1",
        "subscribe 1",
        "act 1",
        "manage 1",
        "audit 1",
        "sell 1",
        "buy 1",
        "read 2",
        "act 2",
        "manage 2",
        "audit 2",
        "sell 2",
        "buy 2",
        "read 3",
        "subscribe 3",
        "act 3",
        "manage 3",
        "audit 3",
        "sell 3",
        "buy 3",
        "read 4",
        "subscribe 4",
        "act 4",
        "manage 4",
        "audit 4",
        "sell 4",
        "buy 4",
        "read 5",
        "subscribe 5",
        "act 5",
        "manage 5",
        "audit 5",
        "sell 5",
        "buy 5",
    ];
    vec![
        ("user:ana", "admin", all_but_camera_subscribe),
        (
            "user:olga",
            "operator",
            vec![
                "read 0",
                "subscribe 0",
                "act 0",
                "read 1",
                "subscribe 1",
                "act 1",
                "read 2",
                "act 2",
                "read 3",
                "subscribe 3",
                "act 3",
                "read 4",
                "subscribe 4",
                "act 4",
            ],
        ),
        ("user:juan", "caregiver", vec!["read 0", "subscribe 0"]),
        (
            "user:maria",
            "resident",
            vec![
                "read 0",
                "subscribe 0",
                "act 0",
                "manage 0",
                "read 1",
                "subscribe 1",
                "act 1",
                "manage 1",
                "read 2",
                "act 2",
                "manage 2",
            ],
        ),
        ("user:carlos", "citizen", vec!["read 4", "subscribe 4"]),
        ("user:pedro", "data-provider", vec!["sell 4"]),
        ("user:bea", "data-buyer", vec!["buy 4"]),
        (
            "user:aud",
            "auditor",
            vec![
                "audit 0", "audit 1", "audit 2", "audit 3", "audit 4", "audit 5",
            ],
        ),
    ]
}

#[test]
fn pilot_access_table() {
    let policy = pilot_policy();
    let mut cases = 0;
    for (principal, role, allowed) in expectations() {
        let roles = vec![role.to_string()];
        for action in ACTIONS {
            for (n, resource) in RESOURCES.iter().enumerate() {
                let req = Request {
                    principal,
                    roles: &roles,
                    action,
                    resource,
                    at_ms: NOW,
                    purpose: Some("research"),
                };
                let decision = policy.decide(&req);
                let expected = allowed.contains(&format!("{action} {n}").as_str());
                assert_eq!(
                    decision.allowed, expected,
                    "{principal} ({role}) {action} {resource}: got {decision}"
                );
                // An allow always names the rule that granted it.
                assert!(!decision.allowed || decision.rule.is_some());
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 336);
}

#[test]
fn deny_wins_and_explains_itself() {
    let policy = pilot_policy();
    let roles = vec!["admin".to_string()];
    let req = Request {
        principal: "user:ana",
        roles: &roles,
        action: Action::Subscribe,
        resource: RESOURCES[2],
        at_ms: NOW,
        purpose: None,
    };
    assert_eq!(
        policy.decide(&req),
        Decision {
            allowed: false,
            rule: Some("no-camera-streams".into())
        }
    );
    let roles = vec!["caregiver".to_string(), "operator".to_string()];
    let req = Request {
        principal: "user:juan",
        roles: &roles,
        action: Action::Act,
        resource: RESOURCES[1],
        at_ms: NOW,
        purpose: None,
    };
    assert_eq!(
        policy.decide(&req).rule.as_deref(),
        Some("caregivers-never-act"),
        "deny wins over the operator allow"
    );
    let nobody = Request {
        principal: "user:x",
        roles: &[],
        action: Action::Read,
        resource: RESOURCES[4],
        at_ms: NOW,
        purpose: None,
    };
    assert_eq!(
        policy.decide(&nobody).to_string(),
        "deny (no rule allows it: deny by default)"
    );
}

#[test]
fn conditions_limit_grants() {
    let policy = pilot_policy();
    let roles = vec!["caregiver".to_string()];
    let at = |t| Request {
        principal: "user:juan",
        roles: &roles,
        action: Action::Read,
        resource: RESOURCES[0],
        at_ms: t,
        purpose: None,
    };
    assert!(policy.decide(&at(NOW)).allowed);
    assert!(!policy.decide(&at(NOW + DAY)).allowed, "grant expired");
    assert!(
        !policy.decide(&at(NOW - 2 * DAY)).allowed,
        "grant not yet valid"
    );
    let buyer = vec!["data-buyer".to_string()];
    let buy = |purpose| Request {
        principal: "user:bea",
        roles: &buyer,
        action: Action::Buy,
        resource: RESOURCES[4],
        at_ms: NOW,
        purpose,
    };
    assert!(policy.decide(&buy(Some("research"))).allowed);
    assert!(!policy.decide(&buy(Some("advertising"))).allowed);
    assert!(!policy.decide(&buy(None)).allowed);
}

#[test]
fn invalid_policies_are_refused() {
    let r = rule("x", Effect::Allow, Subject::Anyone, &[Action::Read], "a/**");
    assert!(PolicySet::new(vec![r.clone(), r.clone()]).is_err());
    let mut no_action = r;
    no_action.actions.clear();
    assert!(PolicySet::new(vec![no_action]).is_err());
    assert!("delete".parse::<Action>().is_err());
}
