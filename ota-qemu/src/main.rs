//! ota-core on a Cortex-M4F (QEMU `mps2-an386`): one whole simulated upgrade through the
//! `Agent` (connect, push, download into a RAM slot, records, activation, reboot into the
//! new version, health verdict, confirm), checked, and measured: the stack high-water mark,
//! the agent's heap peak, and instructions per KiB of body through the agent versus bare MD5
//! over the same bytes in the same chunks. Output and the exit code go through semihosting:
//! any failed check exits non-zero. Run it with `ota-qemu/run.sh`.
//!
//! `unsafe` is needed here, and only here in the project: the timer's registers
//! (`icount`), painting and scanning the free stack (`stack`), and the heap's arena and
//! counting `GlobalAlloc` wrapper (`heap`). Every block says why it is sound.
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

/// Fails the run (message, non-zero exit) unless `cond` holds.
macro_rules! check {
    ($cond:expr, $($why:tt)+) => {
        if !$cond {
            $crate::fail(format_args!($($why)+))
        }
    };
}

mod cloud;
mod device;
mod heap;
mod icount;
mod probe;
mod report;
mod scenario;
mod stack;

use cortex_m_rt::entry;
use cortex_m_semihosting::{debug, hprintln};
use ota_core::{Config, DeviceIdentity};

use cloud::IMAGE_SIZE;

/// Body bytes per read into the lent staging block: one TCP segment's worth, as a network stack hands it,
/// unless the build sets `OTA_QEMU_CHUNK` (to see how the per-call cost weighs).
pub const CHUNK: usize = match option_env!("OTA_QEMU_CHUNK") {
    Some(digits) => parse_decimal(digits),
    None => 1460,
};

/// A positive decimal number, at compile time (a bad `OTA_QEMU_CHUNK` fails the build).
const fn parse_decimal(digits: &str) -> usize {
    let bytes = digits.as_bytes();
    assert!(!bytes.is_empty(), "OTA_QEMU_CHUNK is empty");
    let mut value = 0;
    let mut i = 0;
    while i < bytes.len() {
        assert!(
            bytes[i].is_ascii_digit(),
            "OTA_QEMU_CHUNK is not a decimal number"
        );
        value = value * 10 + (bytes[i] - b'0') as usize;
        i += 1;
    }
    assert!(value > 0, "OTA_QEMU_CHUNK must be > 0");
    value
}
/// The flash sector the slot is written in.
pub const WRITE_BLOCK: usize = 4096;
/// A record every 64 KiB: a power loss costs at most that much re-download.
pub const CHECKPOINT: u64 = 64 * 1024;

/// Prints why the run failed and exits non-zero.
pub fn fail(why: core::fmt::Arguments) -> ! {
    hprintln!("ota-qemu: FAILED: {}", why);
    debug::exit(debug::EXIT_FAILURE);
    // Under QEMU the exit does not return; without a debugger attached, stop here.
    cortex_m::asm::udf()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    fail(format_args!("panic: {info}"))
}

fn config() -> Config {
    let Ok(identity) = DeviceIdentity::new(cloud::PRODUCT_KEY, cloud::DEVICE_NAME) else {
        fail(format_args!("identity refused"));
    };
    let mut config = Config::new(identity);
    config.write_block = WRITE_BLOCK;
    config.checkpoint_interval = CHECKPOINT;
    config.rules.max_image_size = IMAGE_SIZE as u64; // the slot's capacity
    config
}

#[entry]
fn main() -> ! {
    heap::init();
    icount::start_timer();
    if let Err(per_tick_milli) = icount::check_calibration() {
        fail(format_args!(
            "a timer tick is {}.{:03} instructions, not {}: run QEMU with -icount shift=0,sleep=off",
            per_tick_milli / 1000,
            per_tick_milli % 1000,
            icount::INSTRUCTIONS_PER_TICK
        ));
    }
    scenario::run();
    debug::exit(debug::EXIT_SUCCESS);
    // Under QEMU the exit does not return; without a debugger attached, stop here.
    cortex_m::asm::udf()
}

fn must<T>(result: Result<T, &'static str>) -> T {
    match result {
        Ok(value) => value,
        Err(why) => fail(format_args!("{why}")),
    }
}
