//! The agent: the whole upgrade lifecycle as one state machine (docs/architecture.md "The upgrade
//! lifecycle"). Inputs are [`Event`]s, body bytes and timeouts; outputs are [`Action`]s.

mod actions;
#[cfg(feature = "mqtt-channel")]
mod blocks;
mod config;
mod download;
mod reread;
mod ring;
#[cfg(feature = "signature")]
mod signing;
#[cfg(test)]
mod tests;

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;

pub use actions::{Action, FetchId, Notification, Outcome, Qos};
#[cfg(feature = "mqtt-channel")]
pub use config::MqttDownload;
pub use config::{Config, Confirmation, RetryPolicy, TaskRequest};

use crate::backoff::Backoff;
use crate::digest::Hasher;
use crate::downlink::{empty_push, parse_get_reply, reply_id, Rejection};
use crate::error::Error;
use crate::identity::{is_valid_version, Topics};
use crate::record::{ImageId, Phase as RecordPhase, Record};
use crate::task::{ExpectedDigest, Task};
use crate::time::Instant;
use crate::uplink::{encode_firmware_get, encode_inform, encode_progress, FailureCode, Step};
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use actions::QUEUE_CAPACITY;
use actions::{Note, Outbox, Queued, Topic};
use download::{Download, Lend, RecordHead};
use reread::Reread;
use ring::Ring;

/// What the device knows at start-up.
#[derive(Clone, Copy, Debug)]
pub struct Boot<'a> {
    /// The version of the module that is running now.
    pub running_version: &'a str,
    /// The saved record, if the adapter found one.
    pub record: Option<&'a [u8]>,
}

/// What [`Agent::body_buffer`] offers for the body bytes of a fetch.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyBuffer<'a> {
    /// Read up to this many bytes into it, then call [`Agent::body_filled`].
    Lent(&'a mut [u8]),
    /// Back-pressure: every staging block is full or being written (or a checkpoint waits
    /// for its writes). Perform the queued actions, deliver their results, then ask again.
    Full,
    /// The fetch was abandoned (or its body is complete): its bytes are not wanted.
    Unwanted,
}

/// One input to the agent. Body bytes go through [`Agent::handle_body`] instead, because
/// the agent answers how many it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// The MQTT session is up (after every connect and reconnect).
    Connected,
    /// The MQTT session is down.
    Disconnected,
    /// A message arrived on a subscribed topic.
    Message {
        /// Topic.
        topic: &'a str,
        /// Payload.
        payload: &'a [u8],
    },
    /// The status line and headers of a fetch.
    HttpResponse {
        /// The fetch.
        fetch: FetchId,
        /// Status code.
        status: u16,
        /// `Content-Length`, if present.
        content_length: Option<u64>,
        /// `Content-Range`, if present.
        content_range: Option<&'a str>,
    },
    /// The body of a fetch ended cleanly.
    HttpEnd {
        /// The fetch.
        fetch: FetchId,
    },
    /// A fetch failed (connect, TLS, reset, read timeout...).
    HttpFailed {
        /// The fetch.
        fetch: FetchId,
        /// What happened, for the failure description.
        reason: &'a str,
    },
    /// The pending `Write` is on flash.
    WriteDone,
    /// The pending `Write` failed.
    WriteFailed,
    /// The pending `Read` put `len` bytes into its buffer (fewer than asked: the staged data
    /// ends there).
    ReadDone {
        /// Bytes read.
        len: usize,
    },
    /// The pending `Read` failed (the staging area is gone or unreadable).
    ReadFailed,
    /// The pending `SaveRecord` or `ClearRecord` is durable.
    RecordSaved,
    /// The pending `SaveRecord` or `ClearRecord` failed.
    RecordSaveFailed,
    /// The pending `Activate` succeeded.
    Activated,
    /// The pending `Activate` failed.
    ActivationFailed,
    /// The application accepts the offered task (`Confirmation::Ask`).
    AcceptTask,
    /// The application declines the offered task.
    DeclineTask,
    /// The application's verdict on the new image.
    HealthVerdict {
        /// True when the image works.
        healthy: bool,
    },
}

/// Where the agent stands, for the application and for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// No task.
    Idle,
    /// Downloading (or waiting to retry, or waiting for a fresh URL).
    Downloading,
    /// Verified; saving the record and activating.
    Activating,
    /// Activated; waiting for the reboot.
    Rebooting,
    /// Booted into the new image; waiting for the health verdict.
    CheckingHealth,
    /// Rolling back to the previous image.
    RollingBack,
}

/// The storage or boot operation in flight other than writes (one at a time, and never
/// while a write is in flight: writes are counted by the staging ring).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Io {
    /// A re-read of the slot for the download of this generation, of `len` bytes.
    Read {
        generation: u32,
        len: usize,
    },
    SaveRecord(RecordPurpose),
    ClearRecord,
    Activate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RecordPurpose {
    /// A download checkpoint of the given generation at the given offset.
    Checkpoint {
        generation: u32,
        offset: u64,
        /// The progress step the record carries.
        step: u8,
    },
    Activating,
    RollingBack,
}

enum State {
    Idle,
    Downloading(Box<Download>),
    Activating {
        image: ImageId,
    },
    Rebooting,
    CheckingHealth {
        image: ImageId,
        previous: String,
        deadline: Instant,
    },
    RollingBack {
        module: String,
    },
}

/// A download interrupted by a restart, waiting for the cloud to send its task again.
struct ResumePoint {
    image: ImageId,
    file: usize,
    offset: u64,
    hasher: Hasher,
    /// The last step the cloud may have heard.
    step: u8,
}

/// The OTA agent. See the crate documentation for the driving loop.
pub struct Agent {
    config: Config,
    /// `config.stall_timeout` in milliseconds, converted once: the deadline query runs after
    /// every body read, and a `Duration` costs a conversion each time.
    stall_ms: u64,
    topics: Topics,
    /// Every module this agent updates with its running version; the first is `config.module`.
    modules: Vec<(String, String)>,
    /// Task requests awaiting an answer: (message id, module). A few at most.
    requests: Vec<(u64, String)>,
    now: Instant,
    online: bool,
    next_message_id: u64,
    next_fetch: u32,
    generation: u32,
    state: State,
    io: Option<Io>,
    clear_record_wanted: bool,
    /// A clear failed; retried at the next connect.
    stale_record: bool,
    resume: Option<ResumePoint>,
    /// When the last download started: a new task within `Config::task_switch_interval` of
    /// it waits, so that a cloud switching tasks in a loop cannot make a GET of each.
    last_start: Option<Instant>,
    /// A task waiting for the switch interval to pass (the latest replaces any earlier one).
    /// Boxed: a `Task` is large, and the agent stays small on a microcontroller's heap.
    parked: Option<Box<(Task, Instant)>>,
    /// Tasks for other modules, waiting for the current download to end (one per module).
    #[cfg(feature = "modules")]
    waiting: Vec<Task>,
    /// The task offered to the application, waiting for its decision.
    offered: Option<Task>,
    /// Failure reports made while offline, sent on the next connect.
    unsent_reports: Vec<UnsentReport>,
    /// The staging blocks, and the writes in flight.
    ring: Ring,
    /// What the last [`Agent::body_buffer`] lent, until the next input.
    lend: Option<Lend>,
    /// Reused buffer for the digest mid-state of checkpoints.
    scratch: Vec<u8>,
    /// The last download record's head, repeated by a record that carries only a new step.
    record_head: RecordHead,
    backoff: Backoff,
    outbox: Outbox,
}

/// Failure reports kept while offline; beyond this, refusals go first, then the oldest.
const MAX_UNSENT_REPORTS: usize = 4;

/// `v.remove(i)` (the rest keep their order; `None` when `v` is empty), by moving each later
/// element one place down. `Vec::remove` shifts them with one overlapping copy, and these few
/// short lists were all that linked compiler_builtins' `memmove` (~1.5 KB of flash).
fn remove_in_order<T>(v: &mut Vec<T>, i: usize) -> Option<T> {
    let mut moved = v.pop()?;
    for slot in v.iter_mut().skip(i).rev() {
        moved = core::mem::replace(slot, moved);
    }
    Some(moved)
}

/// `v.swap_remove(i)` (`None` when `v` is empty), for the reason of [`remove_in_order`]:
/// `Vec::swap_remove`'s copy may overlap, so it is a `memmove`; `mem::swap` of two distinct
/// places is not.
fn swap_remove<T>(v: &mut Vec<T>, i: usize) -> Option<T> {
    let mut removed = v.pop()?;
    if let Some(slot) = v.get_mut(i) {
        core::mem::swap(slot, &mut removed);
    }
    Some(removed)
}

/// A failure report made while offline, sent on the next connect.
struct UnsentReport {
    step: Step,
    desc: String,
    module: String,
    /// A refused task rather than a failed one (dropped first when the queue is full).
    refusal: bool,
}

impl Agent {
    /// Builds the agent from its configuration and what was found at boot. Actions may be
    /// queued already (e.g. a health check after an upgrade): drain them.
    pub fn new(config: Config, boot: Boot<'_>, now: Instant) -> Result<Self, Error> {
        config.validate()?;
        if !is_valid_version(boot.running_version) {
            return Err(Error::InvalidVersion);
        }
        let backoff = Backoff::new(config.seed);
        let mut agent = Agent {
            topics: Topics::new(&config.identity),
            ring: Ring::new(config.write_block, config.write_buffers),
            lend: None,
            scratch: Vec::with_capacity(128),
            record_head: RecordHead::new(),
            modules: Self::managed_modules(&config, boot.running_version),
            requests: Vec::new(),
            now,
            online: false,
            next_message_id: 1,
            next_fetch: 0,
            generation: 0,
            state: State::Idle,
            io: None,
            clear_record_wanted: false,
            stale_record: false,
            resume: None,
            last_start: None,
            parked: None,
            #[cfg(feature = "modules")]
            waiting: Vec::new(),
            offered: None,
            unsent_reports: Vec::new(),
            backoff,
            outbox: Outbox::new(),
            stall_ms: (Instant::ZERO + config.stall_timeout).as_millis(),
            config,
        };
        if let Some(bytes) = boot.record {
            agent.recover(bytes);
        }
        agent.advance();
        Ok(agent)
    }

    /// The agent's module with the running version, then `Config::extra_modules`.
    fn managed_modules(config: &Config, running_version: &str) -> Vec<(String, String)> {
        #[allow(unused_mut)]
        let mut modules = alloc::vec![(config.module.clone(), String::from(running_version))];
        #[cfg(feature = "modules")]
        modules.extend(config.extra_modules.iter().cloned());
        modules
    }

    /// Processes one input. Drain [`Agent::poll_action`] before the next input.
    pub fn handle(&mut self, now: Instant, event: Event<'_>) -> Result<(), Error> {
        self.begin_input(now)?;
        let result = self.dispatch(event);
        self.advance();
        result
    }

    /// Offers body bytes of `fetch`; returns how many were taken. Fewer than offered
    /// (possibly 0) means every staging block is full or being written (or a checkpoint
    /// waits for its writes): perform the queued actions, deliver the storage results
    /// they lead to, then offer the rest again. Bytes of an abandoned fetch are taken and
    /// dropped.
    pub fn handle_body(
        &mut self,
        now: Instant,
        fetch: FetchId,
        bytes: &[u8],
    ) -> Result<usize, Error> {
        self.begin_input(now)?;
        let result = self.on_body(fetch, bytes);
        if !matches!(result, Ok((_, true))) {
            self.advance();
        }
        result.map(|(taken, _)| taken)
    }

    /// Lends the free part of the current staging block, to read body bytes of `fetch` into
    /// it directly (no copy): read at most its length, then call [`Agent::body_filled`] with
    /// how many were read, before any other input. The contracts are those of
    /// [`Agent::handle_body`], whose implementation this shares: [`BodyBuffer::Full`] is its
    /// back-pressure (perform the queued actions, deliver their results, ask again), and
    /// [`BodyBuffer::Unwanted`] says that the fetch is no longer the current one (bytes of it
    /// are dropped; stop reading it). It is not an input: no action follows from it, and the
    /// agent's state is as before (`now` only moves its clock forward, as any call does).
    pub fn body_buffer(&mut self, now: Instant, fetch: FetchId) -> Result<BodyBuffer<'_>, Error> {
        if !self.outbox.is_empty() {
            return Err(Error::ActionsNotDrained);
        }
        self.now = self.now.max(now);
        self.body_room(fetch)
    }

    /// `n` bytes of `fetch` were read to the start of the buffer [`Agent::body_buffer`] just
    /// lent: they are hashed where they lie and taken, as [`Agent::handle_body`] would take
    /// them. Returns how many were taken (all of them, unless the lent buffer was
    /// [`BodyBuffer::Full`] and `n` is 0). More than was lent is
    /// [`Error::BodyOverfilled`].
    pub fn body_filled(&mut self, now: Instant, fetch: FetchId, n: usize) -> Result<usize, Error> {
        let lend = self.lend.take();
        if let Some(lend) = lend.filter(|lend| lend.fetch == fetch) {
            // Nothing but `poll_action` can have run since the lend (any input forgets it),
            // so the actions are drained and the checks of `begin_input` hold.
            let now = self.now.max(now);
            if self.fill_quietly(now, lend, n) {
                self.now = now;
                return Ok(n);
            }
        }
        self.begin_input(now)?;
        let result = self.on_body_filled(fetch, n, lend);
        self.advance();
        result
    }

    /// Fires the deadlines that have passed. Call it when [`Agent::poll_timeout`] is reached.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), Error> {
        self.begin_input(now)?;
        self.on_timeout();
        self.advance();
        Ok(())
    }

    /// The next action to perform, borrowing the agent until it is dropped.
    pub fn poll_action(&mut self) -> Option<Action<'_>> {
        self.outbox.pop(&self.topics, self.ring.bytes_mut())
    }

    /// When to call [`Agent::handle_timeout`]: `now` while actions are queued, `None`
    /// when nothing is scheduled. Never earlier than the latest `now` seen.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if !self.outbox.is_empty() {
            return Some(self.now);
        }
        let deadline = match &self.state {
            State::Downloading(d) => d.deadline(self.stall_ms, self.storage_busy(), self.online),
            State::CheckingHealth { deadline, .. } => Some(*deadline),
            _ => self.parked.as_deref().map(|(_, at)| *at),
        };
        deadline.map(|d| d.max(self.now))
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        match &self.state {
            State::Idle => Phase::Idle,
            State::Downloading(_) => Phase::Downloading,
            State::Activating { .. } => Phase::Activating,
            State::Rebooting => Phase::Rebooting,
            State::CheckingHealth { .. } => Phase::CheckingHealth,
            State::RollingBack { .. } => Phase::RollingBack,
        }
    }

    /// Bytes of the current image received so far (`IOT_OTAG_FETCHED_SIZE`).
    pub fn fetched_size(&self) -> u64 {
        match &self.state {
            State::Downloading(d) => d.received,
            State::Activating { image, .. } => image.size,
            _ => 0,
        }
    }

    /// Size of the current image (`IOT_OTAG_FILE_SIZE`).
    pub fn file_size(&self) -> Option<u64> {
        match &self.state {
            State::Downloading(d) => Some(d.task.size),
            State::Activating { image, .. } => Some(image.size),
            _ => None,
        }
    }

    /// The digest the current image must have (`IOT_OTAG_MD5SUM`, any method).
    pub fn expected_digest(&self) -> Option<ExpectedDigest> {
        match &self.state {
            State::Downloading(d) => Some(d.task.digest),
            State::Activating { image, .. } => Some(image.digest),
            _ => None,
        }
    }

    /// The version being installed (`IOT_OTAG_VERSION`).
    pub fn target_version(&self) -> Option<&str> {
        match &self.state {
            State::Downloading(d) => Some(&d.task.version),
            State::Activating { image, .. } => Some(&image.version),
            State::CheckingHealth { image, .. } => Some(&image.version),
            _ => None,
        }
    }

    /// True once the downloaded image matched its digest (`IOT_OTAG_CHECK_FIRMWARE`).
    pub fn is_image_verified(&self) -> bool {
        // Only a verified image gets past the download.
        matches!(self.state, State::Activating { .. } | State::Rebooting)
    }

    /// The running version.
    pub fn running_version(&self) -> &str {
        &self.modules[0].1
    }

    /// True while the MQTT session is up.
    pub fn is_online(&self) -> bool {
        self.online
    }

    /// Number of queued actions (bounded; for tests and assertions).
    pub fn queued_actions(&self) -> usize {
        self.outbox.len()
    }

    // ---- inputs -------------------------------------------------------------------------

    fn begin_input(&mut self, now: Instant) -> Result<(), Error> {
        if !self.outbox.is_empty() {
            return Err(Error::ActionsNotDrained);
        }
        self.outbox.recycle();
        self.lend = None;
        self.now = self.now.max(now);
        Ok(())
    }

    fn dispatch(&mut self, event: Event<'_>) -> Result<(), Error> {
        match event {
            Event::Connected => self.on_connected(),
            Event::Disconnected => self.online = false,
            Event::Message { topic, payload } => self.on_message(topic, payload),
            Event::HttpResponse {
                fetch,
                status,
                content_length,
                content_range,
            } => return self.on_response(fetch, status, content_length, content_range),
            Event::HttpEnd { fetch } => return self.on_http_end(fetch),
            Event::HttpFailed { fetch, reason } => return self.on_http_failed(fetch, reason),
            Event::WriteDone | Event::WriteFailed => {
                return self.on_write_result(matches!(event, Event::WriteDone))
            }
            Event::ReadDone { len } => return self.on_read_result(Some(len)),
            Event::ReadFailed => return self.on_read_result(None),
            Event::RecordSaved | Event::RecordSaveFailed => {
                return self.on_record_result(matches!(event, Event::RecordSaved))
            }
            Event::Activated | Event::ActivationFailed => {
                return self.on_activation_result(matches!(event, Event::Activated))
            }
            Event::HealthVerdict { healthy } => return self.on_health_verdict(healthy),
            Event::AcceptTask | Event::DeclineTask => {
                return self.on_decision(matches!(event, Event::AcceptTask))
            }
        }
        Ok(())
    }

    // Out of line: inlined into its one caller it made the caller larger (flash, issue #21;
    // measured in BENCHMARKS.md).
    #[inline(never)]
    fn on_connected(&mut self) {
        self.online = true;
        if core::mem::take(&mut self.stale_record) {
            self.clear_record_wanted = true;
        }
        self.outbox.push(Queued::Subscribe(Topic::Upgrade));
        self.outbox.push(Queued::Subscribe(Topic::FirmwareGetReply));
        #[cfg(feature = "mqtt-channel")]
        self.outbox
            .push(Queued::Subscribe(Topic::FileDownloadReply));
        self.publish_inform();
        for UnsentReport {
            step, desc, module, ..
        } in core::mem::take(&mut self.unsent_reports)
        {
            self.publish_progress(step, &desc, &module);
        }
        // Ask for every module's task when configured; always for an interrupted download
        // (its URL is not kept) and for a URL being refreshed.
        let busy = !matches!(self.state, State::Idle | State::Downloading(_));
        for i in 0..self.modules.len() {
            let module = self.modules[i].0.clone();
            let resuming = self
                .resume
                .as_ref()
                .is_some_and(|r| r.image.module == module);
            let refreshing = matches!(&self.state, State::Downloading(d) if d.is_refreshing() && d.task.module == module);
            if resuming || refreshing || (self.config.request_task_on_connect && !busy) {
                self.request_task(&module);
            }
        }
        if let State::Downloading(d) = &mut self.state {
            d.mark_request_sent(self.now, self.config.reply_timeout);
            #[cfg(feature = "mqtt-channel")]
            {
                let received = d.received;
                if let Some(blocks) = d.blocks.as_mut() {
                    blocks.restart(received);
                }
            }
        }
        self.publish_pending_progress();
    }

    // Out of line: inlined into its one caller it made the caller larger (flash, issue #21;
    // measured in BENCHMARKS.md).
    #[inline(never)]
    fn on_message(&mut self, topic: &str, payload: &[u8]) {
        // A push and a reply parse alike; only what an empty `data` means differs.
        let push = topic == self.topics.upgrade;
        if !push && topic != self.topics.firmware_get_reply {
            #[cfg(feature = "mqtt-channel")]
            if topic == self.topics.file_download_reply {
                self.on_block_reply(payload);
            }
            return; // another device's topic, or one we do not serve
        }
        match parse_get_reply(payload, &self.config.rules) {
            Ok(Some(task)) => self.on_task(task),
            Ok(None) if push => self.on_rejection(empty_push()),
            Ok(None) => {
                // Pair the reply with its request to know which module has no task.
                let id = reply_id(payload);
                let found = self.requests.iter().position(|(i, _)| Some(*i) == id);
                let module = match found.and_then(|i| swap_remove(&mut self.requests, i)) {
                    Some((_, module)) => module,
                    None => self.config.module.clone(),
                };
                self.on_no_task(&module);
            }
            Err(rejection) => self.on_rejection(rejection),
        }
    }

    fn on_rejection(&mut self, rejection: Rejection) {
        self.notify(Note::TaskRejected(rejection.reason.clone()));
        // Only an idle device reports: while another task runs, a -1 would be taken as
        // the verdict on that task.
        if matches!(self.state, State::Idle) && self.parked.is_none() {
            let module = rejection
                .module
                .unwrap_or_else(|| self.config.module.clone());
            self.report_refusal(&rejection.reason, &module);
        }
    }

    fn on_task(&mut self, task: Task) {
        let Some(running) = self.version_of(&task.module).map(String::from) else {
            let reason = text!("module ", task.module, " is not managed by this agent");
            self.notify(Note::TaskRejected(reason.clone()));
            self.report_refusal(&reason, &task.module);
            return;
        };
        match &mut self.state {
            State::Downloading(d) if d.task.same_image(&task) => {
                d.adopt_fresh_channel(&task);
                return;
            }
            // Another module's download runs: one task at a time, the next after it.
            #[cfg(feature = "modules")]
            State::Downloading(d) if d.task.module != task.module => {
                self.waiting.retain(|t| t.module != task.module);
                self.waiting.push(task);
                return;
            }
            // Another module's task waits for its switch interval: this one comes after it.
            #[cfg(feature = "modules")]
            State::Idle
                if self
                    .parked
                    .as_deref()
                    .is_some_and(|(p, _)| p.module != task.module) =>
            {
                self.waiting.retain(|t| t.module != task.module);
                self.waiting.push(task);
                return;
            }
            State::Idle | State::Downloading(_) => {}
            // Busy activating or checking a new image: the cloud will ask again later.
            _ => return,
        }
        if task.version == running {
            // Already running it: the version report is what completes the cloud's task.
            if self
                .resume
                .as_ref()
                .is_some_and(|r| r.image.module == task.module)
            {
                // The interrupted download is of an image the cloud no longer wants: its
                // record goes too, or it would outlive the task.
                self.resume = None;
                self.clear_record_wanted = true;
            }
            if self
                .parked
                .as_deref()
                .is_some_and(|(p, _)| p.module == task.module)
            {
                self.parked = None; // nothing to switch to any more
            }
            self.publish_inform_for(&task.module);
            return;
        }

        let resuming = self.resume.as_ref().is_some_and(|r| r.image.matches(&task));
        if let (Confirmation::Ask { .. }, false) = (self.config.confirmation, resuming) {
            // An interrupted download was accepted before; anything new is the application's call.
            if self.offered.as_ref().is_some_and(|o| o.same_image(&task)) {
                self.offered = Some(task); // keep the freshest URL
                return;
            }
            self.notify(Note::TaskOffered(Box::new(task.clone())));
            self.offered = Some(task);
            return;
        }
        self.start_download(task);
    }

    fn on_decision(&mut self, accept: bool) -> Result<(), Error> {
        let task = self.offered.take().ok_or(Error::UnexpectedDecision)?;
        if accept {
            self.start_download(task);
        } else {
            self.notify(Note::Declined);
            if let Confirmation::Ask {
                report_decline: true,
            } = self.config.confirmation
            {
                self.report_refusal("declined by the application", &task.module);
            }
        }
        Ok(())
    }

    /// A firmware/get reply without a task: for the module it was asked for, the cloud has
    /// nothing (any more).
    fn on_no_task(&mut self, module: &str) {
        #[cfg(feature = "modules")]
        self.waiting.retain(|t| t.module != module);
        if self
            .parked
            .as_deref()
            .is_some_and(|(t, _)| t.module == module)
        {
            self.parked = None;
            self.notify(Note::Canceled);
        }
        if self.offered.as_ref().is_some_and(|t| t.module == module) {
            self.offered = None;
            self.notify(Note::Canceled);
        }
        if self
            .resume
            .as_ref()
            .is_some_and(|r| r.image.module == module)
        {
            self.resume = None;
            self.clear_record_wanted = true;
        }
        if let State::Downloading(d) = &self.state {
            if d.task.module != module {
                return;
            }
            if let Some(fetch) = d.open_fetch() {
                self.outbox.push(Queued::CancelFetch(fetch));
            }
            self.state = State::Idle;
            self.clear_record_wanted = true;
            self.notify(Note::Canceled);
        }
    }

    fn start_download(&mut self, task: Task) {
        if let State::Downloading(old) = &self.state {
            if let Some(fetch) = old.open_fetch() {
                self.outbox.push(Queued::CancelFetch(fetch));
            }
        }
        let resuming = self.resume.as_ref().is_some_and(|r| r.image.matches(&task));
        let switch_at = self
            .last_start
            .map(|t| t + self.config.task_switch_interval);
        if let Some(at) = switch_at.filter(|at| self.now < *at && !resuming) {
            // A switch right after the last one waits: the old download stops now and its
            // record goes (the cloud wants another image), the new one starts at `at`.
            if matches!(self.state, State::Downloading(_)) {
                self.ring.discard_unissued();
                self.state = State::Idle;
                self.clear_record_wanted = true;
            }
            self.parked = Some(Box::new((task, at)));
            return;
        }
        self.parked = None;
        self.last_start = Some(self.now);
        self.generation = self.generation.wrapping_add(1);
        self.clear_record_wanted = false;
        let resume = self.resume.take().filter(|r| r.image.matches(&task));
        self.notify(Note::TaskReceived(Box::new(task.clone())));
        let download = match resume {
            Some(r) => {
                let block = self.ring.block() as u64;
                // Step-only saves reuse the digest state of the recorded offset.
                self.scratch.clear();
                r.hasher.save_state(&mut self.scratch);
                // The staged prefix is trusted only once it is read back and hashes to the
                // record's digest state again.
                let reread = Reread::resume(&task, block, r.file, r.offset, r.hasher.clone());
                let mut d = Download::resume(
                    task,
                    self.generation,
                    (r.file, r.offset),
                    r.hasher,
                    self.now,
                    (block, self.config.checkpoint_bytes()),
                )
                .with_step_floor(r.step);
                d.reread = Some(Box::new(reread));
                d
            }
            None => Download::new(task, self.generation, self.now),
        };
        self.ring.discard_unissued(); // the old download's bytes not yet written
        self.state = State::Downloading(Box::new(download));
    }

    /// Results answer the writes in flight in the order they were issued.
    fn on_write_result(&mut self, ok: bool) -> Result<(), Error> {
        let Some(done) = self.ring.acknowledge() else {
            return Err(Error::UnexpectedWriteResult);
        };
        let State::Downloading(d) = &mut self.state else {
            return Ok(()); // the task it belonged to is gone
        };
        if d.generation != done.generation {
            return Ok(());
        }
        if ok {
            d.on_written(done.end, self.now);
        } else {
            let reason = text!("flash write failed at offset ", d.written);
            self.fail(FailureCode::FlashFailed, &reason);
        }
        Ok(())
    }

    fn on_record_result(&mut self, ok: bool) -> Result<(), Error> {
        let purpose = match self.io {
            Some(Io::SaveRecord(purpose)) => Some(purpose),
            Some(Io::ClearRecord) => None,
            _ => return Err(Error::UnexpectedRecordResult),
        };
        self.io = None;
        match (purpose, &mut self.state) {
            // A failed clear leaves a stale record (harmless: the next boot asks the cloud
            // and clears it); try again at the next connect rather than in a tight loop.
            (None, _) => self.stale_record = !ok,
            (
                Some(RecordPurpose::Checkpoint {
                    generation,
                    offset,
                    step,
                }),
                State::Downloading(d),
            ) if d.generation == generation => {
                if ok {
                    d.recorded = Some(offset);
                    d.saved_step = step;
                    self.publish_pending_progress(); // the cloud may hear this step now
                } else {
                    self.fail(
                        FailureCode::FlashFailed,
                        "could not save the upgrade record",
                    );
                }
            }
            (Some(RecordPurpose::Checkpoint { .. }), _) => {}
            (Some(RecordPurpose::Activating), State::Activating { image, .. }) => {
                if ok {
                    if self.online {
                        let module = image.module.clone();
                        self.publish_progress(
                            Step::Percent(100),
                            "downloaded and verified",
                            &module,
                        );
                    }
                    let State::Activating { image } = &self.state else {
                        return Ok(());
                    };
                    let module = self.outbox.stash(image.module.as_bytes());
                    let version = self.outbox.stash(image.version.as_bytes());
                    self.outbox.push(Queued::Activate { module, version });
                    self.io = Some(Io::Activate);
                } else {
                    self.fail(
                        FailureCode::FlashFailed,
                        "could not save the activation record",
                    );
                }
            }
            (Some(RecordPurpose::RollingBack), State::RollingBack { module }) => {
                let module = self.outbox.stash(module.as_bytes());
                self.outbox.push(Queued::Rollback(module));
                self.outbox.push(Queued::Reboot);
            }
            (Some(_), _) => {}
        }
        Ok(())
    }

    fn on_activation_result(&mut self, ok: bool) -> Result<(), Error> {
        if self.io != Some(Io::Activate) {
            return Err(Error::UnexpectedActivationResult);
        }
        self.io = None;
        let State::Activating { image, .. } = &self.state else {
            return Ok(());
        };
        if ok {
            self.notify(Note::Installed(image.version.clone()));
            self.outbox.push(Queued::Reboot);
            self.state = State::Rebooting;
        } else {
            self.fail(
                FailureCode::FlashFailed,
                "activation of the new image failed",
            );
        }
        Ok(())
    }

    fn on_health_verdict(&mut self, healthy: bool) -> Result<(), Error> {
        if !matches!(self.state, State::CheckingHealth { .. }) {
            return Err(Error::UnexpectedHealthVerdict);
        }
        self.conclude_health_check(healthy, "the application reported the new image unhealthy");
        Ok(())
    }

    fn conclude_health_check(&mut self, healthy: bool, why: &str) {
        let State::CheckingHealth {
            image, previous, ..
        } = core::mem::replace(&mut self.state, State::Idle)
        else {
            return;
        };
        if healthy {
            let module = self.outbox.stash(image.module.as_bytes());
            self.outbox.push(Queued::Confirm(module));
            self.clear_record_wanted = true;
            self.publish_inform_for(&image.module);
            self.notify(Note::Succeeded(image.version));
            return;
        }
        let reason = text!(why, "; rolling back to ", previous);
        self.notify(Note::Failed(FailureCode::UpgradeFailed, reason.clone()));
        self.report_failure(FailureCode::UpgradeFailed, &reason, &image.module);
        let module = image.module.clone();
        let record = Record {
            image,
            previous_version: previous,
            phase: RecordPhase::RollingBack,
        };
        self.save_record(&record, RecordPurpose::RollingBack);
        self.state = State::RollingBack { module };
    }

    // Out of line: inlined into its one caller it made the caller larger (flash, issue #21;
    // measured in BENCHMARKS.md).
    #[inline(never)]
    fn on_timeout(&mut self) {
        let now = self.now;
        match &mut self.state {
            State::CheckingHealth { deadline, .. } if *deadline <= now => {
                self.conclude_health_check(false, "the new image did not report healthy in time");
            }
            State::Downloading(_) => self.on_download_timeout(),
            _ => {}
        }
        if self.parked.as_deref().is_some_and(|(_, at)| *at <= now) {
            if let Some(parked) = self.parked.take() {
                let (task, _) = *parked;
                self.start_download(task);
            }
        }
    }

    // ---- boot ---------------------------------------------------------------------------

    // Out of line: inlined into its one caller it made the caller larger (flash, issue #21;
    // measured in BENCHMARKS.md).
    #[inline(never)]
    fn recover(&mut self, bytes: &[u8]) {
        let record = match Record::decode(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.notify(Note::RecordDiscarded(e));
                self.clear_record_wanted = true;
                return;
            }
        };
        let module = record.image.module.clone();
        let Some(running) = self.version_of(&module).map(String::from) else {
            return; // a module this agent does not manage: not ours to touch
        };
        #[cfg(feature = "signature")]
        if let RecordPhase::Downloading { .. } = record.phase {
            if let Some(reason) = self.restored_signature_refusal(&record.image) {
                self.notify(Note::Failed(FailureCode::VerifyFailed, reason.clone()));
                self.report_failure(FailureCode::VerifyFailed, &reason, &module);
                self.clear_record_wanted = true;
                return;
            }
        }
        match record.phase {
            RecordPhase::Downloading {
                file,
                offset,
                digest_state,
                step,
            } => match Hasher::restore(record.image.digest.method(), &digest_state) {
                Some(hasher) if offset <= record.image.size => {
                    self.resume = Some(ResumePoint {
                        image: record.image,
                        file: usize::from(file),
                        offset,
                        hasher,
                        step,
                    });
                }
                _ => {
                    self.notify(Note::RecordDiscarded(crate::record::RecordError::Invalid));
                    self.clear_record_wanted = true;
                }
            },
            RecordPhase::Activating if running == record.image.version => {
                // `module` and `running` (the target version here) are the note's own copies.
                self.notify(Note::HealthCheck {
                    module,
                    version: running,
                });
                self.state = State::CheckingHealth {
                    image: record.image,
                    previous: record.previous_version,
                    deadline: self.now + self.config.health_timeout,
                };
            }
            RecordPhase::Activating => {
                let reason = if running == record.previous_version {
                    text!(
                        "rolled back: ",
                        record.image.version,
                        " did not boot, ",
                        running,
                        " is running"
                    )
                } else {
                    text!(
                        "running ",
                        running,
                        " is neither the target ",
                        record.image.version,
                        " nor the previous ",
                        record.previous_version
                    )
                };
                self.notify(Note::Failed(FailureCode::UpgradeFailed, reason.clone()));
                self.report_failure(FailureCode::UpgradeFailed, &reason, &module);
                self.notify(Note::RolledBack(running));
                self.clear_record_wanted = true;
            }
            RecordPhase::RollingBack => {
                self.notify(Note::RolledBack(running));
                self.clear_record_wanted = true;
            }
        }
    }

    // ---- the engine ---------------------------------------------------------------------

    /// Starts whatever the state allows next: up to `write_buffers` writes in flight, any
    /// other storage operation alone (after the writes before it are acknowledged), fetches
    /// once the record is durable, verification once every byte is written.
    fn advance(&mut self) {
        if self.io.is_some() {
            return;
        }
        #[cfg(feature = "modules")]
        if matches!(self.state, State::Idle) && !self.waiting.is_empty() && self.parked.is_none() {
            // The previous module's task is over: the next one in line starts.
            if let Some(task) = remove_in_order(&mut self.waiting, 0) {
                self.on_task(task);
            }
        }
        if let State::Downloading(_) = self.state {
            self.advance_download();
        }
        if !self.storage_busy()
            && self.clear_record_wanted
            && !matches!(self.state, State::Downloading(_))
        {
            self.clear_record_wanted = false;
            self.outbox.push(Queued::ClearRecord);
            self.io = Some(Io::ClearRecord);
        }
    }

    /// A storage operation is in flight (so a network stall is not the network's fault).
    fn storage_busy(&self) -> bool {
        self.io.is_some() || self.ring.in_flight() > 0
    }

    fn save_record(&mut self, record: &Record, purpose: RecordPurpose) {
        let range = self.outbox.encode(|out| record.encode(out));
        self.outbox.push(Queued::SaveRecord(range));
        self.io = Some(Io::SaveRecord(purpose));
    }

    /// Ends the current task with one failure report.
    fn fail(&mut self, code: FailureCode, reason: &str) {
        let module = match &self.state {
            State::Downloading(d) => d.task.module.clone(),
            State::Activating { image } => image.module.clone(),
            _ => self.config.module.clone(),
        };
        if let State::Downloading(d) = &self.state {
            if let Some(fetch) = d.open_fetch() {
                self.outbox.push(Queued::CancelFetch(fetch));
            }
        }
        self.notify(Note::Failed(code, reason.into()));
        self.report_failure(code, reason, &module);
        self.ring.discard_unissued();
        self.state = State::Idle;
        self.clear_record_wanted = true;
    }

    /// Reports the failure of a task the agent worked on.
    fn report_failure(&mut self, code: FailureCode, reason: &str, module: &str) {
        self.report(Step::Failed(code), reason, module, false);
    }

    /// Reports a task refused without being worked on (`-1`).
    fn report_refusal(&mut self, reason: &str, module: &str) {
        self.report(
            Step::Failed(FailureCode::UpgradeFailed),
            reason,
            module,
            true,
        );
    }

    fn report(&mut self, step: Step, desc: &str, module: &str, refusal: bool) {
        if self.online {
            self.publish_progress(step, desc, module);
            return;
        }
        if self.unsent_reports.len() == MAX_UNSENT_REPORTS {
            // Make room by dropping a refusal before ever dropping a task's failure.
            let oldest_refusal = self.unsent_reports.iter().position(|r| r.refusal);
            remove_in_order(&mut self.unsent_reports, oldest_refusal.unwrap_or(0));
        }
        self.unsent_reports.push(UnsentReport {
            step,
            desc: desc.into(),
            module: module.into(),
            refusal,
        });
    }

    fn next_id(&mut self) -> u64 {
        let id = self.next_message_id;
        self.next_message_id += 1;
        id
    }

    /// Reports the running version of every module (one message each).
    fn publish_inform(&mut self) {
        for i in 0..self.modules.len() {
            let module = self.modules[i].0.clone();
            self.publish_inform_for(&module);
        }
    }

    fn publish_inform_for(&mut self, module: &str) {
        let Some(version) = self.version_of(module) else {
            return;
        };
        if !self.online {
            return;
        }
        if matches!(&self.state, State::CheckingHealth { image, .. } if image.module == module) {
            // The cloud marks the task succeeded on this report alone: it waits for the
            // health verdict, so that a rollback is never preceded by a success.
            return;
        }
        let version = String::from(version);
        let id = self.next_id();
        let range = self
            .outbox
            .encode(|out| encode_inform(out, id, &version, module));
        self.outbox.push(Queued::Publish(Topic::Inform, range));
    }

    /// The running version of `module`, if this agent manages it.
    fn version_of(&self, module: &str) -> Option<&str> {
        self.modules
            .iter()
            .find(|(m, _)| m == module)
            .map(|(_, v)| v.as_str())
    }

    fn publish_progress(&mut self, step: Step, desc: &str, module: &str) {
        let id = self.next_id();
        let range = self
            .outbox
            .encode(|out| encode_progress(out, id, step, desc, module));
        self.outbox.push(Queued::Publish(Topic::Progress, range));
    }

    /// Asks the cloud for the pending task of `module`.
    fn request_task(&mut self, module: &str) {
        if !self.online {
            return;
        }
        let id = self.next_id();
        if self.requests.len() >= 8 {
            remove_in_order(&mut self.requests, 0);
        }
        self.requests.push((id, String::from(module)));
        let (topic, range) = match self.config.task_request {
            TaskRequest::FirmwareGet => (
                Topic::FirmwareGet,
                self.outbox
                    .encode(|out| encode_firmware_get(out, id, module)),
            ),
            #[cfg(feature = "legacy-request")]
            TaskRequest::Legacy => {
                let version = String::from(self.version_of(module).unwrap_or_default());
                let version = &version;
                (
                    Topic::Request,
                    self.outbox
                        .encode(|out| encode_inform(out, id, version, module)),
                )
            }
        };
        self.outbox.push(Queued::Publish(topic, range));
    }

    // Out of line: one call per notification beats the move into the outbox at each one
    // (flash, issue #21).
    #[inline(never)]
    fn notify(&mut self, note: Note) {
        self.outbox.push(Queued::Notify(note));
    }
}
