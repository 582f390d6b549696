//! End-to-end tests of the simulator with a scripted device over loopback.

mod blocks;
mod cli;
mod cli_faults;
mod device;
mod download;
mod external;
mod gateway;
mod jobs;
mod login;
mod modules;
mod mqtt;
mod mqtt_faults;
mod multi_file;
mod platform;
mod push;
mod sdk;
mod tls;
mod tls_suites;

use ota_sim::{Sim, SimConfig};

/// A simulator on free ports.
pub fn sim() -> Sim {
    Sim::start(SimConfig::default()).expect("simulator starts")
}

/// Tests and adapters share one simulator between threads.
#[test]
fn sim_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<Sim>();
}
