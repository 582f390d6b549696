//! Device login as the Alibaba IoT platform checks it (docs/protocol.md §7): the MQTT password is an
//! HMAC of the device's identity keyed with its DeviceSecret.

use crate::crypto::{constant_time_eq, hex_lower, hmac_sha1, hmac_sha256};
use crate::DeviceId;

/// The fixed timestamp the official C SDKs sign with.
pub const SDK_TIMESTAMP: &str = "2524608000000";

/// HMAC used for the login password.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginSignMethod {
    /// `signmethod=hmacsha256` (current SDKs, upper-case hex).
    HmacSha256,
    /// `signmethod=hmacsha1` (older SDKs, lower-case hex).
    HmacSha1,
}

/// Why a login was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoginError {
    /// The username is not `{dn}&{pk}`.
    #[error("username is not of the form deviceName&productKey")]
    BadUsername,
    /// The client id names another device than the username, or has no `{pk}.{dn}` part.
    #[error("client id does not match the username")]
    ClientIdMismatch,
    /// The client id asks for a sign method this simulator does not know.
    #[error("unsupported signmethod {0:?}")]
    UnknownSignMethod(String),
    /// No such device is registered.
    #[error("unknown device")]
    UnknownDevice,
    /// The password is not the expected HMAC.
    #[error("wrong password")]
    WrongPassword,
}

/// MQTT login fields for one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// MQTT client id, e.g. `{pk}.{dn}|timestamp=..,_ss=1,securemode=3,signmethod=hmacsha256,ext=3|`.
    pub client_id: String,
    /// MQTT username, `{dn}&{pk}`.
    pub username: String,
    /// MQTT password, the hex HMAC.
    pub password: String,
}

impl Credentials {
    /// The login a current SDK would send over plain TCP (securemode=3, hmacsha256, the C SDK's
    /// fixed timestamp).
    pub fn new(device: &DeviceId, secret: &str) -> Credentials {
        Credentials::with_method(device, secret, LoginSignMethod::HmacSha256, SDK_TIMESTAMP)
    }

    /// The login with a chosen HMAC and timestamp; hmacsha1 uses the older `{pk}&{dn}` client id.
    pub fn with_method(
        device: &DeviceId,
        secret: &str,
        method: LoginSignMethod,
        timestamp: &str,
    ) -> Credentials {
        let (pk, dn) = (&device.product_key, &device.device_name);
        let (base, name) = match method {
            LoginSignMethod::HmacSha256 => (format!("{pk}.{dn}"), "hmacsha256"),
            LoginSignMethod::HmacSha1 => (format!("{pk}&{dn}"), "hmacsha1"),
        };
        let content = sign_content(&base, pk, dn, Some(timestamp));
        let password = match method {
            LoginSignMethod::HmacSha256 => {
                hex_lower(&hmac_sha256(secret.as_bytes(), content.as_bytes())).to_uppercase()
            }
            LoginSignMethod::HmacSha1 => {
                hex_lower(&hmac_sha1(secret.as_bytes(), content.as_bytes()))
            }
        };
        Credentials {
            client_id: format!(
                "{base}|timestamp={timestamp},_ss=1,_v=ota-sim,securemode=3,signmethod={name},ext=3|"
            ),
            username: format!("{dn}&{pk}"),
            password,
        }
    }
}

/// The text the password signs: `clientId{id}deviceName{dn}productKey{pk}timestamp{T}`.
fn sign_content(client_id: &str, pk: &str, dn: &str, timestamp: Option<&str>) -> String {
    let mut s = format!("clientId{client_id}deviceName{dn}productKey{pk}");
    if let Some(t) = timestamp {
        s.push_str("timestamp");
        s.push_str(t);
    }
    s
}

/// Checks a CONNECT's client id, username and password; `secret_of` looks a device up.
/// Both HMACs and either hex case are accepted; a client id without `signmethod` may use either.
pub fn verify_login(
    client_id: &str,
    username: &str,
    password: &str,
    secret_of: impl Fn(&DeviceId) -> Option<String>,
) -> Result<DeviceId, LoginError> {
    let (dn, pk) = username.split_once('&').ok_or(LoginError::BadUsername)?;
    if dn.is_empty() || pk.is_empty() {
        return Err(LoginError::BadUsername);
    }
    let (base, params) = match client_id.split_once('|') {
        Some((base, rest)) => (base, rest.trim_end_matches('|')),
        None => (client_id, ""),
    };
    if base != format!("{pk}.{dn}") && base != format!("{pk}&{dn}") {
        return Err(LoginError::ClientIdMismatch);
    }
    let param = |key: &str| {
        params
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    };
    let methods: &[LoginSignMethod] = match param("signmethod") {
        Some(m) if m.eq_ignore_ascii_case("hmacsha256") => &[LoginSignMethod::HmacSha256],
        Some(m) if m.eq_ignore_ascii_case("hmacsha1") => &[LoginSignMethod::HmacSha1],
        Some(m) => return Err(LoginError::UnknownSignMethod(m.to_owned())),
        None => &[LoginSignMethod::HmacSha256, LoginSignMethod::HmacSha1],
    };
    let device = DeviceId::new(pk, dn);
    let secret = secret_of(&device).ok_or(LoginError::UnknownDevice)?;
    let content = sign_content(base, pk, dn, param("timestamp"));
    let given = password.to_ascii_lowercase();
    let ok = methods.iter().any(|m| {
        let mac = match m {
            LoginSignMethod::HmacSha256 => hmac_sha256(secret.as_bytes(), content.as_bytes()),
            LoginSignMethod::HmacSha1 => hmac_sha1(secret.as_bytes(), content.as_bytes()),
        };
        constant_time_eq(hex_lower(&mac).as_bytes(), given.as_bytes())
    });
    if ok {
        Ok(device)
    } else {
        Err(LoginError::WrongPassword)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa";

    fn lookup(d: &DeviceId) -> Option<String> {
        (d.product_key == "a1TestPK001" && d.device_name == "dev01").then(|| SECRET.to_owned())
    }

    #[test]
    fn protocol_vector_hmacsha256_is_produced_and_accepted() {
        let dev = DeviceId::new("a1TestPK001", "dev01");
        let c = Credentials::new(&dev, SECRET);
        assert_eq!(
            c.password,
            "587C3C70C673C99D5E9229AF629C57A56B031C4EAE993A16E90614E684C34017"
        );
        assert_eq!(c.username, "dev01&a1TestPK001");
        assert_eq!(
            verify_login(&c.client_id, &c.username, &c.password, lookup),
            Ok(dev.clone())
        );
        let lower = c.password.to_lowercase();
        assert_eq!(
            verify_login(&c.client_id, &c.username, &lower, lookup),
            Ok(dev)
        );
    }

    #[test]
    fn protocol_vector_hmacsha1_is_produced_and_accepted() {
        let dev = DeviceId::new("a1TestPK001", "dev01");
        let c = Credentials::with_method(&dev, SECRET, LoginSignMethod::HmacSha1, "1700000000");
        assert_eq!(c.password, "1d23206fda23a598d767da409743d535162c2884");
        assert!(c.client_id.starts_with("a1TestPK001&dev01|"));
        let upper = c.password.to_uppercase();
        assert_eq!(
            verify_login(&c.client_id, &c.username, &upper, lookup),
            Ok(dev)
        );
    }

    #[test]
    fn client_id_without_signmethod_accepts_either_hmac() {
        let id = "a1TestPK001&dev01|timestamp=1700000000|";
        let pw = "1d23206fda23a598d767da409743d535162c2884";
        assert!(verify_login(id, "dev01&a1TestPK001", pw, lookup).is_ok());
    }

    #[test]
    fn wrong_secret_unknown_device_and_mismatched_ids_are_refused() {
        let dev = DeviceId::new("a1TestPK001", "dev01");
        let bad = Credentials::new(&dev, "not-the-secret");
        assert_eq!(
            verify_login(&bad.client_id, &bad.username, &bad.password, lookup),
            Err(LoginError::WrongPassword)
        );
        let other = Credentials::new(&DeviceId::new("a1TestPK001", "dev02"), SECRET);
        assert_eq!(
            verify_login(&other.client_id, &other.username, &other.password, lookup),
            Err(LoginError::UnknownDevice)
        );
        let good = Credentials::new(&dev, SECRET);
        assert_eq!(
            verify_login(&good.client_id, "dev02&a1TestPK001", &good.password, lookup),
            Err(LoginError::ClientIdMismatch)
        );
        assert_eq!(
            verify_login(&good.client_id, "nonsense", &good.password, lookup),
            Err(LoginError::BadUsername)
        );
        let md5 = good.client_id.replace("hmacsha256", "hmacmd5");
        assert!(matches!(
            verify_login(&md5, &good.username, &good.password, lookup),
            Err(LoginError::UnknownSignMethod(_))
        ));
    }
}
