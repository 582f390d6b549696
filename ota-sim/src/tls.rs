//! The simulator's TLS identity: a CA and a server certificate made at start (rcgen, ECDSA
//! P-256, for `127.0.0.1` and `localhost`), or a certificate chain and key read from files.
//! One identity serves both the MQTT-over-TLS and the HTTPS listener.

use crate::Error;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

/// Where the TLS listeners' certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimTls {
    /// A fresh CA and a server certificate signed by it, for `127.0.0.1` and `localhost`
    /// (ECDSA P-256, which small TLS 1.3 clients verify); devices trust [`crate::Sim::ca_pem`].
    Generated,
    /// A PEM certificate chain (server certificate first) and its PEM private key.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// A server identity ready to accept TLS connections.
pub(crate) struct Identity {
    /// What devices must trust: the generated CA, or the chain given in the file.
    pub(crate) ca_pem: String,
    pub(crate) acceptor: TlsAcceptor,
}

impl Identity {
    pub(crate) fn new(tls: &SimTls) -> Result<Identity, Error> {
        let (ca_pem, chain, key) = match tls {
            SimTls::Generated => generate()?,
            SimTls::Files { cert, key } => read_files(cert, key)?,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        // TLS 1.3 and 1.2: embedded clients often speak only 1.3, older stacks only 1.2.
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| Error::Tls(format!("certificate and key do not fit: {e}")))?;
        Ok(Identity {
            ca_pem,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }
}

type Parts = (String, Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn generate() -> Result<Parts, Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let failed = |e: rcgen::Error| Error::Tls(format!("cannot make a certificate: {e}"));
    let ca_key = KeyPair::generate().map_err(failed)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "ota-sim test CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(failed)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().map_err(failed)?;
    let names = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
    let mut server = CertificateParams::new(names).map_err(failed)?;
    server
        .distinguished_name
        .push(DnType::CommonName, "ota-sim");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = server.signed_by(&key, &issuer).map_err(failed)?;
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    Ok((ca_cert.pem(), vec![cert.der().clone()], key))
}

fn read_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Parts, Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| Error::Tls(format!("{}: no private key ({e})", key.display())))?;
    let text = String::from_utf8_lossy(&cert_pem).into_owned();
    Ok((text, chain, key_der))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_round_trip_and_bad_files_are_clear_errors() {
        let (ca_pem, chain, _) = generate().unwrap();
        assert!(ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(chain.len(), 1);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        let files = SimTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        assert_eq!(Identity::new(&files).unwrap().ca_pem, made.cert.pem());
        let swapped = SimTls::Files {
            cert: key.clone(),
            key: cert.clone(),
        };
        let err = Identity::new(&swapped).err().unwrap().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let missing = SimTls::Files {
            cert: dir.path().join("nope.pem"),
            key,
        };
        let err = Identity::new(&missing).err().unwrap().to_string();
        assert!(
            err.contains("cannot read") && err.contains("nope.pem"),
            "{err}"
        );
    }
}
