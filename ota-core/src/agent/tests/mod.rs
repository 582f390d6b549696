mod confirmation;
mod edges;
// Pushes a build without an optional part cannot take.
#[cfg(not(all(
    feature = "mqtt-channel",
    feature = "multi-file",
    feature = "modules",
    feature = "sha256"
)))]
mod features;
mod lifecycle;
#[cfg(feature = "modules")]
mod modules;
#[cfg(feature = "mqtt-channel")]
mod mqtt_channel;
#[cfg(feature = "multi-file")]
mod multi_file;
mod power_loss;
mod progress;
mod properties;
mod reread;
#[cfg(feature = "signature")]
mod signing;
mod switching;
mod write_ring;
