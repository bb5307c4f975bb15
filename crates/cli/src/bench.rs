//! `msec bench …`: figures measured on this machine, each next to a baseline measured in the
//! same run, so that a number always comes with what bounds it.

use crate::config::{Broker, Settings};
use crate::platform::{open_store, Platform};
use anyhow::{Context, Result};
use clap::Subcommand;
use ed25519_dalek::{Signer, SigningKey};
use msec_device::{readings_topic, unix_now, Device, DeviceKey};
use msec_envelope::Measurement;
use msec_ingest::Live;
use rumqttc::{AsyncClient, Event, Packet, QoS};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum BenchCommand {
    /// Ingest throughput and latency, embedded and with Mosquitto + PostgreSQL.
    ///
    /// Prints accepted readings/s from device signing through the broker to a durable commit,
    /// end-to-end latency (p50, p99) at a fixed rate, and two same-run baselines: raw Ed25519
    /// verification on all cores, and raw Mosquitto publish->subscribe of the same payloads.
    /// On Linux it also prints how busy the machine's cores were while readings flowed (idle
    /// cores mean something other than CPU, such as a broker's window or the disk, holds ingest
    /// back) and what that comes to in core time per reading, everything on the machine
    /// included, beside the core time of one raw verification.
    Ingest(IngestArgs),
    /// Transparency-log throughput on one core: appends, inclusion and consistency proofs
    /// (generated and verified), with raw SHA-256 of leaf-sized inputs as the baseline.
    ///
    /// Then stores `--audit-records` encrypted readings in a scratch SQLite database and times
    /// `msec audit` over them and the publication of a checkpoint after a commit.
    Ledger {
        /// Leaves appended (proofs are taken over the resulting tree)
        #[arg(long, default_value_t = 1_000_000)]
        leaves: u64,
        /// Readings stored for the audit measurement (0 skips it)
        #[arg(long, default_value_t = 200_000)]
        audit_records: u64,
    },
    /// Access decisions per second on one core with 10, 10,000 and 100,000 rules loaded.
    Policy {
        /// Decisions per measurement
        #[arg(long, default_value_t = 1_000_000)]
        decisions: u64,
    },
}

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Readings per throughput run
    #[arg(long, default_value_t = 100_000)]
    readings: usize,
    /// Simulated devices the readings are spread over
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// Rate of the latency run, readings/s
    #[arg(long, default_value_t = 5_000)]
    latency_rate: u32,
    /// Duration of the latency run, seconds
    #[arg(long, default_value_t = 5)]
    latency_secs: u64,
    /// Broker for the production-mode run and the raw baseline: `spawn` starts a private
    /// Mosquitto configured as docs/operations.md recommends; or give mqtt://host:port
    #[arg(
        long,
        default_value = "spawn",
        env = "MSEC_BENCH_MOSQUITTO",
        hide_env_values = true
    )]
    mosquitto: String,
    /// PostgreSQL for the production-mode run (a scratch schema is created and dropped)
    #[arg(
        long,
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        env = "MSEC_BENCH_POSTGRES",
        hide_env_values = true
    )]
    postgres: String,
    /// Only the embedded run and the verification baseline
    #[arg(long)]
    embedded_only: bool,
}

fn measurements(now: f64, i: usize) -> Vec<Measurement> {
    let x = i as f64;
    vec![
        Measurement::number("temperature", "Cel", now, 15.0 + (x * 0.01).sin() * 5.0),
        Measurement::number("humidity", "%RH", now, 60.0 + (x * 0.02).cos() * 10.0),
        Measurement::number("co2", "ppm", now, 410.0 + (x % 50.0)),
    ]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    format!(
        "{} cores, {cpu}; Ed25519 arithmetic: {}",
        cores(),
        curve_backend()
    )
}

/// Which of curve25519-dalek's backends verifies signatures here. The crate picks at run time
/// among those compiled in, from the CPU's features; which are compiled in follows from the
/// cfgs and target features of the build, which every crate of it shares, this one included:
/// the IFMA backend under the cfg that .cargo/config.toml passes or with IFMA as a target
/// feature, none but the portable code under its own backend or 32-bit cfgs. Inferred, then,
/// the way curve25519-dalek 5.0's build script decides (Cargo.lock pins that version).
fn curve_backend() -> &'static str {
    if cfg!(any(
        curve25519_dalek_backend = "serial",
        curve25519_dalek_backend = "fiat",
        curve25519_dalek_bits = "32"
    )) {
        return "portable";
    }
    #[cfg(all(target_arch = "x86_64", target_pointer_width = "64"))]
    {
        let ifma_built = cfg!(curve25519_dalek_backend = "avx512")
            || cfg!(all(
                target_feature = "avx512ifma",
                target_feature = "avx512vl"
            ));
        let ifma = std::arch::is_x86_feature_detected!("avx512ifma")
            && std::arch::is_x86_feature_detected!("avx512vl");
        if ifma_built && ifma {
            return "AVX-512 IFMA";
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            return if ifma {
                "AVX2 (this CPU has AVX-512 IFMA, but this build leaves it out: see .cargo/config.toml)"
            } else {
                "AVX2"
            };
        }
    }
    "portable"
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Microseconds of one core's time per item, when `busy` (a share of the cores that share
/// counts) handled `rate` items per second: the figure that compares across machines with
/// different core counts.
fn core_micros(busy: f64, cores: usize, rate: f64) -> f64 {
    busy * cores as f64 * 1e6 / rate
}

/// The CPUs `/proc/stat` counts (its machine-wide busy share covers all of them, also those
/// this process may not run on); where it cannot be read, the ones this process may use.
fn machine_cores() -> usize {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .map(|stat| {
            stat.lines()
                .filter(|l| {
                    l.strip_prefix("cpu")
                        .is_some_and(|r| r.starts_with(|c: char| c.is_ascii_digit()))
                })
                .count()
        })
        .filter(|&n| n > 0)
        .unwrap_or_else(cores)
}

/// Raw Ed25519 verifications per second on all cores, over messages as long as our envelopes.
/// Strict verification, as ingest does (`msec_envelope`): it also decompresses R to refuse
/// small-order points, which costs about one more field inversion than plain `verify`.
fn raw_verify_rate(msg_len: usize, count: usize) -> f64 {
    let key = SigningKey::from_bytes(&[9; 32]);
    let vk = key.verifying_key();
    let msgs: Vec<Vec<u8>> = (0..1000).map(|i| vec![i as u8; msg_len]).collect();
    let sigs: Vec<_> = msgs.iter().map(|m| key.sign(m)).collect();
    let threads = cores();
    let per = count / threads;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                for i in 0..per {
                    let k = i % msgs.len();
                    assert!(vk.verify_strict(&msgs[k], &sigs[k]).is_ok());
                }
            });
        }
    });
    (per * threads) as f64 / start.elapsed().as_secs_f64()
}

struct Fleet {
    devices: Vec<Device>,
    tenant: String,
}

impl Fleet {
    fn new(n: usize) -> Result<Fleet> {
        let devices = (0..n)
            .map(|i| {
                Ok(Device::new(
                    format!("bench-{i:04}"),
                    DeviceKey::generate()?,
                    1,
                ))
            })
            .collect::<Result<_>>()?;
        Ok(Fleet {
            devices,
            tenant: "bench".into(),
        })
    }

    /// Signs `n` readings round-robin, on all cores.
    fn sign(&mut self, n: usize, root: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let now = unix_now();
        let per_device = n.div_ceil(self.devices.len());
        let tenant = self.tenant.clone();
        let mut out: Vec<Vec<(String, Vec<u8>)>> = Vec::new();
        let half = self.devices.len().div_ceil(2);
        std::thread::scope(|s| {
            let handles: Vec<_> = self
                .devices
                .chunks_mut(half)
                .map(|chunk| {
                    let tenant = tenant.clone();
                    s.spawn(move || {
                        let mut v = Vec::new();
                        for d in chunk {
                            let topic = readings_topic(root, &tenant, d.id());
                            for i in 0..per_device {
                                v.push((topic.clone(), d.seal(&measurements(now, i), now)?));
                            }
                        }
                        Ok::<_, msec_device::EnvelopeError>(v)
                    })
                })
                .collect();
            out = handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .map_err(|_| anyhow::anyhow!("a signing thread panicked"))?
                        .map_err(anyhow::Error::from)
                })
                .collect::<Result<_>>()?;
            Ok::<_, anyhow::Error>(())
        })?;
        // Interleave devices, as a broker would see them.
        let mut all: Vec<(String, Vec<u8>)> = Vec::with_capacity(n);
        let mut iters: Vec<_> = out.into_iter().map(|v| v.into_iter()).collect();
        while all.len() < n {
            let mut progressed = false;
            for it in iters.iter_mut() {
                if let Some(x) = it.next() {
                    all.push(x);
                    progressed = true;
                }
            }
            if !progressed {
                break;
            }
        }
        all.truncate(n);
        Ok(all)
    }

    async fn register(&self, platform: &Platform, settings: &Settings) -> Result<()> {
        let mut store = open_store(settings).await?;
        let regs: Vec<_> = self
            .devices
            .iter()
            .map(|d| msec_store::NewDevice {
                id: d.id().to_string(),
                tenant: self.tenant.clone(),
                owner: self.tenant.clone(),
                name: d.id().to_string(),
                kind: "bench".into(),
                location: None,
                public_key: d.key().public_key(),
                key_id: d.key().key_id(),
            })
            .collect();
        let devices = tokio::task::spawn_blocking(move || -> Result<Vec<msec_store::Device>> {
            regs.iter().map(|r| Ok(store.register_device(r)?)).collect()
        })
        .await??;
        for d in &devices {
            platform.ingest.refresh_device(d);
        }
        Ok(())
    }
}

/// Publishes with QoS 1 from `clients` connections; returns once the broker acknowledged all.
async fn publish(url: &str, messages: Vec<(String, Vec<u8>)>, clients: usize) -> Result<()> {
    let cfg =
        msec_ingest::MqttConfig::from_url(url, "bench", "bench").map_err(anyhow::Error::msg)?;
    // Each device publishes through one connection, as a real device does, so its readings
    // reach the broker in sequence order; devices are spread over the connections. (Cutting the
    // list in halves instead split a device whenever the cut fell inside its readings, and its
    // later half, arriving first, made the earlier ones replays.)
    let clients = clients.max(1);
    let mut parts: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); clients];
    let mut client_of: HashMap<String, usize> = HashMap::new();
    for (topic, payload) in messages {
        let next = client_of.len() % clients;
        let c = *client_of.entry(topic.clone()).or_insert(next);
        parts[c].push((topic, payload));
    }
    let mut tasks = Vec::new();
    for (c, part) in parts.into_iter().enumerate() {
        let mut opts = cfg.client_options(format!("msec-bench-pub-{}-{c}", std::process::id()));
        opts.set_inflight(1000)
            .set_max_packet_size(1 << 20, 1 << 20);
        tasks.push(tokio::spawn(async move {
            let (client, mut events) = AsyncClient::new(opts, 1000);
            let n = part.len();
            let sender = tokio::spawn(async move {
                for (topic, payload) in part {
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, payload)
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                client
            });
            let mut acked = 0;
            while acked < n {
                match tokio::time::timeout(Duration::from_secs(30), events.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(anyhow::anyhow!("publisher: {e}")),
                    Err(_) => {
                        return Err(anyhow::anyhow!("publisher: broker stopped acknowledging"))
                    }
                }
            }
            let _ = sender.await;
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Busy and total CPU time of the whole machine so far, in clock ticks, from Linux's
/// `/proc/stat`; `None` elsewhere. Machine-wide on purpose: the broker and the database may be
/// processes of their own.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    // "cpu  user nice system idle iowait irq softirq steal guest guest_nice"; guest time is
    // already inside user, and iowait is idle time spent waiting for a disk.
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

/// The share of the machine's CPU time that was busy since `start` (a [`cpu_ticks`] reading).
fn cpu_busy_since(start: Option<(u64, u64)>) -> Option<f64> {
    let ((busy0, total0), (busy1, total1)) = (start?, cpu_ticks()?);
    (total1 > total0).then(|| (busy1 - busy0) as f64 / (total1 - total0) as f64)
}

/// Throughput: readings/s from first publish until all are committed, and how busy the
/// machine's cores were meanwhile (idle cores mean something other than CPU holds it back).
async fn throughput(
    platform: &Platform,
    messages: Vec<(String, Vec<u8>)>,
) -> Result<(f64, Option<f64>)> {
    let n = messages.len() as u64;
    let cpu = cpu_ticks();
    let base = platform.ingest.metrics().accepted.load(Relaxed);
    let batches = platform.ingest.metrics().batches.load(Relaxed);
    let start = Instant::now();
    let url = platform.broker_url.clone();
    let publisher = tokio::spawn(async move { publish(&url, messages, 2).await });
    let mut last_progress = (base, Instant::now());
    let mut last_report = Instant::now();
    loop {
        let done = platform.ingest.metrics().accepted.load(Relaxed) - base;
        if done >= n {
            break;
        }
        if done > last_progress.0 - base {
            last_progress = (done + base, Instant::now());
        } else if last_progress.1.elapsed() > Duration::from_secs(30) {
            anyhow::bail!(
                "ingest stalled at {done}/{n} readings ({} rejected)",
                platform.ingest.metrics().rejected_total()
            );
        }
        if last_report.elapsed() >= Duration::from_secs(2) {
            let commits = platform.ingest.metrics().batches.load(Relaxed) - batches;
            eprintln!(
                "    {done}/{n} committed, {:.0} per commit",
                done as f64 / commits.max(1) as f64
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let busy = cpu_busy_since(cpu);
    publisher.await??;
    Ok((rate, busy))
}

/// Latency at a fixed rate: signing on the device to the durable commit.
async fn latency(
    platform: &Platform,
    fleet: &mut Fleet,
    root: &str,
    rate: u32,
    secs: u64,
) -> Result<(f64, f64, usize)> {
    let sent: Arc<Mutex<HashMap<(String, i64), Instant>>> = Arc::default();
    let mut live = platform.ingest.subscribe();
    let total = rate as usize * secs as usize;
    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut lat = Vec::with_capacity(total);
            let deadline = Instant::now() + Duration::from_secs(secs + 30);
            while lat.len() < total && Instant::now() < deadline {
                match tokio::time::timeout(Duration::from_secs(5), live.recv()).await {
                    Ok(Ok(Live::Reading(r))) => {
                        let key = (r.device_id.clone(), r.sequence);
                        if let Some(t) = sent.lock().unwrap_or_else(|e| e.into_inner()).remove(&key)
                        {
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                    }
                    Ok(Ok(_)) | Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                    _ => break,
                }
            }
            lat
        })
    };
    let cfg = msec_ingest::MqttConfig::from_url(&platform.broker_url, "bench", root)
        .map_err(anyhow::Error::msg)?;
    let mut opts = cfg.client_options(format!("msec-bench-lat-{}", std::process::id()));
    opts.set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 1000);
    let poller = tokio::spawn(async move { while events.poll().await.is_ok() {} });
    let period = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    for i in 0..total {
        // Pace against the clock, not by sleeping per message, so overheads do not lower the rate.
        let due = start + period * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        let k = i % fleet.devices.len();
        let d = &mut fleet.devices[k];
        let seq = d.next_sequence() as i64;
        let topic = readings_topic(root, &fleet.tenant, d.id());
        let now = unix_now();
        let t0 = Instant::now();
        let env = d.seal(&measurements(now, i), now)?;
        sent.lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((d.id().to_string(), seq), t0);
        client.publish(topic, QoS::AtLeastOnce, false, env).await?;
    }
    let mut lat = collector.await?;
    poller.abort();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    Ok((pct(0.50), pct(0.99), lat.len()))
}

/// Raw broker baseline: the same payloads on the same topics (under a root of its own),
/// published and received through the broker, QoS 1 both ways, no msec in between.
async fn raw_broker_rate(url: &str, messages: Vec<(String, Vec<u8>)>) -> Result<f64> {
    let root = format!("rawbench{}", std::process::id());
    let n = messages.len();
    let messages: Vec<_> = messages
        .into_iter()
        .map(|(topic, p)| (format!("{root}/{topic}"), p))
        .collect();
    let cfg =
        msec_ingest::MqttConfig::from_url(url, "bench", "bench").map_err(anyhow::Error::msg)?;
    let mut opts = cfg.client_options(format!("msec-bench-sub-{}", std::process::id()));
    opts.set_max_packet_size(1 << 20, 1 << 20);
    let (sub, mut events) = AsyncClient::new(opts, 100);
    sub.subscribe(format!("{root}/#"), QoS::AtLeastOnce).await?;
    loop {
        if let Event::Incoming(Packet::SubAck(_)) = events.poll().await? {
            break;
        }
    }
    let start = Instant::now();
    let url = url.to_string();
    let publisher = tokio::spawn(async move { publish(&url, messages, 2).await });
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(30), events.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => anyhow::bail!("raw subscriber: {e}"),
            Err(_) => anyhow::bail!("raw subscriber stalled at {got}/{n}"),
        }
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    publisher.await??;
    Ok(rate)
}

/// A private Mosquitto for the benchmark, stopped on drop. Mosquitto's defaults (20 messages
/// in flight per client, 1,000 queued) would measure the configuration, not the software.
struct PrivateMosquitto(std::process::Child, std::path::PathBuf);

impl PrivateMosquitto {
    fn start() -> Result<(PrivateMosquitto, String)> {
        let localhost = std::net::Ipv4Addr::LOCALHOST;
        let addr =
            std::net::SocketAddr::from((localhost, msec_broker::free_port(localhost.into())?));
        let conf =
            std::env::temp_dir().join(format!("msec-bench-mosquitto-{}.conf", std::process::id()));
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 max_inflight_messages 1000\nmax_queued_messages 0\nmessage_size_limit 1048576\n",
                addr.port()
            ),
        )?;
        let child = std::process::Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("cannot start mosquitto (install it, or pass --mosquitto mqtt://host:port)")?;
        let guard = PrivateMosquitto(child, conf);
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok((guard, format!("mqtt://{addr}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        anyhow::bail!("mosquitto did not start listening on {addr}")
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = std::fs::remove_file(&self.1);
    }
}

/// Creates a scratch schema and returns a URL that uses it.
async fn scratch_schema(base: &str) -> Result<(String, String)> {
    let schema = format!("msec_bench_{}", std::process::id());
    let (b, s) = (base.to_string(), schema.clone());
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mut c = postgres::Client::connect(&b, postgres::NoTls)?;
        c.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {s} CASCADE; CREATE SCHEMA {s}"
        ))?;
        Ok(())
    })
    .await?
    .with_context(|| format!("PostgreSQL at {}", msec_store::redact(base)))?;
    let sep = if base.contains('?') { '&' } else { '?' };
    Ok((
        format!("{base}{sep}options=-csearch_path%3D{schema}"),
        schema,
    ))
}

async fn drop_schema(base: &str, schema: String) {
    let b = base.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        if let Ok(mut c) = postgres::Client::connect(&b, postgres::NoTls) {
            let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
        }
    })
    .await;
}

struct Run {
    throughput: f64,
    /// Share of the machine's CPU time busy during the throughput phase.
    busy: Option<f64>,
    p50: f64,
    p99: f64,
    samples: usize,
}

async fn run_mode(
    settings: Settings,
    n: usize,
    devices: usize,
    rate: u32,
    secs: u64,
) -> Result<Run> {
    let claim = crate::platform::claim_data_dir(&settings)?;
    let platform = Platform::start(&settings, claim).await?;
    let result = async {
        let mut fleet = Fleet::new(devices)?;
        fleet.register(&platform, &settings).await?;
        eprintln!("  signing {n} readings…");
        let messages = fleet.sign(n, &settings.topic_root)?;
        eprintln!("  publishing and ingesting…");
        let (throughput, busy) = throughput(&platform, messages).await?;
        eprintln!("  latency run: {rate} readings/s for {secs} s…");
        let (p50, p99, samples) =
            latency(&platform, &mut fleet, &settings.topic_root, rate, secs).await?;
        Ok(Run {
            throughput,
            busy,
            p50,
            p99,
            samples,
        })
    }
    .await;
    platform.shutdown().await?;
    result
}

impl Run {
    /// The result line's tail, after the mode and its throughput ratio.
    fn summary(&self, rate: u32) -> String {
        let cpu = self
            .busy
            .map(|b| {
                format!(
                    "; CPU {:.0} % busy, {:.0} µs of core time per reading",
                    b * 100.0,
                    core_micros(b, machine_cores(), self.throughput)
                )
            })
            .unwrap_or_default();
        format!(
            "latency at {rate} /s: p50 {:.2} ms, p99 {:.2} ms ({} samples){cpu}",
            self.p50, self.p99, self.samples
        )
    }
}

fn rate(n: u64, start: Instant) -> f64 {
    n as f64 / start.elapsed().as_secs_f64()
}

/// Single-threaded ledger figures; blocking, so it runs on a blocking thread. Returns the
/// SHA-256 baseline (hashes/s).
fn ledger(leaves: u64) -> Result<f64> {
    use msec_ledger::{verify_consistency, verify_inclusion, Checkpoint, NoteKey, Tree};
    let leaves = leaves.max(2);
    println!(
        "msec bench ledger — {leaves} leaves, one core; machine: {}",
        machine()
    );
    // Leaf data as the store will commit it: a tag and a 32-byte record digest.
    let data: Vec<[u8; 40]> = (0..leaves)
        .map(|i| {
            let mut d = [0u8; 40];
            d[..8].copy_from_slice(&i.to_be_bytes());
            d
        })
        .collect();
    let start = Instant::now();
    for d in &data {
        std::hint::black_box(<sha2::Sha256 as sha2::Digest>::digest(d));
    }
    let sha = rate(leaves, start);
    println!("baseline  raw SHA-256 of 40-byte inputs:    {sha:>12.0} /s");

    let start = Instant::now();
    let mut tree = Tree::new();
    for d in &data {
        tree.push(d);
    }
    let appends = rate(leaves, start);
    println!(
        "ledger    leaf appends:                     {appends:>12.0} /s ({:.2} x raw SHA-256)",
        appends / sha
    );

    let size = tree.size();
    let root = tree.root(size)?;
    let n = 100_000u64.min(size);
    let step = (size / n).max(1);
    let start = Instant::now();
    let proofs: Vec<_> = (0..n)
        .map(|i| tree.inclusion_proof(i * step, size))
        .collect::<Result<_, _>>()?;
    println!(
        "ledger    inclusion proofs generated:       {:>12.0} /s",
        rate(n, start)
    );
    let start = Instant::now();
    for (i, p) in proofs.iter().enumerate() {
        let index = i as u64 * step;
        anyhow::ensure!(
            verify_inclusion(tree.leaf(index).context("leaf")?, index, size, p, &root),
            "proof {index} failed"
        );
    }
    println!(
        "ledger    inclusion proofs verified:        {:>12.0} /s",
        rate(n, start)
    );
    let start = Instant::now();
    let mut checked = 0;
    for i in 0..n.min(20_000) {
        let old = 1 + (i * 7919) % (size - 1);
        let proof = tree.consistency_proof(old, size)?;
        anyhow::ensure!(
            verify_consistency(old, size, &tree.root(old)?, &root, &proof),
            "consistency {old} failed"
        );
        checked += 1;
    }
    println!(
        "ledger    consistency proofs (make+verify): {:>12.0} /s",
        rate(checked, start)
    );
    let key = NoteKey::new("msec.bench/log", [7; 32])?;
    let start = Instant::now();
    let note = Checkpoint {
        origin: "msec.bench/log".into(),
        size,
        root: tree.root(size)?,
    }
    .sign(&key);
    println!(
        "ledger    checkpoint (root + sign):         {:>12.3} ms",
        start.elapsed().as_secs_f64() * 1000.0
    );
    anyhow::ensure!(
        Checkpoint::verify(&note, &key.verifier_key())?.size == size,
        "checkpoint did not verify"
    );
    Ok(sha)
}

/// `msec audit` and checkpoint publication over a scratch SQLite store of `records` readings.
fn audit_bench(records: u64, sha: f64) -> Result<()> {
    use msec_store::{Batch, NewDevice, NewReading, Store};
    let dir = std::env::temp_dir().join(format!("msec-bench-audit-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let result = (|| -> Result<()> {
        let keys: std::sync::Arc<dyn msec_store::KekProvider> =
            std::sync::Arc::new(msec_vault::MemoryKeys::new());
        let url = format!("sqlite:{}", dir.join("msec.db").display());
        let mut store = Store::open(&url, keys.clone())?;
        store.register_device(&NewDevice {
            id: "bench-1".into(),
            tenant: "bench".into(),
            owner: "bench".into(),
            name: "bench".into(),
            kind: "bench".into(),
            location: None,
            public_key: [9; 32],
            key_id: [9; 16],
        })?;
        eprintln!("audit: storing {records} encrypted readings…");
        let envelope = vec![0x5a; 180]; // about the size of a signed two-value reading
        let mut seq = 0i64;
        while (seq as u64) < records {
            let n = (records - seq as u64).min(5000) as i64;
            let batch = Batch {
                readings: (seq + 1..=seq + n)
                    .map(|s| NewReading {
                        device_id: "bench-1".into(),
                        sequence: s,
                        issued_at: 1_700_000_000 + s,
                        received_ms: 1_700_000_000_000 + s,
                        envelope: envelope.clone(),
                        digest: [1; 32],
                        measurements_json: r#"[{"n":"temperature","u":"Cel","v":21.5}]"#.into(),
                    })
                    .collect(),
                ..Default::default()
            };
            store.commit(&batch)?;
            seq += n;
        }
        let key = msec_notary::LogKey::from_seed("msec.bench/log", [7; 32])?;
        let vkey = key.verifier_key();
        // A restart: the log is loaded from the database and a first checkpoint signed.
        let start = Instant::now();
        let notary = msec_notary::Notary::open(
            Store::open(&url, keys.clone())?,
            key,
            dir.join("checkpoint"),
            vec![],
            0,
        )?;
        notary.tick()?;
        println!(
            "ledger    start-up: load {} leaves + first checkpoint: {:>8.1} ms",
            notary.size(),
            start.elapsed().as_secs_f64() * 1000.0
        );
        let cores = cores();
        let start = Instant::now();
        let report = msec_notary::audit(&mut store, &vkey, &[], &[], 0, &mut |_, _| {})?;
        let audit_rate = rate(report.records, start);
        anyhow::ensure!(
            report.findings.is_empty(),
            "the scratch database audited with findings"
        );
        println!(
            "ledger    audit (re-derive + compare + root), SQLite, {cores} cores: {audit_rate:>10.0} records/s ({:.2} x raw SHA-256 of 40 B on one core)",
            audit_rate / sha
        );
        // Checkpoint latency: a commit, then the publisher's next tick (the server ticks every
        // 250 ms, so the worst case adds that period).
        let mut lat = Vec::new();
        for i in 0..20 {
            let s = records as i64 + 1 + i;
            store.commit(&Batch {
                readings: vec![NewReading {
                    device_id: "bench-1".into(),
                    sequence: s,
                    issued_at: 1_700_000_000 + s,
                    received_ms: 1_700_000_000_000 + s,
                    envelope: envelope.clone(),
                    digest: [1; 32],
                    measurements_json: "[]".into(),
                }],
                ..Default::default()
            })?;
            let start = Instant::now();
            anyhow::ensure!(notary.tick()?.is_some(), "no checkpoint after a commit");
            lat.push(start.elapsed().as_secs_f64() * 1000.0);
        }
        lat.sort_by(f64::total_cmp);
        println!(
            "ledger    checkpoint after a commit: median {:.2} ms, max {:.2} ms; worst case with the 250 ms publish period: {:.0} ms (target <= 1000 ms)",
            lat[lat.len() / 2],
            lat[lat.len() - 1],
            250.0 + lat[lat.len() - 1]
        );
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// A pilot-shaped rule set of `n` rules: a few role rules plus per-person grants (residents
/// authorising caregivers for rooms), which is what grows with a city.
fn policy_set(n: usize) -> Result<msec_policy::PolicySet> {
    use msec_policy::{Action, Conditions, Effect, Rule, Subject};
    let role_rules = [
        (
            "admin",
            Effect::Allow,
            vec![Action::Read, Action::Manage],
            "**",
        ),
        (
            "operator",
            Effect::Allow,
            vec![Action::Read, Action::Subscribe, Action::Act],
            "santander/**",
        ),
        ("caregiver", Effect::Deny, vec![Action::Act], "**"),
        (
            "citizen",
            Effect::Allow,
            vec![Action::Read],
            "santander/park/**",
        ),
        ("auditor", Effect::Allow, vec![Action::Audit], "**"),
    ];
    let mut rules: Vec<Rule> = role_rules
        .iter()
        .map(|(role, effect, actions, pattern)| -> Result<Rule> {
            Ok(Rule {
                id: format!("role-{role}"),
                effect: *effect,
                subject: Subject::Role(role.to_string()),
                actions: actions.clone(),
                resource: pattern.parse()?,
                conditions: Conditions::default(),
            })
        })
        .collect::<Result<_>>()?;
    for i in 0..n.saturating_sub(rules.len()) {
        rules.push(Rule {
            id: format!("grant-{i}"),
            effect: Effect::Allow,
            subject: Subject::Principal(format!("user:{}", i / 2)),
            actions: vec![Action::Read, Action::Subscribe],
            resource: format!("santander/home-{}/{}/**", i / 2, ["bed", "door"][i % 2]).parse()?,
            conditions: Conditions {
                valid_until_ms: Some(i64::MAX),
                ..Default::default()
            },
        });
    }
    Ok(msec_policy::PolicySet::new(rules)?)
}

fn policy(decisions: u64) -> Result<()> {
    use msec_policy::{Action, Request};
    println!(
        "msec bench policy — {decisions} decisions per size, one core; machine: {}",
        machine()
    );
    let roles = [
        vec!["caregiver".to_string()],
        vec!["operator".to_string()],
        vec!["citizen".to_string()],
    ];
    for size in [10usize, 10_000, 100_000] {
        let set = policy_set(size)?;
        let people = (size / 2).max(1);
        // Requests prepared up front so that only decisions are timed.
        let requests: Vec<(String, String, usize, Action)> = (0..4096u64)
            .map(|i| {
                let person = (i.wrapping_mul(2654435761) % people as u64) as usize;
                let room = ["bed", "door", "plug"][(i % 3) as usize];
                let action = [Action::Read, Action::Subscribe, Action::Act][(i % 3) as usize];
                (
                    format!("user:{person}"),
                    format!("santander/home-{person}/{room}/state"),
                    (i % 3) as usize,
                    action,
                )
            })
            .collect();
        let mut allowed = 0u64;
        let start = Instant::now();
        for i in 0..decisions {
            let (principal, resource, r, action) = &requests[(i % 4096) as usize];
            let req = Request {
                principal,
                roles: &roles[*r],
                action: *action,
                resource,
                at_ms: 1_764_000_000_000,
                purpose: None,
            };
            allowed += u64::from(std::hint::black_box(set.decide(&req)).allowed);
        }
        let per_second = rate(decisions, start);
        // Baseline: one hash-map lookup of the principal, the floor of any indexed decision.
        let index: std::collections::HashMap<String, usize> =
            (0..people).map(|p| (format!("user:{p}"), p)).collect();
        let start = Instant::now();
        for i in 0..decisions {
            std::hint::black_box(index.get(&requests[(i % 4096) as usize].0));
        }
        let lookups = rate(decisions, start);
        println!(
            "policy    {size:>7} rules: {per_second:>12.0} decisions/s ({:.0} % allowed); baseline map lookup {lookups:.0}/s, ratio {:.2}",
            allowed as f64 * 100.0 / decisions as f64,
            per_second / lookups
        );
    }
    Ok(())
}

pub async fn run(cmd: BenchCommand) -> Result<()> {
    match cmd {
        BenchCommand::Ledger {
            leaves,
            audit_records,
        } => {
            tokio::task::spawn_blocking(move || {
                let sha = ledger(leaves)?;
                if audit_records > 0 {
                    audit_bench(audit_records, sha)?;
                }
                Ok(())
            })
            .await?
        }
        BenchCommand::Policy { decisions } => {
            tokio::task::spawn_blocking(move || policy(decisions)).await?
        }
        BenchCommand::Ingest(args) => ingest(args).await,
    }
}

async fn ingest(args: IngestArgs) -> Result<()> {
    let IngestArgs {
        readings,
        devices,
        latency_rate,
        latency_secs,
        mosquitto,
        postgres,
        embedded_only,
    } = args;
    let devices = devices.max(1);
    println!(
        "msec bench ingest — {} readings over {devices} devices; machine: {}",
        readings,
        machine()
    );
    let sample = {
        let mut d = Device::new("x", DeviceKey::from_seed([1; 32]), 1);
        d.seal(&measurements(unix_now(), 0), unix_now())?
    };
    let len = sample.len();
    eprintln!("baseline: raw Ed25519 verification…");
    let verify = tokio::task::spawn_blocking(move || raw_verify_rate(len, 200_000)).await?;
    println!(
        "baseline  raw Ed25519 verify (all cores, {len} B messages): {verify:>10.0} /s; {:.1} µs of core time each",
        core_micros(1.0, cores(), verify)
    );

    let dir = std::env::temp_dir().join(format!("msec-bench-{}", std::process::id()));
    let embedded = Settings {
        data_dir: dir.clone(),
        database: format!("sqlite:{}", dir.join("msec.db").display()),
        // Port 0: the HTTP listener and the embedded broker each take a free port themselves.
        http: ([127, 0, 0, 1], 0).into(),
        broker: Broker::Embedded(([127, 0, 0, 1], 0).into()),
        topic_root: "bench".into(),
        max_skew: 3600,
        max_age: 86_400,
        max_envelope_bytes: msec_envelope::DEFAULT_MAX_ENVELOPE_BYTES,
        keys: dir.join("keys.json"),
        witnesses: Vec::new(),
        witness_quorum: 0,
        trusted_proxies: Vec::new(),
    };
    eprintln!("embedded mode (rumqttd + SQLite):");
    let e = run_mode(embedded, readings, devices, latency_rate, latency_secs).await;
    let _ = std::fs::remove_dir_all(&dir);
    let e = e?;
    println!(
        "embedded  rumqttd + SQLite: {:>10.0} readings/s ({:.2} x raw verify); {}",
        e.throughput,
        e.throughput / verify,
        e.summary(latency_rate)
    );
    if embedded_only {
        return Ok(());
    }
    eprintln!("production mode (Mosquitto + PostgreSQL):");
    let (_private, mosquitto) = if mosquitto == "spawn" {
        let (guard, url) = PrivateMosquitto::start()?;
        (Some(guard), url)
    } else {
        (None, mosquitto)
    };
    println!(
        "          broker {}, database {}",
        msec_store::redact(&mosquitto),
        msec_store::redact(&postgres)
    );
    let (db, schema) = match scratch_schema(&postgres).await {
        Ok(x) => x,
        Err(e) => {
            println!("SKIPPED production mode and raw Mosquitto baseline: {e:#}");
            return Ok(());
        }
    };
    let pg_dir = std::env::temp_dir().join(format!("msec-bench-pg-{}", std::process::id()));
    let prod = Settings {
        keys: pg_dir.join("keys.json"),
        data_dir: pg_dir,
        database: db,
        http: ([127, 0, 0, 1], 0).into(),
        broker: Broker::External(mosquitto.clone()),
        topic_root: format!("bench{}", std::process::id()),
        max_skew: 3600,
        max_age: 86_400,
        max_envelope_bytes: msec_envelope::DEFAULT_MAX_ENVELOPE_BYTES,
        witnesses: Vec::new(),
        witness_quorum: 0,
        trusted_proxies: Vec::new(),
    };
    let p = run_mode(prod.clone(), readings, devices, latency_rate, latency_secs).await;
    drop_schema(&postgres, schema).await;
    let _ = std::fs::remove_dir_all(&prod.data_dir);
    let p = p?;
    eprintln!("baseline: raw Mosquitto publish->subscribe…");
    let payloads = Fleet::new(devices)?.sign(readings, "raw")?;
    let raw = raw_broker_rate(&mosquitto, payloads).await?;
    println!(
        "baseline  raw Mosquitto QoS 1 pub->sub, same payloads: {:>10.0} /s",
        raw
    );
    println!(
        "mosquitto Mosquitto + PostgreSQL: {:>10.0} readings/s ({:.2} x raw Mosquitto); {}",
        p.throughput,
        p.throughput / raw,
        p.summary(latency_rate)
    );
    Ok(())
}
