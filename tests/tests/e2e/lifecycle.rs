//! Boot-time behaviour: health check and rollback, and a refused login.

use ota_sim::{JobSpec, PackageSpec};
use ota_std::{DeviceEvent, Error, Health};
use ota_tests::{image, sim, TestDevice, WAIT};

#[test]
fn failed_health_check_rolls_back_to_the_previous_image() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(100_000)))
        .unwrap();
    sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        std::fs::write(c.staging.with_file_name("firmware.img"), b"old image").unwrap();
        c.health = Health::Command("exit 1".into());
    });
    device.expect(
        "rollback",
        |e| matches!(e, DeviceEvent::RolledBack { version } if version == "1.0.0"),
    );
    assert_eq!(
        std::fs::read(device.path("firmware.img")).unwrap(),
        b"old image"
    );
    assert_eq!(device.version(), "1.0.0");
    // The new image reported itself before its health check (that is what the cloud counts),
    // then the failure (-1), then the old version again after the rollback.
    let mut steps = sim.progress_steps(&info);
    while !steps.contains(&-1) {
        steps = sim.wait_progress(&info, steps.len() + 1, WAIT).unwrap();
    }
    assert_eq!(steps.iter().filter(|s| **s < 0).collect::<Vec<_>>(), [&-1]);
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    device.stop();
}

#[test]
fn wrong_secret_is_a_clear_error() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.device_secret = "not-the-secret".into();
    });
    let err = device.handle.join().unwrap_err();
    let Error::Mqtt(message) = &err else {
        panic!("unexpected error {err:?}");
    };
    assert!(
        message.contains("check the product key, device name and device secret"),
        "{message}"
    );
}

#[test]
fn offered_task_waits_for_the_application() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(50_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.agent.confirmation = ota_core::Confirmation::Ask {
            report_decline: false,
        };
    });
    device.expect(
        "an offer",
        |e| matches!(e, DeviceEvent::TaskOffered { version, size: 50_000 } if version == "2.0.0"),
    );
    assert!(
        sim.downloads(&info).is_empty(),
        "nothing fetched before the answer"
    );
    device.handle.stopper().answer_offer(true);
    sim.wait_task_state(job, &info, ota_sim::TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    device.stop();
}

/// A simulator with one device, a 2.0.0 package and a static job; the device asks before
/// each task, reporting a decline when `report_decline`.
fn offered(report_decline: bool) -> (ota_sim::Sim, ota_sim::JobId, TestDevice) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(50_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.agent.confirmation = ota_core::Confirmation::Ask { report_decline };
    });
    device.expect("an offer", |e| matches!(e, DeviceEvent::TaskOffered { .. }));
    (sim, job, device)
}

#[test]
fn declined_task_is_not_reported_unless_configured() {
    let (sim, job, device) = offered(false);
    let info = device.info.clone();
    device.handle.stopper().answer_offer(false);
    device.expect("the decline", |e| matches!(e, DeviceEvent::Declined));
    // A second boot asks again (and is offered the task again): anything the first boot sent
    // reached the cloud before that request did.
    let dir = device.stop_keeping_files();
    let device = TestDevice::restart(&sim, &info, dir, |c| {
        c.agent.confirmation = ota_core::Confirmation::Ask {
            report_decline: false,
        };
    });
    device.expect("a new offer", |e| {
        matches!(e, DeviceEvent::TaskOffered { .. })
    });
    assert!(sim.progress_steps(&info).is_empty(), "nothing reported");
    assert!(sim.downloads(&info).is_empty(), "nothing fetched");
    assert_eq!(
        sim.task(job, &info).unwrap().state,
        ota_sim::TaskState::Notified
    );
    device.stop();
}

#[test]
fn declined_task_is_reported_as_minus_1_when_configured() {
    let (sim, job, device) = offered(true);
    device.handle.stopper().answer_offer(false);
    device.expect("the decline", |e| matches!(e, DeviceEvent::Declined));
    let failed = sim
        .wait_task_state(job, &device.info, ota_sim::TaskState::Failed, WAIT)
        .unwrap();
    assert!(failed.reason.is_some(), "{failed:?}");
    assert_eq!(sim.progress_steps(&device.info), [-1]);
    assert!(sim.downloads(&device.info).is_empty(), "nothing fetched");
    device.stop();
}

#[test]
fn offered_task_can_be_accepted_later() {
    let (sim, job, device) = offered(false);
    // Not synchronisation: the answer is meant to come late, after the agent's timers (the
    // tests' 200 ms progress interval, 500 ms block timeout) would have fired.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    assert!(
        sim.downloads(&device.info).is_empty(),
        "nothing fetched yet"
    );
    assert!(sim.progress_steps(&device.info).is_empty());
    device.handle.stopper().answer_offer(true);
    sim.wait_task_state(job, &device.info, ota_sim::TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    device.stop();
}
