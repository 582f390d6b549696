//! The core's own notion of time: milliseconds on a monotonic clock the adapter owns.

use core::time::Duration;

/// A point in time, in milliseconds since an arbitrary origin chosen by the adapter.
///
/// The core never reads a clock: every input carries `now`. If `now` goes backwards the
/// agent keeps the latest value it has seen, so deadlines never move into the past.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Instant(u64);

impl Instant {
    /// The origin.
    pub const ZERO: Instant = Instant(0);

    /// An instant `ms` milliseconds after the origin.
    pub const fn from_millis(ms: u64) -> Self {
        Instant(ms)
    }

    /// Milliseconds since the origin.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + span`, saturating instead of overflowing. In 64-bit arithmetic, not through
    /// `Duration::as_millis`'s `u128`: deadlines are computed on the body path of 32-bit MCUs.
    /// Out of line: deadlines are computed in many places, and the conversion would be
    /// copied into each (~0.7 KB of flash).
    #[inline(never)]
    pub fn saturating_add(self, span: Duration) -> Self {
        let ms = span
            .as_secs()
            .saturating_mul(1000)
            .saturating_add(u64::from(span.subsec_millis()));
        Instant(self.0.saturating_add(ms))
    }

    /// The span from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Instant) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, span: Duration) -> Instant {
        self.saturating_add(span)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let t = Instant::from_millis(u64::MAX - 1);
        assert_eq!((t + Duration::from_secs(1)).as_millis(), u64::MAX);
        assert_eq!((Instant::ZERO + Duration::MAX).as_millis(), u64::MAX);
        assert_eq!(
            (Instant::from_millis(5) + Duration::from_micros(2_999_999)).as_millis(),
            3_004
        );
        assert_eq!(
            Instant::from_millis(5).saturating_since(Instant::from_millis(9)),
            Duration::ZERO
        );
        assert_eq!(
            Instant::from_millis(9).saturating_since(Instant::from_millis(5)),
            Duration::from_millis(4)
        );
    }
}
