//! Time: the core takes a millisecond [`Instant`] as a parameter and never reads a clock, so
//! the driver needs one, plus a way to sleep until a deadline.

use core::cell::Cell;
use core::future::Future;

use embassy_futures::select::{select, Either};
use ota_core::Instant;

/// A monotonic millisecond clock and a timer.
///
/// With embassy: `now` is `embassy_time::Instant::now().as_millis()`, and `sleep_until` is
/// `embassy_time::Timer::at(embassy_time::Instant::from_millis(at.as_millis())).await`.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait Clock {
    /// Milliseconds since some fixed point (boot); never goes backwards.
    fn now(&self) -> Instant;

    /// Completes at `at` or later (at once if `at` has passed). Must be cancel-safe: the
    /// driver races it against I/O and drops it when the I/O wins.
    async fn sleep_until(&self, at: Instant);

    /// The wall time in Unix seconds, once the firmware knows it (SNTP, an RTC, the
    /// platform's NTP topic); `None` before. TLS checks certificate dates against it, and
    /// skips that check while it is `None`. The default never knows the time.
    fn unix_time(&self) -> Option<u64> {
        None
    }

    /// The platform's time arrived (docs/protocol.md §13): the Unix time was `unix_ms` at
    /// `at` (a reading of [`Clock::now`]). A clock that keeps the wall time (see
    /// [`SyncedClock`]) takes it; the default ignores it (a firmware with an RTC or SNTP).
    fn set_unix_time(&self, unix_ms: u64, at: Instant) {
        let _ = (unix_ms, at);
    }
}

impl<C: Clock> Clock for &C {
    fn now(&self) -> Instant {
        C::now(self)
    }

    async fn sleep_until(&self, at: Instant) {
        C::sleep_until(self, at).await
    }

    fn unix_time(&self) -> Option<u64> {
        C::unix_time(self)
    }

    fn set_unix_time(&self, unix_ms: u64, at: Instant) {
        C::set_unix_time(self, unix_ms, at)
    }
}

/// A monotonic [`Clock`] that also keeps the wall time once told it: the driver sets it from
/// the platform's time reply, after which [`Clock::unix_time`] is known and TLS checks
/// certificate dates. Until then `unix_time` is `None` (or what `inner` says).
pub struct SyncedClock<C> {
    inner: C,
    /// Unix milliseconds at the inner clock's zero.
    epoch_ms: Cell<Option<u64>>,
}

impl<C: Clock> SyncedClock<C> {
    /// Wraps `inner`; the wall time is unknown until the first time reply.
    pub fn new(inner: C) -> Self {
        SyncedClock {
            inner,
            epoch_ms: Cell::new(None),
        }
    }
}

impl<C: Clock> Clock for SyncedClock<C> {
    fn now(&self) -> Instant {
        self.inner.now()
    }

    async fn sleep_until(&self, at: Instant) {
        self.inner.sleep_until(at).await
    }

    fn unix_time(&self) -> Option<u64> {
        match self.epoch_ms.get() {
            Some(epoch) => Some(epoch.saturating_add(self.inner.now().as_millis()) / 1000),
            None => self.inner.unix_time(),
        }
    }

    fn set_unix_time(&self, unix_ms: u64, at: Instant) {
        self.epoch_ms.set(unix_ms.checked_sub(at.as_millis()));
    }
}

/// Runs `work` until it completes or `deadline` passes; `None` on timeout. `work` is
/// dropped on timeout, so it must be cancel-safe or abandoned afterwards.
pub async fn until<C: Clock, F: Future>(
    clock: &C,
    deadline: Option<Instant>,
    work: F,
) -> Option<F::Output> {
    let Some(deadline) = deadline else {
        return Some(work.await);
    };
    match select(work, clock.sleep_until(deadline)).await {
        Either::First(out) => Some(out),
        Either::Second(()) => None,
    }
}

/// The earlier of two optional deadlines.
pub fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock that stands still at a set reading.
    struct Fixed(core::cell::Cell<u64>);

    impl Clock for Fixed {
        fn now(&self) -> Instant {
            Instant::from_millis(self.0.get())
        }

        async fn sleep_until(&self, _at: Instant) {}
    }

    #[test]
    fn a_synced_clock_keeps_the_wall_time_it_was_told() {
        let clock = SyncedClock::new(Fixed(Cell::new(5_000)));
        assert_eq!(clock.unix_time(), None);
        clock.set_unix_time(1_700_000_000_500, Instant::from_millis(5_000));
        assert_eq!(clock.unix_time(), Some(1_700_000_000));
        clock.inner.0.set(7_600);
        assert_eq!(clock.unix_time(), Some(1_700_000_003));
        // A wall time before the monotonic zero cannot be kept.
        clock.set_unix_time(10, Instant::from_millis(5_000));
        assert_eq!(clock.unix_time(), None);
    }

    #[test]
    fn earliest_prefers_the_sooner_deadline() {
        let (a, b) = (Instant::from_millis(5), Instant::from_millis(9));
        assert_eq!(earliest(Some(a), Some(b)), Some(a));
        assert_eq!(earliest(None, Some(b)), Some(b));
        assert_eq!(earliest(Some(a), None), Some(a));
        assert_eq!(earliest(None, None), None);
    }
}
