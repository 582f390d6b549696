//! What the end-to-end benches share: their settings from the environment, and one device
//! upgraded through ota-std against the simulator, timed from `TaskReceived` to `Installed`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ota_sim::{JobSpec, PackageId, Sim, TaskState};
use ota_std::{Device, DeviceConfig, DeviceEvent};

/// A number from the environment, or `default`.
pub fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Where the files go: `OTA_BENCH_DIR`, else /dev/shm so that the disk is not measured.
pub fn bench_dir() -> PathBuf {
    match std::env::var_os("OTA_BENCH_DIR") {
        Some(dir) => PathBuf::from(dir),
        None if Path::new("/dev/shm").is_dir() => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    }
}

/// What one upgrade took.
pub struct Upgrade {
    /// From `TaskReceived` to `Installed` (verified, written, synced, activated).
    pub elapsed: Duration,
    /// Progress events seen on the way.
    pub progress_events: u32,
}

/// Upgrades one new device to `package` through ota-std (`configure` adjusts its config),
/// checks the installed image is `data` and the simulator's task succeeded.
pub fn upgrade(
    sim: &Sim,
    package: PackageId,
    dir: &Path,
    data: &[u8],
    configure: impl FnOnce(&mut DeviceConfig),
) -> Upgrade {
    let info = sim.add_device().expect("device");
    let job = sim
        .create_job(JobSpec::batch(package).devices(&[&info]))
        .expect("job");
    let mut config = DeviceConfig::new(
        &info.id.product_key,
        &info.id.device_name,
        &info.device_secret,
        sim.mqtt_host(),
        sim.mqtt_port(),
        dir,
    )
    .expect("config");
    config.agent.rules.allow_http = true;
    configure(&mut config);
    std::fs::write(dir.join("version"), "1.0.0\n").expect("version file");
    let device = Device::spawn(config).expect("device starts");
    let wait = Duration::from_secs(300);
    let mut started = None;
    let mut progress_events = 0u32;
    let end = device.wait_for(wait, |e| {
        match e {
            DeviceEvent::TaskReceived { .. } => started = Some(Instant::now()),
            DeviceEvent::Progress { .. } => progress_events += 1,
            _ => {}
        }
        matches!(
            e,
            DeviceEvent::Installed { .. } | DeviceEvent::Failed { .. }
        )
    });
    let elapsed = started.map(|s| s.elapsed()).unwrap_or_default();
    assert!(
        matches!(end, Some(DeviceEvent::Installed { .. })),
        "{end:?}"
    );
    sim.wait_task_state(job, &info, TaskState::Succeeded, wait)
        .expect("success");
    device.stop().expect("device stops");
    let written = std::fs::read(dir.join("firmware.img")).expect("image");
    assert!(written == data, "installed image differs");
    Upgrade {
        elapsed,
        progress_events,
    }
}
