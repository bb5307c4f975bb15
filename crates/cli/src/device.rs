//! `msec device …`: the registry from the command line. Works on the database directly, so a
//! running server picks up registrations and revocations within a second.

use crate::config::StoreArgs;
use crate::platform::{with_existing_store, with_store};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use msec_device::{DeviceFile, DeviceKey};
use msec_store::{Device, Location, NewDevice};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum DeviceCommand {
    /// Create a device identity file (Ed25519 key, mode 0600) to provision onto a device
    ///
    /// Example:  msec device keygen --id park-env-09 --tenant santander --out park-env-09.json
    #[command(verbatim_doc_comment)]
    Keygen {
        /// Device id: 1-64 characters of A-Z a-z 0-9 . _ -
        #[arg(long)]
        id: String,
        /// Tenant (city or organisation) the device belongs to, e.g. santander
        #[arg(long)]
        tenant: String,
        /// Where to write the identity file (refuses to overwrite)
        #[arg(long)]
        out: PathBuf,
    },
    /// Register a device so its signed readings are accepted
    ///
    /// Example:  msec device register --key-file park-env-09.json --kind environmental-monitor
    ///             --lat 43.4713 --lon -3.8139 --label "Las Llamas, north gate"
    #[command(verbatim_doc_comment)]
    Register {
        /// Identity file from `msec device keygen` (gives id, tenant and public key)
        #[arg(long, conflicts_with_all = ["public_key", "id", "tenant"])]
        key_file: Option<PathBuf>,
        /// Device id, when registering from a public key alone
        #[arg(long, requires_all = ["tenant", "public_key"])]
        id: Option<String>,
        /// Tenant, when registering from a public key alone
        #[arg(long)]
        tenant: Option<String>,
        /// Raw Ed25519 public key, 64 hex digits
        #[arg(long)]
        public_key: Option<String>,
        /// What it is, e.g. environmental-monitor, bed-sensor, truck-sensor-box
        #[arg(long)]
        kind: String,
        /// Human-readable name [default: the id]; stored encrypted
        #[arg(long)]
        name: Option<String>,
        /// The data subject the device's data is about, e.g. resident-007 [default: the tenant]
        #[arg(long)]
        owner: Option<String>,
        /// Latitude of the installation, decimal degrees (WGS 84)
        #[arg(long, requires = "lon", allow_negative_numbers = true)]
        lat: Option<f64>,
        /// Longitude of the installation, decimal degrees (WGS 84)
        #[arg(long, requires = "lat", allow_negative_numbers = true)]
        lon: Option<f64>,
        /// Place name shown in the dashboard, e.g. "Las Llamas, north gate"
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// List registered devices.
    List {
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Show one device as JSON.
    Show {
        /// The device's id, as `msec device list` shows it
        id: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
    /// Revoke a device: its readings are rejected (and logged) from now on.
    Revoke {
        /// The device's id, as `msec device list` shows it
        id: String,
        #[command(flatten)]
        platform: StoreArgs,
    },
}

fn table(devices: &[Device]) {
    println!(
        "{:<20} {:<10} {:<16} {:<22} {:<8} {:>8} {:>14}",
        "ID", "TENANT", "OWNER", "KIND", "STATUS", "BATTERY", "LAST SEEN (s)"
    );
    let now = msec_store::now_ms();
    for d in devices {
        let battery = d
            .battery
            .map(|b| format!("{b:.0}%"))
            .unwrap_or_else(|| "-".into());
        let seen = d
            .last_seen_ms
            .map(|t| format!("{}", (now - t) / 1000))
            .unwrap_or_else(|| "never".into());
        let status = serde_json::to_value(d.status)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        println!(
            "{:<20} {:<10} {:<16} {:<22} {:<8} {:>8} {:>14}",
            d.id, d.tenant, d.owner, d.kind, status, battery, seen
        );
    }
}

pub async fn run(cmd: DeviceCommand) -> Result<()> {
    match cmd {
        DeviceCommand::Keygen { id, tenant, out } => {
            if !msec_store::valid_id(&id) || !msec_store::valid_id(&tenant) {
                bail!("id and tenant must be 1-64 characters of A-Z a-z 0-9 . _ -");
            }
            if out.exists() {
                bail!(
                    "{} exists; refusing to overwrite a device identity",
                    out.display()
                );
            }
            let key = DeviceKey::generate()?;
            let file = DeviceFile {
                device_id: id,
                tenant,
                seed: key.seed_hex(),
                public_key: hex::encode(key.public_key()),
                next_sequence: 1,
            };
            // Never over a file that appeared since the check: its key may be registered.
            msec_vault::write_private_new(&out, serde_json::to_string_pretty(&file)?.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "wrote {} (keep it secret: it holds the private key)",
                out.display()
            );
            println!("public key: {}", file.public_key);
            println!("key id:     {}", hex::encode(key.key_id()));
            Ok(())
        }
        DeviceCommand::Register {
            key_file,
            id,
            tenant,
            public_key,
            kind,
            name,
            owner,
            lat,
            lon,
            label,
            platform,
        } => {
            let (id, tenant, key) = match key_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)
                        .with_context(|| format!("cannot read {}", path.display()))?;
                    let f: DeviceFile = serde_json::from_str(&text).with_context(|| {
                        format!("{} is not a device identity file", path.display())
                    })?;
                    let key = DeviceKey::from_seed_hex(&f.seed)?.public_key();
                    (f.device_id, f.tenant, key)
                }
                None => {
                    let (Some(id), Some(tenant), Some(pk)) = (id, tenant, public_key) else {
                        bail!("give --key-file, or --id, --tenant and --public-key");
                    };
                    let key: [u8; 32] = hex::decode(pk.trim())
                        .ok()
                        .and_then(|k| k.try_into().ok())
                        .context("--public-key must be 64 hex digits (a raw Ed25519 public key)")?;
                    (id, tenant, key)
                }
            };
            let owner = owner.unwrap_or_else(|| tenant.clone());
            let device = NewDevice {
                owner,
                name: name.unwrap_or_else(|| id.clone()),
                id,
                tenant,
                kind,
                location: lat.zip(lon).map(|(lat, lon)| Location { lat, lon, label }),
                key_id: msec_envelope::registrable_key(&key).map_err(anyhow::Error::msg)?,
                public_key: key,
            };
            let d = with_store(&platform, move |s| Ok(s.register_device(&device)?)).await?;
            println!(
                "registered {} in tenant {} (key id {})",
                d.id,
                d.tenant,
                hex::encode(&d.key_id)
            );
            Ok(())
        }
        DeviceCommand::List { json, platform } => {
            let devices = with_existing_store(&platform, |s| Ok(s.devices()?)).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&devices)?);
            } else if devices.is_empty() {
                println!("no devices registered (see `msec device register --help`)");
            } else {
                table(&devices);
            }
            Ok(())
        }
        DeviceCommand::Show { id, platform } => {
            let lookup = id.clone();
            match with_existing_store(&platform, move |s| Ok(s.device(&lookup)?)).await? {
                Some(d) => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    Ok(())
                }
                None => bail!("no device {id:?} is registered"),
            }
        }
        DeviceCommand::Revoke { id, platform } => {
            let target = id.clone();
            let (revoked, exists) = with_existing_store(&platform, move |s| {
                let revoked = s.revoke_device(&target, "cli")?;
                Ok((revoked, s.device(&target)?.is_some()))
            })
            .await?;
            match (revoked, exists) {
                (true, _) => {
                    println!("revoked {id}: its readings are rejected from now on");
                    Ok(())
                }
                (false, true) => bail!("device {id:?} is already revoked"),
                (false, false) => bail!("no device {id:?} is registered"),
            }
        }
    }
}
