//! The whole story with no faults: push, download, verify, activate, reboot, report, confirm.

use ota_sim::{JobSpec, PackageSpec, SignMethod, TaskState};
use ota_std::DeviceEvent;
use ota_tests::{image, sim, TestDevice, WAIT};

fn upgrades_with(method: SignMethod) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(300_000);
    let spec = PackageSpec::new("2.0.0", data.clone()).sign_method(method);
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});

    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    assert_eq!(device.version(), "2.0.0");
    assert!(!device.path("ota.record").exists(), "record cleared");
    assert!(!device.path("staging.img").exists(), "staged image moved");

    let steps = sim.progress_steps(&info);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "monotone: {steps:?}");
    assert_eq!(steps.first(), Some(&1));
    assert_eq!(steps.last(), Some(&100));
    let downloads = sim.downloads(&info);
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(
        (downloads[0].status, downloads[0].range.as_deref()),
        (200, None)
    );
    device.stop();
}

#[test]
fn upgrades_with_md5() {
    upgrades_with(SignMethod::Md5);
}

#[test]
fn upgrades_with_sha256() {
    upgrades_with(SignMethod::Sha256);
}

#[test]
fn reboot_restarts_the_agent_on_the_new_version() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("1.1.0", image(40_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    let mut seen = Vec::new();
    device.expect("success", |e| {
        seen.push(e.clone());
        matches!(e, DeviceEvent::Succeeded { .. })
    });
    let story: Vec<&DeviceEvent> = seen
        .iter()
        .filter(|e| {
            !matches!(
                e,
                DeviceEvent::Progress { .. }
                    | DeviceEvent::Task(_)
                    | DeviceEvent::Connected
                    | DeviceEvent::Disconnected { .. }
            )
        })
        .collect();
    let expected = [
        DeviceEvent::Started {
            version: "1.0.0".into(),
        },
        DeviceEvent::TaskReceived {
            version: "1.1.0".into(),
            size: 40_000,
        },
        DeviceEvent::Installed {
            version: "1.1.0".into(),
        },
        DeviceEvent::Rebooting,
        DeviceEvent::Started {
            version: "1.1.0".into(),
        },
        DeviceEvent::HealthCheck {
            version: "1.1.0".into(),
        },
        DeviceEvent::Succeeded {
            version: "1.1.0".into(),
        },
    ];
    assert_eq!(story, expected.iter().collect::<Vec<_>>());
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.stop();
}

/// Many small blocks on the writer thread (ota-std's default of two staging blocks, and
/// three): thousands of writes in flight beside the hashing, answered in order, and the
/// installed image is exactly the package.
#[test]
fn small_blocks_written_on_the_writer_thread_install_the_exact_image() {
    for buffers in [2, 3] {
        let sim = sim();
        let info = sim.add_device().unwrap();
        let data = image(2 * 1024 * 1024 + 777);
        let package = sim
            .add_package(PackageSpec::new("2.0.0", data.clone()))
            .unwrap();
        let job = sim.create_job(JobSpec::batch(package)).unwrap();
        let device = TestDevice::start(&sim, &info, |c| {
            c.agent.write_block = 512;
            c.agent.write_buffers = buffers;
        });
        sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
            .unwrap();
        device.expect_succeeded("2.0.0");
        assert_eq!(
            std::fs::read(device.path("firmware.img")).unwrap(),
            data,
            "{buffers} blocks"
        );
        device.stop();
    }
}
