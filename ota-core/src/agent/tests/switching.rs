//! What a hostile or broken cloud can make the device do: a task switched in a loop costs one
//! GET per switch interval (the first task still starts at once), and a push beyond the size
//! limit is refused with one -1 while the session and a later good task go on.

use alloc::format;
use alloc::string::String;
use core::time::Duration;

use crate::testkit::world::*;

fn fetches(w: &World) -> usize {
    w.transcript
        .iter()
        .filter(|l| l.starts_with("fetch"))
        .count()
}

fn world() -> World {
    let mut w = World::new(test_config(), test_image(30_000, 1));
    w.offer_task();
    w
}

#[test]
fn the_first_task_is_fetched_at_once() {
    let mut w = world();
    let start = w.now;
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    assert_eq!(w.now, start, "no wait before the first GET");
}

#[test]
fn fifty_task_switches_in_a_burst_make_one_more_get_for_the_latest() {
    let mut w = world();
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    let first = w.now;
    for seed in 0..50u8 {
        w.image = test_image(20_000 + usize::from(seed), seed);
        w.version = format!("3.{seed}");
        w.offer_task();
        w.push_task();
    }
    w.run_until(|w| fetches(w) == 2);
    let interval = w.config.task_switch_interval;
    assert!(
        w.now >= first + interval,
        "the switch waited for the interval"
    );
    w.run_through_reboots();
    assert_eq!(
        fetches(&w),
        2,
        "one GET for the first task, one for the latest"
    );
    assert_eq!(w.running, "3.49");
    assert_eq!(w.record, None);
    assert!(!w.progress.iter().any(|p| *p < 0), "{:?}", w.progress);
}

#[test]
fn a_switch_after_the_interval_is_fetched_at_once() {
    let mut w = world();
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    w.advance(w.config.task_switch_interval + Duration::from_secs(1));
    w.image = test_image(9_000, 9);
    w.version = String::from("3.9");
    w.offer_task();
    w.push_task();
    let at = w.now;
    w.run_until(|w| fetches(w) == 2);
    assert_eq!(w.now, at);
    w.run_through_reboots();
    assert_eq!(w.running, "3.9");
}

#[test]
fn a_parked_switch_the_cloud_cancels_starts_nothing_and_leaves_no_record() {
    let mut w = world();
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    w.image = test_image(9_000, 9);
    w.version = String::from("3.9");
    w.offer_task();
    w.push_task();
    w.run_until(|w| w.record.is_none());
    w.cloud_task = None; // the cloud drops the task before the switch is due
    w.disconnect();
    w.connect(); // the reconnect asks, and hears there is no task
    w.run_through_reboots();
    assert_eq!(fetches(&w), 1);
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.record, None);
    assert!(
        w.outcomes.iter().any(|o| o == "canceled"),
        "{:?}",
        w.outcomes
    );
}

#[test]
fn a_push_beyond_the_size_limit_gets_one_minus_1_and_the_next_task_installs() {
    let mut w = world();
    w.cloud_task = None;
    w.connect();
    w.run();
    let limit = w.config.rules.max_message_len;
    let huge = format!(
        r#"{{"code":"1000","data":{{"version":"9","pad":"{}"}},"id":1}}"#,
        "x".repeat(limit)
    );
    w.push_raw(&huge);
    w.run();
    assert_eq!(w.progress, [-1]);
    let report = w
        .transcript
        .iter()
        .find(|l| l.starts_with("pub progress"))
        .unwrap();
    assert!(
        report.contains(&format!("exceeds the {limit} byte limit")),
        "{report}"
    );
    assert!(w.agent.is_online());
    w.offer_task();
    w.push_task();
    w.run_through_reboots();
    assert_eq!(w.running, "2.0.0");
}

/// The fuzzer's "record left behind after success": a download interrupted by a power cut,
/// then the cloud's task is the version already running. The interrupted download's record
/// goes with it (it used to stay, and every boot asked for a task that did not exist).
#[test]
fn a_resume_point_for_an_image_the_cloud_no_longer_wants_is_cleared() {
    let mut w = world();
    w.cut = Some(Cut::Save { n: 3 });
    w.connect();
    assert_eq!(w.run(), Stop::PowerLost);
    assert!(w.record.is_some());
    // The cloud now targets what runs: a push of it, held by the broker across the restart.
    w.reboot();
    let md5 = md5_hex(b"running");
    let push = format!(
        r#"{{"code":"1000","data":{{"size":7,"version":"1.0.0","url":"https://fw.example/1.0.0.bin?gen=9","md5":"{md5}"}},"id":5}}"#
    );
    w.deliver("/ota/device/upgrade/a1TestPK001/dev01", push.as_bytes());
    w.cloud_task = None;
    w.connect();
    w.run_through_reboots();
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.record, None, "the interrupted download's record is gone");
    assert_eq!(fetches(&w), 1, "nothing downloaded after the restart");
}

/// A waiting switch the cloud then calls off (its task is now the running version) starts
/// nothing, and the stopped download leaves no record.
#[test]
fn a_parked_switch_to_the_running_version_is_dropped() {
    let mut w = world();
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    w.image = test_image(9_000, 9);
    w.version = String::from("3.9");
    w.offer_task();
    w.push_task();
    w.run_until(|w| w.record.is_none());
    w.version = String::from("1.0.0");
    w.image = test_image(7, 7);
    w.offer_task();
    w.push_task();
    w.run_through_reboots();
    assert_eq!(fetches(&w), 1);
    assert_eq!(w.running, "1.0.0");
    assert_eq!(w.record, None);
}

/// Another module's task that comes while a switch waits goes after it, not over it.
#[cfg(feature = "modules")]
#[test]
fn another_modules_task_waits_behind_a_parked_switch() {
    let mut w = world();
    w.config.extra_modules = alloc::vec![(String::from("MCU"), String::from("1.0"))];
    w.restart_agent();
    w.connect();
    w.run_until(|w| fetches(w) == 1);
    w.image = test_image(9_000, 9);
    w.version = String::from("3.9");
    w.offer_task();
    w.push_task();
    w.run_until(|w| w.record.is_none());
    w.module = Some(String::from("MCU"));
    w.image = test_image(5_000, 5);
    w.version = String::from("2.5");
    w.offer_task();
    w.push_task();
    w.run_until(|w| fetches(w) == 2);
    assert_eq!(
        w.agent.target_version(),
        Some("3.9"),
        "the parked switch starts first"
    );
}
