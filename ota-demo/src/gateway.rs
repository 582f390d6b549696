//! `ota-demo --gateway`: one gateway (ota-std's gateway mode, in-process) updating the
//! sub-devices behind it, several at once (docs/protocol.md §14). Each sub-device has its own
//! directory and a flasher that copies the verified image to `flashed.bin` beside it; the
//! table shows when each download started and ended, so the overlap is visible.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ota_std::gateway::{
    GatewayConfig, GatewayEvent, GatewayHandle, SubdeviceConfig, SubdeviceEvent, SubdeviceVersion,
};
use ota_std::{DeviceConfig, DeviceEvent};

use ota_sim::{Fault, JobSpec, PackageSpec, Sim, SimConfig, Times};

/// What the gateway demo does.
#[derive(Clone, Debug)]
pub struct GatewayDemoOptions {
    /// Sub-devices behind the gateway (at least 1).
    pub subdevices: usize,
    /// Most sub-devices downloading at once.
    pub max_parallel: usize,
    /// Image size in bytes.
    pub size: usize,
    /// Per-sub-device download rate in bytes per second (0: unlimited).
    pub rate: u64,
    /// How long everything may take.
    pub timeout: Duration,
    /// Print a line per sub-device event while it runs.
    pub live: bool,
}

impl Default for GatewayDemoOptions {
    fn default() -> Self {
        GatewayDemoOptions {
            subdevices: 6,
            max_parallel: 3,
            size: 4 * 1024 * 1024,
            rate: 4 * 1024 * 1024,
            timeout: Duration::from_secs(300),
            live: true,
        }
    }
}

/// One sub-device's line of the table.
#[derive(Clone, Debug, Default)]
pub struct GatewayRow {
    /// DeviceName.
    pub device: String,
    /// Version at the start.
    pub from: String,
    /// Version at the end (empty until reported).
    pub to: String,
    /// When its download started, from the gateway's start.
    pub started: Option<Duration>,
    /// When its new version was confirmed.
    pub finished: Option<Duration>,
    /// The failure, if any.
    pub failure: Option<String>,
    /// Upgraded, and the flashed image is the package's.
    pub ok: bool,
}

/// What the demo saw.
#[derive(Clone, Debug)]
pub struct GatewayDemoReport {
    /// One row per sub-device.
    pub rows: Vec<GatewayRow>,
    /// Most downloads seen running at once.
    pub most_at_once: usize,
    /// From the gateway's start to the last sub-device's confirmed version.
    pub wall: Duration,
}

/// Runs the gateway demo. `Err` when it could not run (ports, files) or ran out of time.
pub fn run(options: &GatewayDemoOptions) -> Result<GatewayDemoReport, String> {
    if options.subdevices == 0 || options.max_parallel == 0 || options.size == 0 {
        return Err("--subdevices, --max-parallel and --size must be at least 1".into());
    }
    let sim = Sim::start(SimConfig::default()).map_err(|e| format!("cannot start: {e}"))?;
    let gateway = sim.add_gateway().map_err(|e| e.to_string())?;
    let subs = (0..options.subdevices)
        .map(|_| sim.add_subdevice(&gateway))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if options.rate > 0 {
        for sub in &subs {
            sim.set_fault(sub, Fault::RateLimit(options.rate), Times::Always);
        }
    }
    let image = crate::devices::demo_image(options.size);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image.clone()))
        .map_err(|e| e.to_string())?;
    sim.create_job(JobSpec::batch(package).dynamic())
        .map_err(|e| e.to_string())?;
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut device = DeviceConfig::new(
        &gateway.id.product_key,
        &gateway.id.device_name,
        &gateway.device_secret,
        sim.mqtt_host(),
        sim.mqtt_port(),
        dir.path(),
    )
    .map_err(|e| e.to_string())?;
    device.agent.rules.allow_http = true;
    let config = GatewayConfig {
        gateway: device,
        subdevices: subs
            .iter()
            .map(|s| SubdeviceConfig {
                product_key: s.id.product_key.clone(),
                device_name: s.id.device_name.clone(),
                device_secret: s.device_secret.clone(),
                version: SubdeviceVersion::Fixed("1.0.0".into()),
                dir: dir.path().join(&s.id.device_name),
                flasher: r#"cp "$OTA_IMAGE" "$(dirname "$OTA_IMAGE")/flashed.bin""#.into(),
                version_after_flash: None,
            })
            .collect(),
        max_parallel: options.max_parallel,
    };
    let mut rows: Vec<GatewayRow> = subs
        .iter()
        .map(|s| GatewayRow {
            device: s.id.device_name.clone(),
            from: "1.0.0".into(),
            ..GatewayRow::default()
        })
        .collect();
    let start = Instant::now();
    let handle = GatewayHandle::spawn(config.clone()).map_err(|e| e.to_string())?;
    let mut downloading = BTreeMap::new();
    let mut most_at_once = 0;
    let deadline = start + options.timeout;
    while rows
        .iter()
        .any(|r| r.finished.is_none() && r.failure.is_none())
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = handle
            .events()
            .recv_timeout(left)
            .map_err(|_| "the gateway demo ran out of time".to_owned())?;
        let GatewayEvent::Subdevice { index, name, event } = event else {
            continue;
        };
        let at = start.elapsed();
        let row = &mut rows[index];
        match &event {
            SubdeviceEvent::Agent(DeviceEvent::TaskReceived { .. }) => {
                row.started.get_or_insert(at);
                downloading.insert(index, ());
                most_at_once = most_at_once.max(downloading.len());
            }
            SubdeviceEvent::Flashing { .. } => {
                downloading.remove(&index);
            }
            SubdeviceEvent::Agent(DeviceEvent::Succeeded { version }) => {
                row.to = version.clone();
                row.finished = Some(at);
            }
            SubdeviceEvent::Agent(DeviceEvent::Failed { code, reason }) => {
                downloading.remove(&index);
                row.failure = Some(format!("{code}: {reason}"));
            }
            SubdeviceEvent::GaveUp { reason } => row.failure = Some(reason.clone()),
            _ => {}
        }
        if options.live {
            if let Some(line) = live_line(&event) {
                println!("{:>7.2}s {name}: {line}", at.as_secs_f64());
            }
        }
    }
    let wall = start.elapsed();
    let _ = handle.stop();
    for (row, sub) in rows.iter_mut().zip(&config.subdevices) {
        let flashed = std::fs::read(sub.dir.join("flashed.bin")).unwrap_or_default();
        row.ok = row.failure.is_none() && row.to == "2.0.0" && flashed == image;
    }
    Ok(GatewayDemoReport {
        rows,
        most_at_once,
        wall,
    })
}

/// A line for the events worth one (progress only at each quarter).
fn live_line(event: &SubdeviceEvent) -> Option<String> {
    Some(match event {
        SubdeviceEvent::Online => "online".into(),
        SubdeviceEvent::Queued { version } => format!("{version} waits for a download slot"),
        SubdeviceEvent::Flashing { version } => format!("flashing {version}"),
        SubdeviceEvent::FlashFailed { reason } => format!("flasher failed: {reason}"),
        SubdeviceEvent::GaveUp { reason } => format!("skipped: {reason}"),
        SubdeviceEvent::Agent(DeviceEvent::TaskReceived { version, size }) => {
            format!("downloading {version} ({size} bytes)")
        }
        SubdeviceEvent::Agent(DeviceEvent::Succeeded { version }) => {
            format!("upgraded to {version}")
        }
        SubdeviceEvent::Agent(DeviceEvent::Failed { code, reason }) => {
            format!("failed ({code}): {reason}")
        }
        _ => return None,
    })
}

/// The final table: one line per sub-device, with when its download started and ended.
pub fn table(report: &GatewayDemoReport) -> String {
    let mut out = format!(
        "{:<16} {:>15} {:>9} {:>9}  {}\n",
        "sub-device", "version", "start", "done", "result"
    );
    let secs = |d: Option<Duration>| d.map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64()));
    for r in &report.rows {
        let to = if r.to.is_empty() { "?" } else { &r.to };
        let result = match (&r.failure, r.ok) {
            (Some(f), _) => format!("FAILED ({f})"),
            (None, true) => "ok".into(),
            (None, false) => "FAILED (flashed image differs)".into(),
        };
        out.push_str(&format!(
            "{:<16} {:>15} {:>9} {:>9}  {result}\n",
            r.device,
            format!("{} -> {to}", r.from),
            secs(r.started),
            secs(r.finished),
        ));
    }
    out.push_str(&format!(
        "{} sub-devices in {:.2}s, at most {} downloading at once\n",
        report.rows.len(),
        report.wall.as_secs_f64(),
        report.most_at_once
    ));
    out
}
