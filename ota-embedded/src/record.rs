//! The saved record in two alternating copies (docs/architecture.md "The saved record").
//!
//! Two sectors of a NOR flash, A at `base` and B at `base + ERASE_SIZE`. Each save erases the
//! copy that does *not* hold the newest valid record and writes there, with a sequence number
//! one higher, so a power loss during a save (a torn erase or write) leaves the previous
//! copy intact: load picks the valid copy with the higher sequence number. A clear is a save
//! of an empty record (a tombstone), so it is just as atomic.
//!
//! A copy is `magic "OTAC" | seq u32 | len u16 | !len u16 | crc32 u32 | payload`, little-endian,
//! padded with `0xFF` to the write unit. The CRC (CRC-32/ISO-HDLC) covers seq, len and the
//! payload, so a torn write never passes as a record.

use embedded_storage_async::nor_flash::NorFlash;

use crate::flash::FlashError;

/// Bytes of one copy at most, header included: the store's buffer. ota-core's records are a
/// few hundred bytes.
pub const COPY_SIZE: usize = 1024;
const HEADER: usize = 16;
/// Longest record payload.
pub const MAX_RECORD_LEN: usize = COPY_SIZE - HEADER;
const MAGIC: &[u8; 4] = b"OTAC";
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// A valid copy found on flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Found {
    copy: u32,
    seq: u32,
}

/// The record's two copies on a NOR flash, with one buffer of [`COPY_SIZE`] bytes.
pub struct RecordStore<F> {
    flash: F,
    base: u32,
    buf: [u8; COPY_SIZE],
    /// The newest valid copy, as of the last scan or save.
    newest: Option<Found>,
    scanned: bool,
}

impl<F: NorFlash> RecordStore<F> {
    /// Two copies in the sectors at `base` and `base + ERASE_SIZE` (`base` sector-aligned).
    pub fn new(flash: F, base: u32) -> Result<Self, FlashError> {
        if !(base as usize).is_multiple_of(F::ERASE_SIZE) || !COPY_SIZE.is_multiple_of(F::READ_SIZE)
        {
            return Err(FlashError::Misaligned);
        }
        if F::WRITE_SIZE > COPY_SIZE - HEADER {
            return Err(FlashError::WriteUnitTooLarge);
        }
        base.checked_add(2 * F::ERASE_SIZE as u32)
            .ok_or(FlashError::OutOfBounds)?;
        Ok(RecordStore {
            flash,
            base,
            buf: [0; COPY_SIZE],
            newest: None,
            scanned: false,
        })
    }

    fn copy_addr(&self, copy: u32) -> u32 {
        self.base + copy * F::ERASE_SIZE as u32
    }

    /// How many bytes of a copy can be read: the buffer, or less on tiny sectors.
    fn readable() -> usize {
        let n = COPY_SIZE.min(F::ERASE_SIZE);
        n - n % F::READ_SIZE
    }

    /// Reads copy `copy` into the buffer; its sequence number and length if it is valid.
    async fn read_copy(&mut self, copy: u32) -> Result<Option<(u32, usize)>, FlashError> {
        let n = Self::readable();
        let addr = self.copy_addr(copy);
        self.flash
            .read(addr, &mut self.buf[..n])
            .await
            .map_err(FlashError::from_flash)?;
        Ok(parse(&self.buf[..n]))
    }

    /// Reads both copies; leaves the newest valid one's length (0: tombstone) and which it is.
    async fn scan(&mut self) -> Result<Option<(u32, usize)>, FlashError> {
        let a = self.read_copy(0).await?;
        let b = self.read_copy(1).await?;
        let newest = match (a, b) {
            (Some((sa, _)), Some((sb, lb))) if newer(sb, sa) => Some((1, sb, lb)),
            (Some((sa, la)), _) => Some((0, sa, la)),
            (None, Some((sb, lb))) => Some((1, sb, lb)),
            (None, None) => None,
        };
        self.newest = newest.map(|(copy, seq, _)| Found { copy, seq });
        self.scanned = true;
        Ok(newest.map(|(copy, _, len)| (copy, len)))
    }

    /// Finds the newest valid record. `None` when there is none (or it was cleared).
    pub async fn load(&mut self) -> Result<Option<&[u8]>, FlashError> {
        let Some((copy, len)) = self.scan().await? else {
            return Ok(None);
        };
        if len == 0 {
            return Ok(None); // a tombstone: cleared
        }
        if copy == 0 {
            self.read_copy(0).await?; // the buffer holds copy B now
        }
        Ok(Some(&self.buf[HEADER..HEADER + len]))
    }

    /// Replaces the record atomically (see the module docs).
    pub async fn save(&mut self, record: &[u8]) -> Result<(), FlashError> {
        if record.len() > MAX_RECORD_LEN {
            return Err(FlashError::OutOfBounds);
        }
        let written = (HEADER + record.len()).div_ceil(F::WRITE_SIZE) * F::WRITE_SIZE;
        if written > COPY_SIZE || written > F::ERASE_SIZE {
            return Err(FlashError::OutOfBounds);
        }
        if !self.scanned {
            self.scan().await?;
        }
        let (copy, seq) = match self.newest {
            Some(found) => (1 - found.copy, found.seq.wrapping_add(1)),
            None => (0, 1),
        };
        let len = record.len() as u16;
        self.buf[..4].copy_from_slice(MAGIC);
        self.buf[4..8].copy_from_slice(&seq.to_le_bytes());
        self.buf[8..10].copy_from_slice(&len.to_le_bytes());
        self.buf[10..12].copy_from_slice(&(!len).to_le_bytes());
        self.buf[HEADER..HEADER + record.len()].copy_from_slice(record);
        let crc = checksum(&self.buf[4..12], &self.buf[HEADER..HEADER + record.len()]);
        self.buf[12..16].copy_from_slice(&crc.to_le_bytes());
        self.buf[HEADER + record.len()..written].fill(0xFF);
        let addr = self.copy_addr(copy);
        self.flash
            .erase(addr, addr + F::ERASE_SIZE as u32)
            .await
            .map_err(FlashError::from_flash)?;
        self.flash
            .write(addr, &self.buf[..written])
            .await
            .map_err(FlashError::from_flash)?;
        self.newest = Some(Found { copy, seq });
        Ok(())
    }

    /// Deletes the record: saves an empty one, so the previous stays until this is durable.
    pub async fn clear(&mut self) -> Result<(), FlashError> {
        self.save(&[]).await
    }

    /// The flash.
    pub fn into_inner(self) -> F {
        self.flash
    }
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut digest = CRC.digest();
    digest.update(header);
    digest.update(payload);
    digest.finalize()
}

/// `a` is newer than `b` in wrapping sequence order.
fn newer(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < u32::MAX / 2
}

/// A copy's sequence number and payload length, if it is whole.
fn parse(copy: &[u8]) -> Option<(u32, usize)> {
    if copy.len() < HEADER || &copy[..4] != MAGIC {
        return None;
    }
    let word = |i: usize| u32::from_le_bytes([copy[i], copy[i + 1], copy[i + 2], copy[i + 3]]);
    let seq = word(4);
    let len = u16::from_le_bytes([copy[8], copy[9]]);
    let check = u16::from_le_bytes([copy[10], copy[11]]);
    if check != !len || HEADER + len as usize > copy.len() {
        return None;
    }
    let payload = &copy[HEADER..HEADER + len as usize];
    (checksum(&copy[4..12], payload) == word(12)).then_some((seq, len as usize))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testflash::{block_on, RamFlash};

    type Flash = RamFlash<8, 4096>;

    fn store(flash: Flash) -> RecordStore<Flash> {
        RecordStore::new(flash, 4096).unwrap()
    }

    fn load(store: &mut RecordStore<Flash>) -> Option<std::vec::Vec<u8>> {
        block_on(store.load()).unwrap().map(|r| r.to_vec())
    }

    #[test]
    fn blank_flash_has_no_record() {
        let mut s = store(Flash::new(3 * 4096));
        assert_eq!(load(&mut s), None);
    }

    #[test]
    fn saves_alternate_between_the_copies_and_the_newest_wins() {
        let mut s = store(Flash::new(3 * 4096));
        for i in 0..5u8 {
            let record = [i; 37];
            block_on(s.save(&record)).unwrap();
            let mut reopened = store(s.into_inner());
            assert_eq!(load(&mut reopened).as_deref(), Some(&record[..]));
            s = reopened;
        }
        let flash = s.into_inner();
        // Both copies hold a record: sequence numbers 4 and 5.
        assert_eq!(&flash.bytes[4096..4100], MAGIC);
        assert_eq!(&flash.bytes[8192..8196], MAGIC);
    }

    #[test]
    fn clear_is_a_tombstone_and_a_later_save_counts_on() {
        let mut s = store(Flash::new(3 * 4096));
        block_on(s.save(b"first")).unwrap();
        block_on(s.clear()).unwrap();
        let mut s = store(s.into_inner());
        assert_eq!(load(&mut s), None);
        block_on(s.save(b"second")).unwrap();
        let mut s = store(s.into_inner());
        assert_eq!(load(&mut s).as_deref(), Some(&b"second"[..]));
    }

    #[test]
    fn a_save_torn_at_any_operation_keeps_the_previous_record() {
        // A save is an erase then a write; tear each of them in turn.
        for op in 0..2 {
            let mut s = store(Flash::new(3 * 4096));
            block_on(s.save(b"old record")).unwrap();
            block_on(s.save(b"older? no: the current one")).unwrap();
            let mut flash = s.into_inner();
            flash.tear_after = Some(op);
            let mut s = store(flash);
            assert!(load(&mut s).is_some());
            assert!(block_on(s.save(&[0x5A; 300])).is_err());
            let flash = s.into_inner();
            assert_eq!(flash.torn, 1, "the tear at operation {op} fired");
            let mut s = store(flash);
            assert_eq!(
                load(&mut s).as_deref(),
                Some(&b"older? no: the current one"[..]),
                "tear at operation {op}"
            );
        }
    }

    #[test]
    fn sequence_numbers_wrap() {
        assert!(newer(0, u32::MAX));
        assert!(newer(5, 4));
        assert!(!newer(4, 5));
        assert!(!newer(7, 7));
    }

    #[test]
    fn oversized_records_are_refused() {
        let mut s = store(Flash::new(3 * 4096));
        assert_eq!(
            block_on(s.save(&[0; MAX_RECORD_LEN + 1])),
            Err(FlashError::OutOfBounds)
        );
        block_on(s.save(&[7; MAX_RECORD_LEN])).unwrap();
    }
}
