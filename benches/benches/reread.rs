//! What re-reading the slot costs in the core, with its reads served from a staging file the
//! way ota-std serves them (open, pread; the page cache holds the file): the resume re-hash
//! of a staged prefix (from the record to the first fetch) and the read-back of a whole image
//! before activation, each against bare md-5 over the same bytes in memory, in the same run,
//! best of several rounds.
//!
//! `OTA_BENCH_MIB` sets the image size (default 64; the prefix is half of it),
//! `OTA_BENCH_ROUNDS` the rounds (default 5), `OTA_BENCH_DIR` where the file goes.

// Only the bench directory and the environment knobs of the shared helpers are used here.
#[allow(dead_code)]
mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{bench_dir, env_or};
use md5::{Digest, Md5};
use ota_benches::{agent_ready, agent_ready_with, image, push_for, Method};
use ota_core::{Action, Agent, Boot, Config, DeviceIdentity, Event, Instant as At};

const BLOCK: usize = 64 * 1024;
const TOPIC: &str = "/ota/device/upgrade/a1TestPK001/dev01";

/// Serves a `Read` from the staging file as ota-std does.
fn read(path: &Path, offset: u64, buf: &mut [u8]) -> Event<'static> {
    let file = File::open(path).expect("staging file");
    let len = file.read_at(buf, offset).expect("read");
    Event::ReadDone { len }
}

/// Performs the queued actions (reads from `path`, other storage answered at once); returns
/// true when a fetch was asked for.
fn drain(agent: &mut Agent, path: &Path) -> bool {
    let mut fetched = false;
    loop {
        let mut result = None;
        while let Some(action) = agent.poll_action() {
            match action {
                Action::Read { offset, buf } => result = Some(read(path, offset, buf)),
                Action::Write { .. } => result = Some(Event::WriteDone),
                Action::SaveRecord { .. } | Action::ClearRecord => {
                    result = Some(Event::RecordSaved)
                }
                Action::Activate { .. } => result = Some(Event::Activated),
                Action::Fetch { .. } => fetched = true,
                _ => {}
            }
        }
        match result {
            Some(event) => agent.handle(At::ZERO, event).expect("storage result"),
            None => return fetched,
        }
    }
}

/// The record an agent saves after `prefix` bytes of `data` (a checkpoint at the prefix).
fn record_at(push: &str, data: &[u8], prefix: usize) -> Vec<u8> {
    let (mut agent, fetch) = agent_ready(push, BLOCK);
    let mut record = Vec::new();
    for piece in data[..prefix].chunks(BLOCK) {
        let mut at = 0;
        while at < piece.len() {
            at += agent
                .handle_body(At::ZERO, fetch, &piece[at..])
                .expect("body");
            loop {
                let mut result = None;
                while let Some(action) = agent.poll_action() {
                    match action {
                        Action::Write { .. } => result = Some(Event::WriteDone),
                        Action::SaveRecord { record: r } => {
                            record = r.to_vec();
                            result = Some(Event::RecordSaved)
                        }
                        _ => {}
                    }
                }
                match result {
                    Some(event) => agent.handle(At::ZERO, event).expect("result"),
                    None => break,
                }
            }
        }
    }
    record
}

fn config(read_back: bool) -> Config {
    let mut config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01").expect("identity"));
    config.write_block = BLOCK;
    config.checkpoint_interval = 1024 * 1024;
    config.read_back = read_back;
    config
}

/// From boot with the record to the first fetch: the prefix is read back and re-hashed.
fn resume(push: &str, record: &[u8], path: &Path) -> Duration {
    let boot = Boot {
        running_version: "1.0.0",
        record: Some(record),
    };
    let mut agent = Agent::new(config(true), boot, At::ZERO).expect("agent");
    agent.handle(At::ZERO, Event::Connected).expect("connect");
    while agent.poll_action().is_some() {}
    let start = Instant::now();
    let message = Event::Message {
        topic: TOPIC,
        payload: push.as_bytes(),
    };
    agent.handle(At::ZERO, message).expect("push");
    assert!(drain(&mut agent, path), "the download resumed");
    start.elapsed()
}

/// A whole download in memory, then its read-back from the file (`read_back`), to the
/// activation; the time of the download alone is what `read_back: false` takes.
fn download(push: &str, data: &[u8], path: &Path, read_back: bool) -> Duration {
    let (mut agent, fetch) = agent_ready_with(push, BLOCK, read_back);
    let start = Instant::now();
    for piece in data.chunks(BLOCK) {
        let mut at = 0;
        while at < piece.len() {
            at += agent
                .handle_body(At::ZERO, fetch, &piece[at..])
                .expect("body");
            drain(&mut agent, path);
        }
    }
    let elapsed = start.elapsed();
    assert!(
        agent.is_image_verified(),
        "verified (read back: {read_back})"
    );
    elapsed
}

fn bare_md5(data: &[u8]) -> Duration {
    let start = Instant::now();
    let mut h = Md5::new();
    for piece in data.chunks(BLOCK) {
        h.update(piece);
    }
    std::hint::black_box(h.finalize());
    start.elapsed()
}

fn mib_per_s(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / (1024.0 * 1024.0) / t.as_secs_f64()
}

fn main() {
    let smoke = !std::env::args().any(|a| a == "--bench");
    let mib = env_or("OTA_BENCH_MIB", if smoke { 2 } else { 64 });
    let rounds = env_or("OTA_BENCH_ROUNDS", if smoke { 1 } else { 5 });
    let size = mib * 1024 * 1024;
    let prefix = size / 2;
    let data = image(size);
    let push = push_for(&data, Method::Md5);
    let dir = tempfile::tempdir_in(bench_dir()).expect("bench dir");
    let path = dir.path().join("staging.img");
    std::fs::write(&path, &data).expect("staging file");
    let record = record_at(&push, &data, prefix);
    println!(
        "reread: {mib} MiB image, {} MiB prefix, {rounds} rounds, file in {}",
        prefix >> 20,
        dir.path().display()
    );
    let best = |f: &mut dyn FnMut() -> Duration| (0..rounds).map(|_| f()).min().expect("rounds");
    let bare_prefix = best(&mut || bare_md5(&data[..prefix]));
    let rehash = best(&mut || resume(&push, &record, &path));
    let bare_image = best(&mut || bare_md5(&data));
    let without = best(&mut || download(&push, &data, &path, false));
    let with = best(&mut || download(&push, &data, &path, true));
    println!("best of {rounds}:");
    println!(
        "  resume re-hash of the prefix  {:8.1} MiB/s  {:6.1} ms  ({:.3} x the time of bare md-5 over it)",
        mib_per_s(prefix, rehash),
        rehash.as_secs_f64() * 1e3,
        rehash.as_secs_f64() / bare_prefix.as_secs_f64()
    );
    let read_back = with.saturating_sub(without);
    println!(
        "  read-back of the image        {:8.1} MiB/s  {:6.1} ms  ({:.3} x bare md-5; the download takes {:.3} x its time without)",
        mib_per_s(size, read_back),
        read_back.as_secs_f64() * 1e3,
        read_back.as_secs_f64() / bare_image.as_secs_f64(),
        with.as_secs_f64() / without.as_secs_f64()
    );
}
