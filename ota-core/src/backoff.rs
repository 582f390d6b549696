//! Jittered exponential back-off from a seeded generator (the core has no randomness of its own).

use core::time::Duration;

/// Back-off delays: `base * 2^attempt`, capped at `max`, with "equal jitter" (a uniform
/// draw in the upper half) so that a fleet of devices does not retry in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    state: u64,
}

impl Backoff {
    /// A generator seeded with `seed` (give each device a different one).
    pub fn new(seed: u64) -> Self {
        Backoff { state: seed }
    }

    /// The delay before retry number `attempt` (0 for the first retry) when delays start
    /// at `base` and never exceed `max`. In whole milliseconds, the agent's clock unit, and in
    /// 64-bit arithmetic: `Duration`'s multiplication and `as_millis` (`u128`) would cost an
    /// MCU a 128-bit division routine for sub-millisecond precision no deadline keeps.
    pub fn delay(&mut self, base: Duration, max: Duration, attempt: u32) -> Duration {
        let base_ms = millis(base);
        let ceiling = base_ms
            .saturating_mul(1u64 << attempt.min(20))
            .min(millis(max).max(base_ms));
        let half = ceiling / 2;
        Duration::from_millis(half + self.next() % (ceiling - half + 1))
    }

    /// splitmix64: tiny, and good enough to spread retries.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `span` in whole milliseconds, saturating.
fn millis(span: Duration) -> u64 {
    (crate::time::Instant::ZERO + span).as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_stay_within_bounds_and_differ_between_seeds() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        let mut a = Backoff::new(1);
        let mut b = Backoff::new(2);
        let mut differ = false;
        for attempt in 0..40 {
            let ceiling = base.saturating_mul(1 << attempt.min(20)).min(max);
            let d = a.delay(base, max, attempt);
            assert!(d >= ceiling / 2 && d <= ceiling, "attempt {attempt}: {d:?}");
            differ |= d != b.delay(base, max, attempt);
        }
        assert!(differ);
    }
}
