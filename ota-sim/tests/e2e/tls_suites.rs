//! `serve --tls` as the official device SDKs' TLS sees it (docs/protocol.md §12): an OpenSSL
//! client offering one suite at a time, trusting only the CA file the simulator wrote, reaches
//! the broker's login over MQTT-TLS and the firmware server over HTTPS.

use crate::cli::{serve, Server};
use crate::device::firmware;
use crate::tls::connect_packet;
use openssl::ssl::{SslConnector, SslMethod, SslStream, SslVerifyMode, SslVersion};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;

/// What a handshake ended with.
struct Session {
    stream: SslStream<TcpStream>,
    cipher: String,
    version: String,
    chain_len: usize,
}

/// A TLS connection to `port` as `host` offering only `cipher` (TLS 1.2) or only TLS 1.3
/// (`None`), verifying the chain against `ca_file` alone.
fn handshake(
    port: u16,
    host: &str,
    ca_file: &Path,
    cipher: Option<&str>,
) -> Result<Session, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    b.set_verify(SslVerifyMode::PEER);
    b.set_ca_file(ca_file).unwrap();
    match cipher {
        Some(c) => {
            b.set_max_proto_version(Some(SslVersion::TLS1_2)).unwrap();
            b.set_cipher_list(c).unwrap();
        }
        None => b.set_min_proto_version(Some(SslVersion::TLS1_3)).unwrap(),
    }
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let stream = b
        .build()
        .connect(host, tcp)
        .map_err(|e| format!("handshake with {cipher:?}: {e}"))?;
    let ssl = stream.ssl();
    Ok(Session {
        cipher: ssl
            .current_cipher()
            .map(|c| c.name().to_owned())
            .unwrap_or_default(),
        version: ssl.version_str().to_owned(),
        chain_len: ssl.peer_cert_chain().map_or(0, |c| c.len()),
        stream,
    })
}

/// `serve --tls` plus `extra` flags; returns the server, its info and the CA file.
fn serve_tls(dir: &Path, extra: &[&str]) -> (Server, serde_json::Value, std::path::PathBuf) {
    let fw = dir.join("fw.bin");
    std::fs::write(&fw, firmware(1_000)).unwrap();
    let mut args: Vec<&std::ffi::OsStr> = [
        "--version",
        "2.0.0",
        "--tls",
        "--mqtts-port",
        "0",
        "--https-port",
        "0",
    ]
    .iter()
    .chain(extra)
    .map(|s| s.as_ref())
    .collect();
    args.extend(["--firmware".as_ref(), fw.as_os_str()]);
    let (server, _lines, info) = serve(&args, dir);
    let ca = info["ca_pem_path"].as_str().unwrap().into();
    (server, info, ca)
}

fn ports(info: &serde_json::Value) -> (u16, u16) {
    let https = info["https_base_url"].as_str().unwrap();
    let https_port = https.rsplit(':').next().unwrap().parse().unwrap();
    (info["mqtts_port"].as_u64().unwrap() as u16, https_port)
}

/// An MQTT login over `session` that the broker accepts.
fn login(session: &mut Session, info: &serde_json::Value) {
    let d = &info["devices"][0];
    let id = ota_sim::DeviceId::new(
        d["product_key"].as_str().unwrap(),
        d["device_name"].as_str().unwrap(),
    );
    let creds = ota_sim::Credentials::new(&id, d["device_secret"].as_str().unwrap());
    let connect = connect_packet(&creds.client_id, &creds.username, &creds.password);
    session.stream.write_all(&connect).unwrap();
    let mut connack = [0u8; 4];
    session.stream.read_exact(&mut connack).unwrap();
    assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK over {}", session.cipher);
}

/// A `GET /status` over `session` answered 200.
fn get_status(session: &mut Session) {
    let request = b"GET /status HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    session.stream.write_all(request).unwrap();
    let mut response = Vec::new();
    let _ = session.stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// The suites of the issue, each alone, and TLS 1.3, on both listeners of the default `--tls`.
#[test]
fn default_tls_serves_the_sdk_suites_and_tls13_with_an_rsa_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (_server, info, ca) = serve_tls(dir.path(), &[]);
    assert_eq!(info["tls"]["key"], "rsa");
    assert_eq!(info["tls"]["versions"], "both");
    let (mqtts, https) = ports(&info);
    let suites = [
        Some("AES128-SHA"),
        Some("AES128-SHA256"),
        Some("AES256-SHA256"),
        Some("ECDHE-RSA-AES128-SHA256"),
        Some("ECDHE-RSA-AES128-GCM-SHA256"),
        None,
    ];
    for suite in suites {
        for (port, host) in [(mqtts, "localhost"), (https, "127.0.0.1")] {
            let mut session = handshake(port, host, &ca, suite).unwrap();
            match suite {
                Some(name) => {
                    assert_eq!(session.cipher, name);
                    assert_eq!(session.version, "TLSv1.2");
                }
                None => assert_eq!(session.version, "TLSv1.3"),
            }
            // Leaf and intermediate; the root stays in the CA file.
            assert_eq!(session.chain_len, 2, "{suite:?}");
            let leaf = session.stream.ssl().peer_certificate().unwrap();
            assert_eq!(leaf.public_key().unwrap().bits(), 2048);
            assert!(leaf.public_key().unwrap().rsa().is_ok());
            if port == mqtts {
                login(&mut session, &info);
            } else {
                get_status(&mut session);
            }
        }
    }
    // A name the certificate does not carry fails verification.
    let err = handshake(mqtts, "ota.example.test", &ca, None)
        .err()
        .unwrap();
    assert!(
        err.contains("verify") || err.contains("certificate"),
        "{err}"
    );
}

/// `--tls-versions`, `--tls-ciphers`, `--tls-name` and `--tls-key ecdsa` change what is served,
/// and the info file says so.
#[test]
fn tls_options_choose_versions_suites_names_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "--tls-versions",
        "1.2",
        "--tls-ciphers",
        "AES128-SHA",
        "--tls-name",
        "ota.example.test",
    ];
    let (server, info, ca) = serve_tls(dir.path(), &flags);
    assert_eq!(info["tls"]["versions"], "1.2");
    assert_eq!(info["tls"]["ciphers"], "AES128-SHA");
    assert_eq!(
        info["tls"]["names"],
        serde_json::json!(["ota.example.test"])
    );
    let (mqtts, _) = ports(&info);
    let mut session = handshake(mqtts, "ota.example.test", &ca, Some("AES128-SHA")).unwrap();
    login(&mut session, &info);
    assert!(
        handshake(mqtts, "localhost", &ca, None).is_err(),
        "no TLS 1.3"
    );
    let modern = Some("ECDHE-RSA-AES128-GCM-SHA256");
    assert!(
        handshake(mqtts, "localhost", &ca, modern).is_err(),
        "legacy only"
    );
    drop(server);

    let dir = tempfile::tempdir().unwrap();
    let flags = ["--tls-key", "ecdsa", "--tls-versions", "1.3"];
    let (_server, info, ca) = serve_tls(dir.path(), &flags);
    assert_eq!(info["tls"]["key"], "ecdsa");
    let (mqtts, https) = ports(&info);
    let mut session = handshake(mqtts, "localhost", &ca, None).unwrap();
    assert_eq!(session.chain_len, 1);
    let leaf = session.stream.ssl().peer_certificate().unwrap();
    assert!(leaf.public_key().unwrap().ec_key().is_ok());
    login(&mut session, &info);
    get_status(&mut handshake(https, "localhost", &ca, None).unwrap());
    let legacy = Some("AES128-SHA");
    assert!(
        handshake(mqtts, "localhost", &ca, legacy).is_err(),
        "1.3 only"
    );
}

#[test]
fn bad_tls_options_exit_with_one_line() {
    let fails = crate::cli::fails_with_one_line;
    let base = ["serve", "--firmware", "/x", "--version", "1"];
    fails(
        &[&base[..], &["--tls-key", "dsa", "--tls"]].concat(),
        "--tls-key",
    );
    fails(
        &[&base[..], &["--tls-versions", "1.1", "--tls"]].concat(),
        "--tls-versions",
    );
    fails(
        &[&base[..], &["--tls-ciphers", "AES128-SHA"]].concat(),
        "--tls",
    );
}
