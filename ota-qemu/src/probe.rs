//! Every call into the agent goes through a [`Probe`]: the free stack is painted before it,
//! its instructions are counted (and only its own), and the stack is scanned after it, so
//! both figures are attributed to the kind of call that caused them.

use crate::icount::Meter;
use crate::{must, stack};

/// The kinds of call measured.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `Agent::new` (first boot, and the reboot from the saved record).
    Boot,
    /// `handle(Connected)`.
    Connected,
    /// `handle(Message)`: the upgrade push.
    Push,
    /// `handle(HttpResponse)`.
    HttpResponse,
    /// `body_buffer` and `body_filled` (the body read into the lent staging block).
    Body,
    /// `handle(WriteDone | RecordSaved | Activated)`: a storage answer.
    StorageDone,
    /// `handle(ReadDone)`: a block of the slot read back (hashed) before activation.
    ReadDone,
    /// `handle(HttpEnd)`.
    HttpEnd,
    /// `handle(HealthVerdict)`.
    HealthVerdict,
    /// `poll_action`.
    PollAction,
    /// `poll_timeout` and `handle_timeout`.
    Deadline,
    /// The baselines: bare MD5 (with or without the staging copy) over the same chunks.
    Baseline,
}

pub const CALLS: usize = 12;

pub const ALL: [Call; CALLS] = [
    Call::Boot,
    Call::Connected,
    Call::Push,
    Call::HttpResponse,
    Call::Body,
    Call::StorageDone,
    Call::ReadDone,
    Call::HttpEnd,
    Call::HealthVerdict,
    Call::PollAction,
    Call::Deadline,
    Call::Baseline,
];

pub const NAMES: [&str; CALLS] = [
    "Agent::new",
    "Connected",
    "push",
    "HttpResponse",
    "body_buffer + body_filled",
    "storage answer",
    "read-back answer",
    "HttpEnd",
    "HealthVerdict",
    "poll_action",
    "deadlines",
    "baseline",
];

/// Runs `f` in a frame of its own. Without it LTO inlines the agent's code into the
/// harness function that calls it, and the agent's locals would be counted as the caller's.
#[inline(never)]
fn apart<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Instructions one empty [`Probe::call`] counts (the timer reads and the call into
/// [`apart`]), measured over many calls so that the tick resolution averages out.
pub fn readout_instructions() -> u64 {
    const CALLS_MEASURED: u64 = 1000;
    let mut probe = Probe::default();
    for _ in 0..CALLS_MEASURED {
        probe.call(Call::Baseline, || core::hint::black_box(()));
    }
    probe.meters[Call::Baseline as usize].gross_instructions() / CALLS_MEASURED
}

/// Instruction counts and stack depths, per kind of call.
#[derive(Default)]
pub struct Probe {
    pub meters: [Meter; CALLS],
    /// Most stack each kind of call used below its caller (what the agent itself needs).
    pub own: [usize; CALLS],
    /// Deepest the stack went in any call, from its top (the whole firmware's high-water).
    pub total: usize,
    /// Deepest the harness itself was when it made a call.
    pub caller: usize,
}

impl Probe {
    /// Runs `f`, one call of kind `call`, and records what it cost.
    #[inline(always)]
    pub fn call<R>(&mut self, call: Call, f: impl FnOnce() -> R) -> R {
        let caller = stack::depth_here();
        must(stack::paint());
        let out = self.meters[call as usize].measure(|| apart(f));
        let depth = must(stack::high_water());
        let own = &mut self.own[call as usize];
        *own = (*own).max(depth.saturating_sub(caller));
        self.total = self.total.max(depth);
        self.caller = self.caller.max(caller);
        out
    }

    /// The instruction counts so far, leaving zeros (the depths are kept: they are maxima
    /// over the whole run).
    pub fn take_meters(&mut self) -> [Meter; CALLS] {
        core::mem::take(&mut self.meters)
    }

    /// The kind of call that used the most stack below its caller, and how much.
    pub fn deepest(&self) -> (Call, usize) {
        let i = (0..CALLS).max_by_key(|&i| self.own[i]).unwrap_or(0);
        (ALL[i], self.own[i])
    }
}
