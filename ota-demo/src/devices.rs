//! `ota-demo`: the whole story on one machine. A simulator, N devices running the Linux
//! agent (ota-std) in-process, each in its own temporary directory; a package that must be
//! verified on one device before a batch job rolls it out to the rest; every device
//! "reboots" (its agent restarts in-process on the new version and the saved record). With
//! faults, downloads meet expired URLs, cut connections, ignored `Range` headers and one
//! corrupt byte (that device fails with -3 and succeeds on the job's automatic retry). Signed,
//! the package carries `digestsign` and every device holds the public key; the second device
//! is sent a wrong signature once and refuses the package with -3 before the retry.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use ota_core::RetryPolicy;
use ota_std::{Device, DeviceConfig, DeviceEvent, Stopper};

use ota_sim::{DeviceInfo, Fault, FaultId, JobSpec, PackageSpec, Sim, SimConfig, TaskState, Times};

/// What the demo does.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Number of devices (at least 1; the first runs the verification job).
    pub devices: usize,
    /// Mix in expired URLs, cuts, ignored ranges and one corrupt download.
    pub faults: bool,
    /// Image size in bytes.
    pub size: usize,
    /// Per-device download rate in bytes per second (0: unlimited), so progress is visible.
    pub rate: u64,
    /// How long everything may take.
    pub timeout: Duration,
    /// Sign the package with a fresh key (the secure upgrade); one device (the second) gets
    /// a wrong signature once.
    pub signed: bool,
    /// Devices use MQTT over TLS and HTTPS (no plain http), trusting only the simulator's
    /// generated root (the platform-shaped RSA chain).
    pub tls: bool,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            devices: 8,
            faults: false,
            size: 4 * 1024 * 1024,
            rate: 4 * 1024 * 1024,
            timeout: Duration::from_secs(120),
            signed: false,
            tls: false,
        }
    }
}

/// One line of the final table.
#[derive(Clone, Debug, Default)]
pub struct DemoRow {
    /// DeviceName.
    pub device: String,
    /// Version at the start.
    pub from: String,
    /// Version at the end.
    pub to: String,
    /// Body bytes downloaded, re-downloads included.
    pub bytes: u64,
    /// From the task's arrival to the confirmed new version.
    pub time: Duration,
    /// Failure codes met on the way (e.g. -3 before the retry).
    pub failures: Vec<i8>,
    /// Fault injected, and whether it fired.
    pub fault: Option<(&'static str, bool)>,
    /// On the target version, installed image verified.
    pub ok: bool,
    /// What the simulator saw of a device that did not finish: its task (state, pushes),
    /// whether it was online and what version it reported, e.g. "task QUEUED, 0 pushes,
    /// offline, reported 1.0.0".
    pub cloud: String,
}

/// A device's row, with a signal for every change.
#[derive(Default)]
struct RowCell {
    row: Mutex<DemoRow>,
    changed: Condvar,
}

struct Running {
    info: DeviceInfo,
    dir: tempfile::TempDir,
    stopper: Stopper,
    row: Arc<RowCell>,
    watcher: JoinHandle<()>,
    fault: Option<(&'static str, Vec<FaultId>)>,
}

const TARGET: &str = "2.0.0";

/// Runs the demo; the rows say how each device fared. `Err` when the demo itself could not
/// run (ports, files).
pub fn run(options: &DemoOptions) -> Result<Vec<DemoRow>, String> {
    let config = SimConfig {
        tls: options.tls.then_some(ota_sim::SimTls::Generated),
        ..SimConfig::default()
    };
    let sim = Sim::start(config).map_err(|e| format!("cannot start: {e}"))?;
    let image = demo_image(options.size);
    let mut spec = PackageSpec::new(TARGET, image.clone()).needs_verification();
    let mut device_key = None;
    if options.signed {
        let signer = ota_sim::PackageSigner::generate().map_err(|e| e.to_string())?;
        let pem = signer.public_key_pem();
        device_key = Some(ota_std::signing_key::parse_signing_key(&pem)?);
        spec = signer.sign(spec);
    }
    let package = sim.add_package(spec).map_err(|e| e.to_string())?;
    let bars = MultiProgress::new();
    let (states, live_bars) = (sim.watch_states(), bars.clone());
    // The live view: above the bars on a terminal, plain lines otherwise.
    std::thread::spawn(move || {
        for change in states {
            match live_bars.is_hidden() {
                true => println!("{change}"),
                false => live_bars.println(change.to_string()).unwrap_or(()),
            }
        }
    });
    let style =
        ProgressStyle::with_template("{prefix:8} [{bar:30}] {bytes:>9}/{total_bytes:9} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");

    let mut devices = Vec::new();
    for i in 0..options.devices.max(1) {
        let info = sim.add_device().map_err(|e| e.to_string())?;
        if options.rate > 0 {
            sim.set_fault(&info, Fault::RateLimit(options.rate), Times::Always);
        }
        let fault = if options.signed && i == 1 {
            let wrong = sim.set_fault(&info, Fault::WrongSignature, Times::Once);
            Some(("wrong signature", vec![wrong]))
        } else if options.faults && i > 0 {
            Some(inject(&sim, &info, i, options.devices, options.size as u64))
        } else {
            None
        };
        let bar = bars.add(ProgressBar::new(options.size as u64));
        bar.set_style(style.clone());
        bar.set_prefix(info.id.device_name.clone());
        devices.push(start(&sim, info, bar, fault, device_key.clone())?);
    }

    let deadline = Instant::now() + options.timeout;
    let left = || deadline.saturating_duration_since(Instant::now());
    let first = &devices[0].info;
    let verification = sim
        .create_job(JobSpec::verification(package, &[first]))
        .map_err(|e| e.to_string())?;
    let verified = sim
        .wait_task_state(verification, first, TaskState::Succeeded, left())
        .is_ok();
    // Whether the cloud counts each device as upgraded, and its job.
    let mut upgraded = vec![verified];
    let mut jobs = vec![Some(verification)];
    if verified && devices.len() > 1 {
        let others: Vec<&DeviceInfo> = devices[1..].iter().map(|d| &d.info).collect();
        let batch = JobSpec::batch(package)
            .devices(&others)
            .retry(2, Duration::from_millis(500));
        let job = sim.create_job(batch).map_err(|e| e.to_string())?;
        for d in &devices[1..] {
            let waited = sim.wait_task_state(job, &d.info, TaskState::Succeeded, left());
            upgraded.push(waited.is_ok());
            jobs.push(Some(job));
        }
    }
    upgraded.resize(devices.len(), false);
    jobs.resize(devices.len(), None);

    let mut rows = Vec::new();
    for ((d, upgraded), job) in devices.into_iter().zip(upgraded).zip(jobs) {
        // The cloud counts the version report; the device confirms just after its health
        // check, so wait for that word too.
        let confirmed = upgraded && wait_row(&d.row, left(), |r| r.to == TARGET);
        d.stopper.stop();
        let _ = d.watcher.join();
        let mut row = lock(&d.row).clone();
        let installed = std::fs::read(d.dir.path().join("firmware.img")).ok();
        row.ok = confirmed
            && row.to == TARGET
            && sim
                .device_version(&d.info, ota_sim::DEFAULT_MODULE)
                .as_deref()
                == Some(TARGET)
            && installed.as_deref() == Some(&image[..]);
        if let Some((kind, ids)) = &d.fault {
            let fired = ids.iter().all(|id| sim.fault_fired(*id) > 0);
            row.fault = Some((kind, fired));
            row.ok &= fired;
        }
        if !row.ok {
            row.cloud = cloud_view(&sim, job, &d.info);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// Why a device did not finish, as the simulator saw it.
fn cloud_view(sim: &Sim, job: Option<ota_sim::JobId>, info: &DeviceInfo) -> String {
    let online = match sim.is_online(info) {
        true => "online",
        false => "offline",
    };
    let version = sim.device_version(info, ota_sim::DEFAULT_MODULE);
    let reported = version.map_or("never reported a version".to_owned(), |v| {
        format!("reported {v}")
    });
    let task = job.and_then(|j| sim.task(j, info));
    match task {
        Some(t) => {
            let state = serde_json::to_value(t.state).unwrap_or_default();
            let reason = t.reason.map(|r| format!(" ({r})")).unwrap_or_default();
            format!(
                "task {}{reason}, {} push(es), {online}, {reported}",
                state.as_str().unwrap_or("?"),
                t.pushes
            )
        }
        None if job.is_none() => {
            format!("no job reached it (verification failed), {online}, {reported}")
        }
        None => format!("no task, {online}, {reported}"),
    }
}

/// The fault of device `i` (1-based among the batch devices): the last one gets a corrupt
/// byte, the others cycle through expired URL, cut connection and ignored Range.
fn inject(
    sim: &Sim,
    info: &DeviceInfo,
    i: usize,
    n: usize,
    size: u64,
) -> (&'static str, Vec<FaultId>) {
    let set = |fault| sim.set_fault(info, fault, Times::Once);
    if i == n - 1 {
        return ("corrupt byte", vec![set(Fault::CorruptByte(size / 2))]);
    }
    match (i - 1) % 3 {
        // The simulator's expired-URL answer: 403 AccessDenied; the agent asks for a new URL.
        0 => ("expired URL", vec![set(Fault::Status(403))]),
        1 => ("cut", vec![set(Fault::CutAfter(size / 3))]),
        _ => (
            "ignored Range",
            vec![set(Fault::CutAfter(size / 2)), set(Fault::IgnoreRange)],
        ),
    }
}

fn start(
    sim: &Sim,
    info: DeviceInfo,
    bar: ProgressBar,
    fault: Option<(&'static str, Vec<FaultId>)>,
    package_key: Option<ota_core::signature::PackageKey>,
) -> Result<Running, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    std::fs::write(dir.path().join("version"), "1.0.0\n").map_err(|e| e.to_string())?;
    // Over TLS: the MQTT-TLS port, and https URLs (the simulator hands them to devices that
    // logged in over TLS), both checked against the generated root alone.
    let (port, ca) = match (sim.mqtts_port(), sim.ca_pem()) {
        (Some(port), Some(ca)) => (port, Some(ca)),
        _ => (sim.mqtt_port(), None),
    };
    let mut config = DeviceConfig::new(
        &info.id.product_key,
        &info.id.device_name,
        &info.device_secret,
        sim.mqtt_host(),
        port,
        dir.path(),
    )
    .map_err(|e| e.to_string())?;
    let quick = |attempts| RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_secs(1),
    };
    config.agent.rules.allow_http = ca.is_none(); // plain http only without TLS
    if let Some(ca) = ca {
        config.mqtt_tls = Some(ota_std::Trust::CaPem(ca.clone().into_bytes()));
        config.https_trust = ota_std::Trust::CaPem(ca.into_bytes());
    }
    config.agent.checkpoint_interval = 256 * 1024;
    config.agent.retry = quick(6);
    config.agent.url_refresh = quick(4);
    config.agent.stall_timeout = Duration::from_secs(5);
    config.agent.package_key = package_key;
    let handle = Device::spawn(config).map_err(|e| e.to_string())?;
    let stopper = handle.stopper();
    let row = Arc::new(RowCell::default());
    lock(&row).device = info.id.device_name.clone();
    let watched = row.clone();
    let watcher = std::thread::spawn(move || watch(handle, &watched, &bar));
    Ok(Running {
        info,
        dir,
        stopper,
        row,
        watcher,
        fault,
    })
}

/// Follows one device's events into its bar and its row until the device stops.
fn watch(handle: ota_std::DeviceHandle, row: &RowCell, bar: &ProgressBar) {
    let mut started = None;
    let mut this_boot = 0;
    for event in handle.events() {
        let mut r = lock(row);
        match &event {
            DeviceEvent::Started { version } if r.from.is_empty() => {
                r.from = version.clone();
                bar.set_message(format!("running {version}"));
            }
            DeviceEvent::TaskReceived { version, size } => {
                started.get_or_insert_with(Instant::now);
                bar.set_length(*size);
                bar.set_message(format!("downloading {version}"));
            }
            DeviceEvent::Progress {
                received,
                downloaded,
                ..
            } => {
                bar.set_position(*received);
                this_boot = *downloaded;
            }
            DeviceEvent::Failed { code, .. } => {
                r.failures.push(*code);
                bar.set_message(format!("failed ({code}), waiting for a retry"));
            }
            DeviceEvent::Rebooting => {
                r.bytes += std::mem::take(&mut this_boot);
                bar.set_message("rebooting");
            }
            DeviceEvent::Succeeded { version } => {
                r.to = version.clone();
                r.time = started.map(|s| s.elapsed()).unwrap_or_default();
                bar.finish_with_message(format!("running {version}"));
            }
            _ => {}
        }
        drop(r);
        row.changed.notify_all();
    }
    lock(row).bytes += this_boot;
    let _ = handle.join();
}

fn lock(cell: &RowCell) -> std::sync::MutexGuard<'_, DemoRow> {
    cell.row.lock().unwrap_or_else(|e| e.into_inner())
}

/// Waits until `done` holds for the row, re-checking whenever the watcher changes it.
fn wait_row(cell: &RowCell, timeout: Duration, done: impl Fn(&DemoRow) -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    let mut row = lock(cell);
    loop {
        if done(&row) {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        row = cell
            .changed
            .wait_timeout(row, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// A deterministic image.
pub(crate) fn demo_image(len: usize) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The final table, one line per device.
pub fn table(rows: &[DemoRow]) -> String {
    let mut out = format!(
        "{:<10} {:>15} {:>12} {:>8}  {}\n",
        "device", "version", "bytes", "time", "result"
    );
    for r in rows {
        let mut result = if r.ok {
            "ok".to_owned()
        } else {
            "FAILED".to_owned()
        };
        if !r.failures.is_empty() {
            let codes: Vec<String> = r.failures.iter().map(|c| c.to_string()).collect();
            result.push_str(&format!(" (after {})", codes.join(", ")));
        }
        if let Some((kind, fired)) = r.fault {
            let note = if fired { "" } else { " did not fire" };
            result.push_str(&format!(" [{kind}{note}]"));
        }
        if !r.cloud.is_empty() {
            result.push_str(&format!(" - simulator: {}", r.cloud));
        }
        let versions = format!(
            "{} -> {}",
            r.from,
            if r.to.is_empty() { "?" } else { &r.to }
        );
        out.push_str(&format!(
            "{:<10} {:>15} {:>12} {:>7.2}s  {}\n",
            r.device,
            versions,
            r.bytes,
            r.time.as_secs_f64(),
            result
        ));
    }
    out
}
