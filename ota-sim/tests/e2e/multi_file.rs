//! Multi-file packages (docs/protocol.md §3): `data.files` instead of the top-level image fields,
//! each file with its own signed URL (HTTP) or its own file id in the stream (MQTT).

use crate::device::{firmware, http_get, WAIT};
use crate::mqtt::pushed;
use ota_sim::{Error, Fault, PackageSpec, SignMethod, TaskState, Times};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("app.bin", firmware(40_000)),
        ("res-1.pak", firmware(7_000).into_iter().rev().collect()),
        ("boot config.txt", b"boot=1\n".to_vec()),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest as _;
    hex(&md5::Md5::digest(bytes))
}

#[test]
fn http_multi_file_task_downloaded_file_by_file() {
    let spec = PackageSpec::files("3.0.0", files()).module("MCU");
    let sim = crate::sim();
    let info = sim.add_device().unwrap();
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(ota_sim::JobSpec::batch(package)).unwrap();
    let mut dev = crate::device::Device::online(&sim, &info);
    dev.inform_module("2.0.0", "MCU");
    let push = dev.expect_push();
    let d = &push["data"];
    for absent in ["size", "url", "md5", "sign", "streamId", "dProtocol"] {
        assert!(d.get(absent).is_none(), "{absent} in {d}");
    }
    assert_eq!(
        (&d["version"], &d["module"]),
        (&"3.0.0".into(), &"MCU".into())
    );
    assert_eq!(d["signMethod"], "Md5");
    // A fault on one file leaves the others alone.
    let cut = sim.set_file_fault(&info, "res-1.pak", Fault::CutAfter(1_000), Times::Once);
    let listed = d["files"].as_array().unwrap();
    assert_eq!(listed.len(), 3);
    for ((name, data), f) in files().iter().zip(listed) {
        assert_eq!(f["fileName"], *name);
        assert_eq!(f["fileSize"], data.len());
        assert_eq!(f["fileMd5"], md5_hex(data));
        assert_eq!(f["fileSign"], f["fileMd5"]);
        let url = f["fileUrl"].as_str().unwrap();
        let mut got = http_get(url, None, WAIT);
        if *name == "res-1.pak" {
            assert!(got.error.is_some());
            assert_eq!(got.body.len(), 1_000);
            let rest = http_get(url, Some("bytes=1000-"), WAIT);
            assert_eq!(rest.status, 206);
            got.body.extend(rest.body);
        }
        assert_eq!(&got.body, data, "{name}");
        assert_eq!(md5_hex(&got.body), f["fileSign"].as_str().unwrap());
    }
    assert_eq!(sim.fault_fired(cut), 1);
    let served: Vec<Option<String>> = sim.downloads(&info).into_iter().map(|r| r.file).collect();
    let name = |n: &str| Some(n.to_owned());
    assert_eq!(
        served,
        [
            name("app.bin"),
            name("res-1.pak"),
            name("res-1.pak"),
            name("boot config.txt")
        ]
    );
    assert_eq!(
        sim.signed_file_url(package, 2, &info)
            .unwrap()
            .split('?')
            .next(),
        listed[2]["fileUrl"].as_str().unwrap().split('?').next()
    );
    dev.progress_module(100, "done", "MCU");
    dev.inform_module("3.0.0", "MCU");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
}

#[test]
fn mqtt_multi_file_task_downloaded_file_by_file() {
    let spec = PackageSpec::files("3.0.0", files())
        .sign_method(SignMethod::Sha256)
        .mqtt();
    let (sim, info, dev, _job, push) = pushed(spec);
    let d = &push["data"];
    assert_eq!(d["dProtocol"], "mqtt");
    let stream = d["streamId"].as_u64().unwrap();
    assert!(d.get("streamFileId").is_none());
    let drop = sim.set_file_fault(&info, "app.bin", Fault::DropReply, Times::Always);
    let listed: &Vec<Value> = d["files"].as_array().unwrap();
    for (i, ((name, data), f)) in files().iter().zip(listed).enumerate().skip(1) {
        assert!(f.get("fileUrl").is_none() && f.get("fileMd5").is_none());
        assert_eq!(f["streamFileId"], i + 1);
        let file_id = f["streamFileId"].as_u64().unwrap();
        let image = dev.fetch_file(stream, file_id, data.len() as u64, 4096);
        assert_eq!(&image, data, "{name}");
        assert_eq!(
            hex(&Sha256::digest(&image)),
            f["fileSign"].as_str().unwrap()
        );
    }
    assert_eq!(sim.fault_fired(drop), 0, "only app.bin is affected");
    dev.request_block(1, stream, 1, 0, 4096);
    dev.request_block(2, stream, 2, 0, 10);
    assert_eq!(dev.expect_frame(WAIT).header["id"], "2");
    assert_eq!(sim.fault_fired(drop), 1);
    sim.clear_faults(&info);
    let app = &files()[0].1;
    assert_eq!(&dev.fetch_file(stream, 1, app.len() as u64, 10_240), app);
    let names: Vec<Option<String>> = sim.blocks(&info).into_iter().map(|b| b.file).collect();
    assert!(names.contains(&Some("boot config.txt".into())));
}

#[test]
fn multi_file_limits() {
    let sim = crate::sim();
    let many: Vec<(String, Vec<u8>)> = (0..21).map(|i| (format!("f{i}"), vec![1])).collect();
    let err = sim
        .add_package(PackageSpec::files("1.0", many))
        .unwrap_err();
    assert!(matches!(err, Error::InvalidPackage(_)), "{err}");
    let twenty: Vec<(String, Vec<u8>)> = (0..20).map(|i| (format!("f{i}"), vec![1])).collect();
    sim.add_package(PackageSpec::files("1.0", twenty)).unwrap();
    let dup = vec![("a", vec![1]), ("a", vec![2])];
    assert!(matches!(
        sim.add_package(PackageSpec::files("1.0", dup)),
        Err(Error::InvalidName(_))
    ));
    for bad in ["", "a/b", "..", "x?y"] {
        let spec = PackageSpec::files("1.0", vec![(bad, vec![1])]);
        assert!(
            matches!(sim.add_package(spec), Err(Error::InvalidName(_))),
            "{bad:?}"
        );
    }
    let empty = PackageSpec::files("1.0", vec![("a", vec![1]), ("b", vec![])]);
    assert!(matches!(sim.add_package(empty), Err(Error::EmptyPackage)));
}
