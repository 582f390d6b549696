//! The product's public key of the secure upgrade (`--signing-key`, docs/protocol.md §11), read
//! from a file in one of the forms an operator has at hand: a PEM public key (`BEGIN PUBLIC
//! KEY` or `BEGIN RSA PUBLIC KEY`), or the modulus and exponent in hex as the console shows
//! them, one per line: `n: 9ef431...` and `e: 010001` (`=` works too; spaces and `:` between
//! hex pairs are ignored). Anything else, or a key that is not RSA-2048 with exponent 65537,
//! is a configuration error: a device must never quietly run without its check.

use std::path::Path;

use ota_core::signature::PackageKey;
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::traits::PublicKeyParts;

use crate::Error;

/// Reads and checks the key in `path`.
pub fn load_signing_key(path: &Path) -> Result<PackageKey, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Config(format!("cannot read signing key {}: {e}", path.display())))?;
    parse_signing_key(&text)
        .map_err(|e| Error::Config(format!("signing key {}: {e}", path.display())))
}

/// Parses the text of a key file (see the module documentation for the forms).
pub fn parse_signing_key(text: &str) -> Result<PackageKey, String> {
    let text = text.trim();
    let (n, e) = if text.starts_with("-----BEGIN") {
        let key = rsa::PublicKey::from_public_key_pem(text)
            .or_else(|_| rsa::PublicKey::from_pkcs1_pem(text))
            .map_err(|_| String::from("not a PEM RSA public key (BEGIN PUBLIC KEY)"))?;
        (
            key.n().to_be_bytes_trimmed_vartime().into_vec(),
            key.e().to_be_bytes_trimmed_vartime().into_vec(),
        )
    } else {
        parse_modulus_and_exponent(text)?
    };
    PackageKey::from_parts(&n, &e).map_err(|e| e.to_string())
}

/// `n: HEX` and `e: HEX` lines, in either order.
fn parse_modulus_and_exponent(text: &str) -> Result<(Vec<u8>, Vec<u8>), String> {
    let (mut n, mut e) = (None, None);
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once([':', '='])
            .ok_or_else(|| format!("{line:?} is not `n: HEX` or `e: HEX`"))?;
        let slot = match name.trim() {
            "n" | "N" | "modulus" => &mut n,
            "e" | "E" | "exponent" => &mut e,
            other => return Err(format!("unknown key field {other:?} (want n and e)")),
        };
        *slot = Some(hex_bytes(value).ok_or_else(|| format!("{} is not hex", name.trim()))?);
    }
    match (n, e) {
        (Some(n), Some(e)) => Ok((n, e)),
        _ => Err("want a PEM public key, or both `n: HEX` and `e: HEX`".into()),
    }
}

fn hex_bytes(value: &str) -> Option<Vec<u8>> {
    let digits: String = value
        .trim()
        .trim_start_matches("0x")
        .chars()
        .filter(|c| !c.is_whitespace() && *c != ':')
        .collect();
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let padded = if digits.len() % 2 == 1 {
        format!("0{digits}")
    } else {
        digits
    };
    (0..padded.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&padded[i..i + 2], 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_sim::signing_keys::{TEST_PUBLIC_KEY_PEM, TEST_RSA_PUBLIC_KEY_PEM};

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn the_three_forms_give_the_same_key() {
        let spki = parse_signing_key(TEST_PUBLIC_KEY_PEM).unwrap();
        let pkcs1 = parse_signing_key(TEST_RSA_PUBLIC_KEY_PEM).unwrap();
        assert_eq!(spki, pkcs1);
        let console = format!("n: {}\ne: 010001\n", hex(&spki.modulus()));
        assert_eq!(parse_signing_key(&console).unwrap(), spki);
        let upper = format!("E=10001\nN = 0x{}", hex(&spki.modulus()).to_uppercase());
        assert_eq!(parse_signing_key(&upper).unwrap(), spki);
    }

    #[test]
    fn unusable_keys_are_configuration_errors() {
        let n = hex(&parse_signing_key(TEST_PUBLIC_KEY_PEM).unwrap().modulus());
        for (text, why) in [
            ("", "both"),
            (
                "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----",
                "PEM",
            ),
            (&format!("n: {n}\ne: 03"), "65537"),
            (&format!("n: {}\ne: 010001", &n[..256]), "2048"),
            (&format!("n: {n}"), "both"),
            (&format!("n: {n}zz\ne: 010001"), "not hex"),
            (&format!("q: {n}\ne: 010001"), "unknown"),
        ] {
            let err = parse_signing_key(text).unwrap_err();
            assert!(err.contains(why), "{text:?}: {err}");
        }
        let err = load_signing_key(Path::new("/nonexistent/key.pem")).unwrap_err();
        assert!(err.to_string().contains("cannot read signing key"), "{err}");
    }
}
