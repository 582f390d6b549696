//! The global allocator: embedded-alloc's linked-list heap (as in ota-footprint) behind a
//! wrapper that counts the bytes in use and their peak, so the agent's heap peak is measured
//! rather than estimated.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

/// Arena size: the harness's image and slot (2 x 250,000 B) plus room for the agent.
pub const HEAP_SIZE: usize = 1024 * 1024;

/// A heap that knows how much of it is in use.
pub struct CountingHeap {
    heap: LlffHeap,
    in_use: AtomicUsize,
    peak: AtomicUsize,
}

impl CountingHeap {
    const fn new() -> Self {
        CountingHeap {
            heap: LlffHeap::empty(),
            in_use: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated now (requested sizes, not counting the allocator's own headers).
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// Most bytes allocated at once since the last [`CountingHeap::reset_peak`].
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// Starts a new peak measurement from what is allocated now.
    pub fn reset_peak(&self) {
        self.peak.store(self.in_use(), Ordering::Relaxed);
    }

    fn grew(&self, bytes: usize) {
        let now = self.in_use.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(now, Ordering::Relaxed);
    }

    fn shrank(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded unchanged to LlffHeap, which upholds GlobalAlloc's
// contract; the wrapper only adds counters, and only for allocations that succeeded.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as it is.
        let ptr = unsafe { self.heap.alloc(layout) };
        if !ptr.is_null() {
            self.grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract is passed on as it is.
        unsafe { self.heap.dealloc(ptr, layout) };
        self.shrank(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract is passed on as it is.
        let new = unsafe { self.heap.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Count the worst moment: a moving realloc holds both blocks at once.
            self.grew(new_size);
            self.shrank(layout.size());
        }
        new
    }
}

#[global_allocator]
pub static HEAP: CountingHeap = CountingHeap::new();

/// Gives the heap its arena. Call once, first thing.
pub fn init() {
    static mut ARENA: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    // SAFETY: called once at start-up, before any allocation; the arena is used only by the
    // heap from here on.
    unsafe {
        HEAP.heap
            .init(core::ptr::addr_of_mut!(ARENA) as usize, HEAP_SIZE)
    }
}
