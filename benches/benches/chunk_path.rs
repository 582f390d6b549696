//! The agent's chunk path against the bare digest on the same bytes, in the same run.
//!
//! criterion measures each variant; a final pass times them interleaved (best of several
//! rounds, so that both see the same machine state) and prints agent/bare throughput ratios.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use ota_benches::{
    agent_ready, bare_digest, copied_digest, download, download_lent, image, push_for, Method,
};

const IMAGE_LEN: usize = 8 * 1024 * 1024;
const CHUNKS: [usize; 3] = [1024, 4096, 64 * 1024];
const WRITE_BLOCK: usize = 4096;

fn criterion_benches(c: &mut Criterion, data: &[u8]) {
    for method in [Method::Md5, Method::Sha256] {
        let push = push_for(data, method);
        let mut group = c.benchmark_group(format!("chunk_path_{method:?}").to_lowercase());
        group.throughput(Throughput::Bytes(data.len() as u64));
        group.sample_size(20);
        group.measurement_time(Duration::from_secs(4));
        for chunk in CHUNKS {
            group.bench_with_input(BenchmarkId::new("bare", chunk), &chunk, |b, &chunk| {
                b.iter(|| black_box(bare_digest(black_box(data), chunk, method)))
            });
            group.bench_with_input(BenchmarkId::new("agent", chunk), &chunk, |b, &chunk| {
                b.iter_batched(
                    || agent_ready(&push, WRITE_BLOCK),
                    |(mut agent, fetch)| {
                        assert!(download(&mut agent, fetch, black_box(data), chunk))
                    },
                    criterion::BatchSize::LargeInput,
                )
            });
        }
        group.finish();
    }
}

fn best_of(rounds: usize, mut f: impl FnMut() -> Duration) -> Duration {
    (0..rounds).map(|_| f()).min().unwrap_or_default()
}

fn ratios(data: &[u8]) {
    println!("\nratio = agent throughput / bare digest throughput (same bytes, same chunks, interleaved best of 15)");
    println!("agent: handle_body (copies into the staging block); lent: body_buffer + body_filled (the bytes are copied into the lent block, as a socket read would put them, and hashed there)");
    println!("copy+digest: the bare digest of the bytes copied chunk by chunk into a buffer first, as any reader of a socket gets them (the floor for the lent path, whose copy stands for that read)");
    for method in [Method::Md5, Method::Sha256] {
        let push = push_for(data, method);
        for chunk in CHUNKS {
            let (mut bare, mut agent, mut lent) = (Duration::MAX, Duration::MAX, Duration::MAX);
            let mut copied = Duration::MAX;
            for _ in 0..15 {
                bare = bare.min(best_of(1, || {
                    let t = Instant::now();
                    black_box(bare_digest(black_box(data), chunk, method));
                    t.elapsed()
                }));
                copied = copied.min(best_of(1, || {
                    let t = Instant::now();
                    black_box(copied_digest(black_box(data), chunk, WRITE_BLOCK, method));
                    t.elapsed()
                }));
                let (mut a, fetch) = agent_ready(&push, WRITE_BLOCK);
                let t = Instant::now();
                assert!(download(&mut a, fetch, black_box(data), chunk));
                agent = agent.min(t.elapsed());
                let (mut a, fetch) = agent_ready(&push, WRITE_BLOCK);
                let t = Instant::now();
                assert!(download_lent(&mut a, fetch, black_box(data), chunk));
                lent = lent.min(t.elapsed());
            }
            let mib = data.len() as f64 / (1024.0 * 1024.0);
            println!(
                "{:<7} chunk {:>6} B: bare {:>7.1} MiB/s, agent {:>7.1} MiB/s, ratio {:.3}; lent {:>7.1} MiB/s, ratio {:.3}; copy+digest {:>7.1} MiB/s, lent / copy+digest {:.3}",
                format!("{method:?}"),
                chunk,
                mib / bare.as_secs_f64(),
                mib / agent.as_secs_f64(),
                bare.as_secs_f64() / agent.as_secs_f64(),
                mib / lent.as_secs_f64(),
                bare.as_secs_f64() / lent.as_secs_f64(),
                mib / copied.as_secs_f64(),
                copied.as_secs_f64() / lent.as_secs_f64()
            );
        }
    }
}

fn main() {
    let data = image(IMAGE_LEN);
    let mut c = Criterion::default().configure_from_args();
    criterion_benches(&mut c, &data);
    c.final_summary();
    ratios(&data);
}
