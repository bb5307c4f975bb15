//! The access table: every pilot principal x action x resource, decided through the same
//! `authorize` every endpoint uses, on SQLite and PostgreSQL. Each refusal must yield exactly
//! one security event, each permission none; revocations take effect at once.

use msec_access::{device_resource, tenant_events, Access, SECURITY_EVENTS};
use msec_ingest::Ingest;
use msec_policy::Action;
use msec_server::{authorize, AppState, DbHandle};
use msec_store::{NewDevice, NewGrant, NewToken, NewUser, Store};
use std::sync::Arc;

const PRINCIPALS: [(&str, &str, &str); 10] = [
    ("admin", "*", "admin"),
    ("op-santander", "santander", "operator"),
    ("op-fujisawa", "fujisawa", "operator"),
    ("resident-007", "santander", "resident"),
    ("resident-008", "santander", "resident"),
    ("caregiver-ana", "santander", "caregiver"),
    ("citizen-1", "santander", "citizen"),
    ("auditor-1", "santander", "auditor"),
    ("buyer-1", "santander", "data-buyer"),
    ("provider-1", "santander", "data-provider"),
];

/// (device id, tenant, owner)
const DEVICES: [(&str, &str, &str); 4] = [
    ("park-1", "santander", "santander"),
    ("bed-7", "santander", "resident-007"),
    ("bed-8", "santander", "resident-008"),
    ("truck-1", "fujisawa", "fujisawa"),
];

const ACTIONS: [Action; 5] = [
    Action::Read,
    Action::Subscribe,
    Action::Act,
    Action::Manage,
    Action::Audit,
];

/// Everything allowed, written out; anything else must be refused. `ops-token` is
/// op-santander through an API token scoped to `read` only.
const ALLOWED: &[(&str, &str, &str)] = &[
    ("op-santander", "read", "park-1"),
    ("op-santander", "subscribe", "park-1"),
    ("op-santander", "act", "park-1"),
    ("op-santander", "read", "bed-7"),
    ("op-santander", "subscribe", "bed-7"),
    ("op-santander", "act", "bed-7"),
    ("op-santander", "read", "bed-8"),
    ("op-santander", "subscribe", "bed-8"),
    ("op-santander", "act", "bed-8"),
    ("op-fujisawa", "read", "truck-1"),
    ("op-fujisawa", "subscribe", "truck-1"),
    ("op-fujisawa", "act", "truck-1"),
    ("resident-007", "read", "bed-7"),
    ("resident-007", "subscribe", "bed-7"),
    ("resident-007", "act", "bed-7"),
    ("resident-007", "manage", "bed-7"),
    ("resident-008", "read", "bed-8"),
    ("resident-008", "subscribe", "bed-8"),
    ("resident-008", "act", "bed-8"),
    ("resident-008", "manage", "bed-8"),
    // Granted by resident-007 for her bed sensor only; caregivers never act.
    ("caregiver-ana", "read", "bed-7"),
    ("caregiver-ana", "subscribe", "bed-7"),
    ("citizen-1", "read", "park-1"),
    ("citizen-1", "subscribe", "park-1"),
    ("auditor-1", "audit", "park-1"),
    ("auditor-1", "audit", "bed-7"),
    ("auditor-1", "audit", "bed-8"),
    // Santander's security events, not Fujisawa's, nor all of them.
    ("auditor-1", "audit", "events-santander"),
    ("ops-token", "read", "park-1"),
    ("ops-token", "read", "bed-7"),
    ("ops-token", "read", "bed-8"),
];

fn resource(key: &str) -> String {
    if key == "events" {
        return SECURITY_EVENTS.to_string();
    }
    if let Some(tenant) = key.strip_prefix("events-") {
        return tenant_events(tenant);
    }
    let (id, tenant, owner) = DEVICES.iter().find(|d| d.0 == key).unwrap();
    device_resource(tenant, owner, id)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

async fn table(url: String) {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-access-"));
    let keys: Arc<dyn msec_store::KekProvider> = msec_testkit::test_keys();
    let open = {
        let (url, keys) = (url.clone(), keys.clone());
        move || Store::open(&url, keys.clone()).unwrap()
    };
    let o = open.clone();
    let token_text = blocking(move || {
        let mut s = o();
        // One hash for everyone: Argon2id costs time, and these passwords are never used.
        let hash = msec_identity::hash_password("correct horse battery staple").unwrap();
        for (id, tenant, role) in PRINCIPALS {
            s.add_user(
                &NewUser {
                    id: id.into(),
                    tenant: tenant.into(),
                    roles: vec![role.into()],
                    password_hash: hash.clone(),
                },
                "test",
            )
            .unwrap();
        }
        for (i, (id, tenant, owner)) in DEVICES.iter().enumerate() {
            s.register_device(&NewDevice {
                id: id.to_string(),
                tenant: tenant.to_string(),
                owner: owner.to_string(),
                name: id.to_string(),
                kind: "test".into(),
                location: None,
                public_key: [i as u8 + 1; 32],
                key_id: [i as u8 + 1; 16],
            })
            .unwrap();
        }
        s.add_grant(
            &NewGrant {
                effect: "allow".into(),
                subject: "caregiver-ana".into(),
                actions: vec!["read".into(), "subscribe".into(), "act".into()],
                resource: "santander/resident-007/bed-7".into(),
                valid_from_ms: None,
                valid_until_ms: None,
                purpose: None,
            },
            "resident-007",
        )
        .unwrap();
        let issued = msec_identity::issue_token().unwrap();
        s.add_token(
            &NewToken {
                id: issued.stored.id.clone(),
                principal: "op-santander".into(),
                scopes: vec!["read".into()],
                secret_hash: issued.stored.secret_hash,
                expires_ms: msec_store::now_ms() + 60_000,
            },
            "test",
        )
        .unwrap();
        issued.text
    })
    .await;
    // The PostgreSQL driver blocks: everything that opens or queries runs off the async workers.
    let o = open.clone();
    let (ingest, access, notary, db) = blocking(move || {
        let (ingest, _) = Ingest::start(o(), Default::default()).unwrap();
        let access = Arc::new(Access::open(o()).unwrap());
        let key = msec_notary::LogKey::from_seed("test/log", [1; 32]).unwrap();
        let notary = Arc::new(
            msec_notary::Notary::open(o(), key, dir.join("checkpoint"), vec![], 0).unwrap(),
        );
        (ingest, access, notary, DbHandle::start(o()).unwrap())
    })
    .await;
    let state = AppState {
        db: db.clone(),
        ingest,
        notary,
        access: access.clone(),
        commands: None,
        trusted_proxies: Default::default(),
    };
    let peer = "127.0.0.1:9".parse().unwrap();
    let events = || {
        let db = db.clone();
        async move { db.call(|s| s.counts()).await.unwrap().security_events }
    };

    let a = access.clone();
    let mut principals: Vec<(String, msec_access::Principal)> = blocking(move || {
        PRINCIPALS
            .iter()
            .map(|(id, _, _)| (id.to_string(), a.named(id).unwrap()))
            .collect()
    })
    .await;
    let a = access.clone();
    principals.push((
        "ops-token".into(),
        blocking(move || a.token(&token_text, msec_store::now_ms()))
            .await
            .unwrap(),
    ));

    let mut cases = 0;
    let mut denials = 0;
    for (name, p) in &principals {
        for action in ACTIONS {
            for key in [
                "park-1",
                "bed-7",
                "bed-8",
                "truck-1",
                "events",
                "events-santander",
                "events-fujisawa",
            ] {
                let expected = name == "admin"
                    || ALLOWED.contains(&(name.as_str(), &*action.to_string(), key));
                let before = events().await;
                let got = authorize(&state, p, action, &resource(key), peer).await;
                let after = events().await;
                assert_eq!(got.is_ok(), expected, "{name} {action} {key}: {got:?}");
                if expected {
                    assert_eq!(
                        after, before,
                        "{name} {action} {key}: an allowed request made an event"
                    );
                } else {
                    let refused = got.unwrap_err();
                    assert_eq!((refused.status.as_u16(), refused.code), (403, "forbidden"));
                    assert_eq!(
                        after,
                        before + 1,
                        "{name} {action} {key}: a refusal must make exactly one event"
                    );
                    denials += 1;
                }
                cases += 1;
            }
        }
    }
    assert_eq!(cases, 385);
    // Which events each may list: the auditor Santander's, the administrator all, others none.
    let scope = |name: &str| {
        let p = &principals.iter().find(|(n, _)| n == name).unwrap().1;
        access.event_scope(p, msec_store::now_ms())
    };
    assert_eq!(
        scope("auditor-1"),
        msec_access::EventScope::Tenants(vec!["santander".into()])
    );
    assert_eq!(scope("admin"), msec_access::EventScope::All);
    assert_eq!(
        scope("op-santander"),
        msec_access::EventScope::Tenants(vec![])
    );

    // Revocation timing: the caregiver's grant, revoked, stops at the very next decision.
    let a = access.clone();
    let ana = blocking(move || a.named("caregiver-ana").unwrap()).await;
    let bed7 = resource("bed-7");
    assert!(authorize(&state, &ana, Action::Subscribe, &bed7, peer)
        .await
        .is_ok());
    let grant_id = db.call(|s| Ok(s.grants()?[0].id)).await.unwrap();
    db.call(move |s| s.revoke_grant(grant_id, "resident-007"))
        .await
        .unwrap();
    let a = access.clone();
    blocking(move || a.reload().unwrap()).await;
    let before = events().await;
    assert!(authorize(&state, &ana, Action::Subscribe, &bed7, peer)
        .await
        .is_err());
    assert_eq!(events().await, before + 1);
    // A grant with a validity window: not before it, not after it.
    let now = msec_store::now_ms();
    let window = NewGrant {
        effect: "allow".into(),
        subject: "caregiver-ana".into(),
        actions: vec!["read".into()],
        resource: "santander/resident-008/**".into(),
        valid_from_ms: Some(now + 60_000),
        valid_until_ms: Some(now + 120_000),
        purpose: None,
    };
    db.call(move |s| s.add_grant(&window, "resident-008"))
        .await
        .unwrap();
    // Changed by "another process": picked up by refresh (the server polls it twice a second).
    let a = access.clone();
    blocking(move || a.refresh().unwrap()).await;
    let bed8 = resource("bed-8");
    assert!(
        !access.decide(&ana, Action::Read, &bed8, now).allowed,
        "before the window"
    );
    assert!(
        access
            .decide(&ana, Action::Read, &bed8, now + 90_000)
            .allowed,
        "inside the window"
    );
    assert!(
        !access
            .decide(&ana, Action::Read, &bed8, now + 120_000)
            .allowed,
        "after the window"
    );
    // A grant to a tenant's role reaches that tenant's holders of it only.
    let to_role = NewGrant {
        effect: "allow".into(),
        subject: "role:santander:operator".into(),
        actions: vec!["manage".into()],
        resource: "fujisawa/fujisawa/truck-1".into(),
        valid_from_ms: None,
        valid_until_ms: None,
        purpose: None,
    };
    db.call(move |s| s.add_grant(&to_role, "admin"))
        .await
        .unwrap();
    let a = access.clone();
    blocking(move || a.reload().unwrap()).await;
    let manager = |name: &'static str| {
        let p = &principals.iter().find(|(n, _)| n == name).unwrap().1;
        access
            .decide(p, Action::Manage, &resource("truck-1"), now)
            .allowed
    };
    assert!(manager("op-santander"));
    assert!(!manager("op-fujisawa"));
    // A resident named like a tenant rule's suffix, in a tenant named `owner`: the two rules'
    // ids must not clash, or no rule change would apply any more.
    let odd = NewUser {
        id: "operators".into(),
        tenant: "owner".into(),
        roles: vec!["resident".into()],
        password_hash: "$argon2id$stand-in".into(),
    };
    db.call(move |s| s.add_user(&odd, "admin")).await.unwrap();
    let a = access.clone();
    blocking(move || a.reload().unwrap()).await;
    // A disabled user is nobody, at once.
    db.call(|s| s.disable_user("op-fujisawa", "test"))
        .await
        .unwrap();
    let a = access.clone();
    assert!(blocking(move || a.named("op-fujisawa")).await.is_none());
    println!("{cases} access cases, {denials} refusals, each with exactly one security event");
    // Their PostgreSQL connections must close off the async workers too.
    blocking(move || drop((state, access))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_table_sqlite() {
    let dir = std::env::temp_dir().join(msec_testkit::unique("msec-access-db-"));
    table(dir.join("msec.db").to_string_lossy().into_owned()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_table_postgres() {
    if let Some(url) = msec_testkit::postgres_url() {
        table(url).await;
    }
}
