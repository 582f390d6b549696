mod confirmation;
mod edges;
mod lifecycle;
mod modules;
mod mqtt_channel;
mod multi_file;
mod power_loss;
mod progress;
mod properties;
mod reread;
#[cfg(feature = "signature")]
mod signing;
mod switching;
mod write_ring;
