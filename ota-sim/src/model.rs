//! The cloud's vocabulary: devices, packages, jobs and per-device tasks (PROTOCOL.md §9), as
//! the library API and the status endpoint show them.

use serde::Serialize;
use std::fmt;
use std::time::Duration;

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

/// Digest a package is announced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SignMethod {
    /// MD5: `signMethod` `Md5`, and the legacy `md5` field is sent too.
    Md5,
    /// SHA-256: `signMethod` `SHA256`.
    Sha256,
}

/// How devices fetch a package (PROTOCOL.md §5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadProtocol {
    /// A signed HTTP URL per file (`url`, or `fileUrl` in a multi-file task).
    #[default]
    Http,
    /// Blocks over MQTT: `"dProtocol":"mqtt"` with a `streamId` instead of URLs.
    Mqtt,
}

/// Most files one package may hold (PROTOCOL.md §8).
pub const MAX_FILES: usize = 20;

/// Largest image the MQTT channel carries (PROTOCOL.md §8).
pub const MAX_MQTT_FILE_SIZE: usize = 16 * 1024 * 1024;

/// Longest `extData`, as compact JSON (PROTOCOL.md §8).
pub const MAX_EXT_DATA_LEN: usize = 4096;

/// A firmware package to upload.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// Target version, 1–64 chars of `[A-Za-z0-9._-]`.
    pub version: String,
    /// Module, `default` for the whole firmware.
    pub module: String,
    /// The image of a single-file package (empty for a multi-file one).
    pub data: Vec<u8>,
    /// The named files of a multi-file package (empty for a single-file one). Pushes then
    /// carry `data.files` instead of the top-level `size`/`url`/`md5`/`sign`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Digest announced in pushes.
    pub sign_method: SignMethod,
    /// A verification job must succeed before batch jobs may use the package.
    pub needs_verification: bool,
    /// HTTP URLs or the MQTT channel.
    pub download_protocol: DownloadProtocol,
    /// `extData`, a JSON object passed to devices as it is.
    pub ext_data: Option<serde_json::Value>,
    /// `isDiff: 1`: the image is a delta against the running version.
    pub is_diff: bool,
    /// `digestsign`, the package signature for secure boot, passed as it is.
    pub digestsign: Option<String>,
}

impl PackageSpec {
    /// A default-module, MD5 package with one image, served over HTTP, that needs no
    /// verification.
    pub fn new(version: impl Into<String>, data: Vec<u8>) -> PackageSpec {
        PackageSpec {
            version: version.into(),
            module: crate::messages::DEFAULT_MODULE.to_owned(),
            data,
            files: Vec::new(),
            sign_method: SignMethod::Md5,
            needs_verification: false,
            download_protocol: DownloadProtocol::Http,
            ext_data: None,
            is_diff: false,
            digestsign: None,
        }
    }

    /// A multi-file package (1–20 files with distinct names), otherwise like [`PackageSpec::new`].
    pub fn files<N: Into<String>>(
        version: impl Into<String>,
        files: impl IntoIterator<Item = (N, Vec<u8>)>,
    ) -> PackageSpec {
        PackageSpec {
            files: files.into_iter().map(|(n, d)| (n.into(), d)).collect(),
            ..PackageSpec::new(version, Vec::new())
        }
    }

    /// Sets the module.
    pub fn module(mut self, module: impl Into<String>) -> PackageSpec {
        self.module = module.into();
        self
    }

    /// Sets the digest method.
    pub fn sign_method(mut self, method: SignMethod) -> PackageSpec {
        self.sign_method = method;
        self
    }

    /// Sets how devices fetch the package.
    pub fn download_protocol(mut self, protocol: DownloadProtocol) -> PackageSpec {
        self.download_protocol = protocol;
        self
    }

    /// Offers the package over the MQTT channel.
    pub fn mqtt(self) -> PackageSpec {
        self.download_protocol(DownloadProtocol::Mqtt)
    }

    /// Sets `extData` (must be a JSON object; keeps a `_package_udi` set before).
    pub fn ext_data(mut self, ext: serde_json::Value) -> PackageSpec {
        let udi = self.take_udi();
        self.ext_data = Some(ext);
        if let Some(udi) = udi {
            self = self.package_udi(udi);
        }
        self
    }

    /// Sets `extData._package_udi`, a string that itself holds JSON.
    pub fn package_udi(mut self, udi: impl Into<String>) -> PackageSpec {
        let mut ext = match self.ext_data.take() {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        ext.insert("_package_udi".into(), serde_json::Value::String(udi.into()));
        self.ext_data = Some(serde_json::Value::Object(ext));
        self
    }

    fn take_udi(&mut self) -> Option<String> {
        match self
            .ext_data
            .as_mut()?
            .as_object_mut()?
            .remove("_package_udi")?
        {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Marks the image as a delta (`isDiff: 1`).
    pub fn diff(mut self) -> PackageSpec {
        self.is_diff = true;
        self
    }

    /// Sets `digestsign`.
    pub fn digestsign(mut self, sign: impl Into<String>) -> PackageSpec {
        self.digestsign = Some(sign.into());
        self
    }

    /// Whether pushes use the multi-file variant.
    pub fn is_multi_file(&self) -> bool {
        !self.files.is_empty()
    }

    /// Checks the platform's rules: version and module 1–64 chars of `[A-Za-z0-9._-]`; one
    /// non-empty image, or 1–20 non-empty files with distinct names that fit in a URL path
    /// segment; images for the MQTT channel at most 16 MB; `extData` an object of at most
    /// 4096 chars.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::{EmptyPackage, InvalidName, InvalidPackage};
        let valid = |s: &str| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !valid(&self.version) {
            return Err(InvalidName(self.version.clone()));
        }
        if !valid(&self.module) {
            return Err(InvalidName(self.module.clone()));
        }
        let images: Vec<&[u8]> = if self.is_multi_file() {
            if !self.data.is_empty() {
                return Err(InvalidPackage("both data and files".into()));
            }
            if self.files.len() > MAX_FILES {
                return Err(InvalidPackage(format!("more than {MAX_FILES} files")));
            }
            for (i, (name, _)) in self.files.iter().enumerate() {
                let bad = name.is_empty()
                    || name.len() > 255
                    || name == "."
                    || name == ".."
                    || name.chars().any(|c| c.is_control() || "/\\?#%".contains(c));
                if bad || self.files[..i].iter().any(|(n, _)| n == name) {
                    return Err(InvalidName(name.clone()));
                }
            }
            self.files.iter().map(|(_, d)| d.as_slice()).collect()
        } else {
            vec![self.data.as_slice()]
        };
        if images.iter().any(|d| d.is_empty()) {
            return Err(EmptyPackage);
        }
        if self.download_protocol == DownloadProtocol::Mqtt
            && images.iter().any(|d| d.len() > MAX_MQTT_FILE_SIZE)
        {
            return Err(InvalidPackage(
                "image too large for the MQTT channel".into(),
            ));
        }
        if let Some(ext) = &self.ext_data {
            if !ext.is_object() || ext.to_string().len() > MAX_EXT_DATA_LEN {
                return Err(InvalidPackage(format!(
                    "extData must be an object of at most {MAX_EXT_DATA_LEN} chars"
                )));
            }
        }
        Ok(())
    }

    /// Requires a successful verification job before batch jobs.
    pub fn needs_verification(mut self) -> PackageSpec {
        self.needs_verification = true;
        self
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

/// Per-device task state (PROTOCOL.md §9).
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
