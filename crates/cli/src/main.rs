//! `msec`: the one binary. It parses the command line and wires the crates together; all
//! behaviour lives in the library crates, so nothing here is tested only through a shell.

mod bench;
mod config;
mod device;
mod gdpr;
mod log;
mod platform;
mod policy;
mod principals;
mod simrun;
mod witness;

use anyhow::Result;
use clap::{Parser, Subcommand};
use config::PlatformArgs;
use std::time::Duration;

/// msec: trustworthy smart-city IoT data, end to end.
///
/// Devices sign each reading (SenML inside COSE_Sign1, Ed25519); msec checks origin, freshness
/// and integrity of every one, stores accepted readings durably (SQLite by default, PostgreSQL
/// in production) and records every rejection as a security event.
///
/// Start here:  msec demo           (everything embedded, simulated pilots, dashboard)
#[derive(Parser)]
#[command(
    name = "msec",
    version,
    propagate_version = true,
    after_help = "Logs go to stderr; MSEC_LOG takes a tracing filter, e.g. MSEC_LOG=debug,rumqttd=warn.\nSettings: flags, then MSEC_* variables, then --config FILE (see `msec serve --help`)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole stack embedded with simulated Santander and Fujisawa devices.
    ///
    /// Starts the embedded MQTT broker, SQLite in --data-dir, ingest, the HTTP API and the
    /// dashboard, plus every simulator, then prints the dashboard URL. Ctrl-C stops cleanly.
    ///
    /// Examples:
    ///   msec demo
    ///   msec demo --data-dir /tmp/msec-demo --http 127.0.0.1:9090
    #[command(verbatim_doc_comment)]
    Demo {
        #[command(flatten)]
        platform: PlatformArgs,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Run the platform without simulators (production entry point)
    ///
    /// Examples:
    ///   msec serve
    ///   msec serve --broker mqtt://127.0.0.1:1883 --database postgres://msec@127.0.0.1/msec
    #[command(verbatim_doc_comment)]
    Serve {
        #[command(flatten)]
        platform: PlatformArgs,
    },
    /// Run simulated pilot devices against a running msec
    ///
    /// Registers the simulated devices in the database given by --database/--data-dir (the
    /// server notices within a second) and publishes to --broker or the embedded broker address.
    ///
    /// Example:  msec sim park --broker mqtt://127.0.0.1:1884
    #[command(verbatim_doc_comment)]
    Sim {
        /// Which pilots: park, home, truck (default: all three)
        pilots: Vec<msec_sim::Pilot>,
        #[command(flatten)]
        store: config::StoreArgs,
        #[command(flatten)]
        messaging: config::BrokerArgs,
        #[command(flatten)]
        sim: SimArgs,
    },
    /// Manage the device registry: keygen, register, list, show, revoke.
    #[command(subcommand)]
    Device(device::DeviceCommand),
    /// People: add, list, disable users (Argon2id-hashed passwords).
    #[command(subcommand)]
    User(principals::UserCommand),
    /// Service accounts: create, list, revoke API tokens (stored hashed, expiring).
    #[command(subcommand)]
    Token(principals::TokenCommand),
    /// Access rules: `msec policy explain` prints a decision and the rule that made it.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Grant a principal (or role:NAME) actions on resources; `--list` shows active grants
    ///
    /// Example:  msec grant --principal caregiver-ana --actions read,subscribe
    ///             --resource 'santander/resident-007/**' --until-ms 4102444800000
    #[command(verbatim_doc_comment)]
    Grant(principals::GrantArgs),
    /// Revoke a grant by its id; decisions (and open live streams) change at once.
    Revoke(principals::RevokeArgs),
    /// Encryption at rest: create (init), rotate, or re-wrap under a new key (rewrap).
    #[command(subcommand)]
    Keys(gdpr::KeysCommand),
    /// The transparency log: print the newest checkpoint, verify a record against a saved one.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Re-derive every record's log leaf and check the database against the log and the
    /// newest witnessed checkpoint; lists each finding and exits non-zero if there is any.
    ///
    /// Finds modified, deleted, inserted and reordered records, a database rolled back to an
    /// older backup, and a log rewritten since a checkpoint was published.
    Audit(log::AuditArgs),
    /// Write everything held about a data subject, decrypted, with log inclusion proofs (JSON).
    Export(gdpr::ExportArgs),
    /// Erase a data subject by destroying its data key (GDPR article 17); the log still verifies.
    Erase(gdpr::EraseArgs),
    /// Consent records: give, withdraw, list.
    #[command(subcommand)]
    Consent(gdpr::ConsentCommand),
    /// Run an independent witness that checks and cosigns a platform's log checkpoints
    ///
    /// Example:  msec witness --log http://127.0.0.1:8080 --key witness-key.json
    #[command(verbatim_doc_comment)]
    Witness(witness::WitnessArgs),
    /// Measure performance and print figures with same-run baselines.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Decide one request and print the decision with the rule that made it
    ///
    /// Example:  msec policy explain --policies pilot.toml --principal user:juan --roles caregiver
    ///             --action read --resource santander/home-007/bed/occupancy
    #[command(verbatim_doc_comment)]
    Explain(policy::ExplainArgs),
}

#[derive(clap::Args, Clone)]
struct SimArgs {
    /// Connected Care residents to simulate (5 devices each), 0 to 1000
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(0..=1000))]
    residents: u16,
    /// Garbage trucks to simulate, 0 to 100
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(0..=100))]
    trucks: u16,
    /// Sampling rate of each truck's sensor box, in Hz, from 0.01 to 100
    #[arg(long, default_value_t = 1.0, value_parser = truck_hz)]
    truck_hz: f64,
}

fn truck_hz(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(hz) if (msec_sim::MIN_TRUCK_HZ..=msec_sim::MAX_TRUCK_HZ).contains(&hz) => Ok(hz),
        _ => Err(format!(
            "give a rate from {} to {} Hz",
            msec_sim::MIN_TRUCK_HZ,
            msec_sim::MAX_TRUCK_HZ
        )),
    }
}

impl SimArgs {
    fn config(&self) -> msec_sim::SimConfig {
        msec_sim::SimConfig {
            residents: self.residents.into(),
            trucks: self.trucks.into(),
            truck_hz: self.truck_hz,
            ..Default::default()
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    // rumqttd logs ordinary client disconnects at error level; MSEC_LOG=rumqttd=info brings it
    // back when the broker itself is the question. Its queue's warnings stay on: they are the
    // only sign that it dropped readings msec had not taken yet. The PostgreSQL driver logs
    // every server NOTICE ("relation already exists, skipping" on each start) at info.
    let default = || {
        tracing_subscriber::EnvFilter::new("info,rumqttd=off,rumqttd::segments=warn,postgres=warn")
    };
    let filter = match std::env::var("MSEC_LOG") {
        Err(_) => default(),
        Ok(text) => tracing_subscriber::EnvFilter::try_new(&text).unwrap_or_else(|e| {
            // Said before logging starts, so on stderr directly; the default still applies.
            eprintln!("warning: MSEC_LOG={text:?} is not a log filter ({e}); using the default");
            default()
        }),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Structured logs for machines, readable ones for people.
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().init();
    }
}

fn main() -> std::process::ExitCode {
    quiet_exit_when_stdout_closes();
    let cli = Cli::parse();
    init_logging();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(run(cli.command));
    // Blocking work still under way (a writer or a notary thread that a dead database holds
    // up past `shutdown`'s own time limits) must not keep the process from exiting: a
    // supervisor waits for the exit to restart msec.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `msec device list | head -1`: once the reader has gone, `println!` panics on the broken pipe.
/// That is no error of ours: end quietly, as a program killed by SIGPIPE does (status 141),
/// instead of printing a panic. Every other panic is reported as usual.
fn quiet_exit_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        report(info);
    }));
}

/// Waits for Ctrl-C or SIGTERM (Ok), or for a part of the platform to end on its own (the
/// error that `serve` and `demo` then exit with, after stopping the rest).
async fn until_stop(
    interrupted: impl std::future::Future<Output = ()>,
    p: &platform::Platform,
) -> Result<()> {
    tokio::select! {
        _ = interrupted => Ok(()),
        part = p.failed() => {
            tracing::error!(part, "a part of msec ended on its own; stopping");
            Err(anyhow::anyhow!("{part} ended on its own; msec stopped (see the log above)"))
        }
    }
}

async fn run(command: Command) -> Result<()> {
    match command {
        Command::Serve { platform } => {
            let interrupted = platform::interrupts();
            let settings = platform.resolve()?;
            let claim = platform::claim_data_dir(&settings)?;
            let p = platform::Platform::start(&settings, claim).await?;
            let admin = platform::first_admin(&settings).await?;
            println!(
                "msec is serving: API and dashboard on http://{}/, MQTT at {}",
                p.http,
                msec_store::redact(&p.broker_url)
            );
            platform::announce_admin(admin);
            println!("Press Ctrl-C to stop.");
            let failed = until_stop(interrupted, &p).await;
            eprintln!("stopping: finishing in-flight readings…");
            p.shutdown().await?;
            failed
        }
        Command::Demo { platform, sim } => {
            let interrupted = platform::interrupts();
            let settings = platform.resolve()?;
            let claim = platform::claim_data_dir(&settings)?;
            // Register the simulated devices before ingest loads its registry, so that not one
            // first reading is refused as coming from an unknown device.
            let fleet = simrun::fleet(
                &[
                    msec_sim::Pilot::Park,
                    msec_sim::Pilot::Home,
                    msec_sim::Pilot::Truck,
                ],
                &sim.config(),
            );
            let (devices, _, _simulating) = sim_devices(&settings, &fleet).await?;
            let p = platform::Platform::start(&settings, claim).await?;
            let admin = platform::first_admin(&settings).await?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let count = fleet.len();
            let command_key = platform::command_public_key(&settings)?;
            let sims = tokio::spawn({
                let url = p.broker_url.clone();
                let root = settings.topic_root.clone();
                async move {
                    simrun::run(
                        &url,
                        &root,
                        fleet,
                        devices,
                        stopped,
                        Duration::from_secs(30),
                        command_key,
                    )
                    .await
                }
            });
            println!();
            println!("  msec demo is running with {count} simulated devices (Santander park, Connected Care homes, Fujisawa trucks).");
            println!("  Dashboard:  http://{}/", p.http);
            println!(
                "  API:        http://{}/api/openapi.json   Metrics: http://{}/metrics",
                p.http, p.http
            );
            println!(
                "  MQTT:       {}   Data: {}",
                msec_store::redact(&p.broker_url),
                settings.data_dir.display()
            );
            platform::announce_admin(admin);
            println!("  Press Ctrl-C to stop.");
            println!();
            let failed = until_stop(interrupted, &p).await;
            eprintln!("stopping: simulators first, then in-flight readings…");
            let _ = stop.send(true);
            let _ = sims.await;
            p.shutdown().await?;
            failed
        }
        Command::Sim {
            pilots,
            store,
            messaging,
            sim,
        } => {
            let interrupted = platform::interrupts();
            let settings = PlatformArgs {
                store,
                messaging,
                ..Default::default()
            }
            .resolve()?;
            settings.create_data_dir()?;
            let pilots = if pilots.is_empty() {
                vec![
                    msec_sim::Pilot::Park,
                    msec_sim::Pilot::Home,
                    msec_sim::Pilot::Truck,
                ]
            } else {
                // `msec sim park park` would run each park device twice.
                let mut unique = Vec::new();
                for p in pilots {
                    if !unique.contains(&p) {
                        unique.push(p);
                    }
                }
                unique
            };
            let fleet = simrun::fleet(&pilots, &sim.config());
            let (devices, registered, _simulating) = sim_devices(&settings, &fleet).await?;
            if registered > 0 {
                // A running server notices registry changes within a second; publishing sooner
                // would have the first readings refused as coming from unknown devices.
                println!("registered {registered} new devices; giving the server a moment to pick them up");
                tokio::time::sleep(Duration::from_millis(2500)).await;
            }
            println!(
                "simulating {} devices, publishing to {} (Ctrl-C to stop)",
                fleet.len(),
                msec_store::redact(&settings.broker_url())
            );
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(async move {
                interrupted.await;
                let _ = stop.send(true);
            });
            // Commands are accepted when the platform's command key is at hand (same data
            // directory); otherwise the simulated devices ignore their command topics.
            let command_key = if settings.command_key_file().exists() {
                platform::command_public_key(&settings)?
            } else {
                println!(
                    "no {} here: simulated devices will not accept actuator commands",
                    settings.command_key_file().display()
                );
                None
            };
            simrun::run(
                &settings.broker_url(),
                &settings.topic_root,
                fleet,
                devices,
                stopped,
                Duration::from_secs(10),
                command_key,
            )
            .await
        }
        Command::Device(cmd) => device::run(cmd).await,
        Command::User(cmd) => principals::user(cmd).await,
        Command::Token(cmd) => principals::token(cmd).await,
        Command::Grant(args) => principals::grant(args).await,
        Command::Revoke(args) => principals::revoke(args).await,
        Command::Policy(PolicyCommand::Explain(args)) => {
            println!("{}", policy::explain(args).await?);
            Ok(())
        }
        Command::Keys(cmd) => gdpr::keys(cmd).await,
        Command::Log(cmd) => log::run(cmd).await,
        Command::Audit(args) => log::audit(args).await,
        Command::Export(args) => gdpr::export(args).await,
        Command::Erase(args) => gdpr::erase(args).await,
        Command::Consent(cmd) => gdpr::consent(cmd).await,
        Command::Witness(args) => tokio::task::spawn_blocking(move || witness::run(args)).await?,
        Command::Bench(cmd) => bench::run(cmd).await,
    }
}

/// The simulated devices, registered; also says how many were new.
/// The simulated devices, registered if new, and the claim on them (see
/// [`simrun::claim_simulators`]), to hold while they run.
async fn sim_devices(
    settings: &config::Settings,
    fleet: &[msec_sim::SimDevice],
) -> Result<(Vec<msec_device::Device>, usize, std::fs::File)> {
    let claim = simrun::claim_simulators(&settings.data_dir)?;
    let mut store = platform::open_store(settings).await?;
    let dir = settings.data_dir.clone();
    let fleet = fleet.to_vec();
    let (devices, registered) =
        tokio::task::spawn_blocking(move || simrun::prepare(&mut store, &dir, &fleet)).await??;
    Ok((devices, registered, claim))
}
