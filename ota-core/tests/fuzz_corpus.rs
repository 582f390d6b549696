//! Replays the committed fuzz corpus (fuzz/corpus/<target>/) through the same entry points
//! the cargo-fuzz targets use, on stable. Run by .ci/run:
//! `cargo test -p ota-core --features fuzzing --test fuzz_corpus`.
#![cfg(feature = "fuzzing")]

use std::fs;
use std::path::PathBuf;

use ota_core::testkit::fuzz;

fn corpus(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn replay(target: &str, entry: fn(&[u8])) {
    let dir = corpus(target);
    let mut files = 0;
    for file in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = file.expect("corpus entry").path();
        let data = fs::read(&path).expect("corpus file");
        entry(&data);
        files += 1;
    }
    assert!(files > 0, "empty corpus for {target}");
}

#[test]
fn push_corpus() {
    replay("push", fuzz::push);
}

#[test]
fn get_reply_corpus() {
    replay("get_reply", fuzz::get_reply);
}

#[test]
fn topics_corpus() {
    replay("topics", fuzz::topics);
}

#[test]
fn record_corpus() {
    replay("record", fuzz::record);
}

#[test]
fn mqtt_frame_corpus() {
    replay("mqtt_frame", fuzz::mqtt_frame);
}

#[test]
fn agent_corpus() {
    replay("agent", fuzz::agent);
}

/// Two agent entries reach the package-signature verifier: one signed task installs, one
/// replaced by a task signed over another digest is refused with `-3`.
#[test]
fn agent_corpus_reaches_the_signature_verifier() {
    use ota_core::testkit::ops::{run, Scenario};
    let read = |name: &str| fs::read(corpus("agent").join(name)).expect("corpus entry");
    let installed = Scenario::from_bytes(&read("signed-install"));
    assert!(installed.signed);
    let w = run(&installed);
    assert_eq!(w.running, "2.0.0", "{:?}", w.outcomes);
    let refused = Scenario::from_bytes(&read("signed-refused"));
    let w = run(&refused);
    assert!(
        w.outcomes
            .iter()
            .any(|o| o.starts_with("failed -3 package signature does not verify")),
        "{:?}",
        w.outcomes
    );
}

/// The fuzzer's "record left behind after success" (issue #18, 22 bytes): a download of
/// 3.247 interrupted by a power cut while 3.108 runs, then the cloud's task becomes 3.108
/// itself. It replays here with every invariant checked by `run` (no record left behind);
/// since task switches wait out `Config::task_switch_interval` the same bytes take another
/// path, so the exact sequence is kept as a unit test too (`agent::tests::switching`).
#[test]
fn agent_corpus_record_left_after_switching_to_the_running_version() {
    use ota_core::testkit::ops::{run, Op, Scenario};
    let data = fs::read(corpus("agent").join("record-left-after-switch-to-running-version"))
        .expect("corpus entry");
    let scenario = Scenario::from_bytes(&data);
    assert_eq!(
        scenario.ops,
        [
            Op::ReplaceTask(108),
            Op::Steps(108),
            Op::ReplaceTask(108),
            Op::CutNextWrite(859),
            Op::ReplaceTaskMissigned(27),
            Op::ReplaceTask(247),
            Op::Steps(10),
            Op::ReplaceTask(108),
        ],
        "the scenario still decodes as it was found"
    );
    let w = run(&scenario);
    assert_eq!(w.record, None);
}

/// Agent entries reach the re-reads of issue #18: a power loss that flips a staged byte (the
/// resume re-hash finds it and the download starts again from byte 0), and a multi-file task
/// whose staging area a power loss truncated (read back before activation).
#[test]
fn agent_corpus_reaches_the_resume_rehash_and_the_read_back() {
    use ota_core::testkit::ops::{run, Scenario};
    let read = |name: &str| fs::read(corpus("agent").join(name)).expect("corpus entry");
    let w = run(&Scenario::from_bytes(&read("rehash-flip-at-power-loss")));
    assert!(
        w.notes
            .iter()
            .any(|n| n.contains("RecordDiscarded(StagingMismatch)")),
        "{:?}",
        w.notes
    );
    assert_eq!(w.running, "2.0.0", "{:?}", w.outcomes);
    let scenario = Scenario::from_bytes(&read("truncated-staging-multi-file-read-back"));
    assert!(scenario.multi_file);
    let w = run(&scenario);
    assert!(w.reads > 0 && w.transcript.iter().any(|l| l.starts_with("activate")));
}

/// Writes the seed corpus for the targets whose inputs are binary (records, scenarios).
/// `cargo test -p ota-core --features fuzzing --test fuzz_corpus -- --ignored`
#[test]
#[ignore]
fn write_binary_seeds() {
    use ota_core::record::{ImageId, Phase, Record};
    use ota_core::{DigestMethod, ExpectedDigest};
    let dir = corpus("record");
    fs::create_dir_all(&dir).expect("corpus dir");
    let mut state = Vec::new();
    ota_core::digest::Hasher::new(DigestMethod::Md5).save_state(&mut state);
    let phases = [
        Phase::Downloading {
            file: 0,
            offset: 8192,
            digest_state: state,
            step: 12,
        },
        Phase::Activating,
        Phase::RollingBack,
    ];
    for (i, phase) in phases.into_iter().enumerate() {
        let record = Record {
            image: ImageId {
                module: if i == 1 {
                    "MCU".into()
                } else {
                    "default".into()
                },
                version: "2.0.0".into(),
                size: 432_945,
                digest: ExpectedDigest::from_hex(
                    DigestMethod::Md5,
                    "93230c3bde425a9d7984a594ac55ea1e",
                )
                .expect("hex"),
                mqtt_stream: (i == 2).then_some((1_397_345, 1)),
                files: 0,
                signature: (i == 0).then_some([0x5a; 256]),
            },
            previous_version: "1.0.0".into(),
            phase,
        };
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        fs::write(dir.join(format!("seed-{i}")), bytes).expect("write seed");
    }
    let dir = corpus("agent");
    fs::create_dir_all(&dir).expect("corpus dir");
    let scenarios: [&[u8]; 5] = [
        &[0x10, 0x00, 0, 10, 20, 30, 0, 200, 0, 200, 0, 200],
        &[
            0x20, 0x00, 1, 1, 1, 1, 10, 4, 0, 50, 6, 0, 0, 50, 5, 0, 0, 200, 18, 0, 0, 200,
        ],
        &[
            0x05, 0x00, 0, 50, 2, 9, 15, 7, 0, 10, 16, 0, 0, 100, 13, 0, 0, 100,
        ],
        &[
            0x30, 0x00, 1, 90, 90, 90, 0, 30, 8, 3, 0, 30, 9, 1, 0, 200, 14, 2, 0, 255,
        ],
        &[0x01, 0x00, 0, 0, 0, 0, 10, 6, 11, 6, 0, 255, 12, 0, 0, 255],
    ];
    for (i, s) in scenarios.iter().enumerate() {
        fs::write(dir.join(format!("seed-{i}")), s).expect("write seed");
    }
}
