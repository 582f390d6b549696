//! The stack high-water mark: paint the free stack with a pattern, run, and find the
//! deepest word that no longer holds it.
//!
//! cortex-m-rt puts the stack at the top of RAM (`_stack_start`), growing down towards the
//! end of the statics (`_stack_end`). The painted window is the [`PAINTED`] bytes below the
//! top, less the frame of the caller of [`paint`], which is live.

use core::ptr::{addr_of, read_volatile, write_volatile};

/// How deep the painted window reaches below the top of the stack: 4 x the 8 KiB goal, so
/// that an overshoot is measured rather than only detected.
pub const PAINTED: usize = 32 * 1024;

/// What a word that was never written holds.
const PATTERN: u32 = 0xDEAD_BEEF;

/// Words just below the current stack pointer left unpainted: the painting code's own frame.
const GAP: usize = 16;

/// `OTA_QEMU_NO_PAINT` (build time, set by profile.sh) turns painting and scanning off, so
/// that an instruction trace holds the agent's calls rather than the painting loops; the
/// stack figures then read 0.
const NO_PAINT: bool = option_env!("OTA_QEMU_NO_PAINT").is_some();

extern "C" {
    /// Top of the stack (cortex-m-rt link.x): the initial stack pointer.
    static _stack_start: u32;
    /// Lowest address the stack may reach (cortex-m-rt link.x): the end of the statics.
    static _stack_end: u32;
}

fn top() -> usize {
    // Only the address of the linker symbol is taken (safe); it is never read.
    addr_of!(_stack_start) as usize
}

/// The lowest painted word, or `Err` when RAM below the stack is too small for the window.
fn bottom() -> Result<usize, &'static str> {
    let statics_end = addr_of!(_stack_end) as usize;
    let bottom = top() - PAINTED;
    if bottom < statics_end {
        return Err("the painted stack window overlaps the statics");
    }
    Ok(bottom)
}

/// How deep the stack is here (bytes below its top).
#[inline(always)]
pub fn depth_here() -> usize {
    top() - cortex_m::register::msp::read() as usize
}

/// Paints the window from its bottom up to just below the current stack pointer.
#[inline(never)]
pub fn paint() -> Result<(), &'static str> {
    if NO_PAINT {
        return Ok(());
    }
    let sp = cortex_m::register::msp::read() as usize;
    let end = (sp - GAP * 4) & !3;
    let mut word = bottom()?;
    while word < end {
        // SAFETY: [bottom, sp - GAP words) is RAM between the statics and the live stack
        // (bottom() checked the lower bound, sp is the upper); nothing else uses it.
        unsafe { write_volatile(word as *mut u32, PATTERN) };
        word += 4;
    }
    Ok(())
}

/// Bytes of stack used since the last [`paint`], measured from the top of the stack; `Err`
/// when even the lowest painted word was overwritten (the stack went past the window).
pub fn high_water() -> Result<usize, &'static str> {
    if NO_PAINT {
        return Ok(0);
    }
    let bottom = bottom()?;
    let mut word = bottom;
    // SAFETY: reads of the painted window, which lies in RAM (see paint).
    while word < top() && unsafe { read_volatile(word as *const u32) } == PATTERN {
        word += 4;
    }
    if word == bottom {
        return Err("the stack grew past the painted window");
    }
    Ok(top() - word)
}
