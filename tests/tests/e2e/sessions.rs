//! One MQTT session at a time: the simulator's relay records each device's sessions and
//! whether one connected while an earlier one was still open.

use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, TaskState};
use ota_std::DeviceEvent;
use ota_tests::{image, TestDevice, WAIT};

fn tracking_sim() -> Sim {
    Sim::start_tracking_sessions(SimConfig::default()).expect("simulator starts")
}

#[test]
fn an_in_process_reboot_closes_the_old_session_before_the_new_one_connects() {
    let sim = tracking_sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(200_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    device.expect("the reboot", |e| matches!(e, DeviceEvent::Rebooting));
    device.expect_succeeded("2.0.0");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.stop();
    let sessions = sim.sessions(&info);
    assert!(sessions.len() >= 2, "one session per boot: {sessions:?}");
    assert!(
        sessions.iter().all(|s| !s.overlapped),
        "a session connected while the previous one was open: {sessions:?}"
    );
}

#[test]
fn the_simulator_sees_two_clients_of_one_device_overlap() {
    let sim = tracking_sim();
    let info = sim.add_device().unwrap();
    let first = TestDevice::start(&sim, &info, |_| {});
    first.expect("a connection", |e| matches!(e, DeviceEvent::Connected));
    let second = TestDevice::start(&sim, &info, |_| {});
    second.expect("a connection", |e| matches!(e, DeviceEvent::Connected));
    let sessions = sim.sessions(&info);
    assert!(!sessions[0].overlapped, "{sessions:?}");
    assert!(sessions[1].overlapped, "{sessions:?}");
    first.stop();
    second.stop();
}
