//! Interoperability: a reading made by an independent COSE implementation (Python pycose +
//! cbor2, written from docs/protocol.md alone) is accepted, and msec's own envelopes verify
//! there too.

use msec_device::{unix_now, Device, DeviceKey};
use msec_ingest::{Config, Ingest, Outcome, Source};
use msec_store::{NewDevice, ReadingQuery, Store};
use std::process::Command;

fn script() -> String {
    format!(
        "{}/../../interop/cose_reading.py",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn python(args: &[&str]) -> Option<String> {
    let probe = Command::new("python3")
        .args(["-c", "import pycose, cbor2"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        msec_testkit::missing(
            "interop with Python pycose + cbor2",
            "pip install pycose cbor2",
        );
        return None;
    }
    let out = Command::new("python3")
        .arg(script())
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(String::from_utf8(out.stdout).unwrap().trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pycose_reading_is_accepted() {
    let seed = [0x42u8; 32];
    let key = DeviceKey::from_seed(seed);
    let iat = unix_now() as i64;
    let Some(hex_env) = python(&["make", &hex::encode(seed), "7", &iat.to_string()]) else {
        return;
    };
    let url = std::env::temp_dir()
        .join(msec_testkit::unique("msec-interop-"))
        .join("msec.db");
    let url = url.to_string_lossy().into_owned();
    let mut store = Store::open(&url, msec_testkit::test_keys()).unwrap();
    store
        .register_device(&NewDevice {
            id: "py-1".into(),
            tenant: "santander".into(),
            owner: "santander".into(),
            name: "python device".into(),
            kind: "interop".into(),
            location: None,
            public_key: key.public_key(),
            key_id: key.key_id(),
        })
        .unwrap();
    let (ingest, _) = Ingest::start(store, Config::default()).unwrap();
    let outcome = ingest
        .submit(
            hex::decode(hex_env).unwrap(),
            Source::Mqtt("msec/v1/santander/py-1/readings".into()),
        )
        .await;
    assert_eq!(
        outcome,
        Ok(Outcome::Stored {
            device_id: "py-1".into(),
            sequence: 7
        })
    );
    let stored = Store::open(&url, msec_testkit::test_keys())
        .unwrap()
        .readings(
            "py-1",
            &ReadingQuery {
                limit: 1,
                ..Default::default()
            },
        )
        .unwrap();
    let m = &stored[0].measurements;
    assert_eq!(
        (m[0]["n"].as_str(), m[0]["u"].as_str(), m[0]["v"].as_f64()),
        (Some("interop:temperature"), Some("Cel"), Some(21.5))
    );
    assert_eq!(
        (m[1]["n"].as_str(), m[1]["t"].as_f64()),
        (Some("interop:humidity"), Some(iat as f64 + 1.0))
    );
    assert_eq!(m[2]["vb"].as_bool(), Some(true));
}

#[test]
fn msec_envelope_verifies_with_pycose() {
    let key = DeviceKey::from_seed([0x43; 32]);
    let mut d = Device::new("d", key.clone(), 1);
    let env = d
        .seal(
            &[msec_envelope::Measurement::number(
                "co2",
                "ppm",
                1_700_000_000.0,
                415.0,
            )],
            1_700_000_000.0,
        )
        .unwrap();
    let Some(json) = python(&["verify", &hex::encode(key.public_key()), &hex::encode(env)]) else {
        return;
    };
    assert!(json.contains("co2") && json.contains("415"), "{json}");
}
