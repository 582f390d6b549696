//! The ports devices connect to. Each one is a small front that forwards to the embedded
//! rumqttd (on a loopback port of its own) or to the firmware server, optionally ending TLS
//! first. On the MQTT ports the front reads the CONNECT, so it knows which devices came over
//! TLS (they get `https` URLs), and it subscribes a client whose id carries `_ss=1` to its
//! OTA downlink topics, as the platform does for the official SDK, which never subscribes to
//! them; the SUBACK of that subscription is kept from the device, which did not ask for it.

use crate::input::Input;
use crate::messages::{download_reply_topic, get_reply_topic, upgrade_topic};
use crate::mqtt_wire::{self, MAX_CONNECT, MAX_PACKET};
use crate::{DeviceId, Error};
use openssl::ssl::{Ssl, SslAcceptor};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

/// Packet id of the front's own SUBSCRIBE. Devices count theirs up from 1, so this one is
/// not in use in the moment the subscription is made.
const AUTO_SUBSCRIBE_ID: u16 = 0xffff;

/// How long a new connection may take to send its CONNECT (rumqttd allows as long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Logins passed on to the broker at once. rumqttd accepts about one connection per
/// millisecond (it sleeps between accepts); a burst of thousands of devices overflows its
/// accept queue, and the connections left in it are reset, which devices see as a login
/// closed before CONNACK. Queued here instead, they wait and go through.
pub(crate) const MAX_LOGINS: usize = 128;

/// Client ids remembered at most; CONNECTs the broker never checked (it refused them
/// before the login check) would otherwise pile up.
const MAX_NOTED: usize = 10_000;

/// Which transport each client id's latest CONNECT came over, until the login check takes it.
#[derive(Default)]
pub(crate) struct Transports(Mutex<HashMap<String, bool>>);

impl Transports {
    fn note(&self, client_id: &str, tls: bool) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_NOTED {
            map.clear();
        }
        map.insert(client_id.to_owned(), tls);
    }

    /// Whether the CONNECT with this client id came over TLS (forgotten once asked).
    pub(crate) fn take_tls(&self, client_id: &str) -> bool {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(client_id).unwrap_or(false)
    }
}

/// What a front forwards to.
#[derive(Clone)]
pub(crate) enum Upstream {
    /// The embedded broker; CONNECTs are read on the way, and the engine is told when a
    /// device's connection opens and ends.
    Mqtt {
        addr: SocketAddr,
        transports: Arc<Transports>,
        events: Sender<Input>,
        /// Logins on their way to the broker (see [`MAX_LOGINS`]).
        logins: Arc<tokio::sync::Semaphore>,
    },
    /// The firmware server; bytes pass untouched.
    Http(SocketAddr),
}

/// One listening port.
pub(crate) struct Front {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) tls: Option<Arc<SslAcceptor>>,
    pub(crate) upstream: Upstream,
}

/// Runs the fronts on their own thread until the returned sender is used or dropped; their
/// connections close then.
pub(crate) fn spawn(fronts: Vec<Front>) -> Result<tokio::sync::oneshot::Sender<()>, Error> {
    for f in &fronts {
        f.listener.set_nonblocking(true)?;
    }
    let total = crate::limits::session_budget();
    let budget = Arc::new(Budget {
        slots: Arc::new(tokio::sync::Semaphore::new(total)),
        total,
        refused: Default::default(),
    });
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ota-sim-front".into())
        .spawn(move || {
            runtime.block_on(async move {
                let loops = futures_util::future::join_all(
                    fronts.into_iter().map(|f| accept_loop(f, budget.clone())),
                );
                futures_util::future::select(pin!(loops), stop_rx).await;
            });
        })?;
    Ok(stop_tx)
}

/// The connections all fronts may hold at once (see `limits::session_budget`), and when
/// the last refusal was logged with how many followed it.
struct Budget {
    slots: Arc<tokio::sync::Semaphore>,
    total: usize,
    refused: Mutex<(Option<std::time::Instant>, u64)>,
}

impl Budget {
    /// Logs a refused connection, at most once a second with the count since.
    fn refuse(&self) {
        let mut refused = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        refused.1 += 1;
        let now = std::time::Instant::now();
        if refused
            .0
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            tracing::warn!(
                "{} connection(s) refused: all {} connections the open-file limit allows are \
                 open (ulimit -n)",
                refused.1,
                self.total
            );
            *refused = (Some(now), 0);
        }
    }
}

async fn accept_loop(front: Front, budget: Arc<Budget>) {
    let listener = match tokio::net::TcpListener::from_std(front.listener) {
        Ok(l) => l,
        Err(e) => return tracing::error!("listener: {e}"),
    };
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = budget.slots.clone().try_acquire_owned() else {
            drop(tcp);
            budget.refuse();
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (tls, upstream) = (front.tls.clone(), front.upstream.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let result = match tls {
                None => forward(tcp, false, &upstream).await,
                Some(acceptor) => match handshake(&acceptor, tcp).await {
                    Ok(stream) => forward(stream, true, &upstream).await,
                    Err(e) => Err(io::Error::other(format!("TLS handshake: {e}"))),
                },
            };
            if let Err(e) = result {
                tracing::info!("connection from {peer} ended: {e}");
            }
        });
    }
}

/// Ends TLS on an accepted connection; a client that stalls mid-handshake is dropped.
async fn handshake(acceptor: &SslAcceptor, tcp: TcpStream) -> io::Result<SslStream<TcpStream>> {
    let ssl = Ssl::new(acceptor.context()).map_err(io::Error::other)?;
    let mut stream = SslStream::new(ssl, tcp).map_err(io::Error::other)?;
    let accept = std::pin::Pin::new(&mut stream).accept();
    tokio::time::timeout(CONNECT_TIMEOUT, accept)
        .await
        .map_err(|_| io::Error::other("no handshake in time"))?
        .map_err(io::Error::other)?;
    Ok(stream)
}

async fn forward<S>(client: S, tls: bool, upstream: &Upstream) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match upstream {
        Upstream::Http(addr) => {
            let mut client = client;
            let mut server = TcpStream::connect(addr).await?;
            server.set_nodelay(true)?;
            tokio::io::copy_bidirectional(&mut client, &mut server).await?;
            Ok(())
        }
        Upstream::Mqtt {
            addr,
            transports,
            events,
            logins,
        } => mqtt(client, tls, *addr, transports, events, logins).await,
    }
}

/// The OTA downlink topics the platform delivers unasked to a client id with `_ss=1`.
fn unasked_filters(client_id: &str) -> Option<Vec<String>> {
    let (base, params) = client_id.split_once('|')?;
    if !params.split([',', '|']).any(|kv| kv == "_ss=1") {
        return None;
    }
    let (pk, dn) = base.split_once(['.', '&'])?;
    let device = DeviceId::new(pk, dn);
    Some(vec![
        upgrade_topic(&device),
        get_reply_topic(&device),
        download_reply_topic(&device),
    ])
}

/// Tells the engine a device's connection is open, and when it is dropped that it ended
/// (however it ended: DISCONNECT, end of stream, keep-alive timeout, an error).
struct Online {
    device: DeviceId,
    events: Sender<Input>,
}

impl Online {
    fn new(device: DeviceId, events: &Sender<Input>) -> Online {
        let _ = events.send(Input::Connected(device.clone()));
        Online {
            device,
            events: events.clone(),
        }
    }
}

impl Drop for Online {
    fn drop(&mut self) {
        let _ = self.events.send(Input::Disconnected(self.device.clone()));
    }
}

/// The device a client id `{pk}.{dn}|...|` or `{pk}&{dn}` names (docs/protocol.md §7).
fn device_of(client_id: &str) -> Option<DeviceId> {
    let base = client_id.split('|').next()?;
    let (pk, dn) = base.split_once(['.', '&'])?;
    (!pk.is_empty() && !dn.is_empty()).then(|| DeviceId::new(pk, dn))
}

/// Copies the client's bytes to the broker; ends when the client sent nothing for one and a
/// half keep-alives (MQTT 3.1.1 §3.1.2.10), as the platform drops a silent connection.
async fn uplink<R, W>(from_client: &mut R, to_broker: &mut W, keep_alive: u16) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let limit = Duration::from_millis(u64::from(keep_alive) * 1500);
    let mut buffer = vec![0u8; 16 * 1024];
    let mut total = 0u64;
    loop {
        let read = from_client.read(&mut buffer);
        let n = match keep_alive {
            0 => read.await?,
            _ => tokio::time::timeout(limit, read)
                .await
                .map_err(|_| io::Error::other("keep-alive timeout"))??,
        };
        if n == 0 {
            return Ok(total);
        }
        to_broker.write_all(&buffer[..n]).await?;
        total += n as u64;
    }
}

async fn mqtt<S>(
    client: S,
    tls: bool,
    addr: SocketAddr,
    transports: &Transports,
    events: &Sender<Input>,
    logins: &tokio::sync::Semaphore,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (mut from_client, mut to_client) = tokio::io::split(client);
    let first = mqtt_wire::read_packet(&mut from_client, MAX_CONNECT);
    let first = tokio::time::timeout(CONNECT_TIMEOUT, first)
        .await
        .map_err(|_| io::Error::other("no CONNECT in time"))?;
    let Some(connect) = first? else {
        return Ok(());
    };
    let client_id = mqtt_wire::connect_client_id(&connect)
        .ok_or_else(|| io::Error::other("the first packet is not a CONNECT"))?;
    let login = logins.acquire().await.map_err(io::Error::other)?;
    // Noted before the broker sees the CONNECT, so its login check finds it.
    transports.note(&client_id, tls);
    let broker = TcpStream::connect(addr).await?;
    broker.set_nodelay(true)?;
    let (from_broker, mut to_broker) = broker.into_split();
    let mut from_broker = BufReader::new(from_broker);
    to_broker.write_all(&connect).await?;
    // A refused login is a connection closed before CONNACK; so it stays.
    let Some(connack) = mqtt_wire::read_packet(&mut from_broker, MAX_PACKET).await? else {
        return Ok(());
    };
    drop(login);
    let accepted = mqtt_wire::connack_accepted(&connack);
    let _online = device_of(&client_id)
        .filter(|_| accepted)
        .map(|d| Online::new(d, events));
    let keep_alive = mqtt_wire::connect_keep_alive(&connect).unwrap_or(0);
    let unasked = unasked_filters(&client_id).filter(|_| accepted);
    if let Some(filters) = &unasked {
        // Before anything the device sends, so it is in place before the device's inform.
        let subscribe = mqtt_wire::subscribe(AUTO_SUBSCRIBE_ID, filters);
        to_broker.write_all(&subscribe).await?;
    }
    to_client.write_all(&connack).await?;
    to_client.flush().await?;
    let up = uplink(&mut from_client, &mut to_broker, keep_alive);
    let down = async {
        if unasked.is_some() {
            loop {
                let Some(packet) = mqtt_wire::read_packet(&mut from_broker, MAX_PACKET).await?
                else {
                    return Ok(0);
                };
                if mqtt_wire::is_suback(&packet, AUTO_SUBSCRIBE_ID) {
                    break;
                }
                to_client.write_all(&packet).await?;
                to_client.flush().await?;
            }
        }
        tokio::io::copy_buf(&mut from_broker, &mut to_client).await
    };
    let (up, down) = (pin!(up), pin!(down));
    let ended = match futures_util::future::select(up, down).await {
        futures_util::future::Either::Left((r, _)) => r,
        futures_util::future::Either::Right((r, _)) => r,
    };
    ended.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ss_client_ids_get_unasked_topics() {
        let sdk = "a1PK.dev-1.x|timestamp=2524608000000,_ss=1,_v=sdk-c-4.1.0,securemode=2,signmethod=hmacsha256,ext=3|";
        let topics = unasked_filters(sdk).unwrap();
        assert_eq!(topics[0], "/ota/device/upgrade/a1PK/dev-1.x");
        assert_eq!(topics[1], "/sys/a1PK/dev-1.x/thing/ota/firmware/get_reply");
        assert_eq!(topics[2], "/sys/a1PK/dev-1.x/thing/file/download_reply");
        assert!(unasked_filters("a1PK&dev|_ss=1|").is_some());
        assert_eq!(unasked_filters("a1PK.dev|timestamp=1,securemode=3|"), None);
        assert_eq!(unasked_filters("a1PK.dev|_ss=10|"), None);
        assert_eq!(unasked_filters("a1PK.dev"), None);
    }
}
