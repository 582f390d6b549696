//! The cloud's vocabulary: devices, packages, jobs and per-device tasks (docs/protocol.md §9), as
//! the library API and the status endpoint show them.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

/// The module name meaning "the whole firmware".
pub const DEFAULT_MODULE: &str = "default";

/// A device's identity on the platform.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct DeviceId {
    /// ProductKey.
    pub product_key: String,
    /// DeviceName.
    pub device_name: String,
}

impl DeviceId {
    /// Builds an id from its two parts.
    pub fn new(product_key: impl Into<String>, device_name: impl Into<String>) -> DeviceId {
        DeviceId {
            product_key: product_key.into(),
            device_name: device_name.into(),
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.product_key, self.device_name)
    }
}

impl AsRef<DeviceId> for DeviceId {
    fn as_ref(&self) -> &DeviceId {
        self
    }
}

/// A registered device with the secret it logs in with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceInfo {
    /// ProductKey and DeviceName.
    #[serde(flatten)]
    pub id: DeviceId,
    /// DeviceSecret, the HMAC key of the MQTT login.
    pub device_secret: String,
}

impl DeviceInfo {
    /// The MQTT login a current SDK would send (hmacsha256, securemode=3).
    pub fn credentials(&self) -> crate::Credentials {
        crate::Credentials::new(&self.id, &self.device_secret)
    }
}

impl AsRef<DeviceId> for DeviceInfo {
    fn as_ref(&self) -> &DeviceId {
        &self.id
    }
}

/// Handle of an uploaded package.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PackageId(pub u32);

/// Handle of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct JobId(pub u32);

/// Verification jobs prove a package on chosen devices; batch jobs roll it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JobKind {
    /// Runs on the listed devices; its full success marks the package verified.
    Verification,
    /// Static or dynamic rollout.
    Batch,
}

/// Automatic retry of failed devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RetryPolicy {
    /// How many times a failed task is re-pushed.
    pub count: u32,
    /// Delay between the failure and the re-push.
    pub interval: Duration,
}

/// What a job does and to whom.
#[derive(Debug, Clone, Serialize)]
pub struct JobSpec {
    /// The package to install.
    pub package: PackageId,
    /// Verification or batch.
    pub kind: JobKind,
    /// Also take devices that connect or report a matching version later.
    pub dynamic: bool,
    /// The devices in scope; `None` means every registered device.
    pub devices: Option<Vec<DeviceId>>,
    /// Only devices running one of these versions; empty means any version.
    pub source_versions: Vec<String>,
    /// A task not finished this long after its first progress report fails.
    pub timeout: Option<Duration>,
    /// Automatic re-push of failed devices.
    pub retry: Option<RetryPolicy>,
    /// Tasks wait in CONFIRM until [`crate::Sim::confirm_job`].
    pub needs_confirm: bool,
}

impl JobSpec {
    /// A static batch job over every device, no filter, timeout or retry.
    pub fn batch(package: PackageId) -> JobSpec {
        JobSpec {
            package,
            kind: JobKind::Batch,
            dynamic: false,
            devices: None,
            source_versions: Vec::new(),
            timeout: None,
            retry: None,
            needs_confirm: false,
        }
    }

    /// A verification job on the given devices.
    pub fn verification<D: AsRef<DeviceId>>(package: PackageId, devices: &[D]) -> JobSpec {
        JobSpec {
            kind: JobKind::Verification,
            ..JobSpec::batch(package).devices(devices)
        }
    }

    /// Makes the job dynamic.
    pub fn dynamic(mut self) -> JobSpec {
        self.dynamic = true;
        self
    }

    /// Restricts the job to these devices.
    pub fn devices<D: AsRef<DeviceId>>(mut self, devices: &[D]) -> JobSpec {
        self.devices = Some(devices.iter().map(|d| d.as_ref().clone()).collect());
        self
    }

    /// Restricts the job to devices running one of these versions.
    pub fn source_versions(mut self, versions: &[&str]) -> JobSpec {
        self.source_versions = versions.iter().map(|v| (*v).to_owned()).collect();
        self
    }

    /// Sets the timeout counted from the first progress report.
    pub fn timeout(mut self, timeout: Duration) -> JobSpec {
        self.timeout = Some(timeout);
        self
    }

    /// Re-pushes failed tasks `count` times, `interval` after each failure.
    pub fn retry(mut self, count: u32, interval: Duration) -> JobSpec {
        self.retry = Some(RetryPolicy { count, interval });
        self
    }

    /// Makes tasks wait for an operator's confirmation.
    pub fn needs_confirm(mut self) -> JobSpec {
        self.needs_confirm = true;
        self
    }
}

/// Per-device task state (docs/protocol.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskState {
    /// Waiting for an operator.
    Confirm,
    /// Created, not pushed yet (device offline or not yet reported).
    Queued,
    /// Pushed to the device.
    Notified,
    /// The device reported progress.
    InProgress,
    /// The device reported the target version.
    Succeeded,
    /// Negative step, foreign version or timeout.
    Failed,
    /// Canceled by an operator.
    Canceled,
}

impl TaskState {
    /// Still able to change without an operator.
    pub fn is_active(self) -> bool {
        matches!(
            self,
            TaskState::Confirm | TaskState::Queued | TaskState::Notified | TaskState::InProgress
        )
    }
}

/// A snapshot of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TaskView {
    /// The job it belongs to.
    pub job: JobId,
    /// The device.
    pub device: DeviceId,
    /// The package's module.
    pub module: String,
    /// Current state.
    pub state: TaskState,
    /// The version the device ran when the task was created (or first reported).
    pub source_version: Option<String>,
    /// The package's version.
    pub target_version: String,
    /// Last non-negative progress step.
    pub last_step: Option<i64>,
    /// Why it failed or was canceled.
    pub reason: Option<String>,
    /// Pushes and firmware/get replies that carried this task.
    pub pushes: u32,
    /// Automatic retries used.
    pub retries_used: u32,
    /// A retry is scheduled.
    pub retry_pending: bool,
}

/// One progress message from a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgressRecord {
    /// The step as a number.
    pub step: i64,
    /// `desc`, if any.
    pub desc: Option<String>,
    /// The module it was about.
    pub module: String,
}
