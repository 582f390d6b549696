//! The staging ring (`Config::write_buffers`): writes in flight while the next block fills,
//! answered in order; records only after the writes they cover; no byte taken past a
//! checkpoint before its record is queued.

use alloc::vec;

use crate::error::Error;
use crate::record::{Phase as RecordPhase, Record};
use crate::testkit::world::*;

fn ring_world(len: usize, buffers: usize) -> World {
    let mut config = test_config();
    config.write_buffers = buffers;
    let mut w = World::new(config, test_image(len, 9));
    // Storage answers after the network: the agent meets its writes still in flight.
    w.lazy_storage = true;
    w.chunk_sizes = vec![3000, 700, 5000];
    w.offer_task();
    w
}

/// The durable offset of the saved record, 0 when there is none.
fn saved_offset(w: &World) -> u64 {
    match w.record.as_deref().map(Record::decode) {
        Some(Ok(Record {
            phase: RecordPhase::Downloading { offset, .. },
            ..
        })) => offset,
        _ => 0,
    }
}

#[test]
fn with_more_blocks_writes_overlap_and_the_image_is_whole() {
    for buffers in [2, 3] {
        let mut w = ring_world(40_000, buffers);
        w.connect();
        assert_eq!(w.run(), Stop::Reboot, "{buffers} blocks");
        assert_eq!(w.most_writes_in_flight, buffers, "the ring was filled");
        assert_eq!(w.slot_image(), &w.image[..]);
        assert_eq!(w.boot_next.as_deref(), Some("2.0.0"));
        assert_eq!(w.writes, 40_000usize.div_ceil(1024));
    }
}

#[test]
fn one_block_keeps_a_single_write_in_flight() {
    let mut w = ring_world(20_000, 1);
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.most_writes_in_flight, 1);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn no_byte_is_taken_past_a_checkpoint_before_its_record() {
    let mut w = ring_world(40_000, 3);
    let interval = w.config.checkpoint_interval;
    w.connect();
    // At every step: what was hashed never runs more than one interval past the last
    // record (the world saves records at once, so the last queued one is the saved one).
    w.run_until(|w| {
        let downloading = w.agent.phase() == crate::agent::Phase::Downloading;
        assert!(
            !downloading || w.agent.fetched_size() <= saved_offset(w) + interval,
            "{} bytes taken with the record at {}",
            w.agent.fetched_size(),
            saved_offset(w)
        );
        w.agent.is_image_verified()
    });
    assert!(w.saves >= 40_000 / 4096, "{} checkpoints", w.saves);
}

#[test]
fn a_failed_write_among_several_in_flight_fails_the_task_once() {
    let mut w = ring_world(30_000, 3);
    w.fail_write = Some(5);
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    // The answers to the writes after the failed one come too, and change nothing.
    assert!(w.writes > 6, "{} writes", w.writes);
    assert_eq!(w.progress.iter().filter(|p| **p < 0).count(), 1);
    assert_eq!(w.progress.last(), Some(&-4));
    assert_eq!(w.record, None);
    w.assert_reports_settled();
}

#[test]
fn the_number_of_blocks_is_checked() {
    for buffers in [0, 17] {
        let mut config = test_config();
        config.write_buffers = buffers;
        let boot = crate::agent::Boot {
            running_version: "1.0.0",
            record: None,
        };
        let refused = crate::agent::Agent::new(config, boot, crate::time::Instant::ZERO);
        assert!(
            matches!(refused, Err(Error::InvalidConfig(_))),
            "{buffers} blocks"
        );
    }
}
