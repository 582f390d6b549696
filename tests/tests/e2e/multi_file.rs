//! Multi-file tasks (`data.files`) through ota-std: the slot layout is kept in the staging
//! file and split into `files/<fileName>` at activation.

use ota_sim::{Fault, JobSpec, PackageSpec, TaskState, Times};
use ota_std::DeviceEvent;
use ota_tests::{image, md5_hex, publish_as_cloud, sim, TestDevice, WAIT};

fn three_files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("app.bin", image(100_000)),
        ("config.json", b"{\"mode\":\"fast\"}".to_vec()),
        ("assets.pak", image(70_001)[1..].to_vec()),
    ]
}

#[test]
fn a_three_file_task_installs_every_file() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let files = three_files();
    let total: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let package = sim
        .add_package(PackageSpec::files("2.0.0", files.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |_| {});
    let mut names = Vec::new();
    let mut progress = Vec::new();
    device.expect("installed", |e| {
        match e {
            DeviceEvent::Task(task) => {
                names = task.files.iter().map(|f| f.name.clone()).collect();
            }
            DeviceEvent::Progress { received, size, .. } => progress.push((*received, *size)),
            _ => {}
        }
        matches!(e, DeviceEvent::Installed { .. })
    });
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");

    assert_eq!(names, ["app.bin", "config.json", "assets.pak"]);
    for (name, data) in &files {
        let installed = std::fs::read(device.path("files").join(name)).unwrap();
        assert!(installed == *data, "{name} has the right bytes");
    }
    assert_eq!(device.version(), "2.0.0");
    assert!(!device.path("staging.img").exists(), "the slot was split");
    assert!(!device.path("ota.record").exists(), "record cleared");
    // Progress counts over all files.
    assert!(!progress.is_empty());
    assert!(
        progress.iter().all(|(_, size)| *size == total),
        "{progress:?}"
    );
    assert!(
        progress.windows(2).all(|w| w[0].0 <= w[1].0),
        "{progress:?}"
    );
    let steps = sim.progress_steps(&info);
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "monotone: {steps:?}");
    assert_eq!(steps.last(), Some(&100));
    let fetched: Vec<Option<String>> = sim.downloads(&info).into_iter().map(|r| r.file).collect();
    assert_eq!(fetched.len(), 3, "{fetched:?}");
    device.stop();
}

#[test]
fn one_corrupt_file_fails_with_minus_3_and_installs_nothing() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::files("2.0.0", three_files()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let fault = sim.set_file_fault(&info, "assets.pak", Fault::CorruptByte(5_000), Times::Once);
    let device = TestDevice::start(&sim, &info, |_| {});
    sim.wait_task_state(job, &info, TaskState::Failed, WAIT)
        .unwrap();
    device.expect("failure -3", |e| {
        matches!(e, DeviceEvent::Failed { code: -3, .. })
    });
    assert_eq!(sim.fault_fired(fault), 1);
    let negative: Vec<i64> = sim
        .progress_steps(&info)
        .into_iter()
        .filter(|s| *s < 0)
        .collect();
    assert_eq!(negative, [-3]);
    assert!(!device.path("files").exists(), "nothing activated");
    assert_eq!(device.version(), "1.0.0");
    device.stop();
}

#[test]
fn a_file_name_that_leaves_the_directory_is_refused_before_any_write() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(30_000);
    // A real file behind the URL, pushed under a name the simulator would never accept.
    let package = sim
        .add_package(PackageSpec::files("2.0.0", [("safe.bin", data.clone())]))
        .unwrap();
    let url = sim.signed_file_url(package, 0, &info).unwrap();
    let device = TestDevice::start(&sim, &info, |c| c.agent.request_task_on_connect = false);
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    let push = format!(
        r#"{{"code":"1000","data":{{"version":"2.0.0","signMethod":"Md5","files":[{{"fileName":"../evil.bin","fileSize":{},"fileUrl":"{url}","fileMd5":"{}"}}]}},"id":7,"message":"success"}}"#,
        data.len(),
        md5_hex(&data)
    );
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    publish_as_cloud(&sim, &format!("/ota/device/upgrade/{pk}/{dn}"), push);
    let rejected = device.expect("the refusal", |e| {
        matches!(e, DeviceEvent::TaskRejected { .. })
    });
    assert!(
        format!("{rejected:?}").contains("../evil.bin"),
        "{rejected:?}"
    );
    // ota-core refuses the task when it parses it: one -1, and no byte is ever fetched.
    let mut steps = sim.progress_steps(&info);
    while !steps.contains(&-1) {
        steps = sim.wait_progress(&info, steps.len() + 1, WAIT).unwrap();
    }
    assert_eq!(steps.iter().filter(|s| **s < 0).count(), 1, "{steps:?}");
    assert!(!device.path("staging.img").exists(), "nothing written");
    assert!(!device
        .dir
        .path()
        .parent()
        .unwrap()
        .join("evil.bin")
        .exists());
    assert!(!device.path("files").exists());
    device.stop();
}

/// A task naming the same file twice never replaces the installed file: ota-std refuses its
/// writes before any byte lands (whatever the core makes of the push), so the original file
/// keeps its bytes and no `.previous` copy of it is left to be deleted.
#[test]
fn a_file_named_twice_never_destroys_the_installed_one() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = image(30_000);
    let package = sim
        .add_package(PackageSpec::files("2.0.0", [("app.bin", data.clone())]))
        .unwrap();
    let url = sim.signed_file_url(package, 0, &info).unwrap();
    let device = TestDevice::start(&sim, &info, |c| c.agent.request_task_on_connect = false);
    let files = device.path("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::write(files.join("app.bin"), b"the original").unwrap();
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();
    let file = format!(
        r#"{{"fileName":"app.bin","fileSize":{},"fileUrl":"{url}","fileMd5":"{}"}}"#,
        data.len(),
        md5_hex(&data)
    );
    let push = format!(
        r#"{{"code":"1000","data":{{"version":"2.0.0","signMethod":"Md5","files":[{file},{file}]}},"id":7,"message":"success"}}"#
    );
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    publish_as_cloud(&sim, &format!("/ota/device/upgrade/{pk}/{dn}"), push);
    // The core refuses the task before a byte is written; the adapter's own check of the
    // layout stands behind it.
    let refused = device.expect("the refusal", |e| {
        matches!(
            e,
            DeviceEvent::TaskRejected { .. }
                | DeviceEvent::Failed { .. }
                | DeviceEvent::Succeeded { .. }
        )
    });
    assert!(
        matches!(&refused, DeviceEvent::TaskRejected { reason } if reason.contains("app.bin")),
        "{refused:?}"
    );
    let mut steps = sim.progress_steps(&info);
    while !steps.iter().any(|s| *s < 0) {
        steps = sim.wait_progress(&info, steps.len() + 1, WAIT).unwrap();
    }
    assert_eq!(steps.iter().filter(|s| **s < 0).count(), 1, "{steps:?}");
    assert_eq!(
        std::fs::read(files.join("app.bin")).unwrap(),
        b"the original"
    );
    assert!(!files.join("app.bin.previous").exists());
    assert_eq!(device.version(), "1.0.0");
    device.stop();
}
