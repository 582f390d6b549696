//! The simulator's TLS identity and what its listeners offer (docs/protocol.md §12).
//!
//! By default the chain is shaped like the platform's: an RSA-2048 root (written to the CA
//! file devices trust, never sent), one intermediate, and a leaf for `127.0.0.1`, `localhost`
//! and any extra names. The listeners offer TLS 1.3 and TLS 1.2 with ECDHE-RSA and static-RSA
//! key exchange, AES-GCM and AES-CBC: the official device SDKs' stock TLS speaks only TLS 1.2
//! static RSA with AES-CBC, which is why this is OpenSSL and not rustls. An ECDSA P-256 chain
//! (root and leaf) serves small TLS 1.3 clients that know no RSA. One identity serves both
//! the MQTT-over-TLS and the HTTPS listener.

use crate::Error;
use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::ssl::{SslAcceptor, SslMethod, SslVersion};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509Name, X509};
use serde::Serialize;
use std::path::PathBuf;

/// Where the TLS listeners' certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimTls {
    /// A fresh chain made at start, shaped per [`TlsOptions::key`], for `127.0.0.1`,
    /// `localhost` and [`TlsOptions::names`]; devices trust its root, [`crate::Sim::ca_pem`].
    Generated,
    /// A PEM certificate chain (server certificate first) and its PEM private key.
    Files {
        /// The certificate chain.
        cert: PathBuf,
        /// The private key (PKCS#8, PKCS#1 or SEC1).
        key: PathBuf,
    },
}

/// The key type of a generated chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsKey {
    /// RSA-2048 root, intermediate and leaf, as every chain of the platform is.
    #[default]
    Rsa,
    /// ECDSA P-256 root and leaf, for TLS 1.3 clients without RSA.
    Ecdsa,
}

/// The TLS versions the listeners accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub enum TlsVersions {
    /// TLS 1.2 only.
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "both")]
    Both,
}

/// The TLS 1.2 suites offered by default: ECDHE with AES-GCM, ECDHE with AES-CBC, and static
/// RSA with AES-CBC (what the official SDKs' stock builds can use), for RSA and ECDSA keys.
pub const DEFAULT_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:\
ECDHE-RSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA256:ECDHE-RSA-AES128-SHA256:\
ECDHE-ECDSA-AES256-SHA384:ECDHE-RSA-AES256-SHA384:ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA:\
ECDHE-ECDSA-AES256-SHA:ECDHE-RSA-AES256-SHA:AES128-GCM-SHA256:AES256-GCM-SHA384:\
AES128-SHA256:AES256-SHA256:AES128-SHA:AES256-SHA";

/// What the TLS listeners present and offer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// Key type of a generated chain (ignored with [`SimTls::Files`]).
    pub key: TlsKey,
    /// Extra host names or IP addresses of a generated leaf (ignored with [`SimTls::Files`]).
    pub names: Vec<String>,
    /// The versions accepted.
    pub versions: TlsVersions,
    /// An OpenSSL cipher list replacing [`DEFAULT_CIPHERS`]; TLS 1.3 suite names in it
    /// (`TLS_AES_128_GCM_SHA256`, ...) replace OpenSSL's TLS 1.3 default instead.
    pub ciphers: Option<String>,
}

/// A server identity ready to accept TLS connections.
pub(crate) struct Identity {
    /// What devices must trust: the generated root, or the chain given in the file.
    pub(crate) ca_pem: String,
    pub(crate) acceptor: SslAcceptor,
}

impl Identity {
    pub(crate) fn new(tls: &SimTls, options: &TlsOptions) -> Result<Identity, Error> {
        let Parts { ca_pem, chain, key } = match tls {
            SimTls::Generated if options.key == TlsKey::Rsa => generate_rsa(&options.names)?,
            SimTls::Generated => generate_ecdsa(&options.names)?,
            SimTls::Files { cert, key } => read_files(cert, key)?,
        };
        let failed = |what: &str, e: openssl::error::ErrorStack| Error::Tls(format!("{what}: {e}"));
        let mut builder = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server())
            .map_err(|e| failed("OpenSSL", e))?;
        let (min, max) = match options.versions {
            TlsVersions::Tls12 => (SslVersion::TLS1_2, SslVersion::TLS1_2),
            TlsVersions::Tls13 => (SslVersion::TLS1_3, SslVersion::TLS1_3),
            TlsVersions::Both => (SslVersion::TLS1_2, SslVersion::TLS1_3),
        };
        builder
            .set_min_proto_version(Some(min))
            .and_then(|()| builder.set_max_proto_version(Some(max)))
            .map_err(|e| failed("TLS versions", e))?;
        let list = options.ciphers.as_deref().unwrap_or(DEFAULT_CIPHERS);
        let (tls13, tls12): (Vec<&str>, Vec<&str>) = list
            .split([':', ','])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .partition(|s| s.starts_with("TLS_"));
        let bad_list = |e| Error::Tls(format!("no usable cipher in {list:?}: {e}"));
        if !tls12.is_empty() {
            builder
                .set_cipher_list(&tls12.join(":"))
                .map_err(bad_list)?;
        } else if options.versions == TlsVersions::Tls12 {
            return Err(Error::Tls(format!("no TLS 1.2 cipher in {list:?}")));
        } else {
            // Only TLS 1.3 suites were named: TLS 1.2 has none left to offer.
            builder
                .set_min_proto_version(Some(SslVersion::TLS1_3))
                .map_err(|e| failed("TLS versions", e))?;
        }
        if !tls13.is_empty() {
            builder
                .set_ciphersuites(&tls13.join(":"))
                .map_err(bad_list)?;
        }
        builder
            .set_certificate(&chain[0])
            .map_err(|e| failed("certificate", e))?;
        for extra in &chain[1..] {
            builder
                .add_extra_chain_cert(extra.clone())
                .map_err(|e| failed("certificate chain", e))?;
        }
        builder
            .set_private_key(&key)
            .and_then(|()| builder.check_private_key())
            .map_err(|e| Error::Tls(format!("certificate and key do not fit: {e}")))?;
        Ok(Identity {
            ca_pem,
            acceptor: builder.build(),
        })
    }
}

/// The root devices trust, the chain sent (leaf first) and the leaf's key.
struct Parts {
    ca_pem: String,
    chain: Vec<X509>,
    key: PKey<Private>,
}

fn ssl(e: openssl::error::ErrorStack) -> Error {
    Error::Tls(format!("cannot make a certificate: {e}"))
}

/// The fields every generated certificate shares: subject, issuer, serial, validity, key.
fn builder(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<&X509>,
    days: u32,
) -> Result<openssl::x509::X509Builder, Error> {
    let mut name = X509Name::builder().map_err(ssl)?;
    name.append_entry_by_nid(Nid::ORGANIZATIONNAME, "ota-sim")
        .map_err(ssl)?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn).map_err(ssl)?;
    let name = name.build();
    let mut b = X509::builder().map_err(ssl)?;
    b.set_version(2).map_err(ssl)?;
    let mut serial = BigNum::new().map_err(ssl)?;
    serial
        .rand(127, MsbOption::MAYBE_ZERO, false)
        .map_err(ssl)?;
    b.set_serial_number(&*Asn1Integer::from_bn(&serial).map_err(ssl)?)
        .map_err(ssl)?;
    b.set_subject_name(&name).map_err(ssl)?;
    b.set_issuer_name(issuer.map_or(&*name, |i| i.subject_name()))
        .map_err(ssl)?;
    // An hour back, so a device whose clock lags a little still accepts it.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    b.set_not_before(&*Asn1Time::from_unix(now - 3600).map_err(ssl)?)
        .map_err(ssl)?;
    b.set_not_after(&*Asn1Time::days_from_now(days).map_err(ssl)?)
        .map_err(ssl)?;
    b.set_pubkey(key).map_err(ssl)?;
    Ok(b)
}

/// A CA certificate, self-signed when `issuer` is `None`.
fn ca_cert(
    cn: &str,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
) -> Result<X509, Error> {
    let mut b = builder(cn, key, issuer.map(|i| i.0), 3650)?;
    let mut constraints = BasicConstraints::new();
    constraints.critical().ca();
    if issuer.is_some() {
        constraints.pathlen(0);
    }
    b.append_extension(constraints.build().map_err(ssl)?)
        .map_err(ssl)?;
    let usage = KeyUsage::new()
        .critical()
        .key_cert_sign()
        .crl_sign()
        .build()
        .map_err(ssl)?;
    b.append_extension(usage).map_err(ssl)?;
    let ski = SubjectKeyIdentifier::new()
        .build(&b.x509v3_context(issuer.map(|i| &**i.0), None))
        .map_err(ssl)?;
    b.append_extension(ski).map_err(ssl)?;
    if let Some((issuer_cert, _)) = issuer {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(false)
            .build(&b.x509v3_context(Some(issuer_cert), None))
            .map_err(ssl)?;
        b.append_extension(aki).map_err(ssl)?;
    }
    let signer = issuer.map_or(key, |i| i.1);
    b.sign(signer, MessageDigest::sha256()).map_err(ssl)?;
    Ok(b.build())
}

/// The server certificate for `127.0.0.1`, `localhost` and `names`.
fn leaf_cert(
    key: &PKey<Private>,
    names: &[String],
    issuer: &X509,
    issuer_key: &PKey<Private>,
    rsa: bool,
) -> Result<X509, Error> {
    let mut b = builder("ota-sim", key, Some(issuer), 825)?;
    b.append_extension(BasicConstraints::new().critical().build().map_err(ssl)?)
        .map_err(ssl)?;
    let mut usage = KeyUsage::new();
    usage.critical().digital_signature();
    if rsa {
        // Static-RSA key exchange encrypts the premaster secret to this key.
        usage.key_encipherment();
    }
    b.append_extension(usage.build().map_err(ssl)?)
        .map_err(ssl)?;
    b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(ssl)?)
        .map_err(ssl)?;
    let mut san = SubjectAlternativeName::new();
    san.ip("127.0.0.1").dns("localhost");
    for name in names {
        match name.parse::<std::net::IpAddr>() {
            Ok(_) => san.ip(name),
            Err(_) => san.dns(name),
        };
    }
    let san = san
        .build(&b.x509v3_context(Some(issuer), None))
        .map_err(|e| Error::Tls(format!("bad --tls-name in {names:?}: {e}")))?;
    b.append_extension(san).map_err(ssl)?;
    let aki = AuthorityKeyIdentifier::new()
        .keyid(false)
        .build(&b.x509v3_context(Some(issuer), None))
        .map_err(ssl)?;
    b.append_extension(aki).map_err(ssl)?;
    b.sign(issuer_key, MessageDigest::sha256()).map_err(ssl)?;
    Ok(b.build())
}

fn rsa_key() -> Result<PKey<Private>, Error> {
    PKey::from_rsa(Rsa::generate(2048).map_err(ssl)?).map_err(ssl)
}

fn ec_key() -> Result<PKey<Private>, Error> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(ssl)?;
    PKey::from_ec_key(EcKey::generate(&group).map_err(ssl)?).map_err(ssl)
}

fn pem(cert: &X509) -> Result<String, Error> {
    let bytes = cert.to_pem().map_err(ssl)?;
    String::from_utf8(bytes).map_err(|e| Error::Tls(e.to_string()))
}

/// Root (kept, only written out) -> intermediate -> leaf, all RSA-2048 with SHA-256.
fn generate_rsa(names: &[String]) -> Result<Parts, Error> {
    let root_key = rsa_key()?;
    let root = ca_cert("ota-sim Root CA", &root_key, None)?;
    let mid_key = rsa_key()?;
    let mid = ca_cert(
        "ota-sim Intermediate CA",
        &mid_key,
        Some((&root, &root_key)),
    )?;
    let key = rsa_key()?;
    let leaf = leaf_cert(&key, names, &mid, &mid_key, true)?;
    Ok(Parts {
        ca_pem: pem(&root)?,
        chain: vec![leaf, mid],
        key,
    })
}

/// Root -> leaf, ECDSA P-256 with SHA-256: short enough for a small TLS 1.3 client's buffers.
fn generate_ecdsa(names: &[String]) -> Result<Parts, Error> {
    let root_key = ec_key()?;
    let root = ca_cert("ota-sim test CA", &root_key, None)?;
    let key = ec_key()?;
    let leaf = leaf_cert(&key, names, &root, &root_key, false)?;
    Ok(Parts {
        ca_pem: pem(&root)?,
        chain: vec![leaf],
        key,
    })
}

fn read_files(cert: &std::path::Path, key: &std::path::Path) -> Result<Parts, Error> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("cannot read {}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let chain = X509::stack_from_pem(&cert_pem).unwrap_or_default();
    if chain.is_empty() {
        return Err(Error::Tls(format!("{}: no certificate", cert.display())));
    }
    let key = PKey::private_key_from_pem(&read(key)?)
        .map_err(|e| Error::Tls(format!("{}: no private key ({e})", key.display())))?;
    let text = String::from_utf8_lossy(&cert_pem).into_owned();
    Ok(Parts {
        ca_pem: text,
        chain,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rsa_chain_is_root_intermediate_leaf_and_verifies() {
        let names = vec!["ota.example.test".to_owned(), "10.1.2.3".to_owned()];
        let parts = generate_rsa(&names).unwrap();
        let root = X509::from_pem(parts.ca_pem.as_bytes()).unwrap();
        let (leaf, mid) = (&parts.chain[0], &parts.chain[1]);
        assert_eq!(parts.chain.len(), 2, "the root is not sent");
        assert!(mid.verify(&root.public_key().unwrap()).unwrap());
        assert!(leaf.verify(&mid.public_key().unwrap()).unwrap());
        assert_eq!(leaf.public_key().unwrap().bits(), 2048);
        let sans: Vec<String> = leaf
            .subject_alt_names()
            .unwrap()
            .iter()
            .map(|n| match (n.dnsname(), n.ipaddress()) {
                (Some(d), _) => d.to_owned(),
                (_, Some(ip)) => format!("{ip:?}"),
                _ => String::new(),
            })
            .collect();
        assert!(sans.contains(&"localhost".to_owned()), "{sans:?}");
        assert!(sans.contains(&"ota.example.test".to_owned()), "{sans:?}");
        assert!(sans.contains(&"[10, 1, 2, 3]".to_owned()), "{sans:?}");
        assert!(sans.contains(&"[127, 0, 0, 1]".to_owned()), "{sans:?}");
    }

    #[test]
    fn files_round_trip_and_bad_files_are_clear_errors() {
        let parts = generate_ecdsa(&[]).unwrap();
        assert!(parts.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let leaf_pem = pem(&parts.chain[0]).unwrap();
        std::fs::write(&cert, &leaf_pem).unwrap();
        std::fs::write(&key, parts.key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let options = TlsOptions::default();
        let files = SimTls::Files {
            cert: cert.clone(),
            key: key.clone(),
        };
        assert_eq!(Identity::new(&files, &options).unwrap().ca_pem, leaf_pem);
        let swapped = SimTls::Files {
            cert: key.clone(),
            key: cert.clone(),
        };
        let err = Identity::new(&swapped, &options).err().unwrap().to_string();
        assert!(err.contains("no certificate"), "{err}");
        let other_key = dir.path().join("other.pem");
        std::fs::write(
            &other_key,
            ec_key().unwrap().private_key_to_pem_pkcs8().unwrap(),
        )
        .unwrap();
        let mismatched = SimTls::Files {
            cert: cert.clone(),
            key: other_key,
        };
        let err = Identity::new(&mismatched, &options)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("do not fit"), "{err}");
        let missing = SimTls::Files {
            cert: dir.path().join("nope.pem"),
            key,
        };
        let err = Identity::new(&missing, &options).err().unwrap().to_string();
        assert!(
            err.contains("cannot read") && err.contains("nope.pem"),
            "{err}"
        );
    }

    #[test]
    fn a_cipher_list_openssl_does_not_know_is_a_clear_error() {
        let options = TlsOptions {
            key: TlsKey::Ecdsa,
            ciphers: Some("NO-SUCH-CIPHER".into()),
            ..TlsOptions::default()
        };
        let err = Identity::new(&SimTls::Generated, &options)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("no usable cipher"), "{err}");
    }
}
