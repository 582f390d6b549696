//! ota-std's agent against the `ota-sim serve --tls` process, trusting only the CA file the
//! info file names.

use crate::support::{firmware, serve, Server};
use std::sync::mpsc;

/// The whole path a team's TLS device takes: `serve --tls` as a process, and ota-std's agent
/// trusting only the CA file the info names, over MQTT-TLS and HTTPS (no plain http allowed).
#[test]
fn serve_tls_upgrades_an_ota_std_device_trusting_the_written_ca() {
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let data = firmware(150_000);
    std::fs::write(&fw_path, &data).unwrap();
    let (server, _lines, info) = serve_tls(&fw_path, dir.path());
    let ca = std::fs::read(info["ca_pem_path"].as_str().unwrap()).unwrap();
    let d = &info["devices"][0];
    let device_dir = dir.path().join("device");
    std::fs::create_dir(&device_dir).unwrap();
    std::fs::write(device_dir.join("version"), "1.0.0\n").unwrap();
    let mut config = ota_std::DeviceConfig::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
        d["device_secret"].as_str().unwrap(),
        "localhost",
        info["mqtts_port"].as_u64().unwrap() as u16,
        &device_dir,
    )
    .unwrap();
    config.mqtt_tls = Some(ota_std::Trust::CaPem(ca.clone()));
    config.https_trust = ota_std::Trust::CaPem(ca);
    config.agent.rules.allow_http = false; // https only, as on the real cloud
    let device = ota_std::Device::spawn(config).unwrap();
    let succeeded = device.wait_for(
        std::time::Duration::from_secs(60),
        |e| matches!(e, ota_std::DeviceEvent::Succeeded { version } if version == "2.0.0"),
    );
    assert!(succeeded.is_some(), "no success over TLS");
    assert_eq!(
        std::fs::read(device_dir.join("firmware.img")).unwrap(),
        data
    );
    let _ = device.stop();
    drop(server);
}

/// `ota-sim serve --tls` on free ports, serving `firmware` as version 2.0.0.
fn serve_tls(
    firmware: &std::path::Path,
    dir: &std::path::Path,
) -> (Server, mpsc::Receiver<String>, serde_json::Value) {
    let flags = [
        "--version",
        "2.0.0",
        "--tls",
        "--mqtts-port",
        "0",
        "--https-port",
        "0",
    ];
    let mut args: Vec<&std::ffi::OsStr> = flags.iter().map(|s| s.as_ref()).collect();
    args.extend(["--firmware".as_ref(), firmware.as_os_str()]);
    serve(&args, dir)
}
