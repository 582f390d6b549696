//! The image slot on NOR flash.
//!
//! NOR flash cannot be rewritten without an erase, and an erase works on whole sectors
//! (`NorFlash::ERASE_SIZE`). The agent writes the image as sequential blocks of
//! `Config::write_block` bytes at block-aligned offsets, and after a power loss it resumes at
//! a block-aligned durable offset, rewriting the block that may have been torn. So:
//!
//! **Rule: `Config::write_block` is a multiple of `ERASE_SIZE`** (and so of `WRITE_SIZE`).
//! Every write then starts on a sector boundary and erases its own sectors first, which
//! makes a rewrite after a resume correct without any bookkeeping. The last block of an
//! image is usually short: it is padded with `0xFF` to the write unit (the erased value, so
//! the padding costs nothing and reads back as erased).
//!
//! The cost of the rule is RAM: the agent's staging block is `write_block` bytes. Use a slot
//! on flash with small uniform sectors (4 KiB on most SPI NOR chips, nRF52, RP2040);
//! a slot in 128 KiB STM32F4 sectors would need a 128 KiB staging block.

use embedded_storage_async::nor_flash::{NorFlash, NorFlashError, NorFlashErrorKind};

/// Largest flash write unit (`NorFlash::WRITE_SIZE`) the slot can pad a short tail to.
pub const MAX_WRITE_UNIT: usize = 256;

/// Why a slot operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlashError {
    /// An offset or length breaks the erase or write alignment (see the module docs).
    Misaligned,
    /// Beyond the slot's end.
    OutOfBounds,
    /// The flash's write unit is larger than [`MAX_WRITE_UNIT`].
    WriteUnitTooLarge,
    /// The flash driver failed.
    Flash(NorFlashErrorKind),
}

impl FlashError {
    pub(crate) fn from_flash<E: NorFlashError>(e: E) -> FlashError {
        FlashError::Flash(e.kind())
    }
}

/// The staging slot: a sector-aligned region `[base, base + capacity)` of a NOR flash.
pub struct Slot<F> {
    flash: F,
    base: u32,
    capacity: u32,
}

impl<F: NorFlash> Slot<F> {
    /// A slot of `capacity` bytes at `base`; both must be multiples of `ERASE_SIZE`.
    pub fn new(flash: F, base: u32, capacity: u32) -> Result<Self, FlashError> {
        if F::WRITE_SIZE > MAX_WRITE_UNIT {
            return Err(FlashError::WriteUnitTooLarge);
        }
        if !(base as usize).is_multiple_of(F::ERASE_SIZE)
            || !(capacity as usize).is_multiple_of(F::ERASE_SIZE)
        {
            return Err(FlashError::Misaligned);
        }
        base.checked_add(capacity).ok_or(FlashError::OutOfBounds)?;
        Ok(Slot {
            flash,
            base,
            capacity,
        })
    }

    /// Checks the rule of the module docs for a `Config::write_block`.
    pub fn check_write_block(write_block: usize) -> Result<(), FlashError> {
        if write_block == 0 || !write_block.is_multiple_of(F::ERASE_SIZE) {
            return Err(FlashError::Misaligned);
        }
        Ok(())
    }

    /// Bytes the slot holds (the largest image it accepts).
    pub fn capacity(&self) -> u64 {
        u64::from(self.capacity)
    }

    /// Writes one block of the image at `offset` (a multiple of `ERASE_SIZE`): erases the
    /// sectors it covers, writes the whole write units, then the tail padded with `0xFF`.
    pub async fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), FlashError> {
        let erase = F::ERASE_SIZE as u64;
        if !offset.is_multiple_of(erase) {
            return Err(FlashError::Misaligned);
        }
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FlashError::OutOfBounds)?;
        let erase_end = end.div_ceil(erase) * erase;
        if erase_end > self.capacity() {
            return Err(FlashError::OutOfBounds);
        }
        // In range of a u32 slot: both fit.
        let (start, erase_end) = (self.base + offset as u32, self.base + erase_end as u32);
        self.flash
            .erase(start, erase_end)
            .await
            .map_err(FlashError::from_flash)?;
        let whole = data.len() - data.len() % F::WRITE_SIZE;
        if whole > 0 {
            self.flash
                .write(start, &data[..whole])
                .await
                .map_err(FlashError::from_flash)?;
        }
        let tail = &data[whole..];
        if !tail.is_empty() {
            let mut unit = [0xFF; MAX_WRITE_UNIT];
            unit[..tail.len()].copy_from_slice(tail);
            self.flash
                .write(start + whole as u32, &unit[..F::WRITE_SIZE])
                .await
                .map_err(FlashError::from_flash)?;
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` (aligned to `READ_SIZE`), e.g. to check an image.
    pub async fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .ok_or(FlashError::OutOfBounds)?;
        if end > self.capacity() {
            return Err(FlashError::OutOfBounds);
        }
        self.flash
            .read(self.base + offset as u32, buf)
            .await
            .map_err(FlashError::from_flash)
    }

    /// Reads `buf.len()` bytes at `offset` (aligned to `READ_SIZE`, as every block offset
    /// is), whatever the length: a tail shorter than the read unit goes through a unit on the
    /// stack. This is how the agent re-reads the image (`Action::Read`).
    pub async fn read_any(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), FlashError> {
        let unit = F::READ_SIZE.max(1);
        if unit > MAX_WRITE_UNIT || !offset.is_multiple_of(unit as u64) {
            return Err(FlashError::Misaligned);
        }
        let whole = buf.len() - buf.len() % unit;
        self.read(offset, &mut buf[..whole]).await?;
        let tail = &mut buf[whole..];
        if !tail.is_empty() {
            let mut last = [0xFF; MAX_WRITE_UNIT];
            self.read(offset + whole as u64, &mut last[..unit]).await?;
            tail.copy_from_slice(&last[..tail.len()]);
        }
        Ok(())
    }

    /// The flash, e.g. to hand it to the bootloader after an update.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testflash::{block_on, RamFlash};
    use std::vec::Vec;

    type Flash = RamFlash<16, 1024>;

    #[test]
    fn a_rewritten_block_reads_back_exactly() {
        // A resume after a power loss rewrites the block at the durable offset: the erase
        // of its own sector makes the second write win over the torn first one.
        let mut slot = Slot::new(Flash::new(8 * 1024), 2048, 4096).unwrap();
        block_on(slot.write(1024, &[0x0F; 2048])).unwrap();
        block_on(slot.write(1024, &[0xF0; 2048])).unwrap();
        let mut back = [0; 2048];
        block_on(slot.read(1024, &mut back)).unwrap();
        assert_eq!(back, [0xF0; 2048]);
        let flash = slot.into_inner();
        assert!(
            flash.bytes[..3072].iter().all(|&b| b == 0xFF),
            "outside the slot"
        );
    }

    #[test]
    fn the_short_tail_is_padded_with_erased_bytes() {
        let mut slot = Slot::new(Flash::new(4096), 0, 4096).unwrap();
        block_on(slot.write(1024, &[1, 2, 3, 4, 5])).unwrap();
        let flash = slot.into_inner();
        assert_eq!(&flash.bytes[1024..1029], &[1, 2, 3, 4, 5]);
        assert!(flash.bytes[1029..2048].iter().all(|&b| b == 0xFF));
        assert_eq!(flash.writes, 1, "only the padded tail unit");
    }

    /// The RAM flash with a 4-byte read unit (as some internal flashes have).
    struct Read4(Flash);

    impl embedded_storage_async::nor_flash::ErrorType for Read4 {
        type Error = crate::testflash::TestFlashError;
    }

    impl embedded_storage_async::nor_flash::ReadNorFlash for Read4 {
        const READ_SIZE: usize = 4;

        async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
            assert!(
                offset.is_multiple_of(4) && bytes.len().is_multiple_of(4),
                "unaligned read"
            );
            self.0.read(offset, bytes).await
        }

        fn capacity(&self) -> usize {
            self.0.capacity()
        }
    }

    impl NorFlash for Read4 {
        const WRITE_SIZE: usize = 16;
        const ERASE_SIZE: usize = 1024;

        async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
            self.0.erase(from, to).await
        }

        async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
            self.0.write(offset, bytes).await
        }
    }

    #[test]
    fn any_length_reads_back_including_a_tail_shorter_than_the_read_unit() {
        let mut slot = Slot::new(Read4(Flash::new(4096)), 0, 4096).unwrap();
        let image: Vec<u8> = (0..1027u32).map(|i| i as u8).collect();
        block_on(slot.write(0, &image)).unwrap();
        let mut back = [0; 1027];
        block_on(slot.read_any(0, &mut back)).unwrap();
        assert_eq!(back[..], image[..]);
        let mut beyond = [0; 8];
        assert_eq!(
            block_on(slot.read_any(4092, &mut beyond)),
            Err(FlashError::OutOfBounds)
        );
        assert_eq!(
            block_on(slot.read_any(2, &mut beyond)),
            Err(FlashError::Misaligned)
        );
    }

    #[test]
    fn alignment_and_bounds_are_checked() {
        let mut slot = Slot::new(Flash::new(4096), 0, 2048).unwrap();
        assert_eq!(
            block_on(slot.write(512, &[0; 16])),
            Err(FlashError::Misaligned)
        );
        assert_eq!(
            block_on(slot.write(1024, &[0; 1025])),
            Err(FlashError::OutOfBounds)
        );
        assert!(Slot::<Flash>::new(Flash::new(4096), 100, 1024).is_err());
        assert!(Slot::<Flash>::check_write_block(4096).is_ok());
        assert!(Slot::<Flash>::check_write_block(1536).is_err());
    }
}
