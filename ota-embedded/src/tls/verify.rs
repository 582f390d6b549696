//! Server certificate verification: embedded-tls's `rustpki` verifier checks the chain up to
//! a CA and the signature of the handshake; this wrapper adds what the firmware needs around
//! it: several CAs (trust the old and the new root while the platform rotates them), the
//! validity dates against the driver's clock (embedded-tls reads time from a global), a host
//! name check of its own that can say "wrong host" apart from "wrong CA" (and matches IP
//! addresses), and the rule that every certificate signing another in the chain is a CA.

use embedded_tls::pki::CertVerifier;
use embedded_tls::{
    Aes128GcmSha256, Certificate, CertificateEntryRef, CertificateRef, CertificateVerifyRef,
    NoClock, TlsError, TlsVerifier,
};

use super::der;
use crate::connect::ConnectError;

/// Bytes of the server's certificate chain the verifier keeps until the handshake signature
/// is checked (a leaf and an intermediate of 1-2 KiB each fit).
pub const MAX_CHAIN_LEN: usize = 4096;

type Inner<'a> = CertVerifier<'a, Aes128GcmSha256, NoClock, MAX_CHAIN_LEN>;

/// Verifies against any of `cas`, at `now` (Unix seconds; `None`: dates not checked).
pub(crate) struct Verifier<'a, 'h> {
    cas: &'a [&'a [u8]],
    now: Option<u64>,
    host: &'h str,
    /// The verifier of the CA the chain verified against, for the handshake signature.
    chosen: Option<Inner<'a>>,
    /// Why the certificate was refused, when this wrapper can tell.
    pub(crate) refusal: Option<ConnectError>,
}

impl<'a, 'h> Verifier<'a, 'h> {
    pub(crate) fn new(cas: &'a [&'a [u8]], now: Option<u64>, host: &'h str) -> Self {
        Verifier {
            cas,
            now,
            host,
            chosen: None,
            refusal: None,
        }
    }

    fn refuse(&mut self, why: ConnectError) -> TlsError {
        self.refusal = Some(why);
        TlsError::InvalidCertificate
    }
}

impl TlsVerifier<Aes128GcmSha256> for Verifier<'_, '_> {
    fn set_hostname_verification(&mut self, _hostname: &str) -> Result<(), TlsError> {
        // The host name was given at construction (it is the one the stream connects to).
        Ok(())
    }

    fn verify_certificate(
        &mut self,
        transcript: &<Aes128GcmSha256 as embedded_tls::TlsCipherSuite>::Hash,
        cert: CertificateRef,
    ) -> Result<(), TlsError> {
        let mut leaf = None;
        for entry in &cert.entries {
            let CertificateEntryRef::X509(bytes) = entry else {
                return Err(self.refuse(ConnectError::Handshake("TLS: raw public keys refused")));
            };
            leaf = leaf.or(Some(*bytes));
            let Some(validity) = der::validity(bytes) else {
                return Err(self.refuse(ConnectError::Handshake("TLS: malformed certificate")));
            };
            if let Some(now) = self.now {
                if now < validity.not_before || now > validity.not_after {
                    return Err(self.refuse(ConnectError::CertificateExpired));
                }
            }
        }
        let leaf = leaf.ok_or(TlsError::InvalidCertificate)?;
        // Every certificate after the leaf signs the one before it, so it must be a CA:
        // embedded-tls does not check, and without this a leaf the CA issued to anyone could
        // sign a certificate for any host.
        let issuers_are_cas = cert.entries.iter().skip(1).all(|entry| match entry {
            CertificateEntryRef::X509(bytes) => der::is_ca(bytes),
            CertificateEntryRef::RawPublicKey(_) => false,
        });
        if !issuers_are_cas {
            return Err(self.refuse(ConnectError::CertificateRefused));
        }
        if !der::names_match(leaf, self.host) {
            return Err(self.refuse(ConnectError::WrongHost));
        }
        // The CA that issued the top of the chain the server sent (embedded-tls checks the
        // signatures from there down, and can only be asked once: it keeps the chain).
        let top = cert.entries.iter().rev().find_map(|entry| match entry {
            CertificateEntryRef::X509(bytes) => Some(*bytes),
            CertificateEntryRef::RawPublicKey(_) => None,
        });
        let issuer = top.and_then(der::issuer);
        let ca = self
            .cas
            .iter()
            .find(|ca| issuer.is_some() && der::subject(ca) == issuer);
        let Some(ca) = ca else {
            return Err(self.refuse(ConnectError::CertificateRefused));
        };
        let mut inner = Inner::new(Certificate::X509(ca));
        // The host name is decided above (with IP addresses, which embedded-tls does not
        // match); embedded-tls insists on matching a name too, so it gets one the certificate
        // carries.
        if let Some(name) = der::some_name(leaf).and_then(|n| core::str::from_utf8(n).ok()) {
            inner.set_hostname_verification(name)?;
        }
        match inner.verify_certificate(transcript, cert) {
            Ok(()) => {
                self.chosen = Some(inner);
                Ok(())
            }
            Err(TlsError::InvalidCertificate) => Err(self.refuse(ConnectError::CertificateRefused)),
            Err(e) => Err(e),
        }
    }

    fn verify_signature(&mut self, verify: CertificateVerifyRef) -> Result<(), TlsError> {
        match self.chosen.as_mut() {
            Some(inner) => inner.verify_signature(verify),
            None => Err(TlsError::InvalidCertificate),
        }
    }
}
