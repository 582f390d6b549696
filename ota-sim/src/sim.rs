//! The library API: start a simulator, register devices and packages, run jobs, inject
//! faults, and observe (or wait for) what devices did.

use crate::broker::{self, BrokerConfig};
use crate::faults::{Fault, FaultId, Times};
use crate::front;
use crate::gateway;
use crate::http::{self, DownloadRecord};
use crate::input::Input;
use crate::listeners::Listeners;
use crate::model::*;
use crate::mqtt_download::BlockRecord;
use crate::package::*;
use crate::sessions::{SessionRecord, Sessions};
use crate::world::{run_engine, Shared, World};
use crate::{crypto, verify_login, Error, SimConfig};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A running simulator. Dropping it stops the job engine and the firmware server; an embedded
/// rumqttd cannot be stopped and keeps its port until the process exits.
pub struct Sim {
    shared: Arc<Shared>,
    inputs: Sender<Input>,
    mqtt_host: String,
    mqtt_port: u16,
    mqtts_port: Option<u16>,
    http_base: String,
    http_listen: SocketAddr,
    https_base: Option<String>,
    ca_pem: Option<String>,
    product_key: String,
    /// Stop the firmware server and the fronts.
    stops: [Option<tokio::sync::oneshot::Sender<()>>; 2],
    /// Session tracking, when started with [`Sim::start_tracking_sessions`].
    sessions: Option<Sessions>,
}

impl Sim {
    /// Starts the broker (or connects to one), the firmware server and the job engine, and
    /// with [`SimConfig::tls`] the MQTT-over-TLS and HTTPS listeners.
    pub fn start(config: SimConfig) -> Result<Sim, Error> {
        Self::launch(config, None)
    }

    /// Like [`Sim::start`], with a relay in front of the embedded broker that records every
    /// device's MQTT sessions ([`Sim::sessions`]). The relay adds a hop to every packet, so
    /// it is opt-in; an external broker is not tracked.
    pub fn start_tracking_sessions(config: SimConfig) -> Result<Sim, Error> {
        Self::launch(config, Some(Sessions::default()))
    }

    /// The MQTT sessions of `device`, in the order they connected (empty unless started
    /// with [`Sim::start_tracking_sessions`]).
    pub fn sessions(&self, device: impl AsRef<DeviceId>) -> Vec<SessionRecord> {
        self.sessions
            .as_ref()
            .map(|s| s.of(device.as_ref()))
            .unwrap_or_default()
    }

    fn launch(config: SimConfig, sessions: Option<Sessions>) -> Result<Sim, Error> {
        let embedded = matches!(config.broker, BrokerConfig::Embedded { .. });
        let (http_listener, listeners) = Listeners::bind(&config, embedded)?;
        let http_addr = listeners.http_addr();
        let http_base = match &config.public_url {
            Some(url) => crate::listeners::public_base(url, "http")?,
            None => crate::listeners::base_url("http", http_addr),
        };
        let https_base = match (&config.public_https_url, listeners.https_base()?) {
            (Some(url), Some(_)) => Some(crate::listeners::public_base(url, "https")?),
            (Some(url), None) => return Err(Error::InvalidUrl(format!("{url:?}: needs TLS"))),
            (None, own) => own,
        };
        let shared = Arc::new(Shared::new(http_base.clone(), config.url_ttl));
        shared.lock().engine.https_base = https_base.clone();
        let (inputs, rx) = mpsc::channel();
        let (mqtt_host, mqtt_port, publisher, broker_addr) = match &config.broker {
            BrokerConfig::Embedded { .. } => {
                // Weak: rumqttd outlives the Sim, and must not keep its state alive.
                let (check_shared, logins) = (Arc::downgrade(&shared), inputs.clone());
                let transports = listeners.transports.clone();
                let check = Box::new(move |client_id: &str, user: &str, pass: &str| {
                    let over_tls = transports.take_tls(client_id);
                    // The broker's threads never wait for the world lock: under load the
                    // engine holds it, and a login that waits too long is dropped.
                    let result =
                        verify_login(client_id, user, pass, |d| check_shared.upgrade()?.secret(d));
                    match result {
                        Ok(device) => {
                            tracing::info!(
                                "{device} logged in{}",
                                if over_tls { " over TLS" } else { "" }
                            );
                            // Before the CONNACK, so before anything the device sends.
                            let _ = logins.send(Input::Login(device, over_tls));
                            true
                        }
                        Err(e) => {
                            tracing::info!("login refused for {user:?}: {e}");
                            false
                        }
                    }
                });
                // rumqttd listens on a loopback port of its own, behind the fronts (and,
                // when sessions are tracked, behind the session relay too).
                let (broker_addr, publisher) =
                    broker::start_embedded(Ipv4Addr::LOCALHOST.into(), 0, check, inputs.clone())?;
                let backend = match &sessions {
                    None => broker_addr,
                    Some(sessions) => sessions
                        .front(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0), broker_addr)?,
                };
                let public = listeners.mqtt_addr()?.unwrap_or(backend);
                (
                    public.ip().to_string(),
                    public.port(),
                    publisher,
                    Some(backend),
                )
            }
            BrokerConfig::External { url } => {
                let (host, port, publisher) = broker::connect_external(url, inputs.clone())?;
                (host, port, publisher, None)
            }
        };
        shared.set_publisher(publisher);
        let http_stop = http::spawn(http_listener, shared.clone())?;
        let (mqtts_port, ca_pem) = (listeners.mqtts_port()?, listeners.ca_pem());
        let fronts = listeners.fronts(broker_addr, &inputs);
        let front_stop = match fronts.is_empty() {
            true => None,
            false => Some(front::spawn(fronts)?),
        };
        let engine_shared = shared.clone();
        std::thread::Builder::new()
            .name("ota-sim-engine".into())
            .spawn(move || run_engine(engine_shared, rx))?;
        tracing::info!("mqtt on {mqtt_host}:{mqtt_port}, firmware on {http_base}");
        if let (Some(port), Some(https)) = (mqtts_port, &https_base) {
            tracing::info!("mqtt over TLS on {mqtt_host}:{port}, firmware on {https}");
        }
        Ok(Sim {
            shared,
            inputs,
            mqtt_host,
            mqtt_port,
            mqtts_port,
            http_base,
            http_listen: http_addr,
            https_base,
            ca_pem,
            product_key: config.product_key,
            stops: [Some(http_stop), front_stop],
            sessions,
        })
    }

    /// Port of the MQTT-over-TLS listener, when the simulator has one (on
    /// [`Sim::mqtt_host`]; its certificate is valid for `127.0.0.1` and `localhost`).
    pub fn mqtts_port(&self) -> Option<u16> {
        self.mqtts_port
    }

    /// What a TLS device must trust: the generated CA in PEM, or the certificate chain given
    /// with [`SimTls::Files`](crate::SimTls::Files). `None` without TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// Base URL of the HTTPS listener, e.g. `https://127.0.0.1:41235`; devices that logged in
    /// over TLS get their URLs below it.
    pub fn https_base_url(&self) -> Option<&str> {
        self.https_base.as_deref()
    }

    /// Host devices connect to.
    pub fn mqtt_host(&self) -> &str {
        &self.mqtt_host
    }

    /// Port devices connect to.
    pub fn mqtt_port(&self) -> u16 {
        self.mqtt_port
    }

    /// Where the firmware server listens (its URLs may name another host:
    /// [`SimConfig::public_url`](crate::SimConfig::public_url)).
    pub fn http_listen_addr(&self) -> SocketAddr {
        self.http_listen
    }

    /// Base URL of the firmware server as devices get it, e.g. `http://127.0.0.1:41234`
    /// (`/status` is below it).
    pub fn http_base_url(&self) -> &str {
        &self.http_base
    }

    /// Runs `f` on the world, then publishes what it queued and wakes waiters and the engine.
    pub(crate) fn with_world<T>(&self, f: impl FnOnce(&mut World) -> T) -> T {
        let mut world = self.shared.lock();
        let result = f(&mut world);
        self.shared.flush(&mut world);
        drop(world);
        let _ = self.inputs.send(Input::Wake);
        result
    }

    /// ProductKey of the devices [`Sim::add_device`] makes.
    pub fn product_key(&self) -> &str {
        &self.product_key
    }

    /// Registers a device `devNNNN` under the configured product key with a random secret.
    pub fn add_device(&self) -> Result<DeviceInfo, Error> {
        let n = self.shared.lock().engine.devices.len() + 1;
        let id = DeviceId::new(self.product_key.clone(), format!("dev{n:04}"));
        self.add_device_with(id, &crypto::Rng::new().alphanumeric(32))
    }

    /// Registers a device with a chosen identity and secret.
    pub fn add_device_with(&self, id: DeviceId, secret: &str) -> Result<DeviceInfo, Error> {
        self.with_world(|w| w.engine.add_device(id.clone()))?;
        self.shared.add_secret(&id, secret);
        Ok(DeviceInfo {
            id,
            device_secret: secret.to_owned(),
        })
    }

    /// Uploads a package.
    pub fn add_package(&self, spec: PackageSpec) -> Result<PackageId, Error> {
        self.with_world(|w| w.engine.add_package(spec))
    }

    /// Whether a verification job proved the package.
    pub fn is_verified(&self, package: PackageId) -> bool {
        let world = self.shared.lock();
        world
            .engine
            .packages
            .get(package.0 as usize)
            .is_some_and(|p| p.verified)
    }

    /// Creates a job; its tasks are pushed at once to devices that are online.
    pub fn create_job(&self, spec: JobSpec) -> Result<JobId, Error> {
        self.with_world(|w| w.engine.create_job(spec))
    }

    /// Moves the job's CONFIRM tasks on; returns how many.
    pub fn confirm_job(&self, job: JobId) -> Result<usize, Error> {
        self.with_world(|w| w.engine.confirm_job(job))
    }

    /// Cancels the job and its active tasks; returns how many tasks were canceled.
    pub fn cancel_job(&self, job: JobId) -> Result<usize, Error> {
        self.with_world(|w| w.engine.cancel(job, None))
    }

    /// Cancels one device's active task in a job.
    pub fn cancel_task(&self, job: JobId, device: impl AsRef<DeviceId>) -> Result<usize, Error> {
        self.with_world(|w| w.engine.cancel(job, Some(device.as_ref())))
    }

    /// Re-pushes the job's FAILED tasks; returns how many.
    pub fn retry_job(&self, job: JobId) -> Result<usize, Error> {
        self.with_world(|w| w.engine.retry_job(job))
    }

    /// Changes how long URLs issued from now on stay valid (zero: already expired).
    pub fn set_url_ttl(&self, ttl: Duration) {
        self.with_world(|w| w.engine.url_ttl = ttl);
    }

    /// A download URL for `package` issued to `device`, as a push would carry it (the first
    /// file of a multi-file package).
    pub fn signed_url(
        &self,
        package: PackageId,
        device: impl AsRef<DeviceId>,
    ) -> Result<String, Error> {
        self.signed_file_url(package, 0, device)
    }

    /// A download URL for file `index` (0-based, in the order given) of `package`.
    pub fn signed_file_url(
        &self,
        package: PackageId,
        index: usize,
        device: impl AsRef<DeviceId>,
    ) -> Result<String, Error> {
        let world = self.shared.lock();
        world.engine.sign_url(package, index, device.as_ref())
    }

    /// Injects a fault for one device: of the firmware server, or of the MQTT-channel block
    /// replies (the `*Reply`, `CorruptBlock` and `WrongOffset` variants), for any file.
    pub fn set_fault(&self, device: impl AsRef<DeviceId>, fault: Fault, times: Times) -> FaultId {
        self.with_world(|w| w.faults.add(device.as_ref().clone(), None, fault, times))
    }

    /// Like [`Sim::set_fault`], for one file only: a file name of a multi-file package, or
    /// `firmware-{version}.bin` for a single-file one.
    pub fn set_file_fault(
        &self,
        device: impl AsRef<DeviceId>,
        file: &str,
        fault: Fault,
        times: Times,
    ) -> FaultId {
        let file = Some(file.to_owned());
        self.with_world(|w| w.faults.add(device.as_ref().clone(), file, fault, times))
    }

    /// Removes a device's faults (their counters stay readable).
    pub fn clear_faults(&self, device: impl AsRef<DeviceId>) {
        self.with_world(|w| w.faults.clear(device.as_ref()));
    }

    /// How many times a fault fired.
    pub fn fault_fired(&self, id: FaultId) -> u32 {
        self.shared.lock().faults.fired(id)
    }

    /// Waits until fault `id` fired at least `times` times (some fire after the response that
    /// carried them, e.g. a delayed MQTT reply).
    pub fn wait_fault_fired(
        &self,
        id: FaultId,
        times: u32,
        timeout: Duration,
    ) -> Result<u32, Error> {
        self.wait_for(timeout, format!("fault {id:?} fired {times} times"), |w| {
            let fired = w.faults.fired(id);
            if fired >= times {
                Waited::Done(fired)
            } else {
                Waited::Pending(format!("fired {fired} times"))
            }
        })
    }

    /// A device's task in a job.
    pub fn task(&self, job: JobId, device: impl AsRef<DeviceId>) -> Option<TaskView> {
        self.shared.lock().engine.task_view(job, device.as_ref())
    }

    /// All tasks of a job.
    pub fn tasks(&self, job: JobId) -> Vec<TaskView> {
        self.shared.lock().engine.task_views(Some(job))
    }

    /// The progress messages a device sent, in order: the last
    /// [`PROGRESS_HISTORY`](crate::PROGRESS_HISTORY) of them.
    pub fn progress(&self, device: impl AsRef<DeviceId>) -> Vec<ProgressRecord> {
        let world = self.shared.lock();
        world
            .engine
            .devices
            .get(device.as_ref())
            .map(|d| d.steps.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// The steps of [`Sim::progress`].
    pub fn progress_steps(&self, device: impl AsRef<DeviceId>) -> Vec<i64> {
        self.progress(device).iter().map(|p| p.step).collect()
    }

    /// Whether the device counts as online (see the crate docs).
    pub fn is_online(&self, device: impl AsRef<DeviceId>) -> bool {
        let world = self.shared.lock();
        world
            .engine
            .devices
            .get(device.as_ref())
            .is_some_and(|d| d.online)
    }

    /// The version a device last reported for a module.
    pub fn device_version(&self, device: impl AsRef<DeviceId>, module: &str) -> Option<String> {
        let world = self.shared.lock();
        world
            .engine
            .devices
            .get(device.as_ref())
            .and_then(|d| d.versions.get(module).cloned())
    }

    /// The firmware server's answers to a device, in order.
    pub fn downloads(&self, device: impl AsRef<DeviceId>) -> Vec<DownloadRecord> {
        let world = self.shared.lock();
        let device = device.as_ref();
        world
            .downloads
            .iter()
            .filter(|r| r.device.as_ref() == Some(device))
            .cloned()
            .collect()
    }

    /// The MQTT-channel block requests of a device as they were answered, in order.
    pub fn blocks(&self, device: impl AsRef<DeviceId>) -> Vec<BlockRecord> {
        let world = self.shared.lock();
        let device = device.as_ref();
        world
            .blocks
            .records
            .iter()
            .filter(|r| r.device == *device)
            .cloned()
            .collect()
    }

    /// Every change of a task's state or progress step from now on, as it happens (the
    /// live view `serve` and `demo` print).
    pub fn watch_states(&self) -> std::sync::mpsc::Receiver<crate::StateChange> {
        let (tx, rx) = mpsc::channel();
        self.shared.lock().engine.live.watch(tx);
        rx
    }

    /// The `/status` document.
    pub fn status(&self) -> serde_json::Value {
        self.shared.lock().status()
    }

    /// Blocks until `check` says done or failed, re-checking after every change.
    fn wait_for<T>(
        &self,
        timeout: Duration,
        wanted: String,
        mut check: impl FnMut(&World) -> Waited<T>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + timeout;
        let mut world = self.shared.lock();
        loop {
            let seen = match check(&world) {
                Waited::Done(v) => return Ok(v),
                Waited::Failed(last) => return Err(Error::Wait { wanted, last }),
                Waited::Pending(seen) => seen,
            };
            let now = Instant::now();
            if now >= deadline {
                let last = format!("{seen} (timed out after {timeout:?})");
                return Err(Error::Wait { wanted, last });
            }
            world = self
                .shared
                .changed
                .wait_timeout(world, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the device's task in `job` is in `state`. Fails early when the task ended
    /// in another state and no retry is pending.
    pub fn wait_task_state(
        &self,
        job: JobId,
        device: impl AsRef<DeviceId>,
        state: TaskState,
        timeout: Duration,
    ) -> Result<TaskView, Error> {
        let device = device.as_ref();
        let wanted = format!("{device} in job {} to be {state:?}", job.0);
        self.wait_for(timeout, wanted, |w| match w.engine.task_view(job, device) {
            None => Waited::Pending("no task".into()),
            Some(view) if view.state == state => Waited::Done(view),
            Some(view) if !view.state.is_active() && !view.retry_pending => {
                Waited::Failed(format!("{view:?}"))
            }
            Some(view) => Waited::Pending(format!("{view:?}")),
        })
    }

    /// Waits until the device sent at least `count` progress messages; returns the steps kept.
    pub fn wait_progress(
        &self,
        device: impl AsRef<DeviceId>,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<i64>, Error> {
        let device = device.as_ref();
        let wanted = format!("{count} progress steps from {device}");
        self.wait_for(timeout, wanted, |w| {
            let (steps, dropped): (Vec<i64>, u64) = w
                .engine
                .devices
                .get(device)
                .map(|d| (d.steps.iter().map(|s| s.step).collect(), d.steps.dropped()))
                .unwrap_or_default();
            if steps.len() as u64 + dropped >= count as u64 {
                Waited::Done(steps)
            } else {
                Waited::Pending(format!("steps {steps:?}"))
            }
        })
    }

    /// Waits until the device reported `version` for `module`.
    pub fn wait_version(
        &self,
        device: impl AsRef<DeviceId>,
        module: &str,
        version: &str,
        timeout: Duration,
    ) -> Result<(), Error> {
        let device = device.as_ref();
        let wanted = format!("{device} to report {module} {version}");
        self.wait_for(timeout, wanted, |w| {
            let seen = w
                .engine
                .devices
                .get(device)
                .and_then(|d| d.versions.get(module));
            match seen {
                Some(v) if v == version => Waited::Done(()),
                other => Waited::Pending(format!("version {other:?}")),
            }
        })
    }
}

/// What a wait sees on one look at the world.
enum Waited<T> {
    Done(T),
    /// Can no longer happen; says why.
    Failed(String),
    /// Not yet; says what is seen.
    Pending(String),
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.inputs.send(Input::Stop);
        for stop in self.stops.iter_mut().filter_map(Option::take) {
            let _ = stop.send(());
        }
    }
}

/// Gateways and sub-devices (docs/protocol.md §14).
impl Sim {
    /// Registers a gateway `gwNNNN` under the configured product key with a random secret; it
    /// logs in over MQTT like any device and serves the sub-devices of [`Sim::add_subdevice`].
    pub fn add_gateway(&self) -> Result<DeviceInfo, Error> {
        let n = self.with_world(|w| w.gateways.gateway_count()) + 1;
        let id = DeviceId::new(self.product_key(), format!("gw{n:04}"));
        let info = self.add_device_with(id.clone(), &crypto::Rng::new().alphanumeric(32))?;
        self.with_world(|w| w.gateways.add_gateway(id));
        Ok(info)
    }

    /// Registers a sub-device `{gateway}-nodeNN` of [`gateway::SUBDEVICE_PRODUCT_KEY`] for `gateway`,
    /// with a random secret. It is not in the gateway's topology until the gateway adds it.
    pub fn add_subdevice(&self, gateway: impl AsRef<DeviceId>) -> Result<DeviceInfo, Error> {
        let gateway = gateway.as_ref();
        let n = self.with_world(|w| w.gateways.subdevice_count(gateway)) + 1;
        let id = DeviceId::new(
            gateway::SUBDEVICE_PRODUCT_KEY,
            format!("{}-node{n:02}", gateway.device_name),
        );
        let info = self.add_device_with(id.clone(), &crypto::Rng::new().alphanumeric(32))?;
        self.with_world(|w| w.gateways.add_subdevice(gateway, &id));
        Ok(info)
    }

    /// Injects a sub-device session fault for one sub-device (or every one); returns its index
    /// for [`Sim::gateway_fault_fired`].
    pub fn set_gateway_fault(
        &self,
        device: Option<&DeviceId>,
        fault: gateway::GatewayFault,
        times: Times,
    ) -> usize {
        self.with_world(|w| w.gateways.add_fault(device.cloned(), fault, times))
    }

    /// How many times gateway fault `index` fired.
    pub fn gateway_fault_fired(&self, index: usize) -> u32 {
        self.with_world(|w| w.gateways.fault_fired(index))
    }

    /// The sub-devices in `gateway`'s topology.
    pub fn topology(&self, gateway: impl AsRef<DeviceId>) -> Vec<DeviceId> {
        self.with_world(|w| w.gateways.topology_of(gateway.as_ref()))
    }

    /// The gateway `sub` is logged in through, if it has a session.
    pub fn subdevice_session(&self, sub: impl AsRef<DeviceId>) -> Option<DeviceId> {
        self.with_world(|w| w.gateways.session_of(sub.as_ref()).cloned())
    }

    /// Puts `sub` into `gateway`'s topology, as the console does (no request needed).
    pub fn add_to_topology(&self, gateway: impl AsRef<DeviceId>, sub: impl AsRef<DeviceId>) {
        self.with_world(|w| w.gateways.add_to_topology(gateway.as_ref(), sub.as_ref()));
    }

    /// How many successful logins `sub` made.
    pub fn subdevice_logins(&self, sub: impl AsRef<DeviceId>) -> u32 {
        self.with_world(|w| w.gateways.login_count(sub.as_ref()))
    }
}
