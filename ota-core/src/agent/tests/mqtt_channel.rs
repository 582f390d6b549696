//! The MQTT-channel download in the simulated world: block requests and checked replies,
//! every reply fault, windows, resume after power loss, and the retry budget.

use alloc::format;
use alloc::vec;
use alloc::vec::Vec;

use crate::testkit::world::*;

fn world(len: usize, window: u8) -> World {
    let mut config = test_config();
    config.mqtt.block_size = 1500;
    config.mqtt.window = window;
    let mut w = World::new(config, test_image(len, 9));
    w.mqtt_channel = true;
    w.offer_task();
    w
}

#[test]
fn an_image_arrives_block_by_block_and_installs() {
    for window in [1, 3] {
        let mut w = world(20_000, window);
        w.connect();
        assert_eq!(w.run(), Stop::Reboot);
        assert_eq!(w.slot_image(), &w.image[..]);
        assert!(w.fetch_offsets.is_empty(), "no HTTP at all");
        let expected: Vec<u64> = (0..20_000).step_by(1500).collect();
        assert_eq!(w.block_requests, expected);
        assert_eq!(w.progress.last(), Some(&100));
    }
}

#[test]
fn sha256_over_mqtt_is_verified_too() {
    let mut w = world(7000, 2);
    w.image = test_image(7000, 3);
    w.offer_sha256_task();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn every_reply_fault_is_survived_and_each_block_is_checked() {
    let faults = [
        MqttFault::Drop,
        MqttFault::Duplicate,
        MqttFault::Corrupt,
        MqttFault::WrongOffset,
        MqttFault::Refuse,
        MqttFault::Hold,
        MqttFault::WrongFileLength,
    ];
    for fault in faults {
        let mut w = world(12_000, 2);
        w.mqtt_faults
            .extend([None, Some(fault)].into_iter().flatten());
        w.connect();
        assert_eq!(w.run(), Stop::Reboot, "{fault:?}");
        assert_eq!(w.slot_image(), &w.image[..], "{fault:?}");
        assert!(!w.progress.iter().any(|p| *p < 0), "{fault:?}");
        assert!(w.mqtt_faults.is_empty(), "{fault:?} was applied");
        let repeats = w.block_requests.len() - 8;
        let expected_repeats = match fault {
            MqttFault::Duplicate | MqttFault::Hold => 0,
            _ => 1,
        };
        assert_eq!(
            repeats, expected_repeats,
            "{fault:?}: {:?}",
            w.block_requests
        );
    }
}

#[test]
fn a_dropped_reply_is_asked_again_after_the_reply_timeout() {
    let mut w = world(3000, 1);
    w.mqtt_faults.push_back(MqttFault::Drop);
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.block_requests, vec![0, 0, 1500]);
    assert!(w.now >= crate::time::Instant::from_millis(10_000));
}

#[test]
fn a_silent_stream_fails_with_minus_2_after_the_budget() {
    let mut w = world(3000, 1);
    w.mqtt_faults.extend([MqttFault::Drop; 10]);
    w.connect();
    assert_eq!(w.run(), Stop::Quiet);
    assert_eq!(w.progress, vec![-2]);
    assert_eq!(w.block_requests.len(), 5, "first try and four retries");
    assert!(
        w.outcomes[0].contains("no reply for the block at 0"),
        "{:?}",
        w.outcomes
    );
}

#[test]
fn power_loss_resumes_the_mqtt_download_from_the_record() {
    let mut w = world(30_000, 2);
    w.cut = Some(Cut::Write { n: 15, torn: 10 });
    w.connect();
    assert_eq!(w.run(), Stop::PowerLost);
    let received = w.agent.fetched_size();
    let before = w.block_requests.len();
    w.reboot();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    let resumed_at = w.block_requests[before];

    assert!(
        resumed_at > 0 && received - resumed_at <= 4096,
        "resumed at {resumed_at}, had {received}"
    );
    assert_eq!(w.slot_image(), &w.image[..]);
}

#[test]
fn a_reconnect_asks_again_for_what_was_in_flight() {
    let mut w = world(12_000, 2);
    w.mqtt_faults.push_back(MqttFault::Drop);
    w.connect();
    w.run_until(|w| w.block_requests.len() == 2);
    w.disconnect();
    w.connect();
    assert_eq!(w.run(), Stop::Reboot);
    assert_eq!(w.slot_image(), &w.image[..]);
    assert_eq!(&w.block_requests[..4], &[0, 1500, 0, 1500]);
}

#[test]
fn mqtt_images_beyond_16_mb_are_refused() {
    let mut w = world(100, 1);
    let digest = task_digest_members(&task_digest_hex(b"2.0.0"));
    w.cloud_task = Some(format!(r#""size":16777217,"version":"2.0.0",{digest}"#));
    w.connect();
    w.run();
    assert_eq!(w.progress, vec![-1]);
    assert!(w.notes.iter().any(|n| n.contains("16 MB")));
}
