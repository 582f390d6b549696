//! Session tracking: a TCP relay in front of the embedded broker that reads each client's
//! CONNECT, and records per device when its sessions opened and closed, and whether one
//! opened while an earlier one was still open (the platform, like rumqttd, then drops the
//! older session: a device must close its session before it opens the next).
//!
//! rumqttd reports neither connections nor disconnections, hence the relay. "Still open" is
//! decided from the kernel's view, not from when a relay thread got round to noticing: a
//! device that closed its socket before connecting again has its end of stream (or its
//! DISCONNECT) queued on the old socket before the new connection exists.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::{DeviceId, Error};

/// Relay reads wake up this often, so that an overlap check can peek at a socket without
/// waiting long on a live one (a read timeout is shared by both handles of a socket).
const READ_SLICE: Duration = Duration::from_millis(50);

/// Largest CONNECT packet accepted (client id, username and password are short).
const MAX_CONNECT: usize = 64 * 1024;

/// One MQTT session of a device, as the relay saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// The CONNECT's client id.
    pub client_id: String,
    /// When its CONNECT arrived.
    pub opened: Instant,
    /// When it ended (DISCONNECT or end of stream); `None` while open.
    pub closed: Option<Instant>,
    /// Another session of the same device was still open when this one connected.
    pub overlapped: bool,
}

struct Open {
    device: DeviceId,
    index: usize,
    client: TcpStream,
}

#[derive(Default)]
struct Log {
    sessions: HashMap<DeviceId, Vec<SessionRecord>>,
    open: Vec<(u64, Open)>,
    next_id: u64,
}

/// The sessions of every device, shared by the relay threads and [`crate::Sim`].
#[derive(Default, Clone)]
pub(crate) struct Sessions(Arc<Mutex<Log>>);

impl Sessions {
    pub(crate) fn of(&self, device: &DeviceId) -> Vec<SessionRecord> {
        let log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        log.sessions.get(device).cloned().unwrap_or_default()
    }

    /// Listens on `public` and relays every connection to the broker at `backend`.
    pub(crate) fn front(
        &self,
        public: SocketAddr,
        backend: SocketAddr,
    ) -> Result<SocketAddr, Error> {
        let listener = TcpListener::bind(public)?;
        let addr = listener.local_addr()?;
        let sessions = self.clone();
        std::thread::Builder::new()
            .name("ota-sim-sessions".into())
            .spawn(move || {
                for client in listener.incoming().flatten() {
                    let sessions = sessions.clone();
                    let _ = std::thread::Builder::new()
                        .name("ota-sim-relay".into())
                        .spawn(move || sessions.relay(client, backend));
                }
            })?;
        Ok(addr)
    }

    fn relay(&self, mut client: TcpStream, backend: SocketAddr) {
        let Ok(connect) = read_packet(&mut client) else {
            return;
        };
        let Ok(mut broker) = TcpStream::connect(backend) else {
            return;
        };
        let _ = (client.set_nodelay(true), broker.set_nodelay(true));
        // Before the session is visible to overlap checks, which peek at it.
        if client.set_read_timeout(Some(READ_SLICE)).is_err() {
            return;
        }
        let id = client_id(&connect).and_then(|c| device_of(&c).map(|d| (c, d)));
        let session = id.and_then(|(client_id, device)| {
            Some(self.open(client_id, device, client.try_clone().ok()?))
        });
        if broker.write_all(&connect).is_err() {
            self.close(session);
            return;
        }
        // Broker to client on its own thread; client to broker here, watching for the end.
        if let (Ok(mut from_broker), Ok(mut to_client)) = (broker.try_clone(), client.try_clone()) {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from_broker, &mut to_client);
                let _ = to_client.shutdown(Shutdown::Both);
            });
        }
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match client.read(&mut buffer) {
                Ok(0) => break,
                Ok(n) => {
                    if broker.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                    if is_disconnect(&buffer[..n]) {
                        self.close(session); // the session is over; the socket may linger
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(_) => break,
            }
        }
        self.close(session);
        let _ = broker.shutdown(Shutdown::Both);
    }

    fn open(&self, client_id: String, device: DeviceId, client: TcpStream) -> u64 {
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let overlapped = log
            .open
            .iter()
            .any(|(_, o)| o.device == device && !has_ended(&o.client));
        let records = log.sessions.entry(device.clone()).or_default();
        records.push(SessionRecord {
            client_id,
            opened: Instant::now(),
            closed: None,
            overlapped,
        });
        let index = records.len() - 1;
        let id = log.next_id;
        log.next_id += 1;
        log.open.push((
            id,
            Open {
                device,
                index,
                client,
            },
        ));
        id
    }

    fn close(&self, session: Option<u64>) {
        let Some(id) = session else {
            return;
        };
        let mut log = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(at) = log.open.iter().position(|(i, _)| *i == id) else {
            return; // already closed
        };
        let (_, open) = log.open.swap_remove(at);
        if let Some(record) = log
            .sessions
            .get_mut(&open.device)
            .and_then(|r| r.get_mut(open.index))
        {
            record.closed = Some(Instant::now());
        }
    }
}

/// True when the client already ended: its end of stream, or a DISCONNECT, is queued (or
/// was read). Waits at most one read slice on a live socket.
fn has_ended(client: &TcpStream) -> bool {
    let mut peeked = [0u8; 2];
    match client.peek(&mut peeked) {
        Ok(0) => true,
        Ok(n) => is_disconnect(&peeked[..n]),
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// MQTT 3.1.1 DISCONNECT: type 14, no flags, remaining length 0.
fn is_disconnect(bytes: &[u8]) -> bool {
    bytes.ends_with(&[0xE0, 0x00]) || bytes == [0xE0]
}

/// Reads one whole MQTT packet (fixed header included).
fn read_packet(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut packet = vec![0u8; 1];
    stream.read_exact(&mut packet)?;
    let mut remaining = 0usize;
    for shift in (0..28).step_by(7) {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte)?;
        packet.push(byte[0]);
        remaining |= usize::from(byte[0] & 0x7F) << shift;
        if byte[0] & 0x80 == 0 {
            break;
        }
    }
    if remaining > MAX_CONNECT {
        return Err(ErrorKind::InvalidData.into());
    }
    let start = packet.len();
    packet.resize(start + remaining, 0);
    stream.read_exact(&mut packet[start..])?;
    Ok(packet)
}

/// The client id of a CONNECT packet.
fn client_id(packet: &[u8]) -> Option<String> {
    if packet.first()? >> 4 != 1 {
        return None;
    }
    let mut at = 1;
    while packet.get(at)? & 0x80 != 0 {
        at += 1;
    }
    at += 1;
    let name_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    at += 2 + name_len + 1 + 1 + 2; // protocol name, level, flags, keep-alive
    let id_len = usize::from(u16::from_be_bytes([*packet.get(at)?, *packet.get(at + 1)?]));
    let id = packet.get(at + 2..at + 2 + id_len)?;
    String::from_utf8(id.to_vec()).ok()
}

/// The device of a client id `{pk}.{dn}|...|` or `{pk}&{dn}` (docs/protocol.md §7).
fn device_of(client_id: &str) -> Option<DeviceId> {
    let base = client_id.split('|').next()?;
    let (pk, dn) = base.split_once('.').or_else(|| base.split_once('&'))?;
    Some(DeviceId::new(pk, dn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_name_their_device() {
        // CONNECT: MQTT 3.1.1, clean session, keep-alive 60, client id "a1PK.dev01|x|".
        let id = b"a1PK.dev01|x|";
        let mut packet = vec![0x10, (10 + 2 + id.len()) as u8, 0, 4];
        packet.extend_from_slice(b"MQTT");
        packet.extend_from_slice(&[4, 2, 0, 60, 0, id.len() as u8]);
        packet.extend_from_slice(id);
        let client = client_id(&packet).unwrap();
        assert_eq!(client, "a1PK.dev01|x|");
        assert_eq!(device_of(&client), Some(DeviceId::new("a1PK", "dev01")));
        assert_eq!(
            device_of("a1PK&dev01"),
            Some(DeviceId::new("a1PK", "dev01"))
        );
        assert_eq!(client_id(&[0x30, 0]), None);
        assert!(is_disconnect(&[0xE0, 0x00]));
    }
}
