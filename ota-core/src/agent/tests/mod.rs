mod edges;
mod lifecycle;
mod mqtt_channel;
mod power_loss;
mod properties;
