//! End to end: a 256 MiB image from the simulator's firmware server through ota-std (HTTP
//! read on one thread; MD5 and progress on the agent thread, staging writes on the writer
//! thread; fsync and rename at the end), against bare md-5 over the same bytes and against
//! `curl -s URL | tee FILE | md5sum`, all in the same run, best of several rounds each,
//! interleaved so that all see the same machine state.
//!
//! `OTA_BENCH_MIB` changes the size, `OTA_BENCH_ROUNDS` the rounds, `OTA_BENCH_DIR` where the
//! files go (default: /dev/shm when present, so that the disk is not what is measured).
//! `OTA_BENCH_VARIANTS` adds devices with other settings to every round (`;` between
//! variants, e.g. `write_block=65536,write_buffers=2;checkpoint=67108864`: see [`Variant`]),
//! each timed against ota-std's defaults in rotating order; `OTA_BENCH_READ_BACK=1` adds
//! `read_back=true`. `OTA_BENCH_ONLY=1` runs the last of them alone (no md-5, no curl), for
//! `perf record` and `strace`.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bench_dir, env_or, upgrade};
use md5::{Digest, Md5};
use ota_sim::{PackageId, PackageSpec, Sim, SimConfig};
use ota_std::DeviceConfig;

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

/// Settings of the device under test that differ from ota-std's defaults, e.g.
/// `write_block=262144,write_buffers=3` (also `read_buffer`, `checkpoint`, `progress_step`,
/// `read_back=true`).
#[derive(Clone, Debug, Default)]
struct Variant(Vec<(String, String)>);

impl Variant {
    fn parse(text: &str) -> Variant {
        Variant(
            text.split(',')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').expect("key=value");
                    (k.trim().to_owned(), v.trim().to_owned())
                })
                .collect(),
        )
    }

    fn apply(&self, config: &mut DeviceConfig) {
        for (key, value) in &self.0 {
            let n = || value.parse::<usize>().expect("a number");
            match key.as_str() {
                "write_block" => config.agent.write_block = n(),
                "write_buffers" => config.agent.write_buffers = n(),
                "checkpoint" => config.agent.checkpoint_interval = n() as u64,
                "progress_step" => config.agent.progress_step = n() as u8,
                "read_buffer" => config.read_buffer = n(),
                "read_back" => config.agent.read_back = value == "true",
                other => panic!("unknown setting {other}"),
            }
        }
    }

    fn name(&self) -> String {
        if self.0.is_empty() {
            return "default".into();
        }
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
        parts.join(",")
    }
}

/// One device upgraded through ota-std with `variant`'s settings; timed from the task's
/// arrival to the image being verified, written, synced, (read back) and activated.
fn agent_run(
    sim: &Sim,
    package: PackageId,
    dir: &Path,
    data: &[u8],
    variant: &Variant,
) -> Duration {
    let run = upgrade(sim, package, dir, data, |config| variant.apply(config));
    let updates = run.progress_events;
    assert!(updates > 0, "progress was shown");
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

    // The device under test: ota-std's defaults, and each variant of OTA_BENCH_VARIANTS
    // (`;` between variants), all in every round, in rotating order.
    let mut variants = vec![Variant::default()];
    if let Ok(list) = std::env::var("OTA_BENCH_VARIANTS") {
        variants.extend(
            list.split(';')
                .filter(|v| !v.is_empty())
                .map(Variant::parse),
        );
    }
    if std::env::var("OTA_BENCH_READ_BACK").is_ok_and(|v| v == "1") {
        variants.push(Variant::parse("read_back=true"));
    }
    let run = |variant: &Variant| {
        let dir = tempfile::tempdir_in(&base).expect("bench dir");
        agent_run(&sim, package, dir.path(), &data, variant)
    };
    if std::env::var("OTA_BENCH_ONLY").is_ok_and(|v| v == "1") {
        // One variant alone (the last given), for `perf record` and `strace`.
        let variant = variants.last().expect("the default");
        for round in 1..=rounds {
            let t = run(variant);
            println!(
                "round {round}: ota-std ({}) {:.1} MiB/s",
                variant.name(),
                mib_per_s(size, t)
            );
        }
        return;
    }
    let mut best = vec![Duration::MAX; variants.len()];
    let (mut best_bare, mut best_curl, mut best_source) =
        (Duration::MAX, Duration::MAX, Duration::MAX);
    for round in 1..=rounds {
        let (bare, hex) = bare_md5(&data);
        assert_eq!(hex, digest);
        let mut line = format!("round {round}: bare md5 {:.1} MiB/s", mib_per_s(size, bare));
        best_bare = best_bare.min(bare);
        let n = variants.len();
        for i in (0..n).map(|i| (i + round - 1) % n) {
            let t = run(&variants[i]);
            best[i] = best[i].min(t);
            line += &format!(
                ", ota-std ({}) {:.1}",
                variants[i].name(),
                mib_per_s(size, t)
            );
        }
        if curl {
            let dir = tempfile::tempdir_in(&base).expect("bench dir");
            if let Some(t) = curl_run(&sim, package, dir.path(), &digest) {
                best_curl = best_curl.min(t);
                line += &format!(", curl|tee|md5sum {:.1}", mib_per_s(size, t));
            }
            if let Some(t) = source_run(&sim, package, dir.path()) {
                best_source = best_source.min(t);
            }
        }
        println!("{line} (MiB/s)");
    }
    println!("best of {rounds}:");
    println!(
        "  bare md-5             {:8.1} MiB/s",
        mib_per_s(size, best_bare)
    );
    if best_curl != Duration::MAX {
        println!(
            "  curl | tee | md5sum   {:8.1} MiB/s",
            mib_per_s(size, best_curl)
        );
        println!(
            "  (source: curl -o /dev/null {:.1} MiB/s)",
            mib_per_s(size, best_source)
        );
    }
    for (variant, t) in variants.iter().zip(&best) {
        println!(
            "  ota-std ({}) {:.1} MiB/s",
            variant.name(),
            mib_per_s(size, *t)
        );
        let vs_md5 = best_bare.as_secs_f64() / t.as_secs_f64();
        println!("    ratio / bare md-5         {vs_md5:.3} (goal >= 0.85, issue #21)");
        if best_curl != Duration::MAX {
            let vs_curl = best_curl.as_secs_f64() / t.as_secs_f64();
            println!("    ratio / curl pipeline     {vs_curl:.3} (goal >= 1.05, issue #21)");
        }
        if !variant.0.is_empty() {
            let vs_default = best[0].as_secs_f64() / t.as_secs_f64();
            println!("    ratio / default (speed)   {vs_default:.3}");
        }
    }
}
