//! The live view: one [`StateChange`] per change of a task's state or progress step, sent to
//! whoever watches ([`crate::Sim::watch_states`]); `serve` and `demo` print them as lines.

use crate::model::{DeviceId, JobId, TaskState, TaskView};
use std::fmt;
use std::sync::mpsc::Sender;
use std::time::{SystemTime, UNIX_EPOCH};

/// A task moved: a new state, or a new progress step in the same state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// When the simulator saw it.
    pub at: SystemTime,
    /// The job of the task.
    pub job: JobId,
    /// The device.
    pub device: DeviceId,
    /// The task's state now.
    pub state: TaskState,
    /// The last progress step the device reported (1..=100), if any.
    pub step: Option<i64>,
    /// Why the task failed or was canceled.
    pub reason: Option<String>,
}

/// `12:03:04.567Z a1OtaSimPK1/dev0001 job 0 IN_PROGRESS step 40`, UTC.
impl fmt::Display for StateChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self
            .at
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let day_ms = ms % 86_400_000;
        let (h, m, s) = (day_ms / 3_600_000, day_ms / 60_000 % 60, day_ms / 1000 % 60);
        let state = serde_json::to_value(self.state).unwrap_or_default();
        write!(
            f,
            "{h:02}:{m:02}:{s:02}.{:03}Z {} job {} {} step ",
            day_ms % 1000,
            self.device,
            self.job.0,
            state.as_str().unwrap_or("?"),
        )?;
        match self.step {
            Some(step) => write!(f, "{step}")?,
            None => f.write_str("-")?,
        }
        match &self.reason {
            Some(r) if !self.state.is_active() => write!(f, " ({r})"),
            _ => Ok(()),
        }
    }
}

/// The watchers of one simulator; a watcher that hung up is forgotten.
#[derive(Default)]
pub(crate) struct LiveFeed {
    watchers: Vec<Sender<StateChange>>,
}

impl LiveFeed {
    pub(crate) fn watch(&mut self, to: Sender<StateChange>) {
        self.watchers.push(to);
    }

    /// Tells every watcher where the task stands now.
    pub(crate) fn send(&mut self, view: &TaskView) {
        if self.watchers.is_empty() {
            return;
        }
        let change = StateChange {
            at: SystemTime::now(),
            job: view.job,
            device: view.device.clone(),
            state: view.state,
            step: view.last_step,
            reason: view.reason.clone(),
        };
        self.watchers.retain(|w| w.send(change.clone()).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_change_is_one_line_with_time_device_state_and_step() {
        let mut change = StateChange {
            at: UNIX_EPOCH + Duration::from_millis(86_400_000 * 3 + 3_723_456),
            job: JobId(2),
            device: DeviceId::new("pk", "dev0001"),
            state: TaskState::InProgress,
            step: Some(40),
            reason: None,
        };
        assert_eq!(
            change.to_string(),
            "01:02:03.456Z pk/dev0001 job 2 IN_PROGRESS step 40"
        );
        change.state = TaskState::Failed;
        change.reason = Some("progress step -3: md5".into());
        change.step = None;
        assert_eq!(
            change.to_string(),
            "01:02:03.456Z pk/dev0001 job 2 FAILED step - (progress step -3: md5)"
        );
    }
}
