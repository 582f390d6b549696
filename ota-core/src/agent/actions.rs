//! What the agent asks of its adapter, and the queue that holds it until drained.
//!
//! Queued actions are owned and compact; [`Outbox::view`] lends them out as [`Action`]s
//! that borrow payloads from one reusable arena and written bytes from the staging
//! block, so steady-state operation does not allocate.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::ops::Range;

use crate::identity::Topics;
use crate::record::RecordError;
use crate::task::Task;
use crate::uplink::FailureCode;

/// Identifies one HTTP request, so that events of an abandoned request are told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FetchId(pub u32);

/// One thing for the adapter to do. Every storage action (`Write`, `Read`, `SaveRecord`,
/// `ClearRecord`, `Activate`) is answered by exactly one result event. Up to
/// `Config::write_buffers` `Write`s may be outstanding at once, answered in the order they
/// were asked; any other storage action is outstanding alone, asked only once every write
/// before it was answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Action<'a> {
    /// Subscribe (QoS 1) to a downlink topic.
    Subscribe {
        /// Topic filter.
        topic: &'a str,
    },
    /// Publish.
    Publish {
        /// Topic.
        topic: &'a str,
        /// Compact JSON.
        payload: &'a [u8],
        /// The MQTT QoS to publish with.
        qos: Qos,
    },
    /// GET `url`; when `offset > 0` send `Range: bytes={offset}-`. Report the response
    /// with [`Event::HttpResponse`](crate::Event), then body bytes, then the end or a failure.
    Fetch {
        /// Tag the request's events with this.
        fetch: FetchId,
        /// The signed URL.
        url: &'a str,
        /// First byte wanted.
        offset: u64,
    },
    /// Stop the request and deliver no more of its events (stale ones are ignored anyway).
    CancelFetch {
        /// The request.
        fetch: FetchId,
    },
    /// Write `data` to the staging slot at `offset`; answer `WriteDone` or `WriteFailed`,
    /// writes in the order asked. `data` borrows one staging block, which the agent leaves
    /// untouched until this write is answered; the borrow itself ends with the action, so an
    /// adapter that answers later (a writer thread, a DMA transfer) copies the bytes into a
    /// buffer of its own or finishes using them before its next input.
    Write {
        /// Offset in the image (a multiple of the write block).
        offset: u64,
        /// Bytes (a whole block, or the image's tail).
        data: &'a [u8],
    },
    /// Read the staging slot at `offset` into `buf`, before the next input (the borrow ends
    /// with the action); answer `ReadDone { len }` with the bytes read, fewer than
    /// `buf.len()` where the staged data ends (a short file), or `ReadFailed`. The agent
    /// re-reads what it is about to trust: the staged prefix of a resumed download, and the
    /// whole image before activation when `Config::read_back` is set.
    Read {
        /// Offset in the slot (as in `Write`).
        offset: u64,
        /// Where the bytes go: a staging block, idle while the agent reads.
        buf: &'a mut [u8],
    },
    /// Replace the saved record atomically; answer `RecordSaved` or `RecordSaveFailed`.
    SaveRecord {
        /// Encoded record.
        record: &'a [u8],
    },
    /// Delete the saved record; answer `RecordSaved` or `RecordSaveFailed`.
    ClearRecord,
    /// Make the verified staged image the one to boot next; answer `Activated` or
    /// `ActivationFailed`.
    Activate {
        /// Module.
        module: &'a str,
        /// Its new version.
        version: &'a str,
    },
    /// Restart the device (into the activated image, or back to the old one).
    Reboot,
    /// The new image is healthy: make it permanent (e.g. embassy-boot `mark_booted`).
    Confirm {
        /// The module whose image it is.
        module: &'a str,
    },
    /// The new image is not healthy: make the previous one boot next.
    Rollback {
        /// The module whose image it is.
        module: &'a str,
    },
    /// Tell the application something.
    Notify(Notification<'a>),
}

/// MQTT delivery guarantee of a publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Qos {
    /// QoS 0: for MQTT-channel block requests, which the agent asks again itself when no
    /// reply comes. (A QoS 1 request also costs a PUBACK that can hold the block reply back
    /// behind Nagle's algorithm on brokers without TCP_NODELAY.)
    AtMostOnce,
    /// QoS 1: reports and requests that must arrive.
    AtLeastOnce,
}

/// News for the application.
#[derive(Debug, PartialEq, Eq)]
pub enum Notification<'a> {
    /// A valid task was accepted and its download begins (or resumes).
    TaskReceived(&'a Task),
    /// A valid task waits for the application's decision (`Confirmation::Ask`).
    TaskOffered(&'a Task),
    /// A push or reply was refused; `-1` was reported when the protocol asks for it.
    TaskRejected {
        /// Why.
        reason: &'a str,
    },
    /// Download progress.
    Progress {
        /// 1..=100.
        percent: u8,
        /// Bytes received.
        received: u64,
        /// Image size.
        size: u64,
    },
    /// The new image is running: run the self-test and answer with `HealthVerdict`.
    HealthCheckRequested {
        /// The module under test.
        module: &'a str,
        /// Its new version.
        version: &'a str,
    },
    /// The saved record could not be used and was discarded.
    RecordDiscarded(RecordError),
    /// How the task ended.
    Outcome(Outcome<'a>),
}

/// How a task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// Verified and activated; a reboot follows.
    Installed {
        /// The new version.
        version: &'a str,
    },
    /// Running the new version, healthy and confirmed.
    Succeeded {
        /// The new version.
        version: &'a str,
    },
    /// Failed; the code was reported to the cloud.
    Failed {
        /// The code reported.
        code: FailureCode,
        /// Why (also the `desc` of the report).
        reason: &'a str,
    },
    /// The previous version runs again.
    RolledBack {
        /// The running version.
        version: &'a str,
    },
    /// The cloud no longer has the task.
    Canceled,
    /// The application declined the task.
    Declined,
}

/// Which topic a queued publish or subscribe refers to.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Topic {
    Inform,
    Upgrade,
    Progress,
    #[cfg(feature = "legacy-request")]
    Request,
    FirmwareGet,
    FirmwareGetReply,
    #[cfg(feature = "mqtt-channel")]
    FileDownload,
    #[cfg(feature = "mqtt-channel")]
    FileDownloadReply,
}

impl Topic {
    fn of(self, topics: &Topics) -> &str {
        match self {
            Topic::Inform => &topics.inform,
            Topic::Upgrade => &topics.upgrade,
            Topic::Progress => &topics.progress,
            #[cfg(feature = "legacy-request")]
            Topic::Request => &topics.request,
            Topic::FirmwareGet => &topics.firmware_get,
            Topic::FirmwareGetReply => &topics.firmware_get_reply,
            #[cfg(feature = "mqtt-channel")]
            Topic::FileDownload => &topics.file_download,
            #[cfg(feature = "mqtt-channel")]
            Topic::FileDownloadReply => &topics.file_download_reply,
        }
    }
}

#[derive(Debug)]
pub(crate) enum Note {
    TaskReceived(Box<Task>),
    TaskOffered(Box<Task>),
    TaskRejected(String),
    Progress {
        percent: u8,
        received: u64,
        size: u64,
    },
    HealthCheck {
        module: String,
        version: String,
    },
    RecordDiscarded(RecordError),
    Installed(String),
    Succeeded(String),
    Failed(FailureCode, String),
    RolledBack(String),
    Canceled,
    Declined,
}

#[derive(Debug)]
pub(crate) enum Queued {
    Subscribe(Topic),
    Publish(Topic, Range<usize>),
    Fetch {
        fetch: FetchId,
        url: Range<usize>,
        offset: u64,
    },
    CancelFetch(FetchId),
    Write {
        offset: u64,
        /// Where the block starts in the staging ring.
        at: usize,
        len: usize,
    },
    Read {
        offset: u64,
        /// Where the block starts in the staging ring.
        at: usize,
        len: usize,
    },
    SaveRecord(Range<usize>),
    ClearRecord,
    Activate {
        module: Range<usize>,
        version: Range<usize>,
    },
    Reboot,
    Confirm(Range<usize>),
    Rollback(Range<usize>),
    Notify(Note),
}

/// Most actions one input can produce; the queue never grows beyond it.
pub(crate) const QUEUE_CAPACITY: usize = 32;

/// The pending actions and the arena their payloads live in.
///
/// The actions of one input stay where they were pushed until the next input: [`Outbox::pop`]
/// only moves a cursor and lends the action in place (what it borrows, a note's text, lives
/// in the queue), so draining moves no action and drops none; [`Outbox::recycle`] drops them
/// all at once.
pub(crate) struct Outbox {
    queue: Vec<Queued>,
    /// Index of the next action to lend; the ones before it were performed.
    next: usize,
    pub(crate) arena: Vec<u8>,
}

impl Outbox {
    pub(crate) fn new() -> Self {
        Outbox {
            queue: Vec::with_capacity(QUEUE_CAPACITY),
            next: 0,
            arena: Vec::with_capacity(1024),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.next == self.queue.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len() - self.next
    }

    /// Called before each input: the previous input's actions are all performed.
    pub(crate) fn recycle(&mut self) {
        if !self.queue.is_empty() {
            // Most body chunks queue nothing: no call to drop an empty queue's actions.
            self.queue.clear();
            self.next = 0;
        }
        self.arena.clear();
    }

    pub(crate) fn push(&mut self, item: Queued) {
        debug_assert!(self.queue.len() < QUEUE_CAPACITY, "action queue overflow");
        self.queue.push(item);
    }

    /// Copies `bytes` into the arena and returns where they are.
    pub(crate) fn stash(&mut self, bytes: &[u8]) -> Range<usize> {
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        start..self.arena.len()
    }

    /// Runs an encoder that appends to the arena and returns the range it wrote.
    pub(crate) fn encode(&mut self, f: impl FnOnce(&mut Vec<u8>)) -> Range<usize> {
        let start = self.arena.len();
        f(&mut self.arena);
        start..self.arena.len()
    }

    pub(crate) fn pop<'a>(
        &'a mut self,
        topics: &'a Topics,
        staging: &'a mut [u8],
    ) -> Option<Action<'a>> {
        let queued = self.queue.get(self.next)?;
        self.next += 1;
        let arena = &self.arena[..];
        let text = |r: &Range<usize>| core::str::from_utf8(&arena[r.clone()]).unwrap_or_default();
        Some(match queued {
            Queued::Subscribe(t) => Action::Subscribe {
                topic: t.of(topics),
            },
            Queued::Publish(t, r) => Action::Publish {
                topic: t.of(topics),
                payload: &arena[r.clone()],
                qos: match t {
                    #[cfg(feature = "mqtt-channel")]
                    Topic::FileDownload => Qos::AtMostOnce,
                    _ => Qos::AtLeastOnce,
                },
            },
            Queued::Fetch { fetch, url, offset } => Action::Fetch {
                fetch: *fetch,
                url: text(url),
                offset: *offset,
            },
            Queued::CancelFetch(fetch) => Action::CancelFetch { fetch: *fetch },
            Queued::Write { offset, at, len } => Action::Write {
                offset: *offset,
                data: &staging[*at..*at + *len],
            },
            Queued::Read { offset, at, len } => Action::Read {
                offset: *offset,
                buf: &mut staging[*at..*at + *len],
            },
            Queued::SaveRecord(r) => Action::SaveRecord {
                record: &arena[r.clone()],
            },
            Queued::ClearRecord => Action::ClearRecord,
            Queued::Activate { module, version } => Action::Activate {
                module: text(module),
                version: text(version),
            },
            Queued::Reboot => Action::Reboot,
            Queued::Confirm(module) => Action::Confirm {
                module: text(module),
            },
            Queued::Rollback(module) => Action::Rollback {
                module: text(module),
            },
            Queued::Notify(note) => Action::Notify(match note {
                Note::TaskReceived(task) => Notification::TaskReceived(task),
                Note::TaskOffered(task) => Notification::TaskOffered(task),
                Note::TaskRejected(reason) => Notification::TaskRejected { reason },
                Note::Progress {
                    percent,
                    received,
                    size,
                } => Notification::Progress {
                    percent: *percent,
                    received: *received,
                    size: *size,
                },
                Note::HealthCheck { module, version } => {
                    Notification::HealthCheckRequested { module, version }
                }
                Note::RecordDiscarded(e) => Notification::RecordDiscarded(*e),
                Note::Installed(version) => Notification::Outcome(Outcome::Installed { version }),
                Note::Succeeded(version) => Notification::Outcome(Outcome::Succeeded { version }),
                Note::Failed(code, reason) => Notification::Outcome(Outcome::Failed {
                    code: *code,
                    reason,
                }),
                Note::RolledBack(version) => Notification::Outcome(Outcome::RolledBack { version }),
                Note::Canceled => Notification::Outcome(Outcome::Canceled),
                Note::Declined => Notification::Outcome(Outcome::Declined),
            }),
        })
    }
}
