//! The `ota-agent` binary as a process: its command line, its one-line errors, and a
//! download that survives SIGKILL at random points.

use std::hash::{BuildHasher, Hasher};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ota_sim::{DeviceInfo, Fault, JobSpec, PackageSpec, Sim, SimConfig, TaskState, Times};

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");
const WAIT: Duration = Duration::from_secs(30);

fn sim() -> Sim {
    Sim::start(SimConfig::default()).expect("simulator starts")
}

fn image(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A config file for `info` with its files in `dir`; the secret comes from the environment.
fn write_config(sim: &Sim, info: &DeviceInfo, dir: &Path, checkpoint: u64) -> std::path::PathBuf {
    let path = dir.join("agent.toml");
    let text = format!(
        r#"product_key = "{pk}"
device_name = "{dn}"
endpoint = "{host}:{port}"
tls = false
allow_http = true
version_file = "{dir}/version"
staging = "{dir}/staging.img"
record = "{dir}/ota.record"
target = "{dir}/firmware.img"
checkpoint_interval = {checkpoint}
write_block = 16384
stall_timeout = 5
"#,
        pk = info.id.product_key,
        dn = info.id.device_name,
        host = sim.mqtt_host(),
        port = sim.mqtt_port(),
        dir = dir.display(),
    );
    std::fs::write(&path, text).unwrap();
    std::fs::write(dir.join("version"), "1.0.0\n").unwrap();
    path
}

fn agent(config: &Path, secret: &str) -> Command {
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config")
        .arg(config)
        .arg("--progress=false")
        .env("OTA_DEVICE_SECRET", secret)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null());
    cmd
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
        // the run got past the previous runs: wait for a progress report beyond them (the
        // core reports no more than its durable offset), then pick a random kill moment.
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
