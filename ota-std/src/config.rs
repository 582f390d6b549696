//! What one device needs: identity, broker, trust, slots, boot hooks and the core's settings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ota_core::{Config, DeviceIdentity};

use crate::login::Login;
use crate::storage::{Activation, RunningVersion, Slot};
use crate::tls::{TlsBackend, Trust};
use crate::Error;

/// How the device restarts after an activation or a rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reboot {
    /// Restart the agent in this process: [`crate::Device::spawn`] starts it again, reading
    /// the running version anew (use [`RunningVersion::File`] so that it changes).
    InProcess,
    /// Run this command with `sh -c` (e.g. `systemctl reboot`). If it returns, the run ends.
    Command(String),
}

/// Where the health verdict after booting a new image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Healthy as soon as it runs.
    Immediate,
    /// Run this command with `sh -c`; exit 0 means healthy. It must finish within the core's
    /// `health_timeout`, or the image is rolled back.
    Command(String),
}

/// A further module this agent updates (the core's `Config::extra_modules`), with its own
/// slot: its running version, staging file, activation and files directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModuleConfig {
    /// Module name, as in the cloud's packages (e.g. `MCU`).
    pub name: String,
    /// Where its image is staged and installed.
    pub slot: Slot,
}

impl ModuleConfig {
    /// A module whose files live in `dir`, like the main module's in [`DeviceConfig::new`]:
    /// `version`, `staging.img`, the installed `firmware.img`, and `files/` for multi-file
    /// tasks.
    pub fn in_dir(name: &str, dir: &Path) -> ModuleConfig {
        ModuleConfig {
            name: name.to_owned(),
            slot: Slot {
                staging: dir.join("staging.img"),
                activation: Activation::Rename {
                    target: dir.join("firmware.img"),
                },
                files_dir: dir.join("files"),
                running_version: RunningVersion::File(dir.join("version")),
            },
        }
    }
}

/// Configuration of one device.
#[derive(Clone, Debug)]
pub struct DeviceConfig {
    /// ProductKey.
    pub product_key: String,
    /// DeviceName.
    pub device_name: String,
    /// DeviceSecret, the key of the login HMAC.
    pub device_secret: String,
    /// MQTT host.
    pub broker_host: String,
    /// MQTT port.
    pub broker_port: u16,
    /// MQTT over TLS with this trust; `None` is plain TCP (only for local brokers).
    pub mqtt_tls: Option<Trust>,
    /// Trust for `https://` downloads.
    pub https_trust: Trust,
    /// The TLS library of MQTT and HTTPS.
    pub tls_backend: TlsBackend,
    /// Where the running version comes from.
    pub running_version: RunningVersion,
    /// The staging image file, written in place.
    pub staging: PathBuf,
    /// The saved record.
    pub record: PathBuf,
    /// How a verified image is installed.
    pub activation: Activation,
    /// Where the files of a multi-file task are installed, each as `<dir>/<fileName>`.
    pub files_dir: PathBuf,
    /// Further modules with their own slots. Their names and running versions (read at
    /// every start) replace `agent.extra_modules`.
    pub extra_modules: Vec<ModuleConfig>,
    /// How the device restarts.
    pub reboot: Reboot,
    /// Where the health verdict comes from.
    pub health: Health,
    /// The core's settings (module, write block, checkpoint interval, retry budgets,
    /// timeouts, `rules.allow_http`...).
    pub agent: Config,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Longest reconnect delay.
    pub reconnect_max: Duration,
    /// Fail with one clear error when the very first connection (or login) fails, instead
    /// of retrying. After one successful login the agent always reconnects.
    pub fail_fast: bool,
    /// Size of each HTTP read buffer.
    pub read_buffer: usize,
}

impl DeviceConfig {
    /// A device whose files live in `dir`: `staging.img`, `ota.record`, the installed
    /// `firmware.img` and its `version` file, and `files/` for multi-file tasks. Plain MQTT, in-process reboot, immediate
    /// health; write blocks of 256 KiB, three of them (written on the writer thread while
    /// the next is hashed), a checkpoint every 4 MiB, and no read-back of the whole image
    /// before activation (`agent.read_back = false`: it would read the page cache).
    pub fn new(
        product_key: &str,
        device_name: &str,
        device_secret: &str,
        broker_host: &str,
        broker_port: u16,
        dir: &Path,
    ) -> Result<DeviceConfig, Error> {
        let identity = DeviceIdentity::new(product_key, device_name)?;
        let mut agent = Config::new(identity);
        // Large blocks, three of them: the writer thread writes while the agent hashes the
        // next, and a writer (or reader) thread that waits for a core does not stop the
        // hashing at once. 256 KiB × 3 against 64 KiB × 2: +7 to +15 % end to end on a
        // shared two-core machine (BENCHMARKS.md, issue #21), a quarter of the hand-offs to
        // the writer thread.
        agent.write_block = 256 * 1024;
        agent.write_buffers = 3;
        agent.checkpoint_interval = 4 * 1024 * 1024;
        // No read-back before activation: on Linux the bytes read back come from the page
        // cache the agent has just written, so they prove little and cost a second pass of
        // the digest (about as long as the download itself over loopback). A resumed
        // download's staged prefix is still read back and checked against the record.
        agent.read_back = false;
        agent.seed = seed_of(device_name);
        Ok(DeviceConfig {
            product_key: product_key.to_owned(),
            device_name: device_name.to_owned(),
            device_secret: device_secret.to_owned(),
            broker_host: broker_host.to_owned(),
            broker_port,
            mqtt_tls: None,
            https_trust: Trust::Builtin,
            tls_backend: TlsBackend::Rustls,
            running_version: RunningVersion::File(dir.join("version")),
            staging: dir.join("staging.img"),
            record: dir.join("ota.record"),
            activation: Activation::Rename {
                target: dir.join("firmware.img"),
            },
            files_dir: dir.join("files"),
            extra_modules: Vec::new(),
            reboot: Reboot::InProcess,
            health: Health::Immediate,
            agent,
            keep_alive: Duration::from_secs(60),
            reconnect_min: Duration::from_millis(500),
            reconnect_max: Duration::from_secs(60),
            fail_fast: true,
            read_buffer: 256 * 1024,
        })
    }

    /// The main module's slot.
    pub fn main_slot(&self) -> Slot {
        Slot {
            staging: self.staging.clone(),
            activation: self.activation.clone(),
            files_dir: self.files_dir.clone(),
            running_version: self.running_version.clone(),
        }
    }

    /// The core's configuration with the extra modules and their running versions as they
    /// are now.
    pub fn agent_config(&self) -> Result<Config, Error> {
        let mut agent = self.agent.clone();
        if !self.extra_modules.is_empty() {
            agent.extra_modules = self
                .extra_modules
                .iter()
                .map(|m| Ok((m.name.clone(), m.slot.running_version.read()?)))
                .collect::<Result<_, Error>>()?;
        }
        Ok(agent)
    }

    /// Refuses values the core accepts but that would overflow here: a deadline past the
    /// end of time in the HTTP thread (`stall_timeout`), a checkpoint that cannot be
    /// rounded to whole blocks (`checkpoint_interval`). The core checks the rest.
    pub(crate) fn check(&self) -> Result<(), Error> {
        let day = Duration::from_secs(24 * 60 * 60);
        if self.agent.stall_timeout > day || self.agent.health_timeout > day {
            return Err(Error::Config(
                "stall_timeout and health_timeout must be at most one day".into(),
            ));
        }
        if self.agent.checkpoint_interval > 1 << 40 {
            return Err(Error::Config(
                "checkpoint_interval must be at most 2^40 bytes".into(),
            ));
        }
        Ok(())
    }

    /// The MQTT login for this device.
    pub fn login(&self) -> Login {
        Login::new(
            &self.product_key,
            &self.device_name,
            &self.device_secret,
            self.mqtt_tls.is_some(),
        )
    }
}

/// A per-device seed for the back-off jitter, so a fleet does not retry in lockstep.
fn seed_of(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The library path gets the same protection as the flags: a deadline past the end of
    /// time or a checkpoint that overflows when rounded is refused before anything starts.
    #[test]
    fn values_that_would_overflow_later_are_refused() {
        let fresh =
            || DeviceConfig::new("a1TestPK001", "dev01", "s", "h", 1883, Path::new("/x")).unwrap();
        assert!(fresh().check().is_ok());
        let mut config = fresh();
        config.agent.stall_timeout = Duration::MAX;
        assert!(config
            .check()
            .unwrap_err()
            .to_string()
            .contains("stall_timeout"));
        let mut config = fresh();
        config.agent.health_timeout = Duration::from_secs(u64::MAX);
        assert!(config.check().is_err());
        let mut config = fresh();
        config.agent.checkpoint_interval = u64::MAX;
        assert!(config
            .check()
            .unwrap_err()
            .to_string()
            .contains("checkpoint_interval"));
    }
}
