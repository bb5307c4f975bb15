//! Runs simulated pilot devices as real devices would: each has its own Ed25519 key (kept in
//! DATA_DIR/sim-devices.json so restarts keep identities), is registered in the registry, and
//! publishes signed readings with QoS 1 to the MQTT broker. `msec sim` and `msec demo` share it.
//!
//! With the platform's command key pinned, devices with actuators (the home kits' smart plugs)
//! also take actuator commands from their own commands topic, as firmware would: each command
//! is checked by the device's `CommandVerifier` and only a verified one is applied. The replay
//! guard lives in memory and starts at 0 on every run (a real device stores it durably).

use anyhow::{bail, Context, Result};
use msec_device::{commands_topic, readings_topic, unix_now, CommandVerifier, Device, DeviceKey};
use msec_sim::{SimConfig, SimDevice};
use msec_store::{NewDevice, Store, StoreError};
use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

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
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    // New keys are saved before any is registered: registered under a key nobody kept, a
    // device could never send again from this data directory.
    let known = seeds.len();
    for sim in fleet {
        if !seeds.contains_key(&sim.id) {
            seeds.insert(sim.id.clone(), DeviceKey::generate()?.seed_hex());
        }
    }
    if seeds.len() > known {
        write_private(&path, &serde_json::to_string_pretty(&seeds)?)?;
    }
    let mut devices = Vec::with_capacity(fleet.len());
    let mut registered = 0;
    for sim in fleet {
        let seed = seeds.get(&sim.id).map(String::as_str).unwrap_or_default();
        let key = DeviceKey::from_seed_hex(seed)?;
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
        devices.push(Device::clocked(sim.id.clone(), key));
    }
    Ok((devices, registered))
}

/// Locks `DATA_DIR/sim.lock` for this process: one process at a time may run the simulated
/// devices of a data directory (`msec demo` or `msec sim`), since two signing as one device
/// send interleaved sequence numbers that msec refuses as replays.
pub fn claim_simulators(data_dir: &Path) -> Result<std::fs::File> {
    msec_store::create_private_dir(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("sim.lock");
    crate::platform::lock_file(&path, || {
        format!(
            "the simulated devices of {} are already running (in `msec demo` or another `msec sim`, which holds {}); stop it first, or give this one its own --data-dir",
            data_dir.display(),
            path.display()
        )
    })
}

/// Writes a file only its owner can read: it holds private keys.
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    msec_vault::write_private(path, text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Commands waiting for one device; more than this while it is busy are dropped (and logged).
const COMMAND_QUEUE: usize = 16;
/// Command topics per SUBSCRIBE packet.
const SUBSCRIBE_CHUNK: usize = 100;

/// Publishes every simulated device's readings until `stop` turns true. Prints a progress line
/// every `report_every`.
///
/// `platform_command_key` is the platform's command-signing public key, pinned in every
/// simulated device (None: commands are disabled and nothing subscribes). With it, each device
/// with actuators subscribes with QoS 1 to its commands topic; a command that verifies is
/// applied and followed at once by a reading showing the new state, a refused one is logged
/// with its reason code and changes nothing.
pub async fn run(
    broker_url: &str,
    topic_root: &str,
    fleet: Vec<SimDevice>,
    devices: Vec<Device>,
    mut stop: watch::Receiver<bool>,
    report_every: Duration,
    platform_command_key: Option<[u8; 32]>,
) -> Result<()> {
    let cfg = msec_ingest::MqttConfig::from_url(broker_url, "sim", topic_root)
        .map_err(anyhow::Error::msg)?;
    // Pin the key before connecting: a weak or invalid key stops the run here.
    let mut verifiers = Vec::with_capacity(fleet.len());
    for sim in &fleet {
        verifiers.push(match platform_command_key {
            Some(key) if !sim.actuators().is_empty() => {
                Some(CommandVerifier::new(&key, sim.id.clone(), 0).context(
                    "the platform command key cannot be pinned in the simulated devices",
                )?)
            }
            _ => None,
        });
    }
    let mut options = cfg.client_options(format!("msec-sim-{}", std::process::id()));
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(200);
    let (client, mut events) = AsyncClient::new(options, 1000);
    let published = Arc::new(AtomicU64::new(0));
    // Commands topic -> the device task that owns the verifier and the model.
    let mut inboxes: HashMap<String, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut tasks = Vec::new();
    for ((mut sim, mut device), verifier) in fleet.into_iter().zip(devices).zip(verifiers) {
        let client = client.clone();
        let published = published.clone();
        let topic = readings_topic(topic_root, &sim.tenant, &sim.id);
        let mut commands = verifier.map(|verifier| {
            let (tx, rx) = mpsc::channel::<Vec<u8>>(COMMAND_QUEUE);
            inboxes.insert(commands_topic(topic_root, &sim.tenant, &sim.id), tx);
            (verifier, rx)
        });
        let mut stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(sim.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    Some(bytes) = next_command(&mut commands) => {
                        let Some((verifier, _)) = commands.as_mut() else { continue };
                        let now = unix_now().floor() as i64;
                        if handle_command(&mut sim, verifier, &bytes, now) != CommandOutcome::Applied {
                            continue;
                        }
                        // Applied: report the new state now rather than at the next tick.
                    }
                    _ = async { let _ = stop.wait_for(|s| *s).await; } => break,
                }
                let now = unix_now();
                let envelope = match device.seal(&sim.sample(now), now) {
                    Ok(envelope) => envelope,
                    Err(e) => {
                        // A model producing what msec refuses is a bug: say so, keep the others going.
                        tracing::error!(device = device.id(), error = %e, "simulated reading not sent");
                        continue;
                    }
                };
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
    let command_topics: Vec<String> = inboxes.keys().cloned().collect();
    let mut report = tokio::time::interval(report_every);
    report.tick().await;
    let mut down = false;
    loop {
        tokio::select! {
            e = events.poll() => match e {
                Ok(event) => {
                    down = false;
                    match event {
                        // A clean session forgets subscriptions: subscribe on every connection.
                        // From a task, so that the event loop never waits on the request queue.
                        Event::Incoming(Packet::ConnAck(_)) if !command_topics.is_empty() => {
                            tokio::spawn(subscribe(client.clone(), command_topics.clone()));
                        }
                        Event::Incoming(Packet::Publish(p)) => deliver(&inboxes, &p.topic, &p.payload),
                        _ => {}
                    }
                }
                Err(e) => {
                    if !down {
                        eprintln!(
                            "sim: cannot reach the MQTT broker at {}: {e}; retrying",
                            msec_store::redact(broker_url)
                        );
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

/// The next command for a device that takes commands; never resolves for one that does not.
async fn next_command(
    commands: &mut Option<(CommandVerifier, mpsc::Receiver<Vec<u8>>)>,
) -> Option<Vec<u8>> {
    match commands {
        Some((_, inbox)) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Subscribes to the devices' commands topics with QoS 1, a chunk per SUBSCRIBE packet.
async fn subscribe(client: AsyncClient, topics: Vec<String>) {
    for chunk in topics.chunks(SUBSCRIBE_CHUNK) {
        let filters = chunk
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), QoS::AtLeastOnce));
        if let Err(e) = client.subscribe_many(filters).await {
            tracing::error!(error = %e, "sim: cannot subscribe to commands topics");
            return;
        }
    }
}

/// Hands a received message to the device whose commands topic it arrived on. Never waits: the
/// event loop must keep turning.
fn deliver(inboxes: &HashMap<String, mpsc::Sender<Vec<u8>>>, topic: &str, payload: &[u8]) {
    let Some(inbox) = inboxes.get(topic) else {
        return; // not a topic we subscribed to
    };
    if inbox.try_send(payload.to_vec()).is_err() {
        tracing::warn!(
            topic = %topic.chars().take(200).collect::<String>(),
            "sim: commands arrive faster than the device handles them; dropped one"
        );
    }
}

/// What a simulated device did with a received command.
#[derive(Debug, Clone, PartialEq)]
enum CommandOutcome {
    /// Verified and applied.
    Applied,
    /// Refused by the verifier, with the reason code; nothing changed.
    Refused(&'static str),
    /// Verified, but the device cannot act on it (wrong resource or value type); nothing
    /// changed, and its id is used up.
    NotApplied(String),
}

/// Verifies a received command at `now` (Unix seconds) and applies it if it passes: the
/// device side of docs/protocol.md section 7, with the outcome logged.
fn handle_command(
    sim: &mut SimDevice,
    verifier: &mut CommandVerifier,
    bytes: &[u8],
    now: i64,
) -> CommandOutcome {
    let command = match verifier.verify(bytes, now) {
        Ok(command) => command,
        Err(refusal) => {
            tracing::warn!(
                device = %sim.id,
                reason = refusal.reason(),
                error = %refusal,
                "sim: command refused"
            );
            return CommandOutcome::Refused(refusal.reason());
        }
    };
    match sim.apply_command(&command) {
        Ok(()) => {
            tracing::info!(
                device = %sim.id,
                resource = %command.resource,
                value = ?command.value,
                command_id = command.command_id,
                "sim: command applied"
            );
            CommandOutcome::Applied
        }
        Err(e) => {
            tracing::warn!(
                device = %sim.id,
                resource = %command.resource,
                command_id = command.command_id,
                error = %e,
                "sim: verified command not applied"
            );
            CommandOutcome::NotApplied(e)
        }
    }
}

/// The whole demo fleet for the given options.
pub fn fleet(pilots: &[msec_sim::Pilot], cfg: &SimConfig) -> Vec<SimDevice> {
    pilots
        .iter()
        .flat_map(|p| msec_sim::pilot_fleet(cfg, *p))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use msec_device::{Command, CommandSigner, CommandValue};
    use msec_ingest::CommandPublisher;
    use msec_sim::{Pilot, PLUG_SWITCH};

    const PLUG: &str = "home-001-plug";
    const NOW: i64 = 1_764_000_000;

    fn home_kit() -> Vec<SimDevice> {
        msec_sim::pilot_fleet(
            &SimConfig {
                residents: 1,
                ..Default::default()
            },
            Pilot::Home,
        )
    }

    fn switch(target: &str, on: bool, command_id: u64, issued_at: i64) -> Command {
        Command {
            target: target.into(),
            resource: PLUG_SWITCH.into(),
            value: CommandValue::Bool(on),
            command_id,
            issued_at,
            expires_at: issued_at + 60,
        }
    }

    fn flag(ms: &[msec_device::Measurement], name: &str) -> bool {
        match ms.iter().find(|m| m.name == name).map(|m| &m.value) {
            Some(msec_device::Value::Bool(b)) => *b,
            other => panic!("{name}: {other:?}"),
        }
    }

    fn power(ms: &[msec_device::Measurement]) -> f64 {
        ms.iter()
            .find(|m| m.name == "power")
            .and_then(|m| m.as_f64())
            .unwrap()
    }

    /// The device side without a network: what verifies is applied, nothing else changes the
    /// plug or the replay guard.
    #[test]
    fn only_verified_commands_reach_the_model() {
        let platform = CommandSigner::from_seed([7; 32]);
        let forger = CommandSigner::from_seed([8; 32]);
        let mut plug = home_kit().into_iter().find(|d| d.id == PLUG).unwrap();
        let mut verifier = CommandVerifier::new(&platform.public_key(), PLUG, 0).unwrap();
        let sample_at = (NOW + 10) as f64;

        let seal = |s: &CommandSigner, c: &Command| s.seal(c).unwrap();
        let off = seal(&platform, &switch(PLUG, false, 5, NOW));
        let mut tampered = off.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        let refused: Vec<(Vec<u8>, &str)> = vec![
            (seal(&forger, &switch(PLUG, false, 5, NOW)), "unknown_key"),
            (tampered, "bad_signature"),
            (
                seal(&platform, &switch("home-001-hub", false, 5, NOW)),
                "wrong_target",
            ),
            (
                seal(&platform, &switch(PLUG, false, 5, NOW - 120)),
                "expired",
            ),
            (
                seal(&platform, &switch(PLUG, false, 5, NOW + 1000)),
                "not_yet_valid",
            ),
            (b"not a command".to_vec(), "malformed"),
        ];
        let before = plug.clone().sample(sample_at);
        for (bytes, reason) in &refused {
            assert_eq!(
                handle_command(&mut plug, &mut verifier, bytes, NOW),
                CommandOutcome::Refused(reason)
            );
            assert_eq!(verifier.last_accepted(), 0);
        }
        assert_eq!(
            plug.clone().sample(sample_at),
            before,
            "a refused command changed the plug"
        );

        assert_eq!(
            handle_command(&mut plug, &mut verifier, &off, NOW),
            CommandOutcome::Applied
        );
        let ms = plug.clone().sample(sample_at);
        assert!(!flag(&ms, "on") && power(&ms) == 0.0);
        // The same bytes again, or an older id, are replays.
        assert_eq!(
            handle_command(&mut plug, &mut verifier, &off, NOW),
            CommandOutcome::Refused("replayed")
        );
        let on_again = seal(&platform, &switch(PLUG, true, 4, NOW));
        assert_eq!(
            handle_command(&mut plug, &mut verifier, &on_again, NOW),
            CommandOutcome::Refused("replayed")
        );
        assert!(!flag(&plug.clone().sample(sample_at), "on"));
        // A verified command the plug cannot act on uses up its id and changes nothing.
        let mut dim = switch(PLUG, true, 6, NOW);
        dim.resource = "plug/dimmer".into();
        assert!(matches!(
            handle_command(&mut plug, &mut verifier, &seal(&platform, &dim), NOW),
            CommandOutcome::NotApplied(e) if e.contains("plug/dimmer")
        ));
        assert_eq!(verifier.last_accepted(), 6);
        assert!(!flag(&plug.clone().sample(sample_at), "on"));
        let on = seal(&platform, &switch(PLUG, true, 7, NOW));
        assert_eq!(
            handle_command(&mut plug, &mut verifier, &on, NOW),
            CommandOutcome::Applied
        );
        assert!(flag(&plug.clone().sample(sample_at), "on"));
    }

    /// Subscribes to `topic` and forwards each payload; returns once subscribed.
    async fn subscribe_to(url: &str, topic: &str) -> mpsc::UnboundedReceiver<Vec<u8>> {
        let cfg = msec_ingest::MqttConfig::from_url(url, "x", "x").unwrap();
        let mut options = cfg.client_options(msec_testkit::unique("watch-"));
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut events) = AsyncClient::new(options, 100);
        client.subscribe(topic, QoS::AtLeastOnce).await.unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready, subscribed) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let _client = client;
            let mut ready = Some(ready);
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p.payload.to_vec());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), subscribed)
            .await
            .expect("subscribed in time")
            .unwrap();
        rx
    }

    /// The next reading of the plug within `wait`, verified with its key.
    async fn next_reading(
        readings: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        key: &ed25519_dalek::VerifyingKey,
        wait: Duration,
    ) -> Option<Vec<msec_device::Measurement>> {
        let bytes = tokio::time::timeout(wait, readings.recv()).await.ok()??;
        let reading = msec_envelope::open(&bytes, msec_envelope::DEFAULT_MAX_ENVELOPE_BYTES)
            .unwrap()
            .verify(key)
            .unwrap();
        Some(reading.measurements)
    }

    /// The whole round trip through the embedded broker: the platform publishes signed
    /// commands, the simulated plug verifies and applies them, and its readings show it. The
    /// plug's interval is an hour, so after the first reading it only publishes when a
    /// command was applied: every reading counts an applied command.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signed_command_switches_the_plug_and_forgeries_do_nothing() {
        let addr = msec_broker::start("127.0.0.1:0".parse().unwrap()).unwrap();
        let url = format!("mqtt://{addr}");
        let root = msec_testkit::unique("t");
        let platform = CommandSigner::generate().unwrap();
        let mut fleet: Vec<SimDevice> = home_kit()
            .into_iter()
            .filter(|d| d.id == PLUG || d.id == "home-001-hub")
            .collect();
        for d in &mut fleet {
            d.interval = Duration::from_secs(3600);
        }
        let keys: Vec<DeviceKey> = fleet
            .iter()
            .map(|_| DeviceKey::generate().unwrap())
            .collect();
        let plug = fleet.iter().position(|d| d.id == PLUG).unwrap();
        let plug_key = ed25519_dalek::VerifyingKey::from_bytes(&keys[plug].public_key()).unwrap();
        let devices: Vec<Device> = fleet
            .iter()
            .zip(keys)
            .map(|(sim, key)| Device::new(sim.id.clone(), key, 1))
            .collect();
        let mut readings = subscribe_to(&url, &readings_topic(&root, "santander", PLUG)).await;
        let (stop, stopped) = watch::channel(false);
        let sim = tokio::spawn({
            let (url, root, key) = (url.clone(), root.clone(), platform.public_key());
            async move {
                run(
                    &url,
                    &root,
                    fleet,
                    devices,
                    stopped,
                    Duration::from_secs(3600),
                    Some(key),
                )
                .await
            }
        });
        let wait = Duration::from_secs(10);
        next_reading(&mut readings, &plug_key, wait)
            .await
            .expect("the plug reports when it starts");

        let publisher = CommandPublisher::connect(&url, &msec_testkit::unique("platform-"))
            .await
            .unwrap();
        let topic = commands_topic(&root, "santander", PLUG);
        let now = unix_now() as i64;
        let signed = |c: &Command| platform.seal(c).unwrap();

        // Switch on. The plug subscribes once connected: until then the broker drops commands,
        // so send fresh ones until one takes effect.
        let mut id = 0;
        let first = loop {
            id += 1;
            assert!(id <= 40, "the plug never acted on a signed command");
            publisher
                .publish(&topic, signed(&switch(PLUG, true, id, now)))
                .await
                .unwrap();
            if let Some(ms) =
                next_reading(&mut readings, &plug_key, Duration::from_millis(500)).await
            {
                break ms;
            }
        };
        assert!(flag(&first, "on"));
        // A retry still on its way may be applied too; it switches on as well.
        while let Some(ms) =
            next_reading(&mut readings, &plug_key, Duration::from_millis(1000)).await
        {
            assert!(flag(&ms, "on"));
        }

        // Commands the plug must refuse: forged, tampered, replayed, for another device,
        // expired. Each would switch it off, and would be followed by a reading.
        let forger = CommandSigner::generate().unwrap();
        let mut tampered = signed(&switch(PLUG, false, id + 10, now));
        let last = tampered.len() - 1;
        tampered[last] ^= 0x55;
        let refused = [
            forger.seal(&switch(PLUG, false, id + 10, now)).unwrap(),
            tampered,
            signed(&switch(PLUG, false, 1, now)),
            signed(&switch(PLUG, false, id, now)),
            signed(&switch("home-001-hub", false, id + 11, now)),
            signed(&switch(PLUG, false, id + 12, now - 600)),
        ];
        for bytes in refused {
            publisher.publish(&topic, bytes).await.unwrap();
        }
        // Then a genuine "off": the next reading is the one it causes, showing the plug off.
        publisher
            .publish(&topic, signed(&switch(PLUG, false, id + 20, now)))
            .await
            .unwrap();
        let off = next_reading(&mut readings, &plug_key, wait)
            .await
            .expect("the plug reports the switch");
        assert!(
            !flag(&off, "on") && power(&off) == 0.0,
            "a refused command was applied, or the genuine one was not: {off:?}"
        );
        assert!(off.iter().any(|m| m.name == "voltage"));
        assert!(
            next_reading(&mut readings, &plug_key, Duration::from_millis(1000))
                .await
                .is_none(),
            "a refused command caused a reading"
        );

        let _ = stop.send(true);
        tokio::time::timeout(Duration::from_secs(10), sim)
            .await
            .expect("the simulator stops")
            .unwrap()
            .unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_weak_platform_key_stops_the_run() {
        let (_stop, stopped) = watch::channel(false);
        let err = run(
            "mqtt://127.0.0.1:1",
            "msec",
            home_kit(),
            Vec::new(),
            stopped,
            Duration::from_secs(10),
            Some([0; 32]),
        )
        .await
        .unwrap_err();
        assert!(format!("{err:#}").contains("command key"), "{err:#}");
    }
}
