#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! ota-core: placeholder crate root while modules land.

extern crate alloc;
#[cfg(test)]
extern crate std;

pub mod agent;
pub mod backoff;
pub mod digest;
pub mod downlink;
pub mod error;
pub mod identity;
pub mod record;
pub mod task;
pub mod time;
pub mod uplink;

pub use agent::{
    Action, Agent, Boot, Config, Event, FetchId, Notification, Outcome, Phase, RetryPolicy,
    TaskRequest,
};
pub use error::Error;
pub use identity::DeviceIdentity;
pub use task::{Channel, DigestMethod, ExpectedDigest, Task};
pub use time::Instant;
pub use uplink::FailureCode;
