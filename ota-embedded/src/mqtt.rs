//! A small MQTT 3.1.1 client over any [`Connect`] (plain TCP or TLS), implementing
//! [`MqttTransport`]. Just what the agent needs: CONNECT with a login and a clean session,
//! SUBSCRIBE at QoS 1, PUBLISH at the QoS the agent asks for (QoS 0 is sent and forgotten,
//! QoS 1 counted until its PUBACK), incoming PUBLISH at QoS 0 or 1 (acknowledged), PINGREQ.
//!
//! Memory is fixed: a receive buffer of `RX` bytes (the largest incoming packet: a push with
//! a long signed URL needs about 2 KiB) and a transmit buffer of `TX` bytes (the largest
//! outgoing packet: the login, or a progress report, well under 512 bytes).
//!
//! `receive` is cancel-safe as long as the connection's `read` is (embassy-net's and tokio's
//! are): bytes are appended to the receive buffer only after a read completes, and a packet
//! is parsed only once it is whole. The PUBACK of a QoS 1 message is sent at the start of the
//! next call.

use embedded_io_async::{Read, Write};
use ota_core::Qos;

use crate::connect::{Connect, ConnectError, Security};
use crate::login::Login;
use crate::transport::{Message, MqttTransport};

/// Why an MQTT operation failed. Every error ends the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttError {
    /// The connection (TCP, TLS handshake) could not be opened.
    Connect(ConnectError),
    /// A read or write on the connection failed.
    Io(embedded_io_async::ErrorKind),
    /// The broker closed the connection (a refused login is often just that).
    Closed,
    /// CONNACK with a non-zero return code.
    Refused(u8),
    /// SUBACK with the failure code 0x80.
    SubscribeRefused,
    /// A packet does not fit the buffer.
    TooLarge,
    /// A malformed packet, or an operation while not connected.
    Protocol,
}

fn io<E: embedded_io_async::Error>(e: E) -> MqttError {
    MqttError::Io(e.kind())
}

/// MQTT 3.1.1 over a stream of `C` to `host:port`.
pub struct MqttClient<'a, C: Connect + 'a, const RX: usize, const TX: usize> {
    connector: &'a C,
    host: &'a str,
    port: u16,
    security: Security,
    keep_alive_secs: u16,
    conn: Option<C::Connection<'a>>,
    rx: [u8; RX],
    rx_len: usize,
    /// Bytes at the start of `rx` that belong to the packet returned last.
    consumed: usize,
    tx: [u8; TX],
    next_packet_id: u16,
    pending_ack: Option<u16>,
    /// QoS 1 publishes not acknowledged yet.
    unacked: u32,
}

impl<'a, C: Connect + 'a, const RX: usize, const TX: usize> MqttClient<'a, C, RX, TX> {
    /// A client for `host:port` (over TLS or not) with the given keep-alive (the driver
    /// pings every half of it).
    pub fn new(
        connector: &'a C,
        host: &'a str,
        port: u16,
        security: Security,
        keep_alive_secs: u16,
    ) -> Self {
        MqttClient {
            connector,
            host,
            port,
            security,
            keep_alive_secs,
            conn: None,
            rx: [0; RX],
            rx_len: 0,
            consumed: 0,
            tx: [0; TX],
            next_packet_id: 1,
            pending_ack: None,
            unacked: 0,
        }
    }

    /// QoS 1 publishes the broker has not acknowledged yet (QoS 0 ones are never counted).
    pub fn unacknowledged(&self) -> u32 {
        self.unacked
    }

    fn packet_id(&mut self) -> u16 {
        let id = self.next_packet_id;
        self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
        id
    }

    /// Sends `tx[..len]`; drops the connection on failure.
    async fn send(&mut self, len: usize) -> Result<(), MqttError> {
        let conn = self.conn.as_mut().ok_or(MqttError::Protocol)?;
        let result = match conn.write_all(&self.tx[..len]).await {
            Ok(()) => conn.flush().await.map_err(io),
            Err(e) => Err(io(e)),
        };
        if result.is_err() {
            self.conn = None;
        }
        result
    }

    async fn send_pending_ack(&mut self) -> Result<(), MqttError> {
        if let Some(id) = self.pending_ack {
            let [hi, lo] = id.to_be_bytes();
            self.tx[..4].copy_from_slice(&[0x40, 2, hi, lo]);
            self.send(4).await?;
            self.pending_ack = None;
        }
        Ok(())
    }

    /// Reads until a whole packet is buffered; returns its header length and total length.
    async fn next_packet(&mut self) -> Result<(usize, usize), MqttError> {
        if self.consumed > 0 {
            self.rx.copy_within(self.consumed..self.rx_len, 0);
            self.rx_len -= self.consumed;
            self.consumed = 0;
        }
        loop {
            if let Some((header, body)) = fixed_header(&self.rx[..self.rx_len])? {
                let total = header + body;
                if total > RX {
                    return Err(MqttError::TooLarge);
                }
                if self.rx_len >= total {
                    return Ok((header, total));
                }
            }
            let conn = self.conn.as_mut().ok_or(MqttError::Protocol)?;
            let n = conn.read(&mut self.rx[self.rx_len..]).await.map_err(io)?;
            if n == 0 {
                self.conn = None;
                return Err(MqttError::Closed);
            }
            self.rx_len += n;
        }
    }
}

/// The remaining-length encoding of MQTT: 7 bits per byte, high bit = more.
fn put_remaining_length(out: &mut [u8], mut len: usize) -> Option<usize> {
    let mut i = 0;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        *out.get_mut(i)? = byte;
        i += 1;
        if len == 0 {
            return Some(i);
        }
    }
}

/// `Some((header length, remaining length))` once the fixed header is complete.
fn fixed_header(buf: &[u8]) -> Result<Option<(usize, usize)>, MqttError> {
    let mut len = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        len |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some((2 + i, len)));
        }
    }
    Err(MqttError::Protocol)
}

/// Writes packets into a buffer; `None` when they do not fit.
struct Encoder<'b> {
    buf: &'b mut [u8],
    at: usize,
}

impl Encoder<'_> {
    fn bytes(&mut self, bytes: &[u8]) -> Option<()> {
        self.buf
            .get_mut(self.at..self.at + bytes.len())?
            .copy_from_slice(bytes);
        self.at += bytes.len();
        Some(())
    }

    fn string(&mut self, s: &[u8]) -> Option<()> {
        self.bytes(&u16::try_from(s.len()).ok()?.to_be_bytes())?;
        self.bytes(s)
    }
}

/// Builds a packet of type `first` whose variable part `body` writes into `tx`; returns
/// the packet's length. The body is written after a 5-byte gap, then moved behind the header.
fn packet(
    tx: &mut [u8],
    first: u8,
    body: impl FnOnce(&mut Encoder) -> Option<()>,
) -> Option<usize> {
    const GAP: usize = 5;
    let mut enc = Encoder { buf: tx, at: GAP };
    body(&mut enc)?;
    let len = enc.at - GAP;
    let mut header = [0u8; 5];
    header[0] = first;
    let n = 1 + put_remaining_length(&mut header[1..], len)?;
    tx.copy_within(GAP..GAP + len, n);
    tx[..n].copy_from_slice(&header[..n]);
    Some(n + len)
}

impl<'a, C: Connect + 'a, const RX: usize, const TX: usize> MqttTransport
    for MqttClient<'a, C, RX, TX>
{
    type Error = MqttError;

    async fn connect(&mut self, login: &Login) -> Result<(), MqttError> {
        self.conn = None;
        self.rx_len = 0;
        self.consumed = 0;
        self.pending_ack = None;
        self.unacked = 0;
        let connector: &'a C = self.connector;
        let conn = connector
            .connect(self.host, self.port, self.security)
            .await
            .map_err(MqttError::Connect)?;
        self.conn = Some(conn);
        let keep_alive = self.keep_alive_secs.to_be_bytes();
        let len = packet(&mut self.tx, 0x10, |e| {
            e.string(b"MQTT")?;
            // Level 4 (3.1.1); flags: username, password, clean session.
            e.bytes(&[4, 0xC2, keep_alive[0], keep_alive[1]])?;
            e.string(login.client_id.as_bytes())?;
            e.string(login.username.as_bytes())?;
            e.string(login.password.as_bytes())
        })
        .ok_or(MqttError::TooLarge)?;
        self.send(len).await?;
        let (header, total) = self.next_packet().await?;
        self.consumed = total;
        match (self.rx[0], &self.rx[header..total]) {
            (0x20, [_, 0]) => Ok(()),
            (0x20, [_, code]) => {
                self.conn = None;
                Err(MqttError::Refused(*code))
            }
            _ => {
                self.conn = None;
                Err(MqttError::Protocol)
            }
        }
    }

    async fn subscribe(&mut self, topic: &str) -> Result<(), MqttError> {
        self.send_pending_ack().await?;
        let id = self.packet_id().to_be_bytes();
        let len = packet(&mut self.tx, 0x82, |e| {
            e.bytes(&id)?;
            e.string(topic.as_bytes())?;
            e.bytes(&[1])
        })
        .ok_or(MqttError::TooLarge)?;
        self.send(len).await
    }

    async fn publish(&mut self, topic: &str, payload: &[u8], qos: Qos) -> Result<(), MqttError> {
        self.send_pending_ack().await?;
        let len = match qos {
            // No packet identifier, no PUBACK to wait for.
            Qos::AtMostOnce => packet(&mut self.tx, 0x30, |e| {
                e.string(topic.as_bytes())?;
                e.bytes(payload)
            }),
            Qos::AtLeastOnce => {
                let id = self.packet_id().to_be_bytes();
                packet(&mut self.tx, 0x32, |e| {
                    e.string(topic.as_bytes())?;
                    e.bytes(&id)?;
                    e.bytes(payload)
                })
            }
        }
        .ok_or(MqttError::TooLarge)?;
        self.send(len).await?;
        if qos == Qos::AtLeastOnce {
            self.unacked += 1;
        }
        Ok(())
    }

    async fn receive(&mut self) -> Result<Message<'_>, MqttError> {
        self.send_pending_ack().await?;
        loop {
            let (header, total) = self.next_packet().await?;
            self.consumed = total;
            let first = self.rx[0];
            match first >> 4 {
                3 => {
                    let qos = (first >> 1) & 3;
                    let body = &self.rx[header..total];
                    let (topic, rest) = split_string(body).ok_or(MqttError::Protocol)?;
                    let payload = if qos > 0 {
                        let (id, payload) =
                            rest.split_first_chunk::<2>().ok_or(MqttError::Protocol)?;
                        self.pending_ack = Some(u16::from_be_bytes(*id));
                        payload
                    } else {
                        rest
                    };
                    let topic = core::str::from_utf8(topic).map_err(|_| MqttError::Protocol)?;
                    return Ok(Message { topic, payload });
                }
                // SUBACK: one return code per filter; 0x80 is a refusal.
                9 if self.rx[header..total]
                    .get(2..)
                    .is_some_and(|c| c.contains(&0x80)) =>
                {
                    return Err(MqttError::SubscribeRefused);
                }
                4 => self.unacked = self.unacked.saturating_sub(1),
                // SUBACK, PINGRESP, anything else the broker may send: nothing to do.
                _ => {}
            }
        }
    }

    async fn disconnect(&mut self) -> Result<(), MqttError> {
        if self.conn.is_none() {
            return Ok(());
        }
        self.send_pending_ack().await?;
        while self.unacked > 0 {
            let (_, total) = self.next_packet().await?;
            self.consumed = total;
            // Only PUBACKs matter now; a push arriving meanwhile is re-sent on the next
            // connect (the agent asks for its task).
            if self.rx[0] >> 4 == 4 {
                self.unacked -= 1;
            }
        }
        self.tx[..2].copy_from_slice(&[0xE0, 0]);
        let sent = self.send(2).await;
        self.conn = None;
        sent
    }

    async fn ping(&mut self) -> Result<(), MqttError> {
        self.send_pending_ack().await?;
        self.tx[..2].copy_from_slice(&[0xC0, 0]);
        self.send(2).await
    }
}

/// An MQTT string (u16 length, bytes) and what follows it.
fn split_string(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = buf.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaining_length_round_trips() {
        for len in [0usize, 1, 127, 128, 16_383, 16_384, 2_097_151] {
            let mut buf = [0u8; 6];
            let n = put_remaining_length(&mut buf[1..], len).unwrap();
            assert_eq!(fixed_header(&buf[..1 + n]), Ok(Some((1 + n, len))));
            assert_eq!(
                fixed_header(&buf[..n]),
                Ok(None),
                "incomplete header of {len}"
            );
        }
        assert_eq!(
            fixed_header(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF]),
            Err(MqttError::Protocol)
        );
    }

    #[test]
    fn publish_packet_is_encoded_per_the_spec() {
        let mut tx = [0u8; 64];
        let len = packet(&mut tx, 0x32, |e| {
            e.string(b"a/b")?;
            e.bytes(&[0, 7])?;
            e.bytes(b"hi")
        })
        .unwrap();
        assert_eq!(
            &tx[..len],
            &[0x32, 9, 0, 3, b'a', b'/', b'b', 0, 7, b'h', b'i']
        );
        assert_eq!(packet(&mut tx, 0x32, |e| e.bytes(&[0; 60])), None);
    }

    #[test]
    fn strings_split_off_their_payload() {
        assert_eq!(
            split_string(&[0, 2, b'x', b'y', 9]),
            Some((&b"xy"[..], &[9][..]))
        );
        assert_eq!(split_string(&[0, 3, b'x']), None);
    }
}
