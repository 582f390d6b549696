//! The little of the MQTT 3.1.1 wire format the listener front needs: whole packets off a
//! stream, the client id of a CONNECT, a SUBSCRIBE to send and its SUBACK to recognise.

use std::io;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest CONNECT the front accepts (client id, username and password are short).
pub(crate) const MAX_CONNECT: usize = 16 * 1024;
/// Largest packet the front frames while it looks for its SUBACK (the broker's own limit).
pub(crate) const MAX_PACKET: usize = 1 << 21;

const CONNECT: u8 = 1;
const CONNACK: u8 = 2;
const SUBACK: u8 = 9;

/// Reads one whole packet (fixed header included); `Ok(None)` on a clean end of stream.
pub(crate) async fn read_packet<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> io::Result<Option<Vec<u8>>> {
    let mut first = [0u8; 1];
    if r.read(&mut first).await? == 0 {
        return Ok(None);
    }
    let mut packet = vec![first[0]];
    let mut len = 0usize;
    for shift in [0, 7, 14, 21] {
        let b = r.read_u8().await?;
        packet.push(b);
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            if len > max {
                return Err(io::Error::other(format!("packet of {len} bytes")));
            }
            let header = packet.len();
            packet.resize(header + len, 0);
            r.read_exact(&mut packet[header..]).await?;
            return Ok(Some(packet));
        }
    }
    Err(io::Error::other("malformed remaining length"))
}

/// The packet type (upper four bits of the first byte).
fn kind(packet: &[u8]) -> u8 {
    packet.first().map_or(0, |b| b >> 4)
}

/// Where the variable header starts.
fn body(packet: &[u8]) -> &[u8] {
    let len_bytes = packet[1..].iter().take_while(|b| *b & 0x80 != 0).count() + 1;
    packet.get(1 + len_bytes..).unwrap_or(&[])
}

/// The client id of a CONNECT packet, or `None` when it is not one.
pub(crate) fn connect_client_id(packet: &[u8]) -> Option<String> {
    if kind(packet) != CONNECT {
        return None;
    }
    let b = body(packet);
    let name_len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    // Protocol name, level, flags, keep-alive.
    let mut at = 2 + name_len + 4;
    if *b.get(2 + name_len)? == 5 {
        // MQTT 5 properties: a variable-length count, then the properties.
        let mut props = 0usize;
        for shift in [0, 7, 14, 21] {
            let byte = *b.get(at)?;
            at += 1;
            props |= usize::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
        }
        at += props;
    }
    let id_len = usize::from(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]));
    let id = b.get(at + 2..at + 2 + id_len)?;
    String::from_utf8(id.to_vec()).ok()
}

/// The keep-alive of a CONNECT packet in seconds (0: none), or `None` when it is not one.
pub(crate) fn connect_keep_alive(packet: &[u8]) -> Option<u16> {
    if kind(packet) != CONNECT {
        return None;
    }
    let b = body(packet);
    let name_len = usize::from(u16::from_be_bytes([*b.first()?, *b.get(1)?]));
    // Protocol name, level, flags, then the keep-alive.
    let at = 2 + name_len + 2;
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Whether a CONNACK accepts the connection (return code 0).
pub(crate) fn connack_accepted(packet: &[u8]) -> bool {
    kind(packet) == CONNACK && body(packet).get(1) == Some(&0)
}

/// A SUBSCRIBE for `filters` at QoS 1 with packet id `id`.
pub(crate) fn subscribe(id: u16, filters: &[String]) -> Vec<u8> {
    let mut rest = id.to_be_bytes().to_vec();
    for f in filters {
        rest.extend_from_slice(&(f.len() as u16).to_be_bytes());
        rest.extend_from_slice(f.as_bytes());
        rest.push(1);
    }
    let mut packet = vec![0x82];
    let mut len = rest.len();
    loop {
        let byte = (len & 0x7f) as u8;
        len >>= 7;
        if len == 0 {
            packet.push(byte);
            break;
        }
        packet.push(byte | 0x80);
    }
    packet.extend(rest);
    packet
}

/// Whether a packet is the SUBACK of packet id `id`.
pub(crate) fn is_suback(packet: &[u8], id: u16) -> bool {
    kind(packet) == SUBACK && body(packet).get(..2) == Some(&id.to_be_bytes()[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CONNECT as rumqttc and the C SDKs send it (level 4, username and password flags).
    fn connect(id: &str, level: u8) -> Vec<u8> {
        let mut rest = vec![0, 4, b'M', b'Q', b'T', b'T', level, 0xc2, 0, 60];
        if level == 5 {
            rest.extend([3, 0x21, 0, 10]); // properties: receive maximum 10
        }
        rest.extend_from_slice(&(id.len() as u16).to_be_bytes());
        rest.extend_from_slice(id.as_bytes());
        rest.extend([0, 1, b'u', 0, 1, b'p']);
        let mut p = vec![0x10, rest.len() as u8];
        p.extend(rest);
        p
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    #[test]
    fn packets_are_framed_and_connect_ids_read() {
        run(packets_are_framed()).unwrap();
    }

    async fn packets_are_framed() -> io::Result<()> {
        let id = "a1PK.dev|timestamp=1,_ss=1|";
        let mut stream: Vec<u8> = connect(id, 4);
        stream.extend(subscribe(7, &["/a/b".to_owned()]));
        let mut reader = &stream[..];
        let first = read_packet(&mut reader, MAX_CONNECT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(connect_client_id(&first).as_deref(), Some(id));
        assert_eq!(connect_keep_alive(&first), Some(60));
        let second = read_packet(&mut reader, MAX_CONNECT)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(second, [0x82, 9, 0, 7, 0, 4, b'/', b'a', b'/', b'b', 1]);
        assert_eq!(connect_client_id(&second), None);
        assert_eq!(connect_keep_alive(&second), None);
        assert!(read_packet(&mut reader, MAX_CONNECT)
            .await
            .unwrap()
            .is_none());
        let v5 = connect(id, 5);
        assert_eq!(connect_client_id(&v5).as_deref(), Some(id));
        assert!(
            read_packet(&mut &[0x10, 0xff, 0xff, 0xff, 0xff][..], MAX_CONNECT)
                .await
                .is_err()
        );
        assert!(read_packet(&mut &[0x30, 0xff, 0x7f][..], 100)
            .await
            .is_err());
        Ok(())
    }

    #[test]
    fn connack_and_suback_are_recognised() {
        assert!(connack_accepted(&[0x20, 2, 0, 0]));
        assert!(!connack_accepted(&[0x20, 2, 0, 5]));
        assert!(is_suback(&[0x90, 3, 0xff, 0xff, 1], 0xffff));
        assert!(!is_suback(&[0x90, 3, 0, 1, 1], 0xffff));
        let long: Vec<String> = (0..20).map(|i| format!("/topic/{i:>10}")).collect();
        let p = subscribe(1, &long);
        let mut reader = &p[..];
        let framed = run(read_packet(&mut reader, MAX_PACKET)).unwrap();
        assert_eq!(framed.unwrap(), p);
    }
}
