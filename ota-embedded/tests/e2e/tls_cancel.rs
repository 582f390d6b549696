//! A TLS read dropped in the middle of a record (the driver races `receive` against timers)
//! loses nothing: the next read returns the record. A hand-driven rustls server sends one
//! application record in two TCP writes; the client's read is dropped once it has taken the
//! first part from the socket.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use embedded_io_adapters::tokio_1::FromTokio;
use embedded_io_async::{ErrorType, Read, Write};
use embedded_nal_async::TcpConnect;
use ota_embedded::tls::{RECORD_RX_LEN, RECORD_TX_LEN};
use ota_embedded::{Connect, Security, TcpConnector, TlsConnector};

use crate::support::{LoopbackDns, TokioClock, Wall, WAIT};
use crate::transport::run;

/// Bytes of the record the server sends before it waits: the 5-byte header and 3 more.
const FIRST_PART: usize = 8;
const MESSAGE: &[u8] = b"a message split across two TCP segments";

/// TCP through tokio that counts the bytes its connections read and wakes a waiter.
#[derive(Default)]
struct CountingStack {
    read: Arc<AtomicUsize>,
    progress: Arc<tokio::sync::Notify>,
}

struct Counted {
    inner: FromTokio<tokio::net::TcpStream>,
    read: Arc<AtomicUsize>,
    progress: Arc<tokio::sync::Notify>,
}

impl ErrorType for Counted {
    type Error = std::io::Error;
}

impl Read for Counted {
    async fn read(&mut self, buf: &mut [u8]) -> Result<usize, std::io::Error> {
        let n = self.inner.read(buf).await?;
        self.read.fetch_add(n, Ordering::SeqCst);
        self.progress.notify_one();
        Ok(n)
    }
}

impl Write for Counted {
    async fn write(&mut self, buf: &[u8]) -> Result<usize, std::io::Error> {
        self.inner.write(buf).await
    }

    async fn flush(&mut self) -> Result<(), std::io::Error> {
        self.inner.flush().await
    }
}

impl TcpConnect for CountingStack {
    type Error = std::io::Error;
    type Connection<'a> = Counted;

    async fn connect(&self, remote: SocketAddr) -> Result<Counted, std::io::Error> {
        let stream = tokio::net::TcpStream::connect(remote).await?;
        Ok(Counted {
            inner: FromTokio::new(stream),
            read: self.read.clone(),
            progress: self.progress.clone(),
        })
    }
}

/// A CA (DER) and a rustls server configuration for `localhost` signed by it, TLS 1.3, no
/// session tickets (so the first record after the handshake is the message).
fn server_config() -> (Vec<u8>, Arc<rustls::ServerConfig>) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "cancel test CA");
    let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    config.send_tls13_tickets = 0;
    (ca_der, Arc::new(config))
}

/// Serves one connection: the handshake, then `MESSAGE` as one record written in two parts,
/// the second once `go_on` says so.
fn serve_split_record(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    go_on: mpsc::Receiver<()>,
) {
    let (mut socket, _) = listener.accept().unwrap();
    let mut conn = rustls::ServerConnection::new(config).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut socket).unwrap();
    }
    while conn.wants_write() {
        conn.complete_io(&mut socket).unwrap();
    }
    conn.writer().write_all(MESSAGE).unwrap();
    let mut record = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut record).unwrap();
    }
    socket.write_all(&record[..FIRST_PART]).unwrap();
    go_on.recv_timeout(WAIT).unwrap();
    socket.write_all(&record[FIRST_PART..]).unwrap();
    // Stay open until the client is done (it closes first).
    let _ = std::io::Read::read(&mut socket, &mut [0u8; 64]);
}

#[test]
fn a_read_dropped_mid_record_loses_nothing() {
    let (ca, config) = server_config();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (go_on_tx, go_on_rx) = mpsc::channel();
    let server = std::thread::spawn(move || serve_split_record(listener, config, go_on_rx));

    let (stack, dns) = (CountingStack::default(), LoopbackDns);
    let clock = TokioClock::new(Wall::System);
    let (mut rx, mut tx) = (vec![0; RECORD_RX_LEN], vec![0; RECORD_TX_LEN]);
    let cas = [ca.as_slice()];
    let tls = TlsConnector::new(
        TcpConnector::new(&stack, &dns),
        &cas,
        rand_core_06::OsRng,
        &clock,
        &mut rx,
        &mut tx,
    );
    run(async {
        let mut stream = tls.connect("localhost", port, Security::Tls).await.unwrap();
        let before = stack.read.load(Ordering::SeqCst);
        let mut buf = [0u8; 128];
        // The read takes the first part from the socket, then waits for the rest: drop it.
        let first_part_taken = async {
            while stack.read.load(Ordering::SeqCst) < before + FIRST_PART {
                stack.progress.notified().await;
            }
        };
        tokio::select! {
            biased;
            read = stream.read(&mut buf) => panic!("read returned early: {read:?}"),
            () = first_part_taken => {}
        }
        go_on_tx.send(()).unwrap();
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("the rest of the record arrives")
            .expect("the record decrypts");
        assert_eq!(&buf[..n], MESSAGE);
    });
    server.join().unwrap();
}
