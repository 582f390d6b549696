//! A RAM NOR flash for unit tests: writes only clear bits, erase sets `0xFF`, alignment is
//! checked, and an operation can be made to fail half-done (a torn write or erase).

use std::vec;
use std::vec::Vec;

use embedded_storage_async::nor_flash::{
    ErrorType, NorFlash, NorFlashError, NorFlashErrorKind, ReadNorFlash,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestFlashError(pub NorFlashErrorKind);

impl NorFlashError for TestFlashError {
    fn kind(&self) -> NorFlashErrorKind {
        self.0
    }
}

pub struct RamFlash<const W: usize, const E: usize> {
    pub bytes: Vec<u8>,
    /// Operations (erase or write) left before one is torn and fails.
    pub tear_after: Option<usize>,
    pub torn: usize,
    pub writes: usize,
}

impl<const W: usize, const E: usize> RamFlash<W, E> {
    pub fn new(size: usize) -> Self {
        RamFlash {
            bytes: vec![0xFF; size],
            tear_after: None,
            torn: 0,
            writes: 0,
        }
    }

    fn tear(&mut self) -> bool {
        match &mut self.tear_after {
            Some(0) => {
                self.tear_after = None;
                self.torn += 1;
                true
            }
            Some(n) => {
                *n -= 1;
                false
            }
            None => false,
        }
    }
}

impl<const W: usize, const E: usize> ErrorType for RamFlash<W, E> {
    type Error = TestFlashError;
}

impl<const W: usize, const E: usize> ReadNorFlash for RamFlash<W, E> {
    const READ_SIZE: usize = 1;

    async fn read(&mut self, offset: u32, bytes: &mut [u8]) -> Result<(), Self::Error> {
        let at = offset as usize;
        let src = self
            .bytes
            .get(at..at + bytes.len())
            .ok_or(TestFlashError(NorFlashErrorKind::OutOfBounds))?;
        bytes.copy_from_slice(src);
        Ok(())
    }

    fn capacity(&self) -> usize {
        self.bytes.len()
    }
}

impl<const W: usize, const E: usize> NorFlash for RamFlash<W, E> {
    const WRITE_SIZE: usize = W;
    const ERASE_SIZE: usize = E;

    async fn erase(&mut self, from: u32, to: u32) -> Result<(), Self::Error> {
        let (from, to) = (from as usize, to as usize);
        if from % E != 0 || to % E != 0 || from > to {
            return Err(TestFlashError(NorFlashErrorKind::NotAligned));
        }
        if to > self.bytes.len() {
            return Err(TestFlashError(NorFlashErrorKind::OutOfBounds));
        }
        if self.tear() {
            let mid = from + (to - from) / 2;
            self.bytes[from..mid].fill(0xFF);
            return Err(TestFlashError(NorFlashErrorKind::Other));
        }
        self.bytes[from..to].fill(0xFF);
        Ok(())
    }

    async fn write(&mut self, offset: u32, bytes: &[u8]) -> Result<(), Self::Error> {
        let at = offset as usize;
        if !at.is_multiple_of(W) || !bytes.len().is_multiple_of(W) {
            return Err(TestFlashError(NorFlashErrorKind::NotAligned));
        }
        if at + bytes.len() > self.bytes.len() {
            return Err(TestFlashError(NorFlashErrorKind::OutOfBounds));
        }
        self.writes += 1;
        let n = if self.tear() {
            bytes.len() / 2
        } else {
            bytes.len()
        };
        for (cell, byte) in self.bytes[at..at + n].iter_mut().zip(bytes) {
            *cell &= *byte; // NOR: bits only go from 1 to 0
        }
        if n < bytes.len() {
            return Err(TestFlashError(NorFlashErrorKind::Other));
        }
        Ok(())
    }
}

/// Runs a future that never waits (RAM flash) to completion.
pub fn block_on<F: core::future::Future>(future: F) -> F::Output {
    let mut future = core::pin::pin!(future);
    let mut cx = core::task::Context::from_waker(core::task::Waker::noop());
    loop {
        if let core::task::Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
    }
}
