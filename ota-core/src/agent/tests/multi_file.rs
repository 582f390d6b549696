//! Multi-file tasks: each file downloaded and verified in turn, laid out on write-block
//! boundaries, progress over the total, per-file resume, activation only when all verified.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use crate::testkit::world::*;

fn world(files: Vec<Vec<u8>>) -> World {
    let mut w = World::new(test_config(), Vec::new());
    w.offer_files_task(files);
    w
}

fn three_files() -> Vec<Vec<u8>> {
    vec![
        test_image(9000, 1),
        test_image(300, 2),
        test_image(12_500, 3),
    ]
}

#[test]
fn every_file_is_downloaded_verified_and_the_set_activated_once() {
    let mut w = world(three_files());
    w.config.progress_step = 100; // one step ("1") between the checkpoints
    w.restart_agent();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.fetch_offsets, vec![0, 0, 0], "one request per file");
    let writes: Vec<&String> = w
        .transcript
        .iter()
        .filter(|l| l.starts_with("write"))
        .collect();
    assert!(
        writes.iter().any(|l| *l == "write @9216 +300"),
        "file 1 starts on a block boundary: {writes:?}"
    );
    assert!(
        writes.iter().any(|l| *l == "write @10240 +1024"),
        "file 2 follows: {writes:?}"
    );
    assert_eq!(
        w.transcript
            .iter()
            .filter(|l| l.starts_with("activate"))
            .count(),
        1
    );
    assert_eq!(w.progress.last(), Some(&100));
    assert_eq!(
        w.transcript
            .iter()
            .filter(|l| l.as_str() == "save record")
            .count(),
        3 + 2 + 3 + 1 + 1,
        "a record per file start and per 4 KiB, one for the first step, then activation"
    );
}

#[test]
fn a_power_loss_in_the_third_file_resumes_there() {
    let mut w = world(three_files());
    w.connect();
    w.cut = Some(Cut::Write {
        n: 9 + 1 + 6,
        torn: 7,
    });
    assert_eq!(w.run(), Stop::PowerLost);
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(
        w.fetch_offsets,
        vec![0, 0, 0, 4096],
        "only the third file is resumed, from its record"
    );
}

#[test]
fn a_corrupt_file_fails_with_its_name_and_nothing_is_activated() {
    let mut w = world(three_files());
    w.faults.extend([Fault::CutAfter(9000), Fault::Corrupt(10)]);
    w.connect();
    // The first file arrives whole (cut exactly at its end), the second is corrupted.
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.last(), Some(&-3));
    assert!(
        w.outcomes[0].contains("file part1.bin does not match"),
        "{:?}",
        w.outcomes
    );
    assert!(!w.transcript.iter().any(|l| l.starts_with("activate")));
}

#[test]
fn progress_counts_over_all_files() {
    let mut w = world(vec![test_image(4000, 1), test_image(4000, 2)]);
    w.config.progress_step = 10;
    w.connect();
    w.run();
    let positive: Vec<i16> = w.progress.iter().copied().filter(|p| *p > 0).collect();
    assert!(positive.windows(2).all(|p| p[0] < p[1]), "{positive:?}");
    assert!(
        positive.iter().any(|p| (45..=60).contains(p)),
        "half way is reported once: {positive:?}"
    );
}

#[test]
fn the_next_file_starts_even_when_the_connection_stays_open() {
    // Found by the property tests: the first file's body ends exactly at its size but the
    // server never closes; the next file must start without waiting for another input.
    let mut w = world(vec![test_image(2049, 1), test_image(293, 2)]);
    w.faults.push_back(Fault::StallAfter(2049));
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
}

/// A task naming one file twice, or naming the adapter's own files, is refused with one -1
/// that names the file, before a byte is fetched or written.
#[test]
fn duplicate_and_reserved_file_names_are_refused_before_a_byte_is_written() {
    let (method, field) = files_digest_names();
    let digest = task_digest_hex(&test_image(10, 1));
    for (names, named) in [
        (
            ["a.bin", "b.bin", "a.bin"],
            "\\\"a.bin\\\" is also file 0's",
        ),
        (
            ["a.bin", ".ota-installed", "c"],
            "\\\".ota-installed\\\" is reserved",
        ),
        (
            ["a.bin", "b", "a.bin.previous"],
            "\\\"a.bin.previous\\\" is reserved",
        ),
        (["x.tmp", "b", "c"], "\\\"x.tmp\\\" is reserved"),
    ] {
        let mut w = World::new(test_config(), Vec::new());
        w.connect();
        w.run();
        let files: Vec<String> = names
            .iter()
            .map(|n| {
                alloc::format!(
                    r#"{{"fileName":"{n}","fileSize":10,"fileUrl":"https://fw.example/{n}?gen=0","{field}":"{digest}"}}"#
                )
            })
            .collect();
        w.push_raw(&alloc::format!(
            r#"{{"code":"1000","data":{{"version":"2.0.0","signMethod":"{method}","files":[{}]}},"id":1}}"#,
            files.join(",")
        ));
        w.run();
        assert_eq!(w.progress, vec![-1], "{names:?}");
        let report = w
            .transcript
            .iter()
            .find(|l| l.starts_with("pub progress"))
            .unwrap();
        assert!(report.contains(named), "{report}");
        assert!(w.fetch_offsets.is_empty() && w.writes == 0, "{names:?}");
    }
}
