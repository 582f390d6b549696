//! `ota-sim serve --fault`: every fault of the grammar set from the command line, for one
//! device each, made to fire by a scripted device, and reported as fired in `/status`.

use crate::cli::{fails_with_one_line, serve};
use crate::device::{firmware, http_get, Device, WAIT};
use ota_sim::{Credentials, DeviceId};
use serde_json::Value;
use std::ffi::OsStr;

/// The server, and its stderr lines (read on, or the server would block writing its log).
type Running = (crate::cli::Server, std::sync::mpsc::Receiver<String>);

/// Starts `ota-sim serve` on a 20 000-byte image with `flags`; returns it with its info.
fn serve_with(flags: &[&str], dir: &std::path::Path) -> (Running, Value) {
    let fw_path = dir.join("fw.bin");
    std::fs::write(&fw_path, firmware(20_000)).unwrap();
    let mut args: Vec<&OsStr> = flags.iter().map(OsStr::new).collect();
    args.extend([OsStr::new("--version"), OsStr::new("2.0.0")]);
    args.extend([OsStr::new("--firmware"), fw_path.as_os_str()]);
    let (server, lines, info) = serve(&args, dir);
    ((server, lines), info)
}

/// Device `n` (1-based) of the info file, online, subscribed, told about the task.
fn pushed_device(info: &Value, n: usize) -> (Device, Value) {
    let d = &info["devices"][n - 1];
    let id = DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let creds = Credentials::new(&id, d["device_secret"].as_str().unwrap());
    let host = info["mqtt_host"].as_str().unwrap();
    let port = info["mqtt_port"].as_u64().unwrap() as u16;
    let mut dev = Device::connect(host, port, &id, &creds).unwrap();
    dev.subscribe();
    dev.inform("1.0.0");
    let push = dev.expect_push();
    (dev, push)
}

/// Asserts that `/status` lists `fault` for device `n` as fired, with the time it did.
fn assert_fired(info: &Value, n: usize, fault: &str) {
    let url = format!("{}/status", info["http_base_url"].as_str().unwrap());
    let status: Value = serde_json::from_slice(&http_get(&url, None, WAIT).body).unwrap();
    let name = format!("dev{n:04}");
    let entry = status["faults"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["device"]["device_name"] == name.as_str() && f["fault"] == fault)
        .unwrap_or_else(|| panic!("no {fault} for {name} in {}", status["faults"]));
    assert!(entry["fired"].as_u64().unwrap() >= 1, "{entry}");
    assert!(
        entry["first_fired_unix_ms"].as_u64().unwrap() > 0,
        "{entry}"
    );
    assert!(entry["last_fired_unix_ms"].is_u64(), "{entry}");
}

#[test]
fn every_http_fault_from_the_cli_fires_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let faults = [
        "dev0001:cut:5000",
        "dev0002:ignore-range",
        "dev0003:status:500",
        "dev0004:expire:5000",
        "dev0005:corrupt:100",
        "dev0006:stall:1000:0.1",
        "dev0007:rate:1000000",
    ];
    let mut flags = vec!["--devices", "8"];
    for f in faults {
        flags.extend(["--fault", f]);
    }
    let (_server, info) = serve_with(&flags, dir.path());
    let data = firmware(20_000);
    for (n, spec) in faults.iter().enumerate().map(|(i, f)| (i + 1, f)) {
        let (_dev, push) = pushed_device(&info, n);
        let url = push["data"]["url"].as_str().unwrap();
        let range = (n == 2).then_some("bytes=100-");
        let got = http_get(url, range, WAIT);
        match n {
            1 | 6 => assert!(got.body.len() < data.len() && got.error.is_some()),
            2 => assert_eq!((got.status, got.body.len()), (200, data.len())),
            3 => assert_eq!(got.status, 500),
            4 => {
                assert_eq!(got.body.len(), 5000);
                assert_eq!(http_get(url, Some("bytes=5000-"), WAIT).status, 403);
            }
            5 => assert_eq!(got.body[100], data[100] ^ 0xff),
            _ => assert_eq!(got.body, data),
        }
        assert_fired(&info, n, spec.split_once(':').unwrap().1);
    }
    // The device without a fault was left alone.
    let (_dev, push) = pushed_device(&info, 8);
    assert_eq!(
        http_get(push["data"]["url"].as_str().unwrap(), None, WAIT).body,
        data
    );
}

#[test]
fn every_mqtt_reply_fault_from_the_cli_fires_and_shows_in_status() {
    let dir = tempfile::tempdir().unwrap();
    let faults = [
        "drop-reply",
        "delay-reply:50",
        "duplicate-reply",
        "reorder-reply",
        "corrupt-block",
        "wrong-offset",
    ];
    let mut flags = vec!["--devices", "6", "--download-protocol", "mqtt"];
    let specs: Vec<String> = (1..)
        .zip(faults)
        .map(|(n, f)| format!("dev{n:04}:{f}"))
        .collect();
    for s in &specs {
        flags.extend(["--fault", s.as_str()]);
    }
    let (_server, info) = serve_with(&flags, dir.path());
    for (n, fault) in (1..).zip(faults) {
        let (dev, push) = pushed_device(&info, n);
        let stream = push["data"]["streamId"].as_u64().unwrap();
        dev.request_block(1, stream, 1, 0, 1000);
        // A second request: its reply comes after the first one's fault acted (the drop,
        // the held-back reply), and the fault is used up (once).
        dev.request_block(2, stream, 1, 1000, 1000);
        let expected = match fault {
            "drop-reply" => 1,
            "duplicate-reply" => 3,
            _ => 2,
        };
        for i in 0..expected {
            let reply = dev.recv_raw(WAIT);
            assert!(reply.is_some(), "{fault}: reply {i} of {expected} missing");
        }
        assert_fired(&info, n, fault);
    }
}

#[test]
fn bad_fault_specs_exit_2_with_one_line() {
    let base = [
        "serve",
        "--firmware",
        "/etc/hostname",
        "--version",
        "1",
        "--fault",
    ];
    fails_with_one_line(&[&base[..], &["cut:x"]].concat(), "not a whole number");
    fails_with_one_line(&[&base[..], &["teleport"]].concat(), "unknown fault");
    fails_with_one_line(&[&base[..], &["status:404@never"]].concat(), "times");
    fails_with_one_line(&[&base[..], &["dev0009:cut:1"]].concat(), "dev0009");
}
