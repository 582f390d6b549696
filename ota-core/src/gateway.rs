//! A gateway's session for the sub-devices behind it (docs/protocol.md §14), as a sans-IO
//! machine next to the [`Agent`](crate::Agent)s: it puts each sub-device into the cloud's
//! topology, logs it in over the gateway's one MQTT connection, and says when the sub-device's
//! own `Agent` may run (`SubdeviceOnline`) and when it must stop (`SubdeviceOffline`).
//!
//! The adapter drives it like an agent: one input (`handle`, `handle_timeout`), then every
//! action (`poll_action`), then sleep until `poll_timeout`. Messages on the gateway's session
//! topics go to the gateway ([`Gateway::handles`]); messages on a sub-device's OTA topics go to
//! that sub-device's agent ([`Gateway::subdevice_of_topic`]). On `SubdeviceOnline { index }`
//! the adapter gives that agent `Event::Connected` (it subscribes to its own topics and asks
//! for its task); on `SubdeviceOffline` it gives it `Event::Disconnected` and sends nothing
//! for it until it is online again: the cloud answers a message for a sub-device without a
//! session with a 520 notice.
//!
//! What each reply code leads to:
//!
//! | code | meaning | outcome |
//! | --- | --- | --- |
//! | 200 | success | next step (login after topology; online after login) |
//! | 429, 428, 500, no reply | too many logins, too many sub-devices, server error | retry with jittered back-off, within `retry.max_attempts` |
//! | 6401 | no topology | add the topology again, then log in (one attempt) |
//! | 520, 427 (notice or logout reply) | session gone, logged in elsewhere | offline, then log in again (427 with back-off) |
//! | 401, 460, 6100, 6287, 6402, 521, 522 | bad sign, bad request, no such device, bad sign, self, deleted, disabled | offline for good: `SubdeviceGaveUp` with the reason |
//!
//! Topology requests carry up to 30 sub-devices; when one fails for a reason that names no
//! device (a bad sign in a batch), each of its sub-devices is asked again on its own, so the
//! failure lands on the one it belongs to.

pub mod messages;
pub mod sign;

use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;
use core::time::Duration;

use crate::agent::RetryPolicy;
use crate::backoff::Backoff;
use crate::identity::DeviceIdentity;
use crate::time::Instant;
use crate::Error;
use messages::SignedDevice;

/// Most sub-devices in one topology request (the platform's limit).
pub const TOPO_BATCH: usize = 30;

/// A sub-device the gateway serves: its identity and its own DeviceSecret (for the sign).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subdevice {
    /// ProductKey and DeviceName.
    pub identity: DeviceIdentity,
    /// The sub-device's DeviceSecret.
    pub secret: String,
}

/// The gateway's configuration.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The gateway's own identity (its session topics carry it).
    pub gateway: DeviceIdentity,
    /// The sub-devices, in the order the actions' `index` refers to.
    pub subdevices: Vec<Subdevice>,
    /// Back-off and budget for retryable failures (429, 428, 500, no reply, 427).
    pub retry: RetryPolicy,
    /// How long to wait for a reply before counting the request as failed.
    pub reply_timeout: Duration,
    /// Seed of the back-off jitter.
    pub seed: u64,
}

impl GatewayConfig {
    /// Defaults: 8 attempts from 2 s to 5 min of back-off (the cloud refuses more than 5 logins
    /// of a sub-device a minute), replies within 10 s.
    pub fn new(gateway: DeviceIdentity, subdevices: Vec<Subdevice>) -> Self {
        GatewayConfig {
            gateway,
            subdevices,
            retry: RetryPolicy {
                max_attempts: 8,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(300),
            },
            reply_timeout: Duration::from_secs(10),
            seed: 0x6761_7465_7761_7921,
        }
    }
}

/// Where a sub-device stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubdeviceState {
    /// Waiting for the gateway's connection and the cloud's topology list.
    Idle,
    /// A topology request for it is out.
    AddingTopology,
    /// Its login is out.
    LoggingIn,
    /// Logged in: its agent runs.
    Online,
    /// A retry is due at this instant.
    Waiting(Instant),
    /// Logged out on the application's request.
    LoggedOut,
    /// Given up; the text says why.
    GaveUp(String),
}

/// What the gateway asks the adapter to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GatewayAction {
    /// Subscribe to one of the gateway's session topics.
    Subscribe {
        /// The topic.
        topic: String,
    },
    /// Publish at QoS 0 (the session topics take nothing else).
    Publish {
        /// The topic.
        topic: String,
        /// The JSON request.
        payload: Vec<u8>,
    },
    /// The sub-device is logged in: give its agent `Event::Connected`.
    SubdeviceOnline {
        /// Index into `GatewayConfig::subdevices`.
        index: usize,
    },
    /// The sub-device's session is gone: give its agent `Event::Disconnected`.
    SubdeviceOffline {
        /// Index into `GatewayConfig::subdevices`.
        index: usize,
    },
    /// The sub-device cannot be served (until the gateway is restarted).
    SubdeviceGaveUp {
        /// Index into `GatewayConfig::subdevices`.
        index: usize,
        /// Why, for the operator.
        reason: String,
    },
}

/// An input of the gateway's session.
#[derive(Clone, Copy, Debug)]
pub enum GatewayEvent<'a> {
    /// The gateway's MQTT session is up.
    Connected,
    /// The gateway's MQTT session is down.
    Disconnected,
    /// A message on one of the topics [`Gateway::handles`] accepts.
    Message {
        /// Topic.
        topic: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestKind {
    TopoGet,
    TopoAdd,
    Login,
}

struct Pending {
    kind: RequestKind,
    devices: Vec<usize>,
    deadline: Instant,
}

struct Slot {
    state: SubdeviceState,
    /// Consecutive retryable failures since the last success.
    attempts: u32,
    /// The cloud has it under this gateway (topo/get listed it, or topo/add succeeded).
    in_topology: bool,
}

struct SessionTopics {
    topo_add: String,
    topo_add_reply: String,
    topo_get: String,
    topo_get_reply: String,
    login: String,
    login_reply: String,
    logout: String,
    logout_reply: String,
    error: String,
}

impl SessionTopics {
    fn new(gateway: &DeviceIdentity) -> Self {
        let (pk, dn) = (gateway.product_key(), gateway.device_name());
        let sys = text!("/sys/", pk, "/", dn, "/thing/topo/");
        let session = text!("/ext/session/", pk, "/", dn, "/combine/");
        SessionTopics {
            topo_add: text!(sys, "add"),
            topo_add_reply: text!(sys, "add_reply"),
            topo_get: text!(sys, "get"),
            topo_get_reply: text!(sys, "get_reply"),
            login: text!(session, "login"),
            login_reply: text!(session, "login_reply"),
            logout: text!(session, "logout"),
            logout_reply: text!(session, "logout_reply"),
            error: text!("/ext/error/", pk, "/", dn),
        }
    }

    fn subscribed(&self) -> [&str; 5] {
        [
            &self.topo_add_reply,
            &self.topo_get_reply,
            &self.login_reply,
            &self.logout_reply,
            &self.error,
        ]
    }
}

/// The session machine of a gateway and its sub-devices.
pub struct Gateway {
    config: GatewayConfig,
    topics: SessionTopics,
    slots: Vec<Slot>,
    by_identity: BTreeMap<(String, String), usize>,
    pending: BTreeMap<u64, Pending>,
    actions: VecDeque<GatewayAction>,
    backoff: Backoff,
    next_id: u64,
    connected: bool,
    now: Instant,
}

impl Gateway {
    /// A gateway for `config.subdevices`; `Err` when the list is empty, names a sub-device
    /// twice, or names the gateway itself (the cloud refuses that with 6402).
    pub fn new(config: GatewayConfig, now: Instant) -> Result<Self, Error> {
        if config.subdevices.is_empty() {
            return Err(Error::InvalidConfig(
                "a gateway needs at least one sub-device",
            ));
        }
        if config.retry.max_attempts == 0 || config.reply_timeout.is_zero() {
            return Err(Error::InvalidConfig(
                "gateway retry attempts and reply timeout must be above 0",
            ));
        }
        let mut by_identity = BTreeMap::new();
        for (index, sub) in config.subdevices.iter().enumerate() {
            let key = identity_key(&sub.identity);
            if sub.identity == config.gateway {
                return Err(Error::InvalidConfig(
                    "a gateway cannot be its own sub-device",
                ));
            }
            if by_identity.insert(key, index).is_some() {
                return Err(Error::InvalidConfig("a sub-device is listed twice"));
            }
        }
        let slots = config
            .subdevices
            .iter()
            .map(|_| Slot {
                state: SubdeviceState::Idle,
                attempts: 0,
                in_topology: false,
            })
            .collect();
        Ok(Gateway {
            topics: SessionTopics::new(&config.gateway),
            backoff: Backoff::new(config.seed),
            config,
            slots,
            by_identity,
            pending: BTreeMap::new(),
            actions: VecDeque::new(),
            next_id: 1,
            connected: false,
            now,
        })
    }

    /// Where sub-device `index` stands.
    pub fn state(&self, index: usize) -> Option<&SubdeviceState> {
        self.slots.get(index).map(|s| &s.state)
    }

    /// Whether `topic` is one of the gateway's session topics (feed its messages to `handle`).
    pub fn handles(&self, topic: &str) -> bool {
        self.topics.subscribed().contains(&topic)
    }

    /// The sub-device whose OTA topic this is (`/ota/device/*/{pk}/{dn}`,
    /// `/sys/{pk}/{dn}/thing/...`), if it is one of ours.
    pub fn subdevice_of_topic(&self, topic: &str) -> Option<usize> {
        let (pk, dn) = if let Some(rest) = topic.strip_prefix("/ota/device/") {
            let mut parts = rest.split('/').skip(1);
            (parts.next()?, parts.next()?)
        } else {
            let mut parts = topic.strip_prefix("/sys/")?.split('/');
            (parts.next()?, parts.next()?)
        };
        self.by_identity.get(&(pk.into(), dn.into())).copied()
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<GatewayAction> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called next (now when actions are queued).
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.actions.is_empty() {
            return Some(self.now);
        }
        let replies = self.pending.values().map(|p| p.deadline);
        let retries = self.slots.iter().filter_map(|s| match s.state {
            SubdeviceState::Waiting(at) if self.connected => Some(at),
            _ => None,
        });
        replies.chain(retries).min()
    }

    /// Asks the cloud to end sub-device `index`'s session (e.g. it was removed from the
    /// gateway); its agent must stop at the `SubdeviceOffline` that follows.
    pub fn logout(&mut self, now: Instant, index: usize) {
        self.advance(now);
        let Some(slot) = self.slots.get_mut(index) else {
            return;
        };
        let was_online = slot.state == SubdeviceState::Online;
        slot.state = SubdeviceState::LoggedOut;
        if was_online {
            self.actions
                .push_back(GatewayAction::SubdeviceOffline { index });
        }
        if self.connected {
            let id = self.take_id();
            let identity = &self.config.subdevices[index].identity;
            let mut payload = Vec::new();
            messages::encode_logout(
                &mut payload,
                id,
                identity.product_key(),
                identity.device_name(),
            );
            let topic = self.topics.logout.clone();
            self.actions
                .push_back(GatewayAction::Publish { topic, payload });
        }
    }

    /// One input.
    pub fn handle(&mut self, now: Instant, event: GatewayEvent<'_>) {
        self.advance(now);
        match event {
            GatewayEvent::Connected => self.on_connected(),
            GatewayEvent::Disconnected => self.on_disconnected(),
            GatewayEvent::Message { topic, payload } => self.on_message(topic, payload),
        }
    }

    /// Time passed: replies that did not come count as failures, due retries start.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        if !self.connected {
            return;
        }
        let expired: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= self.now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(request) = self.pending.remove(&id) {
                if request.kind == RequestKind::TopoGet {
                    self.after_topology_list();
                } else {
                    for index in request.devices {
                        if matches!(
                            self.slots[index].state,
                            SubdeviceState::AddingTopology | SubdeviceState::LoggingIn
                        ) {
                            self.retry_later(index, "no reply from the cloud");
                        }
                    }
                }
            }
        }
        let due: Vec<usize> = (0..self.slots.len())
            .filter(
                |&i| matches!(self.slots[i].state, SubdeviceState::Waiting(at) if at <= self.now),
            )
            .collect();
        self.start(&due);
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(now);
    }

    fn take_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn on_connected(&mut self) {
        self.connected = true;
        self.pending.clear();
        for topic in self.topics.subscribed() {
            let topic = String::from(topic);
            self.actions.push_back(GatewayAction::Subscribe { topic });
        }
        for slot in &mut self.slots {
            slot.attempts = 0;
            if !matches!(
                slot.state,
                SubdeviceState::GaveUp(_) | SubdeviceState::LoggedOut
            ) {
                slot.state = SubdeviceState::Idle;
            }
        }
        let id = self.take_id();
        let mut payload = Vec::new();
        messages::encode_topo_get(&mut payload, id);
        self.send(id, RequestKind::TopoGet, Vec::new(), payload);
    }

    fn on_disconnected(&mut self) {
        self.connected = false;
        self.pending.clear();
        for index in 0..self.slots.len() {
            let slot = &mut self.slots[index];
            match slot.state {
                SubdeviceState::GaveUp(_) | SubdeviceState::LoggedOut => {}
                SubdeviceState::Online => {
                    slot.state = SubdeviceState::Idle;
                    self.actions
                        .push_back(GatewayAction::SubdeviceOffline { index });
                }
                _ => slot.state = SubdeviceState::Idle,
            }
        }
    }

    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        if !self.connected || !self.handles(topic) {
            return;
        }
        let Ok(reply) = messages::parse_reply(payload) else {
            return; // not a reply we can act on; its request times out and is retried
        };
        if topic == self.topics.error || topic == self.topics.logout_reply {
            for (pk, dn) in &reply.devices {
                if let Some(&index) = self.by_identity.get(&(pk.clone(), dn.clone())) {
                    self.on_session_notice(index, reply.code);
                }
            }
            return;
        }
        let Some(request) = reply.id.and_then(|id| self.pending.remove(&id)) else {
            return; // a reply to nothing we asked (or asked before a reconnect)
        };
        match request.kind {
            RequestKind::TopoGet => {
                if reply.code == 200 {
                    for (pk, dn) in &reply.devices {
                        if let Some(&index) = self.by_identity.get(&(pk.clone(), dn.clone())) {
                            self.slots[index].in_topology = true;
                        }
                    }
                }
                self.after_topology_list();
            }
            RequestKind::TopoAdd => self.on_topo_add_reply(request.devices, reply.code),
            RequestKind::Login => {
                for index in request.devices {
                    self.on_login_reply(index, reply.code);
                }
            }
        }
    }

    fn after_topology_list(&mut self) {
        let idle: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].state == SubdeviceState::Idle)
            .collect();
        self.start(&idle);
    }

    /// Sends what each of `indices` needs next: its topology, or its login.
    fn start(&mut self, indices: &[usize]) {
        let (known, unknown): (Vec<usize>, Vec<usize>) = indices
            .iter()
            .copied()
            .partition(|&i| self.slots[i].in_topology);
        for chunk in unknown.chunks(TOPO_BATCH) {
            self.send_topo_add(chunk);
        }
        for index in known {
            self.send_login(index);
        }
    }

    fn signed(&self, index: usize) -> (String, u64) {
        let sub = &self.config.subdevices[index];
        let (pk, dn) = (sub.identity.product_key(), sub.identity.device_name());
        let timestamp = self.now.as_millis();
        let text = sign::sign_text(&messages::client_id(pk, dn), dn, pk, timestamp);
        (sign::hmac_sha256_hex(&sub.secret, &text), timestamp)
    }

    fn send_topo_add(&mut self, indices: &[usize]) {
        let id = self.take_id();
        let signs: Vec<(String, u64)> = indices.iter().map(|&i| self.signed(i)).collect();
        let devices: Vec<SignedDevice<'_>> = indices
            .iter()
            .zip(&signs)
            .map(|(&i, (sign, timestamp))| {
                let identity = &self.config.subdevices[i].identity;
                SignedDevice {
                    product_key: identity.product_key(),
                    device_name: identity.device_name(),
                    timestamp: *timestamp,
                    sign,
                }
            })
            .collect();
        let mut payload = Vec::new();
        messages::encode_topo_add(&mut payload, id, &devices);
        for &i in indices {
            self.slots[i].state = SubdeviceState::AddingTopology;
        }
        self.send(id, RequestKind::TopoAdd, indices.to_vec(), payload);
    }

    fn send_login(&mut self, index: usize) {
        let id = self.take_id();
        let (sign, timestamp) = self.signed(index);
        let identity = &self.config.subdevices[index].identity;
        let device = SignedDevice {
            product_key: identity.product_key(),
            device_name: identity.device_name(),
            timestamp,
            sign: &sign,
        };
        let mut payload = Vec::new();
        messages::encode_login(&mut payload, id, &device);
        self.slots[index].state = SubdeviceState::LoggingIn;
        self.send(id, RequestKind::Login, alloc::vec![index], payload);
    }

    fn send(&mut self, id: u64, kind: RequestKind, devices: Vec<usize>, payload: Vec<u8>) {
        let topic = match kind {
            RequestKind::TopoGet => self.topics.topo_get.clone(),
            RequestKind::TopoAdd => self.topics.topo_add.clone(),
            RequestKind::Login => self.topics.login.clone(),
        };
        self.actions
            .push_back(GatewayAction::Publish { topic, payload });
        let deadline = self.now.saturating_add(self.config.reply_timeout);
        self.pending.insert(
            id,
            Pending {
                kind,
                devices,
                deadline,
            },
        );
    }

    fn on_topo_add_reply(&mut self, mut devices: Vec<usize>, code: u32) {
        // Only those still waiting for this answer (not given up or logged out meanwhile).
        devices.retain(|&i| self.slots[i].state == SubdeviceState::AddingTopology);
        match code {
            200 => {
                for &index in &devices {
                    self.slots[index].in_topology = true;
                }
                self.start(&devices);
            }
            429 | 428 | 500 => {
                for index in devices {
                    self.retry_later(index, &reason_of(code));
                }
            }
            // A refusal that names no device: ask for each on its own to find the culprit.
            _ if devices.len() > 1 => {
                for index in devices {
                    self.send_topo_add(&[index]);
                }
            }
            _ => {
                for index in devices {
                    self.give_up(index, text!("topology refused: ", reason_of(code)));
                }
            }
        }
    }

    fn on_login_reply(&mut self, index: usize, code: u32) {
        if self.slots[index].state != SubdeviceState::LoggingIn {
            return; // given up or logged out meanwhile
        }
        match code {
            200 => {
                let slot = &mut self.slots[index];
                slot.state = SubdeviceState::Online;
                slot.attempts = 0;
                self.actions
                    .push_back(GatewayAction::SubdeviceOnline { index });
            }
            6401 => {
                self.slots[index].in_topology = false;
                self.retry_later(index, &reason_of(code));
            }
            429 | 428 | 500 => self.retry_later(index, &reason_of(code)),
            _ => self.give_up(index, text!("login refused: ", reason_of(code))),
        }
    }

    fn on_session_notice(&mut self, index: usize, code: u32) {
        let was_online = self.slots[index].state == SubdeviceState::Online;
        match code {
            200 => return, // a logout we asked for
            521 | 522 | 6100 => {
                if !matches!(self.slots[index].state, SubdeviceState::GaveUp(_)) {
                    self.give_up(index, text!("session ended: ", reason_of(code)));
                }
                return;
            }
            6401 => self.slots[index].in_topology = false,
            _ => {}
        }
        if !was_online {
            return; // not logged in: nothing to end; a login under way gets its own reply
        }
        self.slots[index].state = SubdeviceState::Idle;
        self.actions
            .push_back(GatewayAction::SubdeviceOffline { index });
        if code == 520 {
            self.start(&[index]); // the session is gone: log in again at once
        } else {
            // 427 (logged in elsewhere), 6401 and anything else: again, politely.
            self.retry_later(index, &reason_of(code));
        }
    }

    fn retry_later(&mut self, index: usize, reason: &str) {
        let slot = &mut self.slots[index];
        slot.attempts += 1;
        if slot.attempts >= self.config.retry.max_attempts {
            let attempts = slot.attempts;
            self.give_up(index, text!(reason, " (", attempts, " attempts)"));
            return;
        }
        let retry = self.config.retry;
        let delay = self
            .backoff
            .delay(retry.base_delay, retry.max_delay, slot.attempts - 1);
        slot.state = SubdeviceState::Waiting(self.now.saturating_add(delay));
    }

    fn give_up(&mut self, index: usize, reason: String) {
        if self.slots[index].state == SubdeviceState::Online {
            self.actions
                .push_back(GatewayAction::SubdeviceOffline { index });
        }
        self.slots[index].state = SubdeviceState::GaveUp(reason.clone());
        self.actions
            .push_back(GatewayAction::SubdeviceGaveUp { index, reason });
    }
}

fn identity_key(identity: &DeviceIdentity) -> (String, String) {
    (identity.product_key().into(), identity.device_name().into())
}

/// The meaning of a code of docs/protocol.md §14, with the code.
fn reason_of(code: u32) -> String {
    let meaning = match code {
        401 => "401 sign check failed",
        427 => "427 logged in elsewhere",
        428 => "428 too many sub-devices online on this gateway",
        429 => "429 too many logins in a minute",
        460 => "460 bad request",
        500 => "500 cloud error",
        520 => "520 no session",
        521 => "521 device deleted",
        522 => "522 device disabled",
        6100 => "6100 no such device",
        6287 => "6287 bad sign (check the sub-device's secret)",
        6401 => "6401 no topology between gateway and sub-device",
        6402 => "6402 a gateway cannot add itself",
        _ => return text!("error code ", code),
    };
    String::from(meaning)
}

#[cfg(test)]
mod power_loss;
#[cfg(test)]
mod tests;
