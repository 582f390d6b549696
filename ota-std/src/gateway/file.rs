//! The gateway's TOML file: the gateway's identity and broker, the download limit, and one
//! `[[subdevice]]` table per sub-device. Every problem is named in one error.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{GatewayConfig, SubdeviceConfig, SubdeviceVersion};
use crate::login::{instance_endpoint, region_endpoint};
use crate::{DeviceConfig, Error, Trust};

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayFile {
    /// The gateway's ProductKey.
    pub product_key: String,
    /// The gateway's DeviceName.
    pub device_name: String,
    /// The gateway's DeviceSecret (better: the OTA_DEVICE_SECRET environment variable).
    pub device_secret: Option<String>,
    /// MQTT endpoint as host:port (or `region` / `instance`).
    pub endpoint: Option<String>,
    /// Region of a public instance.
    pub region: Option<String>,
    /// Enterprise instance id.
    pub instance: Option<String>,
    /// MQTT over TLS (default true).
    pub tls: Option<bool>,
    /// CA certificates (PEM) to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// Accept `http://` firmware URLs (local simulators only).
    pub allow_http: Option<bool>,
    /// Most sub-devices downloading at once (default 2).
    pub max_parallel: Option<usize>,
    /// The sub-devices.
    #[serde(default)]
    pub subdevice: Vec<SubdeviceFile>,
}

/// One `[[subdevice]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubdeviceFile {
    /// Its ProductKey.
    pub product_key: String,
    /// Its DeviceName.
    pub device_name: String,
    /// Its DeviceSecret.
    pub device_secret: String,
    /// Its running version (or `version_command`).
    pub version: Option<String>,
    /// Prints its running version.
    pub version_command: Option<String>,
    /// Its staging directory.
    pub dir: PathBuf,
    /// Flashes `OTA_IMAGE` into it; exit 0 means done.
    pub flasher: String,
    /// Prints the version it runs after a flash.
    pub version_after_flash: Option<String>,
}

impl GatewayFile {
    /// Reads and parses `path`.
    pub fn read(path: &Path) -> Result<GatewayFile, Error> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let message = e.message().trim().to_owned();
            Error::Config(format!("{}: {message}", path.display()))
        })
    }

    /// Checks the file and builds the gateway's configuration; `secret_from_env` fills a
    /// missing gateway secret.
    pub fn into_config(self, secret_from_env: Option<String>) -> Result<GatewayConfig, Error> {
        let secret = self
            .device_secret
            .or(secret_from_env)
            .ok_or_else(|| Error::Config("missing device_secret (or OTA_DEVICE_SECRET)".into()))?;
        let (host, port) = match (&self.endpoint, &self.region, &self.instance) {
            (Some(endpoint), _, _) => parse_endpoint(endpoint)?,
            (None, Some(region), _) => region_endpoint(&self.product_key, region),
            (None, None, Some(instance)) => instance_endpoint(instance),
            (None, None, None) => {
                return Err(Error::Config(
                    "missing endpoint (or region, or instance)".into(),
                ))
            }
        };
        if self.subdevice.is_empty() {
            return Err(Error::Config(
                "no [[subdevice]]: a gateway needs at least one".into(),
            ));
        }
        let dir = Path::new(".");
        let mut gateway = DeviceConfig::new(
            &self.product_key,
            &self.device_name,
            &secret,
            &host,
            port,
            dir,
        )?;
        let trust = match &self.ca_file {
            Some(path) => Trust::CaPem(std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read CA file {}: {e}", path.display()))
            })?),
            None => Trust::Builtin,
        };
        gateway.mqtt_tls = self.tls.unwrap_or(true).then(|| trust.clone());
        gateway.https_trust = trust;
        gateway.agent.rules.allow_http = self.allow_http.unwrap_or(false);
        let subdevices = self
            .subdevice
            .into_iter()
            .map(SubdeviceFile::into_config)
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(GatewayConfig {
            gateway,
            subdevices,
            max_parallel: self.max_parallel.unwrap_or(2),
        })
    }
}

impl SubdeviceFile {
    fn into_config(self) -> Result<SubdeviceConfig, Error> {
        let version = match (self.version, self.version_command) {
            (Some(v), None) => SubdeviceVersion::Fixed(v),
            (None, Some(c)) => SubdeviceVersion::Command(c),
            _ => {
                return Err(Error::Config(format!(
                    "sub-device {}: give exactly one of version and version_command",
                    self.device_name
                )))
            }
        };
        Ok(SubdeviceConfig {
            product_key: self.product_key,
            device_name: self.device_name,
            device_secret: self.device_secret,
            version,
            dir: self.dir,
            flasher: self.flasher,
            version_after_flash: self.version_after_flash,
        })
    }
}

fn parse_endpoint(endpoint: &str) -> Result<(String, u16), Error> {
    let bad = || Error::Config(format!("endpoint {endpoint:?} is not host:port"));
    let (host, port) = endpoint.rsplit_once(':').ok_or_else(bad)?;
    let port = port.parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
product_key = "a1GwPK00001"
device_name = "gw0001"
endpoint = "127.0.0.1:1883"
tls = false
allow_http = true
max_parallel = 4

[[subdevice]]
product_key = "a1SubPK0001"
device_name = "node01"
device_secret = "s1"
version = "1.0.0"
dir = "/var/lib/ota/node01"
flasher = "flash $OTA_IMAGE"

[[subdevice]]
product_key = "a1SubPK0001"
device_name = "node02"
device_secret = "s2"
version_command = "query-version"
dir = "/var/lib/ota/node02"
flasher = "flash $OTA_IMAGE"
version_after_flash = "query-version"
"#;

    #[test]
    fn a_file_builds_the_gateway_and_its_sub_devices() {
        let file: GatewayFile = toml::from_str(FILE).unwrap();
        let config = file.into_config(Some("gw-secret".into())).unwrap();
        assert_eq!(config.max_parallel, 4);
        assert_eq!(config.gateway.device_secret, "gw-secret");
        assert!(config.gateway.mqtt_tls.is_none());
        assert!(config.gateway.agent.rules.allow_http);
        assert_eq!(config.subdevices.len(), 2);
        assert_eq!(
            config.subdevices[0].version,
            SubdeviceVersion::Fixed("1.0.0".into())
        );
        assert_eq!(
            config.subdevices[1].version,
            SubdeviceVersion::Command("query-version".into())
        );
        assert_eq!(
            config.subdevices[1].version_after_flash.as_deref(),
            Some("query-version")
        );
        // A sub-device's download has one staging block, no larger than 64 KiB, whatever the
        // (larger) default block of a direct device.
        assert!(config.gateway.agent.write_block > 64 * 1024);
        let agent = config.agent_config(&config.subdevices[0]).unwrap();
        assert_eq!(agent.write_buffers, 1);
        assert_eq!(agent.write_block, 64 * 1024);
    }

    #[test]
    fn problems_are_named() {
        let err = |text: &str| {
            toml::from_str::<GatewayFile>(text)
                .map_err(|e| e.message().to_owned())
                .and_then(|f| f.into_config(Some("s".into())).map_err(|e| e.to_string()))
                .err()
                .unwrap()
        };
        let no_subs = FILE.split("[[subdevice]]").next().unwrap();
        assert!(err(no_subs).contains("[[subdevice]]"));
        let both = FILE.replace(
            "version = \"1.0.0\"",
            "version = \"1\"\nversion_command = \"x\"",
        );
        assert!(err(&both).contains("exactly one of version"));
        let unknown = FILE.replace("max_parallel = 4", "max_paralel = 4");
        assert!(err(&unknown).contains("max_paralel"));
        let endpoint = FILE.replace("127.0.0.1:1883", "nohost");
        assert!(err(&endpoint).contains("host:port"));
        let file: GatewayFile = toml::from_str(FILE).unwrap();
        assert!(file
            .into_config(None)
            .unwrap_err()
            .to_string()
            .contains("device_secret"));
    }
}
