//! Settings shared by `serve`, `demo`, `sim` and the registry commands, from flags, `MSEC_*`
//! environment variables and an optional TOML file, in that order of precedence.

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

pub const DEFAULT_HTTP: &str = "127.0.0.1:8080";
/// Not 1883, so that the embedded broker never collides with a system Mosquitto.
pub const DEFAULT_MQTT: &str = "127.0.0.1:1884";
/// The largest `--max-skew`: a week.
const MAX_SKEW_SECS: i64 = 7 * 86_400;
/// The largest `--max-age`: 30 days.
const MAX_AGE_SECS: i64 = 30 * 86_400;

/// Where the database and its keys are: all that commands which only read or change records
/// need.
#[derive(Debug, Args, Clone, Default)]
pub struct StoreArgs {
    /// TOML file with the platform settings below (keys as the long flags with _ for -, e.g.
    /// max_skew = 120; --witness is witnesses = ["VKEY", …], --trusted-proxy is
    /// trusted_proxies = ["IP", …])
    #[arg(long, env = "MSEC_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the embedded database and local key files live [default: ./msec-data]
    #[arg(long, env = "MSEC_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Database URL: postgres://user@host:5432/db for PostgreSQL, or sqlite:PATH
    /// [default: SQLite at DATA_DIR/msec.db]
    // The URL may hold a password: --help must not print the environment's value.
    #[arg(
        long,
        env = "MSEC_DATABASE",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database: Option<String>,
    /// Key file with the key-encryption key (created by `msec keys init`, or on first start)
    /// [default: DATA_DIR/keys.json]. Setting MSEC_KEK=ID:HEX instead takes the key from the
    /// environment (a secret store).
    #[arg(long, env = "MSEC_KEYS", value_name = "FILE")]
    pub keys: Option<PathBuf>,
}

/// The witnesses whose cosignatures count: for the running platform and for `msec audit`.
#[derive(Debug, Args, Clone, Default)]
pub struct WitnessesArgs {
    /// A witness whose cosignatures count (its verifier key, as `msec witness` prints it);
    /// repeat for several (in MSEC_WITNESSES: comma-separated)
    #[arg(
        long = "witness",
        env = "MSEC_WITNESSES",
        value_name = "VKEY",
        value_delimiter = ','
    )]
    pub witnesses: Vec<String>,
    /// Witness cosignatures a checkpoint needs to be final [default: 1 if witnesses are given]
    #[arg(long, env = "MSEC_WITNESS_QUORUM", value_name = "K")]
    pub witness_quorum: Option<usize>,
}

/// Where MQTT traffic goes: for the platform and for `msec sim`.
#[derive(Debug, Args, Clone, Default)]
pub struct BrokerArgs {
    /// Listen address of the embedded MQTT broker [default: 127.0.0.1:1884]. It authenticates no
    /// client: beyond loopback, anyone who reaches it can read every reading (msec warns)
    #[arg(long, env = "MSEC_MQTT", value_name = "ADDR")]
    pub mqtt: Option<SocketAddr>,
    /// Use this external MQTT broker instead of the embedded one, e.g. mqtt://127.0.0.1:1883,
    /// or mqtt://USER:PASSWORD@HOST:PORT for a broker with a password file
    #[arg(long, env = "MSEC_BROKER", value_name = "URL", hide_env_values = true)]
    pub broker: Option<String>,
    /// First MQTT topic level; devices publish on ROOT/v1/TENANT/DEVICE/readings [default: msec]
    #[arg(long, env = "MSEC_TOPIC_ROOT", value_name = "ROOT")]
    pub topic_root: Option<String>,
}

/// Everything `serve` and `demo` take.
#[derive(Debug, Args, Clone, Default)]
pub struct PlatformArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub witnessing: WitnessesArgs,
    #[command(flatten)]
    pub messaging: BrokerArgs,
    /// HTTP API and dashboard listen address [default: 127.0.0.1:8080]
    #[arg(long, env = "MSEC_HTTP", value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// How far ahead of this server's clock a device's clock may run, in seconds, at most a week [default: 300]
    #[arg(long, env = "MSEC_MAX_SKEW", value_name = "SECS")]
    pub max_skew: Option<i64>,
    /// How long after signing a reading may arrive, in seconds, at most 30 days: devices that buffer offline, broker backlogs after an outage [default: 86400]
    #[arg(long, env = "MSEC_MAX_AGE", value_name = "SECS")]
    pub max_age: Option<i64>,
    /// Largest accepted reading envelope in bytes [default: 65536]
    #[arg(long, env = "MSEC_MAX_ENVELOPE_BYTES", value_name = "BYTES")]
    pub max_envelope_bytes: Option<usize>,
    /// The address of a reverse proxy in front of msec whose X-Forwarded-For names the client
    /// (for login throttling and security events) and whose X-Forwarded-Proto says whether it
    /// came over HTTPS (for Secure session cookies); repeat for several (in
    /// MSEC_TRUSTED_PROXIES: comma-separated). From anyone else both headers are ignored
    /// [default: none]
    #[arg(
        long = "trusted-proxy",
        env = "MSEC_TRUSTED_PROXIES",
        value_name = "IP",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl StoreArgs {
    /// The settings with nothing but these given (the rest from the file or defaults).
    pub fn resolve(&self) -> Result<Settings> {
        PlatformArgs {
            store: self.clone(),
            ..Default::default()
        }
        .resolve()
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    data_dir: Option<PathBuf>,
    database: Option<String>,
    http: Option<SocketAddr>,
    mqtt: Option<SocketAddr>,
    broker: Option<String>,
    topic_root: Option<String>,
    max_skew: Option<i64>,
    max_age: Option<i64>,
    max_envelope_bytes: Option<usize>,
    keys: Option<PathBuf>,
    witnesses: Option<Vec<String>>,
    trusted_proxies: Option<Vec<std::net::IpAddr>>,
    witness_quorum: Option<usize>,
}

/// Where MQTT traffic goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Broker {
    Embedded(SocketAddr),
    External(String),
}

/// Resolved settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub data_dir: PathBuf,
    pub database: String,
    pub http: SocketAddr,
    pub broker: Broker,
    pub topic_root: String,
    pub max_skew: i64,
    pub max_age: i64,
    pub max_envelope_bytes: usize,
    pub keys: PathBuf,
    pub witnesses: Vec<msec_notary::Witness>,
    pub witness_quorum: usize,
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

impl Settings {
    /// Creates the data directory, readable by msec's own user only: the database and the key
    /// files live there.
    pub fn create_data_dir(&self) -> Result<()> {
        msec_store::create_private_dir(&self.data_dir)
            .with_context(|| format!("cannot create data directory {}", self.data_dir.display()))
    }

    /// The key-encryption key's source: MSEC_KEK if set, else the key file, created with a
    /// fresh key (and a note on stderr) if it does not exist yet.
    pub fn key_provider(&self) -> Result<std::sync::Arc<dyn msec_store::KekProvider>> {
        if std::env::var_os("MSEC_KEK").is_some() {
            return Ok(std::sync::Arc::new(msec_vault::EnvKeys::new("MSEC_KEK")));
        }
        let file = msec_vault::FileKeys::new(&self.keys);
        if !file.exists() {
            match file.init() {
                Ok(_) => eprintln!(
                    "created encryption keys in {} — keep a copy somewhere safe: without it the data cannot be decrypted",
                    self.keys.display()
                ),
                // Another process starting on the same data directory made them first.
                Err(_) if file.exists() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(std::sync::Arc::new(file))
    }
    /// [`Settings::key_provider`] for a database that exists already: its key must exist too
    /// (a command that only reads must not make a key and ask for it to be kept safe).
    pub fn existing_key_provider(&self) -> Result<std::sync::Arc<dyn msec_store::KekProvider>> {
        if std::env::var_os("MSEC_KEK").is_some() {
            return Ok(std::sync::Arc::new(msec_vault::EnvKeys::new("MSEC_KEK")));
        }
        let file = msec_vault::FileKeys::new(&self.keys);
        if !file.exists() {
            bail!(
                "no key file at {}: give the database's key with --keys FILE or MSEC_KEK",
                self.keys.display()
            );
        }
        Ok(std::sync::Arc::new(file))
    }
    /// The platform's actuator-command signing key (created on first use); devices pin its
    /// public half.
    pub fn command_key_file(&self) -> PathBuf {
        self.data_dir.join("command-key.json")
    }
    /// The log's signing key (created on first use).
    pub fn log_key_file(&self) -> PathBuf {
        self.data_dir.join("log-key.json")
    }
    /// The secret part of the platform's MQTT client ids (see [`Settings::mqtt_client_secret`]).
    pub fn mqtt_client_file(&self) -> PathBuf {
        self.data_dir.join("mqtt-client-id")
    }
    /// A random suffix for the platform's MQTT client ids, made on first start and kept,
    /// readable by its owner only. The ids must stay the same across restarts (the broker keeps
    /// the consumer's session, and the readings queued for it, under its id) and must not be
    /// guessable: a broker hands a session to whoever connects with its client id, so on a
    /// broker anyone may connect to, a known id would let anyone take over the consumer and
    /// acknowledge readings away.
    pub fn mqtt_client_secret(&self) -> Result<String> {
        let path = self.mqtt_client_file();
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let secret = text.trim();
                if secret.len() != 32 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
                    bail!(
                        "{} is not an msec client id secret (32 hex digits); delete it to make a new one",
                        path.display()
                    );
                }
                Ok(secret.to_string())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut bytes = [0u8; 16];
                getrandom::fill(&mut bytes).map_err(|e| {
                    anyhow::anyhow!("the operating system's random source failed: {e}")
                })?;
                let secret = hex::encode(bytes);
                // Written whole, then renamed into place: a crash halfway leaves no empty file.
                let tmp = path.with_extension("tmp");
                let mut options = std::fs::OpenOptions::new();
                options.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                use std::io::Write;
                options
                    .open(&tmp)
                    .and_then(|mut f| f.write_all(secret.as_bytes()).and_then(|()| f.sync_all()))
                    .and_then(|()| std::fs::rename(&tmp, &path))
                    .with_context(|| format!("cannot write {}", path.display()))?;
                Ok(secret)
            }
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    /// The newest checkpoint this platform published, kept outside the database.
    pub fn log_state_file(&self) -> PathBuf {
        self.data_dir.join("log-checkpoint.txt")
    }
    /// The broker URL clients should connect to.
    pub fn broker_url(&self) -> String {
        match &self.broker {
            Broker::Embedded(addr) => format!("mqtt://{addr}"),
            Broker::External(url) => url.clone(),
        }
    }
}

impl PlatformArgs {
    pub fn resolve(&self) -> Result<Settings> {
        let file = match &self.store.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read config file {}", path.display()))?;
                // toml's own message quotes the offending line, which may hold a password
                // (`database = "postgres://msec:…@db/msec"` with a misspelt key): only where.
                toml::from_str::<FileSettings>(&text).map_err(|e| {
                    let at = e.span().map_or(0, |s| s.start);
                    let line = text[..at.min(text.len())].matches('\n').count() + 1;
                    anyhow::anyhow!(
                        "config file {}, line {line}: {}",
                        path.display(),
                        e.message()
                    )
                })?
            }
            None => FileSettings::default(),
        };
        // Where a refused value came from, for the error: a flag (or its MSEC_* variable), or
        // the config file, which the operator may not think of.
        let from = |flagged: bool, flag: &str, key: &str| match &self.store.config {
            Some(path) if !flagged => format!("{key} in the config file {}", path.display()),
            _ => format!("--{flag} or MSEC_{}", flag.to_uppercase().replace('-', "_")),
        };
        let data_dir = self
            .store
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("msec-data"));
        let database = self
            .store
            .database
            .clone()
            .or(file.database)
            .unwrap_or_else(|| format!("sqlite:{}", data_dir.join("msec.db").display()));
        if !["postgres://", "postgresql://", "sqlite:"]
            .iter()
            .any(|scheme| database.starts_with(scheme))
            || database == "sqlite:"
        {
            bail!(
                "database {:?} ({}) must be postgres://USER@HOST:PORT/DB or sqlite:PATH",
                msec_store::redact(&database),
                from(self.store.database.is_some(), "database", "database")
            );
        }
        // One of the two, from the first layer (flags, MSEC_* variables, the file) that names
        // either: both in one layer is a mistake to point out, not to settle silently. Which
        // layer a value came from is read off the environment: a value equal to its variable's
        // came from there (or from a flag repeating it, which then makes no difference).
        let both =
            "an embedded broker's address (mqtt) and an external broker (broker) are both set";
        let mqtt_from_env = std::env::var("MSEC_MQTT")
            .ok()
            .and_then(|v| v.parse::<SocketAddr>().ok())
            .is_some_and(|v| Some(v) == self.messaging.mqtt);
        let broker_from_env = std::env::var("MSEC_BROKER").ok() == self.messaging.broker;
        let broker = match (self.messaging.broker.clone(), self.messaging.mqtt) {
            (Some(url), Some(addr)) => match (broker_from_env, mqtt_from_env) {
                (true, false) => Broker::Embedded(addr),
                (false, true) => Broker::External(url),
                (true, true) => bail!("{both} by MSEC_MQTT and MSEC_BROKER; keep one"),
                (false, false) => bail!("{both} by flags (--mqtt, --broker); keep one"),
            },
            (Some(url), None) => Broker::External(url),
            (None, Some(addr)) => Broker::Embedded(addr),
            (None, None) => match (file.broker, file.mqtt) {
                (Some(_), Some(_)) => bail!("{both} in the config file; keep one"),
                (Some(url), None) => Broker::External(url),
                (None, addr) => Broker::Embedded(
                    addr.unwrap_or_else(|| DEFAULT_MQTT.parse().expect("valid default")),
                ),
            },
        };
        if let Broker::External(url) = &broker {
            msec_ingest::MqttConfig::from_url(url, "check", "check").map_err(anyhow::Error::msg)?;
        }
        let topic_root = self
            .messaging
            .topic_root
            .clone()
            .or(file.topic_root)
            .unwrap_or_else(|| "msec".into());
        if topic_root.is_empty() || topic_root.contains(['+', '#', '/']) {
            bail!(
                "topic root {topic_root:?} ({}) must be one non-empty MQTT topic level without wildcards",
                from(self.messaging.topic_root.is_some(), "topic-root", "topic_root")
            );
        }
        let max_skew = self.max_skew.or(file.max_skew).unwrap_or(300);
        // A week is far beyond any clock a device could sensibly keep; past that a "skew"
        // would let any old reading through.
        if !(1..=MAX_SKEW_SECS).contains(&max_skew) {
            bail!(
                "max skew {max_skew} ({}) must be between 1 and {MAX_SKEW_SECS} seconds (a week)",
                from(self.max_skew.is_some(), "max-skew", "max_skew")
            );
        }
        let max_age = self.max_age.or(file.max_age).unwrap_or(86_400);
        if !(1..=MAX_AGE_SECS).contains(&max_age) {
            bail!(
                "max age {max_age} ({}) must be between 1 and {MAX_AGE_SECS} seconds (30 days)",
                from(self.max_age.is_some(), "max-age", "max_age")
            );
        }
        let max_envelope_bytes = self
            .max_envelope_bytes
            .or(file.max_envelope_bytes)
            .unwrap_or(msec_envelope::DEFAULT_MAX_ENVELOPE_BYTES);
        if !(256..=msec_broker::MAX_PAYLOAD_BYTES).contains(&max_envelope_bytes) {
            bail!(
                "max envelope bytes {max_envelope_bytes} ({}) must be between 256 and {}",
                from(
                    self.max_envelope_bytes.is_some(),
                    "max-envelope-bytes",
                    "max_envelope_bytes"
                ),
                msec_broker::MAX_PAYLOAD_BYTES
            );
        }
        if std::env::var_os("MSEC_KEK").is_some()
            && (self.store.keys.is_some() || file.keys.is_some())
        {
            bail!("MSEC_KEK and a key file (--keys, MSEC_KEYS or keys in the config file) are both set: the key comes from one place; keep one");
        }
        let keys = self
            .store
            .keys
            .clone()
            .or(file.keys)
            .unwrap_or_else(|| data_dir.join("keys.json"));
        let witness_keys = if self.witnessing.witnesses.is_empty() {
            file.witnesses.unwrap_or_default()
        } else {
            self.witnessing.witnesses.clone()
        };
        let witnesses = witness_keys
            .iter()
            .map(|k| witness(k))
            .collect::<Result<Vec<_>>>()?;
        let witness_quorum = self
            .witnessing
            .witness_quorum
            .or(file.witness_quorum)
            .unwrap_or(usize::from(!witnesses.is_empty()));
        if witness_quorum > witnesses.len() {
            bail!(
                "a witness quorum of {witness_quorum} ({}) needs at least that many witness keys (got {})",
                from(
                    self.witnessing.witness_quorum.is_some(),
                    "witness-quorum",
                    "witness_quorum"
                ),
                witnesses.len()
            );
        }
        // Before anything is created in the data directory.
        msec_notary::check_witnesses(&witnesses, witness_quorum)?;
        let trusted_proxies = if self.trusted_proxies.is_empty() {
            file.trusted_proxies.unwrap_or_default()
        } else {
            self.trusted_proxies.clone()
        };
        Ok(Settings {
            keys,
            witnesses,
            witness_quorum,
            trusted_proxies,
            data_dir,
            database,
            http: self
                .http
                .or(file.http)
                .unwrap_or_else(|| DEFAULT_HTTP.parse().expect("valid default")),
            broker,
            topic_root,
            max_skew,
            max_age,
            max_envelope_bytes,
        })
    }
}

/// A witness from its cosigner verifier key (`name+hash+base64`).
fn witness(vkey: &str) -> Result<msec_notary::Witness> {
    let vkey = vkey.trim();
    let name = vkey.split('+').next().unwrap_or_default();
    // Checking a dummy cosignature validates the key's form and type without trusting it.
    let probe = msec_ledger::Checkpoint {
        origin: "probe".into(),
        size: 0,
        root: [0; 32],
    };
    match msec_ledger::Checkpoint::verify_cosignature(&format!("{}\n", probe.body()), vkey) {
        Err(msec_ledger::CheckpointError::BadKey(why)) => {
            bail!("--witness {vkey:?} is not a witness verifier key: {why}")
        }
        _ => Ok(msec_notary::Witness {
            name: name.to_string(),
            verifier_key: vkey.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_beat_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("msec-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("msec.toml");
        std::fs::write(
            &file,
            "http = \"127.0.0.1:9000\"\nbroker = \"mqtt://127.0.0.1:1883\"\nmax_skew = 30\ntrusted_proxies = [\"127.0.0.1\"]\n",
        )
        .unwrap();
        let args = PlatformArgs {
            store: StoreArgs {
                config: Some(file.clone()),
                ..Default::default()
            },
            max_skew: Some(60),
            ..Default::default()
        };
        let s = args.resolve().unwrap();
        assert_eq!(s.http.to_string(), "127.0.0.1:9000");
        assert_eq!(s.broker, Broker::External("mqtt://127.0.0.1:1883".into()));
        assert_eq!(s.max_skew, 60);
        assert_eq!(
            s.trusted_proxies,
            ["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
        );
        assert_eq!(s.database, "sqlite:msec-data/msec.db");
        let s = PlatformArgs::default().resolve().unwrap();
        assert_eq!(s.broker, Broker::Embedded(DEFAULT_MQTT.parse().unwrap()));
        std::fs::write(&file, "htp = 1\n").unwrap();
        let err = format!(
            "{:#}",
            PlatformArgs {
                store: StoreArgs {
                    config: Some(file.clone()),
                    ..Default::default()
                },
                ..Default::default()
            }
            .resolve()
            .unwrap_err()
        );
        assert!(
            err.contains("unknown field") && err.contains("line 1"),
            "{err}"
        );
        // A misspelt key's line may hold a password: the error says where, not what.
        std::fs::write(
            &file,
            "http = \"127.0.0.1:9000\"\ndatabse = \"postgres://msec:S3cret@db/msec\"\n",
        )
        .unwrap();
        let with_file = |file: &std::path::Path| PlatformArgs {
            store: StoreArgs {
                config: Some(file.to_path_buf()),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = format!("{:#}", with_file(&file).resolve().unwrap_err());
        assert!(err.contains("line 2") && !err.contains("S3cret"), "{err}");
        // Both kinds of broker in one layer is pointed out, not settled silently.
        std::fs::write(
            &file,
            "mqtt = \"127.0.0.1:1884\"\nbroker = \"mqtt://127.0.0.1:1883\"\n",
        )
        .unwrap();
        let err = format!("{:#}", with_file(&file).resolve().unwrap_err());
        assert!(err.contains("keep one"), "{err}");
        let both = PlatformArgs {
            messaging: BrokerArgs {
                mqtt: Some("127.0.0.1:1884".parse().unwrap()),
                broker: Some("mqtt://127.0.0.1:1883".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(format!("{:#}", both.resolve().unwrap_err()).contains("keep one"));
        // A flag beats the other kind of broker in an MSEC_* variable; both kinds in the
        // variables is pointed out. (The variables are set here only, in this one test.)
        let mqtt_flag = both;
        std::env::set_var("MSEC_BROKER", "mqtt://127.0.0.1:1883");
        assert_eq!(
            mqtt_flag.resolve().unwrap().broker,
            Broker::Embedded("127.0.0.1:1884".parse().unwrap())
        );
        std::env::set_var("MSEC_MQTT", "127.0.0.1:1884");
        let err = format!("{:#}", mqtt_flag.resolve().unwrap_err());
        assert!(err.contains("MSEC_MQTT and MSEC_BROKER; keep one"), "{err}");
        std::env::remove_var("MSEC_BROKER");
        assert_eq!(
            mqtt_flag.resolve().unwrap().broker,
            Broker::External("mqtt://127.0.0.1:1883".into())
        );
        std::env::remove_var("MSEC_MQTT");
        // A flag for one beats the file's other.
        let flag = PlatformArgs {
            messaging: BrokerArgs {
                mqtt: Some("127.0.0.1:1885".parse().unwrap()),
                ..Default::default()
            },
            ..with_file(&file)
        };
        assert_eq!(
            flag.resolve().unwrap().broker,
            Broker::Embedded("127.0.0.1:1885".parse().unwrap())
        );
        let bad = PlatformArgs {
            messaging: BrokerArgs {
                broker: Some("tcp://x".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(format!("{:#}", bad.resolve().unwrap_err()).contains("mqtt://"));
        let bad = PlatformArgs {
            store: StoreArgs {
                database: Some("msec.db".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        assert!(format!("{:#}", bad.resolve().unwrap_err()).contains("sqlite:PATH"));
        for skew in [0, -1, 7 * 86_400 + 1, i64::MAX] {
            let bad = PlatformArgs {
                max_skew: Some(skew),
                ..Default::default()
            };
            assert!(
                format!("{:#}", bad.resolve().unwrap_err()).contains("max skew"),
                "{skew}"
            );
        }
        for age in [0, -1, 30 * 86_400 + 1, i64::MAX] {
            let bad = PlatformArgs {
                max_age: Some(age),
                ..Default::default()
            };
            assert!(
                format!("{:#}", bad.resolve().unwrap_err()).contains("max age"),
                "{age}"
            );
        }
        // A value refused from the config file names the file and its key; from a flag, the
        // flag, even with a config file given.
        let dir = std::env::temp_dir().join(format!("msec-cfg-range-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("msec.toml");
        std::fs::write(&file, "max_skew = 0\nmax_envelope_bytes = 10\n").unwrap();
        let from_file = PlatformArgs {
            store: StoreArgs {
                config: Some(file.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        let err = format!("{:#}", from_file.resolve().unwrap_err());
        assert!(
            err.contains("max_skew in the config file") && err.contains("msec.toml"),
            "{err}"
        );
        let flagged = PlatformArgs {
            max_skew: Some(60),
            max_envelope_bytes: Some(10),
            ..from_file
        };
        let err = format!("{:#}", flagged.resolve().unwrap_err());
        assert!(
            err.contains("(--max-envelope-bytes or MSEC_MAX_ENVELOPE_BYTES)"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).ok();
    }
}
