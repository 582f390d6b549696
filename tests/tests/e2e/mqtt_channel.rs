//! The MQTT-channel download (`dProtocol:"mqtt"`, docs/protocol.md §6) through ota-std: whole
//! images, every reply fault of the simulator, a window of requests, and a resume from the
//! record after the device was stopped mid-download.

use std::time::Duration;

use ota_sim::{Fault, JobId, JobSpec, PackageSpec, SignMethod, Sim, TaskState, Times};
use ota_std::DeviceEvent;
use ota_tests::{image, sim, TestDevice, WAIT};

const SIZE: usize = 200_000;

/// A simulator with one device and a static job for an MQTT-channel package of `size` bytes.
fn setup(size: usize, method: SignMethod) -> (Sim, ota_sim::DeviceInfo, JobId, Vec<u8>) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(size);
    let spec = PackageSpec::new("2.0.0", data.clone())
        .sign_method(method)
        .mqtt();
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    (sim, info, job, data)
}

fn succeeds(sim: &Sim, job: JobId, device: &TestDevice, data: &[u8]) {
    sim.wait_task_state(job, &device.info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    let steps = sim.progress_steps(&device.info);
    assert!(
        steps.iter().all(|s| *s > 0),
        "no failure reported: {steps:?}"
    );
    assert!(sim.downloads(&device.info).is_empty(), "nothing over HTTP");
}

fn whole_image_over_mqtt(method: SignMethod) {
    let (sim, info, job, data) = setup(SIZE, method);
    let device = TestDevice::start(&sim, &info, |c| c.agent.mqtt.block_size = 8 * 1024);
    succeeds(&sim, job, &device, &data);
    let blocks = sim.blocks(&info);
    assert!(blocks.iter().all(|b| b.code == 200), "{blocks:?}");
    assert_eq!(blocks.iter().map(|b| b.sent).sum::<u64>(), SIZE as u64);
    assert_eq!(blocks.len(), SIZE.div_ceil(8 * 1024));
    device.stop();
}

#[test]
fn downloads_a_whole_image_over_mqtt_with_md5() {
    whole_image_over_mqtt(SignMethod::Md5);
}

#[test]
fn downloads_a_whole_image_over_mqtt_with_sha256() {
    whole_image_over_mqtt(SignMethod::Sha256);
}

#[test]
fn blocks_larger_than_rumqttcs_default_packet_size_arrive() {
    // 16 KiB blocks: beyond rumqttc's default 10 KiB incoming packets.
    let (sim, info, job, data) = setup(SIZE, SignMethod::Md5);
    let device = TestDevice::start(&sim, &info, |c| c.agent.mqtt.block_size = 16 * 1024);
    succeeds(&sim, job, &device, &data);
    let blocks = sim.blocks(&info);
    assert!(blocks.iter().all(|b| b.code == 200), "{blocks:?}");
    assert_eq!(blocks[0].sent, 16 * 1024);
    device.stop();
}

/// One reply fault, once: it fires, the block is asked for again, the image installs.
fn survives(fault: Fault, window: u8) {
    let (sim, info, job, data) = setup(SIZE, SignMethod::Md5);
    let id = sim.set_fault(&info, fault, Times::Once);
    let device = TestDevice::start(&sim, &info, |c| c.agent.mqtt.window = window);
    succeeds(&sim, job, &device, &data);
    // A delayed reply may go out after the image is complete (the re-request was answered
    // first): the device stays up until it did.
    sim.wait_fault_fired(id, 1, WAIT).unwrap();
    assert_eq!(sim.fault_fired(id), 1, "{fault:?} fired");
    device.stop();
}

#[test]
fn dropped_reply_is_requested_again() {
    survives(Fault::DropReply, 1);
}

#[test]
fn late_reply_is_requested_again_and_the_late_one_ignored() {
    survives(Fault::DelayReply(Duration::from_millis(800)), 1);
}

#[test]
fn duplicated_reply_is_taken_once() {
    survives(Fault::DuplicateReply, 1);
}

#[test]
fn reordered_reply_is_placed_by_its_offset() {
    survives(Fault::ReorderReply, 4);
}

#[test]
fn corrupt_block_is_caught_by_the_crc() {
    survives(Fault::CorruptBlock, 1);
}

#[test]
fn wrong_offset_is_refused() {
    survives(Fault::WrongOffset, 1);
}

#[test]
fn a_window_of_four_downloads_the_whole_image() {
    let (sim, info, job, data) = setup(SIZE, SignMethod::Sha256);
    let device = TestDevice::start(&sim, &info, |c| c.agent.mqtt.window = 4);
    succeeds(&sim, job, &device, &data);
    let blocks = sim.blocks(&info);
    assert_eq!(blocks.len(), SIZE.div_ceil(4096), "each block once");
    device.stop();
}

#[test]
fn a_stream_that_never_answers_fails_with_minus_2() {
    let (sim, info, job, _) = setup(SIZE, SignMethod::Md5);
    let id = sim.set_fault(&info, Fault::DropReply, Times::Always);
    let device = TestDevice::start(&sim, &info, |_| {});
    sim.wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    device.expect("failure -2", |e| {
        matches!(e, DeviceEvent::Failed { code: -2, .. })
    });
    let negative: Vec<i64> = sim
        .progress_steps(&info)
        .into_iter()
        .filter(|s| *s < 0)
        .collect();
    assert_eq!(negative, [-2]);
    // The first request and one more per allowed failure (4 in a row), no more.
    assert_eq!(sim.fault_fired(id), 1 + 4);
    assert!(!device.path("firmware.img").exists());
    device.stop();
}

#[test]
fn stopped_mid_download_resumes_from_the_record() {
    const BIG: u64 = 600_000;
    const CHECKPOINT: u64 = 64 * 1024; // the tests' configuration
    let (sim, info, job, data) = setup(BIG as usize, SignMethod::Sha256);
    let device = TestDevice::start(&sim, &info, |_| {});
    device.expect(
        "progress past the half",
        |e| matches!(e, DeviceEvent::Progress { received, .. } if *received >= BIG / 2),
    );
    let dir = device.stop_keeping_files();
    assert!(
        dir.path().join("ota.record").exists(),
        "a checkpoint was saved"
    );
    let before = sim.blocks(&info);
    let requested = before.iter().map(|b| b.offset + b.sent).max().unwrap();
    assert!(requested < BIG, "stopped before the end");

    let device = TestDevice::restart(&sim, &info, dir, |_| {});
    succeeds(&sim, job, &device, &data);
    let after = &sim.blocks(&info)[before.len()..];
    let again: u64 = after
        .iter()
        .filter(|b| b.offset < requested)
        .map(|b| b.sent)
        .sum();
    // At most one checkpoint interval of received blocks, plus the block in flight when
    // the device stopped.
    assert!(
        again <= CHECKPOINT + 4096,
        "re-requested {again} bytes below {requested}"
    );
    assert!(after[0].offset > 0, "resumed, not restarted");
    device.stop();
}
