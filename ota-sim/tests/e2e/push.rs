//! Pushes, firmware/get and the legacy request (docs/protocol.md §3).

use crate::device::{firmware, http_get, Device, WAIT};
use crate::sim;
use ota_sim::{JobSpec, PackageSpec, SignMethod, TaskState};
use serde_json::Value;

#[test]
fn device_gets_push_after_connect_and_inform() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = firmware(1000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Queued);

    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    assert_eq!(push["code"], "1000");
    assert_eq!(push["message"], "success");
    assert!(push["id"].as_u64().unwrap() > u64::from(u32::MAX));
    let d = &push["data"];
    assert_eq!(d["size"], 1000);
    assert_eq!(d["version"], "2.0.0");
    assert_eq!(d["signMethod"], "Md5");
    assert_eq!(d["md5"], d["sign"]);
    assert_eq!(d["sign"].as_str().unwrap().len(), 32);
    assert!(d.get("module").is_none());
    let got = http_get(d["url"].as_str().unwrap(), None, WAIT);
    assert_eq!((got.status, got.body), (200, data));
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Notified);
    assert_eq!(
        sim.task(job, &info).unwrap().source_version.as_deref(),
        Some("1.0.0")
    );
}

#[test]
fn online_device_gets_push_when_job_is_created() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    assert_eq!(dev.expect_push()["data"]["version"], "2.0.0");
    assert_eq!(sim.task(job, &info).unwrap().state, TaskState::Notified);
}

#[test]
fn firmware_get_without_task_replies_empty_data() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let dev = Device::online(&sim, &info);
    dev.firmware_get("\"7\"", None);
    let reply = dev.expect_get_reply();
    assert_eq!(
        reply,
        serde_json::json!({"id":"7","code":200,"data":{},"message":"success"})
    );
    dev.firmware_get("1626969597470", None);
    assert_eq!(dev.expect_get_reply()["id"], 1626969597470u64);
}

#[test]
fn firmware_get_with_task_replies_fresh_url_for_module_package() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = firmware(3000);
    let spec = PackageSpec::new("0.9.4", data.clone())
        .module("MCU")
        .sign_method(SignMethod::Sha256);
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform_module("0.9.3", "MCU");
    let push = dev.expect_push();
    dev.firmware_get("\"3\"", Some("MCU"));
    let reply = dev.expect_get_reply();
    assert_eq!(reply["id"], "3");
    assert_eq!(reply["code"], 200);
    let d = &reply["data"];
    assert_eq!(d["module"], "MCU");
    assert_eq!(d["signMethod"], "SHA256");
    assert!(d.get("md5").is_none());
    assert_eq!(d["sign"].as_str().unwrap().len(), 64);
    assert_eq!(d["sign"], push["data"]["sign"]);
    // A request for the default module sees no task.
    dev.firmware_get("\"4\"", None);
    assert_eq!(dev.expect_get_reply()["data"], serde_json::json!({}));
    let got = http_get(d["url"].as_str().unwrap(), None, WAIT);
    assert_eq!(got.body, data);
    assert_eq!(sim.task(job, &info).unwrap().pushes, 2);
}

#[test]
fn legacy_request_is_answered_with_a_push() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    dev.expect_push();
    dev.legacy_request("1.0.0");
    assert_eq!(dev.expect_push()["data"]["version"], "2.0.0");
}

#[test]
fn malformed_messages_are_ignored() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let mut dev = Device::online(&sim, &info);
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    for (kind, payload) in [
        ("inform", "not json"),
        ("progress", "{\"params\":{\"step\":\"x\"}}"),
        ("inform", "[]"),
    ] {
        dev.publish_raw(&format!("/ota/device/{kind}/{pk}/{dn}"), payload.as_bytes());
    }
    dev.publish_raw(
        &format!("/sys/{pk}/{dn}/thing/ota/firmware/get"),
        b"\xff\xfe",
    );
    dev.inform("1.0.0");
    sim.wait_version(&info, "default", "1.0.0", crate::device::WAIT)
        .unwrap();
    assert!(sim.progress_steps(&info).is_empty());
    let _: Value = sim.status();
}
