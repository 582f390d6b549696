//! Helpers for the end-to-end tests: a simulator on free loopback ports (optionally with its
//! TLS listeners), and devices running ota-std against it with short timeouts.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_core::RetryPolicy;
use ota_sim::{DeviceInfo, Sim, SimConfig};
use ota_std::{Device, DeviceConfig, DeviceEvent, DeviceHandle};
use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

/// Guard timeout: anything the tests wait for happens well within it.
pub const WAIT: Duration = Duration::from_secs(30);

/// A simulator on free ports.
pub fn sim() -> Sim {
    Sim::start(SimConfig::default()).expect("simulator starts")
}

/// A deterministic image of `len` bytes.
pub fn image(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// A device configuration for tests: files in `dir`, running `version`, plain MQTT and
/// http allowed, 16 KiB writes, a checkpoint every 64 KiB, and short timeouts and back-offs.
pub fn device_config(sim: &Sim, info: &DeviceInfo, dir: &Path, version: &str) -> DeviceConfig {
    let mut c = DeviceConfig::new(
        &info.id.product_key,
        &info.id.device_name,
        &info.device_secret,
        sim.mqtt_host(),
        sim.mqtt_port(),
        dir,
    )
    .expect("valid identity");
    std::fs::write(dir.join("version"), format!("{version}\n")).expect("version file");
    let fast = |attempts| RetryPolicy {
        max_attempts: attempts,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(300),
    };
    let a = &mut c.agent;
    a.rules.allow_http = true;
    a.write_block = 16 * 1024;
    a.checkpoint_interval = 64 * 1024;
    a.stall_timeout = Duration::from_secs(2);
    a.reply_timeout = Duration::from_secs(2);
    a.retry = fast(6);
    a.url_refresh = fast(3);
    a.health_timeout = Duration::from_secs(10);
    a.progress_interval = Duration::from_millis(200);
    a.mqtt.reply_timeout = Duration::from_millis(500);
    c.reconnect_min = Duration::from_millis(50);
    c.reconnect_max = Duration::from_millis(500);
    c.read_buffer = 64 * 1024;
    c
}

/// A device running on its own thread, with its files in a temporary directory.
pub struct TestDevice {
    /// Its identity and secret.
    pub info: DeviceInfo,
    /// Where its files are.
    pub dir: tempfile::TempDir,
    /// The running device.
    pub handle: DeviceHandle,
}

impl TestDevice {
    /// Starts a device running 1.0.0; `tweak` adjusts the configuration first.
    pub fn start(sim: &Sim, info: &DeviceInfo, tweak: impl FnOnce(&mut DeviceConfig)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = device_config(sim, info, dir.path(), "1.0.0");
        tweak(&mut config);
        let handle = Device::spawn(config).expect("device starts");
        TestDevice {
            info: info.clone(),
            dir,
            handle,
        }
    }

    /// Path of a file in the device's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The version file's content.
    pub fn version(&self) -> String {
        std::fs::read_to_string(self.path("version"))
            .unwrap_or_default()
            .trim()
            .to_owned()
    }

    /// Waits for an event `pred` accepts; panics with `what` after [`WAIT`].
    pub fn expect(&self, what: &str, pred: impl FnMut(&DeviceEvent) -> bool) -> DeviceEvent {
        match self.handle.wait_for(WAIT, pred) {
            Some(event) => event,
            None => panic!("device {}: no {what} within {WAIT:?}", self.info.id),
        }
    }

    /// Waits for `Succeeded { version }`.
    pub fn expect_succeeded(&self, version: &str) {
        self.expect(
            &format!("success on {version}"),
            |e| matches!(e, DeviceEvent::Succeeded { version: v } if v == version),
        );
    }

    /// Starts a device on an existing directory (e.g. after
    /// [`TestDevice::stop_keeping_files`] of another run): whatever record and version the
    /// directory holds is what it boots with; `tweak` adjusts the configuration first.
    pub fn restart(
        sim: &Sim,
        info: &DeviceInfo,
        dir: tempfile::TempDir,
        tweak: impl FnOnce(&mut DeviceConfig),
    ) -> Self {
        let version = std::fs::read_to_string(dir.path().join("version")).expect("version");
        let mut config = device_config(sim, info, dir.path(), version.trim());
        tweak(&mut config);
        let handle = Device::spawn(config).expect("device starts");
        TestDevice {
            info: info.clone(),
            dir,
            handle,
        }
    }

    /// Stops the device and keeps its directory.
    pub fn stop_keeping_files(self) -> tempfile::TempDir {
        self.handle.stop().expect("device ran without error");
        self.dir
    }

    /// Stops the device.
    pub fn stop(self) {
        self.handle.stop().expect("device ran without error");
    }
}

/// A simulator on free ports with its TLS listeners (generated CA), beside the plain ones.
pub fn tls_sim() -> Sim {
    let config = SimConfig {
        tls: Some(ota_sim::SimTls::Generated),
        ..SimConfig::default()
    };
    Sim::start(config).expect("simulator with TLS starts")
}

fn client_of(sim: &Sim) -> (Client, rumqttc::Connection) {
    let other = sim.add_device().expect("observer device");
    let creds = other.credentials();
    // Without `_ss=1`: the observer gets only what it subscribes to, not its own OTA topics.
    let client_id = creds.client_id.replace("_ss=1,", "");
    let mut options = MqttOptions::new(client_id, sim.mqtt_host(), sim.mqtt_port());
    options.set_credentials(creds.username, creds.password);
    // Large enough for the oversized pushes of the tests (the simulator's broker takes 1 MiB).
    options.set_max_packet_size(64 * 1024, 1 << 20);
    Client::new(options, 8)
}

/// Publishes `payload` on `topic` as another registered device of the simulator (its
/// broker does not restrict topics), and waits for the broker's acknowledgement: a push that
/// the simulator's job engine would not send (a hand-made task).
pub fn publish_as_cloud(sim: &Sim, topic: &str, payload: String) {
    let (client, mut connection) = client_of(sim);
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.into_bytes())
        .expect("publish");
    for event in connection.iter() {
        match event {
            Ok(Event::Incoming(Packet::PubAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("publisher: {e}"),
        }
    }
}

/// Subscribes (as another device) to `filters` and returns the topics of what is published
/// on them from now on, as they arrive.
pub fn watch_topics(sim: &Sim, filters: &[String]) -> std::sync::mpsc::Receiver<String> {
    let (client, mut connection) = client_of(sim);
    for filter in filters {
        client
            .subscribe(filter, QoS::AtMostOnce)
            .expect("subscribe");
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    let wanted = filters.len();
    std::thread::spawn(move || {
        let _client = client; // keeps the connection open
        let mut acks = 0;
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    acks += 1;
                    if acks == wanted {
                        let _ = subscribed_tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if tx.send(p.topic).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    subscribed
        .recv_timeout(WAIT)
        .expect("the watcher subscribed");
    rx
}

/// Lower-case hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
