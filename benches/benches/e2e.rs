//! End to end: a 256 MiB image from the simulator's firmware server through ota-std (the
//! body read into the lent staging block on the agent thread, ota-std's default, and read on
//! a reader thread then copied, `BodyRead::Thread`; MD5 and progress on the agent thread,
//! staging writes on the writer thread; fsync and rename at the end), against bare md-5 over
//! the same bytes and against `curl -s URL | tee FILE | md5sum`, all in the same run, best of
//! several rounds each, interleaved so that all see the same machine state.
//!
//! `OTA_BENCH_MIB` changes the size, `OTA_BENCH_ROUNDS` the rounds, `OTA_BENCH_DIR` where the
//! files go (default: /dev/shm when present, so that the disk is not what is measured).
//! `OTA_BENCH_ONLY=lent` (or `thread`) runs that ota-std path alone, for `perf` and `strace`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bench_dir, env_or, upgrade};
use md5::{Digest, Md5};
use ota_sim::{PackageId, PackageSpec, Sim, SimConfig};
use ota_std::BodyRead;

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

/// One device upgraded through ota-std with the body read as `body_read`; timed from the
/// task's arrival to the image being verified, written, synced, read back (when `read_back`;
/// `None`: ota-std's default, off) and activated.
fn agent_run(
    sim: &Sim,
    package: PackageId,
    dir: &Path,
    data: &[u8],
    body_read: BodyRead,
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
        config.body_read = body_read;
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

    let (mut best_bare, mut best_lent, mut best_thread, mut best_curl, mut best_source) = (
        Duration::MAX,
        Duration::MAX,
        Duration::MAX,
        Duration::MAX,
        Duration::MAX,
    );
    let mut best_read_back = Duration::MAX;
    let run = |body_read, read_back| {
        let dir = tempfile::tempdir_in(&base).expect("bench dir");
        agent_run(&sim, package, dir.path(), &data, body_read, read_back)
    };
    let only = match std::env::var("OTA_BENCH_ONLY").as_deref() {
        Ok("lent") => Some(BodyRead::Lent),
        Ok("thread") => Some(BodyRead::Thread),
        _ => None,
    };
    if let Some(body_read) = only {
        for round in 1..=rounds {
            let t = run(body_read, None);
            println!(
                "round {round}: ota-std {body_read:?} {:.1} MiB/s",
                mib_per_s(size, t)
            );
        }
        return;
    }
    for round in 1..=rounds {
        let (bare, hex) = bare_md5(&data);
        assert_eq!(hex, digest);
        // The two body paths in alternating order, so that neither always runs first.
        let (lent, thread) = if round % 2 == 1 {
            let lent = run(BodyRead::Lent, None);
            (lent, run(BodyRead::Thread, None))
        } else {
            let thread = run(BodyRead::Thread, None);
            (run(BodyRead::Lent, None), thread)
        };
        let read_back = run(BodyRead::Lent, Some(true));
        let dir = tempfile::tempdir_in(&base).expect("bench dir");
        let (piped, source) = if curl {
            (
                curl_run(&sim, package, dir.path(), &digest),
                source_run(&sim, package, dir.path()),
            )
        } else {
            (None, None)
        };
        println!(
            "round {round}: bare md5 {:.1} MiB/s, ota-std lent {:.1} MiB/s, thread {:.1} MiB/s (lent with --read-back true {:.1}), curl|tee|md5sum {}",
            mib_per_s(size, bare),
            mib_per_s(size, lent),
            mib_per_s(size, thread),
            mib_per_s(size, read_back),
            piped.map_or("-".into(), |t| format!("{:.1} MiB/s", mib_per_s(size, t))),
        );
        best_bare = best_bare.min(bare);
        best_lent = best_lent.min(lent);
        best_thread = best_thread.min(thread);
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
        "  bare md-5                  {:8.1} MiB/s",
        mib_per_s(size, best_bare)
    );
    let paths = [
        ("lent block (default)", best_lent),
        ("reader thread", best_thread),
    ];
    for (name, best) in paths {
        println!("  ota-std, {name:20} {:8.1} MiB/s", mib_per_s(size, best));
    }
    println!(
        "  ota-std, lent, read_back on {:7.1} MiB/s",
        mib_per_s(size, best_read_back)
    );
    let read_back_cost = best_read_back.as_secs_f64() / best_lent.as_secs_f64();
    println!("  ratio time with read-back / without {read_back_cost:.3} (its cost)");
    println!(
        "  ratio lent block / reader thread     {:.3} (above 1: the lent block is faster)",
        best_thread.as_secs_f64() / best_lent.as_secs_f64()
    );
    for (name, best) in paths {
        let vs_md5 = best_bare.as_secs_f64() / best.as_secs_f64();
        println!(
            "  ratio ota-std ({name}) / bare md-5       {vs_md5:.3} (goal >= 0.85, issue #21)"
        );
        if best_curl != Duration::MAX {
            let vs_curl = best_curl.as_secs_f64() / best.as_secs_f64();
            println!(
                "  ratio ota-std ({name}) / curl pipeline   {vs_curl:.3} (goal >= 1.05, issue #21)"
            );
        }
    }
    if best_curl != Duration::MAX {
        println!(
            "  curl | tee | md5sum  {:8.1} MiB/s",
            mib_per_s(size, best_curl)
        );
        println!(
            "  (source: curl -o /dev/null {:.1} MiB/s)",
            mib_per_s(size, best_source)
        );
    }
}
