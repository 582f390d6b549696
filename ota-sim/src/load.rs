//! `ota-sim load`: drives a running `ota-sim serve` with many light devices in one process, as
//! a fleet of official-SDK devices would load it (not ota-std): each device is one raw MQTT
//! session with an `_ss=1` client id (so it never subscribes), reports `1.0.0`, waits for its
//! push, fetches the image with one HTTP `Range` request over a raw socket, checks its MD5,
//! reports 100 and the new version. All sessions stay open until every device finished, so
//! the simulator holds N sessions at once. The figures (time, throughput, the simulator's RSS)
//! are for BENCHMARKS.md.

use crate::mqtt_wire::{self, MAX_PACKET};
use crate::{Credentials, DeviceId, SDK_TIMESTAMP};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

/// What to drive.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The info file a running `ota-sim serve` wrote (plain MQTT and HTTP are used).
    pub info_file: PathBuf,
    /// How many of its devices to drive (all when `None`).
    pub devices: Option<usize>,
    /// Connections being opened at once.
    pub connect_concurrency: usize,
    /// Downloads at once.
    pub fetch_concurrency: usize,
    /// How long a device may wait for its push.
    pub push_timeout: Duration,
    /// Sessions open at once (`None`: every device's, all held until the last is done;
    /// otherwise a device's session closes once it is done and lets the next one in).
    pub at_once: Option<usize>,
}

/// What the run measured.
#[derive(Debug, Clone, Default)]
pub struct LoadReport {
    /// Devices driven.
    pub devices: usize,
    /// Devices that reported the new version after a verified download.
    pub succeeded: usize,
    /// Tasks `/status` shows as SUCCEEDED at the end.
    pub cloud_succeeded: usize,
    /// Why each failed device failed (at most 20 listed).
    pub failures: Vec<String>,
    /// From the first connect to the last session logged in (with every session held: all
    /// of them open at once).
    pub connect_time: Duration,
    /// From the first connect to the last device done.
    pub total_time: Duration,
    /// From the first connect until `/status` showed every finished device's task
    /// SUCCEEDED (polled every 200 ms).
    pub cloud_time: Duration,
    /// Image bytes fetched.
    pub bytes: u64,
    /// The simulator's resident memory at the end, and its peak (KiB, Linux only).
    pub rss_kib: Option<u64>,
    /// The simulator's peak resident memory (VmHWM).
    pub peak_rss_kib: Option<u64>,
}

impl LoadReport {
    /// One paragraph for a terminal or BENCHMARKS.md.
    pub fn summary(&self) -> String {
        let secs = self.total_time.as_secs_f64().max(1e-9);
        let kib = |v: Option<u64>| v.map_or("?".to_owned(), |k| format!("{} MiB", k / 1024));
        let mut out = format!(
            "{} devices: {} succeeded ({} SUCCEEDED in /status after {:.2} s), all sessions \
             open after {:.2} s, done after {:.2} s; {:.0} devices/s, {:.1} MiB/s of image; \
             simulator RSS {} at the end, peak {}\n",
            self.devices,
            self.succeeded,
            self.cloud_succeeded,
            self.cloud_time.as_secs_f64(),
            self.connect_time.as_secs_f64(),
            secs,
            self.devices as f64 / secs,
            self.bytes as f64 / secs / 1_048_576.0,
            kib(self.rss_kib),
            kib(self.peak_rss_kib),
        );
        for f in &self.failures {
            out.push_str(&format!("  {f}\n"));
        }
        out
    }
}

/// One device of the info file.
struct Target {
    id: DeviceId,
    secret: String,
}

/// Runs the load; `Err` when it could not start (info file, runtime).
pub fn run(options: &LoadOptions) -> Result<LoadReport, String> {
    let text = std::fs::read_to_string(&options.info_file)
        .map_err(|e| format!("cannot read {}: {e}", options.info_file.display()))?;
    let info: Value = serde_json::from_str(&text)
        .map_err(|e| format!("{}: not an info file: {e}", options.info_file.display()))?;
    let field = |k: &str| {
        info.get(k)
            .cloned()
            .ok_or_else(|| format!("info file has no {k}"))
    };
    let host = field("mqtt_host")?.as_str().unwrap_or_default().to_owned();
    let port = field("mqtt_port")?.as_u64().unwrap_or(0) as u16;
    let listen = field("http_listen")?
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pid = info.get("pid").and_then(Value::as_u64);
    let mut targets: Vec<Target> = field("devices")?
        .as_array()
        .map(|ds| {
            ds.iter()
                .filter_map(|d| {
                    Some(Target {
                        id: DeviceId::new(
                            d.get("product_key")?.as_str()?,
                            d.get("device_name")?.as_str()?,
                        ),
                        secret: d.get("device_secret")?.as_str()?.to_owned(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    if let Some(n) = options.devices {
        if n > targets.len() {
            return Err(format!("the info file lists {} devices", targets.len()));
        }
        targets.truncate(n);
    }
    if targets.is_empty() {
        return Err("the info file lists no devices".into());
    }
    crate::limits::raise_open_files(targets.len() as u64 * 2 + 1024);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let started = Instant::now();
    let mut report = runtime.block_on(drive(targets, &host, port, options));
    // The last version reports may still be on their way to the job engine.
    let deadline = Instant::now() + options.push_timeout;
    loop {
        let status = fetch_status(&listen);
        report.cloud_succeeded = status
            .as_ref()
            .and_then(|s| s["tasks"].as_array())
            .map_or(0, |ts| {
                ts.iter().filter(|t| t["state"] == "SUCCEEDED").count()
            });
        report.cloud_time = started.elapsed();
        if report.cloud_succeeded >= report.succeeded || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if let Some(pid) = pid {
        report.rss_kib = proc_status_kib(pid, "VmRSS:");
        report.peak_rss_kib = proc_status_kib(pid, "VmHWM:");
    }
    Ok(report)
}

/// A field of `/proc/{pid}/status` in KiB.
fn proc_status_kib(pid: u64, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `GET /status` from the firmware server at `listen`, parsed.
fn fetch_status(listen: &str) -> Option<Value> {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(listen).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let request = format!("GET /status HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).ok()?;
    let mut bytes = Vec::new();
    tcp.read_to_end(&mut bytes).ok()?;
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    serde_json::from_slice(&bytes[end + 4..]).ok()
}

async fn drive(targets: Vec<Target>, host: &str, port: u16, options: &LoadOptions) -> LoadReport {
    let n = targets.len();
    let connects = Arc::new(Semaphore::new(options.connect_concurrency.max(1)));
    let fetches = Arc::new(Semaphore::new(options.fetch_concurrency.max(1)));
    let hold_all = options.at_once.is_none_or(|k| k >= n);
    let slots = Arc::new(Semaphore::new(options.at_once.unwrap_or(n).clamp(1, n)));
    // With every session held, each waits here once it is done, so all stay open until the
    // last one is.
    let done = Arc::new(tokio::sync::Barrier::new(if hold_all { n + 1 } else { 1 }));
    let (connected_tx, mut connected_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for target in targets {
        let (host, connects, fetches, done, slots) = (
            host.to_owned(),
            connects.clone(),
            fetches.clone(),
            done.clone(),
            slots.clone(),
        );
        let connected = connected_tx.clone();
        let push_timeout = options.push_timeout;
        tasks.push(tokio::spawn(async move {
            let name = target.id.device_name.clone();
            let _slot = slots.acquire().await;
            let result = device(
                target,
                &host,
                port,
                &connects,
                &fetches,
                &connected,
                push_timeout,
            )
            .await;
            drop(connected);
            let finished = start.elapsed();
            // The session (if any) stays open until every device is done.
            let result = result.map_err(|e| format!("{name}: {e}"));
            if hold_all {
                done.wait().await;
            }
            (result.map(|(_session, bytes)| bytes), finished)
        }));
    }
    drop(connected_tx);
    let mut logged_in = 0;
    let mut connect_time = Duration::ZERO;
    while connected_rx.recv().await.is_some() {
        logged_in += 1;
        if logged_in == n {
            connect_time = start.elapsed();
        }
    }
    done.wait().await;
    let mut report = LoadReport {
        devices: n,
        connect_time,
        ..LoadReport::default()
    };
    let mut last = Duration::ZERO;
    for task in tasks {
        match task.await {
            Ok((Ok(bytes), finished)) => {
                report.succeeded += 1;
                report.bytes += bytes;
                last = last.max(finished);
            }
            Ok((Err(e), _)) if report.failures.len() < 20 => report.failures.push(e),
            Ok(_) => {}
            Err(e) => report.failures.push(format!("task: {e}")),
        }
    }
    report.total_time = last;
    report
}

/// One device's whole upgrade; returns its open session and the bytes fetched.
async fn device(
    target: Target,
    host: &str,
    port: u16,
    connects: &Semaphore,
    fetches: &Semaphore,
    connected: &tokio::sync::mpsc::UnboundedSender<()>,
    push_timeout: Duration,
) -> Result<(TcpStream, u64), String> {
    let (pk, dn) = (&target.id.product_key, &target.id.device_name);
    let mut creds = Credentials::new(&target.id, &target.secret);
    creds.client_id =
        format!("{pk}.{dn}|timestamp={SDK_TIMESTAMP},_ss=1,securemode=3,signmethod=hmacsha256|");
    let permit = connects.acquire().await.map_err(|e| e.to_string())?;
    let connecting = TcpStream::connect((host, port));
    let mut tcp = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    tcp.write_all(&connect_packet(&creds, 600))
        .await
        .map_err(|e| format!("CONNECT: {e}"))?;
    let mut reader = BufReader::new(tcp);
    let connack = read(&mut reader, Duration::from_secs(30)).await?;
    if !mqtt_wire::connack_accepted(&connack) {
        return Err("login refused".into());
    }
    drop(permit);
    let _ = connected.send(());
    let inform = r#"{"id":"1","params":{"version":"1.0.0"}}"#;
    let topic = |kind: &str| format!("/ota/device/{kind}/{pk}/{dn}");
    write(&mut reader, &topic("inform"), inform).await?;
    let upgrade = topic("upgrade");
    let deadline = Instant::now() + push_timeout;
    let push = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let packet = read(&mut reader, left)
            .await
            .map_err(|e| format!("no push: {e}"))?;
        if let Some((t, payload)) = publish_of(&packet) {
            if t == upgrade {
                break serde_json::from_slice::<Value>(payload)
                    .map_err(|e| format!("push is not JSON: {e}"))?;
            }
        }
    };
    let data = &push["data"];
    let url = data["url"].as_str().ok_or("push without url")?;
    let size = data["size"].as_u64().ok_or("push without size")?;
    let md5 = data["md5"].as_str().unwrap_or_default().to_owned();
    let body = {
        let _permit = fetches.acquire().await.map_err(|e| e.to_string())?;
        fetch(url).await?
    };
    if body.len() as u64 != size {
        return Err(format!("fetched {} of {size} bytes", body.len()));
    }
    if !md5.is_empty() && crate::crypto::md5_hex(&body) != md5 {
        return Err("MD5 mismatch".into());
    }
    let progress = r#"{"id":"2","params":{"step":"100","desc":""}}"#;
    write(&mut reader, &topic("progress"), progress).await?;
    let inform = r#"{"id":"3","params":{"version":"2.0.0"}}"#;
    write(&mut reader, &topic("inform"), inform).await?;
    Ok((reader.into_inner(), size))
}

/// A CONNECT with the device's login and `keep_alive` seconds.
fn connect_packet(creds: &Credentials, keep_alive: u16) -> Vec<u8> {
    let mut rest = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2];
    rest.extend_from_slice(&keep_alive.to_be_bytes());
    for field in [&creds.client_id, &creds.username, &creds.password] {
        rest.extend_from_slice(&(field.len() as u16).to_be_bytes());
        rest.extend_from_slice(field.as_bytes());
    }
    with_header(0x10, rest)
}

fn with_header(first: u8, rest: Vec<u8>) -> Vec<u8> {
    let mut packet = vec![first];
    let mut len = rest.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            packet.push(byte);
            break;
        }
        packet.push(byte | 0x80);
    }
    packet.extend(rest);
    packet
}

/// Publishes at QoS 0.
async fn write(
    stream: &mut BufReader<TcpStream>,
    topic: &str,
    payload: &str,
) -> Result<(), String> {
    let mut rest = (topic.len() as u16).to_be_bytes().to_vec();
    rest.extend_from_slice(topic.as_bytes());
    rest.extend_from_slice(payload.as_bytes());
    stream
        .get_mut()
        .write_all(&with_header(0x30, rest))
        .await
        .map_err(|e| format!("publish: {e}"))
}

async fn read(stream: &mut BufReader<TcpStream>, timeout: Duration) -> Result<Vec<u8>, String> {
    match tokio::time::timeout(timeout, mqtt_wire::read_packet(stream, MAX_PACKET)).await {
        Err(_) => Err("timed out".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(None)) => Err("connection closed".into()),
        Ok(Ok(Some(p))) => Ok(p),
    }
}

/// Topic and payload of a PUBLISH (QoS 0 or 1).
fn publish_of(packet: &[u8]) -> Option<(String, &[u8])> {
    if packet.first()? >> 4 != 3 {
        return None;
    }
    let qos = (packet[0] >> 1) & 3;
    let len_bytes = packet[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    let body = packet.get(1 + len_bytes..)?;
    let topic_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let topic = std::str::from_utf8(body.get(2..2 + topic_len)?).ok()?;
    let payload = body.get(2 + topic_len + if qos > 0 { 2 } else { 0 }..)?;
    Some((topic.to_owned(), payload))
}

/// One `GET` with `Range: bytes=0-` over a raw socket; the body of its `Content-Length`.
async fn fetch(url: &str) -> Result<Vec<u8>, String> {
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let slash = rest.find('/').ok_or("URL without a path")?;
    let (authority, path) = rest.split_at(slash);
    let addr = match authority.contains(':') {
        true => authority.to_owned(),
        false => format!("{authority}:80"),
    };
    let connecting = TcpStream::connect(&addr);
    let mut tcp = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .map_err(|_| format!("HTTP connect {addr} timed out"))?
        .map_err(|e| format!("HTTP connect {addr}: {e}"))?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("HTTP request: {e}"))?;
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut bytes))
        .await
        .map_err(|_| "HTTP response timed out".to_owned())?
        .map_err(|e| format!("HTTP response: {e}"))?;
    let end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no HTTP header")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    if !head.starts_with("HTTP/1.1 206") {
        let line = head.lines().next().unwrap_or_default();
        return Err(format!("HTTP answered {line}"));
    }
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or("no Content-Length")?;
    let body = bytes.split_off(end + 4);
    if body.len() != length {
        return Err(format!(
            "body of {} bytes, Content-Length {length}",
            body.len()
        ));
    }
    Ok(body)
}
