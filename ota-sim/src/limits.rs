//! Process limits: every device session costs the simulator three file descriptors (the
//! device's socket, the front's link to the broker, the broker's end of it), so thousands of
//! devices need more than a shell's usual soft limit of 1,024.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};

/// Raises the soft limit of open files to `wanted` (or as far as the hard limit allows; a
/// privileged process raises the hard limit too). Returns the soft limit in force.
pub fn raise_open_files(wanted: u64) -> Option<u64> {
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= wanted {
        return Some(current);
    }
    let both = Rlimit {
        current: Some(wanted),
        maximum: Some(wanted.max(limit.maximum.unwrap_or(u64::MAX))),
    };
    if setrlimit(Resource::Nofile, both).is_err() {
        let soft = Rlimit {
            current: Some(wanted.min(limit.maximum.unwrap_or(u64::MAX))),
            maximum: limit.maximum,
        };
        let _ = setrlimit(Resource::Nofile, soft);
    }
    let now = getrlimit(Resource::Nofile).current;
    if now.is_some_and(|n| n < wanted) {
        tracing::warn!(
            "open files limited to {} (wanted {wanted}): fewer device sessions fit",
            now.unwrap_or(0)
        );
    }
    now
}

/// Descriptors kept for everything but the fronts' sessions (the firmware server's plain
/// connections, files, the broker's own).
const RESERVED: u64 = 1024;

/// How many connections the fronts may hold at once without running the process out of
/// descriptors (three each). Past it a new connection is closed at once: out of descriptors,
/// rumqttd's accept loop would spin and log without end.
pub(crate) fn session_budget() -> usize {
    let soft = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let budget = soft.saturating_sub(RESERVED) / 3;
    usize::try_from(budget).unwrap_or(usize::MAX).max(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_never_goes_down() {
        let before = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        let after = raise_open_files(64).unwrap_or(u64::MAX);
        assert!(after >= before.min(64));
        assert_eq!(
            getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX),
            before
        );
    }
}
