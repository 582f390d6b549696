//! Instruction counts from QEMU's `-icount shift=0` virtual clock.
//!
//! With `-icount shift=0,sleep=off` QEMU advances its virtual clock by exactly 1 ns per guest
//! instruction executed (and never while the guest idles), and a device register read from
//! the middle of a translated block ends the block there, so the clock is exact at every
//! read. The MPS2 board's CMSDK APB timer 0 counts that clock at its 25 MHz PCLK: one tick is
//! 40 instructions. Debian's QEMU ships no TCG plugin (`libinsn.so`) and no plugin header to
//! build one, and QEMU implements no DWT cycle counter, so this timer is the readout.
//! [`check_calibration`] proves the 40 on a loop of known length, so a run without `-icount`
//! fails instead of printing wrong figures.

use core::ptr::{read_volatile, write_volatile};

/// CMSDK APB timer 0 of the MPS2 FPGA images (AN385/AN386/AN500).
const TIMER0_BASE: usize = 0x4000_0000;
const CTRL: usize = TIMER0_BASE;
const VALUE: usize = TIMER0_BASE + 0x04;
const RELOAD: usize = TIMER0_BASE + 0x08;
const CTRL_ENABLE: u32 = 1;

/// 1 ns per instruction (`shift=0`) over a 40 ns timer period (25 MHz).
pub const INSTRUCTIONS_PER_TICK: u64 = 40;

/// Starts timer 0 as a free-running 32-bit down counter (it wraps after 2^32 ticks, about
/// 171 G instructions: far beyond a run).
pub fn start_timer() {
    // SAFETY: TIMER0_BASE is the board's timer 0 (QEMU hw/arm/mps2.c); nothing else uses it,
    // and these word writes are its documented register interface.
    unsafe {
        write_volatile(CTRL as *mut u32, 0);
        write_volatile(RELOAD as *mut u32, u32::MAX);
        write_volatile(VALUE as *mut u32, u32::MAX);
        write_volatile(CTRL as *mut u32, CTRL_ENABLE);
    }
}

/// Ticks since the timer started (up-counting; wraps).
#[inline(always)]
fn ticks() -> u32 {
    // SAFETY: a word read of timer 0's VALUE register, which has no side effect.
    !unsafe { read_volatile(VALUE as *const u32) }
}

/// Accumulates the instructions executed inside its brackets.
#[derive(Clone, Default)]
pub struct Meter {
    ticks: u64,
    brackets: u64,
}

impl Meter {
    /// Runs `f` and adds the instructions it executed.
    #[inline(always)]
    pub fn measure<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let start = ticks();
        let out = f();
        self.ticks += u64::from(ticks().wrapping_sub(start));
        self.brackets += 1;
        out
    }

    /// Adds another meter's counts.
    pub fn add(&mut self, other: &Meter) {
        self.ticks += other.ticks;
        self.brackets += other.brackets;
    }

    /// Instructions counted, readout included.
    pub fn gross_instructions(&self) -> u64 {
        self.ticks * INSTRUCTIONS_PER_TICK
    }

    /// How many brackets were measured.
    pub fn brackets(&self) -> u64 {
        self.brackets
    }

    /// Instructions counted, less `readout` instructions per bracket.
    pub fn net_instructions(&self, readout: u64) -> u64 {
        self.gross_instructions()
            .saturating_sub(self.brackets * readout)
    }

    /// Worst-case error of the count: each bracket is read to one tick.
    pub fn max_error(&self) -> u64 {
        self.brackets * INSTRUCTIONS_PER_TICK
    }
}

/// Iterations of the calibration loop (two instructions each).
const CALIBRATION_LOOPS: u32 = 1_000_000;

/// Runs a loop of exactly `2 * CALIBRATION_LOOPS` instructions (a `subs` and a taken `bne`
/// per iteration, the last not taken) and returns the ticks it took.
fn calibration_ticks() -> u32 {
    let start = ticks();
    // SAFETY: a register-only countdown loop; it touches no memory and no stack.
    unsafe {
        core::arch::asm!(
            "2:",
            "subs {n}, {n}, #1",
            "bne 2b",
            n = inout(reg) CALIBRATION_LOOPS => _,
            options(nomem, nostack),
        );
    }
    ticks().wrapping_sub(start)
}

/// Checks that a tick is [`INSTRUCTIONS_PER_TICK`] instructions (QEMU runs with
/// `-icount shift=0`); returns the measured instructions per tick x 1000 on failure.
pub fn check_calibration() -> Result<(), u64> {
    let instructions = 2 * u64::from(CALIBRATION_LOOPS);
    let ticks = u64::from(calibration_ticks());
    let expected = instructions / INSTRUCTIONS_PER_TICK;
    // The loop is timed by two reads a few instructions apart: allow one tick either way.
    if ticks.abs_diff(expected) <= 1 {
        Ok(())
    } else {
        Err(instructions * 1000 / ticks.max(1))
    }
}
