#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! A sans-IO firmware over-the-air (OTA) update agent for the Alibaba Cloud IoT Platform.
//!
//! The [`Agent`] is a pure state machine: it never touches a socket, a file, a clock or
//! a random number generator. The adapter feeds it [`Event`]s (MQTT up/down and messages,
//! HTTP status/body/end/failure, storage results, the application's health verdict) and
//! performs the [`Action`]s it asks for (subscribe, publish, fetch from an offset, write
//! bytes at an offset, save the record, activate, reboot, confirm, roll back, notify).
//!
//! The driving loop — mutate, drain until nothing, sleep until the deadline:
//!
//! ```
//! use ota_core::{Action, Agent, Boot, Config, DeviceIdentity, Event, Instant};
//!
//! # fn main() -> Result<(), ota_core::Error> {
//! let config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01")?);
//! let boot = Boot { running_version: "1.0.0", record: None }; // record: what storage holds
//! let mut agent = Agent::new(config, boot, Instant::ZERO)?;
//!
//! let mut subscribed = Vec::new();
//! let mut now = Instant::from_millis(10);
//! agent.handle(now, Event::Connected)?; // one input...
//! while let Some(action) = agent.poll_action() { // ...then drain every action
//!     match action {
//!         Action::Subscribe { topic } => subscribed.push(topic.to_string()),
//!         Action::Publish { topic: _, payload: _, qos: _ } => { /* MQTT publish at that QoS */ }
//!         Action::Fetch { fetch: _, url: _, offset: _ } => { /* GET, Range: bytes=offset- */ }
//!         Action::Write { offset: _, data: _ } => { /* then Event::WriteDone */ }
//!         Action::SaveRecord { record: _ } => { /* atomically; then Event::RecordSaved */ }
//!         _ => { /* CancelFetch, ClearRecord, Activate, Reboot, Confirm, Rollback, Notify */ }
//!     }
//! }
//! if let Some(deadline) = agent.poll_timeout() { // sleep until then (or an input arrives)
//!     now = deadline;
//!     agent.handle_timeout(now)?;
//! }
//! assert_eq!(subscribed[..2], ["/ota/device/upgrade/a1TestPK001/dev01",
//!                             "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply"]);
//! // With the MQTT channel (feature `mqtt-channel`), its block replies too.
//! assert_eq!(subscribed.len(), if cfg!(feature = "mqtt-channel") { 3 } else { 2 });
//! # Ok(()) }
//! ```
//!
//! Body bytes go through [`Agent::handle_body`], which says how many it took: fewer than
//! offered means every staging block is full or being written, so the adapter performs the
//! queued `Write`s, reports their `WriteDone`s (in order), and offers the rest. An adapter
//! that can read its socket into a buffer it is given avoids that copy: [`Agent::body_buffer`]
//! lends the free part of the staging block ([`BodyBuffer::Lent`]; `Full` is the same
//! back-pressure) and [`Agent::body_filled`] hashes the bytes read into it where they lie,
//! with exactly the contracts of `handle_body` (they share one implementation). The staging
//! ring has `Config::write_buffers` blocks (default 1: one write in flight, hashing waits for
//! it; 2 or more: the adapter writes one block, e.g. on a thread, while the agent hashes the
//! next). A `Write` borrows its block for the action only, so an adapter that answers later
//! copies the bytes; the agent does not reuse the block before the answer. Records, clears and
//! activation are asked for only once every write before them is answered: a record never
//! covers an unacknowledged write. That back-pressure keeps memory bounded; the body path
//! hashes each byte once on the way into the staging ring and does not allocate.
//!
//! Protocol failures (a 403, a short body, a digest mismatch, a flash failure) are not
//! `Err`: they become a state change and exactly one failure report with the right code.
//! `Err` means the adapter broke the contract; the state is then unchanged.
//!
//! Cargo features, all but `signature` (and the test support `fuzzing`) in `default`: a
//! firmware that needs less takes `default-features = false` and names what it uses; the
//! minimal configuration is `features = ["md5"]` (HTTP download, MD5, one module). Leaving
//! one out removes its code from the build; a push that needs it is refused with one `-1`
//! that says why, and nothing is downloaded (docs/protocol.md §3).
//!
//! * `mqtt-channel`: the MQTT-channel download (docs/protocol.md §6): `mqtt_frame`, block
//!   requests and replies, `Config::mqtt`, the `download_reply` subscription.
//! * `multi-file`: tasks with `data.files` (`Task::files`, per-file download, verification
//!   and resume).
//! * `modules`: `Config::extra_modules`, further modules with their own versions and tasks
//!   queued behind each other; without it the agent updates `Config::module` only.
//! * `md5`, `sha256`: the digest algorithms (`DigestMethod` has the variants built in); at
//!   least one is needed.
//! * `legacy-request`: `TaskRequest::Legacy`, asking for the task on the older SDK's topic.
//! * `gateway`: the session machine of a gateway's sub-devices (docs/protocol.md §14) and its
//!   HMAC login sign.
//! * `ntp`: the platform's time topic (docs/protocol.md §13).
//! * `signature` (not in `default`; needs `sha256`): the platform's secure upgrade
//!   (docs/protocol.md §11). It adds `Config::package_key` (`signature::PackageKey`,
//!   RSA-2048); with a key, an image is activated only if the task's `digestsign` verifies
//!   over its digest.
//!
//! The flash each costs on a Cortex-M4 is measured in BENCHMARKS.md ("Pay only for what you
//! use on flash").

#[cfg(not(any(feature = "md5", feature = "sha256")))]
compile_error!("ota-core needs at least one digest algorithm: enable feature `md5` or `sha256`");

extern crate alloc;
#[cfg(test)]
extern crate std;

#[macro_use]
mod text;
mod json;

pub mod agent;
pub mod backoff;
pub mod digest;
pub mod downlink;
pub mod error;
#[cfg(feature = "gateway")]
pub mod gateway;
pub mod identity;
#[cfg(feature = "mqtt-channel")]
pub mod mqtt_frame;
#[cfg(feature = "ntp")]
pub mod ntp;
pub mod record;
pub mod roots;
pub mod signature;
pub mod task;
pub mod time;
pub mod uplink;

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod testkit;

#[cfg(feature = "mqtt-channel")]
pub use agent::MqttDownload;
pub use agent::{
    Action, Agent, BodyBuffer, Boot, Config, Confirmation, Event, FetchId, Notification, Outcome,
    Phase, Qos, RetryPolicy, TaskRequest,
};
pub use error::Error;
pub use identity::DeviceIdentity;
pub use task::{Channel, DigestMethod, ExpectedDigest, Task};
pub use time::Instant;
pub use uplink::FailureCode;
