#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! ota-core: placeholder crate root while modules land.

extern crate alloc;

pub mod backoff;
pub mod digest;
pub mod downlink;
pub mod error;
pub mod identity;
pub mod record;
pub mod task;
pub mod time;
pub mod uplink;
