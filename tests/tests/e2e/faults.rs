//! Every fault of the simulator's firmware server, each asserted to have fired, ending in
//! success or in the right failure code.

use std::time::Duration;

use ota_sim::{DownloadRecord, Fault, JobId, JobSpec, PackageSpec, Sim, TaskState, Times};
use ota_std::DeviceEvent;
use ota_tests::{image, publish_as_cloud, sim, TestDevice, WAIT};

const SIZE: usize = 300_000;

/// A simulator with one device, a 2.0.0 package of `SIZE` bytes and a static batch job.
fn setup() -> (Sim, ota_sim::DeviceInfo, JobId, Vec<u8>) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(SIZE);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    (sim, info, job, data)
}

fn succeeds(sim: &Sim, job: JobId, device: &TestDevice, data: &[u8]) {
    sim.wait_task_state(job, &device.info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    let negative: Vec<i64> = sim
        .progress_steps(&device.info)
        .into_iter()
        .filter(|s| *s < 0)
        .collect();
    assert!(negative.is_empty(), "no failure reported: {negative:?}");
}

/// Waits for the task to fail and checks that exactly one failure, `code`, was reported.
fn fails_with(sim: &Sim, job: JobId, device: &TestDevice, code: i64) {
    sim.wait_task_state(job, &device.info, TaskState::Failed, WAIT)
        .unwrap();
    device.expect(
        &format!("failure {code}"),
        |e| matches!(e, DeviceEvent::Failed { code: c, .. } if i64::from(*c) == code),
    );
    let negative: Vec<i64> = sim
        .progress_steps(&device.info)
        .into_iter()
        .filter(|s| *s < 0)
        .collect();
    assert_eq!(negative, [code]);
}

/// The first byte each request asked for (0 without a Range header).
fn range_starts(records: &[DownloadRecord]) -> Vec<u64> {
    records
        .iter()
        .map(|r| {
            r.range
                .as_deref()
                .and_then(|v| v.strip_prefix("bytes="))
                .and_then(|v| v.trim_end_matches('-').parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

#[test]
fn corrupt_byte_fails_with_minus_3_then_succeeds_on_retry() {
    let (sim, info, job, data) = setup();
    let fault = sim.set_fault(&info, Fault::CorruptByte(123_456), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    fails_with(&sim, job, &device, -3);
    assert_eq!(sim.fault_fired(fault), 1);
    assert_eq!(device.version(), "1.0.0");

    assert_eq!(sim.retry_job(job).unwrap(), 1);
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    let records = sim.downloads(&info);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(
        records[1].range, None,
        "the bad image was discarded: restart from 0"
    );
    device.stop();
}

fn refused_url_fails_with_minus_2(status: u16) {
    let (sim, info, job, _) = setup();
    let fault = sim.set_fault(&info, Fault::Status(status), Times::Always);
    let device = TestDevice::start(&sim, &info, |_| {});
    fails_with(&sim, job, &device, -2);
    // The first URL and one fresh URL per allowed refresh, then it gives up.
    assert_eq!(sim.fault_fired(fault), 4);
    assert!(sim.downloads(&info).iter().all(|r| r.status == status));
    assert!(!device.path("firmware.img").exists());
    device.stop();
}

#[test]
fn forbidden_always_fails_with_minus_2() {
    refused_url_fails_with_minus_2(403);
}

#[test]
fn not_found_always_fails_with_minus_2() {
    refused_url_fails_with_minus_2(404);
}

#[test]
fn cut_connection_resumes_with_range() {
    let (sim, info, job, data) = setup();
    let fault = sim.set_fault(&info, Fault::CutAfter(100_000), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    succeeds(&sim, job, &device, &data);
    assert_eq!(sim.fault_fired(fault), 1);
    let records = sim.downloads(&info);
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[1].status, 206);
    let resumed = range_starts(&records)[1];
    assert!(resumed > 0 && resumed <= 100_000, "resumed at {resumed}");
    device.stop();
}

#[test]
fn ignored_range_restarts_from_zero_without_appending() {
    let (sim, info, job, data) = setup();
    let cut = sim.set_fault(&info, Fault::CutAfter(100_000), Times::Once);
    let ignore = sim.set_fault(&info, Fault::IgnoreRange, Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    succeeds(&sim, job, &device, &data);
    assert_eq!((sim.fault_fired(cut), sim.fault_fired(ignore)), (1, 1));
    let records = sim.downloads(&info);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(records[1].range.is_some() && records[1].status == 200);
    device.stop();
}

#[test]
fn server_error_once_is_retried() {
    let (sim, info, job, data) = setup();
    let fault = sim.set_fault(&info, Fault::Status(500), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    succeeds(&sim, job, &device, &data);
    assert_eq!(sim.fault_fired(fault), 1);
    let statuses: Vec<u16> = sim.downloads(&info).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [500, 200]);
    device.stop();
}

#[test]
fn stalled_download_is_abandoned_and_resumed() {
    let (sim, info, job, data) = setup();
    let stall = Fault::Stall {
        after: 100_000,
        duration: Duration::from_secs(3),
    };
    let fault = sim.set_fault(&info, stall, Times::Once);
    let device = TestDevice::start(&sim, &info, |c| {
        c.agent.stall_timeout = Duration::from_millis(700);
    });
    succeeds(&sim, job, &device, &data);
    assert_eq!(sim.fault_fired(fault), 1);
    let records = sim.downloads(&info);
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(range_starts(&records)[1] > 0);
    device.stop();
}

#[test]
fn rate_limited_download_completes() {
    let (sim, info, job, data) = setup();
    let fault = sim.set_fault(&info, Fault::RateLimit(1_000_000), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    succeeds(&sim, job, &device, &data);
    assert_eq!(sim.fault_fired(fault), 1);
    device.stop();
}

#[test]
fn expired_url_mid_download_resumes_with_a_fresh_url() {
    let sim = sim();
    // URLs live 2 s (1–2 s after rounding to whole seconds); the first download is slowed
    // down and cut after 3 s, so its retry meets an expired URL.
    sim.set_url_ttl(Duration::from_secs(2));
    let info = sim.add_device().unwrap();
    let data = image(SIZE);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let slow = sim.set_fault(&info, Fault::RateLimit(100_000), Times::Once);
    let cut = sim.set_fault(&info, Fault::CutAfter(300_000 - 1), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    succeeds(&sim, job, &device, &data);
    assert_eq!((sim.fault_fired(slow), sim.fault_fired(cut)), (1, 1));

    // The retry met the expired URL: a refused 403 (AccessDenied); the fresh URL shows as a
    // third task delivery (push, firmware/get on connect, firmware/get after the 403).
    let task = sim.task(job, &info).unwrap();
    assert_eq!(task.pushes, 3, "{task:?}");
    let records = sim.downloads(&info);
    let statuses: Vec<u16> = records.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 206], "{records:?}");
    assert_eq!(records[1].refused.as_deref(), Some("AccessDenied"));
    assert!(records[0].refused.is_none() && records[2].refused.is_none());
    assert_eq!(
        range_starts(&records)[2],
        300_000 - 1,
        "resumed where the cut left off, not from zero"
    );
    assert_eq!(records[2].content_length, 1, "only the missing byte again");
    device.stop();
}

/// A push larger than 64 KiB (here 100 KiB, with an absurd version) reaches the core, which
/// refuses it with one -1; the MQTT session is not dropped for its size.
#[test]
fn a_push_over_64_kib_gets_one_minus_1_and_the_session_stays_up() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    let version = "9".repeat(100 * 1024);
    let push = format!(
        r#"{{"code":"1000","data":{{"size":10,"version":"{version}","url":"http://127.0.0.1:9/f","md5":"{md5}"}},"id":8,"message":"success"}}"#,
        md5 = "0".repeat(32)
    );
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    publish_as_cloud(&sim, &format!("/ota/device/upgrade/{pk}/{dn}"), push);
    let mut dropped = Vec::new();
    device.expect("the refusal", |e| {
        if let DeviceEvent::Disconnected { reason } = e {
            dropped.push(reason.clone());
        }
        matches!(e, DeviceEvent::TaskRejected { .. })
    });
    assert!(dropped.is_empty(), "session dropped: {dropped:?}");
    sim.wait_progress(&info, 1, WAIT).unwrap();
    assert_eq!(sim.progress_steps(&info), [-1]);
    // The same session serves the next (real) task.
    let data = image(10_000);
    let package = sim.add_package(PackageSpec::new("2.0.0", data)).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect("success", |e| {
        if let DeviceEvent::Disconnected { reason } = e {
            dropped.push(reason.clone());
        }
        matches!(e, DeviceEvent::Succeeded { .. })
    });
    assert!(dropped.is_empty(), "session dropped: {dropped:?}");
    device.stop();
}
