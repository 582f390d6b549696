//! Gateway mode on a microcontroller (docs/protocol.md §14): the gateway's one MQTT session
//! carries the core's [`Gateway`] session machine and one [`Agent`] per sub-device (a node on
//! UART, RS-485, BLE...). The firmware implements [`SubdeviceFlasher`]: where each
//! sub-device's image is staged and its record kept, and how a verified image is handed to
//! the sub-device. One download runs at a time (this driver streams one HTTP body in its loop,
//! and RAM for a second staging block is rarely there); the other sub-devices' tasks are
//! offered by their agents (`Confirmation::Ask`) and accepted in turn.

use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::fmt::Debug;

use embassy_futures::select::{select, Either};
use ota_core::gateway::{Gateway, GatewayAction, GatewayEvent};
use ota_core::{Action, Agent, Boot, Config, Confirmation, Event, FetchId, Instant, Notification};
use ota_core::{Phase, Qos};

use crate::clock::{earliest, until, Clock};
use crate::connect::Connect;
use crate::driver::{Error, Settings, MAX_URL_LEN};
use crate::http::{self, BodySink, Ending, Flow, Head, HEADER_BUF_LEN};
use crate::login::Login;
use crate::record::MAX_RECORD_LEN;
use crate::transport::MqttTransport;

/// Longest version a sub-device reports.
pub const MAX_VERSION_LEN: usize = 64;

/// What the firmware does for its sub-devices: stage their images, keep their records, flash
/// them, and say what they run. `index` is the sub-device's place in the configuration.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait SubdeviceFlasher {
    /// What went wrong (reported to the cloud as `-4` for writes, records and flashing).
    type Error: Debug;

    /// The version sub-device `index` runs now (asked at start and after each flash).
    async fn running_version(
        &mut self,
        index: usize,
    ) -> Result<heapless::String<MAX_VERSION_LEN>, Self::Error>;

    /// Writes `data` at `offset` of sub-device `index`'s staging area.
    async fn write(&mut self, index: usize, offset: u64, data: &[u8]) -> Result<(), Self::Error>;

    /// Reads `buf.len()` bytes at `offset` of sub-device `index`'s staging area; the bytes
    /// read, fewer where the staged data ends. The agent re-reads what it is about to trust:
    /// a resumed download's prefix, and the image before it is flashed (`Config::read_back`).
    async fn read(
        &mut self,
        index: usize,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<usize, Self::Error>;

    /// Reads sub-device `index`'s saved record into `buf`; its length, or `None` without one.
    async fn load_record(
        &mut self,
        index: usize,
        buf: &mut [u8; MAX_RECORD_LEN],
    ) -> Result<Option<usize>, Self::Error>;

    /// Replaces sub-device `index`'s record, durably.
    async fn save_record(&mut self, index: usize, record: &[u8]) -> Result<(), Self::Error>;

    /// Removes sub-device `index`'s record, durably.
    async fn clear_record(&mut self, index: usize) -> Result<(), Self::Error>;

    /// Hands the verified image in sub-device `index`'s staging area to it (e.g. its
    /// bootloader over UART) and waits until it runs again; `Err` reports `-4` for it alone.
    async fn flash(&mut self, index: usize, version: &str) -> Result<(), Self::Error>;

    /// News from sub-device `index`'s agent (task, progress, outcome).
    fn notify(&mut self, index: usize, note: &Notification<'_>) {
        let _ = (index, note);
    }

    /// Sub-device `index` logged in (`true`) or lost its session.
    fn session(&mut self, index: usize, online: bool) {
        let _ = (index, online);
    }

    /// The cloud refused sub-device `index` for good (wrong secret, deleted, disabled).
    fn gave_up(&mut self, index: usize, reason: &str) {
        let _ = (index, reason);
    }
}

/// The parts a gateway driver is built from.
pub struct GatewayParts<M, H, C, F> {
    /// The gateway's MQTT session.
    pub mqtt: M,
    /// Opens each download's stream (not the MQTT session's connector).
    pub http: H,
    /// Time.
    pub clock: C,
    /// The sub-devices' storage and flashing.
    pub flasher: F,
    /// The gateway's own MQTT login.
    pub login: Login,
    /// Driver timings.
    pub settings: Settings,
}

/// Everything but the download connector and its buffers: the body sink of a download.
struct GwCore<M, C, F> {
    session: Gateway,
    configs: Vec<Config>,
    agents: Vec<Agent>,
    /// Sub-devices logged in (their agents were given `Connected`).
    online: Vec<bool>,
    /// Sub-devices whose offered task waits for the download slot.
    offers: VecDeque<usize>,
    mqtt: M,
    clock: C,
    flasher: F,
    login: Login,
    settings: Settings,
    connected: bool,
    next_ping: Instant,
    /// The fetch being streamed: (sub-device, fetch).
    current: Option<(usize, FetchId)>,
    /// The fetch asked for last, its offset and URL.
    next: Option<(usize, FetchId, u64)>,
    next_url: heapless::String<MAX_URL_LEN>,
    fault: Option<Error>,
}

/// The gateway driver: see the module docs.
pub struct GatewayDriver<M, H, C, F> {
    core: GwCore<M, C, F>,
    http: H,
    url: heapless::String<MAX_URL_LEN>,
    header_buf: [u8; HEADER_BUF_LEN],
}

impl<M, H, C, F> GatewayDriver<M, H, C, F>
where
    M: MqttTransport,
    H: Connect,
    C: Clock,
    F: SubdeviceFlasher,
{
    /// Builds the session machine and each sub-device's agent (from `agents`, one config per
    /// sub-device of `session`, in the same order, with the sub-device's identity) on what
    /// its flasher says it runs and its saved record. Each agent offers its tasks.
    pub async fn new(
        session: ota_core::gateway::GatewayConfig,
        agents: Vec<Config>,
        mut parts: GatewayParts<M, H, C, F>,
    ) -> Result<Self, Error> {
        if agents.len() != session.subdevices.len() {
            return Err(Error::Agent(ota_core::Error::InvalidConfig(
                "one agent configuration per sub-device",
            )));
        }
        let now = parts.clock.now();
        let mut configs = Vec::with_capacity(agents.len());
        for (config, sub) in agents.into_iter().zip(&session.subdevices) {
            if config.identity != sub.identity || config.write_buffers != 1 {
                return Err(Error::Agent(ota_core::Error::InvalidConfig(
                    "each agent has its sub-device's identity and one staging block",
                )));
            }
            let mut config = config;
            config.confirmation = Confirmation::Ask {
                report_decline: false,
            };
            configs.push(config);
        }
        let mut agents = Vec::with_capacity(configs.len());
        for (index, config) in configs.iter().enumerate() {
            agents.push(boot(&mut parts.flasher, index, config, now).await?);
        }
        let online = alloc::vec![false; configs.len()];
        Ok(GatewayDriver {
            core: GwCore {
                session: Gateway::new(session, now)?,
                configs,
                agents,
                online,
                offers: VecDeque::new(),
                mqtt: parts.mqtt,
                clock: parts.clock,
                flasher: parts.flasher,
                login: parts.login,
                settings: parts.settings,
                connected: false,
                next_ping: now,
                current: None,
                next: None,
                next_url: heapless::String::new(),
                fault: None,
            },
            http: parts.http,
            url: heapless::String::new(),
            header_buf: [0; HEADER_BUF_LEN],
        })
    }

    /// Sub-device `index`'s agent, to read its phase or running version.
    pub fn agent(&self, index: usize) -> Option<&Agent> {
        self.core.agents.get(index)
    }

    /// The flasher.
    pub fn flasher(&self) -> &F {
        &self.core.flasher
    }

    /// Runs until a fatal error (the gateway itself never reboots for a sub-device).
    pub async fn run(&mut self) -> Result<(), Error> {
        let mut reconnect_delay = self.core.settings.reconnect_min;
        let mut next_connect = self.core.clock.now();
        loop {
            self.core.drain().await;
            if let Some(fault) = self.core.fault {
                return Err(fault);
            }
            if self.core.schedule() {
                continue; // the accepted agent's actions first
            }
            if let Some((index, fetch, offset)) = self.core.next.take() {
                self.fetch(index, fetch, offset).await?;
                continue;
            }
            let core = &mut self.core;
            let now = core.clock.now();
            if !core.connected && now >= next_connect {
                if core.connect().await {
                    reconnect_delay = core.settings.reconnect_min;
                } else {
                    next_connect = core.clock.now() + reconnect_delay;
                    reconnect_delay = (reconnect_delay * 2).min(core.settings.reconnect_max);
                }
                continue;
            }
            let wake = if core.connected {
                core.next_ping
            } else {
                next_connect
            };
            let deadline = earliest(core.poll_timeout(), Some(wake));
            if core.connected {
                match until(&core.clock, deadline, core.mqtt.receive()).await {
                    Some(Ok(message)) => {
                        let now = core.clock.now();
                        route(
                            &mut core.session,
                            &mut core.agents,
                            &core.online,
                            now,
                            message.topic,
                            message.payload,
                        )?;
                    }
                    Some(Err(_)) => core.lost(),
                    None => core.tick().await?,
                }
            } else {
                if let Some(at) = deadline {
                    core.clock.sleep_until(at).await;
                }
                core.tick().await?;
            }
        }
    }

    /// Streams one fetch of sub-device `index`, then reports how it ended.
    async fn fetch(&mut self, index: usize, fetch: FetchId, offset: u64) -> Result<(), Error> {
        self.url.clear();
        let _ = self.url.push_str(&self.core.next_url); // same capacity
        self.core.current = Some((index, fetch));
        let ending = http::fetch(
            &self.http,
            &self.url,
            offset,
            &mut self.header_buf,
            &mut self.core,
        )
        .await;
        let core = &mut self.core;
        if core.current.take() != Some((index, fetch)) {
            return Ok(());
        }
        let event = match ending {
            Ending::End => Event::HttpEnd { fetch },
            Ending::Failed(reason) => Event::HttpFailed { fetch, reason },
            Ending::Stopped => return Ok(()),
        };
        core.agents[index].handle(core.clock.now(), event)?;
        Ok(())
    }
}

/// A message to the session machine or to the sub-device whose topic it is.
fn route(
    session: &mut Gateway,
    agents: &mut [Agent],
    online: &[bool],
    now: Instant,
    topic: &str,
    payload: &[u8],
) -> Result<(), Error> {
    if session.handles(topic) {
        session.handle(now, GatewayEvent::Message { topic, payload });
    } else if let Some(index) = session.subdevice_of_topic(topic) {
        if online[index] {
            agents[index].handle(now, Event::Message { topic, payload })?;
        }
    }
    Ok(())
}

/// A sub-device's agent, booted on what it runs and its saved record.
async fn boot<F: SubdeviceFlasher>(
    flasher: &mut F,
    index: usize,
    config: &Config,
    now: Instant,
) -> Result<Agent, Error> {
    let version = flasher
        .running_version(index)
        .await
        .map_err(|_| Error::Boot)?;
    let mut buf = [0u8; MAX_RECORD_LEN];
    // An unreadable record is no record: the download starts over, never from bad state.
    let len = flasher.load_record(index, &mut buf).await.ok().flatten();
    let record = len.map(|n| &buf[..n.min(MAX_RECORD_LEN)]);
    let boot = Boot {
        running_version: &version,
        record,
    };
    Ok(Agent::new(config.clone(), boot, now)?)
}

impl<M, C, F> GwCore<M, C, F>
where
    M: MqttTransport,
    C: Clock,
    F: SubdeviceFlasher,
{
    fn poll_timeout(&self) -> Option<Instant> {
        self.agents
            .iter()
            .filter_map(Agent::poll_timeout)
            .chain(self.session.poll_timeout())
            .min()
    }

    async fn connect(&mut self) -> bool {
        let deadline = self.clock.now() + self.settings.connect_timeout;
        let connected = until(&self.clock, Some(deadline), self.mqtt.connect(&self.login)).await;
        if !matches!(connected, Some(Ok(()))) {
            return false;
        }
        self.connected = true;
        let now = self.clock.now();
        self.next_ping = now + self.settings.keep_alive / 2;
        self.session.handle(now, GatewayEvent::Connected);
        true
    }

    /// The gateway's session broke: every sub-device goes offline with it.
    fn lost(&mut self) {
        self.connected = false;
        let now = self.clock.now();
        self.session.handle(now, GatewayEvent::Disconnected);
    }

    async fn tick(&mut self) -> Result<(), Error> {
        let now = self.clock.now();
        if self.connected && now >= self.next_ping {
            self.next_ping = now + self.settings.keep_alive / 2;
            if self.mqtt.ping().await.is_err() {
                self.lost();
                return Ok(());
            }
        }
        self.session.handle_timeout(now);
        for agent in &mut self.agents {
            if agent.poll_timeout().is_some_and(|at| at <= now) {
                agent.handle_timeout(now)?;
            }
        }
        Ok(())
    }

    /// Accepts the oldest waiting offer when no sub-device downloads; `true` when it did.
    fn schedule(&mut self) -> bool {
        let busy = self.current.is_some()
            || self.next.is_some()
            || self.agents.iter().any(|a| a.phase() == Phase::Downloading);
        if busy {
            return false;
        }
        let Some(index) = self.offers.pop_front() else {
            return false;
        };
        // An offer that is gone (canceled, superseded) has nothing to accept.
        let _ = self.agents[index].handle(self.clock.now(), Event::AcceptTask);
        true
    }

    /// Performs the session's actions and every agent's, feeding storage results back, until
    /// nothing is left. A contract error is kept in `fault`.
    async fn drain(&mut self) {
        loop {
            let mut progressed = self.drain_session().await;
            for index in 0..self.agents.len() {
                match self.drain_agent(index).await {
                    Ok(p) => progressed |= p,
                    Err(e) => {
                        self.fault = Some(e);
                        return;
                    }
                }
            }
            if !progressed {
                return;
            }
        }
    }

    async fn drain_session(&mut self) -> bool {
        let mut progressed = false;
        while let Some(action) = self.session.poll_action() {
            progressed = true;
            let now = self.clock.now();
            let result = match action {
                GatewayAction::Subscribe { topic } => {
                    self.connected && self.mqtt.subscribe(&topic).await.is_err()
                }
                GatewayAction::Publish { topic, payload } => {
                    self.connected
                        && self
                            .mqtt
                            .publish(&topic, &payload, Qos::AtMostOnce)
                            .await
                            .is_err()
                }
                GatewayAction::SubdeviceOnline { index } => {
                    self.online[index] = true;
                    self.flasher.session(index, true);
                    if let Err(e) = self.agents[index].handle(now, Event::Connected) {
                        self.fault = Some(Error::Agent(e));
                    }
                    false
                }
                GatewayAction::SubdeviceOffline { index } => {
                    self.online[index] = false;
                    self.flasher.session(index, false);
                    if let Err(e) = self.agents[index].handle(now, Event::Disconnected) {
                        self.fault = Some(Error::Agent(e));
                    }
                    false
                }
                GatewayAction::SubdeviceGaveUp { index, reason } => {
                    self.flasher.gave_up(index, &reason);
                    false
                }
            };
            if result {
                self.lost();
            }
        }
        progressed
    }

    /// Performs sub-device `index`'s queued actions; `Ok(true)` when there were any.
    async fn drain_agent(&mut self, index: usize) -> Result<bool, Error> {
        let mut progressed = false;
        let mut reboot = false;
        // After a sub-device's reboot: `Connected` once its boot actions are drained.
        let mut connect_after_boot = false;
        // Storage results and verdicts, fed one per round (each may queue more actions).
        let mut results: heapless::Deque<Event<'static>, 4> = heapless::Deque::new();
        loop {
            let mut lost = false;
            let publishing = self.connected && self.online[index];
            while let Some(action) = self.agents[index].poll_action() {
                progressed = true;
                match action {
                    Action::Subscribe { topic } => {
                        lost |= publishing && self.mqtt.subscribe(topic).await.is_err();
                    }
                    Action::Publish {
                        topic,
                        payload,
                        qos,
                    } => {
                        lost |= publishing && self.mqtt.publish(topic, payload, qos).await.is_err();
                    }
                    Action::Fetch { fetch, url, offset } => {
                        self.next_url.clear();
                        if self.next_url.push_str(url).is_ok() {
                            self.next = Some((index, fetch, offset));
                        } else {
                            let reason = "URL longer than the driver's buffer";
                            let _ = results.push_back(Event::HttpFailed { fetch, reason });
                        }
                    }
                    Action::CancelFetch { fetch } => {
                        if self.current == Some((index, fetch)) {
                            self.current = None;
                        }
                        if self.next.is_some_and(|(i, f, _)| (i, f) == (index, fetch)) {
                            self.next = None;
                        }
                    }
                    Action::Write { offset, data } => {
                        let event = match self.flasher.write(index, offset, data).await {
                            Ok(()) => Event::WriteDone,
                            Err(_) => Event::WriteFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Read { offset, buf } => {
                        let event = match self.flasher.read(index, offset, buf).await {
                            Ok(len) => Event::ReadDone { len },
                            Err(_) => Event::ReadFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::SaveRecord { record } => {
                        let event = match self.flasher.save_record(index, record).await {
                            Ok(()) => Event::RecordSaved,
                            Err(_) => Event::RecordSaveFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::ClearRecord => {
                        let event = match self.flasher.clear_record(index).await {
                            Ok(()) => Event::RecordSaved,
                            Err(_) => Event::RecordSaveFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Activate { version, .. } => {
                        let event = match self.flasher.flash(index, version).await {
                            Ok(()) => Event::Activated,
                            Err(_) => Event::ActivationFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Reboot => reboot = true,
                    // The sub-device runs what it runs: nothing to keep or undo here.
                    Action::Confirm { .. } | Action::Rollback { .. } => {}
                    Action::Notify(note) => {
                        match &note {
                            Notification::TaskOffered(_) if !self.offers.contains(&index) => {
                                self.offers.push_back(index);
                            }
                            // The flash and the version it left say whether it runs.
                            Notification::HealthCheckRequested { .. } => {
                                let _ = results.push_back(Event::HealthVerdict { healthy: true });
                            }
                            _ => {}
                        }
                        self.flasher.notify(index, &note);
                    }
                }
            }
            let now = self.clock.now();
            if lost {
                self.lost();
            }
            if let Some(event) = results.pop_front() {
                self.agents[index].handle(now, event)?;
                continue;
            }
            if core::mem::take(&mut reboot) {
                // The sub-device restarted on what was flashed: a new agent on its version
                // and record, as after a real reboot, then its session again.
                // Its old agent's fetches end with it: the new one numbers its own anew.
                if self.current.is_some_and(|(i, _)| i == index) {
                    self.current = None;
                }
                if self.next.is_some_and(|(i, _, _)| i == index) {
                    self.next = None;
                }
                let config = &self.configs[index];
                self.agents[index] = boot(&mut self.flasher, index, config, now).await?;
                connect_after_boot = self.online[index];
                continue;
            }
            if core::mem::take(&mut connect_after_boot) {
                self.agents[index].handle(now, Event::Connected)?;
                continue;
            }
            return Ok(progressed);
        }
    }

    fn feed(&mut self, result: Result<(), ota_core::Error>) {
        if let Err(e) = result {
            self.fault = Some(Error::Agent(e));
        }
    }

    fn flow(&self, fetch: Option<(usize, FetchId)>) -> Flow {
        if self.current.is_none() || self.current != fetch || self.fault.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }
}

impl<M, C, F> BodySink for GwCore<M, C, F>
where
    M: MqttTransport,
    C: Clock,
    F: SubdeviceFlasher,
{
    type Key = (usize, FetchId);
    type Clock = C;

    async fn response(&mut self, head: Head<'_>) -> Flow {
        let Some((index, fetch)) = self.current else {
            return Flow::Stop;
        };
        let event = Event::HttpResponse {
            fetch,
            status: head.status,
            content_length: head.content_length,
            content_range: head.content_range,
        };
        let fed = self.agents[index].handle(self.clock.now(), event);
        self.feed(fed);
        self.drain().await;
        self.flow(Some((index, fetch)))
    }

    fn current(&mut self) -> Option<((usize, FetchId), &mut Agent, FetchId, &C)> {
        let (index, fetch) = self.current?;
        Some(((index, fetch), &mut self.agents[index], fetch, &self.clock))
    }

    async fn settle(&mut self, key: (usize, FetchId)) -> Flow {
        self.drain().await;
        self.flow(Some(key))
    }

    fn fail(&mut self, error: Error) {
        self.fault = Some(error);
    }

    async fn idle(&mut self) -> Flow {
        let fetch = self.current;
        if self.connected {
            match select(self.mqtt.receive(), core::future::ready(())).await {
                Either::First(Ok(message)) => {
                    let now = self.clock.now();
                    let routed = route(
                        &mut self.session,
                        &mut self.agents,
                        &self.online,
                        now,
                        message.topic,
                        message.payload,
                    );
                    if let Err(e) = routed {
                        self.fault = Some(e);
                    }
                }
                Either::First(Err(_)) => self.lost(),
                Either::Second(()) => {}
            }
            self.drain().await;
        }
        if let Err(e) = self.tick().await {
            self.fault = Some(e);
        }
        self.drain().await;
        self.flow(fetch)
    }

    fn deadline(&self) -> Option<Instant> {
        self.poll_timeout()
    }

    async fn sleep_until(&self, at: Instant) {
        self.clock.sleep_until(at).await
    }

    async fn timed_out(&mut self) -> Flow {
        let fetch = self.current;
        if let Err(e) = self.tick().await {
            self.fault = Some(e);
        }
        self.drain().await;
        self.flow(fetch)
    }
}
