//! Signed, expiring firmware URLs in the style of OSS: `Expires` (unix seconds) and `Signature`
//! query parameters. The device's identity is part of the signed text, so the firmware server
//! knows whose download it serves (faults are per device) and an edited URL is refused.

use crate::crypto::{hex_lower, hmac_sha256, Rng};
use crate::DeviceId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Why a firmware URL is refused (both become HTTP 403 with an OSS-like XML body).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `Expires` is in the past.
    #[error("Request has expired")]
    Expired,
    /// A parameter is missing or the signature does not cover the URL as given.
    #[error("The request signature we calculated does not match the signature you provided")]
    SignatureDoesNotMatch,
}

impl UrlError {
    /// The OSS error code for the XML body.
    pub fn code(&self) -> &'static str {
        match self {
            UrlError::Expired => "AccessDenied",
            UrlError::SignatureDoesNotMatch => "SignatureDoesNotMatch",
        }
    }
}

/// Signs and checks firmware URLs with a key private to one simulator.
#[derive(Clone)]
pub(crate) struct UrlSigner {
    key: Vec<u8>,
}

/// The query parameters of a signed URL, decoded.
#[derive(Debug, Default)]
pub(crate) struct SignedQuery {
    pub(crate) product_key: Option<String>,
    pub(crate) device_name: Option<String>,
    pub(crate) expires: Option<String>,
    pub(crate) signature: Option<String>,
}

impl SignedQuery {
    /// Parses `a=b&c=d` leniently: unknown keys are ignored, bad escapes kept verbatim.
    pub(crate) fn parse(query: &str) -> SignedQuery {
        let mut q = SignedQuery::default();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "pk" => q.product_key = Some(v),
                "dn" => q.device_name = Some(v),
                "Expires" => q.expires = Some(v),
                "Signature" => q.signature = Some(v),
                _ => {}
            }
        }
        q
    }
}

impl UrlSigner {
    /// A signer with a fresh random key.
    pub(crate) fn new() -> UrlSigner {
        let mut rng = Rng::new();
        UrlSigner {
            key: rng.alphanumeric(32).into_bytes(),
        }
    }

    fn signature(&self, path: &str, pk: &str, dn: &str, expires: &str) -> String {
        let text = format!("GET\n{path}\n{pk}\n{dn}\n{expires}");
        hex_lower(&hmac_sha256(&self.key, text.as_bytes()))
    }

    /// The full URL for `path` (starting with `/`) issued to `device`, valid for `ttl` but
    /// expiring no earlier than `min_expires` (unix seconds): a URL issued after an earlier
    /// one was revoked must differ from it.
    pub(crate) fn sign(
        &self,
        base: &str,
        path: &str,
        device: &DeviceId,
        ttl: Duration,
        min_expires: u64,
    ) -> String {
        let expires = (unix_now() + ttl).as_secs().max(min_expires).to_string();
        let (pk, dn) = (&device.product_key, &device.device_name);
        let sig = self.signature(path, pk, dn, &expires);
        format!(
            "{base}{path}?pk={}&dn={}&Expires={expires}&OSSAccessKeyId=ota-sim&Signature={sig}",
            percent_encode(pk),
            percent_encode(dn)
        )
    }

    /// Checks a request's path and query; returns the device the URL was issued to.
    pub(crate) fn verify(&self, path: &str, query: &SignedQuery) -> Result<DeviceId, UrlError> {
        let (Some(pk), Some(dn), Some(expires), Some(sig)) = (
            &query.product_key,
            &query.device_name,
            &query.expires,
            &query.signature,
        ) else {
            return Err(UrlError::SignatureDoesNotMatch);
        };
        let expected = self.signature(path, pk, dn, expires);
        if !crate::crypto::constant_time_eq(
            expected.as_bytes(),
            sig.to_ascii_lowercase().as_bytes(),
        ) {
            return Err(UrlError::SignatureDoesNotMatch);
        }
        let expires: u64 = expires
            .parse()
            .map_err(|_| UrlError::SignatureDoesNotMatch)?;
        if unix_now().as_secs() >= expires {
            return Err(UrlError::Expired);
        }
        Ok(DeviceId::new(pk, dn))
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Escapes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Undoes `%XX` escapes (and `+` as space); malformed escapes are kept as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (&str, &str) {
        let rest = url.strip_prefix("http://h").unwrap();
        rest.split_once('?').unwrap()
    }

    #[test]
    fn signed_url_verifies_and_names_its_device() {
        let s = UrlSigner::new();
        let dev = DeviceId::new("a1PK", "dev@1:x");
        let url = s.sign("http://h", "/fw/1/a.bin", &dev, Duration::from_secs(60), 0);
        let (path, query) = split(&url);
        assert_eq!(s.verify(path, &SignedQuery::parse(query)), Ok(dev));
    }

    #[test]
    fn altered_or_foreign_urls_do_not_match() {
        let s = UrlSigner::new();
        let dev = DeviceId::new("a1PK", "dev1");
        let url = s.sign("http://h", "/fw/1/a.bin", &dev, Duration::from_secs(60), 0);
        let (path, query) = split(&url);
        let other_dev = query.replace("dn=dev1", "dn=dev2");
        assert_eq!(
            s.verify(path, &SignedQuery::parse(&other_dev)),
            Err(UrlError::SignatureDoesNotMatch)
        );
        assert_eq!(
            s.verify("/fw/2/a.bin", &SignedQuery::parse(query)),
            Err(UrlError::SignatureDoesNotMatch)
        );
        assert_eq!(
            UrlSigner::new().verify(path, &SignedQuery::parse(query)),
            Err(UrlError::SignatureDoesNotMatch)
        );
        assert_eq!(
            s.verify(path, &SignedQuery::parse("pk=a1PK")),
            Err(UrlError::SignatureDoesNotMatch)
        );
    }

    #[test]
    fn zero_ttl_is_already_expired() {
        let s = UrlSigner::new();
        let dev = DeviceId::new("a1PK", "dev1");
        let url = s.sign("http://h", "/fw/1/a.bin", &dev, Duration::ZERO, 0);
        let (path, query) = split(&url);
        assert_eq!(
            s.verify(path, &SignedQuery::parse(query)),
            Err(UrlError::Expired)
        );
    }

    #[test]
    fn percent_round_trip_and_malformed_escapes() {
        assert_eq!(percent_encode("a b/@"), "a%20b%2F%40");
        assert_eq!(percent_decode("a%20b%2F%40"), "a b/@");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        assert_eq!(percent_decode("%"), "%");
    }
}
