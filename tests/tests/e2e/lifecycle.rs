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
