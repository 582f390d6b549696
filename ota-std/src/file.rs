//! The `ota-agent` settings: one struct read from a TOML file and from flags (flags win), then
//! checked and turned into a [`DeviceConfig`]. Every field is optional here so that either
//! source may give it; what is still missing after the merge is named in one error.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::login::{instance_endpoint, region_endpoint};
use ota_core::TaskRequest;

use crate::{
    Activation, DeviceConfig, Error, Health, ModuleConfig, Reboot, RunningVersion, TlsBackend,
    Trust,
};

/// Settings of the agent. In the TOML file the keys are the flag names with `_` for `-`.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// ProductKey of the device.
    #[arg(long, value_name = "PK")]
    pub product_key: Option<String>,
    /// DeviceName of the device.
    #[arg(long, value_name = "DN")]
    pub device_name: Option<String>,
    /// DeviceSecret (better: the OTA_DEVICE_SECRET environment variable).
    #[arg(
        long,
        value_name = "SECRET",
        env = "OTA_DEVICE_SECRET",
        hide_env_values = true
    )]
    pub device_secret: Option<String>,
    /// MQTT endpoint as host:port (overrides --region and --instance).
    #[arg(long, value_name = "HOST:PORT")]
    pub endpoint: Option<String>,
    /// Region of a public instance: {pk}.iot-as-mqtt.{region}.aliyuncs.com:1883.
    #[arg(long, value_name = "REGION")]
    pub region: Option<String>,
    /// Enterprise instance id: {instance}.mqtt.iothub.aliyuncs.com:8883.
    #[arg(long, value_name = "ID")]
    pub instance: Option<String>,
    /// MQTT over TLS (default true; false only for local brokers such as ota-sim).
    #[arg(long, value_name = "BOOL")]
    pub tls: Option<bool>,
    /// CA certificates (PEM) to trust for MQTT and HTTPS instead of the built-in roots
    /// (the platform's five and the Mozilla roots).
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// CA certificates (PEM) to trust in addition to the built-in roots.
    #[arg(long, value_name = "FILE", conflicts_with = "ca_file")]
    pub extra_ca_file: Option<PathBuf>,
    /// TLS library: rustls (TLS 1.2/1.3, ECDHE with AES-GCM or ChaCha20) or openssl (also
    /// TLS 1.2 AES-CBC and static-RSA suites, which some endpoints may offer alone).
    #[arg(long, value_name = "LIB")]
    pub tls_backend: Option<TlsBackend>,
    /// The running version.
    #[arg(long, value_name = "VERSION")]
    pub running_version: Option<String>,
    /// A file holding the running version; activation rewrites it.
    #[arg(long, value_name = "FILE")]
    pub version_file: Option<PathBuf>,
    /// Module this agent updates (default: default).
    #[arg(long, value_name = "NAME")]
    pub module: Option<String>,
    /// Staging image file, written during the download.
    #[arg(long, value_name = "FILE")]
    pub staging: Option<PathBuf>,
    /// Saved record (resume point) file.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Installed image: activation renames the staged image over it.
    #[arg(long, value_name = "FILE")]
    pub target: Option<PathBuf>,
    /// Directory the files of a multi-file task are installed in, as DIR/FILE_NAME
    /// (default: files/ beside the staging file).
    #[arg(long, value_name = "DIR")]
    pub files_dir: Option<PathBuf>,
    /// A further module with its files in DIR (DIR/version, DIR/staging.img, the installed
    /// DIR/firmware.img, DIR/files/); repeat for more. In the file: a list of "NAME=DIR".
    #[arg(long, value_name = "NAME=DIR")]
    pub extra_module: Option<Vec<String>>,
    /// Ask for the pending task on the legacy topic /ota/device/request/... (older SDKs)
    /// instead of thing/ota/firmware/get.
    #[arg(long, value_name = "BOOL")]
    pub legacy_request: Option<bool>,
    /// Bytes per block of the MQTT-channel download (default 4096, at most 65536).
    #[arg(long, value_name = "BYTES")]
    pub mqtt_block_size: Option<u32>,
    /// MQTT-channel block requests in flight at once (1 to 255, default 1).
    #[arg(long, value_name = "N")]
    pub mqtt_window: Option<u8>,
    /// Activate with this shell command instead (env OTA_IMAGE, OTA_VERSION, OTA_MODULE).
    #[arg(long, value_name = "CMD")]
    pub activate_command: Option<String>,
    /// Shell command that restores the previous image after a failed health check.
    #[arg(long, value_name = "CMD")]
    pub rollback_command: Option<String>,
    /// Shell command that reboots (default: restart the agent in this process).
    #[arg(long, value_name = "CMD")]
    pub reboot_command: Option<String>,
    /// Shell command run after booting a new image; exit 0 = healthy (default: healthy).
    #[arg(long, value_name = "CMD")]
    pub health_command: Option<String>,
    /// Seconds the health command may take before the image is rolled back (1 to 86400).
    #[arg(long, value_name = "SECS")]
    pub health_timeout: Option<u64>,
    /// Save the resume point every this many bytes (the most a restart re-downloads; 1 to
    /// 2^40).
    #[arg(long, value_name = "BYTES")]
    pub checkpoint_interval: Option<u64>,
    /// Bytes per write to the staging file (1 to 1048576; default 262144).
    #[arg(long, value_name = "BYTES")]
    pub write_block: Option<usize>,
    /// Staging blocks in flight at once (1 to 16; default 3: written on the writer thread
    /// while the next is hashed; 1 writes on the agent thread).
    #[arg(long, value_name = "N")]
    pub write_buffers: Option<usize>,
    /// Transient download errors tolerated in a row before failing with -2 (0 to 1000).
    #[arg(long, value_name = "N")]
    pub retry_attempts: Option<u32>,
    /// Fresh URLs asked for after 403/404 before failing with -2 (0 to 1000).
    #[arg(long, value_name = "N")]
    pub url_refresh_attempts: Option<u32>,
    /// Seconds without body bytes before a download is retried (1 to 86400).
    #[arg(long, value_name = "SECS")]
    pub stall_timeout: Option<u64>,
    /// Accept plain http:// download URLs (only for local simulators).
    #[arg(long, value_name = "BOOL")]
    pub allow_http: Option<bool>,
    /// Read the whole staged image back and check its digest (and signature) before
    /// activation (default false: on Linux the read comes from the page cache just written,
    /// which proves little and doubles the time from last byte to activation; true where
    /// the staging storage can lose bits the cache does not show).
    #[arg(long, value_name = "BOOL")]
    pub read_back: Option<bool>,
    /// The product's package-signing public key (PEM, or `n: HEX` and `e: HEX` lines as
    /// the console shows them): only tasks whose digestsign verifies are installed.
    #[arg(long, value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
}

macro_rules! merge {
    ($flags:ident, $file:ident, $($field:ident),* $(,)?) => {
        Settings { $($field: $flags.$field.or($file.$field)),* }
    };
}

impl Settings {
    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> Result<Settings, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let message = e.message().trim().to_owned();
            Error::Config(format!("{}: {message}", path.display()))
        })
    }

    /// These settings, with the gaps filled from `file`.
    pub fn or(self, file: Settings) -> Settings {
        let flags = self;
        merge!(
            flags,
            file,
            product_key,
            device_name,
            device_secret,
            endpoint,
            region,
            instance,
            tls,
            ca_file,
            extra_ca_file,
            tls_backend,
            running_version,
            version_file,
            module,
            staging,
            record,
            target,
            files_dir,
            extra_module,
            legacy_request,
            mqtt_block_size,
            mqtt_window,
            activate_command,
            rollback_command,
            reboot_command,
            health_command,
            health_timeout,
            checkpoint_interval,
            write_block,
            write_buffers,
            retry_attempts,
            url_refresh_attempts,
            stall_timeout,
            allow_http,
            signing_key,
            read_back,
        )
    }

    /// Checks the settings and builds the device configuration.
    pub fn into_device_config(self) -> Result<DeviceConfig, Error> {
        let missing = |what: &str| {
            let flag = what.replace('_', "-");
            Error::Config(format!(
                "missing {what} (--{flag}, or {what} in the config file)"
            ))
        };
        let pk = self.product_key.ok_or_else(|| missing("product_key"))?;
        let dn = self.device_name.ok_or_else(|| missing("device_name"))?;
        let secret = self.device_secret.ok_or_else(|| missing("device_secret"))?;
        let (host, port) = match (&self.endpoint, &self.region, &self.instance) {
            (Some(endpoint), _, _) => parse_endpoint(endpoint)?,
            (None, Some(region), _) => region_endpoint(&pk, region),
            (None, None, Some(instance)) => instance_endpoint(instance),
            (None, None, None) => return Err(missing("endpoint")),
        };
        let staging = self.staging.ok_or_else(|| missing("staging"))?;
        let record = self.record.ok_or_else(|| missing("record"))?;
        let dir = staging.parent().unwrap_or(Path::new("."));
        let mut config = DeviceConfig::new(&pk, &dn, &secret, &host, port, dir)?;
        config.tls_backend = self.tls_backend.unwrap_or_default();
        config.tls_backend.check_available()?;
        let read = |path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read CA file {}: {e}", path.display())))
        };
        let trust = match (&self.ca_file, &self.extra_ca_file) {
            (Some(_), Some(_)) => {
                return Err(Error::Config(
                    "give ca_file (replaces the built-in roots) or extra_ca_file (adds to \
                     them), not both"
                        .into(),
                ))
            }
            (Some(path), None) => Trust::CaPem(read(path)?),
            (None, Some(path)) => Trust::BuiltinAnd(read(path)?),
            (None, None) => Trust::Builtin,
        };
        config.mqtt_tls = self.tls.unwrap_or(true).then(|| trust.clone());
        config.https_trust = trust;
        config.running_version = match (self.running_version, self.version_file) {
            (Some(v), _) => RunningVersion::Fixed(v),
            (None, Some(path)) => RunningVersion::File(path),
            (None, None) => return Err(missing("running_version or version_file")),
        };
        if let Some(files_dir) = self.files_dir {
            config.files_dir = files_dir;
        } else if let Some(dir) = staging.parent() {
            config.files_dir = dir.join("files");
        }
        config.staging = staging;
        config.record = record;
        for spec in self.extra_module.unwrap_or_default() {
            config.extra_modules.push(parse_module(&spec)?);
        }
        config.activation = match (self.activate_command, self.target) {
            (Some(activate), _) => Activation::Command {
                activate,
                rollback: self.rollback_command,
            },
            (None, Some(target)) => Activation::Rename { target },
            (None, None) => return Err(missing("target or activate_command")),
        };
        config.reboot = self
            .reboot_command
            .map_or(Reboot::InProcess, Reboot::Command);
        config.health = self
            .health_command
            .map_or(Health::Immediate, Health::Command);
        let agent = &mut config.agent;
        if let Some(module) = self.module {
            agent.module = module;
        }
        if let Some(secs) = in_range("health_timeout", self.health_timeout, 1, MAX_SECS)? {
            agent.health_timeout = Duration::from_secs(secs);
        }
        let bytes = in_range("checkpoint_interval", self.checkpoint_interval, 1, 1 << 40)?;
        if let Some(bytes) = bytes {
            agent.checkpoint_interval = bytes;
        }
        if let Some(bytes) = in_range("write_block", self.write_block, 1, 1 << 20)? {
            agent.write_block = bytes;
        }
        if let Some(n) = in_range("write_buffers", self.write_buffers, 1, 16)? {
            agent.write_buffers = n;
        }
        if let Some(n) = in_range("retry_attempts", self.retry_attempts, 0, MAX_ATTEMPTS)? {
            agent.retry.max_attempts = n;
        }
        let refresh = in_range(
            "url_refresh_attempts",
            self.url_refresh_attempts,
            0,
            MAX_ATTEMPTS,
        )?;
        if let Some(n) = refresh {
            agent.url_refresh.max_attempts = n;
        }
        if let Some(secs) = in_range("stall_timeout", self.stall_timeout, 1, MAX_SECS)? {
            agent.stall_timeout = Duration::from_secs(secs);
        }
        if self.legacy_request == Some(true) {
            agent.task_request = TaskRequest::Legacy;
        }
        if let Some(bytes) = in_range("mqtt_block_size", self.mqtt_block_size, 1, 64 * 1024)? {
            agent.mqtt.block_size = bytes;
        }
        if let Some(n) = in_range("mqtt_window", self.mqtt_window, 1, u8::MAX)? {
            agent.mqtt.window = n;
        }
        agent.rules.allow_http = self.allow_http.unwrap_or(false);
        if let Some(read_back) = self.read_back {
            agent.read_back = read_back;
        }
        if let Some(path) = &self.signing_key {
            agent.package_key = Some(crate::signing_key::load_signing_key(path)?);
        }
        Ok(config)
    }
}

/// The longest time option: one day. Longer stall or health timeouts mean a stuck device,
/// and far larger ones would overflow a deadline (`now + timeout`).
const MAX_SECS: u64 = 24 * 60 * 60;

/// The most retries or URL refreshes in a row: enough for any flaky link, small enough that
/// a broken cloud cannot keep a device busy for good.
const MAX_ATTEMPTS: u32 = 1000;

/// `value` when it lies in `min..=max`; otherwise an error naming the option and the range
/// (checked here, at start-up, so no value can overflow or panic later).
fn in_range<T>(name: &str, value: Option<T>, min: T, max: T) -> Result<Option<T>, Error>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    match value {
        Some(v) if v < min || v > max => {
            let flag = name.replace('_', "-");
            Err(Error::Config(format!(
                "{name} (--{flag}) is {v}, must be {min} to {max}"
            )))
        }
        _ => Ok(value),
    }
}

/// `NAME=DIR`: a module whose files live in DIR.
fn parse_module(spec: &str) -> Result<ModuleConfig, Error> {
    match spec.split_once('=') {
        Some((name, dir)) if !name.is_empty() && !dir.is_empty() => {
            Ok(ModuleConfig::in_dir(name, Path::new(dir)))
        }
        _ => Err(Error::Config(format!(
            "extra module {spec:?} is not NAME=DIR"
        ))),
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, u16), Error> {
    let bad = || Error::Config(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.trim_matches(['[', ']']).to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> Settings {
        toml::from_str(
            r#"
            product_key = "a1TestPK001"
            device_name = "dev01"
            device_secret = "s"
            region = "cn-shanghai"
            running_version = "1.0.0"
            staging = "/tmp/x/staging.img"
            record = "/tmp/x/ota.record"
            target = "/tmp/x/firmware.img"
            "#,
        )
        .unwrap()
    }

    #[test]
    fn file_builds_a_tls_region_device() {
        let config = minimal().into_device_config().unwrap();
        assert_eq!(
            config.broker_host,
            "a1TestPK001.iot-as-mqtt.cn-shanghai.aliyuncs.com"
        );
        assert_eq!(config.broker_port, 1883);
        assert_eq!(config.mqtt_tls, Some(Trust::Builtin));
        assert!(!config.agent.rules.allow_http);
        assert_eq!(config.reboot, Reboot::InProcess);
    }

    #[test]
    fn flags_win_over_the_file() {
        let flags = Settings {
            endpoint: Some("127.0.0.1:1884".into()),
            tls: Some(false),
            allow_http: Some(true),
            checkpoint_interval: Some(65536),
            write_buffers: Some(3),
            extra_module: Some(vec!["MCU=/tmp/x/mcu".into()]),
            legacy_request: Some(true),
            mqtt_block_size: Some(16384),
            ..Settings::default()
        };
        let config = flags.or(minimal()).into_device_config().unwrap();
        assert_eq!(
            (config.broker_host.as_str(), config.broker_port),
            ("127.0.0.1", 1884)
        );
        assert_eq!(config.mqtt_tls, None);
        assert!(config.agent.rules.allow_http);
        assert_eq!(config.agent.checkpoint_interval, 65536);
        assert_eq!(config.agent.write_buffers, 3);
        assert_eq!(config.agent.task_request, TaskRequest::Legacy);
        assert_eq!(config.agent.mqtt.block_size, 16384);
        assert_eq!(config.files_dir, Path::new("/tmp/x/files"));
        let mcu = &config.extra_modules[0];
        assert_eq!(mcu.name, "MCU");
        assert_eq!(
            mcu.slot.running_version,
            RunningVersion::File("/tmp/x/mcu/version".into())
        );
    }

    #[test]
    fn read_back_is_off_unless_turned_on() {
        assert!(!minimal().into_device_config().unwrap().agent.read_back);
        let on = Settings {
            read_back: Some(true),
            ..Settings::default()
        };
        let config = on.or(minimal()).into_device_config().unwrap();
        assert!(config.agent.read_back);
    }

    #[test]
    fn missing_and_unknown_fields_are_named() {
        let err = Settings::default().into_device_config().unwrap_err();
        assert_eq!(
            err.to_string(),
            "configuration: missing product_key (--product-key, or product_key in the config file)"
        );
        let err = toml::from_str::<Settings>("colour = 1").unwrap_err();
        assert!(err.message().contains("colour"), "{}", err.message());
    }

    #[test]
    fn ca_files_replace_or_add_to_the_builtin_roots() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, b"pem").unwrap();
        let replace = Settings {
            ca_file: Some(ca.clone()),
            ..Settings::default()
        };
        let config = replace.or(minimal()).into_device_config().unwrap();
        assert_eq!(config.https_trust, Trust::CaPem(b"pem".to_vec()));
        let add = Settings {
            extra_ca_file: Some(ca.clone()),
            tls_backend: Some(TlsBackend::Openssl),
            ..Settings::default()
        };
        let config = add.or(minimal()).into_device_config().unwrap();
        assert_eq!(config.mqtt_tls, Some(Trust::BuiltinAnd(b"pem".to_vec())));
        assert_eq!(config.tls_backend, TlsBackend::Openssl);
        let both = Settings {
            ca_file: Some(ca.clone()),
            extra_ca_file: Some(ca),
            ..Settings::default()
        };
        let err = both.or(minimal()).into_device_config().unwrap_err();
        assert!(err.to_string().contains("not both"), "{err}");
        let backend: Settings = toml::from_str("tls_backend = \"openssl\"").unwrap();
        assert_eq!(backend.tls_backend, Some(TlsBackend::Openssl));
    }
}
