//! `ota-sim serve` as the platform behaves for the official C SDKs (docs/protocol.md §4, §5),
//! checked with clients that are not ours: raw sockets for HTTP (header names matched by exact
//! case, the URL authority taken as the host name on the scheme's default port) and MQTT
//! clients that never subscribe and report step "0".

use crate::cli::{serve, wait_line, Server};
use crate::device::{firmware, http_get, Device, WAIT};
use crate::tls::connect_packet;
use ota_sim::{Credentials, DeviceId, SDK_TIMESTAMP};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A response as a C SDK reads it: status, header lines as sent, and `Content-Length` bytes of
/// body (found only under that exact name).
struct Raw {
    status: u16,
    headers: Vec<String>,
    body: Vec<u8>,
}

impl Raw {
    /// The value of the header line that starts with exactly `name: `.
    fn exact(&self, name: &str) -> Option<&str> {
        let prefix = format!("{name}: ");
        self.headers.iter().find_map(|h| h.strip_prefix(&prefix))
    }
}

/// Splits `http://authority/path?query` the way iotkit 3.x does: everything between `://` and
/// the first `/` is the host name; the port is 80.
fn sdk_split(url: &str) -> (&str, &str) {
    let rest = url.strip_prefix("http://").expect("an http URL");
    let slash = rest.find('/').expect("a path");
    (&rest[..slash], &rest[slash..])
}

/// GETs `path` from `addr` with `Host: host` and an optional `Range` over a raw socket.
fn raw_get(addr: SocketAddr, host: &str, path: &str, range: Option<&str>) -> Raw {
    let mut tcp = TcpStream::connect_timeout(&addr, WAIT).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    let range = range.map_or(String::new(), |r| format!("Range: bytes={r}\r\n"));
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{range}Connection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let _ = tcp.read_to_end(&mut bytes);
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header block");
    let head = String::from_utf8(bytes[..end].to_vec()).unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap()[9..12].parse().unwrap();
    let headers: Vec<String> = lines.map(str::to_owned).collect();
    let mut raw = Raw {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = raw
        .exact("Content-Length")
        .unwrap_or_else(|| panic!("no Content-Length (exact case) in {:?}", raw.headers))
        .parse()
        .unwrap();
    raw.body = bytes[end + 4..].to_vec();
    assert_eq!(raw.body.len(), len, "body of Content-Length");
    raw
}

/// A device of the info file, logged in as Link SDK 4.x does (`_ss=1`), never subscribing.
fn sdk_device(info: &Value, n: usize) -> Device {
    let d = &info["devices"][n - 1];
    let id = DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let mut creds = Credentials::new(&id, d["device_secret"].as_str().unwrap());
    let (pk, dn) = (&id.product_key, &id.device_name);
    creds.client_id = format!(
        "{pk}.{dn}|timestamp={SDK_TIMESTAMP},_ss=1,_v=sdk-c-4.2.0,securemode=3,signmethod=hmacsha256,ext=3|"
    );
    let host = info["mqtt_host"].as_str().unwrap();
    let port = info["mqtt_port"].as_u64().unwrap() as u16;
    Device::connect(host, port, &id, &creds).unwrap()
}

fn status(server_base: &str) -> Value {
    let got = http_get(&format!("{server_base}/status"), None, WAIT);
    serde_json::from_slice(&got.body).unwrap()
}

/// Polls `/status` until `check` holds; returns how long that took.
fn until(base: &str, what: &str, check: impl Fn(&Value) -> bool) -> Duration {
    let start = Instant::now();
    loop {
        let s = status(base);
        if check(&s) {
            return start.elapsed();
        }
        assert!(start.elapsed() < 3 * WAIT, "{what}: {s}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn task_state(s: &Value, device: &str) -> String {
    let tasks = s["tasks"].as_array().unwrap();
    let task = tasks.iter().find(|t| t["device"]["device_name"] == device);
    task.map_or("none".into(), |t| t["state"].as_str().unwrap().to_owned())
}

fn device_status<'a>(s: &'a Value, device: &str) -> &'a Value {
    let devices = s["devices"].as_array().unwrap();
    devices.iter().find(|d| d["device_name"] == device).unwrap()
}

/// `serve` of 20,000 bytes as 2.0.0 with `flags`; the plain HTTP base URL to reach it.
fn serve_fw(dir: &std::path::Path, flags: &[&str]) -> (Server, mpsc::Receiver<String>, Value) {
    let fw = dir.join("fw.bin");
    std::fs::write(&fw, firmware(20_000)).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    args.extend(["--version", "2.0.0", "--firmware"].map(std::ffi::OsStr::new));
    args.push(fw.as_os_str());
    serve(&args, dir)
}

/// The firmware server as this test reaches it (pushed URLs may name another host).
fn base_of(info: &Value) -> String {
    format!("http://{}", info["http_listen"].as_str().unwrap())
}

/// Served on port 80 (when this process may bind it), pushed URLs carry no port, and a client
/// that takes the URL authority as a host name on port 80 downloads with header names as OSS
/// writes them. `--public-url` announces a host of the user's choosing the same way.
#[test]
fn urls_carry_no_default_port_and_headers_are_named_as_oss_names_them() {
    let dir = tempfile::tempdir().unwrap();
    let port_80 = TcpListener::bind("127.0.0.1:80").is_ok();
    let flags: &[&str] = match port_80 {
        true => &["--http-port", "80"],
        // Unprivileged: a name that leads to the server through the user's own forward.
        false => &["--public-url", "http://fw.ota-sim.test:80/"],
    };
    let (server, _lines, info) = serve_fw(dir.path(), flags);
    // The listener's own address, which --public-url hides from the URLs.
    let listener: SocketAddr = info["http_listen"].as_str().unwrap().parse().unwrap();
    let mut dev = sdk_device(&info, 1);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    let url = push["data"]["url"].as_str().unwrap();
    let (authority, path) = sdk_split(url);
    let expected = if port_80 {
        "127.0.0.1"
    } else {
        "fw.ota-sim.test"
    };
    assert_eq!(authority, expected, "{url}");
    if port_80 {
        let resolved = (authority, 80).to_socket_addrs().unwrap().next().unwrap();
        assert_eq!(resolved, listener);
    }
    let data = firmware(20_000);
    let whole = raw_get(listener, authority, path, None);
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, data);
    assert_eq!(whole.exact("Content-Length"), Some("20000"));
    assert_eq!(whole.exact("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        whole.exact("Content-Type"),
        Some("application/octet-stream")
    );
    let part = raw_get(listener, authority, path, Some("100-"));
    assert_eq!(part.status, 206);
    assert_eq!(part.exact("Content-Range"), Some("bytes 100-19999/20000"));
    assert_eq!(part.exact("Content-Length"), Some("19900"));
    assert_eq!(part.body, data[100..]);
    // Errors too: an altered URL gets OSS's XML with its length under the same name.
    let denied = raw_get(
        listener,
        authority,
        &path.replace("Signature=", "Signature=0"),
        None,
    );
    assert_eq!(denied.status, 403);
    assert!(String::from_utf8_lossy(&denied.body).contains("SignatureDoesNotMatch"));
    drop(server);
}

/// Link SDK habits: no SUBSCRIBE, step "0" when the download starts (IN_PROGRESS, not
/// FAILED), then 5..100, then the new version: SUCCEEDED.
#[test]
fn a_device_that_never_subscribes_and_reports_0_first_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _lines, info) = serve_fw(dir.path(), &[]);
    let base = base_of(&info);
    let mut dev = sdk_device(&info, 1);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    dev.progress(0, "");
    until(&base, "step 0 in progress", |s| {
        task_state(s, "dev0001") == "IN_PROGRESS"
    });
    let got = http_get(push["data"]["url"].as_str().unwrap(), None, WAIT);
    assert_eq!(got.body, firmware(20_000));
    for step in (5..=100).step_by(5) {
        dev.progress(step, "");
    }
    dev.inform("2.0.0");
    until(&base, "success", |s| {
        task_state(s, "dev0001") == "SUCCEEDED"
    });
    let s = status(&base);
    let steps = &device_status(&s, "dev0001")["progress"];
    assert_eq!(steps[0], 0);
    assert_eq!(steps.as_array().unwrap().len(), 21);
    drop(server);
}

/// An expired URL stays expired: three retries of it get 403 AccessDenied; the URL of a
/// firmware/get reply afterwards is a fresh one and serves the rest (206).
#[test]
fn an_expired_url_stays_dead_until_a_fresh_one_is_handed_out() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _lines, info) = serve_fw(dir.path(), &["--fault", "dev0001:expire:5000"]);
    let mut dev = sdk_device(&info, 1);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    let url = push["data"]["url"].as_str().unwrap();
    let first = http_get(url, None, WAIT);
    assert_eq!(first.body.len(), 5000);
    assert!(first.error.is_some());
    for _ in 0..3 {
        let again = http_get(url, Some("bytes=5000-"), WAIT);
        assert_eq!(again.status, 403);
        let body = String::from_utf8(again.body).unwrap();
        assert!(body.contains("<Code>AccessDenied</Code>"), "{body}");
    }
    dev.firmware_get("\"9\"", None);
    let reply = dev.expect_get_reply();
    let fresh = reply["data"]["url"].as_str().unwrap();
    assert_ne!(fresh, url);
    let rest = http_get(fresh, Some("bytes=5000-"), WAIT);
    assert_eq!(rest.status, 206);
    assert_eq!(rest.body, firmware(20_000)[5000..]);
    // The old one is still dead.
    assert_eq!(http_get(url, Some("bytes=5000-"), WAIT).status, 403);
    drop(server);
}

/// `online` turns false when the TCP connection is dropped, and when a client goes silent
/// past its keep-alive, within one keep-alive (and a half for silence).
#[test]
fn a_device_is_offline_from_the_moment_its_connection_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _lines, info) = serve_fw(dir.path(), &["--devices", "2"]);
    let base = base_of(&info);
    let login = |n: usize, keep_alive: u8| raw_login(&info, n, keep_alive);
    let online = |s: &Value, n: &str| device_status(s, n)["online"] == true;
    let tcp = login(1, 2);
    until(&base, "dev0001 online", |s| online(s, "dev0001"));
    drop(tcp);
    let took = until(&base, "dev0001 offline", |s| !online(s, "dev0001"));
    assert!(took < Duration::from_secs(2), "{took:?}");

    let silent = login(2, 1);
    until(&base, "dev0002 online", |s| online(s, "dev0002"));
    let took = until(&base, "dev0002 offline", |s| !online(s, "dev0002"));
    assert!(took < Duration::from_secs(3), "{took:?}");
    drop(silent);
    drop(server);
}

/// An MQTT 3.1.1 PUBLISH at QoS 0.
fn publish_packet(topic: &str, payload: &[u8]) -> Vec<u8> {
    let mut rest = (topic.len() as u16).to_be_bytes().to_vec();
    rest.extend_from_slice(topic.as_bytes());
    rest.extend_from_slice(payload);
    let mut packet = vec![0x30];
    let mut len = rest.len();
    while len >= 0x80 {
        packet.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    packet.push(len as u8);
    packet.extend(rest);
    packet
}

/// A raw MQTT session of device `n` with `keep_alive` seconds, logged in; no SUBSCRIBE.
fn raw_login(info: &Value, n: usize, keep_alive: u8) -> TcpStream {
    let d = &info["devices"][n - 1];
    let id = DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let creds = Credentials::new(&id, d["device_secret"].as_str().unwrap());
    let mut connect = connect_packet(&creds.client_id, &creds.username, &creds.password);
    // Level, flags, then the keep-alive follow the protocol name.
    let at = connect.windows(4).position(|w| w == b"MQTT").unwrap() + 6;
    connect[at..at + 2].copy_from_slice(&[0, keep_alive]);
    let port = info["mqtt_port"].as_u64().unwrap() as u16;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    tcp.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);
    tcp
}

/// 100,000 progress reports from one device with no task (as one looping against a 403
/// sends them), twice: `/status` keeps the last ones and counts the rest, the log coalesces
/// them into a count a second, and the simulator's memory does not grow with them.
#[test]
fn a_progress_storm_keeps_memory_status_and_log_bounded() {
    const REPORTS: u64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let (server, lines, info) = serve_fw(dir.path(), &[]);
    let base = base_of(&info);
    let pk = info["devices"][0]["product_key"].as_str().unwrap();
    let dn = "dev0001";
    let mut tcp = raw_login(&info, 1, 60);
    let inform = r#"{"id":"1","params":{"version":"2.0.0"}}"#;
    tcp.write_all(&publish_packet(
        &format!("/ota/device/inform/{pk}/{dn}"),
        inform.as_bytes(),
    ))
    .unwrap();
    let topic = format!("/ota/device/progress/{pk}/{dn}");
    let mut storm = |round: u64| {
        let mut batch = Vec::new();
        for i in 0..REPORTS {
            let step = i % 100 + 1;
            let payload = format!(r#"{{"id":"{i}","params":{{"step":"{step}","desc":"storm"}}}}"#);
            batch.extend(publish_packet(&topic, payload.as_bytes()));
            if batch.len() > 64 * 1024 {
                tcp.write_all(&batch).unwrap();
                batch.clear();
            }
        }
        tcp.write_all(&batch).unwrap();
        until(&base, "every report counted", |s| {
            let d = device_status(s, dn);
            let kept = d["progress"].as_array().unwrap().len() as u64;
            kept + d["progress_dropped"].as_u64().unwrap() == round * REPORTS
        });
        server.rss_kib().unwrap()
    };
    let first = storm(1);
    let second = storm(2);
    let s = status(&base);
    let kept = device_status(&s, dn)["progress"].as_array().unwrap().len();
    assert_eq!(kept, ota_sim::PROGRESS_HISTORY);
    // 100,000 more reports kept would be about 10 MB; the allocator's own growth between two
    // rounds was seen at 4 MiB on a loaded machine.
    assert!(second < first + 6 * 1024, "RSS {first} KiB -> {second} KiB");
    let summary = wait_line(&lines, "more progress reports from");
    assert!(summary.contains(dn), "{summary}");
    let about_device = lines.try_iter().filter(|l| l.contains(dn)).count();
    assert!(about_device < 1000, "{about_device} lines about {dn}");
    drop(tcp);
    drop(server);
}

/// The time service (docs/protocol.md §13) for a plain MQTT client: the reply echoes
/// `deviceSendTime` as sent (string or number) and carries the server's receive and send
/// times in ms, between the request and the reply by the wall clock.
#[test]
fn ntp_requests_are_answered_with_the_servers_times() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _lines, info) = serve_fw(dir.path(), &[]);
    let d = &info["devices"][0];
    let id = DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let creds = Credentials::new(&id, d["device_secret"].as_str().unwrap());
    let host = info["mqtt_host"].as_str().unwrap();
    let port = info["mqtt_port"].as_u64().unwrap() as u16;
    let mut dev = Device::connect(host, port, &id, &creds).unwrap();
    let base = format!("/ext/ntp/{}/{}", id.product_key, id.device_name);
    dev.subscribe_to(&format!("{base}/response"));
    let unix_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    for request in [
        r#"{"deviceSendTime":"1571724098000"}"#,
        r#"{"deviceSendTime":42}"#,
    ] {
        let before = unix_ms();
        dev.publish_raw(&format!("{base}/request"), request.as_bytes());
        let (topic, reply) = dev.recv(WAIT).expect("an NTP reply");
        let after = unix_ms();
        assert_eq!(topic, format!("{base}/response"));
        let sent: Value = serde_json::from_str(request).unwrap();
        assert_eq!(reply["deviceSendTime"], sent["deviceSendTime"]);
        let ms = |k: &str| reply[k].as_str().unwrap().parse::<u64>().unwrap();
        let (recv, send) = (ms("serverRecvTime"), ms("serverSendTime"));
        assert!(before <= recv && recv <= send && send <= after, "{reply}");
    }
    drop(server);
}

/// A device whose connection ended gets no push: a job created while it is offline leaves
/// its task QUEUED with no push, and it is pushed when the device is back and reports.
#[test]
fn an_offline_device_gets_no_push_until_it_is_back() {
    use ota_sim::{JobSpec, PackageSpec, TaskState};
    let sim = crate::sim();
    let info = sim.add_device().unwrap();
    // A raw session, so that dropping it closes the socket at once.
    let creds = info.credentials();
    let mut tcp = TcpStream::connect((sim.mqtt_host(), sim.mqtt_port())).unwrap();
    tcp.write_all(&connect_packet(
        &creds.client_id,
        &creds.username,
        &creds.password,
    ))
    .unwrap();
    let mut connack = [0u8; 4];
    tcp.read_exact(&mut connack).unwrap();
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    let inform = r#"{"id":"1","params":{"version":"1.0.0"}}"#;
    tcp.write_all(&publish_packet(
        &format!("/ota/device/inform/{pk}/{dn}"),
        inform.as_bytes(),
    ))
    .unwrap();
    sim.wait_version(&info, ota_sim::DEFAULT_MODULE, "1.0.0", WAIT)
        .unwrap();
    assert!(sim.is_online(&info));
    drop(tcp);
    let start = Instant::now();
    while sim.is_online(&info) {
        assert!(start.elapsed() < WAIT, "still online");
        std::thread::sleep(Duration::from_millis(10));
    }
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(1_000)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let task = sim.task(job, &info).unwrap();
    assert_eq!((task.state, task.pushes), (TaskState::Queued, 0));
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    assert_eq!(dev.expect_push()["data"]["version"], "2.0.0");
    let task = sim.task(job, &info).unwrap();
    assert_eq!((task.state, task.pushes), (TaskState::Notified, 1));
}
