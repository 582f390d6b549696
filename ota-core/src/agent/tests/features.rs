//! A build without an optional part (cargo features `mqtt-channel`, `multi-file`, `modules`,
//! `md5`, `sha256`) and a push that needs it: one `-1` whose `desc` says what the firmware cannot do,
//! and nothing fetched, requested, written or installed (docs/protocol.md §3).

use alloc::string::String;
use alloc::vec::Vec;

use crate::testkit::world::*;

fn world(len: usize) -> World {
    World::new(test_config(), test_image(len, 5))
}

/// The `desc` of every `-1` report the agent published.
fn refusals(w: &World) -> Vec<String> {
    w.transcript
        .iter()
        .filter(|l| l.starts_with("pub progress ") && l.contains(r#""step":"-1""#))
        .map(|l| {
            let payload: serde_json::Value =
                serde_json::from_str(&l["pub progress ".len()..]).expect("progress JSON");
            String::from(payload["params"]["desc"].as_str().expect("desc"))
        })
        .collect()
}

/// Pushes the world's task and runs: exactly one `-1` naming `word`, and nothing else done.
fn assert_refused_untouched(w: &mut World, word: &str) {
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, [-1]);
    let reasons = refusals(w);
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(reasons[0].contains(word), "{reasons:?}");
    assert!(w.fetch_offsets.is_empty(), "no HTTP request");
    assert!(w.block_requests.is_empty(), "no block request");
    assert_eq!((w.writes, w.saves), (0, 0), "nothing written, no record");
    assert!(w.outcomes.is_empty(), "{:?}", w.outcomes);
    assert_eq!(w.running, "1.0.0");
}

#[cfg(not(feature = "mqtt-channel"))]
#[test]
fn without_the_mqtt_channel_an_mqtt_task_is_refused_and_nothing_is_requested() {
    let mut w = world(5000);
    w.mqtt_channel = true;
    w.offer_task();
    assert_refused_untouched(&mut w, "MQTT-channel downloads");
    // The block replies' topic is not even subscribed to.
    assert!(!w.transcript.iter().any(|l| l.contains("download_reply")));
}

#[cfg(not(feature = "multi-file"))]
#[test]
fn without_multi_file_a_files_task_is_refused_and_nothing_is_fetched() {
    let mut w = world(0);
    w.offer_files_task(alloc::vec![test_image(3000, 1), test_image(700, 2)]);
    assert_refused_untouched(&mut w, "multi-file tasks");
}

#[cfg(not(feature = "modules"))]
#[test]
fn without_modules_a_task_for_another_module_is_refused_and_nothing_is_fetched() {
    let mut w = world(5000);
    w.module = Some(String::from("MCU"));
    w.offer_task();
    assert_refused_untouched(&mut w, "module MCU is not managed");
    // Only the agent's own module is reported and asked for.
    assert!(w.informs.iter().all(|v| v == "1.0.0"));
}

#[cfg(not(feature = "sha256"))]
#[test]
fn without_sha256_a_sha256_task_is_refused_unless_it_carries_an_md5() {
    let mut w = world(5000);
    w.offer_task(); // the image the world serves
    let sha = sha256_hex(&w.image);
    w.cloud_task = Some(alloc::format!(
        r#""size":5000,"version":"2.0.0","sign":"{sha}","signMethod":"SHA256""#
    ));
    assert_refused_untouched(&mut w, "built without sha256");

    // With the `md5` member too, the task is verified by MD5 (docs/protocol.md §3).
    let mut w = world(5000);
    w.offer_task();
    let (sha, md5) = (sha256_hex(&w.image), md5_hex(&w.image));
    w.cloud_task = Some(alloc::format!(
        r#""size":5000,"version":"2.0.0","sign":"{sha}","signMethod":"SHA256","md5":"{md5}""#
    ));
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(!w.progress.iter().any(|p| *p < 0), "{:?}", w.progress);
}

#[cfg(not(feature = "md5"))]
#[test]
fn without_md5_an_md5_task_is_refused_unless_it_carries_a_sha256() {
    let mut w = world(5000);
    w.offer_task(); // the image the world serves
    let md5 = md5_hex(&w.image);
    w.cloud_task = Some(alloc::format!(
        r#""size":5000,"version":"2.0.0","md5":"{md5}","sign":"{md5}","signMethod":"Md5""#
    ));
    assert_refused_untouched(&mut w, "built without md5");
    assert_eq!(
        refusals(&w),
        ["md5 digests are not supported: this firmware is built without md5"]
    );
    // `sign` by Md5 alone: its `signMethod` is unknown to this build, nothing to fall back on.
    let mut w = world(5000);
    w.offer_task();
    let md5 = md5_hex(&w.image);
    w.cloud_task = Some(alloc::format!(
        r#""size":5000,"version":"2.0.0","sign":"{md5}","signMethod":"Md5""#
    ));
    assert_refused_untouched(&mut w, "built without md5");
    assert_eq!(
        refusals(&w),
        ["signMethod Md5 is not supported: this firmware is built without md5, and there is no md5 digest to fall back on"]
    );

    // With `sign` by SHA-256 too, the task is verified by SHA-256; its `md5`, here of another
    // image, is not even read (docs/protocol.md §3).
    let mut w = world(5000);
    w.offer_task();
    let (sha, md5) = (sha256_hex(&w.image), md5_hex(b"another image"));
    w.cloud_task = Some(alloc::format!(
        r#""size":5000,"version":"2.0.0","md5":"{md5}","sign":"{sha}","signMethod":"SHA256""#
    ));
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(!w.progress.iter().any(|p| *p < 0), "{:?}", w.progress);
    let record = crate::record::Record::decode(w.record.as_deref().expect("a record"));
    let digest = record.expect("the record decodes").image.digest;
    assert_eq!(digest.method(), crate::task::DigestMethod::Sha256);
}
