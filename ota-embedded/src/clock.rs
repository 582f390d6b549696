//! Time: the core takes a millisecond [`Instant`] as a parameter and never reads a clock, so
//! the driver needs one, plus a way to sleep until a deadline.

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

    #[test]
    fn earliest_prefers_the_sooner_deadline() {
        let (a, b) = (Instant::from_millis(5), Instant::from_millis(9));
        assert_eq!(earliest(Some(a), Some(b)), Some(a));
        assert_eq!(earliest(None, Some(b)), Some(b));
        assert_eq!(earliest(Some(a), None), Some(a));
        assert_eq!(earliest(None, None), None);
    }
}
