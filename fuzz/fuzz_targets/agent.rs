#![no_main]

use std::cell::RefCell;

use ota_core::testkit::world::Signatures;

thread_local! {
    /// Package signatures by digest, kept across runs: signing is the costliest step by far.
    static SIGNATURES: RefCell<Signatures> = RefCell::new(Signatures::default());
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    SIGNATURES.with(|s| ota_core::testkit::fuzz::agent_reusing(&mut s.borrow_mut(), data))
});
