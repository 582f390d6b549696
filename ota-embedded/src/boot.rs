//! Activation, confirmation and reboot through the bootloader.
//!
//! Shaped after embassy-boot: its `FirmwareState` (or `FirmwareUpdater`) implements this in a
//! few lines, with the slot written through a `Partition` of the same DFU region:
//!
//! ```ignore
//! impl<STATE: NorFlash> Bootloader for Boot<'_, STATE> {
//!     type Error = embassy_boot::FirmwareUpdaterError;
//!     async fn mark_updated(&mut self) -> Result<(), Self::Error> { self.state.mark_updated().await }
//!     async fn mark_booted(&mut self) -> Result<(), Self::Error> { self.state.mark_booted().await }
//!     async fn mark_rollback(&mut self) -> Result<(), Self::Error> { Ok(()) } // not booted = revert
//!     fn reset(&mut self) { cortex_m::peripheral::SCB::sys_reset() }
//! }
//! ```

use core::fmt::Debug;

/// The bootloader's side of an update.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait Bootloader {
    /// What went wrong.
    type Error: Debug;

    /// The verified image in the slot boots next (embassy-boot `mark_updated`): the
    /// bootloader swaps it in and will revert unless the new image confirms itself.
    async fn mark_updated(&mut self) -> Result<(), Self::Error>;

    /// The running (new) image is healthy: make it permanent (embassy-boot `mark_booted`).
    async fn mark_booted(&mut self) -> Result<(), Self::Error>;

    /// The running (new) image is not healthy: the previous one boots next. With a swapping
    /// bootloader that reverts every image not marked booted, there is nothing to do.
    async fn mark_rollback(&mut self) -> Result<(), Self::Error>;

    /// Restarts the device. On hardware it does not return; if it does (a host test, or a
    /// simulated device), the driver's `run` returns [`crate::Exit::Reboot`].
    fn reset(&mut self);
}
