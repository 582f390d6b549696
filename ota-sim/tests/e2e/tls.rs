//! The TLS listeners as a small TLS 1.3-only client sees them: `TlsKey::Ecdsa` makes an ECDSA
//! P-256 chain, MQTT over TLS reaches the broker's login, HTTPS reaches the firmware server.

use ota_sim::{Sim, SimConfig, SimTls, TlsKey, TlsOptions};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;

fn tls_sim() -> Sim {
    let config = SimConfig {
        tls: Some(SimTls::Generated),
        tls_options: TlsOptions {
            key: TlsKey::Ecdsa,
            ..TlsOptions::default()
        },
        ..SimConfig::default()
    };
    Sim::start(config).unwrap()
}

/// A TLS 1.3-only connection to `port` that trusts `ca_pem`, as `server_name`.
pub fn connect_tls13(
    port: u16,
    ca_pem: &str,
    server_name: &str,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).unwrap();
    }
    assert_eq!(
        stream.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    stream
}

/// An MQTT 3.1.1 CONNECT with username and password.
pub fn connect_packet(client_id: &str, user: &str, pass: &str) -> Vec<u8> {
    let mut rest = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0xc2, 0, 60];
    for field in [client_id, user, pass] {
        rest.extend_from_slice(&(field.len() as u16).to_be_bytes());
        rest.extend_from_slice(field.as_bytes());
    }
    let mut packet = vec![0x10];
    let mut len = rest.len();
    while len >= 0x80 {
        packet.push((len & 0x7f) as u8 | 0x80);
        len >>= 7;
    }
    packet.push(len as u8);
    packet.extend(rest);
    packet
}

#[test]
fn tls13_clients_reach_the_broker_and_the_firmware_server() {
    let sim = tls_sim();
    let ca = sim.ca_pem().unwrap();
    // ECDSA with SHA-256 (OID 1.2.840.10045.4.3.2) on a P-256 key (OID 1.2.840.10045.3.1.7).
    let der = CertificateDer::from_pem_slice(ca.as_bytes()).unwrap();
    let has = |oid: &[u8]| der.windows(oid.len()).any(|w| w == oid);
    assert!(has(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]));
    assert!(has(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]));

    let device = sim.add_device().unwrap();
    let creds = device.credentials();
    let mut mqtt = connect_tls13(sim.mqtts_port().unwrap(), &ca, "localhost");
    let connect = connect_packet(&creds.client_id, &creds.username, &creds.password);
    mqtt.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    mqtt.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0]);

    let https = sim.https_base_url().unwrap();
    let port: u16 = https.rsplit(':').next().unwrap().parse().unwrap();
    let mut web = connect_tls13(port, &ca, "127.0.0.1");
    web.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut response = Vec::new();
    let _ = web.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"devices\""), "{text}");
}

#[test]
fn tls_needs_the_embedded_broker() {
    let config = SimConfig {
        tls: Some(SimTls::Generated),
        broker: ota_sim::BrokerConfig::External {
            url: "mqtt://127.0.0.1:1".into(),
        },
        ..SimConfig::default()
    };
    let err = Sim::start(config).err().unwrap().to_string();
    assert!(err.contains("embedded broker"), "{err}");
}
