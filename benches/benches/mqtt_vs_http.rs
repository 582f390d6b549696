//! The same image over the MQTT channel and over HTTP, through ota-std against the
//! simulator, in the same run: MQTT with blocks of 4 KiB and 16 KiB and windows of 1 and 4
//! requests in flight, each as a ratio to HTTP. Timed from the task's arrival to the image
//! being verified, written, synced and activated; best of several rounds, interleaved.
//!
//! `OTA_BENCH_MIB` changes the size (MQTT images are at most 16 MB), `OTA_BENCH_ROUNDS` the
//! rounds, `OTA_BENCH_DIR` where the files go (default: /dev/shm when present).

mod common;

use std::path::Path;
use std::time::Duration;

use common::{bench_dir, env_or, upgrade};
use ota_sim::{PackageId, PackageSpec, Sim, SimConfig};

/// How a run fetches the image: HTTP, or MQTT with (block size, window).
#[derive(Clone, Copy)]
enum Channel {
    Http,
    Mqtt { block: u32, window: u8 },
}

impl Channel {
    fn name(self) -> String {
        match self {
            Channel::Http => "http".into(),
            Channel::Mqtt { block, window } => {
                format!("mqtt {:2} KiB x{window}", block / 1024)
            }
        }
    }
}

/// One device upgraded through ota-std over `channel`.
fn run(sim: &Sim, package: PackageId, channel: Channel, dir: &Path, data: &[u8]) -> Duration {
    let run = upgrade(sim, package, dir, data, |config| {
        if let Channel::Mqtt { block, window } = channel {
            config.agent.mqtt.block_size = block;
            config.agent.mqtt.window = window;
        }
    });
    assert!(
        run.progress_events > 0,
        "{}: progress was shown",
        channel.name()
    );
    run.elapsed
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64()
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` runs a small smoke run.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mib = env_or("OTA_BENCH_MIB", if smoke { 1 } else { 4 });
    let rounds = env_or("OTA_BENCH_ROUNDS", if smoke { 1 } else { 3 });
    let size = mib * 1024 * 1024;
    let data = ota_benches::image(size);
    let sim = Sim::start(SimConfig::default()).expect("simulator");
    let http = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .expect("http package");
    let mqtt = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()).mqtt())
        .expect("mqtt package");
    let channels = [
        Channel::Http,
        Channel::Mqtt {
            block: 4096,
            window: 1,
        },
        Channel::Mqtt {
            block: 4096,
            window: 4,
        },
        Channel::Mqtt {
            block: 16384,
            window: 1,
        },
        Channel::Mqtt {
            block: 16384,
            window: 4,
        },
    ];
    let base = bench_dir();
    println!(
        "mqtt_vs_http: {mib} MiB image, {rounds} rounds, files in {}",
        base.display()
    );
    let mut best = vec![Duration::MAX; channels.len()];
    for round in 1..=rounds {
        let mut line = format!("round {round}:");
        for (i, channel) in channels.iter().enumerate() {
            let dir = tempfile::tempdir_in(&base).expect("bench dir");
            let package = match channel {
                Channel::Http => http,
                Channel::Mqtt { .. } => mqtt,
            };
            let t = run(&sim, package, *channel, dir.path(), &data);
            line += &format!("  {} {:.1} MiB/s", channel.name(), mib_per_s(size, t));
            best[i] = best[i].min(t);
        }
        println!("{line}");
    }
    println!("best of {rounds}:");
    let http_time = best[0];
    for (channel, t) in channels.iter().zip(&best) {
        let ratio = http_time.as_secs_f64() / t.as_secs_f64();
        println!(
            "  {:18} {:8.2} MiB/s  {:6.3} s  speed ratio to http {ratio:.3}",
            channel.name(),
            mib_per_s(size, *t),
            t.as_secs_f64()
        );
    }
}
