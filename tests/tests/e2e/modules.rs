//! Modules: an extra module with its own slot, tasks for two modules at once, and a task for
//! a module the device does not declare.

use ota_sim::{JobSpec, PackageSpec, TaskState};
use ota_std::{DeviceEvent, ModuleConfig};
use ota_tests::{image, md5_hex, publish_as_cloud, sim, TestDevice, WAIT};

#[test]
fn two_modules_upgrade_independently() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let app = image(150_000);
    let mcu = image(60_000)[7..].to_vec();
    let app_package = sim
        .add_package(PackageSpec::new("2.0.0", app.clone()))
        .unwrap();
    let mcu_package = sim
        .add_package(PackageSpec::new("0.9.4", mcu.clone()).module("MCU").mqtt())
        .unwrap();
    let mcu_job = sim.create_job(JobSpec::batch(mcu_package)).unwrap();
    let app_job = sim.create_job(JobSpec::batch(app_package)).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        let dir = c.staging.with_file_name("mcu");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("version"), "0.9.3\n").unwrap();
        c.extra_modules.push(ModuleConfig::in_dir("MCU", &dir));
    });
    sim.wait_task_state(mcu_job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    sim.wait_task_state(app_job, &info, TaskState::Succeeded, WAIT)
        .unwrap();

    let mcu_dir = device.path("mcu");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), app);
    assert_eq!(std::fs::read(mcu_dir.join("firmware.img")).unwrap(), mcu);
    assert_eq!(device.version(), "2.0.0");
    let mcu_version = std::fs::read_to_string(mcu_dir.join("version")).unwrap();
    assert_eq!(mcu_version.trim(), "0.9.4");
    assert_eq!(sim.device_version(&info, "MCU").as_deref(), Some("0.9.4"));
    for leftover in [
        "ota.record",
        "ota.record.activated",
        "staging.img",
        "mcu/staging.img",
    ] {
        assert!(!device.path(leftover).exists(), "{leftover} is gone");
    }
    let modules: Vec<String> = sim
        .progress(&info)
        .into_iter()
        .filter(|p| p.step == 100)
        .map(|p| p.module)
        .collect();
    assert_eq!(modules.len(), 2, "{modules:?}");
    assert!(modules.contains(&"MCU".to_owned()) && modules.contains(&"default".to_owned()));
    device.stop();
}

#[test]
fn a_task_for_an_undeclared_module_is_refused_with_minus_1() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(10_000);
    let package = sim
        .add_package(PackageSpec::new("3.0.0", data.clone()))
        .unwrap();
    let url = sim.signed_url(package, &info).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    let md5 = md5_hex(&data);
    let push = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"3.0.0","url":"{url}","md5":"{md5}","module":"BLE"}},"id":8,"message":"success"}}"#,
        data.len()
    );
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    publish_as_cloud(&sim, &format!("/ota/device/upgrade/{pk}/{dn}"), push);
    let rejected = device.expect("the refusal", |e| {
        matches!(e, DeviceEvent::TaskRejected { .. })
    });
    assert!(format!("{rejected:?}").contains("BLE"), "{rejected:?}");
    sim.wait_progress(&info, 1, WAIT).unwrap();
    let report = &sim.progress(&info)[0];
    assert_eq!((report.step, report.module.as_str()), (-1, "BLE"));
    assert!(
        report.desc.as_deref().is_some_and(|d| d.contains("BLE")),
        "{report:?}"
    );
    assert!(sim.downloads(&info).is_empty(), "nothing fetched");
    device.stop();
}
