//! The driver: owns the agent and serves its actions — the thin loop of the core's crate docs,
//! made async. Inputs come from MQTT, the download, the clock and the application; after
//! every input the queued actions are performed in order, and the one storage operation
//! among them is answered with its result event before the next input.

use core::time::Duration;

use embassy_futures::select::{select, Either};
use embedded_storage_async::nor_flash::NorFlash;
use ota_core::{Action, Agent, Boot, Config, Event, FetchId, Instant, Notification};

use crate::boot::Bootloader;
use crate::clock::{earliest, until, Clock};
use crate::connect::Connect;
pub use crate::error::Error;
use crate::flash::Slot;
use crate::http::{self, BodySink, Ending, Flow, Head, HEADER_BUF_LEN};
use crate::login::Login;
use crate::record::RecordStore;
use crate::time_sync::TimeSync;
use crate::transport::MqttTransport;

/// Longest download URL (signed OSS URLs reach 1,500+ bytes). Two are kept: the one being
/// fetched and the next one the agent asked for.
pub const MAX_URL_LEN: usize = 2048;
const MAX_VERSION_LEN: usize = 64;

/// What the application is told and asked.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait Application {
    /// News from the agent: task received or rejected, progress, outcome, discarded record.
    fn notify(&mut self, note: &Notification<'_>);

    /// The new image `version` runs: self-test it. Raced against the agent's health
    /// timeout; a timeout counts as unhealthy (roll back).
    async fn check_health(&mut self, version: &str) -> bool;
}

/// Timings of the driver itself (the agent's are in its `Config`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// MQTT keep-alive; a PINGREQ goes out every half of it. Must match the transport's.
    pub keep_alive: Duration,
    /// How long a connect (TCP, CONNECT, CONNACK) may take.
    pub connect_timeout: Duration,
    /// First delay before reconnecting; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest delay between reconnect attempts.
    pub reconnect_max: Duration,
    /// Ask the platform for the time after every connect (docs/protocol.md §13) and set the
    /// clock from the reply ([`Clock::set_unix_time`]), so later TLS connections check
    /// certificate dates. Off for a broker without the time topic, or a firmware with SNTP.
    pub ask_time: bool,
    /// The product's package-signing key (docs/protocol.md §11): its RSA-2048 modulus `n`,
    /// big-endian (256 bytes, exponent 65537), e.g. `include_bytes!` of the console's `n`.
    /// With it only tasks whose `digestsign` verifies are activated; a key that is not
    /// RSA-2048 makes [`Driver::new`] fail.
    #[cfg(feature = "signature")]
    pub signing_key: Option<&'static [u8]>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            keep_alive: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(60),
            ask_time: true,
            #[cfg(feature = "signature")]
            signing_key: None,
        }
    }
}

/// How `run` ended without an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// [`Bootloader::reset`] returned: restart the device (or, in a test, build a new driver).
    Reboot,
}

/// Everything but the download connector and its buffers: the body sink of a download.
struct Core<M, S, R, B, C, A> {
    agent: Agent,
    mqtt: M,
    slot: Slot<S>,
    records: RecordStore<R>,
    boot: B,
    clock: C,
    app: A,
    login: Login,
    settings: Settings,
    online: bool,
    next_ping: Instant,
    /// The fetch being streamed; cleared by a `CancelFetch` of it.
    current: Option<FetchId>,
    /// The fetch the agent asked for last, and its URL.
    next: Option<(FetchId, u64)>,
    next_url: heapless::String<MAX_URL_LEN>,
    /// A health check the agent asked for.
    health: Option<heapless::String<MAX_VERSION_LEN>>,
    reboot: bool,
    fault: Option<Error>,
    time: TimeSync,
}

/// The OTA driver. See the crate docs for the memory it holds and how to run it.
pub struct Driver<M, H, S, R, B, C, A> {
    core: Core<M, S, R, B, C, A>,
    http: H,
    url: heapless::String<MAX_URL_LEN>,
    header_buf: [u8; HEADER_BUF_LEN],
}

/// The parts a driver is built from.
pub struct Parts<M, H, S, R, B, C, A> {
    /// MQTT session.
    pub mqtt: M,
    /// Opens the stream of each download: [`crate::TcpConnector`] for `http://` URLs, a
    /// `TlsConnector` (feature `tls`) for `https://` ones. Not the MQTT session's connector:
    /// both streams are open at once.
    pub http: H,
    /// The image slot.
    pub slot: Slot<S>,
    /// The saved record's two copies.
    pub records: RecordStore<R>,
    /// Activation, confirmation, reboot.
    pub boot: B,
    /// Time.
    pub clock: C,
    /// The application.
    pub app: A,
    /// The MQTT login.
    pub login: Login,
    /// Driver timings.
    pub settings: Settings,
}

impl<M, H, S, R, B, C, A> Driver<M, H, S, R, B, C, A>
where
    M: MqttTransport,
    H: Connect,
    S: NorFlash,
    R: NorFlash,
    B: Bootloader,
    C: Clock,
    A: Application,
{
    /// Loads the saved record and builds the agent. `config.write_block` must follow the
    /// slot rule ([`crate::flash`]) and `config.write_buffers` stay 1; the largest image
    /// accepted is capped to the slot.
    pub async fn new(
        mut config: Config,
        running_version: &str,
        mut parts: Parts<M, H, S, R, B, C, A>,
    ) -> Result<Self, Error> {
        Slot::<S>::check_write_block(config.write_block).map_err(Error::Flash)?;
        #[cfg(feature = "signature")]
        if let Some(modulus) = parts.settings.signing_key {
            let key = ota_core::signature::PackageKey::from_modulus(modulus);
            config.package_key = Some(key.map_err(Error::Agent)?);
        }
        if config.write_buffers != 1 {
            // Writes are awaited right in the drain loop, so a second staging block would
            // only cost RAM (and the loop holds one storage result at a time).
            return Err(Error::Agent(ota_core::Error::InvalidConfig(
                "ota-embedded writes one block at a time: write_buffers must be 1",
            )));
        }
        let cap = &mut config.rules.max_image_size;
        *cap = (*cap).min(parts.slot.capacity());
        let now = parts.clock.now();
        let time = TimeSync::new(&config.identity);
        let record = parts.records.load().await.map_err(Error::Flash)?;
        let boot = Boot {
            running_version,
            record,
        };
        let agent = Agent::new(config, boot, now)?;
        Ok(Driver {
            core: Core {
                agent,
                mqtt: parts.mqtt,
                slot: parts.slot,
                records: parts.records,
                boot: parts.boot,
                clock: parts.clock,
                app: parts.app,
                login: parts.login,
                settings: parts.settings,
                online: false,
                next_ping: now,
                current: None,
                next: None,
                next_url: heapless::String::new(),
                health: None,
                reboot: false,
                fault: None,
                time,
            },
            http: parts.http,
            url: heapless::String::new(),
            header_buf: [0; HEADER_BUF_LEN],
        })
    }

    /// The agent, to read its phase or progress.
    pub fn agent(&self) -> &Agent {
        &self.core.agent
    }

    /// The application.
    pub fn app(&self) -> &A {
        &self.core.app
    }

    /// Runs until a reboot (after [`Bootloader::reset`] returned) or a fatal error.
    pub async fn run(&mut self) -> Result<Exit, Error> {
        let mut reconnect_delay = self.core.settings.reconnect_min;
        let mut next_connect = self.core.clock.now();
        loop {
            self.core.drain().await;
            if let Some(fault) = self.core.fault {
                return Err(fault);
            }
            if self.core.reboot {
                let core = &mut self.core;
                if core.online {
                    let deadline = core.clock.now() + core.settings.connect_timeout;
                    let _ = until(&core.clock, Some(deadline), core.mqtt.disconnect()).await;
                    core.online = false;
                }
                core.boot.reset();
                return Ok(Exit::Reboot);
            }
            if let Some((fetch, offset)) = self.core.next.take() {
                self.fetch(fetch, offset).await?;
                continue;
            }
            if let Some(version) = self.core.health.take() {
                self.core.check_health(&version).await?;
                continue;
            }
            let core = &mut self.core;
            let now = core.clock.now();
            if !core.online && now >= next_connect {
                if core.connect().await? {
                    reconnect_delay = core.settings.reconnect_min;
                } else {
                    next_connect = core.clock.now() + reconnect_delay;
                    reconnect_delay = (reconnect_delay * 2).min(core.settings.reconnect_max);
                }
                continue;
            }
            let wake = if core.online {
                core.next_ping
            } else {
                next_connect
            };
            let deadline = earliest(core.agent.poll_timeout(), Some(wake));
            if core.online {
                match until(&core.clock, deadline, core.mqtt.receive()).await {
                    Some(Ok(message)) if core.time.is_reply(message.topic) => {
                        // A bad or stale reply leaves the clock as it was.
                        let _ = core.time.handle(message.payload, &core.clock);
                    }
                    Some(Ok(message)) => {
                        let event = Event::Message {
                            topic: message.topic,
                            payload: message.payload,
                        };
                        core.agent.handle(core.clock.now(), event)?;
                    }
                    Some(Err(_)) => core.lost().await?,
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

    /// Streams one fetch, then reports how it ended (unless the agent cancelled it).
    async fn fetch(&mut self, fetch: FetchId, offset: u64) -> Result<(), Error> {
        self.url.clear();
        // Same capacity: cannot fail.
        let _ = self.url.push_str(&self.core.next_url);
        self.core.current = Some(fetch);
        let ending = http::fetch(
            &self.http,
            &self.url,
            offset,
            &mut self.header_buf,
            &mut self.core,
        )
        .await;
        let core = &mut self.core;
        if core.current.take() != Some(fetch) {
            return Ok(());
        }
        let event = match ending {
            Ending::End => Event::HttpEnd { fetch },
            Ending::Failed(reason) => Event::HttpFailed { fetch, reason },
            Ending::Stopped => return Ok(()),
        };
        core.agent.handle(core.clock.now(), event)?;
        Ok(())
    }
}

impl<M, S, R, B, C, A> Core<M, S, R, B, C, A>
where
    M: MqttTransport,
    S: NorFlash,
    R: NorFlash,
    B: Bootloader,
    C: Clock,
    A: Application,
{
    /// Connects MQTT; true when the session is up (and the agent told).
    async fn connect(&mut self) -> Result<bool, Error> {
        let deadline = self.clock.now() + self.settings.connect_timeout;
        let connected = until(&self.clock, Some(deadline), self.mqtt.connect(&self.login)).await;
        if !matches!(connected, Some(Ok(()))) {
            return Ok(false);
        }
        self.online = true;
        let now = self.clock.now();
        self.next_ping = now + self.settings.keep_alive / 2;
        self.agent.handle(now, Event::Connected)?;
        if self.settings.ask_time && self.time.ask(&mut self.mqtt, now).await.is_err() {
            self.lost().await?;
            return Ok(false);
        }
        Ok(true)
    }

    /// The MQTT session broke.
    async fn lost(&mut self) -> Result<(), Error> {
        self.online = false;
        self.agent.handle(self.clock.now(), Event::Disconnected)?;
        Ok(())
    }

    /// A deadline passed: ping when due, fire the agent's timers.
    async fn tick(&mut self) -> Result<(), Error> {
        let now = self.clock.now();
        if self.online && now >= self.next_ping {
            self.next_ping = now + self.settings.keep_alive / 2;
            if self.mqtt.ping().await.is_err() {
                return self.lost().await;
            }
        }
        if self.agent.poll_timeout().is_some_and(|at| at <= now) {
            self.agent.handle_timeout(now)?;
        }
        Ok(())
    }

    /// Runs the application's self-test against the agent's health deadline.
    async fn check_health(&mut self, version: &str) -> Result<(), Error> {
        let deadline = self.agent.poll_timeout();
        match until(&self.clock, deadline, self.app.check_health(version)).await {
            Some(healthy) => {
                let event = Event::HealthVerdict { healthy };
                self.agent.handle(self.clock.now(), event)?;
            }
            None => self.agent.handle_timeout(self.clock.now())?,
        }
        Ok(())
    }

    /// Performs every queued action; feeds storage results and a lost session back, and
    /// drains again, until the agent has nothing more to say. A contract error is kept in
    /// `fault` (the caller stops).
    async fn drain(&mut self) {
        // At most one storage result, plus a URL the driver could not hold.
        let mut results: heapless::Deque<Event<'static>, 2> = heapless::Deque::new();
        loop {
            let mut lost = false;
            while let Some(action) = self.agent.poll_action() {
                match action {
                    Action::Subscribe { topic } => {
                        lost |= self.online && self.mqtt.subscribe(topic).await.is_err();
                    }
                    Action::Publish {
                        topic,
                        payload,
                        qos,
                    } => {
                        lost |=
                            self.online && self.mqtt.publish(topic, payload, qos).await.is_err();
                    }
                    Action::Fetch { fetch, url, offset } => {
                        self.next_url.clear();
                        if self.next_url.push_str(url).is_ok() {
                            self.next = Some((fetch, offset));
                        } else {
                            let reason = "URL longer than the driver's buffer";
                            let _ = results.push_back(Event::HttpFailed { fetch, reason });
                        }
                    }
                    Action::CancelFetch { fetch } => {
                        if self.current == Some(fetch) {
                            self.current = None;
                        }
                        if self.next.is_some_and(|(next, _)| next == fetch) {
                            self.next = None;
                        }
                    }
                    Action::Write { offset, data } => {
                        let event = match self.slot.write(offset, data).await {
                            Ok(()) => Event::WriteDone,
                            Err(_) => Event::WriteFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Read { offset, buf } => {
                        // NOR never reads short: the whole buffer, or a failure.
                        let event = match self.slot.read_any(offset, buf).await {
                            Ok(()) => Event::ReadDone { len: buf.len() },
                            Err(_) => Event::ReadFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::SaveRecord { record } => {
                        let event = match self.records.save(record).await {
                            Ok(()) => Event::RecordSaved,
                            Err(_) => Event::RecordSaveFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::ClearRecord => {
                        let event = match self.records.clear().await {
                            Ok(()) => Event::RecordSaved,
                            Err(_) => Event::RecordSaveFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Activate { .. } => {
                        let event = match self.boot.mark_updated().await {
                            Ok(()) => Event::Activated,
                            Err(_) => Event::ActivationFailed,
                        };
                        let _ = results.push_back(event);
                    }
                    Action::Reboot => self.reboot = true,
                    Action::Confirm { .. } => {
                        if self.boot.mark_booted().await.is_err() {
                            self.fault = Some(Error::Boot);
                        }
                    }
                    Action::Rollback { .. } => {
                        if self.boot.mark_rollback().await.is_err() {
                            self.fault = Some(Error::Boot);
                        }
                    }
                    Action::Notify(note) => {
                        if let Notification::HealthCheckRequested { version, .. } = &note {
                            let mut copy = heapless::String::new();
                            // Versions are at most 64 characters: the agent checks.
                            let _ = copy.push_str(version);
                            self.health = Some(copy);
                        }
                        self.app.notify(&note);
                    }
                }
            }
            let now = self.clock.now();
            let fed = if lost {
                self.online = false;
                self.agent.handle(now, Event::Disconnected)
            } else if let Some(event) = results.pop_front() {
                self.agent.handle(now, event)
            } else {
                return;
            };
            if let Err(e) = fed {
                self.fault = Some(Error::Agent(e));
                return;
            }
        }
    }

    /// The download goes on unless its fetch was cancelled, a reboot is due, or a fault.
    fn flow(&self, fetch: Option<FetchId>) -> Flow {
        if self.current.is_none() || self.current != fetch || self.reboot || self.fault.is_some() {
            Flow::Stop
        } else {
            Flow::Continue
        }
    }

    fn feed(&mut self, result: Result<(), ota_core::Error>) {
        if let Err(e) = result {
            self.fault = Some(Error::Agent(e));
        }
    }
}

impl<M, S, R, B, C, A> BodySink for Core<M, S, R, B, C, A>
where
    M: MqttTransport,
    S: NorFlash,
    R: NorFlash,
    B: Bootloader,
    C: Clock,
    A: Application,
{
    type Key = FetchId;
    type Clock = C;

    async fn response(&mut self, head: Head<'_>) -> Flow {
        let Some(fetch) = self.current else {
            return Flow::Stop;
        };
        let event = Event::HttpResponse {
            fetch,
            status: head.status,
            content_length: head.content_length,
            content_range: head.content_range,
        };
        let fed = self.agent.handle(self.clock.now(), event);
        self.feed(fed);
        self.drain().await;
        self.flow(Some(fetch))
    }

    fn current(&mut self) -> Option<(FetchId, &mut Agent, FetchId, &C)> {
        let fetch = self.current?;
        Some((fetch, &mut self.agent, fetch, &self.clock))
    }

    async fn settle(&mut self, fetch: FetchId) -> Flow {
        self.drain().await;
        self.flow(Some(fetch))
    }

    fn fail(&mut self, error: Error) {
        self.fault = Some(error);
    }

    async fn idle(&mut self) -> Flow {
        let fetch = self.current;
        if self.online {
            let polled = select(self.mqtt.receive(), core::future::ready(())).await;
            match polled {
                Either::First(Ok(message)) if self.time.is_reply(message.topic) => {
                    let _ = self.time.handle(message.payload, &self.clock);
                }
                Either::First(Ok(message)) => {
                    let event = Event::Message {
                        topic: message.topic,
                        payload: message.payload,
                    };
                    let fed = self.agent.handle(self.clock.now(), event);
                    self.feed(fed);
                }
                Either::First(Err(_)) => {
                    let fed = self.lost().await;
                    if let Err(e) = fed {
                        self.fault = Some(e);
                    }
                }
                Either::Second(()) => {}
            }
            self.drain().await;
        }
        let ticked = self.tick().await;
        if let Err(e) = ticked {
            self.fault = Some(e);
        }
        self.drain().await;
        self.flow(fetch)
    }

    fn deadline(&self) -> Option<Instant> {
        self.agent.poll_timeout()
    }

    async fn sleep_until(&self, at: Instant) {
        self.clock.sleep_until(at).await
    }

    async fn timed_out(&mut self) -> Flow {
        let fetch = self.current;
        let fed = self.agent.handle_timeout(self.clock.now());
        self.feed(fed);
        self.drain().await;
        self.flow(fetch)
    }
}
