//! `ota-gateway`: OTA for the sub-devices behind a Linux gateway (docs/protocol.md §14). The
//! TOML file of --config names the gateway and each `[[subdevice]]` (see the README's
//! "Gateways and sub-devices"); one line per event on stdout, one line per error on stderr.
//! SIGTERM and SIGINT stop it between two inputs (records stay, downloads resume next time).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;

use clap::Parser;
use ota_std::gateway::{run_gateway, GatewayEvent, GatewayFile, SubdeviceEvent};
use ota_std::{DeviceEvent, Stopper};

/// Firmware updates of a gateway's sub-devices from the Alibaba Cloud IoT Platform.
#[derive(Parser)]
#[command(name = "ota-gateway", version)]
struct Cli {
    /// TOML file: the gateway, `max_parallel`, and one `[[subdevice]]` table per sub-device.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// Most sub-devices downloading at once (overrides the file's max_parallel).
    #[arg(long, value_name = "N")]
    max_parallel: Option<usize>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.render().to_string();
            let lines: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
            let message = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
            eprintln!(
                "ota-gateway: {} (try --help)",
                message.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ota-gateway: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), ota_std::Error> {
    let secret = std::env::var("OTA_DEVICE_SECRET").ok();
    let mut config = GatewayFile::read(&cli.config)?.into_config(secret)?;
    if let Some(n) = cli.max_parallel {
        config.max_parallel = n;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
    let stopper = Stopper::default();
    stop_on_signals(stopper.clone())?;
    // Live progress: one line per sub-device each time it passes another 10%.
    let shown = Mutex::new(BTreeMap::<usize, u64>::new());
    let observer = |event: GatewayEvent| {
        if let Some(line) = describe(&event, &shown) {
            println!("{line}");
        }
    };
    run_gateway(&config, &observer, &stopper)
}

fn stop_on_signals(stopper: Stopper) -> Result<(), ota_std::Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| ota_std::Error::Io(format!("cannot handle signals: {e}")))?;
    std::thread::Builder::new()
        .name("ota-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if received.next().is_some() {
                stopper.stop();
            }
            if received.next().is_some() {
                std::process::exit(1);
            }
        })
        .map_err(|e| ota_std::Error::Io(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// One line for an event worth a line.
fn describe(event: &GatewayEvent, shown: &Mutex<BTreeMap<usize, u64>>) -> Option<String> {
    let (index, name, event) = match event {
        GatewayEvent::Connected => return Some("gateway: connected".into()),
        GatewayEvent::Disconnected { reason } => {
            return Some(format!("gateway: disconnected: {reason}"))
        }
        GatewayEvent::Subdevice { index, name, event } => (*index, name, event),
    };
    let text = match event {
        SubdeviceEvent::Online => "online".into(),
        SubdeviceEvent::Offline => "offline".into(),
        SubdeviceEvent::GaveUp { reason } => format!("skipped: {reason}"),
        SubdeviceEvent::Queued { version } => format!("{version} waits for a download slot"),
        SubdeviceEvent::Flashing { version } => format!("flashing {version}"),
        SubdeviceEvent::FlashFailed { reason } => format!("flasher failed: {reason}"),
        SubdeviceEvent::Agent(event) => match event {
            DeviceEvent::Started { version } => format!("running {version}"),
            DeviceEvent::TaskReceived { version, size } => {
                format!("downloading {version} ({size} bytes)")
            }
            DeviceEvent::Progress { received, size, .. } if *size > 0 => {
                let tenth = received * 10 / size;
                let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
                if shown.insert(index, tenth) == Some(tenth) {
                    return None;
                }
                format!("{}% ({received}/{size} bytes)", tenth * 10)
            }
            DeviceEvent::Installed { version } => format!("flashed {version}"),
            DeviceEvent::Succeeded { version } => format!("upgraded to {version}"),
            DeviceEvent::Failed { code, reason } => format!("failed ({code}): {reason}"),
            DeviceEvent::RolledBack { version } => format!("rolled back to {version}"),
            DeviceEvent::TaskRejected { reason } => format!("task rejected: {reason}"),
            DeviceEvent::Canceled => "task canceled".into(),
            DeviceEvent::RecordDiscarded { reason } => format!("record discarded: {reason}"),
            _ => return None,
        },
    };
    Some(format!("{name}: {text}"))
}
