//! Gateways and the sub-devices behind them (docs/protocol.md §14): the topology each gateway
//! keeps, the sub-device sessions it opens with `combine/login` over its own MQTT connection,
//! the notices that end them, and the faults that make every error code of §14 reachable.
//!
//! A sub-device's OTA messages travel on its own topics (§1) over the gateway's connection, so
//! the job engine sees them as the sub-device's without knowing about gateways. This module
//! only decides whether the sub-device has a session: a message for one without gets a 520
//! notice on the gateway's `/ext/error` topic and is dropped, as the platform does.

use crate::crypto::{constant_time_eq, hex_lower, hmac_sha1, hmac_sha256};
use crate::faults::Times;
use crate::jobs::{Engine, Outbound};
use crate::messages::{text, Uplink};
use crate::DeviceId;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

/// ProductKey of the sub-devices made by [`Sim::add_subdevice`](crate::Sim::add_subdevice).
pub const SUBDEVICE_PRODUCT_KEY: &str = "a1OtaSimSub";

/// Logins of one sub-device allowed per minute; the next one gets 429 (§14).
const LOGINS_PER_MINUTE: usize = 5;

/// Sub-devices online on one gateway at most; the next login gets 428 (§14).
const MAX_ONLINE_PER_GATEWAY: usize = 2000;

/// Most entries in one topology request and in one batch login (§14).
const MAX_TOPO_BATCH: usize = 30;
const MAX_LOGIN_BATCH: usize = 50;

/// Firmware requests of each sub-device shown in `/status` (the latest ones).
const REPORTED_DOWNLOADS: usize = 20;

/// The progress step at which `kick-CODE` ends the session, when the spec names none.
const DEFAULT_KICK_STEP: i64 = 30;

/// A misbehaviour of the cloud's sub-device session handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatewayFault {
    /// Answer the sub-device's login with this code (429, 428, 460, 500, 6100, 6287, 6401,
    /// 521, 522) instead of checking it.
    Login(u32),
    /// Answer a topology add that names the sub-device with this code (460, 401, 6402, 500).
    Topology(u32),
    /// Once the sub-device reported progress of at least `at_step`, end its session with a
    /// notice of `code` on the gateway's `/ext/error` topic (520, 427, 521, 522, 6401):
    /// "mid-download".
    Kick {
        /// The notice's code.
        code: u32,
        /// The progress step that triggers it.
        at_step: i64,
    },
}

impl fmt::Display for GatewayFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GatewayFault::Login(c) => write!(f, "login-{c}"),
            GatewayFault::Topology(c) => write!(f, "topo-{c}"),
            GatewayFault::Kick { code, at_step } => write!(f, "kick-{code}:{at_step}"),
        }
    }
}

/// The gateway part of the `--fault` grammar (shown by `ota-sim serve --help`).
pub const GATEWAY_FAULT_GRAMMAR: &str = "\
Sub-device sessions (serve --gateways; DEVICE is a sub-device name such as gw0001-node01):
  login-6287            answer the sub-device's login with 6287 (also 429, 428, 460, 500,
                        6100, 6401, 521, 522)
  topo-401              answer a topology add naming it with 401 (also 460, 6402, 500)
  kick-520:30           once it reported progress 30 or more, end its session with a 520
                        notice on /ext/error (also 427, 521, 522, 6401); the step defaults to 30
Examples: --fault gw0001-node02:login-6287@always   --fault gw0001-node01:kick-520";

const LOGIN_CODES: [u32; 9] = [429, 428, 460, 500, 6100, 6287, 6401, 521, 522];
const TOPO_CODES: [u32; 4] = [460, 401, 6402, 500];
const KICK_CODES: [u32; 5] = [520, 427, 521, 522, 6401];

/// One gateway `--fault` argument, parsed: `[DEVICE:]NAME-CODE[:STEP][@TIMES]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFaultSpec {
    /// The sub-device name it is for; `None`: every sub-device.
    pub device: Option<String>,
    /// The fault.
    pub fault: GatewayFault,
    /// How many logins, topology requests or kicks it acts on.
    pub times: Times,
}

impl FromStr for GatewayFaultSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<GatewayFaultSpec, String> {
        let bad = |why: String| format!("bad --fault {text:?}: {why}");
        let (body, times) = match text.rsplit_once('@') {
            Some((body, t)) => (body, parse_times(t).map_err(bad)?),
            None => (text, Times::Once),
        };
        let mut parts: Vec<&str> = body.split(':').collect();
        let is_name = |p: &str| {
            ["login-", "topo-", "kick-"]
                .iter()
                .any(|n| p.starts_with(n))
        };
        let device = match parts.first() {
            Some(first) if !is_name(first) && parts.len() > 1 => {
                if first.is_empty() {
                    return Err(bad("empty device name".into()));
                }
                Some(parts.remove(0).to_owned())
            }
            _ => None,
        };
        let (name, code) = parts
            .first()
            .and_then(|p| p.split_once('-'))
            .ok_or_else(|| bad("not a gateway fault".into()))?;
        let code: u32 = code
            .parse()
            .map_err(|_| bad(format!("{code:?} is not a code")))?;
        let allowed: &[u32] = match name {
            "login" => &LOGIN_CODES,
            "topo" => &TOPO_CODES,
            "kick" => &KICK_CODES,
            _ => return Err(bad(format!("unknown fault {name:?}"))),
        };
        if !allowed.contains(&code) {
            return Err(bad(format!("{name} takes one of the codes {allowed:?}")));
        }
        let extra = &parts[1..];
        let fault = match (name, extra) {
            ("login", []) => GatewayFault::Login(code),
            ("topo", []) => GatewayFault::Topology(code),
            ("kick", []) => GatewayFault::Kick {
                code,
                at_step: DEFAULT_KICK_STEP,
            },
            ("kick", [step]) => match step.parse::<i64>() {
                Ok(s) if (1..=100).contains(&s) => GatewayFault::Kick { code, at_step: s },
                _ => return Err(bad(format!("{step:?} is not a progress step 1-100"))),
            },
            _ => return Err(bad(format!("{name}-{code} takes no more numbers"))),
        };
        Ok(GatewayFaultSpec {
            device,
            fault,
            times,
        })
    }
}

fn parse_times(t: &str) -> Result<Times, String> {
    match t {
        "once" => Ok(Times::Once),
        "always" => Ok(Times::Always),
        n => match n.parse::<u32>() {
            Ok(0) | Err(_) => Err(format!("times {n:?} is not once, always or a count >= 1")),
            Ok(n) => Ok(Times::Count(n)),
        },
    }
}

struct Armed {
    device: Option<DeviceId>,
    fault: GatewayFault,
    times: Times,
    fired: u32,
}

impl Armed {
    fn applies(&self, device: &DeviceId) -> bool {
        let left = match self.times {
            Times::Once => self.fired < 1,
            Times::Count(n) => self.fired < n,
            Times::Always => true,
        };
        left && self.device.as_ref().is_none_or(|d| d == device)
    }
}

#[derive(Default)]
struct Sub {
    /// The gateway it was made for (or first added to), for notices when it has no session.
    home: Option<DeviceId>,
    /// The gateway it is logged in through.
    session: Option<DeviceId>,
    /// When its recent logins happened (the last minute's).
    logins: VecDeque<Instant>,
    /// Successful logins in all.
    login_count: u32,
}

/// The gateways, their topologies and the sub-device sessions.
#[derive(Default)]
pub(crate) struct Gateways {
    topology: BTreeMap<DeviceId, BTreeSet<DeviceId>>,
    subs: BTreeMap<DeviceId, Sub>,
    faults: Vec<Armed>,
    outbound: Vec<Outbound>,
}

/// The gateway a session topic belongs to, and the request's name (`topo/add`, `login`, ...).
fn session_topic(topic: &str) -> Option<(DeviceId, &str)> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["", "sys", pk, dn, "thing", "topo", op @ ("add" | "get" | "delete")] => {
            Some((DeviceId::new(*pk, *dn), *op))
        }
        ["", "ext", "session", pk, dn, "combine", op @ ("login" | "logout" | "batch_login" | "batch_logout")] => {
            Some((DeviceId::new(*pk, *dn), *op))
        }
        _ => None,
    }
}

fn device_json(d: &DeviceId) -> Value {
    json!({"productKey": d.product_key, "deviceName": d.device_name})
}

fn meaning(code: u32) -> &'static str {
    match code {
        200 => "success",
        401 => "sign check failed",
        427 => "device connect in elsewhere",
        428 => "too many sub-devices online under the gateway",
        429 => "rate limit, too many logins",
        460 => "request parameter error",
        500 => "server error",
        520 => "device no session",
        521 => "device deleted",
        522 => "device forbidden",
        6100 => "device not found",
        6287 => "invalid sign",
        6401 => "topological relation not exist",
        6402 => "topo relation cannot add by self",
        _ => "error",
    }
}

impl Gateways {
    /// Whether `topic` is a session request this module answers.
    pub(crate) fn handles(topic: &str) -> bool {
        session_topic(topic).is_some()
    }

    pub(crate) fn take_outbound(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbound)
    }

    /// Registers a sub-device made for `gateway` (not yet in its topology).
    /// Registers a gateway with an empty topology.
    pub(crate) fn add_gateway(&mut self, gateway: DeviceId) {
        self.topology.entry(gateway).or_default();
    }

    /// How many gateways are registered.
    pub(crate) fn gateway_count(&self) -> usize {
        self.topology.len()
    }

    /// How many sub-devices were registered for `gateway`.
    pub(crate) fn subdevice_count(&self, gateway: &DeviceId) -> usize {
        self.subs
            .values()
            .filter(|s| s.home.as_ref() == Some(gateway))
            .count()
    }

    /// How many times fault `index` fired.
    pub(crate) fn fault_fired(&self, index: usize) -> u32 {
        self.faults.get(index).map_or(0, |a| a.fired)
    }

    /// The sub-devices in `gateway`'s topology.
    pub(crate) fn topology_of(&self, gateway: &DeviceId) -> Vec<DeviceId> {
        self.topology
            .get(gateway)
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Puts `sub` into `gateway`'s topology, as the console does.
    pub(crate) fn add_to_topology(&mut self, gateway: &DeviceId, sub: &DeviceId) {
        self.topology
            .entry(gateway.clone())
            .or_default()
            .insert(sub.clone());
        self.subs
            .entry(sub.clone())
            .or_default()
            .home
            .get_or_insert(gateway.clone());
    }

    /// How many successful logins `sub` made.
    pub(crate) fn login_count(&self, sub: &DeviceId) -> u32 {
        self.subs.get(sub).map_or(0, |s| s.login_count)
    }

    pub(crate) fn add_subdevice(&mut self, gateway: &DeviceId, sub: &DeviceId) {
        self.topology.entry(gateway.clone()).or_default();
        self.subs.entry(sub.clone()).or_default().home = Some(gateway.clone());
    }

    pub(crate) fn add_fault(
        &mut self,
        device: Option<DeviceId>,
        fault: GatewayFault,
        times: Times,
    ) -> usize {
        self.faults.push(Armed {
            device,
            fault,
            times,
            fired: 0,
        });
        self.faults.len() - 1
    }

    /// A topology or login fault for `device`, counted as fired.
    fn take_fault(
        &mut self,
        device: &DeviceId,
        want: impl Fn(GatewayFault) -> Option<u32>,
    ) -> Option<u32> {
        let armed = self
            .faults
            .iter_mut()
            .find(|a| a.applies(device) && want(a.fault).is_some())?;
        armed.fired += 1;
        tracing::info!("fault {} fired for {device}", armed.fault);
        want(armed.fault)
    }

    fn reply(&mut self, gateway: &DeviceId, topic: String, id: &Value, code: u32, data: Value) {
        let payload = json!({"id": id, "code": code, "message": meaning(code), "data": data});
        tracing::info!("{gateway}: {topic} code {code}");
        self.outbound.push(Outbound {
            topic,
            payload: payload.to_string().into_bytes(),
        });
    }

    fn notice(&mut self, gateway: &DeviceId, sub: &DeviceId, code: u32) {
        let topic = format!("/ext/error/{}/{}", gateway.product_key, gateway.device_name);
        tracing::info!("{gateway}: notice {code} ({}) for {sub}", meaning(code));
        let payload =
            json!({"id": null, "code": code, "message": meaning(code), "data": device_json(sub)});
        self.outbound.push(Outbound {
            topic,
            payload: payload.to_string().into_bytes(),
        });
    }

    /// Ends `sub`'s session (if any): it is offline from now on.
    fn end_session(&mut self, engine: &mut Engine, sub: &DeviceId) -> Option<DeviceId> {
        let gateway = self.subs.get_mut(sub)?.session.take()?;
        if let Some(d) = engine.devices.get_mut(sub) {
            d.online = false;
        }
        tracing::info!("{sub} is offline (session through {gateway} ended)");
        Some(gateway)
    }

    /// The gateway connected anew, or its connection ended: the sessions of its previous
    /// connection are gone.
    pub(crate) fn gateway_connected(&mut self, engine: &mut Engine, gateway: &DeviceId) {
        let ended: Vec<DeviceId> = self
            .subs
            .iter()
            .filter(|(_, s)| s.session.as_ref() == Some(gateway))
            .map(|(d, _)| d.clone())
            .collect();
        for sub in ended {
            self.end_session(engine, &sub);
        }
    }

    /// Whether the engine may take this OTA message of `device`: yes unless it is a sub-device
    /// without a session, which gets a 520 notice instead.
    pub(crate) fn admit(&mut self, device: &DeviceId) -> bool {
        let Some(sub) = self.subs.get(device) else {
            return true;
        };
        if sub.session.is_some() {
            return true;
        }
        if let Some(home) = sub.home.clone() {
            self.notice(&home, device, 520);
        }
        tracing::info!("{device} sent a message without a session: dropped");
        false
    }

    /// After the engine took an uplink: a kick fault may end the session now.
    pub(crate) fn after_uplink(
        &mut self,
        engine: &mut Engine,
        device: &DeviceId,
        step: Option<i64>,
    ) {
        let Some(step) = step else { return };
        if self.subs.get(device).is_none_or(|s| s.session.is_none()) {
            return;
        }
        let code = self.take_fault(device, |f| match f {
            GatewayFault::Kick { code, at_step } if step >= at_step => Some(code),
            _ => None,
        });
        if let Some(code) = code {
            if let Some(gateway) = self.end_session(engine, device) {
                self.notice(&gateway, device, code);
            }
        }
    }

    /// A session request of a gateway.
    pub(crate) fn handle(
        &mut self,
        engine: &mut Engine,
        secret_of: &dyn Fn(&DeviceId) -> Option<String>,
        topic: &str,
        payload: &[u8],
        now: Instant,
    ) {
        let Some((gateway, op)) = session_topic(topic) else {
            return;
        };
        if !engine.devices.contains_key(&gateway) {
            tracing::warn!("session request from unknown gateway {gateway} ignored");
            return;
        }
        let reply_topic = format!("{topic}_reply");
        let json: Value = match crate::lenient_json::parse(payload) {
            Ok(v) if v.is_object() => v,
            _ => {
                tracing::warn!("{gateway}: {topic}: not a JSON object");
                return self.reply(&gateway, reply_topic, &Value::Null, 460, json!({}));
            }
        };
        let id = json.get("id").cloned().unwrap_or(Value::Null);
        let params = json.get("params").cloned().unwrap_or(Value::Null);
        match op {
            "get" => {
                let list: Vec<Value> = self
                    .topology
                    .get(&gateway)
                    .into_iter()
                    .flatten()
                    .map(device_json)
                    .collect();
                self.reply(&gateway, reply_topic, &id, 200, Value::Array(list));
            }
            "add" => {
                let (code, data) = self.topo_add(engine, secret_of, &gateway, &params);
                self.reply(&gateway, reply_topic, &id, code, data);
            }
            "delete" => {
                let (code, data) = self.topo_delete(engine, &gateway, &params);
                self.reply(&gateway, reply_topic, &id, code, data);
            }
            "login" => {
                let (code, data) = match self.login(engine, secret_of, &gateway, &params, now) {
                    Ok(sub) => (200, device_json(&sub)),
                    Err((code, sub)) => (code, sub.as_ref().map_or(json!({}), device_json)),
                };
                self.reply(&gateway, reply_topic, &id, code, data);
            }
            "batch_login" => {
                let list = params.get("deviceList").and_then(Value::as_array);
                let (code, data) = match list {
                    Some(list) if !list.is_empty() && list.len() <= MAX_LOGIN_BATCH => {
                        let mut ok = Vec::new();
                        let mut first_error = None;
                        for entry in list {
                            match self.login(engine, secret_of, &gateway, entry, now) {
                                Ok(sub) => ok.push(device_json(&sub)),
                                Err((code, _)) => {
                                    first_error.get_or_insert(code);
                                }
                            }
                        }
                        (first_error.unwrap_or(200), Value::Array(ok))
                    }
                    _ => (460, json!([])),
                };
                self.reply(&gateway, reply_topic, &id, code, data);
            }
            "logout" => {
                let (code, data) = match device_of(&params) {
                    Some(sub) => {
                        self.end_session(engine, &sub);
                        (200, device_json(&sub))
                    }
                    None => (460, json!({})),
                };
                self.reply(&gateway, reply_topic, &id, code, data);
            }
            _ => {
                let list = params.as_array().cloned().unwrap_or_default();
                let subs: Vec<DeviceId> = list.iter().filter_map(device_of).collect();
                let code = if subs.is_empty() || subs.len() != list.len() {
                    460
                } else {
                    200
                };
                for sub in &subs {
                    self.end_session(engine, sub);
                }
                let data = Value::Array(subs.iter().map(device_json).collect());
                self.reply(&gateway, reply_topic, &id, code, data);
            }
        }
    }

    fn topo_add(
        &mut self,
        engine: &Engine,
        secret_of: &dyn Fn(&DeviceId) -> Option<String>,
        gateway: &DeviceId,
        params: &Value,
    ) -> (u32, Value) {
        let Some(list) = params
            .as_array()
            .filter(|l| !l.is_empty() && l.len() <= MAX_TOPO_BATCH)
        else {
            return (460, json!([]));
        };
        let mut added = Vec::new();
        for entry in list {
            let Some(sub) = device_of(entry) else {
                return (460, json!([]));
            };
            if let Some(code) = self.take_fault(&sub, |f| match f {
                GatewayFault::Topology(c) => Some(c),
                _ => None,
            }) {
                return (code, json!([]));
            }
            if sub == *gateway {
                return (6402, json!([]));
            }
            let Some(secret) = engine.devices.get(&sub).and_then(|_| secret_of(&sub)) else {
                return (6100, json!([]));
            };
            if let Err(code) = check_sign(entry, &secret) {
                return (if code == 6287 { 401 } else { code }, json!([]));
            }
            added.push(sub);
        }
        for sub in &added {
            self.add_to_topology(gateway, sub);
            tracing::info!("{gateway}: topology now has {sub}");
        }
        (200, Value::Array(added.iter().map(device_json).collect()))
    }

    fn topo_delete(
        &mut self,
        engine: &mut Engine,
        gateway: &DeviceId,
        params: &Value,
    ) -> (u32, Value) {
        let Some(list) = params
            .as_array()
            .filter(|l| !l.is_empty() && l.len() <= MAX_TOPO_BATCH)
        else {
            return (460, json!([]));
        };
        let subs: Vec<DeviceId> = list.iter().filter_map(device_of).collect();
        if subs.len() != list.len() {
            return (460, json!([]));
        }
        for sub in &subs {
            if let Some(set) = self.topology.get_mut(gateway) {
                set.remove(sub);
            }
            if self
                .subs
                .get(sub)
                .is_some_and(|s| s.session.as_ref() == Some(gateway))
            {
                self.end_session(engine, sub);
            }
        }
        (200, Value::Array(subs.iter().map(device_json).collect()))
    }

    /// One sub-device login; `Err` carries the code and, when known, the sub-device.
    fn login(
        &mut self,
        engine: &mut Engine,
        secret_of: &dyn Fn(&DeviceId) -> Option<String>,
        gateway: &DeviceId,
        params: &Value,
        now: Instant,
    ) -> Result<DeviceId, (u32, Option<DeviceId>)> {
        let sub = device_of(params).ok_or((460, None))?;
        let fail = |code: u32| (code, Some(sub.clone()));
        let client_id = text(params.get("clientId")).ok_or_else(|| fail(460))?;
        if client_id != format!("{}&{}", sub.product_key, sub.device_name)
            && client_id != format!("{}.{}", sub.product_key, sub.device_name)
        {
            return Err(fail(460));
        }
        if let Some(code) = self.take_fault(&sub, |f| match f {
            GatewayFault::Login(c) => Some(c),
            _ => None,
        }) {
            return Err(fail(code));
        }
        let secret = engine
            .devices
            .get(&sub)
            .and_then(|_| secret_of(&sub))
            .ok_or_else(|| fail(6100))?;
        if !self.topology.get(gateway).is_some_and(|t| t.contains(&sub)) {
            return Err(fail(6401));
        }
        check_sign(params, &secret).map_err(fail)?;
        let entry = self.subs.entry(sub.clone()).or_default();
        while entry
            .logins
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60))
        {
            entry.logins.pop_front();
        }
        if entry.logins.len() >= LOGINS_PER_MINUTE {
            return Err(fail(429));
        }
        let online_here = self
            .subs
            .values()
            .filter(|s| s.session.as_ref() == Some(gateway))
            .count();
        if online_here >= MAX_ONLINE_PER_GATEWAY {
            return Err(fail(428));
        }
        let entry = self.subs.entry(sub.clone()).or_default();
        entry.logins.push_back(now);
        entry.login_count += 1;
        let previous = entry.session.replace(gateway.clone());
        if let Some(previous) = previous.filter(|p| p != gateway) {
            self.notice(&previous, &sub, 427);
        }
        // Online while its session lasts, whatever the engine tracks for direct devices.
        if let Some(d) = engine.devices.get_mut(&sub) {
            d.online = true;
        }
        tracing::info!("{sub} logged in through {gateway}");
        Ok(sub)
    }

    /// Whether `sub` has a session, and through which gateway.
    pub(crate) fn session_of(&self, sub: &DeviceId) -> Option<&DeviceId> {
        self.subs.get(sub)?.session.as_ref()
    }

    /// The `gateways` part of `/status`: each gateway's topology, with each sub-device's
    /// session and task states.
    pub(crate) fn report(
        &self,
        engine: &Engine,
        downloads: &crate::history::History<crate::DownloadRecord>,
    ) -> Value {
        let tasks = engine.task_views(None);
        let gateways: Vec<Value> = self
            .topology
            .iter()
            .map(|(gateway, topology)| {
                let mut subs: BTreeSet<&DeviceId> = topology.iter().collect();
                subs.extend(self.subs.iter().filter(|(_, s)| s.home.as_ref() == Some(gateway)).map(|(d, _)| d));
                let subs: Vec<Value> = subs
                    .into_iter()
                    .map(|sub| {
                        let s = self.subs.get(sub);
                        let states: Vec<Value> = tasks
                            .iter()
                            .filter(|t| t.device == *sub)
                            .map(|t| json!({"job": t.job.0, "module": t.module, "state": t.state, "last_step": t.last_step}))
                            .collect();
                        // The last requests of its firmware downloads (status and Range).
                        let fetched: Vec<&crate::DownloadRecord> = downloads
                            .iter()
                            .filter(|d| d.device.as_ref() == Some(sub))
                            .collect();
                        let fetched: Vec<Value> = fetched
                            [fetched.len().saturating_sub(REPORTED_DOWNLOADS)..]
                            .iter()
                            .map(|d| json!({"status": d.status, "range": d.range}))
                            .collect();
                        json!({
                            "product_key": sub.product_key, "device_name": sub.device_name,
                            "downloads": fetched,
                            "in_topology": topology.contains(sub),
                            "online": self.session_of(sub).is_some(),
                            "session_gateway": self.session_of(sub).map(|g| g.to_string()),
                            "logins": s.map_or(0, |s| s.login_count),
                            "tasks": states,
                        })
                    })
                    .collect();
                json!({"product_key": gateway.product_key, "device_name": gateway.device_name, "subdevices": subs})
            })
            .collect();
        let faults: Vec<Value> = self
            .faults
            .iter()
            .map(|a| json!({"device": a.device.as_ref().map(|d| d.to_string()), "fault": a.fault.to_string(), "fired": a.fired}))
            .collect();
        json!({"gateways": gateways, "faults": faults})
    }
}

/// The `productKey` and `deviceName` of a request entry.
fn device_of(entry: &Value) -> Option<DeviceId> {
    let pk = text(entry.get("productKey")).filter(|s| !s.is_empty())?;
    let dn = text(entry.get("deviceName")).filter(|s| !s.is_empty())?;
    Some(DeviceId::new(pk, dn))
}

/// Checks an entry's sign (§14): HMAC-SHA256 or HMAC-SHA1 with the sub-device's secret over
/// the parameters other than `sign`, `signMethod`/`signmethod` and `cleanSession`, sorted by
/// name, names and values concatenated; hex in either case; the timestamp's age is not checked.
/// `Err(460)` for a missing sign or an unknown method, `Err(6287)` for a wrong one.
fn check_sign(entry: &Value, secret: &str) -> Result<(), u32> {
    let object = entry.as_object().ok_or(460u32)?;
    let sign = text(object.get("sign"))
        .filter(|s| !s.is_empty())
        .ok_or(460u32)?;
    let method = text(
        object
            .get("signMethod")
            .or_else(|| object.get("signmethod")),
    );
    let mut signed: Vec<(&String, String)> = object
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "sign" | "signMethod" | "signmethod" | "cleanSession"
            )
        })
        .filter_map(|(k, v)| text(Some(v)).map(|v| (k, v)))
        .collect();
    signed.sort();
    let content: String = signed.iter().map(|(k, v)| format!("{k}{v}")).collect();
    let mac = match method.as_deref().map(str::to_ascii_lowercase).as_deref() {
        Some("hmacsha256") | None => hmac_sha256(secret.as_bytes(), content.as_bytes()),
        Some("hmacsha1") => hmac_sha1(secret.as_bytes(), content.as_bytes()),
        Some(_) => return Err(460),
    };
    match constant_time_eq(
        hex_lower(&mac).as_bytes(),
        sign.to_ascii_lowercase().as_bytes(),
    ) {
        true => Ok(()),
        false => Err(6287),
    }
}

/// Step of a progress uplink (for kick faults).
pub(crate) fn progress_step(uplink: &Uplink) -> Option<i64> {
    match uplink {
        Uplink::Progress { step, .. } => Some(*step),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(secret: &str, method: &str, upper: bool) -> Value {
        let content = "clientIdpk&dndeviceNamednproductKeypktimestamp42";
        let mac = match method {
            "hmacSha1" => hmac_sha1(secret.as_bytes(), content.as_bytes()),
            _ => hmac_sha256(secret.as_bytes(), content.as_bytes()),
        };
        let mut sign = hex_lower(&mac);
        if upper {
            sign = sign.to_uppercase();
        }
        json!({"productKey":"pk","deviceName":"dn","clientId":"pk&dn","timestamp":"42",
               "signMethod":method,"sign":sign,"cleanSession":"true"})
    }

    #[test]
    fn signs_are_checked_with_either_hmac_and_hex_case() {
        assert_eq!(
            check_sign(&signed("s3cret", "hmacSha256", true), "s3cret"),
            Ok(())
        );
        assert_eq!(
            check_sign(&signed("s3cret", "hmacsha256", false), "s3cret"),
            Ok(())
        );
        assert_eq!(
            check_sign(&signed("s3cret", "hmacSha1", false), "s3cret"),
            Ok(())
        );
        assert_eq!(
            check_sign(&signed("s3cret", "hmacSha256", true), "other"),
            Err(6287)
        );
        let mut unknown = signed("s3cret", "hmacSha256", true);
        unknown["signMethod"] = json!("md5");
        assert_eq!(check_sign(&unknown, "s3cret"), Err(460));
    }

    #[test]
    fn fault_specs_parse_and_refuse_what_they_must() {
        let spec: GatewayFaultSpec = "gw0001-node02:login-6287@always".parse().unwrap();
        assert_eq!(spec.device.as_deref(), Some("gw0001-node02"));
        assert_eq!(spec.fault, GatewayFault::Login(6287));
        assert_eq!(spec.times, Times::Always);
        let spec: GatewayFaultSpec = "kick-520".parse().unwrap();
        assert_eq!(
            spec.fault,
            GatewayFault::Kick {
                code: 520,
                at_step: 30
            }
        );
        let spec: GatewayFaultSpec = "n:kick-427:60@2".parse().unwrap();
        assert_eq!(
            spec.fault,
            GatewayFault::Kick {
                code: 427,
                at_step: 60
            }
        );
        assert!("login-200".parse::<GatewayFaultSpec>().is_err());
        assert!("kick-520:0".parse::<GatewayFaultSpec>().is_err());
        assert!("topo-401:3".parse::<GatewayFaultSpec>().is_err());
        assert!("cut:100".parse::<GatewayFaultSpec>().is_err());
    }
}
