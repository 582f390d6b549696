//! TLS 1.3 streams with embedded-tls (the `tls` feature): [`TlsConnector`] implements
//! [`Connect`], so [`crate::MqttClient`] and the driver's downloads run over it unchanged.
//!
//! What embedded-tls 0.19 speaks: TLS 1.3 only, cipher suite TLS_AES_128_GCM_SHA256, key
//! exchange on P-256, and server certificates signed with ECDSA P-256/SHA-256. RSA chains are
//! refused: embedded-tls's `rsa` feature needs `alloc` and unwraps the server's RSA key in its
//! signature check (a bad key would panic the firmware), so this crate does not turn it on. An endpoint that only
//! offers TLS 1.2 needs another client behind [`Connect`] (mbedtls, or rustls's unbuffered
//! API with a no_std crypto provider).
//!
//! The firmware supplies:
//! * the CAs to trust, DER-encoded: several may be given (the old and the new root while the
//!   platform rotates them); the chain's top certificate picks the CA by its issuer name;
//! * a cryptographic RNG ([`CryptoRngCore`]: a hardware TRNG, or a CSPRNG seeded from one)
//!   for the handshake's key share and random;
//! * a [`Clock`] whose [`Clock::unix_time`] gives the wall time for the certificates'
//!   validity dates. Until it returns `Some` (the firmware has not learnt the time yet, e.g.
//!   from SNTP or the platform's NTP topic, which needs a connection first), the dates are
//!   not checked; the chain, its signatures and the host name always are;
//! * the record buffers: `rx` must hold the largest record a server sends,
//!   [`RECORD_RX_LEN`] bytes (16 KiB of data plus overhead), and `tx` at least the largest
//!   write plus overhead ([`RECORD_TX_LEN`] suits the MQTT client and the downloads).
//!
//! One connector serves one stream at a time; the driver needs two (the MQTT session stays
//! open during a download): RAM per connector is `rx` + `tx` (20,736 bytes with the constants
//! below), plus, during the handshake only, the verifier's copy of the server chain
//! ([`MAX_CHAIN_LEN`] bytes) in the connect future.
//!
//! The OTA task over TLS (MQTT on 8883, `https://` downloads):
//!
//! ```no_run
//! use embedded_nal_async::{Dns, TcpConnect};
//! use embedded_storage_async::nor_flash::NorFlash;
//! use ota_core::{Config, DeviceIdentity};
//! use ota_embedded::tls::{CryptoRngCore, TlsConnector, RECORD_RX_LEN, RECORD_TX_LEN};
//! use ota_embedded::{
//!     Application, Bootloader, Clock, Driver, Error, Login, MqttClient, Parts, RecordStore,
//!     SecureMode, Security, Settings, Slot, TcpConnector,
//! };
//!
//! async fn ota_task<T: TcpConnect, D: Dns, F: NorFlash, R: NorFlash>(
//!     (net, dns): (&T, &D),
//!     cas: &[&[u8]], // DER roots, e.g. from a flash page an update can rewrite
//!     (mqtt_rng, http_rng): (impl CryptoRngCore, impl CryptoRngCore), // the TRNG
//!     (dfu, state): (F, R),
//!     bootloader: impl Bootloader,
//!     clock: impl Clock, // its unix_time() dates the certificates once known
//!     app: impl Application,
//! ) -> Result<(), Error> {
//!     // 2 x 20,736 bytes; in a firmware, `static`s (StaticCell) or the task's future.
//!     let (mut mqtt_rx, mut mqtt_tx) = ([0u8; RECORD_RX_LEN], [0u8; RECORD_TX_LEN]);
//!     let (mut http_rx, mut http_tx) = ([0u8; RECORD_RX_LEN], [0u8; RECORD_TX_LEN]);
//!     let tcp = || TcpConnector::new(net, dns);
//!     let mqtt_tls = TlsConnector::new(tcp(), cas, mqtt_rng, &clock, &mut mqtt_rx, &mut mqtt_tx);
//!     let http_tls = TlsConnector::new(tcp(), cas, http_rng, &clock, &mut http_rx, &mut http_tx);
//!
//!     let identity = DeviceIdentity::new("a1TestPK001", "dev01").map_err(Error::Agent)?;
//!     let mut config = Config::new(identity);
//!     config.write_block = F::ERASE_SIZE;
//!     let secret = "Q8mVdT3sJ2kLx7eRw9ZpN4cF6hYb1gUa";
//!     let Ok(login) = Login::new("a1TestPK001", "dev01", secret, "2524608000000", SecureMode::Tls)
//!     else { return Ok(()) };
//!     let host = "a1TestPK001.iot-as-mqtt.cn-shanghai.aliyuncs.com";
//!     let parts = Parts {
//!         mqtt: MqttClient::<_, 4096, 1024>::new(&mqtt_tls, host, 8883, Security::Tls, 60),
//!         http: &http_tls, // https:// URLs over TLS, http:// ones (if allowed) plain
//!         slot: Slot::new(dfu, 0, 256 * 1024).map_err(Error::Flash)?,
//!         records: RecordStore::new(state, 0).map_err(Error::Flash)?,
//!         boot: bootloader,
//!         clock: &clock,
//!         app,
//!         login,
//!         settings: Settings::default(),
//!     };
//!     let mut driver = Driver::new(config, env!("CARGO_PKG_VERSION"), parts).await?;
//!     driver.run().await?;
//!     Ok(())
//! }
//! ```

mod der;
mod framing;
mod lend;
mod verify;

use core::cell::RefCell;

use embedded_io_async::{ErrorKind, ErrorType, Read, Write};
use embedded_nal_async::{Dns, TcpConnect};
use embedded_tls::{
    Aes128GcmSha256, CryptoProvider, TlsConfig, TlsConnection, TlsContext, TlsError, TlsVerifier,
};

use crate::clock::Clock;
use crate::connect::{Connect, ConnectError, Security, TcpConnector};
pub use embedded_tls::{CryptoRng, CryptoRngCore};
use framing::{Framed, Restart};
use lend::{Lender, Loan};
use verify::Verifier;
pub use verify::MAX_CHAIN_LEN;

/// A receive record buffer that holds any record a server may send (16,384 bytes of data,
/// 256 of overhead).
pub const RECORD_RX_LEN: usize = 16_640;
/// A transmit record buffer for the driver's writes (larger writes are split into records).
pub const RECORD_TX_LEN: usize = 4_096;

/// TLS 1.3 (or plain TCP, for [`Security::Plain`]) over an `embedded-nal-async` stack.
pub struct TlsConnector<'a, T, D, R, C> {
    tcp: TcpConnector<'a, T, D>,
    cas: &'a [&'a [u8]],
    rng: RefCell<R>,
    clock: C,
    buffers: Lender<'a>,
    restart: Restart,
}

impl<'a, T, D, R, C> TlsConnector<'a, T, D, R, C>
where
    T: TcpConnect,
    D: Dns,
    R: CryptoRngCore,
    C: Clock,
{
    /// A connector trusting `cas` (DER certificates), with the record buffers `rx` and `tx`
    /// (see the module docs for their sizes).
    pub fn new(
        tcp: TcpConnector<'a, T, D>,
        cas: &'a [&'a [u8]],
        rng: R,
        clock: C,
        rx: &'a mut [u8],
        tx: &'a mut [u8],
    ) -> Self {
        TlsConnector {
            tcp,
            cas,
            rng: RefCell::new(rng),
            clock,
            buffers: Lender::new(rx, tx),
            restart: Restart::new(false),
        }
    }
}

impl<'a, T, D, R, C> Connect for TlsConnector<'a, T, D, R, C>
where
    T: TcpConnect,
    D: Dns,
    R: CryptoRngCore,
    C: Clock,
{
    type Connection<'c>
        = TlsStream<'c, T::Connection<'a>>
    where
        Self: 'c;

    #[allow(clippy::await_holding_refcell_ref)] // the RNG's borrow, see below
    async fn connect(
        &self,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Self::Connection<'_>, ConnectError> {
        if security == Security::Plain {
            let tcp = self.tcp.tcp(host, port).await?;
            return Ok(TlsStream(Stream::Plain(tcp)));
        }
        let (loan, rx, tx) = self.buffers.lend().ok_or(ConnectError::Busy)?;
        let tcp = self.tcp.tcp(host, port).await?;
        self.restart.set(false);
        let mut session = TlsConnection::new(Framed::new(tcp, &self.restart), rx, tx);
        // No server name indication for an IP address (RFC 6066 §3); the verifier checks the
        // host either way.
        let config = match host.parse::<core::net::IpAddr>() {
            Ok(_) => TlsConfig::new(),
            Err(_) => TlsConfig::new().with_server_name(host),
        };
        // Held through the handshake, and released if it is dropped half-way. No other
        // borrow can be live: the buffers are lent to this handshake only.
        let mut rng = self.rng.try_borrow_mut().map_err(|_| ConnectError::Busy)?;
        let mut provider = Provider {
            rng: &mut *rng,
            verifier: Verifier::new(self.cas, self.clock.unix_time(), host),
        };
        let opened = session.open(TlsContext::new(&config, &mut provider)).await;
        if let Err(e) = opened {
            return Err(provider.verifier.refusal.unwrap_or(handshake_error(e)));
        }
        Ok(TlsStream(Stream::Tls(Session {
            tls: session,
            in_call: false,
            restart: &self.restart,
            _loan: loan,
        })))
    }
}

/// What the handshake needs from the firmware: its RNG and the verifier.
struct Provider<'p, 'v, R> {
    rng: &'p mut R,
    verifier: Verifier<'v, 'p>,
}

impl<R: CryptoRngCore> CryptoProvider for Provider<'_, '_, R> {
    type CipherSuite = Aes128GcmSha256;
    type Signature = &'static [u8];

    fn rng(&mut self) -> impl CryptoRngCore {
        &mut *self.rng
    }

    fn verifier(&mut self) -> Result<&mut impl TlsVerifier<Aes128GcmSha256>, TlsError> {
        Ok(&mut self.verifier)
    }
}

fn handshake_error(e: TlsError) -> ConnectError {
    ConnectError::Handshake(match e {
        TlsError::HandshakeAborted(..) => "TLS: the server aborted the handshake",
        TlsError::InvalidCipherSuite | TlsError::InvalidSupportedVersions => {
            "TLS: the server offers no TLS 1.3 with AES-128-GCM"
        }
        TlsError::InvalidSignatureScheme | TlsError::InvalidSignature => {
            "TLS: unsupported or invalid server signature"
        }
        TlsError::InsufficientSpace | TlsError::OutOfMemory => {
            "TLS: a record or the certificate chain is larger than the buffers"
        }
        TlsError::Io(_) | TlsError::IoError | TlsError::ConnectionClosed => {
            "TLS: connection lost during the handshake"
        }
        _ => "TLS handshake failed",
    })
}

/// A stream of a [`TlsConnector`]: TLS, or plain TCP when that was asked for.
pub struct TlsStream<'c, S: Read + Write>(Stream<'c, S>);

// No heap to box into; the TLS variant is the one in use on a TLS connector.
#[allow(clippy::large_enum_variant)]
enum Stream<'c, S: Read + Write> {
    Plain(S),
    Tls(Session<'c, S>),
}

struct Session<'c, S: Read + Write> {
    tls: TlsConnection<'c, Framed<'c, S>, Aes128GcmSha256>,
    /// A read is under way (still set at the next read when it was dropped).
    in_call: bool,
    restart: &'c Restart,
    /// Declared after `tls`, so dropped after it: the buffers come back once unused.
    _loan: Loan<'c>,
}

impl<S: Read + Write> ErrorType for TlsStream<'_, S> {
    type Error = ErrorKind;
}

fn kind<E: embedded_io_async::Error>(e: E) -> ErrorKind {
    e.kind()
}

impl<S: Read + Write> Read for TlsStream<'_, S> {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, ErrorKind> {
        match &mut self.0 {
            Stream::Plain(tcp) => tcp.read(buf).await.map_err(kind),
            Stream::Tls(session) => {
                if session.in_call {
                    session.restart.set(true);
                }
                session.in_call = true;
                let read = session.tls.read(buf).await;
                session.in_call = false;
                read.map_err(kind)
            }
        }
    }
}

impl<S: Read + Write> Write for TlsStream<'_, S> {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, ErrorKind> {
        match &mut self.0 {
            Stream::Plain(tcp) => tcp.write(buf).await.map_err(kind),
            Stream::Tls(session) => session.tls.write(buf).await.map_err(kind),
        }
    }

    async fn flush(&mut self) -> Result<(), ErrorKind> {
        match &mut self.0 {
            Stream::Plain(tcp) => tcp.flush().await.map_err(kind),
            Stream::Tls(session) => session.tls.flush().await.map_err(kind),
        }
    }
}
