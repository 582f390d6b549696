//! The platform's secure upgrade on the cloud side (docs/protocol.md §11): a product's RSA-2048
//! key signs each package's binary digest (PKCS#1 v1.5 over SHA-256), and pushes carry the
//! signature in base64 as `digestsign`. Also the fault that spoils it for one device.

use crate::faults::{Fault, FaultTable};
use crate::package::{PackageSpec, SignMethod};
use crate::{DeviceId, Error};
use md5::Digest as _;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::Pkcs1v15Sign;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
use rsa::PrivateKey;
use sha2::Sha256;

/// The fixed test key pair of this repository's tests (its private half is public: trust it
/// nowhere else). The ota-core unit tests sign with the same key.
pub mod signing_keys {
    /// Private key, PKCS#8 PEM (for `ota-sim serve --sign-key`).
    pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("../keys/test-package-key.pem");
    /// Public key, SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub const TEST_PUBLIC_KEY_PEM: &str = include_str!("../keys/test-package-key.pub.pem");
    /// Public key, PKCS#1 PEM (`BEGIN RSA PUBLIC KEY`).
    pub const TEST_RSA_PUBLIC_KEY_PEM: &str = include_str!("../keys/test-package-key.rsa.pub.pem");
}

/// A product's package-signing key.
#[derive(Clone)]
pub struct PackageSigner {
    key: PrivateKey,
}

impl PackageSigner {
    /// Reads a PEM private key (PKCS#8 `BEGIN PRIVATE KEY` or PKCS#1 `BEGIN RSA PRIVATE
    /// KEY`); it must be RSA-2048 with exponent 65537, like the platform's.
    pub fn from_pem(pem: &str) -> Result<PackageSigner, Error> {
        let pem = pem.trim();
        let key = PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| PrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| Error::InvalidKey("not a PEM RSA private key".into()))?;
        check_platform_shape(&key)?;
        Ok(PackageSigner { key })
    }

    /// A fresh RSA-2048 key from the operating system's random source.
    pub fn generate() -> Result<PackageSigner, Error> {
        let mut rng = getrandom::SysRng;
        let key = PrivateKey::new(&mut rng, 2048)
            .map_err(|e| Error::InvalidKey(format!("key generation failed: {e}")))?;
        Ok(PackageSigner { key })
    }

    /// The public key as PEM (`BEGIN PUBLIC KEY`), what a device is configured with.
    pub fn public_key_pem(&self) -> String {
        self.key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// The public modulus `n`, big-endian (what the console shows, and what an embedded
    /// device's `Settings::signing_key` holds).
    pub fn public_modulus(&self) -> Vec<u8> {
        use rsa::traits::PublicKeyParts;
        self.key.n().to_be_bytes_trimmed_vartime().into_vec()
    }

    /// The signature of a binary digest, base64 (the `digestsign` text).
    pub fn sign_digest(&self, digest: &[u8]) -> String {
        let hashed = Sha256::digest(digest);
        let signature = self
            .key
            .sign(Pkcs1v15Sign::new::<Sha256>(), &hashed)
            .unwrap_or_default();
        base64(&signature)
    }

    /// `spec` with `digestsign` set over its image's digest (per its `sign_method`). A
    /// multi-file package stays unsigned: pushes have no per-file signature field.
    pub fn sign(&self, mut spec: PackageSpec) -> PackageSpec {
        if spec.is_multi_file() {
            return spec;
        }
        let digest = match spec.sign_method {
            SignMethod::Md5 => md5::Md5::digest(&spec.data).to_vec(),
            SignMethod::Sha256 => Sha256::digest(&spec.data).to_vec(),
        };
        spec.digestsign = Some(self.sign_digest(&digest));
        spec
    }
}

/// The platform's keys are RSA-2048 with exponent 65537: the devices accept nothing else.
fn check_platform_shape(key: &PrivateKey) -> Result<(), Error> {
    use rsa::traits::PublicKeyParts;
    let n = key.n().to_be_bytes_trimmed_vartime();
    let e = key.e().to_be_bytes_trimmed_vartime();
    ota_core::signature::PackageKey::from_parts(&n, &e)
        .map(drop)
        .map_err(|e| Error::InvalidKey(e.to_string()))
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            out.push(match i <= group.len() {
                true => char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]),
                false => '=',
            });
        }
    }
    out
}

/// The device a push or firmware/get reply topic is addressed to.
fn addressee(topic: &str) -> Option<DeviceId> {
    let parts: Vec<&str> = topic.split('/').collect();
    match parts.as_slice() {
        ["", "ota", "device", "upgrade", pk, dn] => Some(DeviceId::new(*pk, *dn)),
        ["", "sys", pk, dn, "thing", "ota", "firmware", "get_reply"] => {
            Some(DeviceId::new(*pk, *dn))
        }
        _ => None,
    }
}

/// Applies [`Fault::WrongSignature`] to an outgoing message: a task in a push or reply to a
/// device with that fault gets a `digestsign` that is well formed but does not verify (the
/// true one with one bit flipped, or 256 arbitrary bytes if the package was unsigned).
pub(crate) fn spoil_signature(faults: &mut FaultTable, topic: &str, payload: Vec<u8>) -> Vec<u8> {
    let Some(device) = addressee(topic) else {
        return payload;
    };
    let Ok(mut message) = serde_json::from_slice::<serde_json::Value>(&payload) else {
        return payload;
    };
    let Some(data) = message.get_mut("data").and_then(|d| d.as_object_mut()) else {
        return payload;
    };
    if !data.contains_key("version") {
        return payload; // "no task": nothing to sign
    }
    let pick = |f: &Fault| (*f == Fault::WrongSignature).then_some(());
    let Some(armed) = faults.take(&device, "", pick) else {
        return payload;
    };
    let mut signature = data
        .get("digestsign")
        .and_then(|s| s.as_str())
        .and_then(ota_core::signature::decode_signature)
        .unwrap_or([0x5A; ota_core::signature::SIGNATURE_LEN]);
    signature[100] ^= 0x01;
    data.insert("digestsign".into(), base64(&signature).into());
    armed.fire();
    tracing::info!("fault: wrong package signature for {device}");
    serde_json::to_vec(&message).unwrap_or(payload)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::signature::{decode_signature, PackageKey};
    use ota_core::{DigestMethod, ExpectedDigest};

    /// The device's view of the test key: its PEM public key, parsed like ota-std does.
    fn device_key() -> PackageKey {
        let pem = signing_keys::TEST_PUBLIC_KEY_PEM;
        use rsa::pkcs8::DecodePublicKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::PublicKey::from_public_key_pem(pem).unwrap();
        PackageKey::from_parts(
            &key.n().to_be_bytes_trimmed_vartime(),
            &key.e().to_be_bytes_trimmed_vartime(),
        )
        .unwrap()
    }

    #[test]
    fn signed_packages_verify_on_a_device_with_the_public_key() {
        let signer = PackageSigner::from_pem(signing_keys::TEST_PRIVATE_KEY_PEM).unwrap();
        assert_eq!(
            signer.public_key_pem().trim(),
            signing_keys::TEST_PUBLIC_KEY_PEM.trim()
        );
        for method in [SignMethod::Md5, SignMethod::Sha256] {
            let spec = signer.sign(PackageSpec::new("2.0.0", vec![7; 5000]).sign_method(method));
            let text = spec.digestsign.as_deref().unwrap();
            let (core_method, digest) = match method {
                SignMethod::Md5 => (DigestMethod::Md5, md5::Md5::digest(&spec.data).to_vec()),
                SignMethod::Sha256 => (DigestMethod::Sha256, Sha256::digest(&spec.data).to_vec()),
            };
            let digest = ExpectedDigest::new(core_method, &digest).unwrap();
            assert_eq!(device_key().verify_text(&digest, Some(text)), Ok(()));
        }
        let multi = signer.sign(PackageSpec::files("2.0.0", [("a.bin", vec![1; 10])]));
        assert_eq!(multi.digestsign, None);
    }

    #[test]
    fn keys_that_are_not_rsa_2048_private_keys_are_refused() {
        assert!(PackageSigner::from_pem("not a key").is_err());
        assert!(PackageSigner::from_pem(signing_keys::TEST_PUBLIC_KEY_PEM).is_err());
    }

    #[test]
    fn the_wrong_signature_fault_spoils_only_its_device_s_tasks() {
        let signer = PackageSigner::from_pem(signing_keys::TEST_PRIVATE_KEY_PEM).unwrap();
        let good = signer.sign_digest(&[1; 16]);
        let push =
            format!(r#"{{"code":"1000","data":{{"version":"2","digestsign":"{good}"}},"id":1}}"#);
        let mut faults = FaultTable::default();
        let victim = DeviceId::new("a1PK", "dev1");
        let id = faults.add(victim, None, Fault::WrongSignature, crate::Times::Always);
        let other = spoil_signature(
            &mut faults,
            "/ota/device/upgrade/a1PK/dev2",
            push.clone().into(),
        );
        assert_eq!(other, push.as_bytes());
        let spoiled = spoil_signature(&mut faults, "/ota/device/upgrade/a1PK/dev1", push.into());
        let value: serde_json::Value = serde_json::from_slice(&spoiled).unwrap();
        let sent = value["data"]["digestsign"].as_str().unwrap();
        assert_ne!(sent, good);
        assert!(decode_signature(sent).is_some(), "well formed");
        assert_eq!(faults.fired(id), 1);
        let none = br#"{"id":"3","code":200,"data":{}}"#.to_vec();
        let reply = "/sys/a1PK/dev1/thing/ota/firmware/get_reply";
        assert_eq!(spoil_signature(&mut faults, reply, none.clone()), none);
    }
}
