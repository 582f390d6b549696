//! Lending one pair of TLS record buffers to successive sessions.
//!
//! embedded-tls borrows its record buffers (`&'a mut [u8]`) for the whole life of a session
//! and never hands them back, while a reconnecting MQTT client keeps its session next to a
//! shared reference to the connector for the same `'a`. Safe Rust cannot lend the same
//! `&'a mut` buffers to the next session once the previous one is dropped; the safe
//! alternatives cost a second pair of record buffers (about 19 KiB) and a copy of every byte
//! (a pump task between the driver and the session), or a heap allocation per connection.
//! So this module re-borrows the buffers from raw pointers, and a flag guarantees that at
//! most one [`Loan`] exists at a time: the flag is cleared only when the loan is dropped
//! (after the session that used the buffers, see [`super::TlsStream`]'s field order), and a
//! loan that is leaked keeps the buffers lent forever instead of aliasing them.
#![allow(unsafe_code)]

use core::cell::Cell;
use core::marker::PhantomData;
use core::ptr::NonNull;

/// Owns (for `'a`) a receive and a transmit buffer, and lends them one session at a time.
pub(crate) struct Lender<'a> {
    rx: NonNull<[u8]>,
    tx: NonNull<[u8]>,
    lent: Cell<bool>,
    /// The buffers are exclusively borrowed for `'a`; `NonNull` and `Cell` keep the lender
    /// `!Send` and `!Sync`, so the flag cannot be raced.
    _buffers: PhantomData<&'a mut [u8]>,
}

/// Proof that the buffers are lent; dropping it gives them back.
pub(crate) struct Loan<'l> {
    lent: &'l Cell<bool>,
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.lent.set(false);
    }
}

impl<'a> Lender<'a> {
    pub(crate) fn new(rx: &'a mut [u8], tx: &'a mut [u8]) -> Self {
        Lender {
            rx: NonNull::from(rx),
            tx: NonNull::from(tx),
            lent: Cell::new(false),
            _buffers: PhantomData,
        }
    }

    /// The buffers, unless they are lent already. They must not outlive the loan: the caller
    /// keeps both in one value that drops the buffers' user before the loan.
    // Mutable slices from `&self` are the point: the `lent` flag makes them exclusive.
    #[allow(clippy::mut_from_ref)]
    pub(crate) fn lend(&self) -> Option<(Loan<'_>, &mut [u8], &mut [u8])> {
        if self.lent.replace(true) {
            return None;
        }
        // SAFETY: the pointers come from `&'a mut` borrows held for `'a`, which outlives
        // `&self`. `lent` was false, so no other slice derived from them is alive: the last
        // loan was dropped after its user (or never existed). The returned slices borrow
        // `self`, so the lender cannot be dropped or moved while they are used.
        let (rx, tx) = unsafe { (&mut *self.rx.as_ptr(), &mut *self.tx.as_ptr()) };
        Some((Loan { lent: &self.lent }, rx, tx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lends_one_pair_at_a_time_and_again_after_the_loan_ends() {
        let (mut rx, mut tx) = ([0u8; 8], [0u8; 4]);
        let lender = Lender::new(&mut rx, &mut tx);
        let (loan, rx, tx) = lender.lend().expect("free at first");
        rx[0] = 1;
        tx[0] = 2;
        assert!(lender.lend().is_none(), "lent while the loan lives");
        drop(loan);
        let (_loan, rx, tx) = lender.lend().expect("free again");
        assert_eq!((rx[0], tx[0], rx.len(), tx.len()), (1, 2, 8, 4));
    }

    #[test]
    fn a_leaked_loan_keeps_the_buffers_lent() {
        let (mut rx, mut tx) = ([0u8; 8], [0u8; 4]);
        let lender = Lender::new(&mut rx, &mut tx);
        core::mem::forget(lender.lend());
        assert!(lender.lend().is_none());
    }
}
