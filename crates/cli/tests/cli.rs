//! The `msec` binary as a user meets it: help, errors, the registry commands, `serve` with a
//! device publishing over MQTT, and `demo` rendered in headless Chromium.

use msec_device::{readings_topic, unix_now, Device, DeviceFile, DeviceKey};
use msec_envelope::Measurement;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn msec() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_msec"));
    c.env_remove("MSEC_CONFIG").env("MSEC_LOG", "warn");
    c
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = msec().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

fn http_post(addr: &str, path: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// GET with extra header lines (each ending in CRLF); the body, if any answer came.
fn http_get_as(addr: &str, path: &str, headers: &str) -> Option<String> {
    let mut s = TcpStream::connect(addr).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Any request; returns the whole response (head and body).
fn http_send(addr: &str, method: &str, path: &str, headers: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

/// Logs in over the API; returns the header lines a browser would send with changes (the
/// session cookie and the CSRF token).
fn login(http: &str, user: &str, password: &str) -> String {
    let body = serde_json::json!({ "user": user, "password": password }).to_string();
    let r = http_send(http, "POST", "/api/v1/login", "", body.as_bytes());
    assert!(r.starts_with("HTTP/1.1 200"), "login as {user}: {r}");
    let cookie = r
        .split("set-cookie: ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    let json: serde_json::Value =
        serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();
    format!(
        "Cookie: {cookie}\r\nX-CSRF-Token: {}\r\n",
        json["csrf"].as_str().unwrap()
    )
}

/// Creates a user with the given password (through --password-stdin, as a script would).
fn add_user(dir: &str, id: &str, tenant: &str, role: &str, password: &str) {
    let mut child = msec()
        .args([
            "user",
            "add",
            "--id",
            id,
            "--tenant",
            tenant,
            "--roles",
            role,
            "--password-stdin",
            "--data-dir",
            dir,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An administrator's API token, as the Authorization header line to send.
fn admin_auth(dir: &str) -> String {
    add_user(dir, "ops", "santander", "admin", "ops password for tests");
    let (ok, out, err) = run(&[
        "token",
        "create",
        "--principal",
        "ops",
        "--scopes",
        "read,subscribe,act,manage,audit",
        "--days",
        "1",
        "--data-dir",
        dir,
    ]);
    assert!(ok, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.split("): ").nth(1))
        .expect("the token line")
        .trim()
        .to_string();
    format!("Authorization: Bearer {token}\r\n")
}

/// A running msec process, killed on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("timed out waiting for {what}");
}

/// `msec serve` on the given data directory and loopback addresses.
fn serve(dir: &str, http: &str, mqtt: &str, stdout: Stdio) -> Child {
    msec()
        .args(["serve", "--data-dir", dir, "--http", http, "--mqtt", mqtt])
        .stdout(stdout)
        .spawn()
        .unwrap()
}

fn addr() -> String {
    format!("127.0.0.1:{}", msec_testkit::free_port())
}

#[test]
fn help_teaches_and_errors_are_clear() {
    let (ok, out, _) = run(&["--help"]);
    assert!(
        ok && out.contains("demo") && out.contains("serve") && out.contains("device"),
        "{out}"
    );
    let (ok, out, _) = run(&["serve", "--help"]);
    assert!(
        ok && out.contains("--broker") && out.contains("MSEC_DATABASE") && out.contains("Examples"),
        "{out}"
    );
    // A database password in the environment is not printed by --help.
    let out = msec()
        .args(["serve", "--help"])
        .env("MSEC_DATABASE", "postgres://u:hunter2secret@127.0.0.1/x")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !help.contains("hunter2secret"),
        "{help}"
    );
    let (ok, _, err) = run(&["witness", "--interval", "inf", "--key", "k"]);
    assert!(
        !ok && err.contains("0.05 to 86400") && !err.contains("panicked"),
        "{err}"
    );
    let (ok, _, err) = run(&["serve", "--broker", "tcp://nowhere"]);
    assert!(
        !ok && err.contains("mqtt://") && !err.contains("panicked"),
        "{err}"
    );
    // A mistyped data directory is named, not silently created with an empty database.
    let fresh = tmp();
    let (ok, _, err) = run(&["device", "show", "ghost", "--data-dir", &fresh]);
    assert!(
        !ok && err.contains("no msec database") && err.contains("--data-dir"),
        "{err}"
    );
    assert!(!std::path::Path::new(&fresh).exists());
    let key = format!("{fresh}-ghost.json");
    assert!(run(&["device", "keygen", "--id", "g", "--tenant", "t", "--out", &key]).0);
    assert!(
        run(&[
            "device",
            "register",
            "--key-file",
            &key,
            "--kind",
            "k",
            "--data-dir",
            &fresh
        ])
        .0
    );
    let (ok, _, err) = run(&["device", "show", "ghost", "--data-dir", &fresh]);
    assert!(!ok && err.contains("no device \"ghost\""), "{err}");
    // A reader that goes away (`msec … | head -1`) ends msec quietly, not with a panic.
    let mut child = msec()
        .args(["device", "list", "--data-dir", &fresh])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        matches!(out.status.code(), Some(141)),
        "{:?} {err}",
        out.status
    );
    // An address already in use is explained, not a panic.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let (ok, _, err) = run(&[
        "serve",
        "--data-dir",
        &tmp(),
        "--http",
        &port,
        "--mqtt",
        &addr(),
    ]);
    assert!(
        !ok && err.contains("cannot listen for HTTP") && !err.contains("panicked"),
        "{err}"
    );
}

/// The current key-encryption key of a data directory's key file, as its bytes.
fn current_kek(dir: &str) -> Vec<u8> {
    let ring: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{dir}/keys.json")).unwrap())
            .unwrap();
    hex::decode(ring["current"]["key"].as_str().unwrap()).unwrap()
}

/// The files under `dir` (names relative to it) holding `key`, raw or as hex text.
fn files_holding(dir: &str, key: &[u8]) -> Vec<String> {
    let needles = [key.to_vec(), hex::encode(key).into_bytes()];
    let mut found = Vec::new();
    let mut todo = vec![std::path::PathBuf::from(dir)];
    while let Some(path) = todo.pop() {
        if path.is_dir() {
            todo.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else if let Ok(bytes) = std::fs::read(&path) {
            if needles
                .iter()
                .any(|n| bytes.windows(n.len()).any(|w| w == n.as_slice()))
            {
                let name = path.strip_prefix(dir).unwrap();
                found.push(name.to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

fn tmp() -> String {
    std::env::temp_dir()
        .join(msec_testkit::unique("msec-cli-"))
        .to_string_lossy()
        .into_owned()
}

#[test]
fn serve_accepts_a_registered_device_over_mqtt_and_rejects_after_revocation() {
    let dir = tmp();
    let key_file = format!("{dir}-dev.json");
    let (ok, out, err) = run(&[
        "device",
        "keygen",
        "--id",
        "gw-1",
        "--tenant",
        "santander",
        "--out",
        &key_file,
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("public key"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (ok, _, err) = run(&[
        "device",
        "register",
        "--key-file",
        &key_file,
        "--kind",
        "gateway-hub",
        "--lat",
        "43.46",
        "--lon",
        "-3.80",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let (ok, out, _) = run(&["device", "list", "--data-dir", &dir]);
    assert!(
        ok && out.contains("gw-1") && out.contains("active"),
        "{out}"
    );

    let auth = admin_auth(&dir);
    let (http, mqtt) = (addr(), addr());
    let _server = Running(serve(&dir, &http, &mqtt, Stdio::null()));
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    assert!(http_get(&http, "/api/v1/devices")
        .unwrap()
        .contains("unauthenticated"));
    // The consumer's MQTT client id carries a secret made on first start: a broker hands a
    // session to whoever presents its id.
    let secret = std::fs::read_to_string(format!("{dir}/mqtt-client-id")).unwrap();
    assert!(
        secret.len() == 32 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "{secret:?}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(format!("{dir}/mqtt-client-id"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A second platform on the same data directory would append to the same log: refused.
    let (ok, _, err) = run(&[
        "serve",
        "--data-dir",
        &dir,
        "--http",
        &addr(),
        "--mqtt",
        &addr(),
    ]);
    assert!(!ok && err.contains("already running"), "{err}");

    let file: DeviceFile =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let mut device = Device::new("gw-1", DeviceKey::from_seed_hex(&file.seed).unwrap(), 1);
    let publish = |device: &mut Device, value: f64| {
        let now = unix_now();
        let envelope = device
            .seal(&[Measurement::number("link", "%", now, value)], now)
            .unwrap();
        let port: u16 = mqtt.rsplit(':').next().unwrap().parse().unwrap();
        let mut opts = rumqttc::MqttOptions::new(msec_testkit::unique("dev-"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut conn) = rumqttc::Client::new(opts, 10);
        client
            .publish(
                readings_topic("msec", "santander", "gw-1"),
                rumqttc::QoS::AtLeastOnce,
                false,
                envelope,
            )
            .unwrap();
        for event in conn.iter() {
            if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = event {
                break;
            }
        }
    };
    publish(&mut device, 88.0);
    wait_until("the reading", 20, || {
        http_get_as(&http, "/api/v1/devices/gw-1", &auth)
            .is_some_and(|b| b.contains("\"link\":88.0"))
    });

    let (ok, _, err) = run(&["device", "revoke", "gw-1", "--data-dir", &dir]);
    assert!(ok, "{err}");
    std::thread::sleep(Duration::from_millis(1500)); // the server polls the registry every second
    publish(&mut device, 12.0);
    wait_until("the revocation event", 20, || {
        http_get_as(&http, "/api/v1/security-events", &auth)
            .is_some_and(|b| b.contains("revoked_device"))
    });
    assert!(http_get_as(&http, "/metrics", &auth)
        .unwrap()
        .contains("msec_security_events_total{reason=\"revoked_device\"} 1"));
}

/// The WebDriver check needs Chromium, its driver and Python Selenium (all installed by .ci/run).
fn browser_ready() -> bool {
    let ok = std::path::Path::new("/usr/bin/chromium").exists()
        && std::path::Path::new("/usr/bin/chromedriver").exists()
        && Command::new("python3")
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        msec_testkit::missing(
            "the dashboard in headless Chromium",
            "apt-get install chromium chromium-driver && pip install selenium",
        );
    }
    ok
}

#[test]
fn demo_dashboard_renders_live_data_in_chromium() {
    if !browser_ready() {
        return;
    }
    let (dir, http, mqtt) = (tmp(), addr(), addr());
    let auth = admin_auth(&dir);
    let _demo = Running(
        msec()
            .args([
                "demo",
                "--data-dir",
                &dir,
                "--http",
                &http,
                "--mqtt",
                &mqtt,
                "--residents",
                "1",
                "--trucks",
                "1",
                "--truck-hz",
                "5",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("demo readings from all three pilots", 60, || {
        let Some(body) = http_get_as(&http, "/api/v1/devices", &auth) else {
            return false;
        };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
            return false;
        };
        let seen = |prefix: &str| {
            v["devices"].as_array().unwrap().iter().any(|d| {
                d["id"].as_str().unwrap().starts_with(prefix) && !d["last_seen_ms"].is_null()
            })
        };
        seen("park-") && seen("home-") && seen("truck-")
    });
    // A hostile reading, so that the security page has something to show.
    assert!(http_post(&http, "/api/v1/readings", b"not a reading").contains("400"));
    let script = format!("{}/tests/dashboard_check.py", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(script)
        .args([&format!("http://{http}"), "ops", "ops password for tests"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dashboard check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_shuts_down_cleanly() {
    let (dir, http, mqtt) = (tmp(), addr(), addr());
    let mut child = serve(&dir, &http, &mqtt, Stdio::piped());
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    assert!(Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let end = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < end,
            "msec serve did not stop within 20 s of Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "exit status {status}");
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(out.contains("msec is serving"), "{out}");
}

#[test]
fn bench_ledger_prints_figures_with_a_baseline() {
    let (ok, out, err) = run(&[
        "bench",
        "ledger",
        "--leaves",
        "3000",
        "--audit-records",
        "2000",
    ]);
    assert!(ok, "{err}");
    for line in [
        "raw SHA-256",
        "leaf appends",
        "inclusion proofs verified",
        "consistency proofs",
        "checkpoint",
        "records/s",
        "checkpoint after a commit",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
}

#[test]
fn bench_ingest_prints_rates_latencies_and_both_baselines() {
    // Production mode runs its own Mosquitto, configured as docs/operations.md says: the shared
    // one keeps Mosquitto's default of 1,000 queued messages per client and drops the rest.
    let mosquitto = std::process::Command::new("mosquitto")
        .arg("-h")
        .output()
        .is_ok();
    if !mosquitto {
        msec_testkit::missing(
            "msec bench ingest in production mode",
            "no mosquitto executable on PATH (Debian: apt install mosquitto)",
        );
    }
    let postgres = std::env::var("MSEC_TEST_DATABASE_URL")
        .unwrap_or_else(|_| msec_testkit::DEFAULT_DATABASE_URL.into());
    let mut args = vec![
        "bench",
        "ingest",
        "--readings",
        "3000",
        "--devices",
        "10",
        "--latency-rate",
        "500",
        "--latency-secs",
        "1",
        "--postgres",
        &postgres,
    ];
    if !mosquitto {
        args.push("--embedded-only");
    }
    let (ok, out, err) = run(&args);
    assert!(ok, "{err}");
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in:\n{out}"))
            .to_string()
    };
    let rate = |line: &str, after: &str| -> f64 {
        let rest = &line[line.find(after).unwrap() + after.len()..];
        rest.split_whitespace().next().unwrap().parse().unwrap()
    };
    // The IFMA backend is built in by .cargo/config.toml; where the CPU has IFMA, it is used.
    let header = line("msec bench ingest");
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512ifma")
        && std::arch::is_x86_feature_detected!("avx512vl")
    {
        assert!(
            header.ends_with("Ed25519 arithmetic: AVX-512 IFMA"),
            "{header}"
        );
    }
    assert!(header.contains("Ed25519 arithmetic: "), "{header}");
    let verify = line("baseline  raw Ed25519");
    assert!(rate(&verify, ":") > 0.0);
    assert!(rate(&verify, "/s;") > 0.0, "{verify}");
    let embedded = line("embedded  rumqttd + SQLite");
    assert!(rate(&embedded, "SQLite:") > 0.0, "{embedded}");
    for part in ["x raw verify", "p50 ", "p99 ", "(500 samples)"] {
        assert!(embedded.contains(part), "missing {part:?} in {embedded}");
    }
    if cfg!(target_os = "linux") {
        let per_reading = rate(&embedded, "% busy,");
        assert!(
            per_reading > 0.0 && embedded.contains("µs of core time per reading"),
            "{embedded}"
        );
    }
    if !mosquitto {
        return;
    }
    if out.contains("SKIPPED production mode") {
        msec_testkit::missing("PostgreSQL", &format!("msec bench ingest said: {out}"));
        return;
    }
    assert!(rate(&line("baseline  raw Mosquitto"), "payloads:") > 0.0);
    let production = line("mosquitto Mosquitto + PostgreSQL");
    for part in ["x raw Mosquitto", "p99 ", "(500 samples)"] {
        assert!(
            production.contains(part),
            "missing {part:?} in {production}"
        );
    }
}

#[test]
fn bench_policy_prints_figures_with_a_baseline() {
    let (ok, out, err) = run(&["bench", "policy", "--decisions", "2000"]);
    assert!(ok, "{err}");
    for size in ["10 rules", "10000 rules", "100000 rules"] {
        assert!(
            out.contains(size) && out.contains("baseline map lookup"),
            "missing {size:?} in:\n{out}"
        );
    }
}

#[test]
fn policy_explain_names_the_deciding_rule() {
    let file = format!("{}-policy.toml", tmp());
    std::fs::write(
        &file,
        r#"
[[rule]]
id = "operators"
effect = "allow"
role = "operator"
actions = ["read", "subscribe", "act"]
resource = "santander/**"

[[rule]]
id = "caregivers-never-act"
effect = "deny"
role = "caregiver"
actions = ["act"]
resource = "**"

[[rule]]
id = "night-grant"
effect = "allow"
principal = "user:juan"
actions = ["read"]
resource = "santander/home-007/bed/**"
hours = [22, 6]
"#,
    )
    .unwrap();
    let explain = |extra: &[&str]| {
        let mut args = vec!["policy", "explain", "--policies", &file];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, out, err) = explain(&[
        "--principal",
        "user:olga",
        "--roles",
        "operator",
        "--action",
        "act",
        "--resource",
        "santander/home-007/plug/switch",
    ]);
    assert!(ok && out.trim() == "allow (rule operators)", "{out}{err}");
    let (_, out, _) = explain(&[
        "--principal",
        "user:juan",
        "--roles",
        "caregiver,operator",
        "--action",
        "act",
        "--resource",
        "santander/home-007/plug/switch",
    ]);
    assert_eq!(out.trim(), "deny (rule caregivers-never-act)");
    // An empty principal or resource is a mistake, not a question the rules answer.
    for (flag, value) in [("--principal", ""), ("--resource", "")] {
        let mut args = vec![
            "--principal",
            "user:olga",
            "--action",
            "read",
            "--resource",
            "x/y",
        ];
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = value;
        let (ok, out, err) = explain(&args);
        assert!(
            !ok && err.contains(flag) && err.contains("a value is required"),
            "{out}{err}"
        );
    }
    // 2025-11-24 23:00 UTC is inside the 22-6 window; 12:00 is not.
    let night = (1_764_025_200_000i64).to_string();
    let noon = (1_763_985_600_000i64).to_string();
    let (_, out, _) = explain(&[
        "--principal",
        "user:juan",
        "--action",
        "read",
        "--resource",
        "santander/home-007/bed/occupancy",
        "--at",
        &night,
    ]);
    assert_eq!(out.trim(), "allow (rule night-grant)");
    let (_, out, _) = explain(&[
        "--principal",
        "user:juan",
        "--action",
        "read",
        "--resource",
        "santander/home-007/bed/occupancy",
        "--at",
        &noon,
    ]);
    assert_eq!(out.trim(), "deny (no rule allows it: deny by default)");
    let (ok, _, err) = explain(&["--principal", "p", "--action", "delete", "--resource", "a"]);
    assert!(!ok && err.contains("unknown action"), "{err}");
    std::fs::write(&file, "[[rule]]\nid = \"x\"\neffect = \"allow\"\nrole = \"r\"\nanyone = true\nactions = [\"read\"]\nresource = \"**\"\n").unwrap();
    let (ok, _, err) = explain(&["--principal", "p", "--action", "read", "--resource", "a"]);
    assert!(
        !ok && err.contains("exactly one of principal, role or anyone"),
        "{err}"
    );
}

#[test]
fn users_and_tokens_are_stored_hashed_and_shown_once() {
    let dir = tmp();
    let (ok, out, err) = run(&[
        "user",
        "add",
        "--id",
        "user:olga",
        "--tenant",
        "santander",
        "--roles",
        "operator,auditor",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let password = out
        .lines()
        .find_map(|l| l.strip_prefix("password (shown once, store it safely): "))
        .expect("generated password printed");
    assert!(password.len() >= 12);
    // Given on standard input instead, the password is never printed.
    let mut child = msec()
        .args([
            "user",
            "add",
            "--id",
            "user:maria",
            "--tenant",
            "santander",
            "--roles",
            "resident",
            "--password-stdin",
            "--data-dir",
            &dir,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"a long and private passphrase\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stdout).contains("passphrase"));
    let (ok, _, err) = run(&[
        "user",
        "add",
        "--id",
        "user:x",
        "--tenant",
        "t",
        "--roles",
        "wizard",
        "--data-dir",
        &dir,
    ]);
    assert!(!ok && err.contains("unknown role"), "{err}");
    let (ok, _, err) = run(&[
        "user",
        "add",
        "--id",
        "user:olga",
        "--tenant",
        "santander",
        "--roles",
        "admin",
        "--data-dir",
        &dir,
    ]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (_, out, _) = run(&["user", "disable", "user:olga", "--data-dir", &dir]);
    assert!(out.contains("disabled user:olga"));
    let (_, out, _) = run(&["user", "list", "--data-dir", &dir]);
    assert!(
        out.contains("user:olga")
            && out.contains("disabled")
            && out.contains("user:maria")
            && !out.contains("argon2"),
        "{out}"
    );
    // The database holds hashes, never the secrets.
    let db = std::fs::read(format!("{dir}/msec.db")).unwrap();
    let contains = |needle: &[u8]| db.windows(needle.len()).any(|w| w == needle);
    assert!(
        contains(b"$argon2id$")
            && !contains(password.as_bytes())
            && !contains(b"a long and private passphrase")
    );

    let (ok, out, err) = run(&[
        "token",
        "create",
        "--principal",
        "svc:marketplace",
        "--scopes",
        "read,subscribe",
        "--days",
        "7",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let token = out
        .lines()
        .find_map(|l| l.strip_prefix("token (shown once, store it safely): "))
        .unwrap()
        .to_string();
    let id = &token["msec_".len().."msec_".len() + 16];
    assert!(!contains_file(
        &format!("{dir}/msec.db"),
        token.rsplit_once(id).unwrap().1.trim_start_matches('_')
    ));
    let (_, out, _) = run(&["token", "list", "--data-dir", &dir]);
    assert!(out.contains(id) && out.contains("active") && !out.contains(&token));
    assert!(run(&["token", "revoke", id, "--data-dir", &dir]).0);
    assert!(run(&["token", "list", "--data-dir", &dir])
        .1
        .contains("revoked"));
    let (ok, _, err) = run(&[
        "token",
        "create",
        "--principal",
        "svc:x",
        "--scopes",
        "fly",
        "--data-dir",
        &dir,
    ]);
    assert!(!ok && err.contains("unknown action"), "{err}");
}

fn contains_file(path: &str, needle: &str) -> bool {
    let data = std::fs::read(path).unwrap();
    data.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Posts a signed reading over HTTP; returns the response head and body.
fn post_reading(http: &str, device: &mut Device, value: f64) -> String {
    let now = unix_now();
    http_post(
        http,
        "/api/v1/readings",
        &device
            .seal(
                &[Measurement::number("temperature", "Cel", now, value)],
                now,
            )
            .unwrap(),
    )
}

fn log_size(http: &str) -> u64 {
    http_get(http, "/api/v1/log")
        .and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok())
        .and_then(|v| v["size"].as_u64())
        .unwrap_or(0)
}

/// The checkpoint the server serves now, once it covers at least `size` leaves.
fn checkpoint_covering(http: &str, size: u64) -> String {
    let mut note = String::new();
    wait_until("a checkpoint", 20, || {
        note = http_get(http, "/api/v1/log/checkpoint").unwrap_or_default();
        note.lines()
            .nth(1)
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|s| s >= size)
    });
    note
}

/// `msec consent give` of `subject`'s data to caregiver:ana for tele-assistance.
fn give_consent(dir: &str, subject: &str) -> (bool, String, String) {
    run(&[
        "consent",
        "give",
        "--subject",
        subject,
        "--grantee",
        "caregiver:ana",
        "--purpose",
        "tele-assistance",
        "--data-dir",
        dir,
    ])
}

/// A consent for a subject nobody is called is kept (a resident may consent before their
/// devices are registered), with a note in case the name is a typo.
#[test]
fn consent_for_an_unknown_subject_is_kept_with_a_note() {
    let dir = tmp();
    let (ok, out, err) = give_consent(&dir, "resident-0O7");
    assert!(ok && out.contains("consent 1 recorded"), "{out}{err}");
    assert!(
        err.contains("note: no device owner or user is called \"resident-0O7\""),
        "{err}"
    );
    let (ok, out, err) = run(&[
        "consent",
        "list",
        "--subject",
        "resident-0O7",
        "--data-dir",
        &dir,
    ]);
    assert!(ok && out.contains("caregiver:ana"), "{out}{err}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn transparency_log_witness_audit_export_and_erasure_end_to_end() {
    let dir = tmp();
    std::fs::create_dir_all(&dir).unwrap();
    let wkey = format!("{dir}/witness-key.json");
    let (ok, vkey, err) = run(&["witness", "--key", &wkey, "--init"]);
    assert!(ok && vkey.starts_with("msec/witness-"), "{err}");
    let vkey = vkey.trim().to_string();

    // A resident's device, registered by CLI with encrypted name and location.
    let key_file = format!("{dir}/dev.json");
    assert!(
        run(&[
            "device",
            "keygen",
            "--id",
            "bed-7",
            "--tenant",
            "santander",
            "--out",
            &key_file
        ])
        .0
    );
    let (ok, _, err) = run(&[
        "device",
        "register",
        "--key-file",
        &key_file,
        "--kind",
        "bed-sensor",
        "--owner",
        "resident-007",
        "--name",
        "Bed of Rosa Villanueva",
        "--lat",
        "43.46",
        "--lon",
        "-3.80",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let (ok, _, err) = give_consent(&dir, "resident-007");
    assert!(ok && !err.contains("note:"), "{err}");
    let auth = admin_auth(&dir);

    let (http, mqtt) = (addr(), addr());
    let mut server = Running(
        msec()
            .args([
                "serve",
                "--data-dir",
                &dir,
                "--http",
                &http,
                "--mqtt",
                &mqtt,
                "--witness",
                &vkey,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    let file: DeviceFile =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let mut device = Device::new("bed-7", DeviceKey::from_seed_hex(&file.seed).unwrap(), 1);
    for v in 0..5 {
        assert!(post_reading(&http, &mut device, 36.0 + f64::from(v) / 10.0).contains("201"));
    }
    // A checkpoint covering device + consent + 5 readings, published within a second.
    let saved = checkpoint_covering(&http, 7);
    let saved_file = format!("{dir}/saved-checkpoint.txt");
    std::fs::write(&saved_file, &saved).unwrap();

    // The witness cosigns; the platform serves the cosignature and calls the checkpoint final.
    let witness = |dir: &str| {
        run(&[
            "witness",
            "--log",
            &format!("http://{http}"),
            "--key",
            &format!("{dir}/witness-key.json"),
            "--once",
        ])
    };
    // A witness told to expect another log's key refuses this one.
    let w2 = format!("{dir}/w2-key.json");
    assert!(run(&["witness", "--key", &w2, "--init"]).0);
    let foreign = msec_notary::LogKey::from_seed("example.org/other-log", [5; 32])
        .unwrap()
        .verifier_key();
    let (ok, out, err) = run(&[
        "witness",
        "--log",
        &format!("http://{http}"),
        "--key",
        &w2,
        "--log-key",
        &foreign,
        "--once",
    ]);
    assert!(
        !ok && err.contains("REFUSING") && err.contains("not signed by the pinned log key"),
        "{out}{err}"
    );
    // That witness reported its refusal, which the log refused in turn and recorded as a
    // security event: the checkpoint covering it comes first, or it could appear between the
    // cosigning below and the look after it.
    let saved_size: u64 = saved.lines().nth(1).unwrap().parse().unwrap();
    checkpoint_covering(&http, saved_size + 1);
    let (ok, out, err) = witness(&dir);
    assert!(ok && out.contains("cosigned"), "{out}{err}");
    assert!(http_get(&http, "/api/v1/log/checkpoint")
        .unwrap()
        .contains("msec/witness-"));
    let cosigned = log_size(&http);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&http_get(&http, "/api/v1/log").unwrap())
            .unwrap()["final_size"],
        cosigned
    );
    for v in 0..3 {
        assert!(post_reading(&http, &mut device, 37.0 + f64::from(v)).contains("201"));
    }
    checkpoint_covering(&http, cosigned + 3);
    let (ok, out, err) = witness(&dir);
    assert!(ok && out.contains("cosigned"), "second round: {out}{err}");
    // A split view: the log shows this witness a tree other than the one it cosigned (played
    // here by changing the root the witness remembers). It refuses and raises the alarm.
    let state = format!("{dir}/witness-key.state");
    let remembered = std::fs::read_to_string(&state).unwrap();
    let root = serde_json::from_str::<serde_json::Value>(&remembered).unwrap()["root"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(&state, remembered.replace(&root, &"ab".repeat(32))).unwrap();
    let (ok, _, err) = witness(&dir);
    assert!(
        !ok && err.contains("split_view") && err.contains("REFUSING"),
        "{err}"
    );
    std::fs::write(&state, remembered).unwrap();

    // Offline verification against the checkpoint saved earlier.
    let verify = |record: &str| {
        run(&[
            "log",
            "verify",
            "--record",
            record,
            "--checkpoint",
            &saved_file,
            "--data-dir",
            &dir,
        ])
    };
    let (ok, out, err) = verify("reading:bed-7/2");
    assert!(
        ok && out.contains("verified") && out.contains("consistency  ok"),
        "{out}{err}"
    );
    let (ok, out, _) = verify("reading:bed-7/8");
    assert!(ok && out.contains("newest checkpoint"), "{out}");
    // A record changed in the database fails that check (then is put back).
    let tamper = |delta: i64| {
        rusqlite::Connection::open(format!("{dir}/msec.db"))
            .unwrap()
            .execute(
                "UPDATE readings SET received_ms = received_ms + ?1 WHERE device_id = 'bed-7' AND sequence = 2",
                [delta],
            )
            .unwrap()
    };
    assert_eq!(tamper(1), 1);
    let (ok, out, err) = verify("reading:bed-7/2");
    assert!(!ok && err.contains("MODIFIED"), "{out}{err}");
    tamper(-1);

    // Export, then an independent Python verifier re-derives every leaf and checks the proofs.
    let export = format!("{dir}/export.json");
    let export_to_file = || {
        run(&[
            "export",
            "--subject",
            "resident-007",
            "--out",
            &export,
            "--data-dir",
            &dir,
        ])
    };
    let (ok, _, err) = export_to_file();
    assert!(ok, "{err}");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    assert_eq!(doc["readings"].as_array().unwrap().len(), 8);
    assert_eq!(doc["devices"][0]["name"], "Bed of Rosa Villanueva");
    assert_eq!(doc["consents"][0]["grantee"], "caregiver:ana");
    let log_vkey =
        serde_json::from_str::<serde_json::Value>(&http_get(&http, "/api/v1/log").unwrap())
            .unwrap()["verifier_key"]
            .as_str()
            .unwrap()
            .to_string();
    let current = format!("{dir}/current-checkpoint.txt");
    std::fs::write(&current, run(&["log", "checkpoint", "--data-dir", &dir]).1).unwrap();
    let py = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../interop/verify_log.py"
        ))
        .args([&format!("{dir}/msec.db"), &current, &log_vkey, &export])
        .output()
        .expect("python3 runs");
    let py_out =
        String::from_utf8_lossy(&py.stdout).to_string() + &String::from_utf8_lossy(&py.stderr);
    assert!(
        py.status.success() && py_out.contains("inclusion proofs verify"),
        "{py_out}"
    );

    // Nothing personal in the database file.
    let raw = std::fs::read(format!("{dir}/msec.db")).unwrap();
    assert!(
        !raw.windows(9).any(|w| w == b"Villanuev"),
        "a name is readable in the database file"
    );

    // The key-encryption key lives in keys.json only: not in the database, its log or any
    // other file of the data directory.
    let old_kek = current_kek(&dir);
    assert_eq!(files_holding(&dir, &old_kek), ["keys.json"]);

    // Erasure: API reads become 410, the audit still passes, the erasure itself is logged.
    let (ok, _, err) = run(&["erase", "--subject", "resident-007", "--data-dir", &dir]);
    assert!(!ok && err.contains("--yes"), "{err}");
    // A misspelt subject erases nobody (and rotates no key).
    let (ok, _, err) = run(&[
        "erase",
        "--subject",
        "resident-07",
        "--yes",
        "--data-dir",
        &dir,
    ]);
    assert!(
        !ok && err.contains("nothing is held") && err.contains("--unknown-subject"),
        "{err}"
    );
    let (ok, out, err) = run(&[
        "erase",
        "--subject",
        "resident-007",
        "--yes",
        "--data-dir",
        &dir,
    ]);
    assert!(ok && out.contains("erased resident-007"), "{out}{err}");
    // Erasure rotated the KEK and destroyed the old one: no file holds it any more, so a
    // backup of the wrapped data key opens nothing.
    assert_ne!(current_kek(&dir), old_kek);
    assert_eq!(files_holding(&dir, &old_kek), Vec::<String>::new());
    let mut gone = String::new();
    wait_until("410 for erased data", 10, || {
        gone = http_get_raw(&http, "/api/v1/devices/bed-7/readings", &auth);
        gone.starts_with("HTTP/1.1 410")
    });
    assert!(gone.contains("erased"), "{gone}");
    let (ok, _, err) = run(&["export", "--subject", "resident-007", "--data-dir", &dir]);
    assert!(!ok && err.contains("erased"), "{err}");
    // A refused export leaves no file, whole or partial, and the earlier one untouched.
    let before = std::fs::read(&export).unwrap();
    let (ok, _, err) = export_to_file();
    assert!(!ok && err.contains("erased"), "{err}");
    assert_eq!(std::fs::read(&export).unwrap(), before);
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|name| name.starts_with(".export.json"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (ok, out, err) = run(&["audit", "--data-dir", &dir]);
    assert!(ok && out.contains("0 finding(s)"), "{out}{err}");

    // Roll the database back (as restoring an old backup would) while the server is down.
    let _ = server.0.kill();
    let _ = server.0.wait();
    let db = rusqlite::Connection::open(format!("{dir}/msec.db")).unwrap();
    db.execute_batch(
        "DELETE FROM readings WHERE sequence > 5;
         DELETE FROM log_leaves WHERE idx >= 7;
         DELETE FROM admin_actions; DELETE FROM checkpoints WHERE size > 7; DELETE FROM cosignatures WHERE size > 7;",
    )
    .unwrap();
    drop(db);
    let (ok, out, _) = run(&["audit", "--data-dir", &dir]);
    assert!(!ok && out.contains("rollback"), "{out}");
    // The platform refuses to serve the rolled-back log...
    let (ok, _, err) = run(&[
        "serve",
        "--data-dir",
        &dir,
        "--http",
        &addr(),
        "--mqtt",
        &addr(),
    ]);
    assert!(!ok && err.contains("rolled back or rewritten"), "{err}");
    // ...and if the attacker also deletes its record of the last checkpoint, the witness,
    // which remembers what it cosigned, refuses and raises an alarm.
    std::fs::remove_file(format!("{dir}/log-checkpoint.txt")).unwrap();
    let http2 = addr();
    let _server = Running(
        msec()
            .args([
                "serve",
                "--data-dir",
                &dir,
                "--http",
                &http2,
                "--mqtt",
                &addr(),
                "--witness",
                &vkey,
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_until("msec serve after rollback", 30, || {
        http_get(&http2, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    // A stranger cannot raise the alarm in the witness's name: refused and recorded.
    let alarms = |reason: &str| {
        http_get_as(&http2, "/api/v1/security-events", &auth)
            .unwrap()
            .matches(&format!("\"reason\":\"{reason}\""))
            .count()
    };
    let (raised_before, refused_before) = (alarms("witness_alarm"), alarms("bad_alarm"));
    let witness_name = vkey.trim().split('+').next().unwrap();
    let forged = serde_json::json!({
        "witness": witness_name,
        "kind": "rollback",
        "detail": "false alarm",
        "signature": format!("{}==", "A".repeat(86)), // 64 zero bytes
    });
    let reply = http_post(&http2, "/api/v1/log/alarms", forged.to_string().as_bytes());
    assert!(reply.starts_with("HTTP/1.1 422"), "{reply}");
    let unsigned = serde_json::json!({"witness": witness_name, "kind": "rollback", "detail": "x"});
    let reply = http_post(
        &http2,
        "/api/v1/log/alarms",
        unsigned.to_string().as_bytes(),
    );
    assert!(reply.starts_with("HTTP/1.1 422"), "{reply}");
    // Malformed or oversized, it is refused as a bad request, and recorded all the same.
    let reply = http_post(&http2, "/api/v1/log/alarms", b"{\"witness\": 1}");
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    let reply = http_post(&http2, "/api/v1/log/alarms", &vec![b' '; 9_000]);
    assert!(
        reply.starts_with("HTTP/1.1 413") && reply.contains("problem+json"),
        "{reply}"
    );
    assert_eq!(
        (alarms("bad_alarm"), alarms("witness_alarm")),
        (refused_before + 4, raised_before)
    );
    let (ok, out, err) = run(&[
        "witness",
        "--log",
        &format!("http://{http2}"),
        "--key",
        &wkey,
        "--once",
    ]);
    assert!(
        !ok && err.contains("rollback") && err.contains("REFUSING"),
        "{out}{err}"
    );
    // The witness's own, signed alarm is recorded.
    assert_eq!(alarms("witness_alarm"), raised_before + 1);
}

fn http_get_raw(addr: &str, path: &str, headers: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn caregiver_sees_only_granted_data_and_revocation_stops_live_data_in_chromium() {
    if !browser_ready() {
        return;
    }
    let dir = tmp();
    add_user(
        &dir,
        "resident-001",
        "santander",
        "resident",
        "resident password 001",
    );
    add_user(
        &dir,
        "caregiver-ana",
        "santander",
        "caregiver",
        "caregiver password ana",
    );
    let key_file = format!("{dir}-bed.json");
    assert!(
        run(&[
            "device",
            "keygen",
            "--id",
            "bed-x",
            "--tenant",
            "santander",
            "--out",
            &key_file
        ])
        .0
    );
    let (ok, _, err) = run(&[
        "device",
        "register",
        "--key-file",
        &key_file,
        "--kind",
        "bed-sensor",
        "--owner",
        "resident-001",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let other = format!("{dir}-park.json");
    assert!(
        run(&[
            "device",
            "keygen",
            "--id",
            "park-x",
            "--tenant",
            "santander",
            "--out",
            &other
        ])
        .0
    );
    assert!(
        run(&[
            "device",
            "register",
            "--key-file",
            &other,
            "--kind",
            "environmental-monitor",
            "--data-dir",
            &dir
        ])
        .0
    );

    let (http, mqtt) = (addr(), addr());
    let _server = Running(serve(&dir, &http, &mqtt, Stdio::null()));
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });

    // The resident logs in and authorises the caregiver for her bed sensor only.
    let resident = login(&http, "resident-001", "resident password 001");
    // Not beyond her own data: refused, and recorded.
    let r = http_send(
        &http,
        "POST",
        "/api/v1/grants",
        &resident,
        br#"{"principal":"caregiver-ana","actions":["read"],"resource":"santander/**"}"#,
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    // A deny an administrator set on her data is not hers to lift.
    let (ok, out, err) = run(&[
        "grant",
        "--deny",
        "--principal",
        "resident-001",
        "--actions",
        "act",
        "--resource",
        "santander/resident-001/**",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let deny_id = out
        .split_whitespace()
        .nth(1)
        .unwrap()
        .trim_end_matches(':')
        .to_string();
    let r = http_send(
        &http,
        "DELETE",
        &format!("/api/v1/grants/{deny_id}"),
        &resident,
        b"",
    );
    assert!(r.starts_with("HTTP/1.1 403"), "{r}");
    assert!(run(&["revoke", &deny_id, "--data-dir", &dir]).0);
    let r = http_send(&http, "POST", "/api/v1/grants", &resident, br#"{"principal":"caregiver-ana","actions":["read","subscribe"],"resource":"santander/resident-001/bed-x"}"#);
    assert!(r.starts_with("HTTP/1.1 201"), "{r}");
    let grant: serde_json::Value =
        serde_json::from_str(r.split_once("\r\n\r\n").unwrap().1).unwrap();

    let file: DeviceFile =
        serde_json::from_str(&std::fs::read_to_string(&key_file).unwrap()).unwrap();
    let mut device = Device::new("bed-x", DeviceKey::from_seed_hex(&file.seed).unwrap(), 1);
    assert!(post_reading(&http, &mut device, 1.0).contains("201"));

    let mut browser = Command::new("python3")
        .arg(format!(
            "{}/tests/access_check.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([
            &format!("http://{http}"),
            "caregiver-ana",
            "caregiver password ana",
            "bed-x",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_browser = browser.stdin.take().unwrap();
    let mut from_browser = std::io::BufReader::new(browser.stdout.take().unwrap());
    let mut expect = |want: &str| {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut from_browser, &mut line).unwrap();
        line.trim() == want
    };
    let ready = expect("ready");
    if ready {
        assert!(post_reading(&http, &mut device, 0.0).contains("201"));
        writeln!(to_browser, "go").unwrap();
    }
    let live = ready && expect("live-ok");
    if live {
        let r = http_send(
            &http,
            "DELETE",
            &format!("/api/v1/grants/{}", grant["id"]),
            &resident,
            b"",
        );
        assert!(r.starts_with("HTTP/1.1 204"), "{r}");
        assert!(post_reading(&http, &mut device, 1.0).contains("201"));
        writeln!(to_browser, "go").unwrap();
    }
    let revoked = live && expect("revoked-ok");
    drop(to_browser);
    let out = browser.wait_with_output().unwrap();
    assert!(
        ready && live && revoked && out.status.success(),
        "browser check failed (ready {ready}, live {live}, revoked {revoked}):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Exports follow the same rules: the resident takes out her own data, the caregiver cannot.
    let own = http_send(
        &http,
        "GET",
        "/api/v1/subjects/resident-001/export",
        &resident,
        b"",
    );
    assert!(
        own.starts_with("HTTP/1.1 200") && own.contains("\"bed-x\""),
        "{own}"
    );
    let ana = login(&http, "caregiver-ana", "caregiver password ana");
    let r = http_send(
        &http,
        "GET",
        "/api/v1/subjects/resident-001/export",
        &ana,
        b"",
    );
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("security_event_id"),
        "{r}"
    );
}

#[test]
fn actuator_command_round_trips_to_a_simulated_plug() {
    let (dir, http, mqtt) = (tmp(), addr(), addr());
    let auth = admin_auth(&dir);
    add_user(
        &dir,
        "citizen-1",
        "santander",
        "citizen",
        "citizen password 001",
    );
    let _demo = Running(
        msec()
            .args([
                "demo",
                "--data-dir",
                &dir,
                "--http",
                &http,
                "--mqtt",
                &mqtt,
                "--residents",
                "1",
                "--trucks",
                "1",
            ])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let plug_state = |auth: &str| -> Option<bool> {
        let body = http_get_as(
            &http,
            "/api/v1/devices/home-001-plug/readings?limit=1",
            auth,
        )?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["readings"][0]["measurements"]
            .as_array()?
            .iter()
            .find(|m| m["n"].as_str().is_some_and(|n| n.ends_with("on")))?["vb"]
            .as_bool()
    };
    wait_until("the plug's first reading", 60, || {
        plug_state(&auth).is_some()
    });
    for on in [false, true] {
        let body = format!(r#"{{"resource":"plug/switch","value":{on}}}"#);
        let r = http_send(
            &http,
            "POST",
            "/api/v1/devices/home-001-plug/commands",
            &auth,
            body.as_bytes(),
        );
        assert!(r.starts_with("HTTP/1.1 202"), "{r}");
        // The device verifies the signed command, switches, and reports at once.
        wait_until("the plug to report the commanded state", 20, || {
            plug_state(&auth) == Some(on)
        });
    }
    // A citizen may not act on a resident's plug: refused and recorded; the plug is untouched.
    let citizen = login(&http, "citizen-1", "citizen password 001");
    let r = http_send(
        &http,
        "POST",
        "/api/v1/devices/home-001-plug/commands",
        &citizen,
        br#"{"resource":"plug/switch","value":false}"#,
    );
    assert!(
        r.starts_with("HTTP/1.1 403") && r.contains("security_event_id"),
        "{r}"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(plug_state(&auth), Some(true));
    // Every command sent is an administrative action with its log leaf (and the refused one
    // is not): two commands, two logged actions, each at a place in the log.
    let db = rusqlite::Connection::open(format!("{dir}/msec.db")).unwrap();
    let logged: Vec<(i64, String)> = db
        .prepare("SELECT id, target FROM admin_actions WHERE action = 'device.command'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(logged.len(), 2, "{logged:?}");
    for (id, target) in logged {
        assert_eq!(target, "home-001-plug");
        let leaves: i64 = db
            .query_row(
                "SELECT count(*) FROM log_leaves WHERE kind = 'admin' AND ref = ?1",
                [id.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(leaves, 1, "command {id} has {leaves} log leaves");
    }
}

/// The first start on an empty database creates `admin` with a random password, shown once;
/// later starts show none, and there is no default password anywhere.
#[test]
fn first_start_creates_an_admin_with_a_password_shown_once() {
    use std::io::BufRead;
    let dir = tmp();
    let start = |dir: &str| {
        let http = addr();
        let mut child = msec()
            .args([
                "serve",
                "--data-dir",
                dir,
                "--http",
                &http,
                "--mqtt",
                &addr(),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let server = Running(child);
        let mut said = String::new();
        while !said.contains("Log in") {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => said.push_str(&format!("{line}\n")),
                Err(_) => panic!("no login hint from msec serve: {said}"),
            }
        }
        wait_until("msec serve", 30, || {
            http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
        });
        (server, http, said)
    };
    let login = |http: &str, password: &str| {
        let body = serde_json::json!({"user": "admin", "password": password}).to_string();
        http_send(http, "POST", "/api/v1/login", "", body.as_bytes())
    };
    let (server, http, said) = start(&dir);
    let password = said
        .lines()
        .find(|l| l.contains("with password"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap_or_else(|| panic!("no password shown: {said}"))
        .to_string();
    assert!(password.len() >= 16, "a short password: {password}");
    assert!(login(&http, &password).starts_with("HTTP/1.1 200"));
    assert!(login(&http, "admin").starts_with("HTTP/1.1 401"));
    drop(server);
    let (_server, http, said) = start(&dir);
    assert!(
        !said.contains(&password) && !said.contains("with password"),
        "{said}"
    );
    assert!(login(&http, &password).starts_with("HTTP/1.1 200"));
    // A second empty data directory gets a different password.
    let (_other, _, said) = start(&tmp());
    assert!(
        said.contains("with password") && !said.contains(&password),
        "{said}"
    );
}

/// Secrets never reach the log, even at trace level: a password (right or wrong), an API
/// token, a session cookie and its CSRF token, all used against a running server.
/// Database and broker passwords given in URLs reach no log line at trace level (drivers and
/// the MQTT client included), though the URLs themselves are logged, redacted.
#[test]
fn url_passwords_stay_out_of_the_log_even_at_trace_level() {
    let (Some(database), Some(broker)) = (msec_testkit::postgres_url(), msec_testkit::mqtt_url())
    else {
        return;
    };
    // Trust authentication (as in CI) and an anonymous broker accept any password, so the
    // passwords reach the drivers without being needed.
    let (db_secret, broker_secret) = ("DbSecret-4711", "BrokerSecret-4712");
    let database = database.replacen("://postgres@", &format!("://postgres:{db_secret}@"), 1);
    assert!(database.contains(db_secret), "{database}");
    let broker = broker.replacen("mqtt://", &format!("mqtt://msec:{broker_secret}@"), 1);
    let dir = tmp();
    let http = addr();
    let log = format!("{dir}.log");
    let server = Running(
        msec()
            .env("MSEC_LOG", "trace")
            .args([
                "serve",
                "--data-dir",
                &dir,
                "--http",
                &http,
                "--database",
                &database,
                "--broker",
                &broker,
                "--topic-root",
                &msec_testkit::unique("t"),
            ])
            .stdout(std::fs::File::create(format!("{log}.out")).unwrap())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    std::thread::sleep(Duration::from_millis(500));
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap()
        + &std::fs::read_to_string(format!("{log}.out")).unwrap();
    assert!(
        text.contains("consuming readings") && text.contains("mqtt://msec:"),
        "the broker URL was not logged: {text}"
    );
    for secret in [db_secret, broker_secret] {
        assert!(!text.contains(secret), "{secret} reached the log");
    }
}

#[test]
fn secrets_stay_out_of_the_log_even_at_trace_level() {
    let dir = tmp();
    std::fs::create_dir_all(&dir).unwrap();
    let auth = admin_auth(&dir);
    let token = auth.trim().rsplit(' ').next().unwrap().to_string();
    let token_secret = token["msec_".len() + 17..].to_string();
    let http = addr();
    let log = format!("{dir}/serve.log");
    let server = Running(
        msec()
            .env("MSEC_LOG", "trace")
            .args([
                "serve",
                "--data-dir",
                &dir,
                "--http",
                &http,
                "--mqtt",
                &addr(),
            ])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    wait_until("msec serve", 30, || {
        http_get(&http, "/healthz").is_some_and(|b| b.contains("ok"))
    });
    let login = |password: &str| {
        let body = serde_json::json!({"user": "ops", "password": password}).to_string();
        http_send(&http, "POST", "/api/v1/login", "", body.as_bytes())
    };
    assert!(login("a wrong guess 4711").starts_with("HTTP/1.1 401"));
    let ok = login("ops password for tests");
    assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
    let cookie = ok
        .split("set-cookie: ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let csrf = ok
        .split("\"csrf\":\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let session = format!("Cookie: {cookie}\r\nX-CSRF-Token: {csrf}\r\n");
    assert!(http_get_raw(&http, "/api/v1/devices", &session).starts_with("HTTP/1.1 200"));
    assert!(http_get_raw(&http, "/api/v1/devices", &auth).starts_with("HTTP/1.1 200"));
    let forged = format!("Authorization: Bearer {}x\r\n", &token[..token.len() - 1]);
    assert!(http_get_raw(&http, "/api/v1/devices", &forged).starts_with("HTTP/1.1 401"));
    std::thread::sleep(Duration::from_millis(300));
    drop(server);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.len() > 1000, "trace logging produced little: {text}");
    let cookie_secret = cookie.split_once('=').unwrap().1;
    for (what, secret) in [
        ("right password", "ops password for tests"),
        ("wrong password", "a wrong guess 4711"),
        ("token secret", token_secret.as_str()),
        ("cookie secret", cookie_secret),
        ("CSRF token", csrf.as_str()),
    ] {
        assert!(!text.contains(secret), "the {what} reached the log");
    }
}

/// A witness guards what it has vouched for: one run per key (two overlapping runs could
/// cosign two views, even on two state files), a state file it cannot read is an error rather
/// than a first contact, and the state may be neither the key file nor a link.
#[test]
fn a_witness_never_shares_or_forgets_its_state() {
    let dir = tmp();
    std::fs::create_dir_all(&dir).unwrap();
    let key = format!("{dir}/w.json");
    assert!(run(&["witness", "--key", &key, "--init"]).0);
    let state = format!("{dir}/w.state");
    let real_key = std::fs::canonicalize(&key).unwrap();
    let lock = std::fs::File::create(format!("{}.lock", real_key.display())).unwrap();
    lock.try_lock().unwrap();
    let once = |extra: &[&str]| {
        let mut args = vec![
            "witness",
            "--once",
            "--log",
            "http://127.0.0.1:9",
            "--key",
            &key,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let (ok, _, err) = once(&[]);
    assert!(!ok && err.contains("another witness is running"), "{err}");
    let other_state = format!("{dir}/other.state");
    let (ok, _, err) = once(&["--state", &other_state]);
    assert!(!ok && err.contains("another witness is running"), "{err}");
    drop(lock);
    std::fs::write(&state, b"\xff\xfe not text").unwrap();
    let (ok, _, err) = once(&[]);
    assert!(!ok && err.contains("cannot read"), "{err}");
    assert_eq!(std::fs::read(&state).unwrap(), b"\xff\xfe not text");
    let (ok, _, err) = once(&["--state", &key]);
    assert!(!ok && err.contains("is the key file"), "{err}");
    #[cfg(unix)]
    {
        let link = format!("{dir}/link.state");
        std::os::unix::fs::symlink(&state, &link).unwrap();
        let (ok, _, err) = once(&["--state", &link]);
        assert!(!ok && err.contains("symbolic link"), "{err}");
    }
}

/// With the key-encryption key from MSEC_KEK (read-only to msec), an erasure still destroys the
/// subject's data key, and says plainly that the KEK could not be rotated, instead of
/// reporting a failure that invites running it again.
#[test]
fn an_erasure_with_a_read_only_key_says_what_it_could_not_do() {
    let dir = tmp();
    let kek = format!("kek-1:{}", "ab".repeat(32));
    let with_kek = |args: &[&str]| {
        let out = msec().env("MSEC_KEK", &kek).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let key_file = format!("{dir}-bed.json");
    assert!(
        run(&[
            "device",
            "keygen",
            "--id",
            "bed-9",
            "--tenant",
            "santander",
            "--out",
            &key_file
        ])
        .0
    );
    let (ok, _, err) = with_kek(&[
        "device",
        "register",
        "--key-file",
        &key_file,
        "--kind",
        "bed-sensor",
        "--owner",
        "resident-9",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    // A second resident, whose data key is still live after the first's erasure.
    let other_key_file = format!("{dir}-bed-10.json");
    let keygen = [
        "device",
        "keygen",
        "--id",
        "bed-10",
        "--tenant",
        "santander",
        "--out",
    ];
    assert!(run(&[&keygen[..], &[other_key_file.as_str()]].concat()).0);
    let (ok, _, err) = with_kek(&[
        "device",
        "register",
        "--key-file",
        &other_key_file,
        "--kind",
        "bed-sensor",
        "--owner",
        "resident-10",
        "--data-dir",
        &dir,
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = with_kek(&[
        "erase",
        "--subject",
        "resident-9",
        "--yes",
        "--data-dir",
        &dir,
    ]);
    assert!(ok && out.contains("erased resident-9"), "{out}{err}");
    assert!(
        err.contains("NOT rotated") && err.contains("backups"),
        "{err}"
    );
    let (ok, _, err) = with_kek(&["export", "--subject", "resident-9", "--data-dir", &dir]);
    assert!(!ok && err.contains("erased"), "{err}");

    // The rotation the warning asks for: a new key, the old one previous, `keys rewrap`; then
    // msec runs on the new key alone.
    let new_kek = format!("kek-2:{}", "cd".repeat(32));
    let on = |args: &[&str], previous: Option<&str>| {
        let mut cmd = msec();
        cmd.env("MSEC_KEK", &new_kek).args(args);
        match previous {
            Some(old) => cmd.env("MSEC_KEK_PREVIOUS", old),
            None => cmd.env_remove("MSEC_KEK_PREVIOUS"),
        };
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    };
    let (ok, text) = on(&["keys", "rewrap", "--data-dir", &dir], None);
    assert!(!ok, "without the old key nothing opens: {text}");
    let (ok, text) = on(&["keys", "rewrap", "--data-dir", &dir], Some(&kek));
    assert!(
        ok && text.contains("re-wrapped 1 data keys under kek-2"),
        "{text}"
    );
    let (ok, text) = on(&["device", "list", "--data-dir", &dir], None);
    assert!(ok && text.contains("bed-10"), "{text}");
}

/// A command that only reads makes no key: pointed at a PostgreSQL database from a directory
/// without a key file, it says so, and leaves no key file to be "kept safe".
#[test]
fn reading_commands_make_no_encryption_key() {
    let dir = tmp();
    for args in [
        vec!["device", "list"],
        vec!["user", "list"],
        vec!["token", "list"],
        vec!["grant", "--list"],
    ] {
        let mut args = args;
        args.extend([
            "--data-dir",
            &dir,
            "--database",
            "postgres://nobody@127.0.0.1:1/x",
        ]);
        let (ok, _, err) = run(&args);
        assert!(!ok, "{args:?}");
        assert!(err.contains("no key file at"), "{args:?}: {err}");
        assert!(!err.contains("created encryption keys"), "{err}");
        assert!(
            !std::path::Path::new(&dir).join("keys.json").exists(),
            "{args:?}"
        );
    }
}

/// One witness listed twice is refused before anything is made in the data directory.
#[test]
fn a_witness_listed_twice_is_refused_before_anything_is_created() {
    let dir = tmp();
    let w = msec_ledger::CosignerKey::new("w.example/w1", [9; 32])
        .unwrap()
        .verifier_key();
    let (ok, _, err) = run(&[
        "serve",
        "--data-dir",
        &dir,
        "--witness",
        &w,
        "--witness",
        &w,
    ]);
    assert!(!ok && err.contains("same witness"), "{err}");
    assert!(!std::path::Path::new(&dir).exists(), "{dir} was created");
}

/// Malformed settings are refused up front, each with what to give instead, and create nothing.
#[test]
fn malformed_settings_say_what_to_give() {
    let dir = tmp();
    let witness_key = format!("{dir}-witness.json");
    for (args, says) in [
        (
            vec![
                "device",
                "list",
                "--data-dir",
                &dir,
                "--database",
                "sqlite:",
            ],
            "sqlite:PATH",
        ),
        (
            vec!["sim", "--data-dir", &dir, "--broker", "mqtt://u:p@h:1/path"],
            "has a path or query",
        ),
        (
            vec![
                "token",
                "create",
                "--principal",
                "x",
                "--scopes",
                "read",
                "--days",
                "400",
                "--data-dir",
                &dir,
            ],
            "1..=365",
        ),
        (
            vec!["witness", "--key", &witness_key, "--log", "notaurl"],
            "base URL",
        ),
    ] {
        let (ok, _, err) = run(&args);
        assert!(!ok && err.contains(says), "{args:?}: {err}");
        assert!(
            !err.contains("p@") && !err.contains(":p@"),
            "a password shown: {err}"
        );
    }
    assert!(!std::path::Path::new(&dir).exists());
    assert!(!std::path::Path::new(&witness_key).exists());
}
