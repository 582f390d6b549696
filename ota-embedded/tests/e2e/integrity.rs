//! What is installed is what was verified, on NOR flash: a bit lost in the slot while the
//! power was off restarts the download from byte 0 (the resume reads the durable prefix back
//! first), a bit lost after its write fails the task with -4 at the read-back instead of
//! being activated, and the crash sweep: the power cut before every erase and write of a whole
//! upgrade (slot and record flash), each restart reading its prefix back, always ends with
//! exactly the new image confirmed.

use std::time::Instant;

use ota_embedded::RecordStore;
use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, TaskState};

use crate::support::{image, Device, SessionEnd, SECTOR, WAIT};
use crate::{assert_installed, block_on, finish_upgrade, NEW, OLD};

/// Boots the device again and again (into whatever the bootloader starts, after a reboot or
/// a power cut) until the task succeeded, the new image is confirmed and the record is
/// cleared; returns the boots that ended in a power cut.
fn run_to_success(sim: &Sim, device: &Device, job: ota_sim::JobId) -> usize {
    let mut cuts = 0;
    for boots in 1..=6 {
        let version = device.booted_version(OLD, NEW);
        let (session, stop) = device.boot(version);
        let deadline = Instant::now() + WAIT;
        loop {
            if session.is_finished() {
                match session.join().unwrap() {
                    SessionEnd::Reboot => {}
                    SessionEnd::PowerCut => cuts += 1,
                    end => panic!("boot {boots} ended with {end:?}"),
                }
                break;
            }
            let succeeded = sim
                .task(job, &device.info)
                .is_some_and(|t| t.state == TaskState::Succeeded);
            let confirmed = device.boot.state.lock().unwrap().booted;
            if succeeded && confirmed && record(device).is_none() {
                let _ = stop.send(());
                assert_eq!(session.join().unwrap(), SessionEnd::Stopped);
                return cuts;
            }
            assert!(Instant::now() < deadline, "boot {boots} made no progress");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    panic!("no success after 6 boots");
}

fn record(device: &Device) -> Option<Vec<u8>> {
    let mut records = RecordStore::new(device.records.detached(), 0).unwrap();
    block_on(records.load()).unwrap().map(<[u8]>::to_vec)
}

fn first_range_start(downloads: &[ota_sim::DownloadRecord]) -> u64 {
    downloads[0]
        .range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_bit_lost_in_the_slot_while_off_restarts_the_download_from_byte_0() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let firmware = image(16 * SECTOR + 777);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, booted) = Device::new(&sim, info);
    // Torn at the 11th block write: the durable checkpoint is at 32 KiB.
    device.slot.state.lock().unwrap().cut_at_write = Some(11);
    let (session, _stop) = device.boot(OLD);
    assert_eq!(session.join().unwrap(), SessionEnd::PowerCut);
    // While the power is off, a bit of the durable prefix is lost.
    device.slot.state.lock().unwrap().bytes[5000] ^= 0x04;
    let before = sim.downloads(&device.info).len();
    let reads_before = device.slot.state.lock().unwrap().reads;

    finish_upgrade(&sim, &device, &booted, job);

    assert_installed(&device, &firmware);
    let downloads = sim.downloads(&device.info);
    assert_eq!(first_range_start(&downloads[before..]), 0, "{downloads:?}");
    assert!(device.slot.state.lock().unwrap().reads > reads_before);
    let log = device.log();
    assert!(
        log.iter()
            .any(|l| l.contains("RecordDiscarded(StagingMismatch)")),
        "{log:?}"
    );
    assert!(sim.progress_steps(&device.info).iter().all(|s| *s > 0));
}

#[test]
fn a_bit_lost_after_its_write_is_caught_by_the_read_back_with_minus_4() {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let firmware = image(6 * SECTOR + 99);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, _booted) = Device::new(&sim, info);
    // After the last block is written, a bit of the first block is gone.
    device.slot.state.lock().unwrap().lose_bit_after_write = Some((7, 100));

    let (session, stop) = device.boot(OLD);
    sim.wait_task_state(job, &device.info, TaskState::Failed, WAIT)
        .unwrap();
    let _ = stop.send(());
    assert_eq!(session.join().unwrap(), SessionEnd::Stopped);
    assert_eq!(sim.progress_steps(&device.info).last(), Some(&-4));
    assert!(!device.boot.state.lock().unwrap().updated, "not activated");
    let log = device.log();
    assert!(
        log.iter().any(|l| l.contains("read-back")),
        "the reason names the read-back: {log:?}"
    );
}

/// One upgrade of `firmware` with the power cut before the operations `cuts`; returns the
/// operations it took, the power cuts, and where the first request after the first cut began.
fn upgrade_with_cuts(firmware: &[u8], cuts: &[u32]) -> (u32, usize, Option<u64>) {
    let sim = Sim::start(SimConfig::default()).unwrap();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.to_vec()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, _booted) = Device::new(&sim, info);
    device.slot.power.lock().unwrap().cuts = cuts.to_vec();
    let fired = run_to_success(&sim, &device, job);
    assert_installed(&device, firmware);
    let steps = sim.progress_steps(&device.info);
    assert!(steps.iter().all(|s| *s > 0), "cuts {cuts:?}: {steps:?}");
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "cuts {cuts:?}: {steps:?}"
    );
    assert!(
        !device.log().iter().any(|l| l.contains("StagingMismatch")),
        "nothing was damaged"
    );
    let downloads = sim.downloads(&device.info);
    let resumed = (downloads.len() > 1).then(|| first_range_start(&downloads[1..]));
    let ops = device.slot.power.lock().unwrap().ops;
    (ops, fired, resumed)
}

/// The power is cut before every erase, write and read of a whole upgrade (slot and record
/// flash, download to confirmation), one cut per upgrade; then, from a cut that left a
/// download record, a second cut before every operation of the recovery, the prefix re-read
/// included. Every upgrade ends with exactly the new image confirmed and no failure report.
#[test]
fn crash_sweep_cut_before_every_flash_operation_of_an_upgrade() {
    let firmware = image(5 * SECTOR + 321);
    let (ops, fired, _) = upgrade_with_cuts(&firmware, &[]);
    assert_eq!(fired, 0);
    assert!(ops >= 12, "{ops} operations");
    let (mut resumed, mut deepest) = (0, (0, 0));
    for cut in 1..=ops {
        let (_, fired, resume) = upgrade_with_cuts(&firmware, &[cut]);
        assert_eq!(fired, 1, "cut {cut} fired once");
        if let Some(offset) = resume.filter(|o| *o > 0) {
            resumed += 1;
            deepest = deepest.max((offset, cut));
        }
    }
    assert!(resumed > 0);
    // The recovery from the deepest resumable cut, cut again at each of its operations: the
    // prefix re-read first of all.
    let first = deepest.1;
    let (total, _, _) = upgrade_with_cuts(&firmware, &[first]);
    let mut second_points = 0;
    for second in first + 1..=total {
        let (_, fired, _) = upgrade_with_cuts(&firmware, &[first, second]);
        assert_eq!(fired, 2, "cuts {first}, {second}");
        second_points += 1;
    }
    eprintln!(
        "ota-embedded crash sweep: {} cut points, 0 bad ({ops} before every erase, write and read of an upgrade, {resumed} of them resumed after reading the prefix back; {second_points} more in the recovery from byte {}, its prefix re-read included)",
        ops + second_points,
        deepest.0
    );
}
