//! A deterministic simulated world for the agent: a fake cloud and broker, a fake HTTP
//! server with chunking and faults, in-memory flash with injectable failures and power
//! cuts, a clock that jumps to the next deadline, and a step budget against livelock.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use md5::Digest;

use crate::agent::{Action, Agent, Boot, Config, Event, FetchId, Notification, Outcome};
use crate::identity::DeviceIdentity;
use crate::time::Instant;

/// A fault the HTTP server applies to one request (consumed in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Answer `200` with the whole image, ignoring Range.
    IgnoreRange,
    /// Close the connection (reset) after this many body bytes.
    CutAfter(usize),
    /// Send this many body bytes, then nothing at all.
    StallAfter(usize),
    /// Flip one byte of the image in this response (at this image offset).
    Corrupt(u64),
    /// `206` with a Content-Range that does not match the request.
    WrongRange,
    /// Send this many bytes beyond the end of the image.
    Extra(usize),
    /// Fail to connect.
    Refuse,
}

/// Where the power fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// At the n-th write (0-based); only `torn` bytes of it reach flash.
    Write { n: usize, torn: usize },
    /// At the n-th record save or clear (0-based); the old record stays.
    Save { n: usize },
    /// During activation.
    Activate,
}

/// What the application answers to a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Silent,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing more will happen.
    Quiet,
    /// The power failed at the configured cut.
    PowerLost,
    /// The agent asked for a reboot.
    Reboot,
}

struct HttpStream {
    fetch: FetchId,
    events: VecDeque<HttpStep>,
}

enum HttpStep {
    Response {
        status: u16,
        length: Option<u64>,
        range: Option<String>,
    },
    Body(Vec<u8>),
    End,
    Failed(&'static str),
}

pub struct World {
    pub config: Config,
    pub agent: Agent,
    pub now: Instant,
    pub image: Vec<u8>,
    pub version: String,
    pub running: String,
    pub boot_next: Option<String>,
    pub confirmed: bool,
    pub slot: Vec<u8>,
    pub record: Option<Vec<u8>>,
    pub transcript: Vec<String>,
    pub progress: Vec<i16>,
    pub informs: Vec<String>,
    pub outcomes: Vec<String>,
    pub notes: Vec<String>,
    /// The cloud's task JSON (without the url; one is signed per answer), if any.
    pub cloud_task: Option<String>,
    pub url_generation: u32,
    /// URLs with a generation below this are expired.
    pub url_valid_from: u32,
    pub faults: VecDeque<Fault>,
    pub chunk_sizes: Vec<usize>,
    chunk_cursor: usize,
    pub cut: Option<Cut>,
    pub fail_write: Option<usize>,
    pub fail_save: Option<usize>,
    pub fail_activate: bool,
    pub bootloader_falls_back: bool,
    pub health: Health,
    pub writes: usize,
    pub saves: usize,
    pub fetch_offsets: Vec<u64>,
    pub bytes_served: u64,
    pub online: bool,
    pub reply_to_requests: bool,
    inbox: VecDeque<Event<'static>>,
    messages: VecDeque<(String, Vec<u8>)>,
    http: Option<HttpStream>,
    pending_body: Option<(FetchId, Vec<u8>)>,
    pub steps: usize,
    pub max_steps: usize,
}

pub fn md5_hex(data: &[u8]) -> String {
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn test_image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

pub fn test_config() -> Config {
    let mut config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01").unwrap());
    config.write_block = 1024;
    config.checkpoint_interval = 4096;
    config.rules.allow_http = false;
    config.retry.base_delay = Duration::from_millis(500);
    config.retry.max_delay = Duration::from_secs(8);
    config.url_refresh.base_delay = Duration::from_secs(1);
    config
}

impl World {
    pub fn new(config: Config, image: Vec<u8>) -> Self {
        let agent = Agent::new(
            config.clone(),
            Boot {
                running_version: "1.0.0",
                record: None,
            },
            Instant::ZERO,
        )
        .unwrap();
        World {
            config,
            agent,
            now: Instant::ZERO,
            slot: vec![0xFF; image.len() + 64],
            image,
            version: "2.0.0".into(),
            running: "1.0.0".into(),
            boot_next: None,
            confirmed: false,
            record: None,
            transcript: Vec::new(),
            progress: Vec::new(),
            informs: Vec::new(),
            outcomes: Vec::new(),
            notes: Vec::new(),
            cloud_task: None,
            url_generation: 0,
            url_valid_from: 0,
            faults: VecDeque::new(),
            chunk_sizes: vec![1000, 1, 4096, 333, 7000],
            chunk_cursor: 0,
            cut: None,
            fail_write: None,
            fail_save: None,
            fail_activate: false,
            bootloader_falls_back: false,
            health: Health::Healthy,
            writes: 0,
            saves: 0,
            fetch_offsets: Vec::new(),
            bytes_served: 0,
            online: false,
            reply_to_requests: true,
            inbox: VecDeque::new(),
            messages: VecDeque::new(),
            http: None,
            pending_body: None,
            steps: 0,
            max_steps: 200_000,
        }
    }

    /// Publishes an MD5 task for the world's image and version.
    pub fn offer_md5_task(&mut self) {
        let md5 = md5_hex(&self.image);
        self.cloud_task = Some(format!(
            r#""size":{},"version":"{}","md5":"{md5}","sign":"{md5}","signMethod":"Md5""#,
            self.image.len(),
            self.version
        ));
    }

    /// Publishes a SHA-256 task for the world's image and version.
    pub fn offer_sha256_task(&mut self) {
        let sha = sha256_hex(&self.image).to_uppercase();
        self.cloud_task = Some(format!(
            r#""size":{},"version":"{}","sign":"{sha}","signMethod":"SHA256""#,
            self.image.len(),
            self.version
        ));
    }

    fn signed_task_json(&mut self, code: &str) -> String {
        match &self.cloud_task {
            Some(fields) => {
                let url = format!("https://fw.example/img.bin?gen={}", self.url_generation);
                self.url_generation += 1;
                format!(
                    r#"{{"code":{code},"data":{{{fields},"url":"{url}"}},"id":1626969597470,"message":"success"}}"#
                )
            }
            None => format!(r#"{{"code":{code},"data":{{}},"id":"1"}}"#),
        }
    }

    /// The cloud pushes the current task now.
    pub fn push_task(&mut self) {
        let payload = self.signed_task_json("\"1000\"");
        self.messages.push_back((
            "/ota/device/upgrade/a1TestPK001/dev01".into(),
            payload.into_bytes(),
        ));
    }

    pub fn push_raw(&mut self, payload: &str) {
        self.messages.push_back((
            "/ota/device/upgrade/a1TestPK001/dev01".into(),
            payload.as_bytes().to_vec(),
        ));
    }

    pub fn connect(&mut self) {
        self.online = true;
        self.inbox.push_back(Event::Connected);
    }

    pub fn disconnect(&mut self) {
        self.online = false;
        self.inbox.push_back(Event::Disconnected);
    }

    /// Power comes back: a new agent boots from what the storage holds.
    pub fn reboot(&mut self) {
        if let Some(next) = self.boot_next.take() {
            self.running = if self.bootloader_falls_back {
                self.running.clone()
            } else {
                next
            };
        }
        self.http = None;
        self.pending_body = None;
        self.inbox.clear();
        self.messages.clear();
        self.online = false;
        self.cut = None;
        self.transcript.push(format!("boot {}", self.running));
        let record = self.record.clone();
        self.agent = Agent::new(
            self.config.clone(),
            Boot {
                running_version: &self.running,
                record: record.as_deref(),
            },
            self.now,
        )
        .unwrap();
        self.drain();
    }

    /// Runs until nothing more happens, the power fails, or a reboot is asked for.
    pub fn run(&mut self) -> Stop {
        self.run_with(&|_| false).unwrap()
    }

    /// Runs until `until` holds (checked after each step, with all actions performed).
    pub fn run_until(&mut self, until: impl Fn(&World) -> bool) {
        assert_eq!(
            self.run_with(&until),
            None,
            "stopped before the condition held"
        );
    }

    fn run_with(&mut self, until: &dyn Fn(&World) -> bool) -> Option<Stop> {
        loop {
            self.steps += 1;
            assert!(
                self.steps < self.max_steps,
                "livelock: step budget exhausted"
            );
            if let Some(stop) = self.drain() {
                return Some(stop);
            }
            if until(self) {
                return None;
            }
            if let Some(event) = self.inbox.pop_front() {
                self.agent.handle(self.now, event).unwrap();
            } else if let Some((topic, payload)) = self.messages.pop_front() {
                if self.online {
                    self.agent
                        .handle(
                            self.now,
                            Event::Message {
                                topic: &topic,
                                payload: &payload,
                            },
                        )
                        .unwrap();
                }
            } else if let Some((fetch, body)) = self.pending_body.take() {
                let taken = self.agent.handle_body(self.now, fetch, &body).unwrap();
                assert!(taken <= body.len());
                if taken < body.len() {
                    self.pending_body = Some((fetch, body[taken..].to_vec()));
                    // Back-pressure must come with something to do, or the world would stall.
                    assert!(
                        self.agent.queued_actions() > 0 || !self.inbox.is_empty() || taken > 0,
                        "refused body with nothing pending"
                    );
                }
            } else if let Some(step) = self
                .http
                .as_mut()
                .and_then(|h| h.events.pop_front().map(|s| (h.fetch, s)))
            {
                let (fetch, step) = step;
                match step {
                    HttpStep::Response {
                        status,
                        length,
                        range,
                    } => {
                        let event = Event::HttpResponse {
                            fetch,
                            status,
                            content_length: length,
                            content_range: range.as_deref(),
                        };
                        self.agent.handle(self.now, event).unwrap();
                    }
                    HttpStep::Body(bytes) => self.pending_body = Some((fetch, bytes)),
                    HttpStep::End => {
                        self.http = None;
                        self.agent
                            .handle(self.now, Event::HttpEnd { fetch })
                            .unwrap();
                    }
                    HttpStep::Failed(reason) => {
                        self.http = None;
                        self.agent
                            .handle(self.now, Event::HttpFailed { fetch, reason })
                            .unwrap();
                    }
                }
            } else if let Some(deadline) = self.agent.poll_timeout() {
                assert!(deadline >= self.now, "deadline in the past");
                if deadline == self.now && self.agent.queued_actions() == 0 {
                    // A due deadline must make progress when fired.
                    self.agent.handle_timeout(self.now).unwrap();
                    if self.agent.queued_actions() == 0
                        && self.agent.poll_timeout() == Some(self.now)
                    {
                        panic!("poll_timeout asks for a busy loop");
                    }
                    continue;
                }
                self.now = deadline;
                self.agent.handle_timeout(self.now).unwrap();
            } else {
                return Some(Stop::Quiet);
            }
        }
    }

    /// Performs every queued action.
    fn drain(&mut self) -> Option<Stop> {
        let mut stop = None;
        assert!(self.agent.queued_actions() <= super::super::actions::QUEUE_CAPACITY);
        while let Some(action) = self.agent.poll_action() {
            let line = describe(&action);
            self.transcript.push(line);
            match action {
                Action::Subscribe { .. } => {}
                Action::Publish { topic, payload } => {
                    let topic = topic.to_string();
                    let payload = String::from_utf8(payload.to_vec()).unwrap();
                    self.on_publish(&topic, &payload);
                }
                Action::Fetch { fetch, url, offset } => {
                    let url = url.to_string();
                    self.serve(fetch, &url, offset);
                }
                Action::CancelFetch { fetch } => {
                    if self.http.as_ref().is_some_and(|h| h.fetch == fetch) {
                        self.http = None;
                    }
                    if self.pending_body.as_ref().is_some_and(|(f, _)| *f == fetch) {
                        self.pending_body = None;
                    }
                }
                Action::Write { offset, data } => {
                    let n = self.writes;
                    self.writes += 1;
                    if let Some(Cut::Write { n: at, torn }) = self.cut {
                        if at == n {
                            let torn = torn.min(data.len());
                            let o = offset as usize;
                            self.slot[o..o + torn].copy_from_slice(&data[..torn]);
                            stop = Some(Stop::PowerLost);
                            break;
                        }
                    }
                    if self.fail_write == Some(n) {
                        self.inbox.push_back(Event::WriteFailed);
                    } else {
                        let o = offset as usize;
                        self.slot[o..o + data.len()].copy_from_slice(data);
                        self.inbox.push_back(Event::WriteDone);
                    }
                }
                Action::SaveRecord { record } => {
                    let record = record.to_vec();
                    if let Some(s) = self.store(Some(record)) {
                        stop = Some(s);
                        break;
                    }
                }
                Action::ClearRecord => {
                    if let Some(s) = self.store(None) {
                        stop = Some(s);
                        break;
                    }
                }
                Action::Activate { version, .. } => {
                    if self.cut == Some(Cut::Activate) {
                        stop = Some(Stop::PowerLost);
                        break;
                    }
                    if self.fail_activate {
                        self.inbox.push_back(Event::ActivationFailed);
                    } else {
                        self.boot_next = Some(version.to_string());
                        self.inbox.push_back(Event::Activated);
                    }
                }
                Action::Reboot => stop = Some(Stop::Reboot),
                Action::Confirm => self.confirmed = true,
                Action::Rollback => self.boot_next = Some("1.0.0".into()),
                Action::Notify(note) => match note {
                    Notification::HealthCheckRequested { .. } => match self.health {
                        Health::Healthy => {
                            self.inbox.push_back(Event::HealthVerdict { healthy: true })
                        }
                        Health::Unhealthy => self
                            .inbox
                            .push_back(Event::HealthVerdict { healthy: false }),
                        Health::Silent => {}
                    },
                    Notification::Outcome(o) => self.outcomes.push(outcome(&o)),
                    other => self.notes.push(format!("{other:?}")),
                },
            }
        }
        if stop.is_some() {
            // Power is gone: whatever else was queued never happens.
            while self.agent.poll_action().is_some() {}
        }
        stop
    }

    fn store(&mut self, record: Option<Vec<u8>>) -> Option<Stop> {
        let n = self.saves;
        self.saves += 1;
        if self.cut == Some(Cut::Save { n }) {
            return Some(Stop::PowerLost);
        }
        if self.fail_save == Some(n) {
            self.inbox.push_back(Event::RecordSaveFailed);
        } else {
            self.record = record;
            self.inbox.push_back(Event::RecordSaved);
        }
        None
    }

    fn on_publish(&mut self, topic: &str, payload: &str) {
        let v: serde_json::Value = serde_json::from_str(payload).expect("uplink is JSON");
        if topic.starts_with("/ota/device/progress/") {
            let step: i16 = v["params"]["step"].as_str().unwrap().parse().unwrap();
            self.progress.push(step);
            if step < 0 {
                self.cloud_task = None; // the cloud marks the task failed
            }
        } else if topic.starts_with("/ota/device/inform/") {
            let version = v["params"]["version"].as_str().unwrap();
            if version == self.version && self.running == self.version {
                self.cloud_task = None; // success: the device reports the target version
            }
            self.informs.push(version.into());
        } else if topic.ends_with("/thing/ota/firmware/get")
            || topic.starts_with("/ota/device/request/")
        {
            if !self.reply_to_requests {
                return;
            }
            if topic.ends_with("/get") {
                let payload = self.signed_task_json("200");
                self.messages.push_back((
                    "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply".into(),
                    payload.into_bytes(),
                ));
            } else if self.cloud_task.is_some() {
                self.push_task();
            }
        }
    }

    fn serve(&mut self, fetch: FetchId, url: &str, offset: u64) {
        self.fetch_offsets.push(offset);
        let generation: u32 = url.rsplit('=').next().unwrap().parse().unwrap();
        let mut events = VecDeque::new();
        let fault = self.faults.pop_front();
        let size = self.image.len() as u64;
        if generation < self.url_valid_from {
            events.push_back(HttpStep::Response {
                status: 403,
                length: Some(230),
                range: None,
            });
            events.push_back(HttpStep::Body(
                b"<Error><Code>AccessDenied</Code></Error>".to_vec(),
            ));
            events.push_back(HttpStep::End);
            self.http = Some(HttpStream { fetch, events });
            return;
        }
        let mut body = self.image.clone();
        let (mut from, mut status, mut range) = (offset, if offset > 0 { 206 } else { 200 }, None);
        match fault {
            Some(Fault::Refuse) => {
                events.push_back(HttpStep::Failed("connection refused"));
                self.http = Some(HttpStream { fetch, events });
                return;
            }
            Some(Fault::Status(code)) => {
                events.push_back(HttpStep::Response {
                    status: code,
                    length: Some(0),
                    range: None,
                });
                events.push_back(HttpStep::End);
                self.http = Some(HttpStream { fetch, events });
                return;
            }
            Some(Fault::IgnoreRange) => {
                from = 0;
                status = 200;
            }
            Some(Fault::Corrupt(k)) => body[k as usize] ^= 0x5A,
            Some(Fault::WrongRange) => {
                range = Some(format!("bytes {}-{}/{}", offset + 1, size - 1, size))
            }
            Some(Fault::Extra(n)) => body.extend(core::iter::repeat_n(0xEE, n)),
            _ => {}
        }
        if status == 206 && range.is_none() {
            range = Some(format!("bytes {}-{}/{}", offset, size - 1, size));
        }
        let mut bytes = body[from as usize..].to_vec();
        let length = if matches!(fault, Some(Fault::Extra(_))) {
            None
        } else {
            Some(bytes.len() as u64)
        };
        events.push_back(HttpStep::Response {
            status,
            length,
            range,
        });
        let mut limit = bytes.len();
        if let Some(Fault::CutAfter(n) | Fault::StallAfter(n)) = fault {
            limit = n.min(bytes.len());
        }
        bytes.truncate(limit);
        self.bytes_served += bytes.len() as u64;
        let mut at = 0;
        while at < bytes.len() {
            let n = self.chunk_sizes[self.chunk_cursor % self.chunk_sizes.len()].max(1);
            self.chunk_cursor += 1;
            let end = (at + n).min(bytes.len());
            events.push_back(HttpStep::Body(bytes[at..end].to_vec()));
            at = end;
        }
        match fault {
            Some(Fault::CutAfter(_)) => events.push_back(HttpStep::Failed("connection reset")),
            Some(Fault::StallAfter(_)) => {}
            _ => events.push_back(HttpStep::End),
        }
        self.http = Some(HttpStream { fetch, events });
    }

    /// Runs through reboots until quiet; returns how many reboots happened.
    pub fn run_through_reboots(&mut self) -> usize {
        let mut reboots = 0;
        loop {
            match self.run() {
                Stop::Quiet => return reboots,
                Stop::Reboot | Stop::PowerLost => {
                    reboots += 1;
                    assert!(reboots < 20, "reboot loop");
                    self.reboot();
                    self.connect();
                }
            }
        }
    }

    /// Runs until the first fetch after a reboot is issued (true) or the run stops (false).
    pub fn run_until_first_fetch_or_stop(&mut self) -> bool {
        let before = self.fetch_offsets.len();
        self.run_with(&|w| w.fetch_offsets.len() > before).is_none()
    }

    pub fn slot_image(&self) -> &[u8] {
        &self.slot[..self.image.len()]
    }
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Installed { version } => format!("installed {version}"),
        Outcome::Succeeded { version } => format!("succeeded {version}"),
        Outcome::Failed { code, reason } => format!("failed {} {reason}", code.step()),
        Outcome::RolledBack { version } => format!("rolled back {version}"),
        Outcome::Canceled => "canceled".into(),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Subscribe { topic } => format!("sub {topic}"),
        Action::Publish { topic, payload } => {
            let kind = if topic.starts_with("/ota/") {
                topic.split('/').nth(3)
            } else {
                topic.rsplit('/').next()
            };
            format!(
                "pub {} {}",
                kind.unwrap_or(topic),
                String::from_utf8_lossy(payload)
            )
        }
        Action::Fetch { fetch, offset, .. } => format!("fetch {} @{offset}", fetch.0),
        Action::CancelFetch { fetch } => format!("cancel {}", fetch.0),
        Action::Write { offset, data } => format!("write @{offset} +{}", data.len()),
        Action::SaveRecord { .. } => "save record".into(),
        Action::ClearRecord => "clear record".into(),
        Action::Activate { version, .. } => format!("activate {version}"),
        Action::Reboot => "reboot".into(),
        Action::Confirm => "confirm".into(),
        Action::Rollback => "rollback".into(),
        Action::Notify(n) => format!("notify {}", short_note(n)),
    }
}

fn short_note(n: &Notification) -> String {
    match n {
        Notification::TaskReceived(t) => format!("task {}", t.version),
        Notification::TaskRejected { reason } => format!("rejected {reason}"),
        Notification::Progress { percent, .. } => format!("progress {percent}"),
        Notification::HealthCheckRequested { version } => format!("health? {version}"),
        Notification::RecordDiscarded(e) => format!("record discarded {e}"),
        Notification::Outcome(o) => outcome(o),
    }
}
