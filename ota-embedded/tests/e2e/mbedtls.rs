//! The driver over mbedTLS (feature `mbedtls`) against the simulator's OpenSSL listeners
//! with the platform's shape (docs/protocol.md §12): an RSA-2048 root, intermediate and leaf.
//! Upgrades over MQTT-TLS and HTTPS with TLS 1.2 only and with AES-CBC suites only; a wrong
//! CA, a wrong host name and an expired certificate (clock set) refused, nothing written.

use ota_embedded::mbedtls::{CaChain, MbedtlsConnector, TlsVersion};
use ota_embedded::{Connect, ConnectError, Security, TcpConnector};
use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, SimTls, TlsOptions, TlsVersions};

use crate::support::{
    der_of_pem, image, mbedtls, Device, LoopbackDns, TlsLib, TokioClock, TokioStack, Wall, SECTOR,
    WAIT,
};
use crate::transport::run;
use crate::{
    assert_installed, assert_monotone_progress, assert_refused_before_any_byte, finish_upgrade,
    NEW, OLD,
};

/// The simulator's default RSA chain, offering `versions` and `ciphers`.
fn rsa_sim(versions: TlsVersions, ciphers: Option<&str>) -> Sim {
    Sim::start(SimConfig {
        tls: Some(SimTls::Generated),
        tls_options: TlsOptions {
            versions,
            ciphers: ciphers.map(str::to_owned),
            ..TlsOptions::default()
        },
        ..SimConfig::default()
    })
    .unwrap()
}

fn upgrade_over(sim: &Sim, tls12_only: bool) {
    let info = sim.add_device().unwrap();
    let firmware = image(10 * SECTOR + 123);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut device, booted) = Device::new_tls(sim, info);
    device.tls_lib = TlsLib::Mbedtls { tls12_only };

    finish_upgrade(sim, &device, &booted, job);

    assert_installed(&device, &firmware);
    assert_monotone_progress(sim, &device, 1);
    // allow_http is off: the body came over HTTPS.
    let downloads = sim.downloads(&device.info);
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(downloads[0].status, 200);
}

#[test]
fn upgrades_over_an_rsa_chain_with_tls12_only() {
    upgrade_over(&rsa_sim(TlsVersions::Tls12, None), true);
}

#[test]
fn upgrades_with_aes_cbc_suites_only() {
    // Static RSA and ECDHE-RSA, both AES-CBC: what the platform's own SDKs offer.
    let sim = rsa_sim(
        TlsVersions::Tls12,
        Some("AES128-SHA:AES256-SHA:AES128-SHA256:ECDHE-RSA-AES128-SHA"),
    );
    upgrade_over(&sim, false);
}

#[test]
fn upgrades_over_tls13_where_the_server_offers_only_it() {
    // TLS 1.3 signs with RSA-PSS: the feature set includes it.
    upgrade_over(&rsa_sim(TlsVersions::Tls13, None), false);
}

/// Opens a TLS stream to the simulator's MQTT-over-TLS port as `host`, trusting `ca` (DER),
/// at `wall`, with TLS 1.2 only when asked.
fn open(
    sim: &Sim,
    host: &str,
    ca: &[u8],
    wall: Wall,
    tls12_only: bool,
) -> Result<(), ConnectError> {
    let (stack, dns) = (TokioStack, LoopbackDns);
    let clock = TokioClock::new(wall);
    let cas = CaChain::new(&[ca]).unwrap();
    let mut tls = MbedtlsConnector::new(TcpConnector::new(&stack, &dns), mbedtls(), &cas, &clock);
    if tls12_only {
        tls = tls.with_versions(TlsVersion::Tls1_2, TlsVersion::Tls1_2);
    }
    let port = sim.mqtts_port().unwrap();
    run(async { tls.connect(host, port, Security::Tls).await.map(drop) })
}

#[test]
fn a_wrong_ca_and_a_wrong_host_name_are_refused() {
    let sim = rsa_sim(TlsVersions::Tls12, None);
    let ca = der_of_pem(&sim.ca_pem().unwrap());
    assert_eq!(open(&sim, "localhost", &ca, Wall::System, true), Ok(()));
    assert_eq!(open(&sim, "127.0.0.1", &ca, Wall::System, true), Ok(()));
    // A real root, of another chain: the platform's own.
    let aliyun = ota_core::roots::ALIYUN_IOT_ROOT_CA.der;
    assert_eq!(
        open(&sim, "localhost", aliyun, Wall::System, true),
        Err(ConnectError::CertificateRefused)
    );
    // The resolver sends every name to the simulator, whose leaf names localhost only.
    assert_eq!(
        open(&sim, "iot.example.com", &ca, Wall::System, true),
        Err(ConnectError::WrongHost)
    );
    assert_eq!(
        open(&sim, "iot.example.com", &ca, Wall::Unknown, true),
        Err(ConnectError::WrongHost),
        "the host name is checked before the time is known too"
    );
}

#[test]
fn an_expired_certificate_is_refused_once_the_clock_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = expired_chain(dir.path());
    let sim = Sim::start(SimConfig {
        tls: Some(files),
        ..SimConfig::default()
    })
    .unwrap();
    assert_eq!(
        open(&sim, "localhost", &ca, Wall::System, false),
        Err(ConnectError::CertificateExpired)
    );
    // Before the firmware learnt the time, the dates cannot be checked; the rest is.
    assert_eq!(open(&sim, "localhost", &ca, Wall::Unknown, false), Ok(()));
}

#[test]
fn a_tls12_only_device_says_why_a_tls13_only_server_fails() {
    let sim = rsa_sim(TlsVersions::Tls13, None);
    let ca = der_of_pem(&sim.ca_pem().unwrap());
    let refused = open(&sim, "localhost", &ca, Wall::System, true);
    let Err(ConnectError::Handshake(reason)) = refused else {
        panic!("{refused:?}");
    };
    assert!(reason.starts_with("TLS: the server"), "{reason}");
}

#[test]
fn a_download_from_a_server_of_another_ca_is_refused_and_nothing_is_written() {
    let sim = rsa_sim(TlsVersions::Tls12, None);
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new(NEW, image(4 * SECTOR)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut device, _booted) = Device::new_tls(&sim, info);
    device.tls_lib = TlsLib::Mbedtls { tls12_only: true };
    device.download_ca = Some(ota_core::roots::GLOBALSIGN_ROOT_CA_R1.der.to_vec());

    let running = device.boot(OLD);
    assert_refused_before_any_byte(&sim, &device, job, running, "not issued by a trusted CA");
}

/// The time requests devices publish on the simulator's broker (which answers them, as the
/// platform does: docs/protocol.md §13), seen by another MQTT client.
fn watch_time_requests(sim: &Sim) -> std::sync::mpsc::Receiver<String> {
    use rumqttc::{Client, Event, MqttOptions, Packet, QoS};
    let other = sim.add_device().unwrap();
    let creds = other.credentials();
    // Without `_ss=1`: this client gets only what it subscribes to.
    let client_id = creds.client_id.replace("_ss=1,", "");
    let mut options = MqttOptions::new(client_id, sim.mqtt_host(), sim.mqtt_port());
    options.set_credentials(creds.username, creds.password);
    let (client, mut connection) = Client::new(options, 8);
    client
        .subscribe("/ext/ntp/+/+/request", QoS::AtMostOnce)
        .unwrap();
    let (requests, received) = std::sync::mpsc::channel();
    let (subscribed_tx, subscribed) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _client = client; // keeps the connection open
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    let _ = subscribed_tx.send(());
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let request = String::from_utf8_lossy(&p.payload).into_owned();
                    if requests.send(request).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    subscribed
        .recv_timeout(WAIT)
        .expect("the watcher subscribed");
    received
}

#[test]
fn the_platform_time_learnt_after_connecting_makes_the_download_check_dates() {
    // Every certificate expired in 2020. The device does not know the date: its MQTT session
    // connects (dates unchecked), asks the time, and its HTTPS download, a later connection,
    // is then refused as expired, with nothing written.
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = expired_chain(dir.path());
    let sim = Sim::start(SimConfig {
        tls: Some(files),
        ..SimConfig::default()
    })
    .unwrap();
    let time_requests = watch_time_requests(&sim);
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new(NEW, image(4 * SECTOR)))
        .unwrap();
    let (mut device, _booted) = Device::new_tls(&sim, info);
    device.ca = Some(ca);
    device.mqtt_host = "localhost".into();
    device.tls_lib = TlsLib::Mbedtls { tls12_only: false };
    device.wall = Wall::Unknown;
    device.ask_time = true;

    let running = device.boot(OLD);
    let request = time_requests
        .recv_timeout(WAIT)
        .unwrap_or_else(|_| panic!("no time request; device log {:?}", device.log()));
    assert!(request.starts_with(r#"{"deviceSendTime":""#), "{request}");
    // The task comes once the driver has set its clock from the simulator's reply; the push
    // then finds the clock set.
    let asked = std::time::Instant::now();
    while !device.time_learnt.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(
            asked.elapsed() < WAIT,
            "the time reply never set the clock; device log {:?}",
            device.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    assert_refused_before_any_byte(&sim, &device, job, running, "expired");
}

/// A CA (DER) and a server certificate for localhost and 127.0.0.1 it signed, valid only in
/// 2020.
fn expired_chain(dir: &std::path::Path) -> (Vec<u8>, SimTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "expired test CA");
    let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let mut server = rcgen::CertificateParams::new(names).unwrap();
    server.not_before = rcgen::date_time_ymd(2020, 1, 1);
    server.not_after = rcgen::date_time_ymd(2020, 12, 31);
    let cert = server.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("server.pem"), dir.join("server.key"));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    let files = SimTls::Files {
        cert: cert_path,
        key: key_path,
    };
    (ca_der, files)
}
