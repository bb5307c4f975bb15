//! Keeps the actuator command example in docs/protocol.md true: it is generated here, byte for
//! byte, and the test fails if the document differs. `MSEC_UPDATE_DOCS=1 cargo test -p
//! msec-device --test command_doc` rewrites it after a deliberate format change.

use coset::{CoseSign1, TaggedCborSerializable};
use msec_device::command::COMMAND_CONTENT_TYPE;
use msec_device::{Command, CommandSigner, CommandValue, CommandVerifier};

const BEGIN: &str = "<!-- BEGIN GENERATED COMMAND EXAMPLE (crates/device/tests/command_doc.rs) -->";
const END: &str = "<!-- END GENERATED COMMAND EXAMPLE -->";

fn example() -> String {
    let seed: [u8; 32] = std::array::from_fn(|i| 0x40 + i as u8);
    let platform = CommandSigner::from_seed(seed);
    let command = Command {
        target: "home-007-plug".into(),
        resource: "plug/switch".into(),
        value: CommandValue::Bool(false),
        command_id: 1_764_000_000_000_001,
        issued_at: 1_764_000_000,
        expires_at: 1_764_000_060,
    };
    let envelope = platform
        .seal(&command)
        .expect("the example is a valid command");
    // The example must be one a device accepts.
    let mut device = CommandVerifier::new(&platform.public_key(), "home-007-plug", 0).unwrap();
    assert_eq!(device.verify(&envelope, 1_764_000_000).unwrap(), command);

    let parsed = CoseSign1::from_tagged_slice(&envelope).expect("our own envelope parses");
    let protected = parsed.protected.original_data.clone().expect("kept");
    let payload = parsed.payload.clone().expect("attached");
    let kid = hex::encode(platform.key_id());
    let lines = [
        (
            "platform Ed25519 seed (secret; bytes 40..5f)",
            hex::encode(seed),
        ),
        ("platform public key", hex::encode(platform.public_key())),
        ("key id = SHA-256(public key)[0..16]", kid.clone()),
        ("protected header (bstr contents)", hex::encode(&protected)),
        ("payload: command map", hex::encode(&payload)),
        (
            "Sig_structure (the bytes signed)",
            hex::encode(parsed.tbs_data(b"")),
        ),
        ("signature", hex::encode(&parsed.signature)),
        (
            "complete command (tag 18 COSE_Sign1)",
            hex::encode(&envelope),
        ),
    ];
    let mut out = format!(
        "{BEGIN}\n\nThe platform switches smart plug `home-007-plug` off: resource `plug/switch`, value \
         false,\ncommand id {}, issued at {}, expires at {} (a 60-second lifetime).\n\n",
        command.command_id, command.issued_at, command.expires_at
    );
    for (label, value) in lines {
        out.push_str(&format!("{label} ({} bytes):\n\n```\n", value.len() / 2));
        for chunk in value.as_bytes().chunks(96) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str("```\n\n");
    }
    out.push_str(&format!(
        "In CBOR diagnostic notation the protected header is\n`{{1: -8, 3: \"{COMMAND_CONTENT_TYPE}\", 4: h'{kid}'}}`\nand the payload is\n`{{1: \"{}\", 2: \"{}\", 3: false, 4: {}, 5: {}, 6: {}}}`.\n\n",
        command.target, command.resource, command.command_id, command.issued_at, command.expires_at
    ));
    out.push_str(END);
    out
}

#[test]
fn protocol_doc_command_example_is_current() {
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
            panic!("docs/protocol.md's command example is stale; run MSEC_UPDATE_DOCS=1 cargo test -p msec-device --test command_doc");
        }
    }
}
