//! Gateway mode (docs/protocol.md §14): one MQTT connection, the gateway's, through which the
//! sub-devices behind it (serial, BLE, Zigbee nodes without an IP stack) are logged in and
//! updated, several at once.
//!
//! One thread runs the core's [`ota_core::gateway::Gateway`] session machine and one
//! [`ota_core::Agent`] per sub-device, each with the sub-device's identity, its own record and
//! staging file in its directory, and its own HTTP reader threads. Messages are routed by
//! topic: the session topics to the gateway, a sub-device's OTA topics to its agent. Every
//! agent offers its tasks (`Confirmation::Ask`); an offer is accepted while fewer than
//! `max_parallel` sub-devices download, and waits otherwise. A download resumed from a record
//! after a restart was accepted before and is not offered again (its agent resumes as soon as
//! it is told it is online): such a sub-device's `Connected` waits for a free slot instead.
//! Activation runs the sub-device's flasher with the verified image.

mod file;
mod subdevice;

pub use file::{GatewayFile, SubdeviceFile};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

use ota_core::gateway::{self as session, GatewayAction, Subdevice};
use ota_core::{Confirmation, DeviceIdentity, Instant, Phase};

use crate::input::Input;
use crate::mqtt::{Mqtt, MqttSettings};
use crate::{DeviceConfig, DeviceEvent, Error, Stopper};
use subdevice::{Effects, Sub};

/// Where a sub-device's running version comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubdeviceVersion {
    /// This version, until a flash installs another (kept in the sub-device's `version` file).
    Fixed(String),
    /// The first line this command prints (`sh -c`, `OTA_SUBDEVICE` in its environment),
    /// e.g. a query over the sub-device's serial link.
    Command(String),
}

/// One sub-device behind the gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubdeviceConfig {
    /// Its ProductKey.
    pub product_key: String,
    /// Its DeviceName.
    pub device_name: String,
    /// Its DeviceSecret (the key of its login sign).
    pub device_secret: String,
    /// Its running version.
    pub version: SubdeviceVersion,
    /// Its staging directory: `staging.img`, `ota.record`, `version`.
    pub dir: PathBuf,
    /// Installs a verified image: run with `sh -c` and `OTA_IMAGE`, `OTA_VERSION`,
    /// `OTA_SUBDEVICE` (its DeviceName) and `OTA_PRODUCT_KEY` in the environment; exit 0 means
    /// flashed. Any other exit reports `-4` for this sub-device only.
    pub flasher: String,
    /// After a successful flash, prints the version the sub-device runs (e.g. once it
    /// rebooted); without it the flashed version is assumed. A version other than the target
    /// is reported as a rollback.
    pub version_after_flash: Option<String>,
}

/// A gateway and its sub-devices.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The gateway's own device: identity, broker, TLS, reconnect and timeouts. Its `agent`
    /// settings are the template of every sub-device's agent (identity, confirmation, write
    /// buffers and seed are set per sub-device); its slot settings are not used.
    pub gateway: DeviceConfig,
    /// The sub-devices, in the order events name them.
    pub subdevices: Vec<SubdeviceConfig>,
    /// Most sub-devices downloading at once (each holds one staging block and its HTTP
    /// buffers while it does).
    pub max_parallel: usize,
}

/// What happened to one sub-device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubdeviceEvent {
    /// Logged in: its agent runs.
    Online,
    /// Its session ended; it logs in again.
    Offline,
    /// The cloud refused it for good (bad secret, deleted, disabled...): skipped.
    GaveUp {
        /// Why, with the cloud's code.
        reason: String,
    },
    /// Its task waits for a free download slot (`max_parallel`).
    Queued {
        /// Target version.
        version: String,
    },
    /// The flasher runs.
    Flashing {
        /// Version being flashed.
        version: String,
    },
    /// The flasher failed (reported as `-4`).
    FlashFailed {
        /// Why.
        reason: String,
    },
    /// What its agent reports, as for a directly connected device.
    Agent(DeviceEvent),
}

/// What the gateway reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayEvent {
    /// The gateway's MQTT session is up.
    Connected,
    /// The gateway's MQTT session went down; it reconnects with back-off.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// Something happened to a sub-device.
    Subdevice {
        /// Index into [`GatewayConfig::subdevices`].
        index: usize,
        /// Its DeviceName.
        name: String,
        /// What.
        event: SubdeviceEvent,
    },
}

/// Everything the gateway thread waits for.
pub(crate) enum GwInput {
    /// From the MQTT thread (or the stopper).
    Mqtt(Input),
    /// From sub-device `index`'s HTTP readers of boot `epoch` (those of an earlier boot of
    /// the sub-device are dropped: its new agent numbers its fetches anew).
    Sub {
        index: usize,
        epoch: u32,
        input: Input,
    },
    /// Sub-device `index`'s flasher finished.
    Flashed {
        index: usize,
        result: Result<(), String>,
    },
    // Inputs the loop gives a sub-device.
    Online,
    Offline,
    Accept,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Tick,
    /// Drain what the agent queued at boot.
    Start,
}

/// Live progress is shown at most this often per sub-device.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// HTTP read buffer per fetch: smaller than a direct device's, as several run at once.
const SUBDEVICE_READ_BUFFER: usize = 32 * 1024;

/// Largest staging block per sub-device download (its only one), for the same reason.
const SUBDEVICE_WRITE_BLOCK: usize = 64 * 1024;

/// How long the end of a run waits for the broker's acknowledgements and the close.
const CLOSE_SESSION: Duration = Duration::from_secs(3);

impl GatewayConfig {
    /// Checks what the core's session machine does not: a limit of at least one, and no
    /// directory shared by two sub-devices.
    fn validate(&self) -> Result<(), Error> {
        if self.max_parallel == 0 {
            return Err(Error::Config("max_parallel must be at least 1".into()));
        }
        for (i, sub) in self.subdevices.iter().enumerate() {
            if sub.flasher.trim().is_empty() {
                return Err(Error::Config(format!(
                    "sub-device {}: the flasher command is empty",
                    sub.device_name
                )));
            }
            if self.subdevices[..i].iter().any(|o| o.dir == sub.dir) {
                return Err(Error::Config(format!(
                    "sub-devices share the directory {}",
                    sub.dir.display()
                )));
            }
        }
        Ok(())
    }

    /// The core's agent configuration of sub-device `sub`.
    fn agent_config(&self, sub: &SubdeviceConfig) -> Result<ota_core::Config, Error> {
        let mut agent = self.gateway.agent.clone();
        agent.identity = DeviceIdentity::new(&sub.product_key, &sub.device_name)
            .map_err(|e| Error::Config(format!("sub-device {}: {e}", sub.device_name)))?;
        agent.extra_modules = Vec::new();
        agent.confirmation = Confirmation::Ask {
            report_decline: false,
        };
        // One staging block of at most 64 KiB (the agent's default block is larger, for
        // speed), written on the gateway thread: RAM per download stays small.
        agent.write_buffers = 1;
        agent.write_block = agent.write_block.min(SUBDEVICE_WRITE_BLOCK);
        agent.seed = sub.device_name.bytes().fold(agent.seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        Ok(agent)
    }
}

/// Runs the gateway until stopped (or until the first connection fails and the gateway's
/// `fail_fast` says to give up).
pub fn run_gateway(
    config: &GatewayConfig,
    observer: &dyn Fn(GatewayEvent),
    stopper: &Stopper,
) -> Result<(), Error> {
    config.validate()?;
    let identity = config.gateway.agent.identity.clone();
    let subdevices = config
        .subdevices
        .iter()
        .map(|s| {
            Ok(Subdevice {
                identity: DeviceIdentity::new(&s.product_key, &s.device_name)
                    .map_err(|e| Error::Config(format!("sub-device {}: {e}", s.device_name)))?,
                secret: s.device_secret.clone(),
            })
        })
        .collect::<Result<Vec<_>, Error>>()?;
    let mut session_config = session::GatewayConfig::new(identity, subdevices);
    session_config.seed = config.gateway.agent.seed;
    let clock = std::time::Instant::now();
    let now =
        || Instant::from_millis(u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX));
    let session = session::Gateway::new(session_config, now())
        .map_err(|e| Error::Config(format!("gateway: {e}")))?;

    let (tx, rx) = mpsc::channel();
    let mqtt_inputs = forward(tx.clone(), GwInput::Mqtt)?;
    stopper.install(mqtt_inputs.clone());
    let mut subs = Vec::with_capacity(config.subdevices.len());
    for (index, sub) in config.subdevices.iter().enumerate() {
        let agent_config = config.agent_config(sub)?;
        let tls = config
            .gateway
            .https_trust
            .ureq_config(config.gateway.tls_backend)?;
        subs.push(Sub::new(
            index,
            sub.clone(),
            agent_config,
            tls,
            tx.clone(),
            now(),
        )?);
    }
    for sub in &subs {
        observer(GatewayEvent::Subdevice {
            index: sub.index,
            name: sub.config.device_name.clone(),
            event: SubdeviceEvent::Agent(DeviceEvent::Started {
                version: sub.running_version().to_owned(),
            }),
        });
    }
    let tls = match &config.gateway.mqtt_tls {
        Some(trust) => Some(crate::tls::mqtt_tls(trust, config.gateway.tls_backend)?),
        None => None,
    };
    let g = &config.gateway;
    let mqtt = Mqtt::start(
        MqttSettings {
            host: g.broker_host.clone(),
            port: g.broker_port,
            login: g.login(),
            tls,
            keep_alive: g.keep_alive,
            reconnect_min: g.reconnect_min,
            reconnect_max: g.reconnect_max,
            fail_fast: g.fail_fast,
            max_incoming: crate::device::max_incoming_packet(g.agent.mqtt.block_size),
        },
        mqtt_inputs,
    )?;
    let mut run = Run {
        session,
        subs,
        mqtt,
        observer,
        max_parallel: config.max_parallel,
        queue: VecDeque::new(),
        deferred: VecDeque::new(),
        last_progress: vec![clock; config.subdevices.len()],
    };
    let result = run.run(&rx, &now);
    run.mqtt.close(CLOSE_SESSION);
    result
}

/// A channel whose inputs arrive on `tx` wrapped by `wrap`, through a small thread.
fn forward(
    tx: Sender<GwInput>,
    wrap: impl Fn(Input) -> GwInput + Send + 'static,
) -> Result<Sender<Input>, Error> {
    let (inputs, rx) = mpsc::channel::<Input>();
    std::thread::Builder::new()
        .name("ota-gw-forward".into())
        .spawn(move || {
            for input in rx {
                if tx.send(wrap(input)).is_err() {
                    return;
                }
            }
        })
        .map_err(|e| Error::Io(format!("cannot start a thread: {e}")))?;
    Ok(inputs)
}

struct Run<'a> {
    session: session::Gateway,
    subs: Vec<Sub>,
    mqtt: Mqtt,
    observer: &'a dyn Fn(GatewayEvent),
    max_parallel: usize,
    /// Sub-devices whose offered task waits for a slot, oldest first.
    queue: VecDeque<usize>,
    /// Logged-in sub-devices that would resume a download from their record, waiting for a
    /// slot before their agent is told they are online.
    deferred: VecDeque<usize>,
    last_progress: Vec<std::time::Instant>,
}

impl Run<'_> {
    fn run(&mut self, rx: &Receiver<GwInput>, now: &dyn Fn() -> Instant) -> Result<(), Error> {
        for index in 0..self.subs.len() {
            self.feed_sub(now(), index, GwInput::Start)?;
        }
        self.drain_session(now())?;
        loop {
            let deadline = self
                .subs
                .iter()
                .filter_map(Sub::poll_timeout)
                .chain(self.session.poll_timeout())
                .min();
            let input = match deadline {
                Some(at) => {
                    let wait = at.as_millis().saturating_sub(now().as_millis());
                    // Wake for live progress while anything downloads.
                    let wait = wait.min(PROGRESS_EVERY.as_millis() as u64);
                    rx.recv_timeout(Duration::from_millis(wait))
                }
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let t = now();
            match input {
                Ok(GwInput::Mqtt(Input::Stop)) | Err(RecvTimeoutError::Disconnected) => {
                    return Ok(())
                }
                Ok(GwInput::Mqtt(input)) => self.on_mqtt(t, input)?,
                Ok(GwInput::Sub {
                    index,
                    epoch,
                    input,
                }) => self.feed_sub(
                    t,
                    index,
                    GwInput::Sub {
                        index,
                        epoch,
                        input,
                    },
                )?,
                Ok(GwInput::Flashed { index, result }) => {
                    self.feed_sub(t, index, GwInput::Flashed { index, result })?
                }
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {}
            }
            // Due timers of the session and of every agent.
            self.session.handle_timeout(t);
            self.drain_session(t)?;
            for index in 0..self.subs.len() {
                if self.subs[index].poll_timeout().is_some_and(|at| at <= t) {
                    self.feed_sub(t, index, GwInput::Tick)?;
                }
            }
            self.schedule(t)?;
            self.show_progress();
        }
    }

    fn on_mqtt(&mut self, now: Instant, input: Input) -> Result<(), Error> {
        match input {
            Input::Connected => {
                (self.observer)(GatewayEvent::Connected);
                self.session.handle(now, session::GatewayEvent::Connected);
            }
            Input::Disconnected(reason) => {
                (self.observer)(GatewayEvent::Disconnected { reason });
                self.session
                    .handle(now, session::GatewayEvent::Disconnected);
            }
            Input::Message { topic, payload } => {
                if self.session.handles(&topic) {
                    let event = session::GatewayEvent::Message {
                        topic: &topic,
                        payload: &payload,
                    };
                    self.session.handle(now, event);
                } else if let Some(index) = self.session.subdevice_of_topic(&topic) {
                    if self.subs[index].online {
                        self.feed_sub(now, index, GwInput::Message { topic, payload })?;
                    }
                }
            }
            Input::MqttFatal(reason) => return Err(Error::Mqtt(reason)),
            _ => {}
        }
        self.drain_session(now)
    }

    /// Performs the session's actions.
    fn drain_session(&mut self, now: Instant) -> Result<(), Error> {
        while let Some(action) = self.session.poll_action() {
            match action {
                GatewayAction::Subscribe { topic } => self.mqtt.subscribe(&topic),
                GatewayAction::Publish { topic, payload } => {
                    self.mqtt
                        .publish(&topic, &payload, ota_core::Qos::AtMostOnce)
                }
                GatewayAction::SubdeviceOnline { index } => {
                    self.emit(index, SubdeviceEvent::Online);
                    if self.subs[index].resumes() && self.downloading() >= self.max_parallel {
                        // Its download would resume at once: it waits for a slot too.
                        self.deferred.push_back(index);
                    } else {
                        self.feed_sub(now, index, GwInput::Online)?;
                    }
                }
                GatewayAction::SubdeviceOffline { index } => {
                    self.emit(index, SubdeviceEvent::Offline);
                    if let Some(at) = self.deferred.iter().position(|&i| i == index) {
                        self.deferred.remove(at); // its agent was never told it is online
                    } else {
                        self.feed_sub(now, index, GwInput::Offline)?;
                    }
                }
                GatewayAction::SubdeviceGaveUp { index, reason } => {
                    self.emit(index, SubdeviceEvent::GaveUp { reason });
                }
            }
        }
        Ok(())
    }

    /// Gives sub-device `index` one input and carries out what follows.
    fn feed_sub(&mut self, now: Instant, index: usize, input: GwInput) -> Result<(), Error> {
        let Some(sub) = self.subs.get_mut(index) else {
            return Ok(());
        };
        let effects = sub.handle(now, input)?;
        self.apply(index, effects);
        Ok(())
    }

    fn apply(&mut self, index: usize, effects: Effects) {
        let online = self.subs[index].online;
        for topic in effects.subscribes {
            self.mqtt.subscribe(&topic);
        }
        for (topic, payload, qos) in effects.publishes {
            // The cloud answers a message for a sub-device without a session with a 520.
            if online {
                self.mqtt.publish(&topic, &payload, qos);
            }
        }
        if let Some(version) = effects.flashing {
            self.emit(index, SubdeviceEvent::Flashing { version });
        }
        if let Some(reason) = effects.flash_failed {
            self.emit(index, SubdeviceEvent::FlashFailed { reason });
        }
        for event in effects.events {
            if let DeviceEvent::TaskOffered { version, .. } = &event {
                if !self.queue.contains(&index) {
                    self.queue.push_back(index);
                    if self.downloading() >= self.max_parallel {
                        let version = version.clone();
                        self.emit(index, SubdeviceEvent::Queued { version });
                    }
                }
            }
            self.emit(index, SubdeviceEvent::Agent(event));
        }
    }

    /// Download slots taken: downloads, and resumes about to start.
    fn downloading(&self) -> usize {
        self.subs.iter().filter(|s| s.holds_slot(s.online)).count()
    }

    /// Starts deferred resumes, then accepts waiting offers, while download slots are free.
    fn schedule(&mut self, now: Instant) -> Result<(), Error> {
        while self.downloading() < self.max_parallel {
            let Some(index) = self.deferred.pop_front() else {
                break;
            };
            self.feed_sub(now, index, GwInput::Online)?;
        }
        while self.downloading() < self.max_parallel {
            let Some(index) = self.queue.pop_front() else {
                return Ok(());
            };
            self.feed_sub(now, index, GwInput::Accept)?;
        }
        Ok(())
    }

    fn show_progress(&mut self) {
        for index in 0..self.subs.len() {
            let sub = &self.subs[index];
            if sub.phase() != Phase::Downloading || sub.image_size == 0 {
                continue;
            }
            if self.last_progress[index].elapsed() < PROGRESS_EVERY {
                continue;
            }
            self.last_progress[index] = std::time::Instant::now();
            let event = DeviceEvent::Progress {
                received: sub.fetched(),
                size: sub.image_size,
                downloaded: sub.fetched(),
            };
            self.emit(index, SubdeviceEvent::Agent(event));
        }
    }

    fn emit(&self, index: usize, event: SubdeviceEvent) {
        (self.observer)(GatewayEvent::Subdevice {
            index,
            name: self.subs[index].config.device_name.clone(),
            event,
        });
    }
}

/// A gateway running on its own thread.
pub struct GatewayHandle {
    events: Receiver<GatewayEvent>,
    stopper: Stopper,
    thread: JoinHandle<Result<(), Error>>,
}

impl GatewayHandle {
    /// Runs the gateway on a new thread until stopped.
    pub fn spawn(config: GatewayConfig) -> Result<GatewayHandle, Error> {
        let (tx, events) = mpsc::channel();
        let stopper = Stopper::default();
        let thread_stopper = stopper.clone();
        let thread = std::thread::Builder::new()
            .name(format!("ota-gateway-{}", config.gateway.device_name))
            .spawn(move || {
                let observer = |event: GatewayEvent| {
                    let _ = tx.send(event);
                };
                run_gateway(&config, &observer, &thread_stopper)
            })
            .map_err(|e| Error::Io(format!("cannot start the gateway thread: {e}")))?;
        Ok(GatewayHandle {
            events,
            stopper,
            thread,
        })
    }

    /// Everything the gateway reports, in order.
    pub fn events(&self) -> &Receiver<GatewayEvent> {
        &self.events
    }

    /// Stops the gateway and returns how its run ended.
    pub fn stop(self) -> Result<(), Error> {
        self.stopper.stop();
        self.thread.join().unwrap_or(Err(Error::Panicked))
    }
}
