//! Protocol options: the legacy request topic, and the task fields passed through to the
//! application untouched.

use ota_core::TaskRequest;
use ota_sim::{Fault, JobSpec, PackageSpec, TaskState, Times};
use ota_std::DeviceEvent;
use ota_tests::{image, sim, watch_topics, TestDevice, WAIT};

#[test]
fn the_legacy_request_topic_gets_the_task_as_a_push() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    let legacy = format!("/ota/device/request/{pk}/{dn}");
    let get = format!("/sys/{pk}/{dn}/thing/ota/firmware/get");
    let requests = watch_topics(&sim, &[legacy.clone(), get]);
    let data = image(100_000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    // The first URL is refused: only a request (here the legacy one) brings a fresh one.
    let fault = sim.set_fault(&info, Fault::Status(403), Times::Once);
    let device = TestDevice::start(&sim, &info, |c| c.agent.task_request = TaskRequest::Legacy);
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(sim.fault_fired(fault), 1);
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    // Asked on connect and after the 403, each time on the legacy topic.
    let seen: Vec<String> = (0..2)
        .map(|_| requests.recv_timeout(WAIT).expect("a request"))
        .collect();
    assert_eq!(seen, [legacy.clone(), legacy]);
    let more: Vec<String> = requests.try_iter().collect();
    assert!(more.iter().all(|t| t.starts_with("/ota/")), "{more:?}");
    // The inform's push, then one push per legacy request.
    assert_eq!(sim.task(job, &info).unwrap().pushes, 3);
    let statuses: Vec<u16> = sim.downloads(&info).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 200]);
    device.stop();
}

#[test]
fn ext_data_is_diff_and_digestsign_reach_the_application() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let udi = r#"{"k":"v","n":[1,2]}"#;
    let spec = PackageSpec::new("2.0.0", image(20_000))
        .ext_data(serde_json::json!({"key1": "value1", "tags": {"a": 1}}))
        .package_udi(udi)
        .diff()
        .digestsign("c2lnbmF0dXJl");
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    let DeviceEvent::Task(task) = device.expect("the task", |e| matches!(e, DeviceEvent::Task(_)))
    else {
        unreachable!()
    };
    assert!(task.is_diff);
    assert_eq!(task.digestsign.as_deref(), Some("c2lnbmF0dXJl"));
    let raw = task.ext_data.as_deref().expect("extData");
    let ext: serde_json::Value = serde_json::from_str(raw).unwrap();
    assert_eq!(
        ext,
        serde_json::json!({"key1": "value1", "tags": {"a": 1}, "_package_udi": udi})
    );
    // `_package_udi` stays a string holding JSON, not parsed into an object.
    assert!(
        raw.contains(r#""_package_udi":"{\"k\":\"v\",\"n\":[1,2]}""#),
        "{raw}"
    );
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.stop();
}
