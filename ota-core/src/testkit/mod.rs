//! Test support shared by the unit tests, the property tests and the fuzz targets (feature
//! `fuzzing`): a deterministic simulated world that checks the agent's invariants at every
//! step, and an interpreter of arbitrary operation sequences over it.
#![allow(missing_docs)]

pub mod fuzz;
pub mod ops;
pub mod signing;
pub mod world;
