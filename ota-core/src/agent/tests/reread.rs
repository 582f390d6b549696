//! Re-reading the slot: a resumed download trusts its staged prefix only once it reads back
//! to the record's digest state (else it starts again from byte 0, with no failure report),
//! and with `Config::read_back` the image activated is the one read back from the slot.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::agent::{Event, Phase};
use crate::error::Error;
use crate::record::{Phase as RecordPhase, Record};
use crate::testkit::world::*;

const LEN: usize = 23_000;

fn world() -> World {
    let mut w = World::new(test_config(), test_image(LEN, 5));
    w.offer_task();
    w
}

/// The record save cut in these tests: the durable record is then at byte `DURABLE`.
const CUT_SAVE: usize = 8;
const DURABLE: u64 = 8192;

/// Runs until the `n`-th record save (0-based), cuts the power there with `damage`, and
/// restarts; returns the durable offset the record held, after the whole upgrade.
fn cut_with_damage(w: &mut World, n: usize, damage: Option<Damage>) -> u64 {
    w.cut = Some(Cut::Save { n });
    w.damage = damage;
    w.connect();
    assert_eq!(w.run(), Stop::PowerLost);
    let record = Record::decode(w.record.as_deref().unwrap()).unwrap();
    let RecordPhase::Downloading { offset, .. } = record.phase else {
        panic!("a download record");
    };
    w.reboot();
    w.connect();
    w.run_through_reboots();
    offset
}

fn assert_installed(w: &World) {
    assert_eq!(w.running, "2.0.0", "{:?}", w.outcomes);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(w.confirmed);
    assert_eq!(w.record, None);
    assert!(
        !w.progress.iter().any(|p| *p < 0),
        "no failure report: {:?}",
        w.progress
    );
}

fn discarded(w: &World) -> bool {
    w.notes
        .iter()
        .any(|n| n.contains("RecordDiscarded(StagingMismatch)"))
}

#[test]
fn an_intact_prefix_is_read_back_and_the_download_resumes_from_the_record() {
    let mut w = world();
    assert_eq!(cut_with_damage(&mut w, CUT_SAVE, None), DURABLE);
    assert_installed(&w);
    // The resume asks from the durable offset, after reading those bytes back block by block.
    assert_eq!(w.fetch_offsets, vec![0, DURABLE]);
    let boot = w.transcript.iter().position(|l| l == "boot 1.0.0").unwrap();
    let after: Vec<String> = w.transcript[boot..]
        .iter()
        .filter(|l| l.starts_with("read") || l.starts_with("fetch"))
        .take(9)
        .cloned()
        .collect();
    let mut expected: Vec<String> = (0..8)
        .map(|i| alloc::format!("read @{} +1024", i * 1024))
        .collect();
    expected.push(alloc::format!("fetch 0 @{DURABLE}"));
    assert_eq!(after, expected);
    assert!(!discarded(&w));
}

#[test]
fn a_flipped_staged_byte_restarts_the_download_from_byte_0() {
    for at in [0, 1000, DURABLE as usize - 1] {
        let mut w = world();
        cut_with_damage(&mut w, CUT_SAVE, Some(Damage::Flip(at)));
        assert_installed(&w);
        assert_eq!(w.fetch_offsets, vec![0, 0], "flip at {at}");
        assert!(discarded(&w));
    }
}

#[test]
fn a_flip_beyond_the_durable_prefix_is_simply_overwritten() {
    let mut w = world();
    cut_with_damage(&mut w, CUT_SAVE, Some(Damage::Flip(DURABLE as usize + 10)));
    assert_installed(&w);
    assert_eq!(w.fetch_offsets, vec![0, DURABLE]);
    assert!(!discarded(&w));
}

#[test]
fn a_truncated_or_deleted_staging_area_restarts_the_download_from_byte_0() {
    for len in [0, 100, DURABLE as usize - 1] {
        let mut w = world();
        cut_with_damage(&mut w, CUT_SAVE, Some(Damage::Truncate(len)));
        assert_installed(&w);
        assert_eq!(w.fetch_offsets, vec![0, 0], "truncated to {len}");
        assert!(discarded(&w));
    }
}

#[test]
fn an_unreadable_staging_area_restarts_the_download_from_byte_0() {
    let mut w = world();
    w.fail_read = Some(1);
    cut_with_damage(&mut w, CUT_SAVE, None);
    assert_installed(&w);
    assert_eq!(w.fetch_offsets, vec![0, 0]);
    assert!(discarded(&w));
}

/// Progress reported before the restart is not reported again, nor backwards.
#[test]
fn a_restart_after_a_mismatch_never_repeats_a_step() {
    let mut w = world();
    w.config.progress_step = 5;
    w.restart_agent();
    cut_with_damage(&mut w, CUT_SAVE, Some(Damage::Flip(7)));
    assert_installed(&w);
    let steps: Vec<i16> = w.progress.clone();
    assert!(steps.windows(2).all(|p| p[0] < p[1]), "{steps:?}");
    assert!(discarded(&w));
}

#[cfg(feature = "multi-file")]
#[test]
fn a_damaged_earlier_file_of_a_multi_file_task_restarts_the_task() {
    let mut w = World::new(test_config(), Vec::new());
    w.offer_files_task(vec![
        test_image(5000, 1),
        test_image(300, 2),
        test_image(9000, 3),
    ]);
    // Cut once the record is into the last file: the first two are whole and verified.
    w.connect();
    w.run_until(|w| {
        let record = w.record.as_deref().and_then(|r| Record::decode(r).ok());
        matches!(record.map(|r| r.phase), Some(RecordPhase::Downloading { file: 2, offset, .. }) if offset > 0)
    });
    w.cut = Some(Cut::Save { n: w.saves });
    w.damage = Some(Damage::Flip(2000));
    assert_eq!(w.run(), Stop::PowerLost);
    w.reboot();
    w.connect();
    w.run_through_reboots();
    assert_eq!(w.running, "2.0.0", "{:?}", w.outcomes);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(discarded(&w));
    assert_eq!(w.fetch_offsets.iter().filter(|o| **o == 0).count(), 3 + 3);
}

#[test]
fn read_back_refuses_an_image_that_changed_on_flash_after_it_streamed() {
    let mut w = world();
    w.connect();
    w.run_until(|w| w.reads == 1);
    w.slot[LEN - 10] ^= 1; // a bit lost after its write was acknowledged and verified
    w.run_through_reboots();
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.progress.last(), Some(&-4), "{:?}", w.progress);
    assert!(
        w.outcomes
            .iter()
            .any(|o| o.starts_with("failed -4 read-back: the bytes in the slot from offset 0")),
        "{:?}",
        w.outcomes
    );
    assert!(!w.transcript.iter().any(|l| l.starts_with("activate")));
}

#[test]
fn read_back_that_fails_to_read_fails_the_task_with_minus_4() {
    let mut w = world();
    w.fail_read = Some(5);
    w.connect();
    w.run_through_reboots();
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.progress.last(), Some(&-4), "{:?}", w.progress);
    assert!(!w.transcript.iter().any(|l| l.starts_with("activate")));
}

#[test]
fn read_back_off_activates_right_after_the_stream_verified() {
    let mut w = world();
    w.config.read_back = false;
    w.restart_agent();
    w.connect();
    w.run_through_reboots();
    assert_eq!(w.running, "2.0.0");
    assert_eq!(w.reads, 0);
}

#[test]
fn read_results_out_of_turn_are_contract_errors() {
    let mut w = world();
    let now = w.now;
    assert_eq!(
        w.agent.handle(now, Event::ReadDone { len: 1 }),
        Err(Error::UnexpectedReadResult)
    );
    assert_eq!(
        w.agent.handle(now, Event::ReadFailed),
        Err(Error::UnexpectedReadResult)
    );
    // A read answered with more bytes than it asked for is refused, the state unchanged.
    w.connect();
    w.run_until(|w| w.transcript.last().is_some_and(|l| l.starts_with("read")));
    w.inbox_clear();
    assert_eq!(
        w.agent.handle(now, Event::ReadDone { len: 1025 }),
        Err(Error::UnexpectedReadResult)
    );
    assert_eq!(w.agent.phase(), Phase::Downloading);
    w.agent.handle(now, Event::ReadDone { len: 1024 }).unwrap();
}
