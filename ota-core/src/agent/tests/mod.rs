mod edges;
mod lifecycle;
mod power_loss;
mod properties;
