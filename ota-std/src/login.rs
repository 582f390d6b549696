//! The Alibaba Cloud IoT MQTT login (docs/protocol.md §7): the password is an HMAC-SHA256 of the
//! device's identity keyed with its DeviceSecret, so the secret itself never goes on the wire.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The fixed timestamp the official C SDKs sign with. The platform does not check it against
/// the clock, and a device without a synchronised clock can still log in.
pub const SDK_TIMESTAMP: &str = "2524608000000";

/// What goes into the MQTT CONNECT packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// `{pk}.{dn}|timestamp=..,_ss=1,_v=..,securemode=2|3,signmethod=hmacsha256,ext=3|`
    pub client_id: String,
    /// `{dn}&{pk}`
    pub username: String,
    /// Upper-case hex HMAC-SHA256.
    pub password: String,
}

impl Login {
    /// The hmacsha256 login with the SDK's fixed timestamp. `tls` selects `securemode=2`
    /// (TLS) or `3` (plain TCP).
    pub fn new(product_key: &str, device_name: &str, secret: &str, tls: bool) -> Login {
        Login::with_timestamp(product_key, device_name, secret, tls, SDK_TIMESTAMP)
    }

    /// The hmacsha256 login with a chosen timestamp.
    pub fn with_timestamp(
        product_key: &str,
        device_name: &str,
        secret: &str,
        tls: bool,
        timestamp: &str,
    ) -> Login {
        let (pk, dn) = (product_key, device_name);
        let base = format!("{pk}.{dn}");
        let content = format!("clientId{base}deviceName{dn}productKey{pk}timestamp{timestamp}");
        let securemode = if tls { 2 } else { 3 };
        let version = env!("CARGO_PKG_VERSION");
        Login {
            client_id: format!(
                "{base}|timestamp={timestamp},_ss=1,_v=ota-rs-{version},securemode={securemode},\
                 signmethod=hmacsha256,ext=3|"
            ),
            username: format!("{dn}&{pk}"),
            password: hmac_sha256_upper_hex(secret.as_bytes(), content.as_bytes()),
        }
    }
}

fn hmac_sha256_upper_hex(key: &[u8], text: &[u8]) -> String {
    // HMAC accepts keys of any length; the error branch cannot happen.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(text);
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
    }
    hex
}

/// The MQTT endpoint of a legacy public instance in a region.
pub fn region_endpoint(product_key: &str, region: &str) -> (String, u16) {
    (
        format!("{product_key}.iot-as-mqtt.{region}.aliyuncs.com"),
        1883,
    )
}

/// The MQTT endpoint of an enterprise instance (`iot-xxxxxxxx`).
pub fn instance_endpoint(instance: &str) -> (String, u16) {
    (format!("{instance}.mqtt.iothub.aliyuncs.com"), 8883)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_test_vector() {
        let login = Login::new(
            "a1TestPK001",
            "dev01",
            "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa",
            true,
        );
        assert_eq!(
            login.password,
            "587C3C70C673C99D5E9229AF629C57A56B031C4EAE993A16E90614E684C34017"
        );
        assert_eq!(login.username, "dev01&a1TestPK001");
        assert!(login
            .client_id
            .starts_with("a1TestPK001.dev01|timestamp=2524608000000,_ss=1,_v=ota-rs-"));
        assert!(login
            .client_id
            .ends_with(",securemode=2,signmethod=hmacsha256,ext=3|"));
    }

    #[test]
    fn plain_tcp_uses_securemode_3() {
        let login = Login::new("a1TestPK001", "dev01", "s", false);
        assert!(login.client_id.contains(",securemode=3,"));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            region_endpoint("a1TestPK001", "cn-shanghai"),
            (
                "a1TestPK001.iot-as-mqtt.cn-shanghai.aliyuncs.com".into(),
                1883
            )
        );
        assert_eq!(
            instance_endpoint("iot-06z00abc"),
            ("iot-06z00abc.mqtt.iothub.aliyuncs.com".into(), 8883)
        );
    }
}
