//! TLS trust and library for MQTT and HTTPS. The default trust is the platform's five roots
//! built into ota-core (docs/protocol.md §12: neither the Aliyun IoT Root CA of port 8883
//! nor GlobalSign R1 of ports 1883/443 is in the Mozilla store) plus the Mozilla roots, so
//! `ota-agent` reaches every endpoint and OSS URL without a CA file.
//!
//! Two TLS libraries: rustls (`ring`, no C toolchain) by default; OpenSSL (cargo feature
//! `openssl`, through native-tls) for an endpoint that offers only TLS 1.2 CBC or static-RSA
//! suites, which rustls does not implement.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// Which certificate authorities a TLS connection trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The platform's roots (`ota_core::roots`) and the Mozilla roots.
    #[default]
    Builtin,
    /// Only the certificates of this PEM text (one or more `CERTIFICATE` blocks).
    CaPem(Vec<u8>),
    /// The built-in roots and the certificates of this PEM text.
    BuiltinAnd(Vec<u8>),
}

/// The TLS library of both transports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsBackend {
    /// rustls: TLS 1.2 and 1.3 with ECDHE and AES-GCM or ChaCha20 only.
    #[default]
    Rustls,
    /// OpenSSL (cargo feature `openssl`): also TLS 1.2 AES-CBC and static-RSA suites.
    Openssl,
}

impl TlsBackend {
    /// Fails when the library was left out of this build.
    pub fn check_available(self) -> Result<(), Error> {
        if self == TlsBackend::Openssl && !cfg!(feature = "openssl") {
            return Err(Error::Config(
                "--tls-backend openssl: this ota-agent was built without the `openssl` cargo \
                 feature; rebuild with it"
                    .into(),
            ));
        }
        Ok(())
    }
}

/// Reads every `CERTIFICATE` block of a PEM text; no block at all is an error.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("cannot read the CA certificates: {e}")))?;
    if certs.is_empty() {
        return Err(Error::Tls("the CA file holds no certificate".into()));
    }
    Ok(certs)
}

/// The built-in roots, the platform's first.
fn builtin_certificates() -> impl Iterator<Item = CertificateDer<'static>> {
    let platform = ota_core::roots::ALL
        .iter()
        .map(|root| CertificateDer::from(root.der));
    platform.chain(webpki_root_certs::TLS_SERVER_ROOT_CERTS.iter().cloned())
}

impl Trust {
    /// Every trusted certificate, DER.
    pub fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        Ok(match self {
            Trust::Builtin => builtin_certificates().collect(),
            Trust::CaPem(pem) => pem_certificates(pem)?,
            Trust::BuiltinAnd(pem) => {
                let extra = pem_certificates(pem)?;
                builtin_certificates().chain(extra).collect()
            }
        })
    }

    /// The root store of rustls. A given CA that does not parse is an error; a Mozilla root
    /// rustls cannot use is skipped.
    pub fn root_store(&self) -> Result<RootCertStore, Error> {
        let mut roots = RootCertStore::empty();
        let given = match self {
            Trust::Builtin => Vec::new(),
            Trust::CaPem(pem) | Trust::BuiltinAnd(pem) => pem_certificates(pem)?,
        };
        if !matches!(self, Trust::CaPem(_)) {
            roots.add_parsable_certificates(builtin_certificates());
        }
        for cert in given {
            roots
                .add(cert)
                .map_err(|e| Error::Tls(format!("unusable CA certificate: {e}")))?;
        }
        Ok(roots)
    }

    /// A rustls client configuration (for MQTT over TLS).
    pub fn rustls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(self.root_store()?)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The same trust for ureq (HTTPS downloads), with the chosen library.
    pub fn ureq_config(&self, backend: TlsBackend) -> Result<ureq::tls::TlsConfig, Error> {
        backend.check_available()?;
        let certs: Vec<_> = self
            .certificates()?
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
            .collect();
        let provider = match backend {
            TlsBackend::Rustls => ureq::tls::TlsProvider::Rustls,
            #[cfg(feature = "openssl")]
            TlsBackend::Openssl => ureq::tls::TlsProvider::NativeTls,
            #[cfg(not(feature = "openssl"))]
            TlsBackend::Openssl => ureq::tls::TlsProvider::Rustls,
        };
        Ok(ureq::tls::TlsConfig::builder()
            .provider(provider)
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)))
            .build())
    }

    /// An OpenSSL connector for MQTT with exactly this trust (not the system's store).
    #[cfg(feature = "openssl")]
    pub fn native_connector(&self) -> Result<native_tls::TlsConnector, Error> {
        let mut builder = native_tls::TlsConnector::builder();
        builder
            .disable_built_in_roots(true)
            .min_protocol_version(Some(native_tls::Protocol::Tlsv12));
        for der in self.certificates()? {
            // A Mozilla root OpenSSL cannot read is skipped, as with rustls.
            if let Ok(cert) = native_tls::Certificate::from_der(&der) {
                builder.add_root_certificate(cert);
            }
        }
        builder
            .build()
            .map_err(|e| Error::Tls(format!("cannot set up OpenSSL: {e}")))
    }
}

/// MQTT's TLS with this trust and library.
pub(crate) fn mqtt_tls(
    trust: &Trust,
    backend: TlsBackend,
) -> Result<rumqttc::TlsConfiguration, Error> {
    backend.check_available()?;
    Ok(match backend {
        #[cfg(feature = "openssl")]
        TlsBackend::Openssl => {
            rumqttc::TlsConfiguration::NativeConnector(trust.native_connector()?)
        }
        _ => rumqttc::TlsConfiguration::Rustls(trust.rustls_config()?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_trust_holds_the_platform_roots_and_the_mozilla_roots() {
        let certs = Trust::Builtin.certificates().unwrap_or_default();
        for root in ota_core::roots::ALL {
            assert!(
                certs.iter().any(|c| c.as_ref() == root.der),
                "{}",
                root.name
            );
        }
        assert_eq!(
            certs.len(),
            5 + webpki_root_certs::TLS_SERVER_ROOT_CERTS.len()
        );
        let store = Trust::Builtin.root_store().map(|s| s.len()).unwrap_or(0);
        assert_eq!(store, certs.len());
        assert!(Trust::Builtin.rustls_config().is_ok());
        assert!(Trust::Builtin.ureq_config(TlsBackend::Rustls).is_ok());
    }

    #[test]
    fn a_ca_file_replaces_or_adds() {
        let aliyun = pem_of(ota_core::roots::ALIYUN_IOT_ROOT_CA.der);
        let only = Trust::CaPem(aliyun.clone());
        assert_eq!(only.certificates().map(|c| c.len()).ok(), Some(1));
        assert_eq!(only.root_store().map(|s| s.len()).ok(), Some(1));
        let added = Trust::BuiltinAnd(aliyun);
        let builtin = Trust::Builtin.certificates().map(|c| c.len()).unwrap_or(0);
        assert_eq!(
            added.certificates().map(|c| c.len()).ok(),
            Some(builtin + 1)
        );
    }

    #[test]
    fn garbage_ca_is_a_clear_error() {
        for trust in [
            Trust::CaPem(b"not a certificate".to_vec()),
            Trust::BuiltinAnd(b"not a certificate".to_vec()),
        ] {
            let err = trust.rustls_config().err().map(|e| e.to_string());
            assert_eq!(
                err.as_deref(),
                Some("tls: the CA file holds no certificate")
            );
        }
    }

    /// PEM text of one DER certificate.
    pub(crate) fn pem_of(der: &[u8]) -> Vec<u8> {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut body = String::new();
        for chunk in der.chunks(3) {
            let n =
                chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
            for i in 0..4 {
                body.push(if i <= chunk.len() {
                    B64[(n >> (18 - 6 * i) & 63) as usize] as char
                } else {
                    '='
                });
            }
        }
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in body.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        pem.into_bytes()
    }
}
