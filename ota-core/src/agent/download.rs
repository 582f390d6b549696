//! The download phase: Range resume, response checks, staging and writes, checkpoints,
//! retries with back-off, URL refresh, stall detection, progress and verification.

use alloc::string::String;
use core::time::Duration;

use super::actions::{FetchId, Note, Queued, Topic};
#[cfg(feature = "mqtt-channel")]
use super::blocks::Blocks;
use super::reread::Reread;
use super::ring::Ring;
use super::BodyBuffer;
use super::{Agent, Io, RecordPurpose, State};
use crate::digest::Hasher;
use crate::error::Error;
use crate::record::{
    encode_record, encode_record_head, finish_record, record_crc, ImageId, PhaseRef, RecordCrc,
};
use crate::task::{Channel, Task};
use crate::time::Instant;
use crate::uplink::{encode_progress, FailureCode, Step};

/// Where the HTTP side of a download stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Fetch {
    /// No request out; one starts as soon as the record allows.
    Idle,
    /// Request sent from `offset`; waiting for the status.
    Requested { id: FetchId, offset: u64 },
    /// Body flowing until byte `end` (exclusive).
    Streaming { id: FetchId, end: u64 },
    /// Waiting out a back-off delay after a transient error.
    Backoff { until: Instant },
    /// The URL is dead; a task request is (or will be) out for a fresh one.
    Refreshing { sent: bool, until: Instant },
    /// Every byte arrived.
    Complete,
}

/// One task's download.
pub(super) struct Download {
    pub(super) task: Task,
    pub(super) image: ImageId,
    pub(super) generation: u32,
    /// Index of the file being downloaded (always 0 for a single image).
    pub(super) file: usize,
    /// Bytes of the files before it (verified), for progress over the whole task.
    done: u64,
    /// Where the current file starts in the slot: files are laid out back to back, each
    /// starting on a write-block boundary.
    pub(super) base: u64,
    pub(super) hasher: Hasher,
    /// Bytes whose writes were acknowledged; the hasher covers exactly them whenever
    /// `received == written`.
    pub(super) written: u64,
    /// Bytes hashed (written, in flight, sealed or filling in the staging ring).
    pub(super) received: u64,
    /// Offset in the last durable record; `None` until the first one is saved.
    pub(super) recorded: Option<u64>,
    /// Where the next record is due. No byte past it is taken before that record is
    /// queued, so that its digest state covers exactly the bytes before it.
    next_checkpoint: u64,
    fetch: Fetch,
    pub(super) failures: u32,
    refreshes: u32,
    /// Leading body bytes to drop: the server ignored our Range and sent from byte 0.
    skip: u64,
    /// The MQTT-channel side of the download (`None` for HTTP).
    #[cfg(feature = "mqtt-channel")]
    pub(super) blocks: Option<Blocks>,
    /// A re-read of the slot under way: nothing else of the download moves meanwhile.
    /// Boxed: rare, and a digest state would make every download (and the stack frames that
    /// move one) bigger.
    pub(super) reread: Option<alloc::boxed::Box<Reread>>,
    last_activity: Instant,
    notified: u8,
    /// When the next percentage may be notified (before it, only the next step): the
    /// notification's time plus the interval, computed once per notification rather than
    /// per body chunk.
    next_percent_at: Instant,
    /// Bytes at which the percentage passes `notified + 1` and `notified + step`: below both
    /// (within the interval), a body chunk skips the progress arithmetic altogether.
    next_percent_bytes: u64,
    next_step_bytes: u64,
    /// The task's size in hundredths, for those two thresholds without a 64-bit division each.
    hundredths: Hundredths,
    /// The step the throttle chose for the cloud, waiting for a record that carries it.
    due_step: u8,
    /// The step carried by the durable record: the highest one the cloud may hear.
    pub(super) saved_step: u8,
    /// The step last published (in this boot, or the floor a resumed record set).
    reported: u8,
}

impl Download {
    pub(super) fn new(task: Task, generation: u32, now: Instant) -> Self {
        let hasher = Hasher::new(task.digest.method());
        Self::at(task, generation, (0, 0), hasher, None, now, (1, 0))
    }

    /// The cloud may have heard `step` before the restart: the next report must exceed it.
    /// A record of the previous format never reported past its durable offset, so that
    /// percentage is a floor as well.
    pub(super) fn with_step_floor(mut self, step: u8) -> Self {
        let floor = step.max(self.durable_percent());
        (self.saved_step, self.reported) = (floor, floor);
        self
    }

    /// Continues from a saved record: in file `file`, `offset` bytes are on flash and
    /// `hasher` covers them. `block` is the write block (files start on its boundaries),
    /// `interval` the checkpoint interval in bytes.
    pub(super) fn resume(
        task: Task,
        generation: u32,
        (file, offset): (usize, u64),
        hasher: Hasher,
        now: Instant,
        (block, interval): (u64, u64),
    ) -> Self {
        Self::at(
            task,
            generation,
            (file, offset),
            hasher,
            Some(offset),
            now,
            (block, interval),
        )
    }

    fn at(
        task: Task,
        generation: u32,
        (file, offset): (usize, u64),
        hasher: Hasher,
        recorded: Option<u64>,
        now: Instant,
        (block, interval): (u64, u64),
    ) -> Self {
        let before = &task.files()[..file.min(task.files().len())];
        let done = before.iter().map(|f| f.size).sum();
        let base = before.iter().map(|f| f.size.div_ceil(block) * block).sum();
        #[cfg(feature = "mqtt-channel")]
        let blocks = Blocks::for_task(&task, generation, offset);
        let hundredths = Hundredths::of(task.size);
        Download {
            image: ImageId::of(&task),
            task,
            generation,
            file,
            done,
            base,
            hasher,
            written: offset,
            received: offset,
            recorded,
            next_checkpoint: offset + recorded.map_or(0, |_| interval),
            fetch: Fetch::Idle,
            failures: 0,
            refreshes: 0,
            skip: 0,
            #[cfg(feature = "mqtt-channel")]
            blocks,
            reread: None,
            last_activity: now,
            notified: 0,
            next_percent_at: now,
            next_percent_bytes: 0,
            next_step_bytes: 0,
            hundredths,
            due_step: 0,
            saved_step: 0,
            reported: 0,
        }
    }

    /// Size of the file being downloaded (the image, for a single-file task).
    pub(super) fn size(&self) -> u64 {
        self.task
            .files()
            .get(self.file)
            .map_or(self.task.size, |f| f.size)
    }

    /// Digest of the file being downloaded.
    pub(super) fn digest(&self) -> &crate::task::ExpectedDigest {
        self.task
            .files()
            .get(self.file)
            .map_or(&self.task.digest, |f| &f.digest)
    }

    /// URL of the file being downloaded (`None` over the MQTT channel).
    pub(super) fn url(&self) -> Option<&str> {
        match self.task.files().get(self.file) {
            Some(f) => Some(&f.url),
            None => self.task.url(),
        }
    }

    /// The current file verified: move on to the next one, laid out after it in the slot.
    /// Returns false when it was the last.
    fn next_file(&mut self, block: u64) -> bool {
        if self.file + 1 >= self.task.files().len() {
            return false;
        }
        let size = self.size();
        self.done += size;
        self.base += size.div_ceil(block) * block;
        self.file += 1;
        self.hasher = Hasher::new(self.digest().method());
        (self.written, self.received, self.next_checkpoint, self.skip) = (0, 0, 0, 0);
        (self.failures, self.refreshes) = (0, 0);
        self.recorded = None; // the record moves to the new file before its first byte
        self.fetch = Fetch::Idle;
        true
    }

    pub(super) fn open_fetch(&self) -> Option<FetchId> {
        match self.fetch {
            Fetch::Requested { id, .. } | Fetch::Streaming { id, .. } => Some(id),
            _ => None,
        }
    }

    pub(super) fn is_refreshing(&self) -> bool {
        matches!(self.fetch, Fetch::Refreshing { .. })
    }

    /// The connect handler just asked for the task: wait for the answer from now.
    pub(super) fn mark_request_sent(&mut self, now: Instant, reply_timeout: Duration) {
        if let Fetch::Refreshing { .. } = self.fetch {
            self.fetch = Fetch::Refreshing {
                sent: true,
                until: now + reply_timeout,
            };
        }
    }

    /// The same image came again: keep its (possibly fresher) URL, and go on if we were
    /// waiting for exactly that.
    pub(super) fn adopt_fresh_channel(&mut self, task: &Task) {
        #[cfg(feature = "mqtt-channel")]
        if let Some(blocks) = self.blocks.as_mut() {
            blocks.adopt(task);
        }
        if let Some(url) = task.url() {
            self.task.channel = Channel::Http { url: url.into() };
        }
        // Same files (`Task::same_image`: names, sizes and digests), fresh URLs: only the URLs
        // are copied, not the whole list (flash, issue #21).
        #[cfg(feature = "multi-file")]
        for (file, fresh) in self.task.files.iter_mut().zip(&task.files) {
            file.url.clone_from(&fresh.url);
        }
        if self.is_refreshing() {
            self.fetch = Fetch::Idle;
        }
    }

    pub(super) fn on_written(&mut self, end: u64, now: Instant) {
        self.written = end;
        self.last_activity = now;
        self.failures = 0;
    }

    /// The next deadline, if any. A stall is only measured while the agent waits on the
    /// network, not while the adapter's storage is busy.
    #[cfg_attr(not(feature = "mqtt-channel"), allow(unused_variables))]
    pub(super) fn deadline(
        &self,
        stall_ms: u64,
        storage_busy: bool,
        online: bool,
    ) -> Option<Instant> {
        #[cfg(feature = "mqtt-channel")]
        if let Some(blocks) = &self.blocks {
            // Offline, no request is out: the reconnect asks again.
            return blocks.deadline().filter(|_| online);
        }
        match self.fetch {
            Fetch::Requested { .. } | Fetch::Streaming { .. } if !storage_busy => {
                Some(self.stalled_at(stall_ms))
            }
            Fetch::Backoff { until } | Fetch::Refreshing { until, .. } => Some(until),
            _ => None,
        }
    }

    /// When the fetch counts as stalled: `stall_ms` (the stall timeout) after the last activity.
    fn stalled_at(&self, stall_ms: u64) -> Instant {
        Instant::from_millis(self.last_activity.as_millis().saturating_add(stall_ms))
    }

    /// How many body bytes the filling block of the ring may take now: never past `end`, nor
    /// past a checkpoint not yet queued, and none for a new block while a step waits for its
    /// record.
    #[inline(always)] // run for every body chunk; two callers
    fn stage_limit(&self, ring: &Ring, end: u64) -> usize {
        if self.due_step > self.saved_step && ring.filled() == 0 && ring.in_flight() > 0 {
            // A step waits for the record that carries it, and records wait for the writes
            // in flight: start no new block until they are done, or with several staging
            // blocks the writes might never pause and the step would wait for a checkpoint.
            return 0;
        }
        // A range ends within the file, so a checkpoint at or past its end changes nothing.
        let end = end.min(self.next_checkpoint);
        let left = end.saturating_sub(self.received);
        ring.room_len().min(left.try_into().unwrap_or(usize::MAX))
    }

    /// Copies as much of `bytes` as [`Download::stage_limit`] allows into the filling block
    /// and stages it. Returns how many were taken. (The MQTT channel's replies; HTTP bodies
    /// know their limit already and call [`Download::stage_up_to`].)
    #[cfg(feature = "mqtt-channel")]
    pub(super) fn stage(&mut self, ring: &mut Ring, bytes: &[u8], end: u64) -> usize {
        let limit = self.stage_limit(ring, end);
        self.stage_up_to(ring, bytes, limit)
    }

    /// [`Download::stage`] with the limit already known.
    fn stage_up_to(&mut self, ring: &mut Ring, bytes: &[u8], limit: usize) -> usize {
        let n = bytes.len().min(limit);
        ring.room_prefix(n).copy_from_slice(&bytes[..n]);
        self.staged(ring, n);
        n
    }

    /// The first `n` bytes of the ring's room hold body bytes: hash them in place (each byte
    /// is hashed exactly once) and take them into the filling block.
    fn staged(&mut self, ring: &mut Ring, n: usize) {
        self.hasher.update(ring.room_prefix(n));
        ring.commit(n);
        self.received += n as u64;
    }

    /// Drops up to `n` leading body bytes the server sent again (it ignored our Range);
    /// returns how many.
    fn skip_bytes(&mut self, n: usize) -> usize {
        let k = self.skip.min(n as u64) as usize;
        self.skip -= k as u64;
        k
    }

    /// How many bytes [`Agent::body_buffer`] lends (see [`Agent::body_room`]), and how many of
    /// them may be staged ([`Download::stage_limit`]).
    #[inline(always)] // run for every body chunk
    fn lend_len(&self, ring: &Ring, end: u64) -> (usize, usize) {
        let room = ring.room_len();
        let limit = self.stage_limit(ring, end);
        if self.skip > 0 {
            return (room.min(self.skip.try_into().unwrap_or(usize::MAX)), limit);
        }
        if limit < room && self.received + limit as u64 == end {
            (limit + 1, limit)
        } else {
            (limit, limit)
        }
    }

    /// How many body bytes a call may stage with nothing else to do, and until when that
    /// holds: a call staging fewer (but at least one) fills no block, ends no range, reaches
    /// no checkpoint and no progress threshold, so neither [`Agent::after_body`] nor
    /// [`Agent::advance`] has anything to do (staging puts `received` past `written`, so no
    /// checkpoint or verification can become due, and no step is marked). `stage` is what
    /// [`Download::stage_limit`] allows. None while leading bytes are skipped, before the
    /// first notification or during a re-read. Both body entry points skip the rest of the
    /// call by this one rule.
    #[inline(always)] // run for every body chunk
    fn quiet(&self, stage: usize, now: Instant) -> (usize, Option<Instant>) {
        if self.skip > 0 || self.notified == 0 || self.reread.is_some() {
            return (0, None);
        }
        // The threshold `progress_due` compares with: the next step until `next_percent_at`,
        // the next percentage from then on (time only moves forward, so for good).
        let (threshold, until) = if now < self.next_percent_at {
            (self.next_step_bytes, Some(self.next_percent_at))
        } else {
            (self.next_percent_bytes, None)
        };
        let left = threshold.saturating_sub(self.done + self.received);
        (stage.min(left.try_into().unwrap_or(usize::MAX)), until)
    }

    /// A checkpoint is due when every byte taken is acknowledged (the digest covers exactly
    /// the written bytes) at the offset where the next record is due.
    fn checkpoint_due(&self) -> bool {
        self.recorded.is_some()
            && self.received == self.written
            && self.written < self.size()
            && self.written >= self.next_checkpoint
    }

    /// True when [`Agent::report_progress`] has something to do: the first byte arrived, or
    /// the bytes passed the next percentage (once the interval passed) or the next step.
    #[inline(always)] // the check run for every body chunk
    fn progress_due(&self, now: Instant) -> bool {
        let bytes = self.done + self.received;
        let threshold = if now >= self.next_percent_at {
            self.next_percent_bytes
        } else {
            self.next_step_bytes
        };
        bytes > 0 && (self.notified == 0 || bytes >= threshold)
    }

    /// Percentage of the task recorded as durable (what a restart resumes from), below 100.
    fn durable_percent(&self) -> u8 {
        let durable = self.done + self.recorded.unwrap_or(0);
        percent_of(durable, self.task.size.max(1)).min(99)
    }

    fn percent(&self) -> u8 {
        percent_of(self.done + self.received, self.task.size.max(1)).clamp(1, 99)
    }
}

/// What body bytes of a fetch may do now.
enum Intake {
    /// Not the current fetch (or no download): taken and dropped.
    Drop,
    /// Every block is full or in flight: back-pressure.
    Full,
    /// Staged, up to byte `end` of the range of fetch `id`.
    Take { id: FetchId, end: u64 },
}

/// What [`Agent::body_buffer`] lent, kept until the next input: [`Agent::body_filled`] right
/// after it finds here what it would otherwise decide again (nothing in between can have
/// changed it), so the per-chunk path decides once.
#[derive(Clone, Copy, Debug)]
pub(super) struct Lend {
    pub(super) fetch: FetchId,
    /// End of the fetch's range.
    end: u64,
    /// Bytes lent.
    len: usize,
    /// How many of them may be staged.
    stage: usize,
    /// Fewer than this many bytes, filled before `until`, need nothing but staging
    /// ([`Download::quiet`]).
    quiet: usize,
    until: Option<Instant>,
}

/// The head of the last download record queued (all but its step, signature and CRC:
/// [`encode_record_head`]) and the CRC-32 over it. A record that only carries a new step
/// (one per progress step, at the offset of the last checkpoint) repeats that head, so it
/// copies these bytes and finishes the CRC from here instead of encoding and checking them
/// again. Allocated with the agent; the body path only refills it.
pub(super) struct RecordHead {
    /// Download generation, file and offset the head was encoded for.
    key: Option<(u32, usize, u64)>,
    bytes: alloc::vec::Vec<u8>,
    crc: RecordCrc,
}

impl RecordHead {
    pub(super) fn new() -> Self {
        RecordHead {
            key: None,
            // A head is ~170 bytes with an MD5 state, ~190 with SHA-256's, plus the names.
            bytes: alloc::vec::Vec::with_capacity(256),
            crc: record_crc(&[]),
        }
    }
}

/// What `advance_download` decided, computed while the download is borrowed.
enum Next {
    Nothing,
    Checkpoint(u64),
    /// Save the durable offset again, now carrying the step the cloud is to hear next.
    SaveStep,
    Verify,
    Fetch,
}

impl Agent {
    /// Called when no record, clear or activation is pending: seals a full block, issues
    /// every sealed block, then starts the one next step the download allows.
    pub(super) fn advance_download(&mut self) {
        if self.advance_reread() {
            return;
        }
        #[cfg(feature = "mqtt-channel")]
        self.stage_arrived_blocks();
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        let ring = &mut self.ring;
        let (block, size) = (ring.block(), d.size());
        let filled = ring.filled();
        if filled > 0 && (filled == block || d.received == size) {
            let start = d.received - filled as u64;
            ring.seal(d.base + start, d.received, d.generation);
        }
        if d.recorded.is_some() {
            while let Some(write) = ring.issue() {
                self.outbox.push(Queued::Write {
                    offset: write.offset,
                    at: write.at,
                    len: write.len,
                });
            }
        }
        // Records wait for every write in flight (each storage operation but `Write` is
        // alone); fetches wait while every block is being written, as with a single block.
        let writes_idle = ring.in_flight() == 0;
        let ring_busy = ring.in_flight() >= self.config.write_buffers;
        let next = if d.recorded.is_none() {
            if writes_idle {
                Next::Checkpoint(d.written)
            } else {
                Next::Nothing
            }
        } else if d.checkpoint_due() && writes_idle {
            Next::Checkpoint(d.written)
        } else if d.written == size {
            Next::Verify
        } else if d.due_step > d.saved_step && writes_idle {
            Next::SaveStep
        } else if d.fetch == Fetch::Idle && d.received < size && !ring_busy {
            Next::Fetch
        } else {
            Next::Nothing
        };
        match next {
            Next::Nothing => {}
            Next::Checkpoint(_) | Next::SaveStep => {
                let (offset, fresh) = match next {
                    Next::Checkpoint(offset) => {
                        d.next_checkpoint = offset + self.config.checkpoint_bytes();
                        self.scratch.clear();
                        d.hasher.save_state(&mut self.scratch);
                        (offset, true)
                    }
                    // `scratch` still holds the digest state at the recorded offset.
                    _ => (d.recorded.unwrap_or(0), false),
                };
                let step = d.due_step.max(d.saved_step);
                let phase = PhaseRef::Downloading {
                    file: d.file as u8,
                    offset,
                    digest_state: &self.scratch,
                    step,
                };
                let previous = self
                    .modules
                    .iter()
                    .find(|(m, _)| *m == d.image.module)
                    .map_or("", |(_, v)| v.as_str());
                let image = &d.image;
                let head = &mut self.record_head;
                let key = (d.generation, d.file, offset);
                if fresh || head.key != Some(key) {
                    head.key = Some(key);
                    head.bytes.clear();
                    encode_record_head(&mut head.bytes, image, previous, phase);
                    head.crc = record_crc(&head.bytes);
                }
                let range = self.outbox.encode(|out| {
                    out.extend_from_slice(&head.bytes);
                    finish_record(out, image, phase.step(), head.crc.clone());
                });
                self.outbox.push(Queued::SaveRecord(range));
                self.io = Some(Io::SaveRecord(RecordPurpose::Checkpoint {
                    generation: d.generation,
                    offset,
                    step,
                }));
            }
            #[cfg(feature = "mqtt-channel")]
            Next::Fetch if d.blocks.is_some() => self.request_blocks(),
            Next::Fetch => {
                let id = FetchId(self.next_fetch);
                self.next_fetch = self.next_fetch.wrapping_add(1);
                let url = self.outbox.stash(d.url().unwrap_or_default().as_bytes());
                self.outbox.push(Queued::Fetch {
                    fetch: id,
                    url,
                    offset: d.received,
                });
                d.fetch = Fetch::Requested {
                    id,
                    offset: d.received,
                };
                d.last_activity = self.now;
            }
            Next::Verify => self.verify(),
        }
    }

    fn verify(&mut self) {
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        d.fetch = Fetch::Complete;
        if !d.hasher.matches(d.digest()) {
            let method = d.digest().method().name();
            let reason = match d.task.files().get(d.file) {
                Some(f) => text!(
                    method,
                    " mismatch: file ",
                    f.name,
                    " does not match its digest"
                ),
                None => text!(
                    method,
                    " mismatch: the downloaded image does not match the task's digest"
                ),
            };
            self.fail(FailureCode::VerifyFailed, &reason);
            return;
        }
        #[cfg(feature = "signature")]
        if let Some(reason) = self.signature_refusal() {
            self.fail(FailureCode::VerifyFailed, &reason);
            return;
        }
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        if d.next_file(self.ring.block() as u64) {
            // Verified; the next file starts now (its record first), not at some later input.
            self.advance_download();
            return;
        }
        if self.config.read_back {
            // What is activated is what reads back from the slot, not what streamed past.
            let reread = Reread::read_back(&d.task, self.ring.block() as u64);
            d.reread = Some(alloc::boxed::Box::new(reread));
            self.advance_reread();
            return;
        }
        self.activate_verified();
    }

    /// Every file verified (and read back when configured): the activation record, then the
    /// activation.
    pub(super) fn activate_verified(&mut self) {
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        d.notified = 100;
        let size = d.task.size;
        self.notify(Note::Progress {
            percent: 100,
            received: size,
            size,
        });
        // The cloud hears 100 once the activation record is durable: a power loss before it
        // resumes the download, and the reports must not go back from 100.
        let State::Downloading(d) = core::mem::replace(&mut self.state, State::Idle) else {
            return;
        };
        let previous = String::from(self.version_of(&d.task.module).unwrap_or_default());
        let range = self
            .outbox
            .encode(|out| encode_record(out, &d.image, &previous, PhaseRef::Activating));
        self.outbox.push(Queued::SaveRecord(range));
        self.io = Some(Io::SaveRecord(RecordPurpose::Activating));
        self.state = State::Activating { image: d.image };
    }

    /// Is `fetch` the request the download is waiting on? Stale ids are `Ok(false)`.
    fn is_current_fetch(&self, fetch: FetchId) -> Result<bool, Error> {
        if fetch.0 >= self.next_fetch {
            return Err(Error::UnknownFetch);
        }
        Ok(matches!(&self.state, State::Downloading(d) if d.open_fetch() == Some(fetch)))
    }

    pub(super) fn on_response(
        &mut self,
        fetch: FetchId,
        status: u16,
        content_length: Option<u64>,
        content_range: Option<&str>,
    ) -> Result<(), Error> {
        if !self.is_current_fetch(fetch)? {
            return Ok(());
        }
        let State::Downloading(d) = &mut self.state else {
            return Ok(());
        };
        let Fetch::Requested { id, offset } = d.fetch else {
            return Err(Error::DuplicateResponse);
        };
        let size = d.size();
        d.last_activity = self.now;
        match status {
            200 => match content_length {
                Some(len) if len != size => {
                    let reason = text!(
                        "HTTP 200 with Content-Length ",
                        len,
                        ", but the image has ",
                        size,
                        " bytes"
                    );
                    self.transient_failure(&reason, Some(id));
                }
                _ => {
                    // A server that ignores Range sends from byte 0: drop what we have.
                    d.skip = offset;
                    d.fetch = Fetch::Streaming { id, end: size };
                }
            },
            206 => match content_range.and_then(parse_content_range) {
                Some((first, last, total))
                    if first == offset
                        && total == size
                        && last >= first
                        && last < size
                        && content_length.is_none_or(|len| len == last - first + 1) =>
                {
                    d.fetch = Fetch::Streaming { id, end: last + 1 };
                }
                _ => {
                    let reason = text!(
                        "HTTP 206 with Content-Range \"",
                        content_range.unwrap_or(""),
                        "\", expected bytes ",
                        offset,
                        "-",
                        size - 1,
                        "/",
                        size
                    );
                    self.transient_failure(&reason, Some(id));
                }
            },
            401 | 403 | 404 | 410 => self.refresh_url(&text!("HTTP ", status), Some(id)),
            408 | 416 | 429 | 500..=599 => {
                self.transient_failure(&text!("HTTP ", status), Some(id))
            }
            _ => self.fail(
                FailureCode::DownloadFailed,
                &text!("unexpected HTTP status ", status),
            ),
        }
        Ok(())
    }

    /// What body bytes of `fetch` may do now: the one decision both body entry points
    /// ([`Agent::handle_body`] and [`Agent::body_buffer`] / [`Agent::body_filled`]) share.
    #[inline(always)] // run for every body chunk
    fn body_intake(&self, fetch: FetchId) -> Result<Intake, Error> {
        if fetch.0 >= self.next_fetch {
            return Err(Error::UnknownFetch);
        }
        let State::Downloading(d) = &self.state else {
            return Ok(Intake::Drop);
        };
        match d.fetch {
            Fetch::Streaming { id, end } if id == fetch => {
                if self.ring.has_room() {
                    Ok(Intake::Take { id, end })
                } else {
                    Ok(Intake::Full) // every block is full or being written: back-pressure
                }
            }
            Fetch::Requested { id, .. } if id == fetch => Err(Error::BodyBeforeResponse),
            _ => Ok(Intake::Drop), // not the current fetch
        }
    }

    /// Takes body bytes for [`Agent::handle_body`]. Returns how many were taken, and true
    /// when staging them was all the call did ([`Download::quiet`]): then `advance` is
    /// skipped.
    pub(super) fn on_body(&mut self, fetch: FetchId, bytes: &[u8]) -> Result<(usize, bool), Error> {
        let (id, end) = match self.body_intake(fetch)? {
            Intake::Drop => return Ok((bytes.len(), false)),
            Intake::Full => return Ok((0, false)),
            Intake::Take { id, end } => (id, end),
        };
        let State::Downloading(d) = &mut self.state else {
            return Ok((bytes.len(), false));
        };
        let limit = d.stage_limit(&self.ring, end);
        if !bytes.is_empty() && bytes.len() < d.quiet(limit, self.now).0 {
            let n = d.stage_up_to(&mut self.ring, bytes, limit);
            d.last_activity = self.now;
            return Ok((n, true));
        }
        let skipped = d.skip_bytes(bytes.len());
        let n = d.stage_up_to(&mut self.ring, &bytes[skipped..], limit);
        Ok((self.after_body(id, end, skipped + n, n, bytes.len()), false))
    }

    /// Where body bytes of `fetch` may be read to now (see [`Agent::body_buffer`]): the free
    /// part of the filling block, as long as [`Download::stage_limit`] allows, and one byte
    /// more when that ends the range, so that a server sending more than it announced is
    /// caught as [`Agent::handle_body`] catches it. While leading bytes are skipped, at most
    /// those.
    pub(super) fn body_room(&mut self, fetch: FetchId) -> Result<BodyBuffer<'_>, Error> {
        if let Some(lend) = self.lend.filter(|lend| lend.fetch == fetch) {
            // Lent before, or carried on by a quiet fill (`fill_quietly`): still what would
            // be decided here, since no input came since.
            return Ok(BodyBuffer::Lent(self.ring.room_prefix(lend.len)));
        }
        let end = match self.body_intake(fetch)? {
            Intake::Drop => return Ok(BodyBuffer::Unwanted),
            Intake::Full => return Ok(BodyBuffer::Full),
            Intake::Take { end, .. } => end,
        };
        let State::Downloading(d) = &self.state else {
            return Ok(BodyBuffer::Unwanted);
        };
        let (len, stage) = d.lend_len(&self.ring, end);
        if len == 0 {
            return Ok(BodyBuffer::Full); // a checkpoint or a step waits for the writes
        }
        let (quiet, until) = d.quiet(stage, self.now);
        self.lend = Some(Lend {
            fetch,
            end,
            len,
            stage,
            quiet,
            until,
        });
        Ok(BodyBuffer::Lent(self.ring.room_prefix(len)))
    }

    /// `n` bytes were read to the start of what [`Agent::body_buffer`] lent; `lend` is what
    /// it recorded, if no other input came since.
    pub(super) fn on_body_filled(
        &mut self,
        fetch: FetchId,
        n: usize,
        lend: Option<Lend>,
    ) -> Result<usize, Error> {
        let (end, stage) = match lend {
            Some(lend) if lend.fetch == fetch => {
                if n > lend.len {
                    return Err(Error::BodyOverfilled);
                }
                (lend.end, lend.stage)
            }
            _ => {
                let end = match self.body_intake(fetch)? {
                    Intake::Drop => return Ok(n),
                    Intake::Full if n == 0 => return Ok(0),
                    Intake::Full => return Err(Error::BodyOverfilled),
                    Intake::Take { end, .. } => end,
                };
                let State::Downloading(d) = &self.state else {
                    return Ok(n);
                };
                let (len, stage) = d.lend_len(&self.ring, end);
                if n > len {
                    return Err(Error::BodyOverfilled);
                }
                (end, stage)
            }
        };
        let State::Downloading(d) = &mut self.state else {
            return Ok(n);
        };
        let skipped = d.skip_bytes(n);
        let staged = (n - skipped).min(stage);
        d.staged(&mut self.ring, staged);
        Ok(self.after_body(fetch, end, skipped + staged, staged, n))
    }

    /// The common case of [`Agent::body_filled`] right after [`Agent::body_buffer`]: fewer
    /// bytes than [`Download::quiet`] allowed, before its time limit, are staged and that is
    /// all (no `after_body`, no `advance`). The lend then goes on with the rest of the room:
    /// staging `n` bytes lowers the room, the stage limit and the quiet bound by `n` each and
    /// changes nothing else they depend on, so the next [`Agent::body_buffer`] lends that
    /// without deciding again. Returns false, having done nothing, otherwise.
    #[inline(always)] // run for every body chunk
    pub(super) fn fill_quietly(&mut self, now: Instant, lend: Lend, n: usize) -> bool {
        if n == 0 || n >= lend.quiet || lend.until.is_some_and(|until| now >= until) {
            return false;
        }
        let State::Downloading(d) = &mut self.state else {
            return false;
        };
        d.staged(&mut self.ring, n);
        d.last_activity = now;
        self.lend = Some(Lend {
            len: lend.len - n,
            stage: lend.stage - n,
            quiet: lend.quiet - n,
            ..lend
        });
        true
    }

    /// After `taken` of `offered` body bytes were taken, `staged` of them into the ring: the
    /// end of the range, an over-long body, activity and progress. Returns how many count as
    /// taken.
    fn after_body(
        &mut self,
        id: FetchId,
        end: u64,
        mut taken: usize,
        staged: usize,
        offered: usize,
    ) -> usize {
        let State::Downloading(d) = &mut self.state else {
            return offered;
        };
        if staged > 0 {
            d.last_activity = self.now;
        }
        let progress = staged > 0 && d.progress_due(self.now);
        if d.received == end {
            let size = d.size();
            if end == size {
                d.fetch = Fetch::Complete;
            }
            if taken < offered {
                // More than the server announced (or than the image holds): never accepted.
                if end == size {
                    self.outbox.push(Queued::CancelFetch(id));
                } else {
                    self.transient_failure(
                        "server sent more bytes than the requested range",
                        Some(id),
                    );
                }
                taken = offered;
            }
        }
        if progress {
            self.report_progress();
        }
        taken
    }

    pub(super) fn on_http_end(&mut self, fetch: FetchId) -> Result<(), Error> {
        if !self.is_current_fetch(fetch)? {
            return Ok(());
        }
        let State::Downloading(d) = &mut self.state else {
            return Ok(());
        };
        match d.fetch {
            Fetch::Streaming { end, .. } if d.skip == 0 && d.received >= end => {
                d.fetch = Fetch::Idle; // a partial 206 ended as announced: ask for the rest
            }
            Fetch::Streaming { end, .. } => {
                let reason = text!("body ended at byte ", d.received, " of ", end);
                self.transient_failure(&reason, None);
            }
            _ => self.transient_failure("connection closed before the response", None),
        }
        Ok(())
    }

    pub(super) fn on_http_failed(&mut self, fetch: FetchId, reason: &str) -> Result<(), Error> {
        if self.is_current_fetch(fetch)? {
            self.transient_failure(reason, None);
        }
        Ok(())
    }

    pub(super) fn on_download_timeout(&mut self) {
        #[cfg(feature = "mqtt-channel")]
        if matches!(&self.state, State::Downloading(d) if d.blocks.is_some()) {
            self.on_block_timeouts();
            return;
        }
        let now = self.now;
        let (stall, stall_ms) = (self.config.stall_timeout, self.stall_ms);
        let busy = self.storage_busy();
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        match d.fetch {
            Fetch::Requested { id, .. } | Fetch::Streaming { id, .. }
                if !busy && now >= d.stalled_at(stall_ms) =>
            {
                let reason = text!("no data for ", stall.as_secs(), " s");
                self.transient_failure(&reason, Some(id));
            }
            Fetch::Backoff { until } if now >= until => d.fetch = Fetch::Idle,
            Fetch::Refreshing { sent: false, until } if now >= until => {
                let module = d.task.module.clone();
                self.request_task(&module);
                if let State::Downloading(d) = &mut self.state {
                    d.fetch = Fetch::Refreshing {
                        sent: self.online,
                        until: now + self.config.reply_timeout,
                    };
                }
            }
            Fetch::Refreshing { sent: true, until } if now >= until => {
                self.refresh_url("no answer to the request for a fresh URL", None);
            }
            _ => {}
        }
    }

    /// A retryable error: back off and try again from the bytes we hold, within budget.
    fn transient_failure(&mut self, reason: &str, open: Option<FetchId>) {
        if let Some(id) = open {
            self.outbox.push(Queued::CancelFetch(id));
        }
        let policy = self.config.retry;
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        d.failures += 1;
        if d.failures > policy.max_attempts {
            let reason = text!("download failed after ", d.failures, " attempts: ", reason);
            self.fail(FailureCode::DownloadFailed, &reason);
            return;
        }
        let delay = self
            .backoff
            .delay(policy.base_delay, policy.max_delay, d.failures - 1);
        d.fetch = Fetch::Backoff {
            until: self.now + delay,
        };
    }

    /// The URL is refused: ask the cloud for the task again (a fresh signature), within budget.
    fn refresh_url(&mut self, reason: &str, open: Option<FetchId>) {
        if let Some(id) = open {
            self.outbox.push(Queued::CancelFetch(id));
        }
        let policy = self.config.url_refresh;
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        d.refreshes += 1;
        if d.refreshes > policy.max_attempts {
            let reason = text!(
                "download URL refused (",
                reason,
                ") and ",
                policy.max_attempts,
                " fresh URLs did not help"
            );
            self.fail(FailureCode::DownloadFailed, &reason);
            return;
        }
        if d.refreshes == 1 {
            // Expiry is routine: ask at once.
            d.fetch = Fetch::Refreshing {
                sent: self.online,
                until: self.now + self.config.reply_timeout,
            };
            let module = d.task.module.clone();
            self.request_task(&module);
        } else {
            let delay = self
                .backoff
                .delay(policy.base_delay, policy.max_delay, d.refreshes - 2);
            d.fetch = Fetch::Refreshing {
                sent: false,
                until: self.now + delay,
            };
        }
    }

    /// Notifies the application (throttled) and marks the step for the cloud, which hears
    /// it once a record carrying it is durable. Called on the body path: cheap unless a new
    /// percentage is due.
    pub(super) fn report_progress(&mut self) {
        let (step, interval, now) = (
            self.config.progress_step,
            self.config.progress_interval,
            self.now,
        );
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        if !d.progress_due(now) {
            return;
        }
        let bytes = d.done + d.received;
        // The first report says "started" (1), whatever the first chunk held.
        let pct = if d.notified == 0 { 1 } else { d.percent() };
        if pct <= d.notified {
            return;
        }
        d.notified = pct;
        d.next_percent_at = now + interval;
        d.next_percent_bytes = d.hundredths.bytes_at(pct + 1);
        d.next_step_bytes = d.hundredths.bytes_at(pct.saturating_add(step));
        if pct > d.due_step.max(d.saved_step) {
            d.due_step = pct;
        }
        let total = d.task.size;
        self.notify(Note::Progress {
            percent: pct,
            received: bytes,
            size: total,
        });
    }

    /// Sends the cloud the step of the durable record if it has not heard it yet. A step
    /// goes out only after a record carrying it is durable: a power loss after the report
    /// resumes from that record, whose step the next report must exceed, so no step is ever
    /// sent twice or backwards (docs/protocol.md §4), while the reports follow the bytes received
    /// rather than the checkpoint interval.
    pub(super) fn publish_pending_progress(&mut self) {
        if !self.online {
            return;
        }
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        let step = d.saved_step;
        if step <= d.reported {
            return;
        }
        d.reported = step;
        let id = self.next_id();
        let State::Downloading(d) = &self.state else {
            return;
        };
        let module = &d.task.module;
        let range = self
            .outbox
            .encode(|out| encode_progress(out, id, Step::Percent(step), "downloading", module));
        self.outbox.push(Queued::Publish(Topic::Progress, range));
    }
}

/// A size as `100 q + r`, split once per download: each threshold then takes a multiplication
/// and a 32-bit division by a constant, not a 64-bit division (a library call on a 32-bit core).
#[derive(Clone, Copy)]
struct Hundredths {
    q: u64,
    r: u32,
}

impl Hundredths {
    fn of(total: u64) -> Self {
        Hundredths {
            q: total / 100,
            r: (total % 100) as u32,
        }
    }

    /// [`bytes_at_percent`] of the size split.
    fn bytes_at(self, percent: u8) -> u64 {
        let p = u32::from(percent);
        // p * r < 256 * 100: no overflow in u32.
        u64::from(p)
            .saturating_mul(self.q)
            .saturating_add(u64::from((p * self.r).div_ceil(100)))
    }
}

/// The first byte count at which `floor(bytes * 100 / total)` reaches `percent`:
/// `ceil(percent * total / 100)`, exactly, in u64 (`total = 100 q + r`). No u128: its
/// division costs ~800 B of flash per use on a 32-bit microcontroller.
fn bytes_at_percent(percent: u8, total: u64) -> u64 {
    Hundredths::of(total).bytes_at(percent)
}

/// `floor(bytes * 100 / total)`, capped at 100, for `total > 0`, in u64 only: one division
/// while `bytes * 100` fits, else (beyond 2^64 / 100 bytes) the largest percentage whose first
/// byte count [`bytes_at_percent`] `bytes` has reached.
fn percent_of(bytes: u64, total: u64) -> u8 {
    if let Some(scaled) = bytes.checked_mul(100) {
        // Within 32 bits (images up to ~42 MB), the core's divide instruction rather than a
        // 64-bit division's library call.
        if let (Ok(scaled), Ok(total)) = (u32::try_from(scaled), u32::try_from(total)) {
            return (scaled / total).min(100) as u8;
        }
        return (scaled / total).min(100) as u8;
    }
    let (mut low, mut high) = (0u8, 100u8);
    while low < high {
        let mid = (low + high).div_ceil(2);
        if bytes_at_percent(mid, total) <= bytes {
            low = mid;
        } else {
            high = mid - 1;
        }
    }
    low
}

/// Parses `bytes FIRST-LAST/TOTAL` (ASCII whitespace around the parts is allowed).
fn parse_content_range(value: &str) -> Option<(u64, u64, u64)> {
    let rest = value.trim_ascii().strip_prefix("bytes")?;
    let (range, total) = crate::json::split_at_byte(rest, b'/')?;
    let (first, last) = crate::json::split_at_byte(range, b'-')?;
    Some((parse_u64(first)?, parse_u64(last)?, parse_u64(total)?))
}

/// `split_once` on one ASCII byte, without the generic char searcher.
fn parse_u64(s: &str) -> Option<u64> {
    crate::json::parse_digits(s.trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::{bytes_at_percent, parse_content_range, percent_of};

    proptest::proptest! {
        #[test]
        fn step_thresholds_are_the_exact_ceiling(
            percent in 0u8..=255,
            total in proptest::prop_oneof![0u64..1_000_000, proptest::num::u64::ANY],
        ) {
            let exact = (u128::from(percent) * u128::from(total)).div_ceil(100);
            let exact = u64::try_from(exact).unwrap_or(u64::MAX);
            proptest::prop_assert_eq!(bytes_at_percent(percent, total), exact);
        }

        /// `percent_of` (u64 only) is exactly the u128 floor, over the whole range.
        #[test]
        fn percentages_match_the_u128_reference(
            total in proptest::prop_oneof![1u64..100_000, 1u64..=u64::MAX],
            at in 0.0f64..=1.0,
        ) {
            let bytes = ((total as f64 * at) as u64).min(total);
            let reference = (u128::from(bytes) * 100 / u128::from(total)) as u8;
            proptest::prop_assert_eq!(percent_of(bytes, total), reference);
        }
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, 199, 200))
        );
        assert_eq!(parse_content_range("bytes  0-0/1 "), Some((0, 0, 1)));
        assert_eq!(parse_content_range("bytes 100-199/*"), None);
        assert_eq!(parse_content_range("bytes -5-199/200"), None);
        assert_eq!(parse_content_range("items 1-2/3"), None);
        assert_eq!(parse_content_range("bytes 1-2"), None);
    }
}
