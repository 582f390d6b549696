//! The `ota-agent` binary as a process: its command line, its one-line errors, a download
//! that survives SIGKILL at random points with progress that never repeats, SIGTERM like a
//! service, and `--exit-after-install`.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{Child, Command, Output};
use std::time::Duration;

use ota_sim::{DeviceInfo, Fault, JobSpec, PackageSpec, Sim, SimConfig, TaskState, Times};

mod common;
use common::{agent, AGENT};

const WAIT: Duration = Duration::from_secs(30);

fn sim() -> Sim {
    Sim::start(SimConfig::default()).expect("simulator starts")
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A config file for `info` with its files in `dir` and the given checkpoint interval.
fn write_config(sim: &Sim, info: &DeviceInfo, dir: &Path, checkpoint: u64) -> std::path::PathBuf {
    let extra =
        format!("checkpoint_interval = {checkpoint}\nwrite_block = 16384\nstall_timeout = 5");
    common::write_config(sim, info, dir, &extra)
}

fn stderr_of(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Checks the failure is one line starting with `ota-agent:`, with no panic or backtrace.
fn one_line_error(output: &Output) -> String {
    let stderr = stderr_of(output);
    assert!(!output.status.success(), "must fail: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("ota-agent: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

#[test]
fn help_documents_every_option() {
    let output = Command::new(AGENT).arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for option in [
        "--config",
        "--progress",
        "--product-key",
        "--device-name",
        "--device-secret",
        "OTA_DEVICE_SECRET",
        "--endpoint",
        "--region",
        "--instance",
        "--tls",
        "--ca-file",
        "--running-version",
        "--version-file",
        "--module",
        "--staging",
        "--record",
        "--target",
        "--files-dir",
        "--extra-module",
        "--legacy-request",
        "--mqtt-block-size",
        "--mqtt-window",
        "--activate-command",
        "--rollback-command",
        "--reboot-command",
        "--health-command",
        "--health-timeout",
        "--checkpoint-interval",
        "--write-block",
        "--write-buffers",
        "--retry-attempts",
        "--url-refresh-attempts",
        "--stall-timeout",
        "--allow-http",
        "--exit-after-install",
        "--once",
        "--signing-key",
        "--read-back",
    ] {
        assert!(help.contains(option), "--help lacks {option}:\n{help}");
    }
}

#[test]
fn configuration_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Command::new(AGENT)
        .arg("--config")
        .arg(dir.path().join("nope.toml"))
        .output()
        .unwrap();
    assert!(one_line_error(&missing).contains("cannot read"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "product_key = 5\n").unwrap();
    let output = Command::new(AGENT)
        .arg("--config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(one_line_error(&output).contains("bad.toml"));

    let output = Command::new(AGENT)
        .env_remove("OTA_DEVICE_SECRET")
        .output()
        .unwrap();
    assert!(one_line_error(&output).contains("missing product_key"));

    let output = Command::new(AGENT).arg("--tls=maybe").output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    one_line_error(&output);
}

#[test]
fn wrong_secret_and_unreachable_broker_are_one_line_errors() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, &info, dir.path(), 65536);
    let output = agent(&config, "wrong-secret").output().unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.contains("check the product key, device name and device secret"),
        "{stderr}"
    );

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let output = agent(&config, &info.device_secret)
        .arg(format!("--endpoint=127.0.0.1:{port}"))
        .output()
        .unwrap();
    let stderr = one_line_error(&output);
    assert!(
        stderr.contains(&format!("cannot reach the broker 127.0.0.1:{port}")),
        "{stderr}"
    );
}

/// A small xorshift seeded from the OS's hash randomness; the seed is printed for replay.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = match std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()) {
            Some(seed) => seed,
            None => {
                std::collections::hash_map::RandomState::new()
                    .build_hasher()
                    .finish()
                    | 1
            }
        };
        eprintln!("kill test seed: KILL_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn kill(mut child: Child) {
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// The first byte a request asked for.
fn range_start(range: Option<&str>) -> u64 {
    range
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse().ok())
        .unwrap_or(0)
}

#[test]
fn killed_agent_resumes_from_its_record_and_finishes() {
    const SIZE: usize = 3 * 1024 * 1024;
    const CHECKPOINT: u64 = 256 * 1024;
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(SIZE);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    // Slow enough (about 1.5 s per whole image) to be killed in the middle.
    let slow = sim.set_fault(&info, Fault::RateLimit(2_000_000), Times::Always);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, &info, dir.path(), CHECKPOINT);
    let mut rng = Rng::new();

    // (bytes in the staging file when killed, index of the next run's first request)
    let mut kills: Vec<(u64, usize)> = Vec::new();
    let mut extent = 0u64; // the staging file's length so far
    for round in 1..=3 {
        let first_request = sim.downloads(&info).len();
        if let Some(last) = kills.last_mut() {
            *last = (last.0, first_request);
        }
        let child = agent(&config, &info.device_secret).spawn().unwrap();
        // Wait until this run's download really flows, then kill it at a random moment
        // (the pause picks the kill point; it synchronises nothing).
        // The staging file only grows, so its length says what this run wrote only once
        // the run got past the previous runs: wait for a progress report beyond them (a
        // step is reported once its bytes are staged, at most one write block ahead of the
        // file), then pick a random kill moment.
        let beyond = (extent + 32 * 1024) * 100 / SIZE as u64 + 1;
        let mut steps = sim.progress_steps(&info);
        let first_new = steps.len();
        while !steps[first_new..].iter().any(|s| *s >= beyond as i64) {
            steps = sim.wait_progress(&info, steps.len() + 1, WAIT).unwrap();
        }
        std::thread::sleep(Duration::from_millis(rng.below(300)));
        kill(child);
        let written = std::fs::metadata(dir.path().join("staging.img")).map_or(0, |m| m.len());
        assert!(
            written > extent,
            "round {round} wrote past the earlier runs"
        );
        extent = written;
        eprintln!("round {round}: killed with {written} bytes in the staging file");
        kills.push((written, usize::MAX));
    }
    if let Some(last) = kills.last_mut() {
        *last = (last.0, sim.downloads(&info).len());
    }
    let mut child = agent(&config, &info.device_secret).spawn().unwrap();
    let done = sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT);
    child.kill().unwrap();
    child.wait().unwrap();
    done.unwrap();
    assert!(sim.fault_fired(slow) >= 4);
    assert_eq!(
        std::fs::read(dir.path().join("firmware.img")).unwrap(),
        data
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("version")).unwrap(),
        "2.0.0\n"
    );

    // Each restart resumed from its record: the bytes fetched again are those between the
    // resume point and what the killed run had written, at most one checkpoint interval.
    let records = sim.downloads(&info);
    let starts: Vec<u64> = records
        .iter()
        .map(|r| range_start(r.range.as_deref()))
        .collect();
    eprintln!("requests started at {starts:?}");
    assert!(records.iter().all(|r| r.status == 200 || r.status == 206));
    assert!(
        starts.iter().all(|s| s % 16384 == 0),
        "whole blocks: {starts:?}"
    );
    // The cloud heard every step once, in increasing order, across the kills.
    assert_strictly_increasing(&sim.progress_steps(&info));
    for (written, next) in kills {
        let resumed = starts[next];
        let reloaded = written.saturating_sub(resumed);
        eprintln!("wrote {written}, resumed at {resumed}: {reloaded} bytes again");
        assert!(reloaded <= CHECKPOINT, "re-downloaded {reloaded} bytes");
        assert!(
            written < CHECKPOINT || resumed > 0,
            "resumed, not restarted"
        );
    }
}

/// docs/protocol.md §4: never backwards, never twice the same.
fn assert_strictly_increasing(steps: &[i64]) {
    assert!(
        steps.windows(2).all(|w| w[0] < w[1]),
        "steps not strictly increasing: {steps:?}"
    );
}

/// A device with a 3 MiB image waiting for it, served at 2 MB/s.
struct SlowUpgrade {
    sim: Sim,
    info: DeviceInfo,
    data: Vec<u8>,
    job: ota_sim::JobId,
    dir: tempfile::TempDir,
}

fn slow_upgrade() -> SlowUpgrade {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(3 * 1024 * 1024);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    sim.set_fault(&info, Fault::RateLimit(2_000_000), Times::Always);
    let dir = tempfile::tempdir().unwrap();
    SlowUpgrade {
        sim,
        info,
        data,
        job,
        dir,
    }
}

fn exit_code(mut child: Child) -> Option<i32> {
    child.wait().unwrap().code()
}

#[test]
fn a_3_mib_image_on_a_slow_link_shows_its_progress_and_once_exits_0() {
    let up = slow_upgrade();
    // ota-std's default checkpoint (4 MiB) is larger than the image: reports must not wait
    // for it.
    let config = write_config(&up.sim, &up.info, up.dir.path(), 4 * 1024 * 1024);
    let child = agent(&config, &up.info.device_secret)
        .arg("--exit-after-install")
        .spawn()
        .unwrap();
    assert_eq!(exit_code(child), Some(0));
    up.sim
        .wait_task_state(up.job, &up.info, TaskState::Succeeded, WAIT)
        .unwrap();
    let steps = up.sim.progress_steps(&up.info);
    eprintln!("steps the cloud heard: {steps:?}");
    assert_strictly_increasing(&steps);
    let intermediate = steps.iter().filter(|s| (2..100).contains(*s)).count();
    assert!(intermediate >= 5, "{steps:?}");
    assert_eq!(
        std::fs::read(up.dir.path().join("firmware.img")).unwrap(),
        up.data
    );
}

#[test]
fn sigterm_stops_mid_download_with_0_and_the_restart_resumes() {
    const CHECKPOINT: u64 = 256 * 1024;
    let up = slow_upgrade();
    let config = write_config(&up.sim, &up.info, up.dir.path(), CHECKPOINT);
    let child = agent(&config, &up.info.device_secret).spawn().unwrap();
    // Past a third of the image: several checkpoints are durable.
    let mut steps = up.sim.wait_progress(&up.info, 1, WAIT).unwrap();
    while !steps.iter().any(|s| *s >= 35) {
        steps = up
            .sim
            .wait_progress(&up.info, steps.len() + 1, WAIT)
            .unwrap();
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(exit_code(child), Some(0), "SIGTERM ends the agent with 0");
    let written = std::fs::metadata(up.dir.path().join("staging.img"))
        .unwrap()
        .len();
    assert!(
        up.dir.path().join("ota.record").exists(),
        "the record stays"
    );
    let requests_before = up.sim.downloads(&up.info).len();

    let child = agent(&config, &up.info.device_secret)
        .arg("--once")
        .spawn()
        .unwrap();
    assert_eq!(exit_code(child), Some(0));
    let downloads = up.sim.downloads(&up.info);
    let resumed = range_start(downloads[requests_before].range.as_deref());
    assert!(
        resumed > 0 && written.saturating_sub(resumed) <= CHECKPOINT,
        "wrote {written} before SIGTERM, resumed at {resumed}"
    );
    up.sim
        .wait_task_state(up.job, &up.info, TaskState::Succeeded, WAIT)
        .unwrap();
    assert_strictly_increasing(&up.sim.progress_steps(&up.info));
    assert_eq!(
        std::fs::read(up.dir.path().join("firmware.img")).unwrap(),
        up.data
    );
}

#[test]
fn exit_after_install_exits_with_the_failure_code() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(100_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let corrupt = sim.set_fault(&info, Fault::CorruptByte(5000), Times::Always);
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, &info, dir.path(), 65536);
    let child = agent(&config, &info.device_secret)
        .arg("--exit-after-install")
        .spawn()
        .unwrap();
    assert_eq!(exit_code(child), Some(3), "a -3 exits with 3");
    assert!(sim.fault_fired(corrupt) >= 1);
    sim.wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert_eq!(sim.progress_steps(&info).last(), Some(&-3));
    assert!(!dir.path().join("firmware.img").exists());
}

/// Every numeric option, flag or config-file key, is checked at start-up: an out-of-range
/// value is one line naming the option, before any connection (the broker here is closed),
/// never a panic, a hang or a wrapped value.
#[test]
fn every_numeric_option_out_of_range_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let p = |name: &str| dir.path().join(name).display().to_string();
    let base = [
        "--product-key=a1TestPK001".to_owned(),
        "--device-name=dev01".to_owned(),
        "--device-secret=s".to_owned(),
        format!("--endpoint=127.0.0.1:{port}"),
        "--tls=false".to_owned(),
        "--running-version=1.0.0".to_owned(),
        format!("--staging={}", p("staging.img")),
        format!("--record={}", p("ota.record")),
        format!("--target={}", p("firmware.img")),
    ];
    let max64 = u64::MAX.to_string();
    let cases: &[(&str, &str)] = &[
        ("stall-timeout", &max64),
        ("stall-timeout", "0"),
        ("health-timeout", &max64),
        ("health-timeout", "0"),
        ("checkpoint-interval", &max64),
        ("checkpoint-interval", "0"),
        ("write-block", &max64),
        ("write-block", "0"),
        ("write-block", "1048577"),
        ("write-buffers", "0"),
        ("write-buffers", "17"),
        ("write-buffers", &max64),
        ("retry-attempts", "4294967295"),
        ("url-refresh-attempts", "4294967295"),
        ("mqtt-block-size", "0"),
        ("mqtt-block-size", "65537"),
        ("mqtt-block-size", "4294967295"),
        ("mqtt-window", "0"),
    ];
    for (flag, value) in cases {
        let output = Command::new(AGENT)
            .args(&base)
            .arg(format!("--{flag}={value}"))
            .output()
            .unwrap();
        let stderr = one_line_error(&output);
        let key = flag.replace('-', "_");
        assert!(stderr.contains(&key), "--{flag}={value}: {stderr}");
        assert!(
            !stderr.contains("broker"),
            "checked before connecting: {stderr}"
        );
    }
    // Values clap cannot hold are its one-line usage errors.
    for arg in [
        "--mqtt-window=256",
        "--stall-timeout=18446744073709551616",
        "--retry-attempts=-1",
    ] {
        let output = Command::new(AGENT).args(&base).arg(arg).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{arg}");
        one_line_error(&output);
    }
    // The same check for the config file, and for the endpoint's port.
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "stall_timeout = 9223372036854775807\n").unwrap();
    let output = Command::new(AGENT)
        .args(&base)
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert!(one_line_error(&output).contains("stall_timeout"));
    let mut port_0 = base.clone();
    port_0[3] = "--endpoint=127.0.0.1:0".to_owned();
    let output = Command::new(AGENT).args(&port_0).output().unwrap();
    assert!(one_line_error(&output).contains("host:port"));
}

/// A verdict the agent finds at boot, before its session is up (here: the activation
/// command left 1.0.0 running, so the boot after it reports the rollback), is published
/// before `--exit-after-install` exits: the cloud hears the -1, and the exit code says 1.
#[test]
fn exit_after_install_publishes_a_verdict_found_at_boot() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(50_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "activate_command = \"true\"\nwrite_block = 16384";
    let config = common::write_config(&sim, &info, dir.path(), extra);
    let child = agent(&config, &info.device_secret)
        .arg("--exit-after-install")
        .spawn()
        .unwrap();
    assert_eq!(exit_code(child), Some(1));
    sim.wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    let steps = sim.progress_steps(&info);
    assert_eq!(steps.last(), Some(&-1), "{steps:?}");
    let last = sim.progress(&info).pop().unwrap();
    assert!(
        last.desc
            .as_deref()
            .is_some_and(|d| d.contains("rolled back")),
        "{last:?}"
    );
    assert!(!dir.path().join("ota.record").exists());
}
