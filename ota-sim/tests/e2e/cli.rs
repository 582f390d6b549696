//! The `ota-sim serve` binary: flag errors, and one upgrade through the info file it writes.

use crate::device::{firmware, http_get, Device, WAIT};
use ota_sim::{Credentials, DeviceId};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_ota-sim");

pub fn fails_with_one_line(args: &[&str], mentions: &str) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{args:?}");
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(mentions), "{err}");
}

#[test]
fn bad_flags_and_unreadable_firmware_exit_2() {
    fails_with_one_line(&["serve", "--bogus"], "--bogus");
    fails_with_one_line(&["serve", "--firmware", "/etc/hostname"], "--version");
    fails_with_one_line(
        &[
            "serve",
            "--firmware",
            "/x",
            "--version",
            "1",
            "--devices",
            "x",
        ],
        "--devices",
    );
    fails_with_one_line(
        &[
            "serve",
            "--firmware",
            "/nonexistent/fw.bin",
            "--version",
            "1",
        ],
        "/nonexistent/fw.bin",
    );
    fails_with_one_line(&[], "subcommand");
    fails_with_one_line(
        &[
            "serve",
            "--firmware",
            "/x",
            "--version",
            "1",
            "--download-protocol",
            "ftp",
        ],
        "--download-protocol",
    );
}

/// Waits until a line containing each needle came, in any order; returns them.
pub fn wait_lines<const N: usize>(
    lines: &mpsc::Receiver<String>,
    needles: [&str; N],
) -> [String; N] {
    let mut found: [Option<String>; N] = std::array::from_fn(|_| None);
    let deadline = Instant::now() + WAIT;
    while found.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no lines with all of {needles:?}; found {found:?}"));
        for (slot, needle) in found.iter_mut().zip(needles) {
            if slot.is_none() && line.contains(needle) {
                *slot = Some(line.clone());
            }
        }
    }
    found.map(Option::unwrap_or_default)
}

/// Kills the server when the test ends, however it ends.
pub struct Server(Child);

impl Server {
    /// The server's resident memory in KiB (VmRSS), on Linux.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for a stderr line containing `needle`.
pub fn wait_line(lines: &mpsc::Receiver<String>, needle: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return line,
            Ok(_) => {}
            Err(_) => panic!("no stderr line with {needle:?}"),
        }
    }
}

#[test]
fn serve_writes_info_and_upgrades_a_device() {
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let data = firmware(20_000);
    std::fs::write(&fw_path, &data).unwrap();
    let args = [
        "--version",
        "2.0.0",
        "--devices",
        "2",
        "--url-ttl",
        "60",
        "--sign-method",
        "sha256",
        "--firmware",
    ];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    args.push(fw_path.as_os_str());
    let (server, lines, info) = serve(&args, dir.path());
    assert_eq!(info["devices"].as_array().unwrap().len(), 2);
    let d = &info["devices"][1];
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
    assert_eq!(push["data"]["signMethod"], "SHA256");
    let url = push["data"]["url"].as_str().unwrap();
    assert!(url.starts_with(info["http_base_url"].as_str().unwrap()));
    assert_eq!(http_get(url, None, WAIT).body, data);
    dev.progress(100, "done");
    // The live view on stdout (time, device, state, step) and the log on stderr, in either
    // order.
    let [live, _] = wait_lines(&lines, ["job 0 IN_PROGRESS step 100", "-> InProgress"]);
    assert!(live.contains(&format!("/{} job", id.device_name)), "{live}");
    dev.inform("2.0.0");
    let [live, log] = wait_lines(&lines, ["job 0 SUCCEEDED step 100", "-> Succeeded"]);
    assert!(live.contains(&format!("/{} job", id.device_name)), "{live}");
    assert!(log.contains(&id.device_name), "{log}");
    let status = http_get(
        &format!("{}/status", info["http_base_url"].as_str().unwrap()),
        None,
        WAIT,
    );
    assert_eq!(status.status, 200);
    drop(server);
}

/// Starts `ota-sim serve` with `args` on free ports; returns it with its stderr lines and the
/// info file it wrote.
pub fn serve(
    args: &[&std::ffi::OsStr],
    dir: &std::path::Path,
) -> (Server, mpsc::Receiver<String>, serde_json::Value) {
    let info_path = dir.join("info.json");
    let child = Command::new(BIN)
        .args(["serve", "--mqtt-port", "0", "--http-port", "0"])
        .args(args)
        .arg("--info-file")
        .arg(&info_path)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut server = Server(child);
    let (tx, lines) = mpsc::channel();
    let stdout = server.0.stdout.take().unwrap();
    let stderr = server.0.stderr.take().unwrap();
    let readers: [Box<dyn std::io::Read + Send>; 2] = [Box::new(stdout), Box::new(stderr)];
    for reader in readers {
        let tx = tx.clone();
        std::thread::spawn(move || {
            // Reads to the end even when nobody listens any more: a full pipe would block
            // the server.
            for line in BufReader::new(reader).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    wait_line(&lines, "ready");
    let info = serde_json::from_slice(&std::fs::read(&info_path).unwrap()).unwrap();
    (server, lines, info)
}

#[test]
fn serve_offers_several_files_over_mqtt() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("app.bin"), dir.path().join("res.pak"));
    let (a_data, b_data) = (firmware(12_000), firmware(3_000));
    std::fs::write(&a, &a_data).unwrap();
    std::fs::write(&b, &b_data).unwrap();
    let args = [
        "--version",
        "2.0.0",
        "--download-protocol",
        "mqtt",
        "--firmware",
    ];
    let mut args: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_ref()).collect();
    args.extend([a.as_os_str(), "--firmware".as_ref(), b.as_os_str()]);
    let (server, _lines, info) = serve(&args, dir.path());
    assert_eq!(info["download_protocol"], "mqtt");
    assert_eq!(info["files"], serde_json::json!(["app.bin", "res.pak"]));
    let (id, creds) = first_device(&info);
    let host = info["mqtt_host"].as_str().unwrap();
    let port = info["mqtt_port"].as_u64().unwrap() as u16;
    let mut dev = Device::connect(host, port, &id, &creds).unwrap();
    dev.subscribe();
    dev.inform("1.0.0");
    let push = dev.expect_push();
    let files = push["data"]["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    let stream = push["data"]["streamId"].as_u64().unwrap();
    assert_eq!(dev.fetch_file(stream, 1, 12_000, 5_000), a_data);
    assert_eq!(dev.fetch_file(stream, 2, 3_000, 5_000), b_data);
    drop(server);
}

/// `--sign` signs with a fresh key and writes its public key beside the info file; a device
/// holding that key verifies the push's `digestsign`. `--sign-key` takes a PEM private key.
#[test]
fn serve_signs_the_package_and_writes_the_public_key() {
    use ota_core::{DigestMethod, ExpectedDigest};
    use sha2::Digest;
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    let data = firmware(9_000);
    std::fs::write(&fw_path, &data).unwrap();
    let key_path = dir.path().join("product.pem");
    std::fs::write(&key_path, ota_sim::signing_keys::TEST_PRIVATE_KEY_PEM).unwrap();
    let digest = ExpectedDigest::new(DigestMethod::Sha256, &sha2::Sha256::digest(&data)).unwrap();
    let fresh: [&std::ffi::OsStr; 1] = ["--sign".as_ref()];
    let given: [&std::ffi::OsStr; 2] = ["--sign-key".as_ref(), key_path.as_os_str()];
    for signing in [&fresh[..], &given[..]] {
        let mut args: Vec<&std::ffi::OsStr> = ["--version", "2.0.0", "--sign-method", "sha256"]
            .iter()
            .map(|s| s.as_ref())
            .collect();
        args.extend(signing);
        args.extend(["--firmware".as_ref(), fw_path.as_os_str()]);
        let (server, _lines, info) = serve(&args, dir.path());
        let key_file = info["signing_key_file"].as_str().unwrap();
        let pem = std::fs::read_to_string(key_file).unwrap();
        let key = package_key(&pem);
        if signing.len() == 2 {
            assert_eq!(
                pem.trim(),
                ota_sim::signing_keys::TEST_PUBLIC_KEY_PEM.trim()
            );
        }
        let (id, creds) = first_device(&info);
        let host = info["mqtt_host"].as_str().unwrap();
        let port = info["mqtt_port"].as_u64().unwrap() as u16;
        let mut dev = Device::connect(host, port, &id, &creds).unwrap();
        dev.subscribe();
        dev.inform("1.0.0");
        let push = dev.expect_push();
        let sign = push["data"]["digestsign"].as_str().unwrap();
        assert_eq!(key.verify_text(&digest, Some(sign)), Ok(()));
        drop(server);
    }
    fails_with_one_line(
        &["serve", "--firmware", "/x", "--version", "1", "--sign"],
        "--info-file",
    );
}

#[test]
fn serve_tls_writes_the_ca_and_listens_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let fw_path = dir.path().join("fw.bin");
    std::fs::write(&fw_path, firmware(1_000)).unwrap();
    let (server, lines, info) = serve_tls(&fw_path, dir.path());
    let ca_path = info["ca_pem_path"].as_str().unwrap();
    assert_eq!(
        std::path::Path::new(ca_path),
        dir.path().join("ota-sim-ca.pem")
    );
    let ca = std::fs::read_to_string(ca_path).unwrap();
    let port = info["mqtts_port"].as_u64().unwrap() as u16;
    assert!(info["https_base_url"]
        .as_str()
        .unwrap()
        .starts_with("https://"));
    let (id, creds) = first_device(&info);
    let mut mqtt = crate::tls::connect_tls13(port, &ca, "localhost");
    let connect = crate::tls::connect_packet(&creds.client_id, &creds.username, &creds.password);
    std::io::Write::write_all(&mut mqtt, &connect).unwrap();
    let line = wait_line(&lines, "logged in over TLS");
    assert!(line.contains(&id.device_name), "{line}");
    drop(server);
}

#[test]
fn tls_flags_without_tls_exit_2() {
    let base = ["serve", "--firmware", "/x", "--version", "1"];
    fails_with_one_line(&[&base[..], &["--mqtts-port", "0"]].concat(), "--tls");
    fails_with_one_line(
        &[&base[..], &["--tls", "--cert", "c.pem"]].concat(),
        "--key",
    );
}

/// The product key a PEM public key (`BEGIN PUBLIC KEY`) holds, as a device loads it.
fn package_key(pem: &str) -> ota_core::signature::PackageKey {
    use rsa::pkcs8::DecodePublicKey;
    use rsa::traits::PublicKeyParts;
    let key = rsa::PublicKey::from_public_key_pem(pem.trim()).unwrap();
    ota_core::signature::PackageKey::from_parts(
        &key.n().to_be_bytes_trimmed_vartime(),
        &key.e().to_be_bytes_trimmed_vartime(),
    )
    .unwrap()
}

/// The identity and login of the first device an info file lists.
fn first_device(info: &serde_json::Value) -> (DeviceId, Credentials) {
    let d = &info["devices"][0];
    let id = DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let creds = Credentials::new(&id, d["device_secret"].as_str().unwrap());
    (id, creds)
}

/// `serve --tls` of `firmware` as 2.0.0 on free ports, the info file in `dir`.
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
