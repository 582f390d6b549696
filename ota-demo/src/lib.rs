//! The demo of the whole stack on one machine: ota-std's agents (direct devices, or one
//! gateway with its sub-devices) upgraded by ota-sim's simulated cloud, with a live progress
//! view and a final table. It is its own crate because it is the one place that needs both:
//! the simulator depends on no device adapter, and the adapters test against the simulator
//! only in their tests.
//!
//! * [`devices`]: N direct devices, a verification job, a batch job, faults and signatures
//!   on request (`ota-demo`, `--faults`, `--signed`, `--tls`).
//! * [`gateway`]: one gateway updating its sub-devices several at once (`ota-demo --gateway`).
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod devices;
pub mod gateway;
