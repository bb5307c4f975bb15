//! Keeps the worked example in docs/protocol.md true: it is generated here, byte for byte, and
//! the test fails if the document differs. `MSEC_UPDATE_DOCS=1 cargo test -p msec-envelope`
//! rewrites it after a deliberate format change.

use coset::{CoseSign1, TaggedCborSerializable};
use ed25519_dalek::SigningKey;
use msec_envelope::{key_id, seal, Measurement};

const BEGIN: &str = "<!-- BEGIN GENERATED EXAMPLE (crates/envelope/tests/protocol_doc.rs) -->";
const END: &str = "<!-- END GENERATED EXAMPLE -->";

fn example() -> String {
    let seed: [u8; 32] = std::array::from_fn(|i| i as u8);
    let key = SigningKey::from_bytes(&seed);
    let public = key.verifying_key().to_bytes();
    let t = 1_764_000_000.5;
    let measurements = [
        Measurement::number("temperature", "Cel", t, 18.25),
        Measurement::number("humidity", "%RH", t, 71.0),
        Measurement::number("battery", "%EL", t, 93.0),
        Measurement::boolean("door", t, false),
    ];
    let envelope = seal(&key, 1_764_000_000_000_001, 1_764_000_000, &measurements).unwrap();
    let parsed = CoseSign1::from_tagged_slice(&envelope).expect("our own envelope parses");
    let protected = parsed.protected.original_data.clone().expect("kept");
    let payload = parsed.payload.clone().expect("attached");
    let lines = [
        ("Ed25519 seed (secret; bytes 00..1f)", hex::encode(seed)),
        ("public key", hex::encode(public)),
        (
            "key id = SHA-256(public key)[0..16]",
            hex::encode(key_id(&public)),
        ),
        ("protected header (bstr contents)", hex::encode(&protected)),
        ("payload: SenML CBOR pack", hex::encode(&payload)),
        (
            "Sig_structure (the bytes signed)",
            hex::encode(parsed.tbs_data(b"")),
        ),
        ("signature", hex::encode(&parsed.signature)),
        (
            "complete envelope (tag 18 COSE_Sign1)",
            hex::encode(&envelope),
        ),
    ];
    let mut out = format!("{BEGIN}\n\nDevice `park-env-01`, sequence 1764000000000001, iat 1764000000, four\nmeasurements at t = 1764000000.5: temperature 18.25 Cel, humidity 71 %RH, battery 93 %EL,\ndoor false. Ed25519 signatures are deterministic, so these bytes are reproducible.\n\n");
    for (label, value) in lines {
        out.push_str(&format!("{label} ({} bytes):\n\n```\n", value.len() / 2));
        for chunk in value.as_bytes().chunks(96) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str("```\n\n");
    }
    out.push_str(END);
    out
}

#[test]
fn protocol_doc_example_is_current() {
    let path = format!("{}/../../docs/protocol.md", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).expect("docs/protocol.md exists");
    let (start, end) = (
        doc.find(BEGIN).expect("begin marker"),
        doc.find(END).expect("end marker") + END.len(),
    );
    let generated = example();
    if doc[start..end] != generated {
        if std::env::var("MSEC_UPDATE_DOCS").is_ok_and(|v| v == "1") {
            std::fs::write(
                &path,
                format!("{}{}{}", &doc[..start], generated, &doc[end..]),
            )
            .unwrap();
        } else {
            panic!("docs/protocol.md's worked example is stale; run MSEC_UPDATE_DOCS=1 cargo test -p msec-envelope");
        }
    }
}
