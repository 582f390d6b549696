//! What the application decides: identity, limits, budgets and timings.

use alloc::string::String;
#[cfg(feature = "modules")]
use alloc::vec::Vec;
use core::time::Duration;

use crate::downlink::TaskRules;
use crate::error::Error;
#[cfg(feature = "modules")]
use crate::identity::is_valid_version;
use crate::identity::{is_valid_module, DeviceIdentity, DEFAULT_MODULE};

/// Most staging blocks (`Config::write_buffers`); the action queue has room for their writes.
const MAX_WRITE_BUFFERS: usize = 16;

/// How the device asks the cloud for its pending task.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRequest {
    /// `/sys/{pk}/{dn}/thing/ota/firmware/get` (newer SDKs; the reply can say "no task").
    FirmwareGet,
    /// `/ota/device/request/{pk}/{dn}` (older SDK; the answer comes as a push). Feature
    /// `legacy-request`.
    #[cfg(feature = "legacy-request")]
    Legacy,
}

/// Retry budget and back-off for one class of errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Consecutive failures tolerated before the download is given up.
    pub max_attempts: u32,
    /// First back-off delay, in whole milliseconds (the agent's clock unit: a finer part is
    /// dropped).
    pub base_delay: Duration,
    /// Longest back-off delay (whole milliseconds, as `base_delay`).
    pub max_delay: Duration,
}

/// Who decides that a valid task is installed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Every valid task starts at once.
    Automatic,
    /// Each new task is offered to the application (`Notification::TaskOffered`), which
    /// answers `Event::AcceptTask` (now or any time later) or `Event::DeclineTask`.
    Ask {
        /// Report a declined task to the cloud as `-1`; otherwise nothing is sent.
        report_decline: bool,
    },
}

/// The MQTT-channel download (docs/protocol.md §6).
#[cfg(feature = "mqtt-channel")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MqttDownload {
    /// Bytes asked for per block request (the official SDK uses 2 to 10 KiB).
    pub block_size: u32,
    /// Block requests in flight at once (1 like the official SDK; more for long round trips).
    pub window: u8,
    /// A request without a reply for this long is sent again.
    pub reply_timeout: Duration,
    /// Consecutive failed blocks (timeouts, bad frames) tolerated before giving up with `-2`.
    pub max_attempts: u32,
}

/// Agent configuration. `Config::new` gives defaults suited to a Linux gateway; firmware
/// usually lowers `write_block` and `checkpoint_interval` to its flash geometry.
#[derive(Clone, Debug)]
pub struct Config {
    /// Product key and device name.
    pub identity: DeviceIdentity,
    /// The module this agent updates (`default` = the whole firmware); its running version
    /// is `Boot::running_version`.
    pub module: String,
    /// Further modules this agent updates, with their running versions: `(module, version)`.
    /// Each is reported on connect; their tasks run one after another, one record at a time.
    /// Only with the `modules` feature: without it, a task for any other module is refused.
    #[cfg(feature = "modules")]
    pub extra_modules: Vec<(String, String)>,
    /// What tasks are accepted (https only, slot capacity, message size cap).
    pub rules: TaskRules,
    /// Staging block: bytes are written in blocks of this size (the last one may be shorter).
    /// Must be a multiple of the flash write unit.
    pub write_block: usize,
    /// Staging blocks (1 to 16): how many `Write`s may be in flight at once. With 1 (the
    /// default, the least RAM) the agent takes no body bytes until each `WriteDone`; with
    /// more, it hashes into the next block while the adapter writes the previous ones.
    pub write_buffers: usize,
    /// A record with the durable offset and digest mid-state is saved every this many bytes.
    /// A power loss re-downloads at most this much (plus the blocks staged or in flight
    /// beyond it, `write_buffers - 1` at most). Rounded up to whole write blocks.
    pub checkpoint_interval: u64,
    /// Before activation, read the whole image back from the slot and check its digest (and
    /// the package signature, with a key) over those bytes: flash that lost or never took a
    /// byte fails the task with `-4` instead of activating it. Costs one read of the image
    /// (BENCHMARKS.md); on by default, since the image is worth more than that.
    pub read_back: bool,
    /// Ask for a pending task after every connect (a record of an unfinished download
    /// always asks).
    pub request_task_on_connect: bool,
    /// Which request to use.
    pub task_request: TaskRequest,
    /// Whether the application is asked before a task starts.
    pub confirmation: Confirmation,
    /// Transient download errors (connection, 5xx, short body, stall).
    pub retry: RetryPolicy,
    /// Dead URLs (403 and friends): how many times to ask the cloud for a fresh URL.
    pub url_refresh: RetryPolicy,
    /// The MQTT-channel download.
    #[cfg(feature = "mqtt-channel")]
    pub mqtt: MqttDownload,
    /// How long to wait for the answer to a task request.
    pub reply_timeout: Duration,
    /// A task that would replace a download started less than this long ago waits until
    /// then (the latest such task wins): a cloud switching tasks in a loop costs one GET per
    /// interval, not one per push. The first task is never delayed.
    pub task_switch_interval: Duration,
    /// A download that receives nothing for this long is restarted.
    pub stall_timeout: Duration,
    /// Report progress when it grew by this many percent (each report follows a record
    /// save carrying its step, so that it is never repeated after a power loss)...
    pub progress_step: u8,
    /// ...or when it grew at all and this much time has passed.
    pub progress_interval: Duration,
    /// How long the application may take to declare a new image healthy after boot.
    pub health_timeout: Duration,
    /// Seed of the back-off jitter (give each device its own, e.g. from its name or a TRNG).
    pub seed: u64,
    /// The product's public key of the secure upgrade (docs/protocol.md §11). With a key, an
    /// image is activated only if the task's `digestsign` verifies; `None` passes it through.
    #[cfg(feature = "signature")]
    pub package_key: Option<crate::signature::PackageKey>,
}

impl Config {
    /// A configuration with defaults.
    pub fn new(identity: DeviceIdentity) -> Self {
        Config {
            identity,
            module: String::from(DEFAULT_MODULE),
            #[cfg(feature = "modules")]
            extra_modules: Vec::new(),
            rules: TaskRules::default(),
            write_block: 4096,
            write_buffers: 1,
            checkpoint_interval: 256 * 1024,
            read_back: true,
            request_task_on_connect: true,
            task_request: TaskRequest::FirmwareGet,
            confirmation: Confirmation::Automatic,
            retry: RetryPolicy {
                max_attempts: 8,
                base_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(60),
            },
            url_refresh: RetryPolicy {
                max_attempts: 5,
                base_delay: Duration::from_secs(2),
                max_delay: Duration::from_secs(120),
            },
            #[cfg(feature = "mqtt-channel")]
            mqtt: MqttDownload {
                block_size: 4096,
                window: 1,
                reply_timeout: Duration::from_secs(10),
                max_attempts: 4,
            },
            reply_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            task_switch_interval: Duration::from_secs(10),
            progress_step: 5,
            progress_interval: Duration::from_secs(5),
            health_timeout: Duration::from_secs(120),
            seed: 0x5EED,
            #[cfg(feature = "signature")]
            package_key: None,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        if !is_valid_module(&self.module) {
            return Err(Error::InvalidVersion);
        }
        #[cfg(feature = "modules")]
        for (i, (module, version)) in self.extra_modules.iter().enumerate() {
            let repeated =
                *module == self.module || self.extra_modules[..i].iter().any(|(m, _)| m == module);
            if !is_valid_module(module) || !is_valid_version(version) || repeated {
                return Err(Error::InvalidVersion);
            }
        }
        if self.write_block == 0 || self.write_block > 1024 * 1024 {
            return Err(Error::InvalidConfig("write_block must be 1 byte to 1 MiB"));
        }
        if self.write_buffers == 0 || self.write_buffers > MAX_WRITE_BUFFERS {
            return Err(Error::InvalidConfig("write_buffers must be 1 to 16"));
        }
        // Rounded up to whole blocks (`checkpoint_bytes`): that must not overflow.
        let block = self.write_block as u64;
        if self.checkpoint_interval == 0
            || self
                .checkpoint_interval
                .checked_next_multiple_of(block)
                .is_none()
        {
            return Err(Error::InvalidConfig(
                "checkpoint_interval must be > 0 and fit in u64 once rounded up to write blocks",
            ));
        }
        if self.progress_step == 0 || self.progress_step > 100 {
            return Err(Error::InvalidConfig("progress_step must be 1..=100"));
        }
        if self.stall_timeout.is_zero()
            || self.reply_timeout.is_zero()
            || self.health_timeout.is_zero()
        {
            return Err(Error::InvalidConfig("timeouts must be > 0"));
        }
        #[cfg(feature = "mqtt-channel")]
        if self.mqtt.block_size == 0 || self.mqtt.block_size > 64 * 1024 || self.mqtt.window == 0 {
            return Err(Error::InvalidConfig(
                "mqtt block_size must be 1 byte to 64 KiB, window >= 1",
            ));
        }
        #[cfg(feature = "mqtt-channel")]
        if self.mqtt.reply_timeout.is_zero() {
            return Err(Error::InvalidConfig("timeouts must be > 0"));
        }
        if self.retry.base_delay.is_zero() || self.url_refresh.base_delay.is_zero() {
            return Err(Error::InvalidConfig("back-off delays must be > 0"));
        }
        Ok(())
    }

    /// The checkpoint interval rounded up to whole write blocks, so that every saved
    /// offset is block-aligned.
    pub(crate) fn checkpoint_bytes(&self) -> u64 {
        let block = self.write_block as u64;
        self.checkpoint_interval.div_ceil(block) * block
    }
}
