//! What every firmware has: a panic handler, a heap, and an executor (here the smallest
//! one: poll the future in a loop; a real firmware would sleep in WFE between wakes).

use core::future::Future;
use core::mem::MaybeUninit;
use core::panic::PanicInfo;
use core::task::{Context, Poll, Waker};

use embedded_alloc::LlffHeap as Heap;

#[global_allocator]
static HEAP: Heap = Heap::empty();

/// Heap arena for ota-core (agent state, staging block, action arena, parsed tasks), and
/// with mbedTLS its C heap too (two sessions' record buffers and handshake state).
#[cfg(not(feature = "mbedtls"))]
pub const HEAP_SIZE: usize = 24 * 1024;
#[cfg(feature = "mbedtls")]
pub const HEAP_SIZE: usize = 24 * 1024 + 2 * 64 * 1024;

#[panic_handler]
fn panic(_: &PanicInfo) -> ! {
    loop {
        cortex_m::asm::udf();
    }
}

pub fn init_heap() {
    static mut ARENA: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once at start-up, before any allocation; the arena is used only here.
    unsafe { HEAP.init(core::ptr::addr_of_mut!(ARENA) as usize, HEAP_SIZE) }
}

#[allow(dead_code)] // the `core` binary drives the agent synchronously
pub fn block_on<F: Future>(future: F) -> F::Output {
    let mut future = core::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
