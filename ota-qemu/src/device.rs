//! The device around the agent: performs every action (a RAM slot for the image, a kept
//! record, MQTT publishes and HTTP fetches checked against the cloud's script), answers the
//! storage ones, and keeps the transcript the run is judged by. Only the agent's own calls
//! run inside the [`Probe`]; serving the actions (the slot copy, the checks) does not.
//!
//! Nothing here allocates once the run starts but the box the agent is kept in (see
//! [`Device::boot`]), so the heap peak is the agent's alone.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use ota_core::{
    Action, Agent, BodyBuffer, Boot, Config, Event, FetchId, Instant, Notification, Outcome, Qos,
};

use crate::cloud::{self, IMAGE_SIZE, IMAGE_URL, MODULE, NEW_VERSION};
use crate::probe::{Call, Probe};

/// Room for the saved record ("a few hundred bytes at most", docs/architecture.md); never grown.
const RECORD_CAPACITY: usize = 1024;

/// Storage answers and deadlines one input may lead to before it counts as a livelock: a few,
/// plus one read per block of the image for the read-back that follows the last write.
const STEPS_PER_INPUT: usize = 64 + IMAGE_SIZE.div_ceil(crate::WRITE_BLOCK);

/// What the run saw, for the checks at the end.
#[derive(Default)]
pub struct Transcript {
    pub subscribes: u32,
    /// Version reports, in order: the version each one carried (old = false, new = true).
    pub informs: Vec<bool>,
    pub firmware_gets: u32,
    /// The last progress step published (they must rise strictly).
    pub last_step: i32,
    pub progress_reports: u32,
    pub fetches: u32,
    pub writes: u32,
    /// Blocks read back before activation.
    pub reads: u32,
    pub records_saved: u32,
    pub records_cleared: u32,
    pub task_received: bool,
    pub activated: bool,
    pub installed: bool,
    pub reboot: bool,
    pub health_check: bool,
    pub confirmed: bool,
    pub succeeded: bool,
}

/// The storage result the agent is owed (one operation in flight at a time).
#[derive(Clone, Copy)]
enum Answer {
    WriteDone,
    /// Bytes read back into the agent's buffer.
    ReadDone(usize),
    RecordSaved,
    Activated,
}

pub struct Device {
    /// The staging slot the image is written into.
    pub slot: Vec<u8>,
    record: Vec<u8>,
    record_saved: bool,
    /// Where the next `Write` must land (writes are sequential in this script).
    next_write: u64,
    fetch: Option<FetchId>,
    pub now: Instant,
    /// Measures every call into the agent.
    pub probe: Probe,
    pub log: Transcript,
}

impl Device {
    /// A device with an erased slot; allocates everything it will need.
    pub fn new() -> Self {
        let mut informs = Vec::new();
        informs.reserve_exact(8);
        Device {
            slot: vec![0xFF; IMAGE_SIZE],
            record: Vec::with_capacity(RECORD_CAPACITY),
            record_saved: false,
            next_write: 0,
            fetch: None,
            now: Instant::from_millis(1),
            probe: Probe::default(),
            log: Transcript {
                informs,
                ..Transcript::default()
            },
        }
    }

    /// The record as storage holds it now.
    pub fn saved_record(&self) -> Option<&[u8]> {
        self.record_saved.then_some(&self.record[..])
    }

    /// The fetch the agent asked for.
    pub fn fetch(&self) -> FetchId {
        match self.fetch {
            Some(fetch) => fetch,
            None => crate::fail(format_args!("the agent asked for no download")),
        }
    }

    /// Moves the clock on by `ms`.
    pub fn tick(&mut self, ms: u64) {
        self.now = Instant::from_millis(self.now.as_millis() + ms);
    }

    /// Builds the agent at boot, from the record storage holds, as firmware does. It goes
    /// to the heap at once: moved by value through the harness's frames, each would hold a
    /// copy of it (firmware keeps it in a static or in its task's future).
    pub fn boot(&mut self, config: Config, running_version: &str) -> Box<Agent> {
        let now = self.now;
        let boot = Boot {
            running_version,
            record: self.record_saved.then_some(&self.record[..]),
        };
        match self
            .probe
            .call(Call::Boot, || Agent::new(config, boot, now))
        {
            Ok(agent) => Box::new(agent),
            Err(e) => crate::fail(format_args!("Agent::new: {e:?}")),
        }
    }

    /// Feeds one input of kind `call` and serves everything it leads to.
    pub fn input(&mut self, agent: &mut Agent, call: Call, event: Event<'_>) {
        let now = self.now;
        let result = self.probe.call(call, || agent.handle(now, event));
        check!(result.is_ok(), "{:?} refused: {:?}", event, result);
        self.settle(agent);
    }

    /// Reads one body chunk into the staging block the agent lends, as ota-embedded's
    /// reqwless reader does, until the agent has taken all of it, serving its writes. The
    /// copy into the lent block stands for the network stack's read (which fills some buffer
    /// on any path) and is not counted; `body_buffer` and `body_filled` are.
    pub fn body(&mut self, agent: &mut Agent, fetch: FetchId, chunk: &[u8]) {
        let mut rest = chunk;
        while !rest.is_empty() {
            let now = self.now;
            let lent = {
                let agent = &mut *agent;
                self.probe
                    .call(Call::Body, move || agent.body_buffer(now, fetch))
            };
            let read = match lent {
                Ok(BodyBuffer::Lent(buffer)) => {
                    let n = buffer.len().min(rest.len());
                    buffer[..n].copy_from_slice(&rest[..n]);
                    Some(n)
                }
                Ok(BodyBuffer::Full) => None,
                Ok(BodyBuffer::Unwanted) => crate::fail(format_args!("the only fetch unwanted")),
                Err(e) => crate::fail(format_args!("body_buffer refused: {e:?}")),
            };
            let taken = match read {
                Some(n) => match self
                    .probe
                    .call(Call::Body, || agent.body_filled(now, fetch, n))
                {
                    Ok(taken) => taken,
                    Err(e) => crate::fail(format_args!("body refused: {e:?}")),
                },
                None => 0,
            };
            rest = &rest[taken..];
            let writes = self.log.writes;
            self.settle(agent);
            // Taking nothing is back-pressure only while a write is being served.
            check!(
                taken > 0 || self.log.writes > writes,
                "the agent stopped taking the body"
            );
        }
    }

    /// Drains and performs the actions, answers the storage one, fires due deadlines, until
    /// the agent has nothing more to do now.
    pub fn settle(&mut self, agent: &mut Agent) {
        // One input leads to a few storage answers at most; more is a livelock.
        for _ in 0..STEPS_PER_INPUT {
            let now = self.now;
            if let Some(answer) = self.drain(agent) {
                let (call, event) = match answer {
                    Answer::WriteDone => (Call::StorageDone, Event::WriteDone),
                    Answer::ReadDone(len) => (Call::ReadDone, Event::ReadDone { len }),
                    Answer::RecordSaved => (Call::StorageDone, Event::RecordSaved),
                    Answer::Activated => (Call::StorageDone, Event::Activated),
                };
                let result = self.probe.call(call, || agent.handle(now, event));
                check!(result.is_ok(), "{:?} refused: {:?}", event, result);
                continue;
            }
            let deadline = self.probe.call(Call::Deadline, || agent.poll_timeout());
            if deadline.is_none_or(|d| d > now) {
                return;
            }
            let result = self
                .probe
                .call(Call::Deadline, || agent.handle_timeout(now));
            check!(result.is_ok(), "timeout refused: {:?}", result);
        }
        crate::fail(format_args!(
            "the agent did not settle in {STEPS_PER_INPUT} steps"
        ));
    }

    fn drain(&mut self, agent: &mut Agent) -> Option<Answer> {
        let mut owed = None;
        while let Some(action) = self.probe.call(Call::PollAction, || agent.poll_action()) {
            if let Some(answer) = self.perform(action) {
                check!(owed.is_none(), "two storage operations in flight");
                owed = Some(answer);
            }
        }
        owed
    }

    fn perform(&mut self, action: Action<'_>) -> Option<Answer> {
        match action {
            Action::Subscribe { topic } => {
                check!(topic.contains("a1TestPK001/dev01"), "subscribe to {topic}");
                self.log.subscribes += 1;
            }
            Action::Publish {
                topic,
                payload,
                qos,
            } => {
                check!(qos == Qos::AtLeastOnce, "{topic} published at {qos:?}");
                self.published(topic, payload);
            }
            Action::Fetch { fetch, url, offset } => {
                check!(url == IMAGE_URL, "fetch of {url}");
                check!(offset == 0, "fetch from {offset}");
                self.fetch = Some(fetch);
                self.log.fetches += 1;
            }
            Action::Write { offset, data } => {
                check!(offset == self.next_write, "write at {offset}");
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let Some(target) = self.slot.get_mut(start..start.saturating_add(data.len()))
                else {
                    crate::fail(format_args!("write beyond the slot at {offset}"));
                };
                target.copy_from_slice(data);
                self.next_write += data.len() as u64;
                self.log.writes += 1;
                return Some(Answer::WriteDone);
            }
            Action::Read { offset, buf } => {
                // The read-back before activation (`Config::read_back`): the slot is RAM here,
                // as memory-mapped flash would be.
                let start = usize::try_from(offset).unwrap_or(usize::MAX);
                let Some(source) = self.slot.get(start..start.saturating_add(buf.len())) else {
                    crate::fail(format_args!("read beyond the slot at {offset}"));
                };
                buf.copy_from_slice(source);
                self.log.reads += 1;
                return Some(Answer::ReadDone(buf.len()));
            }
            Action::SaveRecord { record } => {
                check!(
                    record.len() <= RECORD_CAPACITY,
                    "record of {}",
                    record.len()
                );
                self.record.clear();
                self.record.extend_from_slice(record);
                self.record_saved = true;
                self.log.records_saved += 1;
                return Some(Answer::RecordSaved);
            }
            Action::ClearRecord => {
                self.record.clear();
                self.record_saved = false;
                self.log.records_cleared += 1;
                return Some(Answer::RecordSaved);
            }
            Action::Activate { module, version } => {
                check!(
                    module == MODULE && version == NEW_VERSION,
                    "activate {module} {version}"
                );
                self.log.activated = true;
                return Some(Answer::Activated);
            }
            Action::Reboot => self.log.reboot = true,
            Action::Confirm { module } => {
                check!(module == MODULE, "confirm {module}");
                self.log.confirmed = true;
            }
            Action::CancelFetch { .. } | Action::Rollback { .. } => {
                crate::fail(format_args!("unexpected {action:?}"))
            }
            Action::Notify(note) => self.notified(note),
        }
        None
    }

    fn published(&mut self, topic: &str, payload: &[u8]) {
        let text = core::str::from_utf8(payload).unwrap_or_default();
        if topic == cloud::INFORM_TOPIC {
            let version = json_str(text, "version");
            check!(
                version == Some(cloud::OLD_VERSION) || version == Some(NEW_VERSION),
                "inform {text}"
            );
            check!(
                self.log.informs.len() < self.log.informs.capacity(),
                "too many informs"
            );
            self.log.informs.push(version == Some(NEW_VERSION));
        } else if topic == cloud::PROGRESS_TOPIC {
            let step = json_str(text, "step").and_then(|s| s.parse::<i32>().ok());
            let Some(step) = step.filter(|s| *s > self.log.last_step && *s <= 100) else {
                crate::fail(format_args!("progress {text} after {}", self.log.last_step));
            };
            self.log.last_step = step;
            self.log.progress_reports += 1;
        } else if topic == cloud::FIRMWARE_GET_TOPIC {
            self.log.firmware_gets += 1;
        } else {
            crate::fail(format_args!("publish on {topic}: {text}"));
        }
    }

    fn notified(&mut self, note: Notification<'_>) {
        match note {
            Notification::TaskReceived(task) => {
                check!(task.version == NEW_VERSION, "task for {}", task.version);
                check!(task.size == IMAGE_SIZE as u64, "task of {} B", task.size);
                self.log.task_received = true;
            }
            Notification::Progress { .. } => {}
            Notification::HealthCheckRequested { module, version } => {
                check!(
                    module == MODULE && version == NEW_VERSION,
                    "health check of {version}"
                );
                self.log.health_check = true;
            }
            Notification::Outcome(Outcome::Installed { version }) => {
                check!(version == NEW_VERSION, "installed {version}");
                self.log.installed = true;
            }
            Notification::Outcome(Outcome::Succeeded { version }) => {
                check!(version == NEW_VERSION, "succeeded with {version}");
                self.log.succeeded = true;
            }
            other => crate::fail(format_args!("unexpected {other:?}")),
        }
    }
}

/// The string value of `"key":"..."` in compact JSON the agent wrote (no escapes in the
/// values looked up here: versions and steps).
fn json_str<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let start = json.find(key)? + key.len();
    let rest = json[start..].strip_prefix("\":\"")?;
    rest.split('"').next()
}
