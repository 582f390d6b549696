//! End-to-end tests: ota-std devices against the real simulator over loopback.

mod faults;
mod happy;
mod lifecycle;
mod modules;
mod mqtt_channel;
mod multi_file;
mod platform_tls;
mod protocol;
mod sessions;
mod tls;
