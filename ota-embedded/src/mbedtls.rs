//! TLS the platform speaks (docs/protocol.md §12), with mbedTLS 3.6 through `mbedtls-rs`
//! (the `mbedtls` feature): TLS 1.2, and 1.3 where the server offers it; RSA-2048/4096 and
//! ECDSA chains with SHA-256/384 signatures; ECDHE-RSA with AES-GCM and AES-CBC and, as the
//! last resort the platform's own SDKs rely on, static RSA with AES-CBC. mbedTLS checks the
//! chain, basicConstraints, key usage and the host name (sent as SNI too); the dates once
//! the [`Clock`] knows the wall time.
//!
//! Every MQTT endpoint and OSS URL chains to one of the platform's roots, so
//! [`CaChain::platform`] (the five of `ota_core::roots`) is the default trust; a firmware
//! replaces it with [`CaChain::new`] (e.g. roots kept in a flash page an update rewrites:
//! GlobalSign R1 expires in 2028).
//!
//! Dates: until [`Clock::unix_time`] is known (the platform's time comes over the first
//! connection, docs/protocol.md §13) a handshake verifies everything but the validity
//! dates; afterwards a certificate outside its dates is refused ([`ConnectError::CertificateExpired`]).
//!
//! mbedTLS is one global library instance with one RNG ([`Tls`]); each connector holds a
//! [`TlsReference`] to it, so the MQTT and the download connector share it. Its buffers come
//! from the C heap (`calloc`; on a firmware from `tinyrlibc` over the Rust allocator): per
//! open stream the 16 KiB receive and the send record buffers plus the handshake state
//! (BENCHMARKS.md has the measured peak).
//!
//! ```no_run
//! use embedded_nal_async::{Dns, TcpConnect};
//! use ota_embedded::mbedtls::{CaChain, MbedtlsConnector, Tls};
//! use ota_embedded::{Clock, MqttClient, Security, TcpConnector};
//!
//! fn connectors<'a, T: TcpConnect, D: Dns, C: Clock>(
//!     (net, dns): (&'a T, &'a D),
//!     tls: &'a Tls<'static>, // Tls::new(trng), once per firmware
//!     cas: &'a CaChain,      // CaChain::platform(), once
//!     clock: C,
//! ) -> Result<(), ota_embedded::ConnectError>
//! where
//!     C: Clone,
//! {
//!     let mqtt = MbedtlsConnector::new(TcpConnector::new(net, dns), tls.reference(), cas, clock.clone());
//!     let http = MbedtlsConnector::new(TcpConnector::new(net, dns), tls.reference(), cas, clock);
//!     let _client: MqttClient<'_, _, 4096, 1024> =
//!         MqttClient::new(&mqtt, "iot-06z00.mqtt.iothub.aliyuncs.com", 8883, Security::Tls, 60);
//!     let _ = http;
//!     Ok(())
//! }
//! ```

use core::ffi::CStr;
use core::sync::atomic::{AtomicU32, Ordering};

use alloc::vec::Vec;
use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use embedded_nal_async::{Dns, TcpConnect};
use mbedtls_rs::sys::{self, tm};
use mbedtls_rs::{
    AuthMode, Certificate, ClientSessionConfig, Session, SessionConfig, SessionError, X509,
};

use crate::clock::Clock;
use crate::connect::{Connect, ConnectError, Security, TcpConnector};

pub use mbedtls_rs::{Tls, TlsReference, TlsVersion};
/// The RNG trait [`Tls::new`] takes (rand_core 0.10): a hardware TRNG or a CSPRNG seeded
/// from one.
pub use rand_core_010::{CryptoRng, TryCryptoRng, TryRng};

/// The trusted roots, parsed once and shared by the connectors.
pub struct CaChain(Certificate<'static>);

impl CaChain {
    /// The platform's five roots (`ota_core::roots::ALL`).
    pub fn platform() -> Result<CaChain, ConnectError> {
        let roots = ota_core::roots::ALL.map(|root| root.der);
        CaChain::new(&roots)
    }

    /// These roots (DER) instead. mbedTLS takes several roots in one call only as a PEM
    /// bundle, so they are encoded once into a temporary buffer.
    pub fn new(roots: &[&[u8]]) -> Result<CaChain, ConnectError> {
        if roots.is_empty() {
            return Err(ConnectError::Handshake("TLS: no trusted root given"));
        }
        let mut pem = Vec::new();
        for der in roots {
            pem_block(der, &mut pem);
        }
        pem.push(0);
        let text = CStr::from_bytes_with_nul(&pem)
            .map_err(|_| ConnectError::Handshake("TLS: a root holds a NUL byte"))?;
        Certificate::new(X509::PEM(text))
            .map(CaChain)
            .map_err(|_| ConnectError::Handshake("TLS: a trusted root does not parse"))
    }
}

/// Appends `der` as one PEM `CERTIFICATE` block.
fn pem_block(der: &[u8], out: &mut Vec<u8>) {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    out.extend_from_slice(b"-----BEGIN CERTIFICATE-----\n");
    for (i, chunk) in der.chunks(3).enumerate() {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for k in 0..4 {
            out.push(if k <= chunk.len() {
                B64[(n >> (18 - 6 * k) & 63) as usize]
            } else {
                b'='
            });
        }
        if i % 16 == 15 {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(b"\n-----END CERTIFICATE-----\n");
}

/// The wall time mbedTLS checks dates against: Unix seconds, 0 while unknown. A global,
/// because mbedTLS's clock hook is one C function for the whole library.
static UNIX_SECONDS: AtomicU32 = AtomicU32::new(0);

/// What the hook says before any time is known (2026-01-01): any time will do, the date
/// flags are not used then.
const STAND_IN_SECONDS: u32 = 1_767_225_600;

struct WallClock;

impl sys::hook::wall_clock::MbedtlsWallClock for WallClock {
    fn instant(&self) -> Option<tm> {
        match UNIX_SECONDS.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(civil(secs)),
        }
    }
}

static WALL_CLOCK: WallClock = WallClock;

/// Installs the clock hook (idempotent: it stores one pointer).
fn install_wall_clock() {
    // SAFETY: the hook is a `'static` object whose only state is an atomic; mbedTLS calls
    // it during certificate verification, which happens after this returns.
    #[allow(unsafe_code)]
    unsafe {
        sys::hook::wall_clock::hook_wall_clock(Some(&WALL_CLOCK));
    }
}

/// Unix seconds as a UTC calendar time (days-from-civil inverse, proleptic Gregorian).
fn civil(secs: u32) -> tm {
    let days = i64::from(secs / 86_400);
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // Every field is small: the casts cannot truncate.
    tm {
        tm_sec: (rem % 60) as i32,
        tm_min: (rem / 60 % 60) as i32,
        tm_hour: (rem / 3600) as i32,
        tm_mday: day as i32,
        tm_mon: (month - 1) as i32,
        tm_year: (year - 1900) as i32,
        tm_wday: ((days + 4) % 7) as i32,
        ..tm::default()
    }
}

/// mbedTLS verification flags that only the dates raise.
const DATE_FLAGS: u32 = sys::MBEDTLS_X509_BADCERT_EXPIRED | sys::MBEDTLS_X509_BADCERT_FUTURE;

/// TLS 1.2/1.3 (or plain TCP, for [`Security::Plain`]) with mbedTLS over an
/// `embedded-nal-async` stack.
pub struct MbedtlsConnector<'a, T, D, C> {
    tcp: TcpConnector<'a, T, D>,
    tls: TlsReference<'a>,
    cas: &'a CaChain,
    clock: C,
    min: TlsVersion,
    max: Option<TlsVersion>,
}

impl<'a, T: TcpConnect, D: Dns, C: Clock> MbedtlsConnector<'a, T, D, C> {
    /// A connector trusting `cas`, speaking TLS 1.2 and 1.3 (the server picks).
    pub fn new(
        tcp: TcpConnector<'a, T, D>,
        tls: TlsReference<'a>,
        cas: &'a CaChain,
        clock: C,
    ) -> Self {
        install_wall_clock();
        MbedtlsConnector {
            tcp,
            tls,
            cas,
            clock,
            min: TlsVersion::Tls1_2,
            max: None,
        }
    }

    /// Only these versions (e.g. TLS 1.2 alone, as the platform documents for MQTT).
    pub fn with_versions(mut self, min: TlsVersion, max: TlsVersion) -> Self {
        self.min = min;
        self.max = Some(max);
        self
    }
}

impl<'a, T: TcpConnect, D: Dns, C: Clock> Connect for MbedtlsConnector<'a, T, D, C> {
    type Connection<'c>
        = MbedtlsStream<'c, T::Connection<'a>>
    where
        Self: 'c;

    async fn connect(
        &self,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Self::Connection<'_>, ConnectError> {
        let tcp = self.tcp.tcp(host, port).await?;
        if security == Security::Plain {
            return Ok(MbedtlsStream::Plain(tcp));
        }
        let mut name = Vec::with_capacity(host.len() + 1);
        name.extend_from_slice(host.as_bytes());
        name.push(0);
        let name = CStr::from_bytes_with_nul(&name)
            .map_err(|_| ConnectError::Handshake("TLS: host name holds a NUL byte"))?;
        // Seconds fit u32 until 2106. mbedTLS aborts the verification when its clock hook
        // has no time, so before the time is known the hook gets a stand-in (the date flags
        // it raises are ignored below); a time once known is never replaced by it.
        let now = self.clock.unix_time().and_then(|s| u32::try_from(s).ok());
        match now {
            Some(secs) => UNIX_SECONDS.store(secs, Ordering::Relaxed),
            None => {
                let _ = UNIX_SECONDS.compare_exchange(
                    0,
                    STAND_IN_SECONDS,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
        }
        let mut config = ClientSessionConfig::new();
        config.ca_chain = Some(self.cas.0.clone());
        config.min_version = self.min;
        config.max_version = self.max;
        // Optional: the handshake completes and the flags below decide, so that a chain can
        // be checked without its dates before the time is known. Nothing is sent on a
        // refused session: it is dropped here.
        config.auth_mode = AuthMode::Optional;
        let mut session = Session::new(self.tls, tcp, &SessionConfig::Client(config))
            .map_err(|_| ConnectError::Handshake("TLS: out of memory"))?;
        session
            .set_server_name(name)
            .map_err(|_| ConnectError::Handshake("TLS: unusable host name"))?;
        session.connect().await.map_err(handshake_error)?;
        let mut flags = session.tls_verification_details();
        if now.is_none() {
            flags &= !DATE_FLAGS;
        }
        match refusal(flags) {
            Some(error) => Err(error),
            None => Ok(MbedtlsStream::Tls(session)),
        }
    }
}

/// What the verification flags mean for the connection.
fn refusal(flags: u32) -> Option<ConnectError> {
    if flags == 0 {
        None
    } else if flags & sys::MBEDTLS_X509_BADCERT_NOT_TRUSTED != 0 {
        Some(ConnectError::CertificateRefused)
    } else if flags & sys::MBEDTLS_X509_BADCERT_CN_MISMATCH != 0 {
        Some(ConnectError::WrongHost)
    } else if flags & DATE_FLAGS != 0 {
        Some(ConnectError::CertificateExpired)
    } else {
        // Key usage, a revoked or otherwise bad certificate.
        Some(ConnectError::CertificateRefused)
    }
}

fn handshake_error(e: SessionError) -> ConnectError {
    let SessionError::MbedTls(e) = e else {
        return ConnectError::Handshake("TLS: connection lost during the handshake");
    };
    ConnectError::Handshake(match e.code() {
        sys::MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE | sys::MBEDTLS_ERR_SSL_HANDSHAKE_FAILURE => {
            "TLS: the server refused the handshake (no common version or suite)"
        }
        sys::MBEDTLS_ERR_SSL_BAD_PROTOCOL_VERSION => "TLS: the server offers no TLS 1.2 or 1.3",
        _ => "TLS handshake failed",
    })
}

/// A stream of an [`MbedtlsConnector`]: TLS, or plain TCP when that was asked for.
pub enum MbedtlsStream<'c, S: Read + Write> {
    /// Plain TCP.
    Plain(S),
    /// A verified TLS session.
    Tls(Session<'c, S>),
}

impl<S: Read + Write> ErrorType for MbedtlsStream<'_, S> {
    type Error = ErrorKind;
}

fn kind<E: embedded_io_async::Error>(e: E) -> ErrorKind {
    e.kind()
}

impl<S: Read + Write> Read for MbedtlsStream<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        match self {
            MbedtlsStream::Plain(tcp) => tcp.read(buf).await.map_err(kind),
            MbedtlsStream::Tls(session) => session.read(buf).await.map_err(kind),
        }
    }
}

impl<S: Read + Write> Write for MbedtlsStream<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        match self {
            MbedtlsStream::Plain(tcp) => tcp.write(buf).await.map_err(kind),
            MbedtlsStream::Tls(session) => session.write(buf).await.map_err(kind),
        }
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        match self {
            MbedtlsStream::Plain(tcp) => tcp.flush().await.map_err(kind),
            MbedtlsStream::Tls(session) => session.flush().await.map_err(kind),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_time_of_known_instants() {
        let t = civil(0);
        assert_eq!((t.tm_year, t.tm_mon, t.tm_mday, t.tm_wday), (70, 0, 1, 4));
        // 2026-12-05 07:20:28 UTC, a Saturday.
        let t = civil(1_796_455_228);
        assert_eq!(
            (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec, t.tm_wday),
            (126, 11, 5, 7, 20, 28, 6)
        );
        // 2028-02-29 (leap day) 12:00:00.
        let t = civil(1_835_438_400);
        assert_eq!(
            (t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour),
            (128, 1, 29, 12)
        );
    }

    #[test]
    fn flags_map_to_the_refusal() {
        assert_eq!(refusal(0), None);
        assert_eq!(refusal(8), Some(ConnectError::CertificateRefused));
        assert_eq!(refusal(4), Some(ConnectError::WrongHost));
        assert_eq!(refusal(1), Some(ConnectError::CertificateExpired));
        assert_eq!(refusal(512), Some(ConnectError::CertificateExpired));
        assert_eq!(refusal(1 | 8), Some(ConnectError::CertificateRefused));
    }

    #[test]
    fn the_platform_roots_parse_as_one_chain() {
        assert!(CaChain::platform().is_ok());
        assert!(CaChain::new(&[]).is_err());
        assert!(CaChain::new(&[b"not a certificate"]).is_err());
    }
}
