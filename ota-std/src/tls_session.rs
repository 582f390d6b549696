//! One blocking TLS connection that reports what was negotiated (version, suite, chain, and
//! which trusted root anchored it), for `ota-agent check`; and the one-line explanation of a
//! handshake rustls could not complete because the server offers only what rustls lacks.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::{CertificateDer, ServerName};

use crate::tls::{TlsBackend, Trust};

/// A connected, handshaken TLS stream.
pub trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// What a handshake negotiated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsReport {
    /// `TLS 1.2` or `TLS 1.3`.
    pub version: String,
    /// The IANA name of the suite (e.g. `TLS_RSA_WITH_AES_128_CBC_SHA`).
    pub suite: String,
    /// The subjects of the certificates the server sent, leaf first.
    pub chain: Vec<String>,
    /// The trusted root the chain ends at, and where that root comes from.
    pub anchor: String,
}

/// The addresses `host:port` resolves to.
pub fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {host}: {e}"))?
        .collect();
    if addrs.is_empty() {
        return Err(format!("{host} resolves to no address"));
    }
    Ok(addrs)
}

/// Connects to the first address that answers, within `timeout` each.
pub fn tcp(addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, timeout) {
            Ok(tcp) => {
                tcp.set_read_timeout(Some(timeout))
                    .and_then(|()| tcp.set_write_timeout(Some(timeout)))
                    .map_err(|e| format!("cannot set timeouts: {e}"))?;
                return Ok(tcp);
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// The TLS handshake with `host` over `tcp`, verifying the chain and the host name.
pub fn handshake(
    tcp: TcpStream,
    host: &str,
    port: u16,
    trust: &Trust,
    backend: TlsBackend,
) -> Result<(Box<dyn Stream>, TlsReport), String> {
    backend.check_available().map_err(|e| e.to_string())?;
    match backend {
        #[cfg(feature = "openssl")]
        TlsBackend::Openssl => openssl_handshake(tcp, host, trust),
        _ => rustls_handshake(tcp, host, port, trust),
    }
}

fn rustls_handshake(
    mut tcp: TcpStream,
    host: &str,
    port: u16,
    trust: &Trust,
) -> Result<(Box<dyn Stream>, TlsReport), String> {
    let config = trust.rustls_config().map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("{host} is not a valid server name: {e}"))?;
    let mut conn = rustls::ClientConnection::new(Arc::clone(&config), name)
        .map_err(|e| format!("TLS set-up failed: {e}"))?;
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut tcp) {
            let rustls_error = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>());
            return Err(match rustls_error {
                Some(error) => explain(error, host, port)
                    .unwrap_or_else(|| format!("TLS handshake failed: {error}")),
                None => format!("TLS handshake failed: {e}"),
            });
        }
    }
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLS 1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLS 1.2".to_owned(),
        other => format!("{other:?}"),
    };
    let suite = conn
        .negotiated_cipher_suite()
        .map(|s| {
            let name = format!("{:?}", s.suite());
            // rustls spells the TLS 1.3 suites TLS13_*; IANA spells them TLS_*.
            name.replacen("TLS13_", "TLS_", 1)
        })
        .unwrap_or_default();
    let chain: Vec<CertificateDer<'static>> = conn
        .peer_certificates()
        .unwrap_or_default()
        .iter()
        .map(|c| c.clone().into_owned())
        .collect();
    let report = report(version, suite, &chain, trust)?;
    Ok((Box::new(rustls::StreamOwned::new(conn, tcp)), report))
}

#[cfg(feature = "openssl")]
fn openssl_handshake(
    tcp: TcpStream,
    host: &str,
    trust: &Trust,
) -> Result<(Box<dyn Stream>, TlsReport), String> {
    use openssl::ssl::{SslConnector, SslMethod, SslVersion};
    use openssl::x509::store::X509StoreBuilder;
    use openssl::x509::X509;

    let failed = |e: openssl::error::ErrorStack| format!("cannot set up OpenSSL: {e}");
    let mut builder = SslConnector::builder(SslMethod::tls_client()).map_err(failed)?;
    builder
        .set_min_proto_version(Some(SslVersion::TLS1_2))
        .map_err(failed)?;
    let mut store = X509StoreBuilder::new().map_err(failed)?;
    for der in trust.certificates().map_err(|e| e.to_string())? {
        // A Mozilla root OpenSSL cannot read is skipped, as with rustls.
        if let Ok(cert) = X509::from_der(&der) {
            store.add_cert(cert).map_err(failed)?;
        }
    }
    builder
        .set_verify_cert_store(store.build())
        .map_err(failed)?;
    let stream = builder.build().connect(host, tcp).map_err(|e| match e {
        openssl::ssl::HandshakeError::Failure(mid) => {
            let verify = mid.ssl().verify_result();
            if verify == openssl::x509::X509VerifyResult::OK {
                format!("TLS handshake failed: {}", mid.error())
            } else {
                format!("TLS handshake failed: certificate verify failed: {verify}")
            }
        }
        other => format!("TLS handshake failed: {other}"),
    })?;
    let ssl = stream.ssl();
    let version = ssl.version_str().replace("TLSv", "TLS ");
    let suite = ssl
        .current_cipher()
        .map(|c| c.standard_name().unwrap_or(c.name()).to_owned())
        .unwrap_or_default();
    let chain: Vec<CertificateDer<'static>> = ssl
        .peer_cert_chain()
        .map(|chain| {
            chain
                .iter()
                .filter_map(|c| c.to_der().ok())
                .map(CertificateDer::from)
                .collect()
        })
        .unwrap_or_default();
    let report = report(version, suite, &chain, trust)?;
    Ok((Box::new(stream), report))
}

/// Subjects of the chain and the root that anchors it: the trusted certificate the server
/// sent last, or else the one whose subject is the last certificate's issuer.
fn report(
    version: String,
    suite: String,
    chain: &[CertificateDer<'static>],
    trust: &Trust,
) -> Result<TlsReport, String> {
    let mut subjects = Vec::new();
    for der in chain {
        let cert = parse(der).ok_or("the server sent a certificate that does not parse")?;
        subjects.push(cert.subject().to_string());
    }
    let last = chain.last().ok_or("the server sent no certificate")?;
    let issuer = parse(last).map(|c| c.issuer().as_raw().to_vec());
    let trusted = trust.certificates().map_err(|e| e.to_string())?;
    let anchor = trusted
        .iter()
        .find(|t| t.as_ref() == last.as_ref())
        .or_else(|| {
            trusted.iter().find(|t| {
                parse(t).map(|c| c.subject().as_raw().to_vec()) == issuer && issuer.is_some()
            })
        })
        .map(|der| describe_root(der, trust))
        .unwrap_or_else(|| "a root not named by its subject".to_owned());
    Ok(TlsReport {
        version,
        suite,
        chain: subjects,
        anchor,
    })
}

fn parse(der: &[u8]) -> Option<x509_parser::certificate::X509Certificate<'_>> {
    use x509_parser::prelude::FromDer;
    x509_parser::certificate::X509Certificate::from_der(der)
        .ok()
        .map(|(_, c)| c)
}

/// "built-in platform root Aliyun IoT Root CA", "Mozilla root CN=...", or "CA file CN=...".
fn describe_root(der: &[u8], trust: &Trust) -> String {
    use x509_parser::prelude::{FromDer, X509Certificate};
    if let Some(root) = ota_core::roots::ALL.iter().find(|r| r.der == der) {
        if !matches!(trust, Trust::CaPem(_)) {
            return format!("built-in platform root {}", root.name);
        }
    }
    let subject = X509Certificate::from_der(der)
        .map(|(_, c)| c.subject().to_string())
        .unwrap_or_default();
    let mozilla = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .any(|c| c.as_ref() == der);
    match trust {
        Trust::CaPem(_) => format!("CA file root {subject}"),
        _ if mozilla => format!("Mozilla root {subject}"),
        _ => format!("extra CA file root {subject}"),
    }
}

/// For a handshake rustls gave up because the server and rustls share no version or suite,
/// one line saying what the server offers (asked with OpenSSL, when built in) and what to do.
pub(crate) fn explain(error: &rustls::Error, host: &str, port: u16) -> Option<String> {
    use rustls::AlertDescription as A;
    let mismatch = match error {
        rustls::Error::AlertReceived(a) => {
            matches!(
                a,
                A::HandshakeFailure | A::ProtocolVersion | A::InsufficientSecurity
            )
        }
        rustls::Error::PeerIncompatible(_) => true,
        _ => false,
    };
    if !mismatch {
        return None;
    }
    let fix = "use --tls-backend openssl (tls_backend = \"openssl\")";
    Some(match offered(host, port) {
        Some((version, suite)) => format!(
            "{host}:{port} offers {version} with {suite}, which rustls does not speak \
             ({error}): {fix}"
        ),
        None => format!(
            "{host}:{port} accepted none of rustls's TLS 1.2/1.3 ECDHE suites with AES-GCM or \
             ChaCha20 ({error}); it may offer only AES-CBC or static-RSA suites: {fix}"
        ),
    })
}

/// The version and suite a server picks when offered everything OpenSSL has (no
/// certificate check: this only learns what it speaks).
#[cfg(feature = "openssl")]
fn offered(host: &str, port: u16) -> Option<(String, String)> {
    use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
    let mut builder = SslConnector::builder(SslMethod::tls_client()).ok()?;
    builder.set_verify(SslVerifyMode::NONE);
    builder.set_min_proto_version(Some(SslVersion::TLS1)).ok()?;
    builder.set_cipher_list("ALL:@SECLEVEL=0").ok()?;
    let addrs = resolve(host, port).ok()?;
    let tcp = tcp(&addrs, Duration::from_secs(5)).ok()?;
    let stream = builder.build().connect(host, tcp).ok()?;
    let ssl = stream.ssl();
    let cipher = ssl.current_cipher()?;
    let version = ssl.version_str().replace("TLSv", "TLS ");
    Some((
        version,
        cipher.standard_name().unwrap_or(cipher.name()).to_owned(),
    ))
}

#[cfg(not(feature = "openssl"))]
fn offered(_host: &str, _port: u16) -> Option<(String, String)> {
    None
}
