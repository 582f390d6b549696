mod confirmation;
mod edges;
mod lifecycle;
mod modules;
mod mqtt_channel;
mod power_loss;
mod properties;
