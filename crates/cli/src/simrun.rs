//! Runs simulated pilot devices as real devices would: each has its own Ed25519 key (kept in
//! DATA_DIR/sim-devices.json so restarts keep identities), is registered in the registry, and
//! publishes signed readings with QoS 1 to the MQTT broker. `msec sim` and `msec demo` share it.

use anyhow::{bail, Context, Result};
use msec_device::{readings_topic, sequence_from_clock, unix_now, Device, DeviceKey};
use msec_sim::{SimConfig, SimDevice};
use msec_store::{NewDevice, Store, StoreError};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Loads or creates the simulators' keys, registers unknown devices, and returns devices ready
/// to sign with the number newly registered. Blocking (database and file I/O).
pub fn prepare(
    store: &mut Store,
    data_dir: &Path,
    fleet: &[SimDevice],
) -> Result<(Vec<Device>, usize)> {
    let path = data_dir.join("sim-devices.json");
    let mut seeds: BTreeMap<String, String> = match std::fs::read_to_string(&path) {
        Ok(text) => serde_json::from_str(&text)
            .with_context(|| format!("{} is corrupt; delete it to start afresh", path.display()))?,
        Err(_) => BTreeMap::new(),
    };
    let mut devices = Vec::with_capacity(fleet.len());
    let mut registered = 0;
    for sim in fleet {
        let key = match seeds.get(&sim.id) {
            Some(seed) => DeviceKey::from_seed_hex(seed)?,
            None => {
                let key = DeviceKey::generate()?;
                seeds.insert(sim.id.clone(), key.seed_hex());
                key
            }
        };
        let registration = NewDevice {
            id: sim.id.clone(),
            tenant: sim.tenant.clone(),
            owner: sim.owner.clone(),
            name: sim.name.clone(),
            kind: sim.kind.clone(),
            location: Some(msec_store::Location {
                lat: sim.location.lat,
                lon: sim.location.lon,
                label: sim.location.label.clone(),
            }),
            public_key: key.public_key(),
            key_id: key.key_id(),
        };
        match store.device(&sim.id)? {
            Some(d) if d.public_key == key.public_key() => {}
            Some(_) => bail!(
                "device {} is registered with another key than the one in {}; use a fresh --data-dir or database",
                sim.id,
                path.display()
            ),
            None => match store.register_device(&registration) {
                Ok(_) => registered += 1,
                Err(StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            },
        }
        devices.push(Device::new(sim.id.clone(), key, sequence_from_clock()));
    }
    write_private(&path, &serde_json::to_string_pretty(&seeds)?)?;
    Ok((devices, registered))
}

/// Writes a file only its owner can read: it holds private keys.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// Publishes every simulated device's readings until `stop` turns true. Prints a progress line
/// every `report_every`.
pub async fn run(
    broker_url: &str,
    topic_root: &str,
    fleet: Vec<SimDevice>,
    devices: Vec<Device>,
    mut stop: watch::Receiver<bool>,
    report_every: Duration,
) -> Result<()> {
    let cfg = msec_ingest::MqttConfig::from_url(broker_url, "sim", topic_root)
        .map_err(anyhow::Error::msg)?;
    let mut options = MqttOptions::new(
        format!("msec-sim-{}", std::process::id()),
        cfg.host,
        cfg.port,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(200);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let published = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for (mut sim, mut device) in fleet.into_iter().zip(devices) {
        let client = client.clone();
        let published = published.clone();
        let topic = readings_topic(topic_root, &sim.tenant, &sim.id);
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(sim.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                }
                let now = unix_now();
                let envelope = device.seal(&sim.sample(now), now);
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, envelope)
                    .await
                    .is_err()
                {
                    break;
                }
                published.fetch_add(1, Relaxed);
            }
        }));
    }
    let mut report = tokio::time::interval(report_every);
    report.tick().await;
    let mut down = false;
    loop {
        tokio::select! {
            e = events.poll() => match e {
                Ok(_) => down = false,
                Err(e) => {
                    if !down {
                        eprintln!("sim: cannot reach the MQTT broker at {broker_url}: {e}; retrying");
                    }
                    down = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
            _ = report.tick() => eprintln!("sim: {} readings published", published.load(Relaxed)),
            _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
        }
    }
    for t in tasks {
        let _ = t.await;
    }
    // Let queued publishes reach the broker before disconnecting.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while events.poll().await.is_ok() {}
    })
    .await;
    Ok(())
}

/// The whole demo fleet for the given options.
pub fn fleet(pilots: &[msec_sim::Pilot], cfg: &SimConfig) -> Vec<SimDevice> {
    pilots
        .iter()
        .flat_map(|p| msec_sim::pilot_fleet(cfg, *p))
        .collect()
}
