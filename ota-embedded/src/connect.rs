//! Opening the byte streams the driver talks over: the MQTT session and each download. One
//! trait, [`Connect`], takes a host name, a port and whether the stream is TLS, so the same
//! client code runs over plain TCP ([`TcpConnector`]), over TLS 1.3 (`TlsConnector`, the
//! `tls` feature) or over any other TLS client a firmware plugs in (a TLS 1.2 stack for an
//! endpoint without 1.3, a modem's secure sockets).

use core::net::SocketAddr;

use embedded_io_async::{ErrorKind, Read, Write};
use embedded_nal_async::{AddrType, Dns, TcpConnect};

/// Whether a stream is encrypted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Security {
    /// Plain TCP (local brokers, a plain `http://` URL).
    Plain,
    /// TLS, the server's certificate verified against the firmware's CA and the host name.
    Tls,
}

/// Why a stream could not be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The host name did not resolve.
    Dns,
    /// The TCP connection failed.
    Tcp(ErrorKind),
    /// TLS was asked of a connector that only speaks plain TCP.
    TlsUnsupported,
    /// The connector's one set of TLS buffers is still in use by an open stream.
    Busy,
    /// The server's certificate chain does not lead to any of the configured CAs.
    CertificateRefused,
    /// A certificate of the chain is not valid at the clock's time (expired or not yet).
    CertificateExpired,
    /// The server's certificate is not issued for the host name connected to.
    WrongHost,
    /// The TLS handshake failed for another reason (the text says which).
    Handshake(&'static str),
}

impl ConnectError {
    /// A short description, for failure reports and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::Dns => "DNS lookup failed",
            ConnectError::Tcp(_) => "connection failed",
            ConnectError::TlsUnsupported => "TLS not available on this connector",
            ConnectError::Busy => "TLS buffers in use",
            ConnectError::CertificateRefused => "TLS: certificate not issued by a trusted CA",
            ConnectError::CertificateExpired => "TLS: certificate expired or not yet valid",
            ConnectError::WrongHost => "TLS: certificate issued for another host name",
            ConnectError::Handshake(reason) => reason,
        }
    }
}

/// Opens streams to `host:port`.
///
/// `connect` takes `&self` so that a client can keep the stream next to a shared reference to
/// its connector. A connector that owns per-stream state (TLS buffers) serves one stream at a
/// time and answers [`ConnectError::Busy`] while it is open.
#[allow(async_fn_in_trait)] // firmware executors are single-threaded: no `Send` bound needed
pub trait Connect {
    /// An open stream; dropping it closes the connection.
    type Connection<'c>: Read + Write
    where
        Self: 'c;

    /// Resolves `host`, connects, and with [`Security::Tls`] completes the handshake with the
    /// server name `host` checked.
    async fn connect(
        &self,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Self::Connection<'_>, ConnectError>;
}

impl<C: Connect> Connect for &C {
    type Connection<'c>
        = C::Connection<'c>
    where
        Self: 'c;

    async fn connect(
        &self,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Self::Connection<'_>, ConnectError> {
        C::connect(self, host, port, security).await
    }
}

/// Plain TCP over an `embedded-nal-async` stack (embassy-net's `TcpClient`, say).
pub struct TcpConnector<'a, T, D> {
    stack: &'a T,
    dns: &'a D,
}

impl<'a, T: TcpConnect, D: Dns> TcpConnector<'a, T, D> {
    /// Connects through `stack`, resolving names with `dns`.
    pub fn new(stack: &'a T, dns: &'a D) -> Self {
        TcpConnector { stack, dns }
    }

    /// The TCP connection alone (TLS connectors build on it).
    pub async fn tcp(&self, host: &str, port: u16) -> Result<T::Connection<'a>, ConnectError> {
        let ip = self
            .dns
            .get_host_by_name(host, AddrType::Either)
            .await
            .map_err(|_| ConnectError::Dns)?;
        let stack: &'a T = self.stack;
        stack
            .connect(SocketAddr::new(ip, port))
            .await
            .map_err(|e| ConnectError::Tcp(embedded_io_async::Error::kind(&e)))
    }
}

impl<'a, T: TcpConnect, D: Dns> Connect for TcpConnector<'a, T, D> {
    type Connection<'c>
        = T::Connection<'a>
    where
        Self: 'c;

    async fn connect(
        &self,
        host: &str,
        port: u16,
        security: Security,
    ) -> Result<Self::Connection<'_>, ConnectError> {
        if security == Security::Tls {
            return Err(ConnectError::TlsUnsupported);
        }
        self.tcp(host, port).await
    }
}
