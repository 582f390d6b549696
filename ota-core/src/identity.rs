//! Device identity and the MQTT topics derived from it (docs/protocol.md §1, §8).

use alloc::string::String;

use crate::error::Error;

/// Longest product key accepted (the platform issues 11 characters).
pub const MAX_PRODUCT_KEY_LEN: usize = 32;
/// Device name length bounds.
pub const DEVICE_NAME_LEN: core::ops::RangeInclusive<usize> = 4..=32;
/// Longest module name.
pub const MAX_MODULE_LEN: usize = 64;
/// Longest version string the cloud issues.
pub const MAX_VERSION_LEN: usize = 64;

/// The name of the module that stands for the whole firmware.
pub const DEFAULT_MODULE: &str = "default";

/// A validated product key and device name: both are pasted verbatim into topics, so
/// anything that could change a topic's meaning is refused here, once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceIdentity {
    product_key: String,
    device_name: String,
}

impl DeviceIdentity {
    /// Validates and builds an identity.
    pub fn new(product_key: &str, device_name: &str) -> Result<Self, Error> {
        let pk_ok = !product_key.is_empty()
            && product_key.len() <= MAX_PRODUCT_KEY_LEN
            && product_key.bytes().all(|b| b.is_ascii_alphanumeric());
        if !pk_ok {
            return Err(Error::InvalidProductKey);
        }
        let dn_ok = DEVICE_NAME_LEN.contains(&device_name.len())
            && device_name
                .bytes()
                // `matches!`, not `b"-_.@:".contains`: no `memchr` linked (flash, issue #21).
                .all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'@' | b':')
                });
        if !dn_ok {
            return Err(Error::InvalidDeviceName);
        }
        Ok(DeviceIdentity {
            product_key: product_key.into(),
            device_name: device_name.into(),
        })
    }

    /// The product key.
    pub fn product_key(&self) -> &str {
        &self.product_key
    }

    /// The device name.
    pub fn device_name(&self) -> &str {
        &self.device_name
    }
}

/// True when `module` is a valid module name (docs/protocol.md §8).
pub fn is_valid_module(module: &str) -> bool {
    is_version_like(module, MAX_MODULE_LEN)
}

/// True when `version` is a valid version string (docs/protocol.md §3, §8).
pub fn is_valid_version(version: &str) -> bool {
    is_version_like(version, MAX_VERSION_LEN)
}

fn is_version_like(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Every topic of one device, formatted once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    /// `/ota/device/inform/{pk}/{dn}`: version reports.
    pub inform: String,
    /// `/ota/device/upgrade/{pk}/{dn}`: pushes (subscribed).
    pub upgrade: String,
    /// `/ota/device/progress/{pk}/{dn}`: progress and failure codes.
    pub progress: String,
    /// `/ota/device/request/{pk}/{dn}`: the legacy request for a task.
    pub request: String,
    /// `/sys/{pk}/{dn}/thing/ota/firmware/get`: the Alink request for a task.
    pub firmware_get: String,
    /// `/sys/{pk}/{dn}/thing/ota/firmware/get_reply` (subscribed).
    pub firmware_get_reply: String,
    /// `/sys/{pk}/{dn}/thing/file/download`: MQTT-channel block requests.
    #[cfg(feature = "mqtt-channel")]
    pub file_download: String,
    /// `/sys/{pk}/{dn}/thing/file/download_reply`: MQTT-channel blocks (subscribed).
    #[cfg(feature = "mqtt-channel")]
    pub file_download_reply: String,
}

impl Topics {
    /// Formats the topics of `id`.
    pub fn new(id: &DeviceIdentity) -> Self {
        let (pk, dn) = (id.product_key(), id.device_name());
        // One out-of-line builder per topic shape rather than a `text!` per topic: the
        // concatenation's code once, not eight times (flash, issue #21).
        #[inline(never)]
        fn ota(kind: &str, pk: &str, dn: &str) -> String {
            text!("/ota/device/", kind, "/", pk, "/", dn)
        }
        #[inline(never)]
        fn sys(pk: &str, dn: &str, tail: &str) -> String {
            text!("/sys/", pk, "/", dn, "/thing/", tail)
        }
        Topics {
            inform: ota("inform", pk, dn),
            upgrade: ota("upgrade", pk, dn),
            progress: ota("progress", pk, dn),
            request: ota("request", pk, dn),
            firmware_get: sys(pk, dn, "ota/firmware/get"),
            firmware_get_reply: sys(pk, dn, "ota/firmware/get_reply"),
            #[cfg(feature = "mqtt-channel")]
            file_download: sys(pk, dn, "file/download"),
            #[cfg(feature = "mqtt-channel")]
            file_download_reply: sys(pk, dn, "file/download_reply"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_follow_the_protocol_table() {
        let id = DeviceIdentity::new("a1TestPK001", "dev01").unwrap();
        let t = Topics::new(&id);
        assert_eq!(t.inform, "/ota/device/inform/a1TestPK001/dev01");
        assert_eq!(t.upgrade, "/ota/device/upgrade/a1TestPK001/dev01");
        assert_eq!(t.progress, "/ota/device/progress/a1TestPK001/dev01");
        assert_eq!(t.request, "/ota/device/request/a1TestPK001/dev01");
        assert_eq!(
            t.firmware_get,
            "/sys/a1TestPK001/dev01/thing/ota/firmware/get"
        );
        assert_eq!(
            t.firmware_get_reply,
            "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply"
        );
    }

    #[test]
    fn identities_that_would_break_a_topic_are_refused() {
        for pk in ["", "a/b", "a+b", "a#b", "a\0b", "ab cd", &"k".repeat(33)] {
            assert_eq!(
                DeviceIdentity::new(pk, "dev01"),
                Err(Error::InvalidProductKey),
                "{pk:?}"
            );
        }
        for dn in [
            "dev",
            "de/v1",
            "dev+1",
            "dev#1",
            "dev\u{0}1",
            "dev 1",
            &"d".repeat(33),
        ] {
            assert_eq!(
                DeviceIdentity::new("pk", dn),
                Err(Error::InvalidDeviceName),
                "{dn:?}"
            );
        }
        assert!(DeviceIdentity::new("a1B2", "gw-01_a.b@c:d").is_ok());
    }

    #[test]
    fn module_and_version_rules() {
        assert!(is_valid_module("MCU"));
        assert!(is_valid_version("1.0.1.9.20171112.1432"));
        assert!(is_valid_version("2-0-0"));
        assert!(!is_valid_version(""));
        assert!(!is_valid_version(&"v".repeat(65)));
        assert!(is_valid_version(&"v".repeat(64)));
        assert!(!is_valid_module("a/b"));
        assert!(!is_valid_version("1 0"));
    }
}
