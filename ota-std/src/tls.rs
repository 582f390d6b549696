//! TLS trust for MQTT and HTTPS: the Mozilla roots (webpki-roots) for the real cloud, or a
//! given CA in PEM for private brokers and tests. Both transports use rustls with `ring`, so
//! no C toolchain is needed to build the agent.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

use crate::Error;

/// Which certificate authorities a TLS connection trusts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Trust {
    /// The Mozilla root store compiled into the binary (what the Alibaba endpoints need).
    #[default]
    WebPkiRoots,
    /// Only the certificates of this PEM text (one or more `CERTIFICATE` blocks).
    CaPem(Vec<u8>),
}

impl Trust {
    fn certificates(&self) -> Result<Vec<CertificateDer<'static>>, Error> {
        let Trust::CaPem(pem) = self else {
            return Ok(Vec::new());
        };
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Tls(format!("cannot read the CA certificates: {e}")))?;
        if certs.is_empty() {
            return Err(Error::Tls("the CA file holds no certificate".into()));
        }
        Ok(certs)
    }

    /// A rustls client configuration (for MQTT over TLS).
    pub fn rustls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut roots = RootCertStore::empty();
        match self {
            Trust::WebPkiRoots => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            Trust::CaPem(_) => {
                for cert in self.certificates()? {
                    roots
                        .add(cert)
                        .map_err(|e| Error::Tls(format!("unusable CA certificate: {e}")))?;
                }
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// The same trust for ureq (HTTPS downloads).
    pub fn ureq_config(&self) -> Result<ureq::tls::TlsConfig, Error> {
        let roots = match self {
            Trust::WebPkiRoots => ureq::tls::RootCerts::WebPki,
            Trust::CaPem(_) => {
                let certs: Vec<_> = self
                    .certificates()?
                    .iter()
                    .map(|der| ureq::tls::Certificate::from_der(der).to_owned())
                    .collect();
                ureq::tls::RootCerts::Specific(Arc::new(certs))
            }
        };
        Ok(ureq::tls::TlsConfig::builder().root_certs(roots).build())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_pki_roots_build() {
        assert!(Trust::WebPkiRoots.rustls_config().is_ok());
        assert!(Trust::WebPkiRoots.ureq_config().is_ok());
    }

    #[test]
    fn garbage_ca_is_a_clear_error() {
        let err = Trust::CaPem(b"not a certificate".to_vec())
            .rustls_config()
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("tls: the CA file holds no certificate")
        );
    }
}
