//! Scenario tests of the whole lifecycle in the simulated world, one branch each.

use alloc::string::String;
use alloc::vec::Vec;
use alloc::{format, vec};
use core::time::Duration;

use crate::agent::{Action, Event, FetchId, Phase};
use crate::error::Error;
use crate::testkit::world::*;
use crate::time::Instant;

fn world(len: usize) -> World {
    World::new(test_config(), test_image(len, 7))
}

fn assert_progress_well_formed(progress: &[i16]) {
    let positive: Vec<i16> = progress.iter().copied().filter(|p| *p > 0).collect();
    assert!(!progress.contains(&0), "0 is never sent: {progress:?}");
    assert!(
        positive.windows(2).all(|w| w[0] < w[1]),
        "not strictly increasing: {progress:?}"
    );
    assert!(
        positive.iter().all(|p| (1..=100).contains(p)),
        "{progress:?}"
    );
}

#[test]
fn happy_path_downloads_verifies_activates_reboots_and_confirms() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.push_task();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.boot_next.as_deref(), Some("2.0.0"));
    assert_eq!(w.outcomes, vec![String::from("installed 2.0.0")]);
    assert_progress_well_formed(&w.progress);
    assert_eq!(
        w.progress.first(),
        Some(&1),
        "first step as soon as bytes flow"
    );
    assert_eq!(w.progress.last(), Some(&100));
    assert!(w.agent.is_image_verified());

    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.running, "2.0.0");
    assert_eq!(w.informs.last().map(String::as_str), Some("2.0.0"));
    assert!(w.confirmed);
    assert_eq!(w.record, None, "record cleared after confirmation");
    assert_eq!(
        w.outcomes.last().map(String::as_str),
        Some("succeeded 2.0.0")
    );
    assert_eq!(w.agent.phase(), Phase::Idle);
}

#[test]
fn transcript_of_a_small_upgrade() {
    let mut w = world(2500);
    w.chunk_sizes = vec![2500];
    w.config.progress_step = 50;
    w.restart_agent();
    w.offer_task();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    let md5 = md5_hex(&w.image);
    let mut expected: Vec<String> = vec![
        "sub /ota/device/upgrade/a1TestPK001/dev01".into(),
        "sub /sys/a1TestPK001/dev01/thing/ota/firmware/get_reply".into(),
        "sub /sys/a1TestPK001/dev01/thing/file/download_reply".into(),
        r#"pub inform {"id":"1","params":{"version":"1.0.0"}}"#.into(),
        r#"pub get {"id":"2","version":"1.0","params":{},"method":"thing.ota.firmware.get"}"#
            .into(),
        "notify task 2.0.0".into(),
        "save record".into(),
        "fetch 0 @0".into(),
        "notify progress 1".into(),
        "write @0 +1024".into(),
        // A step goes to the cloud only once a record carrying it is durable...
        "save record".into(),
        r#"pub progress {"id":"3","params":{"step":"1","desc":"downloading"}}"#.into(),
        // ...and follows the bytes received, not the checkpoint interval (4096 here).
        "notify progress 81".into(),
        "write @1024 +1024".into(),
        "save record".into(),
        r#"pub progress {"id":"4","params":{"step":"81","desc":"downloading"}}"#.into(),
        "write @2048 +452".into(),
        // What is activated is what reads back from the slot (`Config::read_back`).
        "read @0 +1024".into(),
        "read @1024 +1024".into(),
        "read @2048 +452".into(),
        "notify progress 100".into(),
        "save record".into(),
        // 100 once the activation record is saved.
        r#"pub progress {"id":"5","params":{"step":"100","desc":"downloaded and verified"}}"#
            .into(),
        "activate 2.0.0".into(),
        "notify installed 2.0.0".into(),
        "reboot".into(),
    ];
    if !cfg!(feature = "mqtt-channel") {
        expected.retain(|l| !l.ends_with("/thing/file/download_reply")); // not subscribed
    }
    assert_eq!(w.transcript, expected, "md5 {md5}");
}

#[cfg(feature = "sha256")]
#[test]
fn sha256_task_with_upper_case_hex_installs() {
    let mut w = world(9000);
    w.offer_sha256_task();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.progress.last(), Some(&100));
}

#[test]
fn record_is_saved_before_the_first_byte_and_at_every_checkpoint() {
    let mut w = world(20_000);
    w.config.progress_step = 100; // one step ("1") between the checkpoints
    w.restart_agent();
    w.offer_task();
    w.connect();
    w.run();
    let first_save = w
        .transcript
        .iter()
        .position(|l| l == "save record")
        .unwrap();
    let first_fetch = w
        .transcript
        .iter()
        .position(|l| l.starts_with("fetch"))
        .unwrap();
    assert!(first_save < first_fetch);
    // 20000 bytes, checkpoint every 4096: initial + the first step + 4 checkpoints +
    // activating record.
    assert_eq!(
        w.transcript.iter().filter(|l| *l == "save record").count(),
        1 + 1 + 4 + 1
    );
}

#[test]
fn the_same_task_pushed_again_is_ignored() {
    let mut w = world(30_000);
    w.offer_task();
    w.connect();
    w.push_task();
    w.push_task();
    w.push_task();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(
        w.transcript
            .iter()
            .filter(|l| l.starts_with("notify task"))
            .count(),
        1
    );
    assert_eq!(w.fetch_offsets, vec![0]);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_different_task_replaces_the_running_download() {
    let mut w = world(30_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::StallAfter(10_000));
    w.run_until(|w| w.agent.fetched_size() >= 8000);
    w.image = test_image(12_000, 99);
    w.version = "3.0.0".into();
    w.offer_task();
    w.push_task();
    assert_eq!(w.run(), Stop::Reboot);
    assert!(w.transcript.iter().any(|l| l == "cancel 0"));
    assert_eq!(
        w.transcript
            .iter()
            .filter(|l| l.starts_with("notify task"))
            .count(),
        2
    );
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.boot_next.as_deref(), Some("3.0.0"));
    assert_eq!(w.outcomes, vec![String::from("installed 3.0.0")]);
}

#[test]
fn power_loss_resumes_from_the_saved_record_with_range() {
    let mut w = world(40_000);
    w.offer_task();
    w.connect();
    w.cut = Some(Cut::Write { n: 13, torn: 100 });
    assert_eq!(w.run(), Stop::PowerLost);
    let received_before = w.agent.fetched_size();
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    let resumed_at = w.fetch_offsets[1];
    assert_eq!(resumed_at % 4096, 0);
    assert!(resumed_at > 0);
    assert!(
        received_before - resumed_at <= 4096,
        "re-downloaded {}",
        received_before - resumed_at
    );
    assert!(w
        .transcript
        .iter()
        .any(|l| l == &format!("fetch 0 @{resumed_at}")));
}

#[test]
fn a_206_with_a_wrong_content_range_is_retried_not_appended() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::CutAfter(5000));
    w.faults.push_back(Fault::WrongRange);
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.fetch_offsets.len(), 3);
    assert_eq!(w.fetch_offsets[1], w.fetch_offsets[2]);
}

#[test]
fn a_200_to_a_ranged_request_skips_what_we_have() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::CutAfter(6000));
    w.faults.push_back(Fault::IgnoreRange);
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.fetch_offsets, vec![0, 6000]);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(w.outcomes.contains(&"installed 2.0.0".into()));
}

#[test]
fn an_expired_url_asks_for_the_task_again_and_resumes() {
    let mut w = world(30_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::CutAfter(9000));
    w.run_until(|w| w.fetch_offsets.len() == 1 && w.agent.fetched_size() == 9000);
    w.url_valid_from = w.url_generation; // every URL issued so far is now expired
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.fetch_offsets, vec![0, 9000, 9000]);
    let gets = w
        .transcript
        .iter()
        .filter(|l| l.contains("thing.ota.firmware.get"))
        .count();
    assert_eq!(gets, 2, "one on connect, one for the fresh URL");
    assert!(!w.progress.iter().any(|p| *p < 0));
}

#[test]
fn a_url_that_stays_dead_fails_with_minus_2_once() {
    let mut w = world(10_000);
    w.offer_task();
    w.connect();
    w.url_valid_from = u32::MAX;
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(
        w.progress.iter().filter(|p| **p < 0).collect::<Vec<_>>(),
        vec![&-2]
    );
    assert!(
        w.outcomes[0].starts_with("failed -2 download URL refused"),
        "{:?}",
        w.outcomes
    );
    assert_eq!(w.fetch_offsets.len(), 6, "first try + 5 refreshes");
    assert_eq!(w.record, None);
    assert!(
        w.now >= Instant::from_millis(1000),
        "refreshes are spaced by back-off"
    );
}

#[test]
fn transient_errors_are_retried_with_backoff() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    for f in [
        Fault::Status(500),
        Fault::Refuse,
        Fault::CutAfter(3000),
        Fault::Status(503),
    ] {
        w.faults.push_back(f);
    }
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(w.fetch_offsets, vec![0, 0, 0, 3000, 3000]);
    // Back-off: at least base/2 * (1 + 2 + 4) before the fourth retry; well under the cap.
    assert!(
        w.now >= Instant::from_millis(250 + 500 + 1000),
        "now {:?}",
        w.now
    );
    assert!(!w.progress.iter().any(|p| *p < 0));
}

#[test]
fn an_exhausted_retry_budget_fails_with_minus_2_once() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    for _ in 0..20 {
        w.faults.push_back(Fault::Status(500));
    }
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, vec![-2]);
    assert_eq!(w.fetch_offsets.len(), 9, "1 + 8 retries");
    assert!(
        w.outcomes[0].contains("after 9 attempts: HTTP 500"),
        "{:?}",
        w.outcomes
    );
}

#[test]
fn a_stalled_download_is_restarted_after_the_stall_timeout() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::StallAfter(7000));
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.fetch_offsets, vec![0, 7000]);
    assert!(w.now >= Instant::from_millis(30_000));
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_digest_mismatch_never_reaches_activation() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::Corrupt(12_345));
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.last(), Some(&-3));
    assert_eq!(w.progress.iter().filter(|p| **p < 0).count(), 1);
    assert!(!w.transcript.iter().any(|l| l.starts_with("activate")));
    assert!(w.boot_next.is_none());
    assert!(!w.agent.is_image_verified());
    assert_eq!(w.record, None);
    let reason = format!("failed -3 {} mismatch", TASK_DIGEST.name());
    assert!(w.outcomes[0].starts_with(&reason), "{:?}", w.outcomes);
}

#[test]
fn bytes_beyond_the_image_size_are_never_written() {
    let mut w = world(5000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::Extra(3000));
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert!(w.slot[5000..].iter().all(|b| *b == 0xFF));
}

#[test]
fn flash_write_failure_reports_minus_4() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.fail_write = Some(3);
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(
        w.progress.iter().filter(|p| **p < 0).collect::<Vec<_>>(),
        vec![&-4]
    );
    assert!(w.outcomes[0].contains("flash write failed at offset 3072"));
    assert_eq!(w.record, None);
}

#[test]
fn record_save_failure_reports_minus_4() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.fail_save = Some(0);
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, vec![-4]);
    assert!(
        w.fetch_offsets.is_empty(),
        "no byte before the record is durable"
    );
}

#[test]
fn activation_failure_reports_minus_4() {
    let mut w = world(3000);
    w.offer_task();
    w.connect();
    w.fail_activate = true;
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress.last(), Some(&-4));
    assert!(w.outcomes[0].contains("activation"));
}

#[test]
fn an_unhealthy_image_is_rolled_back_and_reported() {
    let mut w = world(3000);
    w.offer_task();
    w.health = Health::Unhealthy;
    w.connect();
    assert_eq!(w.run_through_reboots(), 2);
    assert_eq!(w.running, "1.0.0");
    assert!(!w.confirmed);
    assert_eq!(
        w.progress.iter().filter(|p| **p < 0).collect::<Vec<_>>(),
        vec![&-1]
    );
    assert!(w
        .outcomes
        .iter()
        .any(|o| o.starts_with("failed -1 the application reported")));
    assert_eq!(
        w.outcomes.last().map(String::as_str),
        Some("rolled back 1.0.0")
    );
    assert_eq!(w.record, None);
}

#[test]
fn a_silent_health_check_times_out_into_a_rollback() {
    let mut w = world(3000);
    w.offer_task();
    w.health = Health::Silent;
    w.connect();
    w.run();
    w.reboot();
    let booted_at = w.now;
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.now, booted_at + Duration::from_secs(120));
    assert!(w
        .transcript
        .ends_with(&["rollback default".into(), "reboot".into()]));
    assert!(w
        .outcomes
        .iter()
        .any(|o| o.contains("did not report healthy in time")));
}

#[test]
fn a_bootloader_fallback_is_reported_as_minus_1() {
    let mut w = world(3000);
    w.offer_task();
    w.bootloader_falls_back = true;
    w.connect();
    assert_eq!(w.run_through_reboots(), 1);
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.progress.last(), Some(&-1));
    assert!(w
        .outcomes
        .iter()
        .any(|o| o.contains("rolled back: 2.0.0 did not boot")));
    assert_eq!(w.informs.last().map(String::as_str), Some("1.0.0"));
    assert_eq!(w.record, None);
}

#[test]
fn invalid_pushes_are_reported_with_a_reason_when_idle() {
    let mut w = world(3000);
    w.connect();
    let digest = task_digest_members(&task_digest_hex(b"9"));
    w.push_raw(&format!(
        r#"{{"code":"1000","data":{{"size":10,"version":"9","url":"http://h/p",{digest}}},"id":1}}"#
    ));
    w.push_raw(&format!(
        r#"{{"code":"1000","data":{{"size":999999999999,"version":"9","url":"https://h/p",{digest},"module":"MCU"}},"id":1}}"#
    ));
    w.push_raw("{not json");
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, vec![-1, -1, -1]);
    let reports: Vec<&String> = w
        .transcript
        .iter()
        .filter(|l| l.starts_with("pub progress"))
        .collect();
    assert!(reports[0].contains("https"), "{}", reports[0]);
    assert!(reports[1].contains("\"module\":\"MCU\""), "{}", reports[1]);
    assert!(reports[2].contains("invalid json"), "{}", reports[2]);
    assert_eq!(w.agent.phase(), Phase::Idle);
}

#[test]
fn tasks_for_another_module_are_refused() {
    let mut w = world(3000);
    w.connect();
    let digest = task_digest_members(&task_digest_hex(b"9"));
    w.push_raw(&format!(
        r#"{{"code":"1000","data":{{"size":10,"version":"9","url":"https://h/p",{digest},"module":"MCU"}},"id":1}}"#
    ));
    w.run();
    assert_eq!(w.progress, vec![-1]);
    assert!(w.outcomes.is_empty());
    assert!(w
        .transcript
        .iter()
        .any(|l| l.contains("module MCU is not managed")));
}

#[test]
fn a_task_for_the_running_version_is_answered_with_the_version() {
    let mut w = world(3000);
    w.version = "1.0.0".into();
    w.connect();
    w.run();
    w.offer_task();
    w.push_task();
    w.run();
    assert_eq!(
        w.informs,
        vec![String::from("1.0.0"), String::from("1.0.0")]
    );
    assert!(w.fetch_offsets.is_empty());
}

#[test]
fn offline_failures_are_reported_once_on_reconnect_and_progress_catches_up() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::StallAfter(6000));
    w.run_until(|w| w.agent.fetched_size() == 6000);
    w.disconnect();
    w.fail_write = Some(w.writes + 2);
    w.run();
    assert!(w.outcomes[0].starts_with("failed -4"));
    let sent_before = w.progress.len();
    assert!(!w.progress.contains(&-4), "offline: nothing published");
    w.connect();
    w.run();
    assert_eq!(w.progress.len(), sent_before + 1);
    assert_eq!(w.progress.last(), Some(&-4));
}

#[test]
fn the_cloud_dropping_the_task_cancels_the_download() {
    let mut w = world(20_000);
    w.offer_task();
    w.connect();
    w.faults.push_back(Fault::CutAfter(5000));
    w.run_until(|w| w.agent.fetched_size() == 5000);
    w.cloud_task = None;
    w.url_valid_from = u32::MAX;
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.outcomes, vec![String::from("canceled")]);
    assert!(!w.progress.iter().any(|p| *p < 0));
    assert_eq!(w.record, None);
}

#[cfg(feature = "sha256")]
#[test]
fn queries_answer_like_the_seed_ioctl() {
    let mut w = world(20_000);
    w.offer_sha256_task();
    w.connect();
    assert_eq!(w.agent.file_size(), None);
    w.faults.push_back(Fault::StallAfter(5000));
    w.run_until(|w| w.agent.fetched_size() == 5000);
    assert_eq!(w.agent.phase(), Phase::Downloading);
    assert_eq!(w.agent.file_size(), Some(20_000));
    assert_eq!(w.agent.target_version(), Some("2.0.0"));
    let mut hex = [0u8; 64];
    assert_eq!(
        w.agent.expected_digest().unwrap().to_hex(&mut hex),
        sha256_hex(&w.image)
    );
    assert!(!w.agent.is_image_verified());
    w.run();
    assert!(w.agent.is_image_verified());
    assert_eq!(w.agent.phase(), Phase::Rebooting);
}

#[test]
fn adapter_contract_violations_are_errors_and_change_nothing() {
    let mut agent = first_boot_agent(test_config(), Instant::ZERO);
    assert_eq!(
        agent.handle(Instant::ZERO, Event::WriteDone),
        Err(Error::UnexpectedWriteResult)
    );
    assert_eq!(
        agent.handle(Instant::ZERO, Event::RecordSaved),
        Err(Error::UnexpectedRecordResult)
    );
    assert_eq!(
        agent.handle(Instant::ZERO, Event::Activated),
        Err(Error::UnexpectedActivationResult)
    );
    assert_eq!(
        agent.handle(Instant::ZERO, Event::HealthVerdict { healthy: true }),
        Err(Error::UnexpectedHealthVerdict)
    );
    assert_eq!(
        agent.handle_body(Instant::ZERO, FetchId(0), b"x"),
        Err(Error::UnknownFetch)
    );
    agent.handle(Instant::ZERO, Event::Connected).unwrap();
    assert_eq!(
        agent.handle(Instant::ZERO, Event::Disconnected),
        Err(Error::ActionsNotDrained)
    );
    while agent.poll_action().is_some() {}
    assert_eq!(agent.phase(), Phase::Idle);
    assert_eq!(agent.poll_timeout(), None, "idle: nothing scheduled");
}

#[test]
fn a_corrupt_record_at_boot_is_discarded_and_cleared() {
    let mut w = world(3000);
    w.record = Some(vec![0xAB; 40]);
    w.reboot();
    w.run();
    assert!(w.notes.iter().any(|n| n.contains("RecordDiscarded")));
    assert_eq!(w.record, None);
}

#[cfg(feature = "legacy-request")]
#[test]
fn the_legacy_request_topic_can_replace_firmware_get() {
    let mut w = world(5000);
    w.config.task_request = crate::agent::TaskRequest::Legacy;
    w.restart_agent();
    w.offer_task();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert!(w
        .transcript
        .iter()
        .any(|l| l == r#"pub request {"id":"2","params":{"version":"1.0.0"}}"#));
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn time_going_backwards_never_moves_deadlines_into_the_past() {
    let mut agent = first_boot_agent(test_config(), Instant::from_millis(5000));
    agent
        .handle(Instant::from_millis(1000), Event::Connected)
        .unwrap();
    let mut actions = 0;
    while let Some(a) = agent.poll_action() {
        actions += 1;
        assert!(!matches!(a, Action::Fetch { .. }));
    }
    let subscriptions = if cfg!(feature = "mqtt-channel") { 3 } else { 2 };
    assert_eq!(
        actions,
        subscriptions + 2,
        "subscriptions, inform, firmware/get"
    );
    assert_eq!(agent.poll_timeout(), None);
}
