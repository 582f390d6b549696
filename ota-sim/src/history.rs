//! Bounded records: what the simulator keeps about devices must not grow with their traffic
//! (a device looping against a 403 sends thousands of reports a second), and log lines about
//! one device are coalesced under such a storm.

use crate::DeviceId;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// Firmware answers and block answers kept for tests and `/status`.
pub(crate) const RECORDS_KEPT: usize = 20_000;

/// The last `cap` items, and how many older ones were let go.
#[derive(Debug, Clone)]
pub(crate) struct History<T> {
    items: VecDeque<T>,
    cap: usize,
    dropped: u64,
}

impl<T> History<T> {
    pub(crate) fn new(cap: usize) -> History<T> {
        History {
            items: VecDeque::new(),
            cap: cap.max(1),
            dropped: 0,
        }
    }

    pub(crate) fn push(&mut self, item: T) {
        if self.items.len() == self.cap {
            self.items.pop_front();
            self.dropped += 1;
        }
        self.items.push_back(item);
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter()
    }

    /// How many items were let go to make room.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Lines of one kind about one device allowed per window before the rest are only counted.
const BURST: u32 = 10;
/// The window.
const WINDOW: Duration = Duration::from_secs(1);

struct Window {
    started: Instant,
    lines: u32,
    held: u64,
}

/// Coalesces log lines per device and kind: the first [`BURST`] of a second are logged, the
/// rest become one line, e.g. "412 more progress reports from pk/dev0001 in the last second".
#[derive(Default)]
pub(crate) struct LogLimiter {
    windows: BTreeMap<(DeviceId, &'static str), Window>,
}

impl LogLimiter {
    /// Whether a line of `kind` about `device` may be logged now (else it is counted).
    pub(crate) fn admit(&mut self, device: &DeviceId, kind: &'static str, now: Instant) -> bool {
        self.flush(now);
        let window = self
            .windows
            .entry((device.clone(), kind))
            .or_insert(Window {
                started: now,
                lines: 0,
                held: 0,
            });
        window.lines += 1;
        if window.lines <= BURST {
            return true;
        }
        window.held += 1;
        false
    }

    /// Logs the count of every window that is over, and forgets it.
    pub(crate) fn flush(&mut self, now: Instant) {
        self.windows.retain(|(device, kind), w| {
            let over = now.saturating_duration_since(w.started) >= WINDOW;
            if over && w.held > 0 {
                tracing::info!("{} more {kind} from {device} in the last second", w.held);
            }
            !over
        });
    }

    /// The earliest moment a held count is due.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.windows
            .values()
            .filter(|w| w.held > 0)
            .map(|w| w.started + WINDOW)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_keeps_the_last_items_and_counts_the_rest() {
        let mut h = History::new(3);
        for i in 0..10 {
            h.push(i);
        }
        assert_eq!(h.iter().copied().collect::<Vec<_>>(), [7, 8, 9]);
        assert_eq!(h.dropped(), 7);
    }

    #[test]
    fn a_storm_is_logged_as_a_burst_and_a_count() {
        let mut log = LogLimiter::default();
        let (dev, t0) = (DeviceId::new("pk", "d"), Instant::now());
        let admitted = (0..500)
            .filter(|_| log.admit(&dev, "progress reports", t0))
            .count();
        assert_eq!(admitted, BURST as usize);
        assert_eq!(log.next_deadline(), Some(t0 + WINDOW));
        let other = DeviceId::new("pk", "e");
        assert!(log.admit(&other, "progress reports", t0));
        log.flush(t0 + WINDOW);
        assert!(log.windows.is_empty());
        assert!(log.admit(&dev, "progress reports", t0 + WINDOW));
    }
}
