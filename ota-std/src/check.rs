//! `ota-agent check`: the steps a device takes to reach the platform, one at a time, each
//! printed, stopping with one clear line at the first that fails. A user runs it on the
//! device's own network before deploying: name resolution, TCP, TLS (version, suite, chain
//! and which trusted root anchored it), the login's CONNACK, the subscriptions, a
//! firmware/get round trip, and optionally the first byte of an https URL (the OSS chain).

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ota_core::identity::Topics;
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, Login, Packet, Publish, Subscribe,
};
use rumqttc::mqttbytes::QoS;

use crate::tls_session::{self, Stream, TlsReport};
use crate::{DeviceConfig, TlsBackend, Trust};

/// How long each step may take.
const STEP: Duration = Duration::from_secs(10);

/// Largest MQTT packet read (a firmware/get reply is small; a long signed URL fits).
const MAX_PACKET: usize = 64 * 1024;

/// Largest HTTP response head read before the first body byte.
const MAX_HEAD: usize = 16 * 1024;

/// Runs every step against `config`'s endpoint, printing to `out`; then fetches the first
/// byte of `url` when given. `Err` is the line that says which step failed and why.
pub fn check(config: &DeviceConfig, url: Option<&str>, out: &mut dyn Write) -> Result<(), String> {
    let mut say = |line: String| {
        let _ = writeln!(out, "{line}");
    };
    let (host, port) = (config.broker_host.as_str(), config.broker_port);
    if let Some(trust) = &config.mqtt_tls {
        say(format!("trust      {}", trust_summary(trust)));
    }
    let addrs = tls_session::resolve(host, port).map_err(|e| format!("resolve: {e}"))?;
    let shown: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
    say(format!("resolve    {host}:{port} -> {}", shown.join(", ")));
    let tcp = tls_session::tcp(&addrs, STEP).map_err(|e| format!("connect: {e}"))?;
    say(format!("connect    TCP to {}", peer(&tcp)));
    let mut stream: Box<dyn Stream> = match &config.mqtt_tls {
        Some(trust) => {
            let (stream, report) =
                tls_session::handshake(tcp, host, port, trust, config.tls_backend)
                    .map_err(|e| format!("tls: {e}"))?;
            show_tls(&mut say, &report, config.tls_backend);
            stream
        }
        None => {
            say("tls        off (plain TCP: only for local brokers)".into());
            Box::new(tcp)
        }
    };
    let mut mqtt = MqttStream::new(&mut *stream);
    login(&mut mqtt, config, &mut say)?;
    let topics = Topics::new(&config.agent.identity);
    subscribe(
        &mut mqtt,
        &[&topics.firmware_get_reply, &topics.upgrade],
        &mut say,
    )?;
    firmware_get(&mut mqtt, config, &topics, &mut say)?;
    let _ = mqtt.send(&Packet::Disconnect);
    if let Some(url) = url {
        fetch_first_byte(url, config, &mut say).map_err(|e| format!("url: {e}"))?;
    }
    say("check      passed".into());
    Ok(())
}

fn peer(tcp: &std::net::TcpStream) -> String {
    tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default()
}

fn show_tls(say: &mut dyn FnMut(String), report: &TlsReport, backend: TlsBackend) {
    let library = match backend {
        TlsBackend::Rustls => "rustls",
        TlsBackend::Openssl => "OpenSSL",
    };
    say(format!(
        "tls        {} {} ({library})",
        report.version, report.suite
    ));
    for (i, subject) in report.chain.iter().enumerate() {
        say(format!("chain {i}    {subject}"));
    }
    say(format!("anchor     {}", report.anchor));
}

/// MQTT 3.1.1 packets over a blocking stream.
struct MqttStream<'a> {
    stream: &'a mut dyn Stream,
    buffer: BytesMut,
}

impl<'a> MqttStream<'a> {
    fn new(stream: &'a mut dyn Stream) -> Self {
        MqttStream {
            stream,
            buffer: BytesMut::new(),
        }
    }

    fn send(&mut self, packet: &Packet) -> Result<(), String> {
        let mut bytes = BytesMut::new();
        packet
            .write(&mut bytes, MAX_PACKET)
            .map_err(|e| format!("cannot encode {packet:?}: {e}"))?;
        self.stream
            .write_all(&bytes)
            .and_then(|()| self.stream.flush())
            .map_err(|e| format!("cannot send: {e}"))
    }

    /// The next packet; `Ok(None)` when the broker closed the connection.
    fn receive(&mut self) -> Result<Option<Packet>, String> {
        loop {
            match Packet::read(&mut self.buffer, MAX_PACKET) {
                Ok(packet) => return Ok(Some(packet)),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => return Err(format!("the broker sent a bad packet: {e}")),
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return Ok(None),
                // rustls's word for a peer that closed without close_notify.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("no answer within {STEP:?}: {e}")),
            }
        }
    }
}

/// What a CONNACK code means for this platform's login.
fn connack_meaning(code: ConnectReturnCode) -> (u8, &'static str) {
    match code {
        ConnectReturnCode::Success => (0, "accepted"),
        ConnectReturnCode::RefusedProtocolVersion => (1, "refused: MQTT version not accepted"),
        ConnectReturnCode::BadClientId => (2, "refused: client id rejected"),
        ConnectReturnCode::ServiceUnavailable => (3, "refused: server unavailable"),
        ConnectReturnCode::BadUserNamePassword => (
            4,
            "refused: bad user name or password (check product key, device name and device \
             secret)",
        ),
        ConnectReturnCode::NotAuthorized => (5, "refused: not authorized (device disabled?)"),
    }
}

fn login(
    mqtt: &mut MqttStream<'_>,
    config: &DeviceConfig,
    say: &mut dyn FnMut(String),
) -> Result<(), String> {
    let credentials = config.login();
    let mut connect = Connect::new(credentials.client_id.clone());
    connect.keep_alive = 60;
    connect.clean_session = true;
    connect.login = Some(Login::new(
        credentials.username.clone(),
        credentials.password.clone(),
    ));
    mqtt.send(&Packet::Connect(connect))
        .map_err(|e| format!("login: {e}"))?;
    match mqtt.receive().map_err(|e| format!("login: {e}"))? {
        Some(Packet::ConnAck(ConnAck { code, .. })) => {
            let (number, meaning) = connack_meaning(code);
            let line = format!("CONNACK {number} ({meaning})");
            if code != ConnectReturnCode::Success {
                return Err(format!("login: {line}"));
            }
            say(format!("login      {} {line}", credentials.username));
            Ok(())
        }
        Some(other) => Err(format!("login: expected CONNACK, got {other:?}")),
        None => Err(
            "login: the broker closed the connection without a CONNACK (check product key, \
             device name and device secret)"
                .into(),
        ),
    }
}

fn subscribe(
    mqtt: &mut MqttStream<'_>,
    topics: &[&str],
    say: &mut dyn FnMut(String),
) -> Result<(), String> {
    let mut packet = Subscribe::new_many(
        topics
            .iter()
            .map(|t| rumqttc::SubscribeFilter::new((*t).to_owned(), QoS::AtLeastOnce)),
    );
    packet.pkid = 1;
    mqtt.send(&Packet::Subscribe(packet))
        .map_err(|e| format!("subscribe: {e}"))?;
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match mqtt.receive().map_err(|e| format!("subscribe: {e}"))? {
            Some(Packet::SubAck(ack)) => {
                for (topic, code) in topics.iter().zip(&ack.return_codes) {
                    if matches!(code, rumqttc::SubscribeReasonCode::Failure) {
                        return Err(format!("subscribe: {topic} refused"));
                    }
                    say(format!("subscribe  {topic}: {code:?}"));
                }
                return Ok(());
            }
            Some(_) => {} // a push may come before the SUBACK
            None => return Err("subscribe: the broker closed the connection".into()),
        }
    }
    Err(format!("subscribe: no SUBACK within {STEP:?}"))
}

fn firmware_get(
    mqtt: &mut MqttStream<'_>,
    config: &DeviceConfig,
    topics: &Topics,
    say: &mut dyn FnMut(String),
) -> Result<(), String> {
    let mut payload = Vec::new();
    ota_core::uplink::encode_firmware_get(&mut payload, 1, &config.agent.module);
    let mut publish = Publish::new(topics.firmware_get.clone(), QoS::AtLeastOnce, payload);
    publish.pkid = 2;
    mqtt.send(&Packet::Publish(publish))
        .map_err(|e| format!("firmware/get: {e}"))?;
    let deadline = Instant::now() + STEP;
    while Instant::now() < deadline {
        match mqtt.receive().map_err(|e| format!("firmware/get: {e}"))? {
            Some(Packet::Publish(p)) if p.topic == topics.firmware_get_reply => {
                let text = String::from_utf8_lossy(&p.payload);
                say(format!("reply      {text}"));
                return Ok(());
            }
            Some(Packet::Publish(p)) if p.topic == topics.upgrade => {
                say(format!(
                    "push       {}",
                    String::from_utf8_lossy(&p.payload)
                ));
            }
            Some(_) => {}
            None => return Err("firmware/get: the broker closed the connection".into()),
        }
    }
    Err(format!("firmware/get: no reply within {STEP:?}"))
}

/// `GET url` with `Range: bytes=0-0` over the same trust and TLS library; prints the TLS
/// report, the status and the first byte.
fn fetch_first_byte(
    url: &str,
    config: &DeviceConfig,
    say: &mut dyn FnMut(String),
) -> Result<(), String> {
    let uri: ureq::http::Uri = url.parse().map_err(|e| format!("{url:?}: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?} is not an http(s) URL")),
    };
    let host = uri.host().ok_or_else(|| format!("{url:?} has no host"))?;
    let host = host.trim_matches(['[', ']']);
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let addrs = tls_session::resolve(host, port)?;
    let tcp = tls_session::tcp(&addrs, STEP)?;
    say(format!("url        {host}:{port} ({})", peer(&tcp)));
    let mut stream: Box<dyn Stream> = if https {
        let trust = config.https_trust.clone();
        let (stream, report) = tls_session::handshake(tcp, host, port, &trust, config.tls_backend)?;
        show_tls(say, &report, config.tls_backend);
        stream
    } else {
        Box::new(tcp)
    };
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nRange: bytes=0-0\r\nUser-Agent: ota-agent-check\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = received.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if received.len() > MAX_HEAD {
            return Err(format!("response head longer than {MAX_HEAD} bytes"));
        }
        match stream.read(&mut chunk) {
            Ok(0) => return Err("the server closed the connection before a response".into()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("no response within {STEP:?}: {e}")),
        }
    };
    let head = String::from_utf8_lossy(&received[..head_end]);
    let status_line = head.lines().next().unwrap_or_default().to_owned();
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("not an HTTP status line: {status_line:?}"))?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "{status_line} (a 403 is an expired or altered URL)"
        ));
    }
    let first = match received.get(head_end) {
        Some(b) => *b,
        None => {
            let mut byte = [0u8; 1];
            match stream.read(&mut byte) {
                Ok(1) => byte[0],
                Ok(_) => return Err(format!("{status_line} with an empty body")),
                Err(e) => return Err(format!("no body within {STEP:?}: {e}")),
            }
        }
    };
    say(format!(
        "http       {status_line}, first byte 0x{first:02x}"
    ));
    Ok(())
}

/// Which certificates a trust holds, in words.
fn trust_summary(trust: &Trust) -> &'static str {
    match trust {
        Trust::Builtin => "built-in roots (the platform's five and the Mozilla roots)",
        Trust::CaPem(_) => "the CA file only",
        Trust::BuiltinAnd(_) => "built-in roots and the extra CA file",
    }
}
