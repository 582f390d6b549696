//! Modules (docs/protocol.md §2–§4): tasks per (device, module), and the task fields passed through
//! to devices untouched (extData with `_package_udi`, isDiff, digestsign).

use crate::device::{firmware, Device, WAIT};
use crate::sim;
use ota_sim::{Error, JobSpec, PackageSpec, TaskState, DEFAULT_MODULE};
use serde_json::json;

#[test]
fn two_modules_have_independent_tasks_and_versions() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let app = sim
        .add_package(PackageSpec::new("2.0.0", firmware(100)))
        .unwrap();
    let mcu = sim
        .add_package(PackageSpec::new("0.9.4", firmware(50)).module("MCU").mqtt())
        .unwrap();
    let app_job = sim.create_job(JobSpec::batch(app).dynamic()).unwrap();
    // Only devices whose MCU runs 0.9.3 get the MCU package.
    let mcu_job = sim
        .create_job(JobSpec::batch(mcu).dynamic().source_versions(&["0.9.3"]))
        .unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform_module("0.9.3", "MCU");
    let push = dev.expect_push();
    assert_eq!(push["data"]["module"], "MCU");
    assert_eq!(push["data"]["version"], "0.9.4");
    assert!(
        sim.task(app_job, &info).is_none(),
        "the default module is not reported yet"
    );
    dev.inform("1.0.0");
    let push = dev.expect_push();
    assert!(push["data"].get("module").is_none());
    assert_eq!(push["data"]["version"], "2.0.0");

    // firmware/get per module; without one, the default module.
    dev.firmware_get("\"10\"", Some("MCU"));
    let reply = dev.expect_get_reply();
    assert_eq!(
        (&reply["id"], &reply["data"]["version"]),
        (&"10".into(), &"0.9.4".into())
    );
    dev.firmware_get("\"11\"", None);
    assert_eq!(dev.expect_get_reply()["data"]["version"], "2.0.0");
    dev.firmware_get("\"12\"", Some("BLE"));
    assert_eq!(dev.expect_get_reply()["data"], json!({}));

    // The MCU download fails; the default module's task is untouched.
    dev.progress_module(1, "downloading", "MCU");
    dev.progress_module(-2, "download failed", "MCU");
    let failed = sim
        .wait_task_state(mcu_job, &info, TaskState::Failed, WAIT)
        .unwrap();
    assert!(failed.reason.unwrap().contains("download failed"));
    assert_eq!(failed.module, "MCU");
    assert_eq!(sim.task(app_job, &info).unwrap().state, TaskState::Notified);
    let modules: Vec<String> = sim.progress(&info).into_iter().map(|p| p.module).collect();
    assert_eq!(modules, ["MCU", "MCU"]);

    // The default module succeeds by its own version only.
    dev.progress(50, "downloading");
    dev.inform_module("0.9.4", "BLE");
    dev.inform("2.0.0");
    let done = sim
        .wait_task_state(app_job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    assert_eq!(done.source_version.as_deref(), Some("1.0.0"));
    assert_eq!(sim.task(mcu_job, &info).unwrap().state, TaskState::Failed);
    assert_eq!(sim.device_version(&info, "MCU").as_deref(), Some("0.9.3"));
    assert_eq!(sim.device_version(&info, "BLE").as_deref(), Some("0.9.4"));
    assert_eq!(
        sim.device_version(&info, DEFAULT_MODULE).as_deref(),
        Some("2.0.0")
    );

    // A retry of the MCU job succeeds with the MCU's version.
    assert_eq!(sim.retry_job(mcu_job).unwrap(), 1);
    assert_eq!(dev.expect_push()["data"]["module"], "MCU");
    dev.inform_module("0.9.4", "MCU");
    sim.wait_task_state(mcu_job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
}

#[test]
fn one_active_task_per_module() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform_module("1.0", "MCU");
    dev.inform("1.0");
    sim.wait_version(&info, DEFAULT_MODULE, "1.0", WAIT)
        .unwrap();
    let mcu_a = sim
        .add_package(PackageSpec::new("2.0", firmware(10)).module("MCU"))
        .unwrap();
    let mcu_b = sim
        .add_package(PackageSpec::new("3.0", firmware(10)).module("MCU"))
        .unwrap();
    let app = sim
        .add_package(PackageSpec::new("2.0", firmware(10)))
        .unwrap();
    let first = sim.create_job(JobSpec::batch(mcu_a)).unwrap();
    dev.expect_push();
    let second = sim.create_job(JobSpec::batch(mcu_b)).unwrap();
    let third = sim.create_job(JobSpec::batch(app)).unwrap();
    assert!(dev.expect_push()["data"].get("module").is_none());
    assert_eq!(sim.task(first, &info).unwrap().state, TaskState::Notified);
    assert!(
        sim.task(second, &info).is_none(),
        "MCU is busy with the first job"
    );
    assert_eq!(sim.task(third, &info).unwrap().state, TaskState::Notified);
}

#[test]
fn ext_data_package_udi_diff_and_digestsign_pass_through() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let udi = r#"{"k":"v","n":[1,2]}"#;
    let spec = PackageSpec::new("2.0.0", firmware(10))
        .package_udi(udi)
        .ext_data(json!({"key1": "value1", "nested": {"a": [true, null]}}))
        .diff()
        .digestsign("MEUCIQD+sig==");
    let package = sim.add_package(spec).unwrap();
    sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    let d = &push["data"];
    assert_eq!(
        d["extData"],
        json!({"key1": "value1", "nested": {"a": [true, null]}, "_package_udi": udi})
    );
    let parsed: serde_json::Value =
        serde_json::from_str(d["extData"]["_package_udi"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["n"], json!([1, 2]));
    assert_eq!(d["isDiff"], 1);
    assert_eq!(d["digestsign"], "MEUCIQD+sig==");
    dev.firmware_get("\"1\"", None);
    let reply = dev.expect_get_reply();
    for key in ["extData", "isDiff", "digestsign"] {
        assert_eq!(reply["data"][key], d[key], "{key}");
    }
    // Without the options, none of the keys appear.
    let plain = sim
        .add_package(PackageSpec::new("2.0.0", firmware(10)))
        .unwrap();
    let other = sim.add_device().unwrap();
    sim.create_job(JobSpec::batch(plain).devices(&[&other]))
        .unwrap();
    let mut dev = Device::online(&sim, &other);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    for key in ["extData", "isDiff", "digestsign"] {
        assert!(push["data"].get(key).is_none(), "{key}");
    }
}

#[test]
fn ext_data_must_be_a_small_object() {
    let sim = sim();
    for ext in [json!([1]), json!("x"), json!({"k": "v".repeat(5000)})] {
        let spec = PackageSpec::new("2.0.0", firmware(10)).ext_data(ext);
        assert!(matches!(
            sim.add_package(spec),
            Err(Error::InvalidPackage(_))
        ));
    }
}
