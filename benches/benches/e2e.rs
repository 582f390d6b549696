//! End to end: a 256 MiB image from the simulator's firmware server through ota-std (HTTP
//! read on one thread; MD5, staging writes and progress on the agent thread; fsync and
//! rename at the end), against bare md-5 over the same bytes and against
//! `curl -s URL | tee FILE | md5sum`, all in the same run, best of several rounds each,
//! interleaved so that all three see the same machine state.
//!
//! `OTA_BENCH_MIB` changes the size, `OTA_BENCH_ROUNDS` the rounds, `OTA_BENCH_DIR` where the
//! files go (default: /dev/shm when present, so that the disk is not what is measured).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bench_dir, env_or, upgrade};
use md5::{Digest, Md5};
use ota_sim::{PackageId, PackageSpec, Sim, SimConfig};

fn md5_hex(data: &[u8]) -> String {
    Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Bare md-5 over the bytes in memory, in 64 KiB updates.
fn bare_md5(data: &[u8]) -> (Duration, String) {
    let start = Instant::now();
    let mut hasher = Md5::new();
    for chunk in data.chunks(64 * 1024) {
        hasher.update(chunk);
    }
    let digest = hasher.finalize();
    let elapsed = start.elapsed();
    (elapsed, digest.iter().map(|b| format!("{b:02x}")).collect())
}

/// One device upgraded through ota-std; timed from the task's arrival to the image being
/// verified, written, synced, read back (when `read_back`; `None`: ota-std's default, off)
/// and activated.
fn agent_run(
    sim: &Sim,
    package: PackageId,
    dir: &Path,
    data: &[u8],
    read_back: Option<bool>,
) -> Duration {
    // OTA_BENCH_WRITE_BUFFERS: staging blocks in flight (ota-std's default when unset).
    let buffers = std::env::var("OTA_BENCH_WRITE_BUFFERS").ok();
    let run = upgrade(sim, package, dir, data, |config| {
        if let Some(n) = buffers.and_then(|n| n.parse().ok()) {
            config.agent.write_buffers = n;
        }
        if let Some(read_back) = read_back {
            config.agent.read_back = read_back;
        }
    });
    let updates = run.progress_events;
    assert!(updates > 10, "progress was shown ({updates} updates)");
    run.elapsed
}

/// Runs a shell pipeline with `$URL` (a fresh signed URL) and `$FILE` set; returns its time
/// and what it printed.
fn shell_run(
    sim: &Sim,
    package: PackageId,
    dir: &Path,
    pipeline: &str,
) -> Option<(Duration, String)> {
    let info = sim.add_device().expect("device");
    let url = sim.signed_url(package, &info).expect("url");
    let file = dir.join("curl.img");
    let start = Instant::now();
    let output = Command::new("sh")
        .arg("-c")
        .arg(pipeline)
        .env("URL", &url)
        .env("FILE", &file)
        .output()
        .ok()?;
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(file);
    Some((
        elapsed,
        String::from_utf8_lossy(&output.stdout).into_owned(),
    ))
}

/// `curl -s URL | tee FILE | md5sum`.
fn curl_run(sim: &Sim, package: PackageId, dir: &Path, expected: &str) -> Option<Duration> {
    let pipeline = r#"curl -s "$URL" | tee "$FILE" | md5sum"#;
    let (elapsed, printed) = shell_run(sim, package, dir, pipeline)?;
    assert!(
        printed.starts_with(expected),
        "curl pipeline md5: {printed}"
    );
    Some(elapsed)
}

/// `curl -s -o /dev/null URL`: how fast the server and loopback deliver, for reference.
fn source_run(sim: &Sim, package: PackageId, dir: &Path) -> Option<Duration> {
    shell_run(sim, package, dir, r#"curl -s -o /dev/null "$URL""#).map(|(t, _)| t)
}

fn has(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs this with no flag: then only
    // a small smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mib = env_or("OTA_BENCH_MIB", if smoke { 4 } else { 256 });
    let rounds = env_or("OTA_BENCH_ROUNDS", if smoke { 1 } else { 5 });
    let size = mib * 1024 * 1024;
    let data = ota_benches::image(size);
    let digest = md5_hex(&data);
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .expect("package");
    let base = bench_dir();
    let curl = has("curl") && has("md5sum") && has("tee");
    println!(
        "e2e: {mib} MiB image, {rounds} rounds, files in {}",
        base.display()
    );
    if !curl {
        println!("curl, tee or md5sum not found: the curl pipeline is skipped");
    }
    if !has("nginx") {
        println!("nginx is not installed: the nginx variant is skipped");
    }

    let (mut best_bare, mut best_agent, mut best_curl, mut best_source) =
        (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let mut best_read_back = Duration::MAX;
    for round in 1..=rounds {
        let (bare, hex) = bare_md5(&data);
        assert_eq!(hex, digest);
        let dir = tempfile::tempdir_in(&base).expect("bench dir");
        let agent = agent_run(&sim, package, dir.path(), &data, None);
        let read_back = {
            let dir = tempfile::tempdir_in(&base).expect("bench dir");
            agent_run(&sim, package, dir.path(), &data, Some(true))
        };
        let (piped, source) = if curl {
            (
                curl_run(&sim, package, dir.path(), &digest),
                source_run(&sim, package, dir.path()),
            )
        } else {
            (None, None)
        };
        println!(
            "round {round}: bare md5 {:.1} MiB/s, ota-std {:.1} MiB/s (with --read-back true {:.1}), curl|tee|md5sum {}",
            mib_per_s(size, bare),
            mib_per_s(size, agent),
            mib_per_s(size, read_back),
            piped.map_or("-".into(), |t| format!("{:.1} MiB/s", mib_per_s(size, t))),
        );
        best_bare = best_bare.min(bare);
        best_agent = best_agent.min(agent);
        best_read_back = best_read_back.min(read_back);
        if let Some(t) = piped {
            best_curl = best_curl.min(t);
        }
        if let Some(t) = source {
            best_source = best_source.min(t);
        }
    }
    println!("best of {rounds}:");
    println!(
        "  bare md-5            {:8.1} MiB/s",
        mib_per_s(size, best_bare)
    );
    println!(
        "  ota-std (sim http)   {:8.1} MiB/s",
        mib_per_s(size, best_agent)
    );
    println!(
        "  ota-std, read_back on {:7.1} MiB/s",
        mib_per_s(size, best_read_back)
    );
    let read_back_cost = best_read_back.as_secs_f64() / best_agent.as_secs_f64();
    println!("  ratio time with read-back / without {read_back_cost:.3} (its cost)");
    let vs_md5 = best_bare.as_secs_f64() / best_agent.as_secs_f64();
    println!("  ratio ota-std / bare md-5        {vs_md5:.3} (goal >= 0.85, issue #21)");
    if best_curl != Duration::MAX {
        println!(
            "  curl | tee | md5sum  {:8.1} MiB/s",
            mib_per_s(size, best_curl)
        );
        let vs_curl = best_curl.as_secs_f64() / best_agent.as_secs_f64();
        println!("  ratio ota-std / curl pipeline    {vs_curl:.3} (goal >= 1.05, issue #21)");
        println!(
            "  (source: curl -o /dev/null {:.1} MiB/s)",
            mib_per_s(size, best_source)
        );
    }
}
