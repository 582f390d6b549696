//! The embedded driver end to end against the simulator, over std-backed trait
//! implementations: MQTT login and push, HTTP download into a RAM NOR flash, activation,
//! reboot, health check and confirmation; a power cut mid-download; an expired URL.

mod gateway;
mod integrity;
#[cfg(feature = "mbedtls")]
mod mbedtls;
#[cfg(feature = "signature")]
mod signing;
mod support;
mod tls;
mod tls_cancel;
mod transport;

use ota_embedded::RecordStore;
use ota_sim::{Fault, JobSpec, PackageSpec, Sim, SimConfig, TaskState, Times};
use support::{image, Device, SessionEnd, CHECKPOINT, SECTOR, WAIT};

pub const OLD: &str = "1.0.0";
pub const NEW: &str = "2.0.0";

/// Runs the device to its reboot into the new image, then until the new image is confirmed
/// and the cloud marked the task succeeded.
pub fn finish_upgrade(
    sim: &Sim,
    device: &Device,
    booted: &std::sync::mpsc::Receiver<()>,
    job: ota_sim::JobId,
) {
    let (session, _stop) = device.boot(OLD);
    assert_eq!(session.join().unwrap(), SessionEnd::Reboot);
    let version = device.booted_version(OLD, NEW);
    assert_eq!(version, NEW, "activation marked the new image for boot");
    let (session, stop) = device.boot(version);
    sim.wait_task_state(job, &device.info, TaskState::Succeeded, WAIT)
        .unwrap();
    booted
        .recv_timeout(WAIT)
        .expect("the new image was confirmed");
    let _ = stop.send(());
    assert_eq!(session.join().unwrap(), SessionEnd::Stopped);
}

/// Lets the running session `(session, stop)` of `device` go until the cloud marks `job`
/// failed, then checks that the device said why (a failure naming `reason`), that no download
/// request reached the server and that nothing was written or activated.
pub fn assert_refused_before_any_byte(
    sim: &Sim,
    device: &Device,
    job: ota_sim::JobId,
    (session, stop): (
        std::thread::JoinHandle<SessionEnd>,
        tokio::sync::oneshot::Sender<()>,
    ),
    reason: &str,
) {
    sim.wait_task_state(job, &device.info, TaskState::Failed, WAIT)
        .unwrap();
    let _ = stop.send(());
    assert_eq!(session.join().unwrap(), SessionEnd::Stopped);
    let log = device.log();
    assert!(
        log.iter()
            .any(|l| l.starts_with("failed") && l.contains(reason)),
        "no failure naming {reason:?}: {log:?}"
    );
    assert!(
        device.slot.bytes().iter().all(|&b| b == 0xFF),
        "slot untouched"
    );
    assert!(
        sim.downloads(&device.info).is_empty(),
        "no request got through"
    );
    assert!(!device.boot.state.lock().unwrap().updated);
}

pub fn assert_installed(device: &Device, firmware: &[u8]) {
    assert_eq!(&device.slot.bytes()[..firmware.len()], firmware);
    let state = device.boot.state.lock().unwrap();
    assert!(state.updated && state.booted, "{state:?}");
    assert_eq!(state.rollbacks, 0);
    drop(state);
    // The record is cleared after the confirmation.
    let mut records = RecordStore::new(device.records.detached(), 0).unwrap();
    let record = block_on(records.load()).unwrap().map(<[u8]>::to_vec);
    assert_eq!(record, None);
}

/// Runs a future on a throw-away runtime.
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(future)
}

/// Progress is positive, ends at 100, grows within each boot and never goes backwards across
/// a reboot (ota-core reports no more than the recorded offset, which is where it resumes; the
/// first report after a reboot may repeat the last one before it).
pub fn assert_monotone_progress(sim: &Sim, device: &Device, boots: usize) {
    let steps = sim.progress_steps(&device.info);
    assert!(
        steps.iter().all(|&s| s >= 1),
        "no failure report: {steps:?}"
    );
    assert!(
        steps.windows(2).all(|w| w[0] <= w[1]),
        "never backwards: {steps:?}"
    );
    let repeats = steps.windows(2).filter(|w| w[0] == w[1]).count();
    assert!(
        repeats < boots,
        "strictly increasing within each boot: {steps:?}"
    );
    assert_eq!(steps.last(), Some(&100), "{steps:?}");
}

#[test]
fn upgrades_end_to_end_over_mqtt_and_http() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let firmware = image(10 * SECTOR + 123);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, booted) = Device::new(&sim, info);

    finish_upgrade(&sim, &device, &booted, job);

    assert_installed(&device, &firmware);
    assert_monotone_progress(&sim, &device, 1);
    let downloads = sim.downloads(&device.info);
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(
        (downloads[0].status, downloads[0].range.clone()),
        (200, None)
    );
    let log = device.log();
    assert!(log.iter().any(|l| l == "health check 2.0.0"), "{log:?}");
    assert!(log.iter().any(|l| l.contains("Succeeded")), "{log:?}");
}

#[test]
fn resumes_after_a_power_cut_re_downloading_at_most_one_checkpoint() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let firmware = image(16 * SECTOR + 777);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, booted) = Device::new(&sim, info);
    // The 11th block write (offset 40 KiB) is torn and the power goes; the last durable
    // checkpoint is at 32 KiB.
    device.slot.state.lock().unwrap().cut_at_write = Some(11);

    let (session, _stop) = device.boot(OLD);
    assert_eq!(session.join().unwrap(), SessionEnd::PowerCut);
    let cut_at = device.slot.state.lock().unwrap().cut_fired_at;
    assert_eq!(cut_at, Some(10 * SECTOR as u32), "the power cut fired");
    let before = sim.downloads(&device.info).len();

    finish_upgrade(&sim, &device, &booted, job);

    assert_installed(&device, &firmware);
    let downloads = sim.downloads(&device.info);
    let resumed = &downloads[before..];
    assert!(!resumed.is_empty(), "{downloads:?}");
    let range = resumed[0].range.as_deref().expect("a ranged resume");
    let offset: u64 = range
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(resumed[0].status, 206);
    assert_eq!(offset % SECTOR as u64, 0, "resumed at a block boundary");
    let lost = u64::from(cut_at.unwrap()) - offset;
    assert!(
        lost <= CHECKPOINT,
        "re-downloaded {lost} bytes > {CHECKPOINT}"
    );
    let fetched_after: u64 = resumed.iter().map(|d| d.content_length).sum();
    assert_eq!(fetched_after, firmware.len() as u64 - offset, "{resumed:?}");
    assert_monotone_progress(&sim, &device, 2);
}

#[test]
fn refreshes_an_expired_url_and_keeps_going() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let firmware = image(6 * SECTOR + 5);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, booted) = Device::new(&sim, info);
    // The first download is refused as an expired signature would be.
    let expired = sim.set_fault(&device.info, Fault::Status(403), Times::Once);

    finish_upgrade(&sim, &device, &booted, job);

    assert_eq!(sim.fault_fired(expired), 1, "the 403 fired");
    assert_installed(&device, &firmware);
    let statuses: Vec<u16> = sim
        .downloads(&device.info)
        .iter()
        .map(|d| d.status)
        .collect();
    assert_eq!(statuses, [403, 200]);
    let task = sim.task(job, &device.info).unwrap();
    assert!(task.pushes >= 2, "a fresh URL was asked for: {task:?}");
    assert_monotone_progress(&sim, &device, 1);
}
