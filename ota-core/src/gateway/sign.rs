//! The sign of a sub-device's topology request and login (docs/protocol.md §14): HMAC-SHA256,
//! keyed with the **sub-device's** DeviceSecret, over the parameters other than `sign`,
//! `signMethod` and `cleanSession`, sorted by name, names and values concatenated.

use alloc::string::String;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The text that is signed: `clientId{cid}deviceName{dn}productKey{pk}timestamp{ts}`.
pub fn sign_text(client_id: &str, device_name: &str, product_key: &str, timestamp: u64) -> String {
    text!(
        "clientId",
        client_id,
        "deviceName",
        device_name,
        "productKey",
        product_key,
        "timestamp",
        timestamp
    )
}

/// Upper-case hex HMAC-SHA256 of `text` keyed with `secret` (the Link SDK's choice; the cloud
/// compares hex without regard to case).
pub fn hmac_sha256_hex(secret: &str, text: &str) -> String {
    // HMAC takes keys of any length: `new_from_slice` cannot fail.
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(text.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(digest.len() * 2);
    for b in digest.iter() {
        hex.push(char::from(b"0123456789ABCDEF"[usize::from(b >> 4)]));
        hex.push(char::from(b"0123456789ABCDEF"[usize::from(b & 15)]));
    }
    hex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_sorts_the_parameters_by_name() {
        assert_eq!(
            sign_text(
                "a1SubPK0001&node1",
                "node1",
                "a1SubPK0001",
                1_700_000_000_000
            ),
            "clientIda1SubPK0001&node1deviceNamenode1productKeya1SubPK0001timestamp1700000000000"
        );
    }

    #[test]
    fn the_sign_is_the_login_hmac_of_the_same_text() {
        // The direct-device login of docs/protocol.md §7 is the same HMAC over the same shape of
        // text; its published vector pins the primitive and the upper-case hex.
        let text = sign_text(
            "a1TestPK001.dev01",
            "dev01",
            "a1TestPK001",
            2_524_608_000_000,
        );
        assert_eq!(
            hmac_sha256_hex("Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa", &text),
            "587C3C70C673C99D5E9229AF629C57A56B031C4EAE993A16E90614E684C34017"
        );
    }
}
