//! A scripted device speaking the protocol with rumqttc and ureq directly (not with ota-core),
//! so the simulator is checked against the documented wire format.

use ota_sim::{Credentials, DeviceId, DeviceInfo, Sim};
use rumqttc::{Client, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::Value;
use std::io::Read;
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

/// Guard timeout for anything that should happen promptly.
pub const WAIT: Duration = Duration::from_secs(5);

enum Ev {
    ConnAck,
    SubAck,
    Publish(String, Vec<u8>),
    Error(String),
}

/// One connected device.
pub struct Device {
    pub id: DeviceId,
    client: Client,
    events: Receiver<Ev>,
    next_id: u32,
}

impl Device {
    /// Connects with the device's own credentials and subscribes to its downlink topics.
    pub fn online(sim: &Sim, info: &DeviceInfo) -> Device {
        let mut d = Device::connect(
            sim.mqtt_host(),
            sim.mqtt_port(),
            &info.id,
            &info.credentials(),
        )
        .expect("login accepted");
        d.subscribe();
        d
    }

    /// Connects; `Err` when the broker refuses the login (it closes the connection).
    pub fn connect(
        host: &str,
        port: u16,
        id: &DeviceId,
        creds: &Credentials,
    ) -> Result<Device, String> {
        let mut options = MqttOptions::new(creds.client_id.clone(), host, port);
        options.set_credentials(creds.username.clone(), creds.password.clone());
        options.set_keep_alive(Duration::from_secs(30));
        // Block replies are bigger than rumqttc's 10 KiB default.
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut connection) = Client::new(options, 32);
        let mut network = NetworkOptions::new();
        network.set_tcp_nodelay(true);
        connection.eventloop.set_network_options(network);
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for event in connection.iter() {
                let ev = match event {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => Ev::ConnAck,
                    Ok(Event::Incoming(Packet::SubAck(_))) => Ev::SubAck,
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        Ev::Publish(p.topic, p.payload.to_vec())
                    }
                    Ok(_) => continue,
                    Err(e) => {
                        let _ = tx.send(Ev::Error(e.to_string()));
                        return;
                    }
                };
                if tx.send(ev).is_err() {
                    return;
                }
            }
        });
        let d = Device {
            id: id.clone(),
            client,
            events,
            next_id: 0,
        };
        match d.events.recv_timeout(WAIT) {
            Ok(Ev::ConnAck) => Ok(d),
            Ok(Ev::Error(e)) => Err(e),
            Ok(_) => Err("unexpected first event".into()),
            Err(_) => Err("no answer to CONNECT".into()),
        }
    }

    fn topic(&self, kind: &str) -> String {
        format!(
            "/ota/device/{kind}/{}/{}",
            self.id.product_key, self.id.device_name
        )
    }

    /// `/sys/{pk}/{dn}/{rest}`.
    pub fn sys_topic(&self, rest: &str) -> String {
        format!(
            "/sys/{}/{}/{rest}",
            self.id.product_key, self.id.device_name
        )
    }

    /// Subscribes to the push, firmware/get reply and block reply topics and waits for the
    /// SUBACKs.
    pub fn subscribe(&mut self) {
        self.client
            .subscribe(self.topic("upgrade"), QoS::AtLeastOnce)
            .unwrap();
        for rest in ["thing/ota/firmware/get_reply", "thing/file/download_reply"] {
            self.client
                .subscribe(self.sys_topic(rest), QoS::AtLeastOnce)
                .unwrap();
        }
        for _ in 0..3 {
            match self.events.recv_timeout(WAIT) {
                Ok(Ev::SubAck) => {}
                _ => panic!("no SUBACK"),
            }
        }
    }

    /// Subscribes to one topic and waits for the SUBACK.
    pub fn subscribe_to(&mut self, topic: &str) {
        self.client.subscribe(topic, QoS::AtLeastOnce).unwrap();
        match self.events.recv_timeout(WAIT) {
            Ok(Ev::SubAck) => {}
            _ => panic!("no SUBACK"),
        }
    }

    fn id(&mut self) -> String {
        self.next_id += 1;
        self.next_id.to_string()
    }

    /// Publishes raw bytes on a topic.
    pub fn publish_raw(&self, topic: &str, payload: &[u8]) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_vec())
            .unwrap();
    }

    /// Reports the running version (default module).
    pub fn inform(&mut self, version: &str) {
        let p = format!(
            r#"{{"id":"{}","params":{{"version":"{version}"}}}}"#,
            self.id()
        );
        self.publish_raw(&self.topic("inform"), p.as_bytes());
    }

    /// Reports the running version of a module.
    pub fn inform_module(&mut self, version: &str, module: &str) {
        let p = format!(
            r#"{{"id":"{}","params":{{"version":"{version}","module":"{module}"}}}}"#,
            self.id()
        );
        self.publish_raw(&self.topic("inform"), p.as_bytes());
    }

    /// Reports a progress step for a module.
    pub fn progress_module(&mut self, step: i64, desc: &str, module: &str) {
        let p = format!(
            r#"{{"id":"{}","params":{{"step":"{step}","desc":"{desc}","module":"{module}"}}}}"#,
            self.id()
        );
        self.publish_raw(&self.topic("progress"), p.as_bytes());
    }

    /// Reports a progress step (as a string, like the SDKs).
    pub fn progress(&mut self, step: i64, desc: &str) {
        let p = format!(
            r#"{{"id":"{}","params":{{"step":"{step}","desc":"{desc}"}}}}"#,
            self.id()
        );
        self.publish_raw(&self.topic("progress"), p.as_bytes());
    }

    /// Sends an Alink firmware/get request with the given raw JSON id.
    pub fn firmware_get(&self, id_json: &str, module: Option<&str>) {
        let params = module
            .map(|m| format!(r#"{{"module":"{m}"}}"#))
            .unwrap_or("{}".into());
        let p = format!(
            r#"{{"id":{id_json},"version":"1.0","params":{params},"method":"thing.ota.firmware.get"}}"#
        );
        let topic = format!(
            "/sys/{}/{}/thing/ota/firmware/get",
            self.id.product_key, self.id.device_name
        );
        self.publish_raw(&topic, p.as_bytes());
    }

    /// Sends the legacy request for a task.
    pub fn legacy_request(&mut self, version: &str) {
        let p = format!(
            r#"{{"id":"{}","params":{{"version":"{version}"}}}}"#,
            self.id()
        );
        self.publish_raw(&self.topic("request"), p.as_bytes());
    }

    /// The next message the device receives, as bytes.
    pub fn recv_raw(&self, timeout: Duration) -> Option<(String, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left).ok()? {
                Ev::Publish(topic, payload) => return Some((topic, payload)),
                Ev::Error(e) => panic!("connection lost: {e}"),
                _ => {}
            }
        }
    }

    /// The next message the device receives, parsed as JSON.
    pub fn recv(&self, timeout: Duration) -> Option<(String, Value)> {
        let (topic, payload) = self.recv_raw(timeout)?;
        let json = serde_json::from_slice(&payload).expect("cloud sends JSON");
        Some((topic, json))
    }

    /// The next push; panics if something else or nothing comes.
    pub fn expect_push(&self) -> Value {
        let (topic, v) = self.recv(WAIT).expect("a push");
        assert_eq!(topic, self.topic("upgrade"));
        v
    }

    /// The next firmware/get reply.
    pub fn expect_get_reply(&self) -> Value {
        let (topic, v) = self.recv(WAIT).expect("a get_reply");
        assert!(topic.ends_with("/thing/ota/firmware/get_reply"), "{topic}");
        v
    }
}

/// What an HTTP GET produced.
pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Set when the body ended with an error (cut connection, timeout).
    pub error: Option<String>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `url` with an optional `Range`, reading the body until it ends or fails.
pub fn http_get(url: &str, range: Option<&str>, body_timeout: Duration) -> Got {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_recv_body(Some(body_timeout))
        .max_idle_connections(0)
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(r) = range {
        request = request.header("Range", r);
    }
    let mut response = request.call().expect("an HTTP response");
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    let status = response.status().as_u16();
    let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
    let mut body = Vec::new();
    let mut buf = [0u8; 8192];
    let error = loop {
        match reader.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
            Err(e) => break Some(e.to_string()),
        }
    };
    Got {
        status,
        headers,
        body,
        error,
    }
}

/// Deterministic test firmware of `len` bytes.
pub fn firmware(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}
