//! The verdict on the transcript and the printed figures.

use cortex_m_semihosting::{hprint, hprintln};
use ota_core::Agent;

use crate::cloud::IMAGE_SIZE;
use crate::device::Device;
use crate::icount::{Meter, INSTRUCTIONS_PER_TICK};
use crate::probe::{Call, ALL, CALLS, NAMES};
use crate::stack;
use crate::{CHECKPOINT, CHUNK, WRITE_BLOCK};

/// Goal of issue #10: stack high-water mark.
const STACK_GOAL: usize = 8 * 1024;
/// Goal of issue #21 (which replaced issue #10's 1.050): agent instructions over bare-MD5
/// instructions, x 1000.
const RATIO_GOAL_MILLI: u64 = 1080;

/// Everything measured in one run besides the probe's stack depths.
#[derive(Default)]
pub struct Figures {
    /// Instructions one measurement bracket adds; subtracted from every count.
    pub readout: u64,
    /// Bare MD5 over the image in the body's chunks.
    pub bare: Meter,
    /// MD5 plus the copy into a staging block, same chunks.
    pub staged: Meter,
    /// Deepest stack of the baselines.
    pub baseline_depth: usize,
    /// First boot, connect, push: per kind of call.
    pub connect_push: [Meter; CALLS],
    /// HTTP response to the reboot request: per kind of call.
    pub download: [Meter; CALLS],
    /// Second boot, connect, health verdict, confirm: per kind of call.
    pub reboot_confirm: [Meter; CALLS],
    /// Most bytes the agents had allocated at once.
    pub heap_peak: usize,
}

/// Fails the run unless the transcript is the one a whole, clean upgrade produces.
pub fn check_transcript(device: &Device) {
    let log = &device.log;
    check!(
        log.informs[..] == [false, true],
        "version reports (new?): {:?}",
        log.informs
    );
    check!(
        log.subscribes == 6,
        "{} subscribes for two connects",
        log.subscribes
    );
    check!(
        log.firmware_gets >= 1,
        "no firmware/get after the first connect"
    );
    check!(log.last_step == 100, "last progress step {}", log.last_step);
    check!(
        log.progress_reports >= 2,
        "{} progress reports",
        log.progress_reports
    );
    let writes = IMAGE_SIZE.div_ceil(WRITE_BLOCK) as u32;
    check!(log.writes == writes, "{} writes, not {writes}", log.writes);
    // The first record, one per checkpoint, and the activation record.
    let records = 2 + (IMAGE_SIZE as u64 - 1) / CHECKPOINT;
    check!(
        u64::from(log.records_saved) >= records,
        "{} records saved, fewer than {records}",
        log.records_saved
    );
    check!(
        log.records_cleared >= 1 && device.saved_record().is_none(),
        "record not cleared"
    );
    check!(
        log.confirmed && log.succeeded,
        "the new image was not confirmed"
    );
}

/// `n` per KiB of the image.
fn per_kib(n: u64) -> u64 {
    (n * 1024 + IMAGE_SIZE as u64 / 2) / IMAGE_SIZE as u64
}

/// `a / b` x 1000, rounded.
fn ratio_milli(a: u64, b: u64) -> u64 {
    (a * 1000 + b / 2) / b.max(1)
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "MISSED"
    }
}

fn total(meters: &[Meter; CALLS]) -> Meter {
    let mut sum = Meter::default();
    meters.iter().for_each(|m| sum.add(m));
    sum
}

pub fn print(f: &Figures, device: &Device) {
    let log = &device.log;
    let r = f.readout;
    hprintln!(
        "ota-qemu: upgrade 1.0.0 -> 2.0.0 OK: {} B image in {}-byte chunks, {} writes of {} B, \
         {} records saved, {} cleared, {} progress reports, rebooted, confirmed",
        IMAGE_SIZE,
        CHUNK,
        log.writes,
        WRITE_BLOCK,
        log.records_saved,
        log.records_cleared,
        log.progress_reports
    );
    hprintln!(
        "counting: QEMU -icount shift=0 (1 instruction = 1 ns), CMSDK timer 0 at 25 MHz = {} \
         instructions/tick (checked on a loop of known length), {} instructions/bracket of \
         readout subtracted",
        INSTRUCTIONS_PER_TICK,
        r
    );

    let probe = &device.probe;
    let (deepest, own) = probe.deepest();
    hprintln!(
        "stack high-water of the agent: {} B below its caller (goal <= {} B: {}), in {}; \
         bare MD5: {} B",
        own,
        STACK_GOAL,
        verdict(own <= STACK_GOAL),
        NAMES[deepest as usize],
        f.baseline_depth
    );
    hprint!("  per call:");
    for (call, name) in ALL.iter().zip(NAMES) {
        if *call != Call::Baseline {
            hprint!(" {} {} B;", name, probe.own[*call as usize]);
        }
    }
    hprintln!();
    hprintln!(
        "  whole firmware: {} B from the top of the stack, of which the harness's frames are \
         up to {} B; window painted {} B",
        probe.total,
        probe.caller,
        stack::PAINTED
    );
    let agent_struct = core::mem::size_of::<Agent>();
    hprintln!(
        "heap peak (agent): {} B: the boxed Agent struct {} B + ota-core's allocations {} B",
        f.heap_peak,
        agent_struct,
        f.heap_peak.saturating_sub(agent_struct)
    );

    // The read-back before activation is its own figure; the body path is the rest.
    let read_back = f.download[Call::ReadDone as usize].net_instructions(r);
    let download = total(&f.download).net_instructions(r) - read_back;
    let bare = f.bare.net_instructions(r);
    let staged = f.staged.net_instructions(r);
    hprintln!(
        "instructions: first boot+connect+push {}, download (read-back apart) {}, reboot+confirm {}; bare MD5 {}, \
         MD5 + staging copy {}",
        total(&f.connect_push).net_instructions(r),
        download,
        total(&f.reboot_confirm).net_instructions(r),
        bare,
        staged
    );
    for (i, name) in NAMES.iter().enumerate() {
        if f.download[i].brackets() > 0 {
            hprintln!(
                "  download, {}: {} instructions in {} calls",
                name,
                f.download[i].net_instructions(r),
                f.download[i].brackets()
            );
        }
    }
    let body = f.download[Call::Body as usize].net_instructions(r);
    hprintln!(
        "  worst-case counting error (one tick per bracket): download +-{}, bare MD5 +-{}",
        total(&f.download).max_error(),
        f.bare.max_error()
    );
    let ratio = ratio_milli(download, bare);
    hprintln!(
        "instructions per KiB of body: agent {} (body_buffer + body_filled alone {}), MD5 + staging copy {}, \
         bare MD5 {}",
        per_kib(download),
        per_kib(body),
        per_kib(staged),
        per_kib(bare)
    );
    let read_ratio = ratio_milli(read_back, bare);
    hprintln!(
        "read-back before activation (Config::read_back, on by default): {} instructions in {} \
         reads, {} per KiB of image = {}.{:03} x bare MD5 (the resume re-hash runs the same \
         path per KiB of prefix)",
        read_back,
        log.reads,
        per_kib(read_back),
        read_ratio / 1000,
        read_ratio % 1000
    );
    let over_staged = ratio_milli(download, staged);
    hprintln!(
        "agent / bare MD5: {}.{:03} (goal <= {}.{:03}: {}); agent / (MD5 + staging copy): {}.{:03}",
        ratio / 1000,
        ratio % 1000,
        RATIO_GOAL_MILLI / 1000,
        RATIO_GOAL_MILLI % 1000,
        verdict(ratio <= RATIO_GOAL_MILLI),
        over_staged / 1000,
        over_staged % 1000
    );
}
