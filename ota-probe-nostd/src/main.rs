//! Links ota-core into a freestanding binary: no std, no libc start files.
//! (ota-core itself forbids unsafe code; only this probe's allocator and entry point use it.)
#![no_std]
#![no_main]

extern crate alloc;

use core::panic::PanicInfo;

use ota_core::{Agent, Boot, Config, DeviceIdentity, Event, Instant};

mod heap {
    //! A bump allocator over a static arena: enough to build an agent and run a connect.
    use core::alloc::{GlobalAlloc, Layout};
    use core::sync::atomic::{AtomicUsize, Ordering};

    pub struct Bump;

    const SIZE: usize = 64 * 1024;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static mut ARENA: [u8; SIZE] = [0; SIZE];

    unsafe impl GlobalAlloc for Bump {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let mut start = 0;
            let reserved = NEXT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |next| {
                start = next.next_multiple_of(layout.align());
                let end = start.checked_add(layout.size())?;
                (end <= SIZE).then_some(end)
            });
            match reserved {
                // SAFETY: [start, start + size) lies inside ARENA and is handed out once.
                Ok(_) => unsafe { (&raw mut ARENA).cast::<u8>().add(start) },
                Err(_) => core::ptr::null_mut(),
            }
        }
        unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
    }
}

#[global_allocator]
static ALLOCATOR: heap::Bump = heap::Bump;

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {}
}

/// Entry point in place of the C runtime's `_start`.
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    if let Ok(identity) = DeviceIdentity::new("a1TestPK001", "dev01") {
        let boot = Boot {
            running_version: "1.0.0",
            record: None,
        };
        if let Ok(mut agent) = Agent::new(Config::new(identity), boot, Instant::ZERO) {
            let _ = agent.handle(Instant::from_millis(1), Event::Connected);
            while agent.poll_action().is_some() {}
        }
    }
    loop {}
}
