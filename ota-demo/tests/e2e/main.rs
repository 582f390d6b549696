//! The demo and ota-std's agents against the simulator: the demo's logic with fewer devices,
//! over TLS, and the gateway mode and a TLS device against the `ota-sim serve` process.

mod demo;
mod demo_tls;
mod gateway_agent;
mod serve_tls;
mod support;
