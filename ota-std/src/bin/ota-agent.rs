//! `ota-agent`: the OTA agent for a Linux device. Settings come from a TOML file and flags
//! (flags win); a progress bar is shown on a terminal, structured logs otherwise. SIGTERM
//! and SIGINT stop it like a service: the storage operation in progress completes, the
//! record stays, the session is closed, and it exits 0.
#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use indicatif::{ProgressBar, ProgressStyle};
use ota_std::file::Settings;
use ota_std::{run_until_reboot, DeviceEvent, Exit, Reboot, Stopper};

/// Firmware over-the-air updates from the Alibaba Cloud IoT Platform.
///
/// Every option may also be given in the TOML file of --config, with `_` for `-` in the key
/// (e.g. `product_key = "a1..."`); flags override the file.
#[derive(Parser)]
#[command(name = "ota-agent", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML file with the settings below.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Show a progress bar (default: when stderr is a terminal).
    #[arg(long, value_name = "BOOL")]
    progress: Option<bool>,
    /// Exit once a task is over: 0 after the new version was reported and confirmed, or the
    /// task's failure code (1 to 4 for steps -1 to -4) when it failed.
    #[arg(long, visible_alias = "once")]
    exit_after_install: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Check, step by step, that this device reaches the platform: resolve the endpoint,
    /// connect, TLS (version, suite, chain, anchoring root), login, subscribe, firmware/get,
    /// and optionally the first byte of an https URL. Exits 1 at the first failure.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// TOML file with the settings (the same file the agent runs with).
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Also fetch the first byte of this URL (e.g. a firmware URL, to check the OSS chain).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    #[command(flatten)]
    settings: Settings,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            let _ = e.print(); // --help, --version
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph is the message; the usage below it is noise in logs.
            let text = e.render().to_string();
            let lines: Vec<&str> = text.lines().take_while(|l| !l.is_empty()).collect();
            let message = lines.iter().map(|l| l.trim()).collect::<Vec<_>>().join(" ");
            eprintln!(
                "ota-agent: {} (try --help)",
                message.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let result = match cli.command {
        Some(Command::Check(args)) => check(args),
        None => run(cli),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("ota-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `ota-agent check`: 0 when every step passed, 1 at the first failure (said on stderr).
fn check(args: CheckArgs) -> Result<u8, ota_std::Error> {
    let file = match &args.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let mut settings = args.settings.or(file);
    // check reads the identity, the endpoint and the TLS settings only: the slot settings
    // the agent needs are given placeholders it never touches.
    settings.staging.get_or_insert_with(|| "staging.img".into());
    settings.record.get_or_insert_with(|| "ota.record".into());
    if settings.version_file.is_none() {
        settings.running_version.get_or_insert_with(|| "0".into());
    }
    if settings.activate_command.is_none() {
        settings.target.get_or_insert_with(|| "firmware.img".into());
    }
    let config = settings.into_device_config()?;
    match ota_std::check::check(&config, args.url.as_deref(), &mut std::io::stdout()) {
        Ok(()) => Ok(0),
        Err(line) => {
            eprintln!("ota-agent check: FAILED at {line}");
            Ok(1)
        }
    }
}

/// How a task ended, for `--exit-after-install`.
#[derive(Default)]
struct TaskEnd {
    /// The exit code: 0 on success, else the failure step's magnitude.
    code: Option<u8>,
    /// The session is up, so this boot's version report and any report held back while
    /// offline are out (the core sends them on connect).
    connected: bool,
    /// This boot's health check passed and the image is confirmed.
    succeeded: bool,
}

/// Runs until stopped (SIGTERM, SIGINT) or, with `--exit-after-install`, until a task
/// ended; returns the exit code.
fn run(cli: Cli) -> Result<u8, ota_std::Error> {
    let file = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::default(),
    };
    let mut config = cli.settings.or(file).into_device_config()?;
    let bar = cli
        .progress
        .unwrap_or_else(|| std::io::stderr().is_terminal())
        .then(progress_bar);
    init_logging(bar.is_none());
    let stopper = Stopper::default();
    stop_on_signals(stopper.clone())?;
    let task_end = Arc::new(Mutex::new(TaskEnd::default()));
    let observer = |event: DeviceEvent| {
        show(bar.as_ref(), &event);
        if cli.exit_after_install {
            note_task_end(&event, &task_end, &stopper);
        }
    };
    loop {
        let exit = run_until_reboot(&config, &observer, &stopper)?;
        if let Some(code) = task_end.lock().unwrap_or_else(|e| e.into_inner()).code {
            return Ok(code);
        }
        match exit {
            Exit::Rebooted if config.reboot == Reboot::InProcess => {
                tracing::info!("restarting the agent");
                // The broker was reachable before: after a reboot, wait for it.
                config.fail_fast = false;
            }
            _ => return Ok(0),
        }
    }
}

/// SIGTERM and SIGINT stop the run between two inputs, so no write or record save is cut
/// short; a second signal exits at once.
fn stop_on_signals(stopper: Stopper) -> Result<(), ota_std::Error> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| ota_std::Error::Io(format!("cannot handle signals: {e}")))?;
    std::thread::Builder::new()
        .name("ota-signals".into())
        .spawn(move || {
            let mut received = signals.forever();
            if let Some(signal) = received.next() {
                tracing::info!(signal, "stopping");
                stopper.stop();
            }
            if received.next().is_some() {
                std::process::exit(1);
            }
        })
        .map_err(|e| ota_std::Error::Io(format!("cannot start the signal thread: {e}")))?;
    Ok(())
}

/// With `--exit-after-install`: the run stops once the task succeeded (confirmed, and the
/// new version reported) or failed (its code reported). The core publishes what it found
/// while offline (a verdict at boot, a failure during an outage) when the session comes up,
/// so the stop waits for a connection; stopping then waits for the broker to acknowledge
/// those reports.
fn note_task_end(event: &DeviceEvent, task_end: &Mutex<TaskEnd>, stopper: &Stopper) {
    let mut end = task_end.lock().unwrap_or_else(|e| e.into_inner());
    match event {
        DeviceEvent::Started { .. } | DeviceEvent::Disconnected { .. } => end.connected = false,
        DeviceEvent::Connected => end.connected = true,
        DeviceEvent::Succeeded { .. } => end.succeeded = true,
        DeviceEvent::Failed { code, .. } => end.code = Some(code.unsigned_abs().max(1)),
        _ => return,
    }
    if end.code.is_none() && end.succeeded {
        end.code = Some(0);
    }
    if end.code.is_some() && end.connected {
        stopper.stop();
    }
}

fn init_logging(verbose: bool) {
    let default = if verbose { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

fn progress_bar() -> ProgressBar {
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template(
        "{msg:20} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar
}

/// One line (or bar update) per event.
fn show(bar: Option<&ProgressBar>, event: &DeviceEvent) {
    match (bar, event) {
        (Some(bar), DeviceEvent::TaskReceived { version, size }) => {
            bar.reset();
            bar.set_length(*size);
            bar.set_message(format!("downloading {version}"));
        }
        (Some(bar), DeviceEvent::Progress { received, .. }) => bar.set_position(*received),
        (Some(bar), DeviceEvent::Installed { version }) => {
            bar.finish_with_message(format!("installed {version}"));
        }
        (Some(bar), DeviceEvent::Failed { code, reason }) => {
            bar.abandon_with_message(format!("failed ({code})"));
            eprintln!("ota-agent: task failed ({code}): {reason}");
        }
        (Some(bar), other) => bar.println(describe(other)),
        (None, DeviceEvent::Progress { received, size, .. }) => {
            tracing::info!(received, size, "downloading");
        }
        (None, DeviceEvent::Failed { code, reason }) => {
            tracing::warn!(code, reason = reason.as_str(), "task failed");
        }
        (None, other) => tracing::info!("{}", describe(other)),
    }
}

/// The module, the files and the pass-through fields of a task, on one line.
fn describe_task(task: &ota_core::Task) -> String {
    let mut line = format!("task for module {}: {}", task.module, task.version);
    if !task.files.is_empty() {
        let names: Vec<&str> = task.files.iter().map(|f| f.name.as_str()).collect();
        line += &format!(", files {}", names.join(", "));
    }
    if task.is_diff {
        line += ", delta";
    }
    if let Some(ext) = &task.ext_data {
        line += &format!(", extData {ext}");
    }
    if let Some(sign) = &task.digestsign {
        line += &format!(", digestsign {sign}");
    }
    line
}

fn describe(event: &DeviceEvent) -> String {
    match event {
        DeviceEvent::Started { version } => format!("running {version}"),
        DeviceEvent::Connected => "connected".into(),
        DeviceEvent::Disconnected { reason } => format!("disconnected: {reason}"),
        DeviceEvent::Task(task) => describe_task(task),
        DeviceEvent::TaskReceived { version, size } => format!("task: {version}, {size} bytes"),
        DeviceEvent::TaskRejected { reason } => format!("task rejected: {reason}"),
        DeviceEvent::Progress { received, size, .. } => format!("{received}/{size} bytes"),
        DeviceEvent::HealthCheck { version } => format!("checking the health of {version}"),
        DeviceEvent::Installed { version } => format!("installed {version}"),
        DeviceEvent::Succeeded { version } => format!("upgraded to {version}"),
        DeviceEvent::Failed { code, reason } => format!("failed ({code}): {reason}"),
        DeviceEvent::RolledBack { version } => format!("rolled back to {version}"),
        DeviceEvent::Canceled => "task canceled".into(),
        DeviceEvent::Declined => "task declined".into(),
        DeviceEvent::TaskOffered { version, size } => {
            format!("task offered: {version}, {size} bytes")
        }
        DeviceEvent::RecordDiscarded { reason } => format!("saved record discarded: {reason}"),
        DeviceEvent::Rebooting => "rebooting".into(),
    }
}
