//! ota-std's gateway mode against the `ota-sim serve` process (docs/protocol.md §14): one
//! gateway updating its sub-devices in parallel, a failing flasher, a wrong sub-device secret,
//! a 520 kick mid-download, and a gateway restart that resumes every download.

use crate::support::{firmware, http_get, serve, Server, WAIT};
use ota_std::gateway::{
    GatewayConfig, GatewayEvent, GatewayHandle, SubdeviceConfig, SubdeviceEvent, SubdeviceVersion,
};
use ota_std::{DeviceConfig, DeviceEvent};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

const SIZE: usize = 1 << 20;
const LONG: Duration = Duration::from_secs(60);

/// `ota-sim serve` with one gateway and `subs` sub-devices of version 1.0.0 to be updated to
/// 2.0.0, the firmware rate-limited so that downloads take a while.
fn start(dir: &Path, subs: u32, extra: &[&str]) -> (Server, Value, Vec<u8>) {
    let fw = dir.join("fw.bin");
    let data = firmware(SIZE);
    std::fs::write(&fw, &data).unwrap();
    let subs = subs.to_string();
    let fixed = [
        "--version",
        "2.0.0",
        "--gateways",
        "1",
        "--subdevices-per-gateway",
        subs.as_str(),
        "--fault",
        "rate:1500000@always",
    ];
    let mut args: Vec<&OsStr> = fixed.iter().map(OsStr::new).collect();
    args.extend(extra.iter().map(OsStr::new));
    args.extend([OsStr::new("--firmware"), fw.as_os_str()]);
    let (server, _lines, info) = serve(&args, dir);
    (server, info, data)
}

/// The gateway of the info file, its sub-devices flashed by `flasher` into `dir/flashed/`.
fn gateway_config(info: &Value, dir: &Path, flasher: &str, max_parallel: usize) -> GatewayConfig {
    let gw = &info["gateways"][0];
    let text = |v: &Value| v.as_str().unwrap().to_owned();
    let mut gateway = DeviceConfig::new(
        gw["product_key"].as_str().unwrap(),
        gw["device_name"].as_str().unwrap(),
        gw["device_secret"].as_str().unwrap(),
        info["mqtt_host"].as_str().unwrap(),
        info["mqtt_port"].as_u64().unwrap() as u16,
        dir,
    )
    .unwrap();
    gateway.agent.rules.allow_http = true;
    gateway.agent.checkpoint_interval = 64 * 1024;
    std::fs::create_dir_all(dir.join("flashed")).unwrap();
    let subdevices = gw["subdevices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| SubdeviceConfig {
            product_key: text(&s["product_key"]),
            device_name: text(&s["device_name"]),
            device_secret: text(&s["device_secret"]),
            version: SubdeviceVersion::Fixed("1.0.0".into()),
            dir: dir.join(text(&s["device_name"])),
            flasher: flasher.replace("$FLASHED", &dir.join("flashed").display().to_string()),
            version_after_flash: None,
        })
        .collect();
    GatewayConfig {
        gateway,
        subdevices,
        max_parallel,
    }
}

const COPY: &str = r#"cp "$OTA_IMAGE" "$FLASHED/$OTA_SUBDEVICE-$OTA_VERSION.bin""#;

/// What the events said, per sub-device.
#[derive(Default, Debug)]
struct Seen {
    downloading: BTreeSet<String>,
    most_at_once: usize,
    succeeded: BTreeSet<String>,
    failed: BTreeMap<String, i8>,
    gave_up: BTreeMap<String, String>,
    online: BTreeMap<String, u32>,
    progress: BTreeMap<String, u64>,
}

impl Seen {
    fn note(&mut self, event: GatewayEvent) {
        let GatewayEvent::Subdevice { name, event, .. } = event else {
            return;
        };
        match event {
            SubdeviceEvent::Online => *self.online.entry(name).or_default() += 1,
            SubdeviceEvent::GaveUp { reason } => {
                self.gave_up.insert(name, reason);
            }
            SubdeviceEvent::Agent(DeviceEvent::TaskReceived { .. }) => {
                self.downloading.insert(name);
                self.most_at_once = self.most_at_once.max(self.downloading.len());
            }
            SubdeviceEvent::Agent(DeviceEvent::Progress { received, .. }) => {
                self.progress.insert(name, received);
            }
            SubdeviceEvent::Flashing { .. } => {
                self.downloading.remove(&name);
            }
            SubdeviceEvent::Agent(DeviceEvent::Succeeded { .. }) => {
                self.succeeded.insert(name);
            }
            SubdeviceEvent::Agent(DeviceEvent::Failed { code, .. }) => {
                self.downloading.remove(&name);
                self.failed.insert(name, code);
            }
            _ => {}
        }
    }
}

/// Collects events until `done` says so.
fn wait(gateway: GatewayHandle, seen: &mut Seen, done: impl Fn(&Seen) -> bool) -> GatewayHandle {
    let deadline = Instant::now() + LONG;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        match gateway.events().recv_timeout(left) {
            Ok(event) => seen.note(event),
            Err(RecvTimeoutError::Timeout) => panic!("gave up waiting; seen {seen:?}"),
            Err(RecvTimeoutError::Disconnected) => {
                panic!("the gateway ended: {:?}; seen {seen:?}", gateway.stop())
            }
        }
    }
    gateway
}

fn status(info: &Value) -> Value {
    let url = format!("{}/status", info["http_base_url"].as_str().unwrap());
    serde_json::from_slice(&http_get(&url)).unwrap()
}

/// The sub-device's entry in `/status`.
fn listed<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["gateways"]["gateways"][0]["subdevices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["device_name"] == name)
        .unwrap()
}

/// Waits until the cloud has the sub-device's task in `state` (the version report on its
/// behalf may arrive just after the gateway's own event).
fn wait_state(info: &Value, name: &str, state: &str) {
    let deadline = Instant::now() + WAIT;
    while task_state(info, name).0 != state {
        assert!(
            Instant::now() < deadline,
            "{name} never {state}: {:?}",
            task_state(info, name)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn task_state(info: &Value, name: &str) -> (String, Option<i64>) {
    let status = status(info);
    let task = &listed(&status, name)["tasks"][0];
    (
        task["state"].as_str().unwrap_or("").to_owned(),
        task["last_step"].as_i64(),
    )
}

#[test]
fn one_gateway_updates_three_sub_devices_in_parallel() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, data) = start(dir.path(), 3, &[]);
    let config = gateway_config(&info, dir.path(), COPY, 3);
    let names: Vec<String> = config
        .subdevices
        .iter()
        .map(|s| s.device_name.clone())
        .collect();
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| s.succeeded.len() == 3);
    assert_eq!(seen.most_at_once, 3, "{seen:?}");
    for name in &names {
        let flashed = dir.path().join(format!("flashed/{name}-2.0.0.bin"));
        assert_eq!(std::fs::read(flashed).unwrap(), data, "{name}");
        // Reported on the sub-device's behalf: the cloud's task succeeded.
        wait_state(&info, name, "SUCCEEDED");
    }
    gateway.stop().unwrap();
}

#[test]
fn a_failing_flasher_fails_its_sub_device_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, _) = start(dir.path(), 3, &[]);
    let flasher = format!(
        r#"case "$OTA_SUBDEVICE" in *node02) echo "no answer on UART" >&2; exit 3;; esac; {COPY}"#
    );
    let config = gateway_config(&info, dir.path(), &flasher, 2);
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| {
        s.succeeded.len() == 2 && !s.failed.is_empty()
    });
    assert_eq!(seen.failed.get("gw0001-node02"), Some(&-4), "{seen:?}");
    assert!(seen.succeeded.contains("gw0001-node01") && seen.succeeded.contains("gw0001-node03"));
    // With a limit of 2, never more than 2 downloads at once.
    assert!(seen.most_at_once <= 2, "{seen:?}");
    wait_state(&info, "gw0001-node02", "FAILED");
    // The cloud got -4 for node02 only.
    let status = status(&info);
    let steps = |name: &str| {
        status["devices"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["device_name"] == name)
            .unwrap()["progress"]
            .clone()
    };
    assert_eq!(
        steps("gw0001-node02").as_array().unwrap().last(),
        Some(&(-4).into())
    );
    for name in ["gw0001-node01", "gw0001-node03"] {
        assert!(!steps(name)
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_i64() < Some(0)));
    }
    wait_state(&info, "gw0001-node01", "SUCCEEDED");
    gateway.stop().unwrap();
}

#[test]
fn a_wrong_sub_device_secret_is_reported_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, _) = start(dir.path(), 3, &["--preset-topology"]);
    let mut config = gateway_config(&info, dir.path(), COPY, 3);
    config.subdevices[1].device_secret = "not-the-secret".into();
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| {
        s.succeeded.len() == 2 && !s.gave_up.is_empty()
    });
    let reason = &seen.gave_up["gw0001-node02"];
    assert!(reason.contains("6287"), "{reason}");
    assert!(!seen.succeeded.contains("gw0001-node02"));
    let status = status(&info);
    assert_eq!(listed(&status, "gw0001-node02")["online"], false);
    gateway.stop().unwrap();
}

#[test]
fn a_520_kick_mid_download_logs_in_again_and_downloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, _) = start(dir.path(), 2, &["--fault", "gw0001-node01:kick-520:30"]);
    let config = gateway_config(&info, dir.path(), COPY, 2);
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| s.succeeded.len() == 2);
    assert_eq!(seen.online.get("gw0001-node01"), Some(&2), "{seen:?}");
    let status = status(&info);
    let node = listed(&status, "gw0001-node01");
    assert_eq!(node["logins"], 2, "{node}");
    assert_eq!(status["gateways"]["faults"][0]["fired"], 1);
    // No second download from byte 0: only the first request has no Range.
    let downloads = node["downloads"].as_array().unwrap();
    let from_zero = downloads
        .iter()
        .filter(|d| d["range"].is_null() || d["range"] == "bytes=0-")
        .count();
    assert_eq!(from_zero, 1, "{downloads:?}");
    gateway.stop().unwrap();
}

#[test]
fn a_gateway_restart_resumes_every_download_from_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, data) = start(dir.path(), 2, &[]);
    let config = gateway_config(&info, dir.path(), COPY, 2);
    let gateway = GatewayHandle::spawn(config.clone()).unwrap();
    let mut seen = Seen::default();
    // Both past a few checkpoints: each has a record.
    let gateway = wait(gateway, &mut seen, |s| {
        s.progress.len() == 2 && s.progress.values().all(|&r| r >= 300_000)
    });
    gateway.stop().unwrap();
    for sub in &config.subdevices {
        assert!(sub.dir.join("ota.record").exists(), "{}", sub.device_name);
    }
    // Back with one download slot: the two resumes take turns.
    let mut config = config;
    config.max_parallel = 1;
    let gateway = GatewayHandle::spawn(config.clone()).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| s.succeeded.len() == 2);
    assert_eq!(seen.most_at_once, 1, "{seen:?}");
    let status = status(&info);
    for sub in &config.subdevices {
        let name = &sub.device_name;
        let downloads = listed(&status, name)["downloads"]
            .as_array()
            .unwrap()
            .clone();
        let resumed = downloads.last().unwrap()["range"]
            .as_str()
            .unwrap()
            .to_owned();
        let offset: u64 = resumed
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap();
        assert!(offset >= 64 * 1024, "{name}: {downloads:?}");
        let flashed = dir.path().join(format!("flashed/{name}-2.0.0.bin"));
        assert_eq!(std::fs::read(flashed).unwrap(), data, "{name}");
    }
    gateway.stop().unwrap();
}

#[test]
fn the_gateway_demo_updates_every_sub_device_within_the_limit() {
    let options = ota_demo::gateway::GatewayDemoOptions {
        subdevices: 3,
        max_parallel: 2,
        size: 300_000,
        rate: 600_000,
        live: false,
        ..Default::default()
    };
    let report = ota_demo::gateway::run(&options).unwrap();
    assert!(report.rows.iter().all(|r| r.ok), "{report:?}");
    assert_eq!(report.most_at_once, 2, "{report:?}");
    let table = ota_demo::gateway::table(&report);
    assert!(
        table.contains("gw0001-node03     1.0.0 -> 2.0.0"),
        "{table}"
    );
    assert!(table.contains("at most 2 downloading at once"), "{table}");
}

#[test]
fn a_sub_device_that_still_runs_the_old_version_after_its_flash_is_reported_rolled_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, _) = start(dir.path(), 2, &[]);
    let mut config = gateway_config(&info, dir.path(), COPY, 2);
    // node02's bootloader kept the old image: it says it runs 1.0.0 after the flash.
    config.subdevices[1].version_after_flash = Some("echo 1.0.0".into());
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let mut rolled_back = false;
    let deadline = Instant::now() + LONG;
    while !(rolled_back && seen.succeeded.contains("gw0001-node01")) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = gateway.events().recv_timeout(left).expect("events");
        if let GatewayEvent::Subdevice {
            name,
            event: SubdeviceEvent::Agent(DeviceEvent::RolledBack { version }),
            ..
        } = &event
        {
            assert_eq!(
                (name.as_str(), version.as_str()),
                ("gw0001-node02", "1.0.0")
            );
            rolled_back = true;
        }
        seen.note(event);
    }
    assert!(!seen.succeeded.contains("gw0001-node02"), "{seen:?}");
    wait_state(&info, "gw0001-node02", "FAILED");
    wait_state(&info, "gw0001-node01", "SUCCEEDED");
    gateway.stop().unwrap();
}

#[test]
fn sub_devices_go_offline_with_their_gateways_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, _) = start(dir.path(), 1, &[]);
    let config = gateway_config(&info, dir.path(), COPY, 1);
    let gateway = GatewayHandle::spawn(config).unwrap();
    let mut seen = Seen::default();
    let gateway = wait(gateway, &mut seen, |s| !s.online.is_empty());
    let online = |info: &Value| listed(&status(info), "gw0001-node01")["online"] == true;
    let deadline = Instant::now() + WAIT;
    while !online(&info) {
        assert!(Instant::now() < deadline, "never online");
        std::thread::sleep(Duration::from_millis(10));
    }
    gateway.stop().unwrap(); // the gateway's session ends
    while online(&info) {
        assert!(
            Instant::now() < deadline,
            "still online without its gateway"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
