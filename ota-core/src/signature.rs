//! The package signature of the platform's secure upgrade (`digestsign`, docs/protocol.md §11).
//!
//! The platform signs the *binary* image digest (16 MD5 bytes or 32 SHA-256 bytes) with
//! RSA-2048 PKCS#1 v1.5 over SHA-256, and sends the 256-byte signature in base64 (hex of
//! 512 characters is accepted too). Decoding the text is always compiled, so that the saved
//! record has one layout in every build; the verifier and its key exist only with the
//! cargo feature `signature`, so a build without it cannot be given a key at all.

/// Bytes of an RSA-2048 signature (and of its modulus).
pub const SIGNATURE_LEN: usize = 256;

/// A decoded package signature.
pub type PackageSignature = [u8; SIGNATURE_LEN];

/// Decodes `digestsign`: 512 hex digits (either case), or base64 (standard alphabet,
/// padding optional) of exactly 256 bytes. `None` for anything else.
pub fn decode_signature(text: &str) -> Option<PackageSignature> {
    let text = text.as_bytes();
    let mut out = [0u8; SIGNATURE_LEN];
    if text.len() == 2 * SIGNATURE_LEN {
        for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
            *byte = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        return Some(out);
    }
    decode_base64(text, &mut out).then_some(out)
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

fn base64_value(c: u8) -> Option<u32> {
    let v = match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => return None,
    };
    Some(u32::from(v))
}

/// Fills `out` exactly from base64 `text`; false on any other length or a bad character.
fn decode_base64(text: &[u8], out: &mut [u8]) -> bool {
    let unpadded = match text {
        [head @ .., b'=', b'='] => head,
        [head @ .., b'='] => head,
        _ => text,
    };
    // Padding, when present, must complete the last group of four.
    if unpadded.len() != text.len() && text.len() % 4 != 0 {
        return false;
    }
    if unpadded.len() * 6 / 8 != out.len() || unpadded.len() % 4 == 1 {
        return false;
    }
    let mut bits = 0u32;
    let mut held = 0u32;
    let mut at = 0;
    for &c in unpadded {
        let Some(v) = base64_value(c) else {
            return false;
        };
        bits = (bits << 6) | v;
        held += 6;
        if held >= 8 {
            held -= 8;
            out[at] = (bits >> held) as u8;
            at += 1;
            bits &= (1 << held) - 1;
        }
    }
    // The bits left over after the last byte must be zero (a canonical encoding).
    at == out.len() && bits == 0
}

#[cfg(feature = "signature")]
pub use verifier::{PackageKey, SignatureError};

#[cfg(feature = "signature")]
mod verifier {
    use rsa::pkcs1v15::Pkcs1v15Sign;
    use rsa::traits::PublicKeyParts;
    use rsa::{BoxedUint, PublicKey};
    use sha2::{Digest, Sha256};

    use super::{decode_signature, SIGNATURE_LEN};
    use crate::error::Error;
    use crate::task::ExpectedDigest;

    /// The product's public key for package signatures: RSA-2048 with exponent 65537, as
    /// the platform's console shows it (`n` and `e`).
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub struct PackageKey {
        key: PublicKey,
    }

    /// Why a task's signature was refused; the text goes into the `-3` report.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
    pub enum SignatureError {
        /// The task carries no `digestsign`.
        #[error("package signature missing: the device requires a signed package (digestsign)")]
        Missing,
        /// `digestsign` is neither base64 nor hex of 256 bytes.
        #[error("package signature malformed: digestsign is not base64 or hex of 256 bytes")]
        Malformed,
        /// The signature is well formed but not the key's over this image's digest.
        #[error("package signature does not verify against the image digest")]
        Invalid,
    }

    const EXPONENT: u32 = 65537;
    const MODULUS_BITS: u32 = 8 * SIGNATURE_LEN as u32;

    impl PackageKey {
        /// The key with modulus `n` (big-endian, 256 bytes, top bit set; leading zero bytes
        /// are tolerated) and exponent 65537.
        pub fn from_modulus(modulus: &[u8]) -> Result<Self, Error> {
            Self::from_parts(modulus, &EXPONENT.to_be_bytes())
        }

        /// The key from its modulus and exponent, both big-endian. Anything but a 2048-bit
        /// modulus and the exponent 65537 is refused: a key that is not the platform's
        /// must be a configuration error, never a device that accepts everything.
        pub fn from_parts(modulus: &[u8], exponent: &[u8]) -> Result<Self, Error> {
            let modulus = strip_leading_zeros(modulus);
            if modulus.len() != SIGNATURE_LEN || modulus[0] & 0x80 == 0 {
                return Err(Error::InvalidConfig(
                    "signing key: the modulus must be 2048 bits (RSA-2048)",
                ));
            }
            let exponent = strip_leading_zeros(exponent);
            if exponent != &EXPONENT.to_be_bytes()[1..] {
                return Err(Error::InvalidConfig(
                    "signing key: the exponent must be 65537",
                ));
            }
            let invalid = Error::InvalidConfig("signing key: not a valid RSA public key");
            let n = BoxedUint::from_be_slice(modulus, MODULUS_BITS).map_err(|_| invalid)?;
            let key = PublicKey::new(n, BoxedUint::from(EXPONENT)).map_err(|_| invalid)?;
            Ok(PackageKey { key })
        }

        /// The modulus, big-endian (256 bytes).
        pub fn modulus(&self) -> alloc::vec::Vec<u8> {
            self.key.n().to_be_bytes_trimmed_vartime().into_vec()
        }

        /// Checks `digestsign` of a task against the image digest it claims to sign.
        pub fn verify_text(
            &self,
            digest: &ExpectedDigest,
            digestsign: Option<&str>,
        ) -> Result<(), SignatureError> {
            let text = digestsign.ok_or(SignatureError::Missing)?;
            let signature = decode_signature(text).ok_or(SignatureError::Malformed)?;
            self.verify(digest, &signature)
        }

        /// Checks a decoded signature: PKCS#1 v1.5 with SHA-256 over the binary digest.
        pub fn verify(
            &self,
            digest: &ExpectedDigest,
            signature: &[u8; SIGNATURE_LEN],
        ) -> Result<(), SignatureError> {
            let hashed = Sha256::digest(digest.bytes());
            self.key
                .verify(Pkcs1v15Sign::new::<Sha256>(), &hashed, signature)
                .map_err(|_| SignatureError::Invalid)
        }
    }

    fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        &bytes[first..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_decode_to_the_same_bytes() {
        let bytes: [u8; SIGNATURE_LEN] = core::array::from_fn(|i| (i * 7 + 3) as u8);
        let hex: alloc::string::String = bytes.iter().map(|b| alloc::format!("{b:02X}")).collect();
        assert_eq!(decode_signature(&hex), Some(bytes));
        let base64 = crate::testkit::signing::base64(&bytes);
        assert_eq!(decode_signature(&base64), Some(bytes));
        assert_eq!(decode_signature(base64.trim_end_matches('=')), Some(bytes));
    }

    #[test]
    fn anything_but_256_bytes_is_refused() {
        let bytes = [0xA5u8; SIGNATURE_LEN];
        let base64 = crate::testkit::signing::base64(&bytes);
        for bad in [
            "",
            "not a signature",
            &base64[..base64.len() - 4],
            &alloc::format!("{base64}AAAA"),
            &base64.replace('p', "-"),
            &alloc::format!("{}=", base64.trim_end_matches('=')),
            &"ab".repeat(255),
            &"zz".repeat(256),
        ] {
            assert_eq!(decode_signature(bad), None, "{bad:?}");
        }
        // A non-canonical last character (leftover bits set) is refused too.
        let mut loose = alloc::string::String::from(base64.trim_end_matches('='));
        loose.pop();
        loose.push('B');
        assert_eq!(decode_signature(&loose), None);
    }
}
