//! Why a driver stops: its own module, so that the download (`http`) and the drivers that
//! feed it can both name it without importing each other.

use crate::flash::FlashError;

/// Why the driver stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The agent refused its configuration or an input (a bug in the driver or the config).
    Agent(ota_core::Error),
    /// `Config::write_block` breaks the slot rule, or the record could not be read.
    Flash(FlashError),
    /// The bootloader failed to confirm or roll back: its state is unknown.
    Boot,
    /// The agent took no body bytes and asked for nothing: it would loop forever.
    Stuck,
}

impl From<ota_core::Error> for Error {
    fn from(e: ota_core::Error) -> Self {
        Error::Agent(e)
    }
}
