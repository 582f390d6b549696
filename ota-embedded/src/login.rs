//! The MQTT login of docs/protocol.md §7: client id, username and the HMAC-SHA256 password,
//! built into fixed buffers (no allocation).

use core::fmt::Write as _;

use heapless::String;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The fixed timestamp the official C SDKs sign with.
pub const SDK_TIMESTAMP: &str = "2524608000000";

/// Longest client id: `{pk}.{dn}|timestamp=..,_ss=1,_v=..,securemode=.,signmethod=..,ext=3|`.
pub const MAX_CLIENT_ID_LEN: usize = 192;
/// Longest username, `{dn}&{pk}`.
pub const MAX_USERNAME_LEN: usize = 66;
/// The password: 64 upper-case hex digits.
pub const PASSWORD_LEN: usize = 64;

/// The SDK name and version sent in the client id (`_v=`).
const SDK_VERSION: &str = "ota-embedded-0.1";

/// Why a login could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginError {
    /// The product key, device name or timestamp is too long for the fixed buffers.
    TooLong,
}

/// Whether the MQTT connection is encrypted: it decides `securemode` in the client id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecureMode {
    /// TLS (`securemode=2`).
    Tls,
    /// Plain TCP (`securemode=3`).
    Plain,
}

/// The three CONNECT fields that log a device in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// MQTT client id.
    pub client_id: String<MAX_CLIENT_ID_LEN>,
    /// MQTT username.
    pub username: String<MAX_USERNAME_LEN>,
    /// MQTT password (upper-case hex HMAC-SHA256).
    pub password: String<PASSWORD_LEN>,
}

impl Login {
    /// Builds the hmacsha256 login of device `{product_key}.{device_name}` keyed with its
    /// DeviceSecret, at `timestamp` (use [`SDK_TIMESTAMP`] unless the server wants the time).
    pub fn new(
        product_key: &str,
        device_name: &str,
        device_secret: &str,
        timestamp: &str,
        mode: SecureMode,
    ) -> Result<Login, LoginError> {
        let securemode = match mode {
            SecureMode::Tls => 2,
            SecureMode::Plain => 3,
        };
        let mut client_id = String::new();
        write!(
            client_id,
            "{product_key}.{device_name}|timestamp={timestamp},_ss=1,_v={SDK_VERSION},\
             securemode={securemode},signmethod=hmacsha256,ext=3|"
        )
        .map_err(|_| LoginError::TooLong)?;
        let mut username = String::new();
        write!(username, "{device_name}&{product_key}").map_err(|_| LoginError::TooLong)?;
        let password = sign(product_key, device_name, device_secret, timestamp);
        Ok(Login {
            client_id,
            username,
            password,
        })
    }
}

/// Upper-case hex HMAC-SHA256 over
/// `clientId{pk}.{dn}deviceName{dn}productKey{pk}timestamp{T}`, keyed with the secret.
pub fn sign(
    product_key: &str,
    device_name: &str,
    device_secret: &str,
    timestamp: &str,
) -> String<PASSWORD_LEN> {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(device_secret.as_bytes()) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    for part in [
        "clientId",
        product_key,
        ".",
        device_name,
        "deviceName",
        device_name,
        "productKey",
        product_key,
        "timestamp",
        timestamp,
    ] {
        mac.update(part.as_bytes());
    }
    let digest = mac.finalize().into_bytes();
    let mut hex = String::new();
    for byte in digest.iter() {
        // 32 bytes are exactly 64 digits: the buffer is full, never over.
        let _ = write!(hex, "{byte:02X}");
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_test_vector_signs() {
        let password = sign(
            "a1TestPK001",
            "dev01",
            "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa",
            "2524608000000",
        );
        assert_eq!(
            password.as_str(),
            "587C3C70C673C99D5E9229AF629C57A56B031C4EAE993A16E90614E684C34017"
        );
    }

    #[test]
    fn login_fields_follow_the_protocol() {
        let login = Login::new(
            "a1TestPK001",
            "dev01",
            "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa",
            SDK_TIMESTAMP,
            SecureMode::Plain,
        )
        .unwrap();
        assert_eq!(login.username.as_str(), "dev01&a1TestPK001");
        assert_eq!(
            login.client_id.as_str(),
            "a1TestPK001.dev01|timestamp=2524608000000,_ss=1,_v=ota-embedded-0.1,\
             securemode=3,signmethod=hmacsha256,ext=3|"
        );
        assert!(login.password.starts_with("587C3C70"));
    }

    #[test]
    fn longest_identity_fits() {
        let pk = "P".repeat(32);
        let dn = "D".repeat(32);
        let login = Login::new(&pk, &dn, "s", SDK_TIMESTAMP, SecureMode::Tls);
        assert!(login.is_ok());
        let too_long = "D".repeat(200);
        assert_eq!(
            Login::new(&pk, &too_long, "s", SDK_TIMESTAMP, SecureMode::Tls),
            Err(LoginError::TooLong)
        );
    }
}
