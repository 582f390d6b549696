//! The job engine (docs/protocol.md §9) driven by a scripted device.

use crate::device::{firmware, http_get, Device, WAIT};
use crate::sim;
use ota_sim::{Error, JobSpec, PackageSpec, TaskState};
use std::time::Duration;

#[test]
fn success_only_by_reported_version() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = firmware(5000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim
        .create_job(JobSpec::batch(package).timeout(Duration::from_secs(60)))
        .unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    let got = http_get(push["data"]["url"].as_str().unwrap(), None, WAIT);
    assert_eq!(got.body, data);
    for step in [1, 50, 100] {
        dev.progress(step, "downloading");
    }
    sim.wait_progress(&info, 3, WAIT).unwrap();
    let task = sim.task(job, &info).unwrap();
    assert_eq!(
        (task.state, task.last_step),
        (TaskState::InProgress, Some(100))
    );
    dev.inform("2.0.0");
    let task = sim
        .wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    assert_eq!(task.source_version.as_deref(), Some("1.0.0"));
    assert_eq!(sim.progress_steps(&info), vec![1, 50, 100]);
}

#[test]
fn negative_step_fails_the_task() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    dev.progress(1, "start");
    dev.progress(-2, "download failed");
    let task = sim
        .wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert!(task.reason.unwrap().contains("download failed"));
    assert_eq!(sim.progress_steps(&info), vec![1, -2]);
}

#[test]
fn foreign_version_fails_the_task() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    dev.inform("1.0.0");
    dev.expect_push();
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Notified);
    dev.inform("1.5.0");
    let task = sim
        .wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert!(task.reason.unwrap().contains("foreign version 1.5.0"));
}

#[test]
fn timeout_counts_from_first_progress() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let timeout = Duration::from_millis(300);
    let job = sim
        .create_job(JobSpec::batch(package).timeout(timeout))
        .unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    // Without a progress report the clock does not run.
    assert!(sim
        .wait_task_state(job, &info, TaskState::Failed, timeout * 2)
        .is_err());
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Notified);
    dev.progress(1, "downloading");
    sim.wait_task_state(job, &info, TaskState::InProgress, WAIT)
        .unwrap();
    let task = sim
        .wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert_eq!(task.reason.as_deref(), Some("timed out"));
}

#[test]
fn failed_devices_are_retried_automatically() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let spec = JobSpec::batch(package).retry(1, Duration::from_millis(50));
    let job = sim.create_job(spec).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    dev.progress(-3, "digest mismatch");
    // The retry re-pushes the task.
    dev.expect_push();
    let task = sim
        .wait_task_state(job, &info, TaskState::Notified, WAIT)
        .unwrap();
    assert_eq!((task.retries_used, task.pushes), (1, 2));
    dev.progress(-3, "digest mismatch");
    let task = sim
        .wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert!(!task.retry_pending, "the retry budget is spent");
    // The operator's retry re-pushes only failed devices.
    assert_eq!(sim.retry_job(job).unwrap(), 1);
    dev.expect_push();
    dev.inform("2.0.0");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    assert_eq!(sim.retry_job(job).unwrap(), 0);
}

#[test]
fn manual_retry_leaves_pending_and_upgrading_devices_alone() {
    let sim = sim();
    let (a, b) = (sim.add_device().unwrap(), sim.add_device().unwrap());
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut da, mut db) = (Device::online(&sim, &a), Device::online(&sim, &b));
    da.inform("1.0.0");
    db.inform("1.0.0");
    da.expect_push();
    db.expect_push();
    da.progress(-1, "broken");
    db.progress(5, "downloading");
    sim.wait_task_state(job, &a, TaskState::Failed, WAIT)
        .unwrap();
    sim.wait_task_state(job, &b, TaskState::InProgress, WAIT)
        .unwrap();
    assert_eq!(sim.retry_job(job).unwrap(), 1);
    assert_eq!(sim.task(job, &a).unwrap().state, TaskState::Notified);
    assert_eq!(sim.task(job, &b).unwrap().state, TaskState::InProgress);
}

#[test]
fn package_needing_verification_waits_for_its_verification_job() {
    let sim = sim();
    let (a, b) = (sim.add_device().unwrap(), sim.add_device().unwrap());
    let spec = PackageSpec::new("2.0.0", firmware(10)).needs_verification();
    let package = sim.add_package(spec).unwrap();
    assert!(matches!(
        sim.create_job(JobSpec::batch(package)),
        Err(Error::PackageNotVerified)
    ));
    let verify = sim
        .create_job(JobSpec::verification(package, &[&a]))
        .unwrap();
    assert!(sim.task(verify, &b).is_none());
    let mut da = Device::online(&sim, &a);
    da.inform("1.0.0");
    da.expect_push();
    assert!(matches!(
        sim.create_job(JobSpec::batch(package)),
        Err(Error::PackageNotVerified)
    ));
    da.inform("2.0.0");
    sim.wait_task_state(verify, &a, TaskState::Succeeded, WAIT)
        .unwrap();
    assert!(sim.is_verified(package));
    let batch = sim.create_job(JobSpec::batch(package)).unwrap();
    assert!(sim.task(batch, &a).is_none(), "a is on the target already");
    assert_eq!(sim.task(batch, &b).unwrap().state, TaskState::Queued);
}

#[test]
fn source_filter_and_devices_on_target_are_skipped() {
    let sim = sim();
    let devs: Vec<_> = (0..3).map(|_| sim.add_device().unwrap()).collect();
    let mut online: Vec<Device> = devs.iter().map(|d| Device::online(&sim, d)).collect();
    for (dev, version) in online.iter_mut().zip(["1.0.0", "1.1.0", "2.0.0"]) {
        dev.inform(version);
    }
    sim.wait_version(&devs[2], "default", "2.0.0", WAIT)
        .unwrap();
    sim.wait_version(&devs[1], "default", "1.1.0", WAIT)
        .unwrap();
    sim.wait_version(&devs[0], "default", "1.0.0", WAIT)
        .unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim
        .create_job(JobSpec::batch(package).source_versions(&["1.0.0"]))
        .unwrap();
    assert_eq!(sim.task(job, &devs[0]).unwrap().state, TaskState::Notified);
    assert!(sim.task(job, &devs[1]).is_none());
    assert!(sim.task(job, &devs[2]).is_none());
    // A static job does not take devices that match later.
    online[1].inform("1.0.0");
    sim.wait_version(&devs[1], "default", "1.0.0", WAIT)
        .unwrap();
    assert!(sim.task(job, &devs[1]).is_none());
}

#[test]
fn dynamic_job_takes_devices_that_report_later() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim
        .create_job(
            JobSpec::batch(package)
                .dynamic()
                .source_versions(&["1.0.0"]),
        )
        .unwrap();
    assert!(
        sim.task(job, &info).is_none(),
        "version unknown: not matching yet"
    );
    let mut dev = Device::online(&sim, &info);
    dev.inform("0.5.0");
    sim.wait_version(&info, "default", "0.5.0", WAIT).unwrap();
    assert!(sim.task(job, &info).is_none());
    dev.inform("1.0.0");
    dev.expect_push();
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Notified);
}

#[test]
fn confirm_and_cancel() {
    let sim = sim();
    let (a, b) = (sim.add_device().unwrap(), sim.add_device().unwrap());
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim
        .create_job(JobSpec::batch(package).needs_confirm())
        .unwrap();
    let mut da = Device::online(&sim, &a);
    da.inform("1.0.0");
    sim.wait_version(&a, "default", "1.0.0", WAIT).unwrap();
    assert_eq!(sim.task(job, &a).unwrap().state, TaskState::Confirm);
    da.firmware_get("\"1\"", None);
    assert_eq!(da.expect_get_reply()["data"], serde_json::json!({}));
    assert_eq!(sim.confirm_job(job).unwrap(), 2);
    da.expect_push();
    assert_eq!(sim.task(job, &a).unwrap().state, TaskState::Notified);
    assert_eq!(sim.task(job, &b).unwrap().state, TaskState::Queued);
    assert_eq!(sim.cancel_task(job, &a).unwrap(), 1);
    assert_eq!(sim.task(job, &a).unwrap().state, TaskState::Canceled);
    assert_eq!(sim.cancel_job(job).unwrap(), 1);
    assert_eq!(sim.task(job, &b).unwrap().state, TaskState::Canceled);
    da.firmware_get("\"2\"", None);
    assert_eq!(da.expect_get_reply()["data"], serde_json::json!({}));
}

#[test]
fn status_endpoint_lists_devices_jobs_and_tasks() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    sim.create_job(JobSpec::batch(package)).unwrap();
    let got = http_get(&format!("{}/status", sim.http_base_url()), None, WAIT);
    assert_eq!(got.status, 200);
    let status: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(
        status["devices"][0]["device_name"],
        info.id.device_name.as_str()
    );
    assert_eq!(status["jobs"][0]["id"], 0);
    assert_eq!(status["tasks"][0]["state"], "QUEUED");
    assert_eq!(status["packages"][0]["version"], "2.0.0");
}

#[test]
fn device_already_on_target_is_skipped() {
    let sim = sim();
    let (a, b) = (sim.add_device().unwrap(), sim.add_device().unwrap());
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let fixed = sim
        .create_job(JobSpec::batch(package).devices(&[&a]))
        .unwrap();
    let dynamic = sim
        .create_job(JobSpec::batch(package).dynamic().devices(&[&b]))
        .unwrap();
    assert_eq!(sim.task(fixed, &a).unwrap().state, TaskState::Queued);
    assert!(
        sim.task(dynamic, &b).is_none(),
        "a dynamic job waits for the report"
    );
    let (mut da, mut db) = (Device::online(&sim, &a), Device::online(&sim, &b));
    da.inform("2.0.0");
    db.inform("2.0.0");
    sim.wait_version(&a, "default", "2.0.0", WAIT).unwrap();
    sim.wait_version(&b, "default", "2.0.0", WAIT).unwrap();
    assert!(sim.task(fixed, &a).is_none());
    assert!(sim.task(dynamic, &b).is_none());
    db.inform("1.0.0");
    db.expect_push();
    assert_eq!(sim.task(dynamic, &b).unwrap().state, TaskState::Notified);
}

#[test]
fn watchers_see_every_state_and_step_change() {
    let sim = crate::sim();
    let states = sim.watch_states();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(ota_sim::PackageSpec::new(
            "2.0.0",
            crate::device::firmware(10),
        ))
        .unwrap();
    let job = sim.create_job(ota_sim::JobSpec::batch(package)).unwrap();
    let mut dev = crate::device::Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    dev.progress(10, "a");
    dev.progress(60, "b");
    dev.inform("2.0.0");
    sim.wait_task_state(
        job,
        &info,
        ota_sim::TaskState::Succeeded,
        crate::device::WAIT,
    )
    .unwrap();
    let seen: Vec<(ota_sim::TaskState, Option<i64>)> =
        states.try_iter().map(|c| (c.state, c.step)).collect();
    use ota_sim::TaskState::*;
    assert_eq!(
        seen,
        [
            (Notified, None),
            (InProgress, Some(10)),
            (InProgress, Some(60)),
            (Succeeded, Some(60))
        ]
    );
}
