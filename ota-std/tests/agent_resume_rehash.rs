//! A resumed download trusts only the staged bytes it reads back: the `ota-agent` process is
//! killed mid-download, its staging file is damaged (one byte flipped, truncated, deleted),
//! and the restarted agent must notice, download again from byte 0 and install exactly the
//! task's image, with no failure reported. An intact staging file resumes from its record.

use std::path::Path;
use std::time::Duration;

use ota_sim::{DeviceInfo, Fault, JobSpec, PackageSpec, Sim, SimConfig, TaskState, Times};

mod common;
use common::agent;

const WAIT: Duration = Duration::from_secs(30);
const SIZE: usize = 1024 * 1024;

#[derive(Clone, Copy, Debug)]
enum Damage {
    None,
    FlipByte(u64),
    Truncate(u64),
    Delete,
}

fn damage(staging: &Path, damage: Damage) {
    match damage {
        Damage::None => {}
        Damage::FlipByte(at) => {
            let mut bytes = std::fs::read(staging).unwrap();
            bytes[at as usize] ^= 0x01;
            std::fs::write(staging, bytes).unwrap();
        }
        Damage::Truncate(len) => {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(staging)
                .unwrap();
            file.set_len(len).unwrap();
        }
        Damage::Delete => std::fs::remove_file(staging).unwrap(),
    }
}

/// The first byte a request asked for.
fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse().ok())
        .unwrap_or(0)
}

/// Kills the agent once a third of the image is durable, applies `what`, restarts it; returns
/// where the restarted run's first request began.
fn kill_damage_restart(what: Damage) -> u64 {
    let sim = Sim::start(SimConfig::default()).expect("simulator starts");
    let info: DeviceInfo = sim.add_device().unwrap();
    let data: Vec<u8> = (0..SIZE).map(|i| (i * 13 + i / 509) as u8).collect();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    sim.set_fault(&info, Fault::RateLimit(1_000_000), Times::Always);
    let dir = tempfile::tempdir().unwrap();
    let extra = "checkpoint_interval = 131072\nwrite_block = 16384\nstall_timeout = 5";
    let config = common::write_config(&sim, &info, dir.path(), extra);

    let mut child = agent(&config, &info.device_secret).spawn().unwrap();
    // A step is reported once a record carrying it is durable: past 40 %, the record vouches
    // for at least the first checkpoint interval.
    let mut steps = sim.wait_progress(&info, 1, WAIT).unwrap();
    while !steps.iter().any(|s| *s >= 40) {
        steps = sim.wait_progress(&info, steps.len() + 1, WAIT).unwrap();
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(dir.path().join("ota.record").exists(), "the record stays");
    damage(&dir.path().join("staging.img"), what);
    let requests_before = sim.downloads(&info).len();

    let child = agent(&config, &info.device_secret)
        .arg("--exit-after-install")
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{what:?}");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    let installed = std::fs::read(dir.path().join("firmware.img")).unwrap();
    assert!(
        installed == data,
        "{what:?}: the installed image is not the task's"
    );
    let steps = sim.progress_steps(&info);
    assert!(
        steps.iter().all(|s| *s > 0),
        "{what:?}: no failure: {steps:?}"
    );
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "{what:?}: steps never repeat: {steps:?}"
    );
    let downloads = sim.downloads(&info);
    range_start(downloads[requests_before].range.as_deref())
}

#[test]
fn an_intact_staging_file_resumes_from_the_record() {
    assert!(kill_damage_restart(Damage::None) >= 131_072);
}

#[test]
fn a_flipped_staged_byte_downloads_again_from_byte_0() {
    assert_eq!(kill_damage_restart(Damage::FlipByte(1000)), 0);
}

#[test]
fn a_truncated_staging_file_downloads_again_from_byte_0() {
    assert_eq!(kill_damage_restart(Damage::Truncate(0)), 0);
    assert_eq!(kill_damage_restart(Damage::Truncate(65_536)), 0);
}

#[test]
fn a_deleted_staging_file_downloads_again_from_byte_0() {
    assert_eq!(kill_damage_restart(Damage::Delete), 0);
}
