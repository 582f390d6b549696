//! The embedded gateway driver end to end against the simulator (docs/protocol.md §14): one
//! gateway logs two sub-devices in over its MQTT session, downloads each one's image over
//! HTTP into its staging area (one download at a time) and hands it to a RAM flasher; the
//! version is then reported on each sub-device's behalf.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ota_core::gateway::{GatewayConfig, Subdevice};
use ota_core::{Config, DeviceIdentity, Notification, Outcome};
use ota_embedded::gateway::{GatewayParts, SubdeviceFlasher, MAX_VERSION_LEN};
use ota_embedded::record::MAX_RECORD_LEN;
use ota_embedded::{
    GatewayDriver, Login, MqttClient, SecureMode, Security, Settings, TcpConnector,
};
use ota_sim::{DeviceInfo, JobSpec, PackageSpec, SimConfig, TaskState};

use crate::support::{image, LoopbackDns, TokioClock, TokioStack, Wall, CHECKPOINT, SECTOR, WAIT};

/// Each sub-device's staging area, record, running version and what it was flashed with.
#[derive(Default, Debug)]
struct Node {
    staging: Vec<u8>,
    record: Option<Vec<u8>>,
    version: String,
    flashed: Option<Vec<u8>>,
    online: bool,
    /// Downloading now (between its task and its flash).
    downloading: bool,
}

#[derive(Clone, Default)]
struct RamFlasher {
    nodes: Arc<Mutex<Vec<Node>>>,
    /// Most downloads seen at once.
    most_at_once: Arc<Mutex<usize>>,
    /// Whether a sub-device with this index fails to flash.
    broken: Option<usize>,
}

impl SubdeviceFlasher for RamFlasher {
    type Error = &'static str;

    async fn running_version(
        &mut self,
        index: usize,
    ) -> Result<heapless::String<MAX_VERSION_LEN>, Self::Error> {
        let nodes = self.nodes.lock().unwrap();
        heapless::String::try_from(nodes[index].version.as_str()).map_err(|_| "long version")
    }

    async fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<(), Self::Error> {
        let mut nodes = self.nodes.lock().unwrap();
        let staging = &mut nodes[index].staging;
        let end = offset as usize + data.len();
        if staging.len() < end {
            staging.resize(end, 0xFF);
        }
        staging[offset as usize..end].copy_from_slice(data);
        Ok(())
    }

    async fn read(
        &mut self,
        index: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Self::Error> {
        let nodes = self.nodes.lock().unwrap();
        let staging = &nodes[index].staging;
        let start = (offset as usize).min(staging.len());
        let len = buf.len().min(staging.len() - start);
        buf[..len].copy_from_slice(&staging[start..start + len]);
        Ok(len)
    }

    async fn load_record(
        &mut self,
        index: usize,
        buf: &mut [u8; MAX_RECORD_LEN],
    ) -> Result<Option<usize>, Self::Error> {
        let nodes = self.nodes.lock().unwrap();
        Ok(nodes[index].record.as_ref().map(|r| {
            buf[..r.len()].copy_from_slice(r);
            r.len()
        }))
    }

    async fn save_record(&mut self, index: usize, record: &[u8]) -> Result<(), Self::Error> {
        self.nodes.lock().unwrap()[index].record = Some(record.to_vec());
        Ok(())
    }

    async fn clear_record(&mut self, index: usize) -> Result<(), Self::Error> {
        self.nodes.lock().unwrap()[index].record = None;
        Ok(())
    }

    async fn flash(&mut self, index: usize, version: &str) -> Result<(), Self::Error> {
        if self.broken == Some(index) {
            return Err("no answer on UART");
        }
        let mut nodes = self.nodes.lock().unwrap();
        let node = &mut nodes[index];
        node.flashed = Some(node.staging.clone());
        node.version = version.to_owned();
        Ok(())
    }

    fn notify(&mut self, index: usize, note: &Notification<'_>) {
        let mut nodes = self.nodes.lock().unwrap();
        match note {
            Notification::TaskReceived(_) => nodes[index].downloading = true,
            Notification::Outcome(Outcome::Installed { .. } | Outcome::Failed { .. }) => {
                nodes[index].downloading = false
            }
            _ => {}
        }
        let at_once = nodes.iter().filter(|n| n.downloading).count();
        let mut most = self.most_at_once.lock().unwrap();
        *most = (*most).max(at_once);
    }

    fn session(&mut self, index: usize, online: bool) {
        self.nodes.lock().unwrap()[index].online = online;
    }
}

fn agent_config(sub: &DeviceInfo) -> Config {
    let identity = DeviceIdentity::new(&sub.id.product_key, &sub.id.device_name).unwrap();
    let mut config = Config::new(identity);
    config.rules.allow_http = true;
    config.write_block = SECTOR;
    config.checkpoint_interval = CHECKPOINT;
    config.retry.base_delay = Duration::from_millis(20);
    config
}

/// Runs the gateway on its own thread until `stop` is sent.
fn spawn(
    sim: &ota_sim::Sim,
    gw: DeviceInfo,
    subs: Vec<DeviceInfo>,
    flasher: RamFlasher,
) -> (
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (host, port) = (sim.mqtt_host().to_owned(), sim.mqtt_port());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let (stack, dns) = (TokioStack, LoopbackDns);
            let clock = TokioClock::new(Wall::System);
            let mqtt_connector = TcpConnector::new(&stack, &dns);
            let mqtt: MqttClient<'_, _, 4096, 1024> =
                MqttClient::new(&mqtt_connector, &host, port, Security::Plain, 60);
            let id = &gw.id;
            let login = Login::new(
                &id.product_key,
                &id.device_name,
                &gw.device_secret,
                ota_embedded::login::SDK_TIMESTAMP,
                SecureMode::Plain,
            )
            .unwrap();
            let session = GatewayConfig::new(
                DeviceIdentity::new(&id.product_key, &id.device_name).unwrap(),
                subs.iter()
                    .map(|s| Subdevice {
                        identity: DeviceIdentity::new(&s.id.product_key, &s.id.device_name)
                            .unwrap(),
                        secret: s.device_secret.clone(),
                    })
                    .collect(),
            );
            let parts = GatewayParts {
                mqtt,
                http: TcpConnector::new(&stack, &dns),
                clock: &clock,
                flasher,
                login,
                settings: Settings {
                    reconnect_min: Duration::from_millis(50),
                    ..Settings::default()
                },
            };
            let configs = subs.iter().map(agent_config).collect();
            let mut driver = GatewayDriver::new(session, configs, parts).await.unwrap();
            tokio::select! {
                result = driver.run() => panic!("the gateway stopped: {result:?}"),
                _ = stop_rx => {}
            }
        })
    });
    (handle, stop_tx)
}

#[test]
fn one_gateway_updates_two_sub_devices_one_after_the_other() {
    let sim = ota_sim::Sim::start(SimConfig::default()).unwrap();
    let gw = sim.add_gateway().unwrap();
    let subs = vec![
        sim.add_subdevice(&gw).unwrap(),
        sim.add_subdevice(&gw).unwrap(),
    ];
    let firmware = image(6 * SECTOR + 321);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let flasher = RamFlasher::default();
    {
        let mut nodes = flasher.nodes.lock().unwrap();
        for _ in &subs {
            nodes.push(Node {
                version: "1.0.0".into(),
                ..Node::default()
            });
        }
    }
    let (thread, stop) = spawn(&sim, gw.clone(), subs.clone(), flasher.clone());
    for sub in &subs {
        sim.wait_task_state(job, sub, TaskState::Succeeded, WAIT)
            .unwrap();
    }
    let _ = stop.send(());
    thread.join().unwrap();
    let nodes = flasher.nodes.lock().unwrap();
    for (i, node) in nodes.iter().enumerate() {
        assert_eq!(
            node.flashed.as_deref(),
            Some(&firmware[..]),
            "sub-device {i}"
        );
        assert_eq!(node.version, "2.0.0");
        assert_eq!(node.record, None, "sub-device {i}: record cleared");
        assert!(node.online, "sub-device {i} logged in");
    }
    assert_eq!(
        *flasher.most_at_once.lock().unwrap(),
        1,
        "one download at a time"
    );
    assert_eq!(sim.topology(&gw).len(), 2, "both added to the topology");
}

#[test]
fn a_failing_flash_reports_minus_4_for_that_sub_device_alone() {
    let sim = ota_sim::Sim::start(SimConfig::default()).unwrap();
    let gw = sim.add_gateway().unwrap();
    let subs = vec![
        sim.add_subdevice(&gw).unwrap(),
        sim.add_subdevice(&gw).unwrap(),
    ];
    let package = sim
        .add_package(PackageSpec::new("2.0.0", image(3 * SECTOR + 9)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let flasher = RamFlasher {
        broken: Some(0),
        ..RamFlasher::default()
    };
    flasher.nodes.lock().unwrap().extend((0..2).map(|_| Node {
        version: "1.0.0".into(),
        ..Node::default()
    }));
    let (thread, stop) = spawn(&sim, gw, subs.clone(), flasher.clone());
    sim.wait_task_state(job, &subs[1], TaskState::Succeeded, WAIT)
        .unwrap();
    sim.wait_task_state(job, &subs[0], TaskState::Failed, WAIT)
        .unwrap();
    let _ = stop.send(());
    thread.join().unwrap();
    assert_eq!(sim.progress_steps(&subs[0]).last(), Some(&-4));
    assert!(sim.progress_steps(&subs[1]).iter().all(|s| *s > 0));
}

#[test]
fn a_gateway_restart_resumes_the_download_from_the_sub_devices_record() {
    let sim = ota_sim::Sim::start(SimConfig::default()).unwrap();
    let gw = sim.add_gateway().unwrap();
    let subs = vec![sim.add_subdevice(&gw).unwrap()];
    let firmware = image(24 * SECTOR + 55);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    // Slow enough to stop the gateway between two checkpoints.
    sim.set_fault(
        &subs[0],
        ota_sim::Fault::RateLimit(100_000),
        ota_sim::Times::Always,
    );
    let flasher = RamFlasher::default();
    flasher.nodes.lock().unwrap().push(Node {
        version: "1.0.0".into(),
        ..Node::default()
    });
    let (thread, stop) = spawn(&sim, gw.clone(), subs.clone(), flasher.clone());
    let deadline = std::time::Instant::now() + WAIT;
    // Past the second checkpoint: the record vouches for at least one interval.
    let past = |n: &Node| n.record.is_some() && n.staging.len() as u64 > 2 * CHECKPOINT;
    while !past(&flasher.nodes.lock().unwrap()[0]) {
        assert!(std::time::Instant::now() < deadline, "no checkpoint saved");
        std::thread::sleep(Duration::from_millis(5));
    }
    // Power off: the gateway stops mid-download, the sub-device's record and staging stay.
    let _ = stop.send(());
    thread.join().unwrap();
    let before = sim.downloads(&subs[0]).len();
    let (thread, stop) = spawn(&sim, gw, subs.clone(), flasher.clone());
    sim.wait_task_state(job, &subs[0], TaskState::Succeeded, WAIT)
        .unwrap();
    let _ = stop.send(());
    thread.join().unwrap();
    let downloads = sim.downloads(&subs[0]);
    let resumed = downloads[before]
        .range
        .as_deref()
        .expect("a ranged request");
    let offset: u64 = resumed
        .trim_start_matches("bytes=")
        .trim_end_matches('-')
        .parse()
        .unwrap();
    assert!(offset >= CHECKPOINT, "resumed from {offset}: {downloads:?}");
    let nodes = flasher.nodes.lock().unwrap();
    assert_eq!(nodes[0].flashed.as_deref(), Some(&firmware[..]));
}
