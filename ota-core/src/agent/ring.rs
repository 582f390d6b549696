//! The staging ring: `Config::write_buffers` blocks of `Config::write_block` bytes, used in
//! order. Body bytes fill one block; a full block (or the file's tail) is sealed, then
//! written; a block whose `Write` is in flight is not touched again until its `WriteDone`, so
//! the bytes that `Action::Write` lends stay what was asked to be written. With one block this
//! is the single staging block of old: hashing waits for every write. With more, the agent
//! fills the next block while the adapter writes the previous ones, and takes no body bytes
//! only when every block is sealed or in flight.
//!
//! All memory is allocated once, in [`Ring::new`]: the body path never allocates.
//!
//! Blocks are used in ring order, so what a sealed block is to become lives in a table
//! indexed by the block itself, and the queues are two counts: sealing, issuing and
//! acknowledging a block move no records (they run once per block on the body path).

use alloc::vec;
use alloc::vec::Vec;

/// A sealed block: where it goes, and where the download stands once it is on flash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sealed {
    /// Slot offset of the write.
    pub(super) offset: u64,
    /// Bytes in the block.
    pub(super) len: usize,
    /// Bytes of the file on flash once this block is (the download's `written`).
    pub(super) end: u64,
    /// The download it belongs to: acknowledgements of an abandoned one change nothing.
    pub(super) generation: u32,
}

/// A write to hand to the adapter: the block's place in the ring and what it holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Issue {
    pub(super) at: usize,
    pub(super) offset: u64,
    pub(super) len: usize,
}

pub(super) struct Ring {
    bytes: Vec<u8>,
    block: usize,
    /// Blocks in the ring.
    count: usize,
    /// Index of the oldest block in use (in flight, sealed or filling).
    head: usize,
    /// Blocks from `head` whose `Write` was issued, oldest first.
    in_flight: usize,
    /// Blocks after those, sealed and waiting to be issued.
    sealed: usize,
    /// What each block in flight or sealed holds, by block index.
    meta: Vec<Sealed>,
    /// Bytes in the block after those (the filling block).
    filled: usize,
}

impl Ring {
    pub(super) fn new(block: usize, count: usize) -> Ring {
        Ring {
            bytes: vec![0; block * count],
            block,
            count,
            head: 0,
            in_flight: 0,
            sealed: 0,
            meta: vec![
                Sealed {
                    offset: 0,
                    len: 0,
                    end: 0,
                    generation: 0,
                };
                count
            ],
            filled: 0,
        }
    }

    /// The write block.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn block(&self) -> usize {
        self.block
    }

    /// Index of the block `n` places after the head (`n <= count`). No division: this runs
    /// for every body chunk.
    #[inline(always)] // a few instructions, run for every body chunk
    fn after_head(&self, n: usize) -> usize {
        let i = self.head + n;
        if i >= self.count {
            i - self.count
        } else {
            i
        }
    }

    /// Index of the filling block, `None` when every block is sealed or in flight.
    #[inline(always)] // a few instructions, run for every body chunk
    fn filling(&self) -> Option<usize> {
        let used = self.in_flight + self.sealed;
        (used < self.count).then(|| self.after_head(used))
    }

    /// The first `n` bytes of the free part of the filling block (`n` at most
    /// [`Ring::room_len`]), sliced once: each slicing is a call at `opt-level = "z"`, and
    /// this runs twice per body chunk.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn room_prefix(&mut self, n: usize) -> &mut [u8] {
        match self.filling() {
            Some(i) => {
                let start = i * self.block + self.filled;
                debug_assert!(self.filled + n <= self.block);
                &mut self.bytes[start..start + n]
            }
            None => &mut [][..n],
        }
    }

    /// Length of the free part of the filling block (0 when the ring is full).
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn room_len(&self) -> usize {
        if self.has_room() {
            self.block - self.filled
        } else {
            0
        }
    }

    /// True when the filling block can take a byte.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn has_room(&self) -> bool {
        self.filled < self.block && self.in_flight + self.sealed < self.count
    }

    /// `n` more bytes were copied into the free part of the filling block.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn commit(&mut self, n: usize) {
        self.filled += n;
        debug_assert!(self.filled <= self.block);
    }

    /// Bytes in the filling block.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn filled(&self) -> usize {
        self.filled
    }

    /// Writes issued and not yet acknowledged.
    #[inline(always)] // a few instructions, run for every body chunk
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Seals the filling block (a no-op when it is empty).
    pub(super) fn seal(&mut self, offset: u64, end: u64, generation: u32) {
        if self.filled == 0 {
            return;
        }
        // A block is filling whenever it holds bytes.
        let Some(i) = self.filling() else {
            return;
        };
        self.meta[i] = Sealed {
            offset,
            len: self.filled,
            end,
            generation,
        };
        self.sealed += 1;
        self.filled = 0;
    }

    /// The oldest sealed block, now in flight.
    pub(super) fn issue(&mut self) -> Option<Issue> {
        if self.sealed == 0 {
            return None;
        }
        let i = self.after_head(self.in_flight);
        self.sealed -= 1;
        self.in_flight += 1;
        let sealed = &self.meta[i];
        Some(Issue {
            at: i * self.block,
            offset: sealed.offset,
            len: sealed.len,
        })
    }

    /// The oldest write in flight is acknowledged: its block is free again.
    pub(super) fn acknowledge(&mut self) -> Option<Sealed> {
        if self.in_flight == 0 {
            return None;
        }
        let done = self.meta[self.head];
        self.in_flight -= 1;
        self.head = self.after_head(1);
        Some(done)
    }

    /// The download ended: what was staged or sealed is never written. Blocks in flight stay
    /// reserved until their acknowledgements come.
    pub(super) fn discard_unissued(&mut self) {
        self.sealed = 0;
        self.filled = 0;
    }

    /// Where a read of up to one block may land: the filling block, when nothing is staged,
    /// sealed or in flight (a re-read happens only between downloads' bytes).
    pub(super) fn idle_block(&self) -> Option<usize> {
        let idle = self.filled == 0 && self.sealed == 0 && self.in_flight == 0;
        idle.then(|| self.head * self.block)
    }

    /// The ring's bytes: what `Action::Write` lends, and where `Action::Read` lands.
    pub(super) fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The bytes of a block, as a read left them.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fill(ring: &mut Ring, byte: u8, n: usize) -> usize {
        let n = n.min(ring.room_len());
        ring.room_prefix(n).fill(byte);
        ring.commit(n);
        n
    }

    #[test]
    fn blocks_in_flight_are_not_refilled_until_acknowledged() {
        let mut ring = Ring::new(4, 2);
        assert_eq!(fill(&mut ring, 1, 4), 4);
        ring.seal(0, 4, 7);
        let first = ring.issue().unwrap();
        assert_eq!(fill(&mut ring, 2, 9), 4);
        ring.seal(4, 8, 7);
        let second = ring.issue().unwrap();
        // Both blocks are in flight: no room, and the lent bytes are intact.
        assert_eq!(fill(&mut ring, 3, 4), 0);
        assert_eq!(&ring.bytes()[first.at..first.at + 4], &[1; 4]);
        assert_eq!(&ring.bytes()[second.at..second.at + 4], &[2; 4]);
        // Acknowledged in order; the first block is the next to fill.
        assert_eq!(ring.acknowledge().map(|s| s.end), Some(4));
        assert_eq!(fill(&mut ring, 3, 2), 2);
        ring.seal(8, 10, 7);
        assert_eq!(ring.issue().map(|i| (i.at, i.len)), Some((first.at, 2)));
        assert_eq!(&ring.bytes()[second.at..second.at + 4], &[2; 4]);
        assert_eq!(ring.acknowledge().map(|s| s.end), Some(8));
        assert_eq!(ring.acknowledge().map(|s| s.end), Some(10));
        assert_eq!(ring.acknowledge(), None);
    }

    #[test]
    fn one_block_waits_for_every_write() {
        let mut ring = Ring::new(4, 1);
        ring.seal(0, 0, 0); // nothing staged: nothing to write
        assert_eq!(ring.issue(), None);
        fill(&mut ring, 1, 4);
        ring.seal(0, 4, 0);
        ring.issue().unwrap();
        assert_eq!(fill(&mut ring, 2, 4), 0);
        ring.acknowledge().unwrap();
        assert_eq!(fill(&mut ring, 2, 4), 4);
    }

    #[test]
    fn discarding_keeps_the_writes_in_flight_reserved() {
        let mut ring = Ring::new(4, 3);
        fill(&mut ring, 1, 4);
        ring.seal(0, 4, 1);
        ring.issue().unwrap();
        fill(&mut ring, 2, 4);
        ring.seal(4, 8, 1);
        fill(&mut ring, 3, 1);
        ring.discard_unissued();
        assert_eq!(ring.filled(), 0);
        assert_eq!(ring.in_flight(), 1);
        // Two blocks are free again, the one in flight is not.
        assert_eq!(fill(&mut ring, 4, 4), 4);
        ring.seal(0, 4, 2);
        assert_eq!(fill(&mut ring, 4, 4), 4);
        ring.seal(4, 8, 2);
        assert_eq!(fill(&mut ring, 4, 4), 0);
        assert_eq!(ring.acknowledge().map(|s| s.generation), Some(1));
        assert_eq!(fill(&mut ring, 4, 4), 4);
    }
}
