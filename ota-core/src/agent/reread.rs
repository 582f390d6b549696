//! Re-reading the staging slot before trusting it: the staged prefix a resumed download
//! builds on (its bytes are trusted only if they hash to the record's mid-state again, so a
//! byte flipped, a file truncated or deleted while the power was off restarts the download
//! from byte 0), and, with `Config::read_back`, every byte of the image before activation
//! (what is activated is what was read back and matched the digest).
//!
//! Reads go one staging block at a time into the idle ring (`Action::Read`): no buffer of
//! their own, and no write is in flight while they run.

use alloc::vec::Vec;

use super::actions::Queued;
use super::{Agent, Io, State};
use crate::digest::Hasher;
use crate::error::Error;
use crate::record::RecordError;
use crate::task::{ExpectedDigest, Task};
use crate::uplink::FailureCode;

use super::actions::Note;
use super::download::Download;

/// Why the slot is being re-read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Purpose {
    /// A resumed download: the files before the current one and its durable prefix.
    Resume,
    /// Before activation: every file, against its digest.
    ReadBack,
}

/// What a span of the slot must hash to.
enum Expect {
    /// A whole file: its digest.
    Digest(ExpectedDigest),
    /// A prefix: the digest mid-state saved with it.
    State(Hasher),
}

/// One contiguous part of the slot to re-read.
struct Span {
    base: u64,
    len: u64,
    expect: Expect,
}

/// The re-read of one download.
pub(super) struct Reread {
    pub(super) purpose: Purpose,
    spans: Vec<Span>,
    /// The span being read.
    index: usize,
    /// Bytes of it read so far.
    at: u64,
    hasher: Hasher,
}

/// How a read result leaves the re-read.
enum Verdict {
    /// More to read.
    Continue,
    /// Every span matched.
    Matched,
    /// The bytes at this slot offset are not what was expected (or could not be read).
    Mismatch(u64),
}

impl Reread {
    /// The prefix of `task` a download resumed at (`file`, `offset`) relies on: the files
    /// before it in full and `offset` bytes of it, which `hasher` covers.
    pub(super) fn resume(
        task: &Task,
        block: u64,
        file: usize,
        offset: u64,
        hasher: Hasher,
    ) -> Self {
        let mut spans = layout(task, block);
        spans.truncate(file + 1);
        if let Some(last) = spans.last_mut() {
            (last.len, last.expect) = (offset, Expect::State(hasher));
        }
        Self::over(Purpose::Resume, spans)
    }

    /// Every file of `task` as laid out in the slot.
    pub(super) fn read_back(task: &Task, block: u64) -> Self {
        Self::over(Purpose::ReadBack, layout(task, block))
    }

    fn over(purpose: Purpose, spans: Vec<Span>) -> Self {
        let hasher = Hasher::new(
            spans
                .first()
                .map_or(crate::task::DigestMethod::default(), |s| s.expect.method()),
        );
        Reread {
            purpose,
            spans,
            index: 0,
            at: 0,
            hasher,
        }
    }

    /// The next read, `(slot offset, length)`, at most `block` bytes; `None` once the span
    /// being read is complete (then [`Reread::conclude_span`]).
    fn next_read(&self, block: usize) -> Option<(u64, usize)> {
        let span = self.spans.get(self.index)?;
        let left = span.len - self.at;
        (left > 0).then(|| {
            (
                span.base + self.at,
                usize::try_from(left).unwrap_or(usize::MAX).min(block),
            )
        })
    }

    /// Checks the completed span and moves to the next one.
    fn conclude_span(&mut self) -> Verdict {
        let Some(span) = self.spans.get(self.index) else {
            return Verdict::Matched;
        };
        let matched = match &span.expect {
            Expect::Digest(digest) => self.hasher.matches(digest),
            Expect::State(saved) => self.hasher.same_state(saved),
        };
        if !matched {
            return Verdict::Mismatch(span.base);
        }
        self.index += 1;
        self.at = 0;
        match self.spans.get(self.index) {
            Some(next) => {
                self.hasher = Hasher::new(next.expect.method());
                Verdict::Continue
            }
            None => Verdict::Matched,
        }
    }

    /// Hashes `bytes`, the answer to a read of `asked` bytes (fewer: the slot ends there).
    fn on_read(&mut self, bytes: &[u8], asked: usize) -> Verdict {
        let offset = self.spans.get(self.index).map_or(0, |s| s.base) + self.at;
        self.hasher.update(bytes);
        self.at += bytes.len() as u64;
        if bytes.len() < asked {
            return Verdict::Mismatch(offset + bytes.len() as u64);
        }
        Verdict::Continue
    }
}

impl Expect {
    fn method(&self) -> crate::task::DigestMethod {
        match self {
            Expect::Digest(d) => d.method(),
            Expect::State(h) => h.method(),
        }
    }
}

/// Where the files of `task` lie in the slot: back to back, each on a block boundary.
fn layout(task: &Task, block: u64) -> Vec<Span> {
    if task.files().is_empty() {
        return alloc::vec![Span {
            base: 0,
            len: task.size,
            expect: Expect::Digest(task.digest),
        }];
    }
    let mut base = 0;
    task.files()
        .iter()
        .map(|f| {
            let span = Span {
                base,
                len: f.size,
                expect: Expect::Digest(f.digest),
            };
            base += f.size.div_ceil(block) * block;
            span
        })
        .collect()
}

impl Agent {
    /// While the download re-reads the slot, asks for the next read (or concludes); true when
    /// a re-read is under way, so that nothing else of the download starts.
    pub(super) fn advance_reread(&mut self) -> bool {
        let State::Downloading(d) = &mut self.state else {
            return false;
        };
        let Some(reread) = d.reread.as_mut() else {
            return false;
        };
        let Some(at) = self.ring.idle_block() else {
            return true; // writes of an abandoned download still in flight: wait for them
        };
        loop {
            if let Some((offset, len)) = reread.next_read(self.ring.block()) {
                self.outbox.push(Queued::Read { offset, at, len });
                self.io = Some(Io::Read {
                    generation: d.generation,
                    len,
                });
                return true;
            }
            match reread.conclude_span() {
                Verdict::Continue => {}
                verdict => {
                    self.conclude_reread(verdict);
                    return matches!(&self.state, State::Downloading(d) if d.reread.is_some());
                }
            }
        }
    }

    /// The answer to a `Read`: `Some(len)` bytes read, `None` when the read failed.
    pub(super) fn on_read_result(&mut self, read: Option<usize>) -> Result<(), Error> {
        let Some(Io::Read { generation, len }) = self.io else {
            return Err(Error::UnexpectedReadResult);
        };
        if read.is_some_and(|n| n > len) {
            return Err(Error::UnexpectedReadResult);
        }
        self.io = None;
        let at = self.ring.idle_block().unwrap_or(0);
        let State::Downloading(d) = &mut self.state else {
            return Ok(()); // the task it belonged to is gone
        };
        let Some(reread) = d.reread.as_mut().filter(|_| d.generation == generation) else {
            return Ok(());
        };
        let verdict = match read {
            Some(n) => reread.on_read(&self.ring.bytes()[at..at + n], len),
            None => {
                let offset = reread.spans.get(reread.index).map_or(0, |s| s.base) + reread.at;
                Verdict::Mismatch(offset)
            }
        };
        if let Verdict::Mismatch(_) = verdict {
            self.conclude_reread(verdict);
        }
        Ok(())
    }

    fn conclude_reread(&mut self, verdict: Verdict) {
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        let Some(reread) = d.reread.take() else {
            return;
        };
        match (reread.purpose, verdict) {
            (Purpose::Resume, Verdict::Mismatch(_)) => {
                // Nothing staged can be trusted: start over, never reporting a step twice.
                let floor = d.saved_step;
                let State::Downloading(old) = core::mem::replace(&mut self.state, State::Idle)
                else {
                    return;
                };
                let fresh =
                    Download::new(old.task, old.generation, self.now).with_step_floor(floor);
                self.state = State::Downloading(alloc::boxed::Box::new(fresh));
                self.notify(Note::RecordDiscarded(RecordError::StagingMismatch));
            }
            (Purpose::Resume, _) => {}
            (Purpose::ReadBack, Verdict::Mismatch(offset)) => {
                let reason = text!(
                    "read-back: the bytes in the slot from offset ",
                    offset,
                    " do not match the verified digest"
                );
                self.fail(FailureCode::FlashFailed, &reason);
            }
            // The package signature was verified over the task's digest when the stream
            // matched it; the bytes read back hash to that same digest, so it covers them too
            // (no second RSA operation).
            (Purpose::ReadBack, _) => self.activate_verified(),
        }
    }
}
