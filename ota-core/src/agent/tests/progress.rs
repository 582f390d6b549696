//! What the cloud is told: steps that follow the bytes received (not the checkpoint
//! interval), each published only once a record carries it, so that after a power loss the
//! reports go on above the last one sent, never repeating it. The world checks both rules at
//! every report; these scenarios make sure the interesting cases happen.

use alloc::vec::Vec;

use crate::testkit::world::*;

/// Checkpoints far apart (the image never reaches one): only the step saves are durable.
fn world_without_checkpoints(len: usize) -> World {
    let mut config = test_config();
    config.checkpoint_interval = 1024 * 1024;
    let mut w = World::new(config, test_image(len, 5));
    w.offer_task();
    w
}

fn positive(steps: &[i16]) -> Vec<i16> {
    steps.iter().copied().filter(|s| *s > 0).collect()
}

#[test]
fn a_small_image_reports_its_steps_though_it_never_reaches_a_checkpoint() {
    let mut w = world_without_checkpoints(50_000);
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    let steps = positive(&w.progress);
    let intermediate = steps.iter().filter(|s| (2..100).contains(*s)).count();
    assert!(intermediate >= 15, "{steps:?}");
    assert_eq!(steps.last(), Some(&100));
}

#[test]
fn after_a_power_loss_the_first_report_exceeds_the_last_one_sent() {
    let mut w = world_without_checkpoints(23_000);
    w.cut = Some(Cut::Write { n: 15, torn: 0 });
    w.connect();
    assert_eq!(w.run(), Stop::PowerLost);
    let before = positive(&w.progress);
    let last_sent = *before.last().unwrap();
    assert!(last_sent >= 40, "{before:?}");
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    // No checkpoint was reached: the download starts again at byte 0...
    assert_eq!(w.fetch_offsets.last(), Some(&0));
    // ...but the cloud hears nothing until the percentage passes what it was told.
    let after = positive(&w.progress[before.len()..]);
    assert!(after[0] > last_sent, "before {before:?}, after {after:?}");
    assert_eq!(after.last(), Some(&100));
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_record_of_the_previous_format_resumes_above_its_durable_percentage() {
    let mut w = World::new(test_config(), test_image(23_000, 5));
    w.config.progress_step = 100; // only "1" before the cut: the durable offset is the floor
    w.restart_agent();
    w.offer_task();
    w.cut = Some(Cut::Write { n: 15, torn: 0 });
    w.connect();
    assert_eq!(w.run(), Stop::PowerLost);
    // Rewrite the saved record as format 2 wrote it: no step byte and no signature tag (an
    // unsigned task: one byte) before the CRC.
    let mut record = w.record.clone().unwrap();
    record.truncate(record.len() - 6);
    record[4] = 2;
    let crc = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC).checksum(&record);
    record.extend_from_slice(&crc.to_le_bytes());
    w.record = Some(record);
    let reported_before = w.progress.len();
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    let resumed_at = *w.fetch_offsets.last().unwrap();
    assert!(resumed_at >= 12_288, "resumed at {resumed_at}");
    let durable_percent = (resumed_at * 100 / 23_000) as i16;
    let after = positive(&w.progress[reported_before..]);
    assert!(after[0] > durable_percent, "{after:?} from {resumed_at}");
}

/// With several staging blocks and storage that answers late, writes are nearly always in
/// flight; a due step still gets its record soon (no new block is started until the writes
/// drain), so the first report is "1" and the steps follow the bytes, not the checkpoints.
#[test]
fn with_writes_in_flight_the_steps_still_follow_the_bytes() {
    for buffers in [2, 3] {
        let mut w = world_without_checkpoints(50_000);
        w.config.write_buffers = buffers;
        w.lazy_storage = true;
        w.restart_agent();
        w.offer_task();
        w.connect();
        assert_eq!(w.run(), Stop::Reboot);
        assert!(
            w.most_writes_in_flight >= 2,
            "{buffers} blocks never overlapped"
        );
        let steps = positive(&w.progress);
        assert_eq!(steps.first(), Some(&1), "{steps:?}");
        let intermediate = steps.iter().filter(|s| (2..100).contains(*s)).count();
        assert!(intermediate >= 15, "{buffers} blocks: {steps:?}");
    }
}
