#![no_std]
#![forbid(unsafe_code)]
#![deny(missing_docs)]
//! placeholder
#[cfg(test)]
extern crate std;

pub mod boot;
pub mod clock;
pub mod driver;
pub mod flash;
mod http;
pub mod login;
pub mod mqtt;
pub mod record;
pub mod transport;

#[cfg(test)]
mod testflash;

pub use boot::Bootloader;
pub use clock::Clock;
pub use driver::{Application, Driver, Error, Exit, Parts, Settings};
pub use flash::{FlashError, Slot};
pub use login::{Login, SecureMode};
pub use mqtt::{MqttClient, MqttError};
pub use record::RecordStore;
pub use transport::{Message, MqttTransport};
