//! The platform's root certificates (docs/protocol.md §12), built in as DER so that both
//! adapters reach the platform without a CA file: neither the Aliyun IoT Root CA nor
//! GlobalSign R1, which anchor every MQTT endpoint, is in the Mozilla store that
//! `webpki-roots` carries. A root nobody references is not linked, so firmware pays flash
//! only for the ones it uses.
//!
//! | root | key | valid to | anchors |
//! | --- | --- | --- | --- |
//! | Aliyun IoT Root CA | RSA-2048 | 2053-07-04 | MQTT port 8883 (instance endpoints) |
//! | GlobalSign Root CA (R1) | RSA-2048 | 2028-01-28 | MQTT ports 1883/443; older OSS URLs |
//! | GlobalSign Root CA - R3 | RSA-2048 | 2029-03-18 | OSS URLs (certificates since 2024-07) |
//! | GlobalSign Root CA - R6 | RSA-4096 | 2034-12-10 | carried by the platform's SDKs |
//! | GlobalSign Root R46 | RSA-4096 | 2046-03-20 | OSS URLs (certificates since 2026-06) |

/// One built-in root: a name for logs and its DER certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Its subject's common name (with the generation where the CN is just "GlobalSign").
    pub name: &'static str,
    /// The certificate, DER.
    pub der: &'static [u8],
}

/// "Aliyun IoT Root CA": the platform's own root, MQTT port 8883.
pub const ALIYUN_IOT_ROOT_CA: Root = Root {
    name: "Aliyun IoT Root CA",
    der: include_bytes!("../roots/aliyun-iot-root-ca.der"),
};

/// "GlobalSign Root CA" (R1): MQTT ports 1883/443 and older OSS certificates.
pub const GLOBALSIGN_ROOT_CA_R1: Root = Root {
    name: "GlobalSign Root CA (R1)",
    der: include_bytes!("../roots/globalsign-root-ca-r1.der"),
};

/// "GlobalSign Root CA - R3": OSS certificates issued since 2024-07.
pub const GLOBALSIGN_ROOT_CA_R3: Root = Root {
    name: "GlobalSign Root CA - R3",
    der: include_bytes!("../roots/globalsign-root-ca-r3.der"),
};

/// "GlobalSign Root CA - R6", which the platform's SDKs carry next to R1.
pub const GLOBALSIGN_ROOT_CA_R6: Root = Root {
    name: "GlobalSign Root CA - R6",
    der: include_bytes!("../roots/globalsign-root-ca-r6.der"),
};

/// "GlobalSign Root R46": OSS certificates issued since 2026-06.
pub const GLOBALSIGN_ROOT_R46: Root = Root {
    name: "GlobalSign Root R46",
    der: include_bytes!("../roots/globalsign-root-r46.der"),
};

/// All five, the default trust of both adapters.
pub const ALL: [Root; 5] = [
    ALIYUN_IOT_ROOT_CA,
    GLOBALSIGN_ROOT_CA_R1,
    GLOBALSIGN_ROOT_CA_R3,
    GLOBALSIGN_ROOT_CA_R6,
    GLOBALSIGN_ROOT_R46,
];

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    fn hex(bytes: &[u8]) -> alloc::string::String {
        use core::fmt::Write;
        let mut s = alloc::string::String::new();
        for b in bytes {
            let _ = write!(s, "{b:02X}");
        }
        s
    }

    /// The published SHA-256 fingerprints: a changed byte in any copy fails here.
    #[test]
    fn each_root_has_its_published_fingerprint() {
        let expected = [
            "7CA438A3976B5242D231F861499822DA855831382735836B361E7E9715661676",
            "EBD41040E4BB3EC742C9E381D31EF2A41A48B6685C96E7CEF3C1DF6CD4331C99",
            "CBB522D7B7F127AD6A0113865BDF1CD4102E7D0759AF635A7CF4720DC963C53B",
            "2CABEAFE37D06CA22ABA7391C0033D25982952C453647349763A3AB5AD6CCF69",
            "4FA3126D8D3A11D1C4855A4F807CBAD6CF919D3A5A88B03BEA2C6372D93C40C9",
        ];
        for (root, fingerprint) in ALL.iter().zip(expected) {
            assert_eq!(hex(&Sha256::digest(root.der)), fingerprint, "{}", root.name);
        }
    }

    #[test]
    fn names_are_distinct() {
        for (i, a) in ALL.iter().enumerate() {
            for b in &ALL[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.der, b.der);
            }
        }
    }
}
