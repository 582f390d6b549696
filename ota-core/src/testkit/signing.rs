//! A fixed RSA-2048 test key that signs packages like the platform does (docs/protocol.md §11),
//! for the unit tests, the property tests and the fuzz targets. Test-only: its private half
//! is public, so nothing outside tests may trust it.

use alloc::string::String;
use alloc::vec::Vec;

/// Standard base64 with padding (the platform's encoding of `digestsign`).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for group in bytes.chunks(3) {
        let b = [
            group[0],
            *group.get(1).unwrap_or(&0),
            *group.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= group.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn from_hex(parts: &[&str]) -> Vec<u8> {
    let hex: String = parts.concat();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("test key hex"))
        .collect()
}

/// The test key's modulus `n`, big-endian (exponent 65537).
pub fn test_modulus() -> Vec<u8> {
    from_hex(&[
        "9ef431da446a1f21dd5896a321408d6f87b97ff64b0cff5bae00fce32a2e578f",
        "e548fd742eaa4652b9c65e0e7bf4c12ad9e3b7e222c2abbbde059fc4f2463988",
        "b3298fb5d26f1026677ee631fad57ad0d7ab87a043d7cd39db61d43eddc331a0",
        "f8b57863d1c42d69415bb17f58a960d4468f20dee95f2de7a701f227974287bb",
        "09ebd09fb5ad4b59d3a99dfccb704a2ee9e3a7f9dc17fe8dd448c63dbca3e3ec",
        "db876793515dd7c6a5f0e6d32aec1f0e8472625c90999e96307421bda691c118",
        "22b94027d2e1137daddb3bd10c850a95cae38eb8aaa2757710b90d041dfa8598",
        "f3557aa701ecc681877b6bd25e877cc5a340fe1249b45b0896243f6bbe6e9503",
    ])
}

#[cfg(feature = "signature")]
pub use signer::*;

#[cfg(feature = "signature")]
mod signer {
    use alloc::format;
    use alloc::string::String;

    use rsa::pkcs1v15::Pkcs1v15Sign;
    use rsa::{BoxedUint, PrivateKey};
    use sha2::{Digest, Sha256};

    use super::{base64, from_hex, test_modulus};
    use crate::signature::{PackageKey, PackageSignature};
    use crate::task::ExpectedDigest;

    /// The public half of the test key.
    pub fn test_key() -> PackageKey {
        PackageKey::from_modulus(&test_modulus()).expect("the test key is RSA-2048")
    }

    fn private_key() -> PrivateKey {
        let prime = |parts: &[&str]| {
            let bytes = from_hex(parts);
            BoxedUint::from_be_slice(&bytes, 8 * bytes.len() as u32).expect("prime")
        };
        let p = prime(&[
            "d1dc3745cf74971ab16f2c7ec4a558ebe6f168588c4f7dc4679a2f415c2e1d0f",
            "3d940eac5fb9d5a1923bedcdde0e6b6a0d90a3ea794e95cca1f85282b7479806",
            "32eeeb219a0fef5c3b8e0b70227be90258b5f01434d73dd0ec50be6778106a5a",
            "1d38e22a1855bdeff04059746dca9a4820b2f37c0ea574a257a5e8a53aa0d575",
        ]);
        let q = prime(&[
            "c1e6c3951c14031f96429367742af6edc9b123bcf349ae22821aefac0a5dae03",
            "ec4c9de7849d0f4e9531c43f23e47334b09678a7623a0dd0eb2f833a55875e56",
            "43b5b6bc61d9df1b21bf6f4165f7d26b054e44bc76ec3ce7e98a3b04a5ef9baf",
            "cfd4b9985326af7e1cf5d9e8c00ca9ed45369d66976f5422c5768fe1978f5997",
        ]);
        PrivateKey::from_p_q(p, q, BoxedUint::from(65537u32)).expect("the test key")
    }

    /// The platform's signature of an image digest: PKCS#1 v1.5, SHA-256 over its bytes.
    pub fn sign_digest(digest: &ExpectedDigest) -> PackageSignature {
        let hashed = Sha256::digest(digest.bytes());
        let signature = private_key()
            .sign(Pkcs1v15Sign::new::<Sha256>(), &hashed)
            .expect("signing with the test key");
        signature.try_into().expect("a 256-byte signature")
    }

    /// `,"digestsign":"..."` for a push whose image has `digest`.
    pub fn digestsign_field(digest: &ExpectedDigest) -> String {
        format!(r#","digestsign":"{}""#, base64(&sign_digest(digest)))
    }
}
