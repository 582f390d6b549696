//! The driver over TLS against the simulator's TLS listeners (a generated ECDSA P-256 CA):
//! an upgrade with MQTT over TLS and HTTPS downloads; a wrong CA, a wrong host name and
//! expired dates refused with their own errors, and nothing written to the slot.

use ota_embedded::tls::{RECORD_RX_LEN, RECORD_TX_LEN};
use ota_embedded::{
    Connect, ConnectError, MqttClient, MqttError, MqttTransport, Security, TcpConnector,
    TlsConnector,
};
use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, SimTls, TlsKey, TlsOptions};

use crate::support::{
    der_of_pem, image, Device, LoopbackDns, TokioClock, TokioStack, Wall, SECTOR,
};
use crate::transport::{login, run};
use crate::{
    assert_installed, assert_monotone_progress, assert_refused_before_any_byte, finish_upgrade,
    NEW, OLD,
};

/// The ECDSA chain: this TLS client speaks TLS 1.3 with P-256 only (the simulator's default
/// chain is RSA, as the platform's).
fn tls_sim() -> Sim {
    Sim::start(SimConfig {
        tls: Some(SimTls::Generated),
        tls_options: TlsOptions {
            key: TlsKey::Ecdsa,
            ..TlsOptions::default()
        },
        ..SimConfig::default()
    })
    .unwrap()
}

/// A CA the simulator's certificate does not chain to. `same_name`: it carries the
/// simulator CA's name, so only the signature tells them apart.
fn other_ca(same_name: bool) -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let name = if same_name {
        "ota-sim test CA"
    } else {
        "some other CA"
    };
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.self_signed(&key).unwrap().der().to_vec()
}

/// Opens a TLS stream to the simulator's MQTT-over-TLS port as `host`, trusting `ca`, at
/// `wall`.
fn open(sim: &Sim, host: &str, ca: &[u8], wall: Wall) -> Result<(), ConnectError> {
    let (stack, dns) = (TokioStack, LoopbackDns);
    let clock = TokioClock::new(wall);
    let (mut rx, mut tx) = (vec![0; RECORD_RX_LEN], vec![0; RECORD_TX_LEN]);
    let cas = [ca];
    let tls = TlsConnector::new(
        TcpConnector::new(&stack, &dns),
        &cas,
        rand_core_06::OsRng,
        &clock,
        &mut rx,
        &mut tx,
    );
    let port = sim.mqtts_port().unwrap();
    run(async { tls.connect(host, port, Security::Tls).await.map(drop) })
}

#[test]
fn upgrades_over_mqtt_tls_and_https() {
    let sim = tls_sim();
    let info = sim.add_device().unwrap();
    let firmware = image(10 * SECTOR + 123);
    let package = sim
        .add_package(PackageSpec::new(NEW, firmware.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (device, booted) = Device::new_tls(&sim, info);

    finish_upgrade(&sim, &device, &booted, job);

    assert_installed(&device, &firmware);
    assert_monotone_progress(&sim, &device, 1);
    // The device refuses http:// URLs (allow_http is off), so the body came over HTTPS.
    let downloads = sim.downloads(&device.info);
    assert_eq!(downloads.len(), 1, "{downloads:?}");
    assert_eq!(downloads[0].status, 200);
}

#[test]
fn a_download_from_a_server_of_another_ca_is_refused_and_nothing_is_written() {
    let sim = tls_sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new(NEW, image(4 * SECTOR)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut device, _booted) = Device::new_tls(&sim, info);
    device.download_ca = Some(other_ca(true));

    let running = device.boot(OLD);
    assert_refused_before_any_byte(&sim, &device, job, running, "not issued by a trusted CA");
}

#[test]
fn the_mqtt_session_refuses_a_wrong_ca() {
    let sim = tls_sim();
    let info = sim.add_device().unwrap();
    let (stack, dns) = (TokioStack, LoopbackDns);
    let clock = TokioClock::new(Wall::System);
    let (mut rx, mut tx) = (vec![0; RECORD_RX_LEN], vec![0; RECORD_TX_LEN]);
    let ca = other_ca(false);
    let cas = [ca.as_slice()];
    let tls = TlsConnector::new(
        TcpConnector::new(&stack, &dns),
        &cas,
        rand_core_06::OsRng,
        &clock,
        &mut rx,
        &mut tx,
    );
    let port = sim.mqtts_port().unwrap();
    let mut mqtt: MqttClient<'_, _, 4096, 1024> =
        MqttClient::new(&tls, sim.mqtt_host(), port, Security::Tls, 60);
    let connected = run(mqtt.connect(&login(&info)));
    assert_eq!(
        connected,
        Err(MqttError::Connect(ConnectError::CertificateRefused))
    );
    assert_eq!(
        ConnectError::CertificateRefused.reason(),
        "TLS: certificate not issued by a trusted CA"
    );
}

#[test]
fn the_server_name_is_checked() {
    let sim = tls_sim();
    let ca = der_of_pem(&sim.ca_pem().unwrap());
    // The certificate is for localhost and 127.0.0.1; the resolver sends every name there.
    assert_eq!(open(&sim, "localhost", &ca, Wall::System), Ok(()));
    assert_eq!(open(&sim, "127.0.0.1", &ca, Wall::System), Ok(()));
    assert_eq!(
        open(&sim, "iot.example.com", &ca, Wall::System),
        Err(ConnectError::WrongHost)
    );
}

#[test]
fn a_ca_with_the_right_name_but_another_key_is_refused() {
    let sim = tls_sim();
    assert_eq!(
        open(&sim, "localhost", &other_ca(true), Wall::System),
        Err(ConnectError::CertificateRefused)
    );
}

#[test]
fn certificate_dates_are_checked_against_the_clock_once_it_is_set() {
    let sim = tls_sim();
    let ca = der_of_pem(&sim.ca_pem().unwrap());
    // The simulator's certificates are valid from 1975 to 4096 (rcgen's defaults).
    const YEAR_4100: u64 = 67_216_348_800;
    assert_eq!(
        open(&sim, "localhost", &ca, Wall::At(YEAR_4100)),
        Err(ConnectError::CertificateExpired)
    );
    assert_eq!(
        open(&sim, "localhost", &ca, Wall::At(0)),
        Err(ConnectError::CertificateExpired),
        "not yet valid in 1970"
    );
    // Before the firmware learnt the time, the dates cannot be checked; the rest is.
    assert_eq!(open(&sim, "localhost", &ca, Wall::Unknown), Ok(()));
    assert_eq!(
        open(&sim, "iot.example.com", &ca, Wall::Unknown),
        Err(ConnectError::WrongHost)
    );
}

/// A CA (DER) and the PEM files of a server certificate it signed for `name` only.
fn ca_and_server_files(dir: &std::path::Path, name: &str) -> (Vec<u8>, SimTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca_der = ca.self_signed(&ca_key).unwrap().der().to_vec();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
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

#[test]
fn a_download_from_a_server_not_named_in_its_url_is_refused_and_nothing_is_written() {
    // The server's certificate names ota.example.com (the MQTT host the device uses, which
    // the resolver maps to the simulator); the download URLs name 127.0.0.1.
    let dir = tempfile::tempdir().unwrap();
    let (ca, files) = ca_and_server_files(dir.path(), "ota.example.com");
    let sim = Sim::start(SimConfig {
        tls: Some(files),
        ..SimConfig::default()
    })
    .unwrap();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new(NEW, image(4 * SECTOR)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let (mut device, _booted) = Device::new(&sim, info);
    device.mqtt_host = "ota.example.com".to_owned();
    device.mqtt_port = sim.mqtts_port().unwrap();
    device.ca = Some(ca);

    let running = device.boot(OLD);
    assert_refused_before_any_byte(&sim, &device, job, running, "issued for another host name");
}

/// A CA (DER) and the simulator's TLS files for the chain `leaf` (for localhost) then
/// `middle`, where the CA signed `middle` and `middle` signed `leaf`; `middle_is_ca` says
/// whether `middle` is a CA.
fn chain_through(dir: &std::path::Path, middle_is_ca: bool) -> (Vec<u8>, SimTls) {
    let make_ca = |name: &str, ca: bool| {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        if ca {
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params
    };
    let root_key = rcgen::KeyPair::generate().unwrap();
    let root = make_ca("root CA", true);
    let root_der = root.self_signed(&root_key).unwrap().der().to_vec();
    let root = rcgen::Issuer::new(root, root_key);
    let middle_key = rcgen::KeyPair::generate().unwrap();
    let middle = make_ca("middle", middle_is_ca);
    let middle_cert = middle.signed_by(&middle_key, &root).unwrap();
    let middle = rcgen::Issuer::new(middle, middle_key);
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &middle).unwrap();
    let (cert_path, key_path) = (dir.join("chain.pem"), dir.join("leaf.key"));
    std::fs::write(&cert_path, leaf_cert.pem() + &middle_cert.pem()).unwrap();
    std::fs::write(&key_path, leaf_key.serialize_pem()).unwrap();
    let files = SimTls::Files {
        cert: cert_path,
        key: key_path,
    };
    (root_der, files)
}

fn sim_with(tls: SimTls) -> Sim {
    Sim::start(SimConfig {
        tls: Some(tls),
        ..SimConfig::default()
    })
    .unwrap()
}

#[test]
fn a_chain_through_an_intermediate_ca_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = chain_through(dir.path(), true);
    let sim = sim_with(files);
    assert_eq!(open(&sim, "localhost", &root, Wall::System), Ok(()));
}

#[test]
fn a_certificate_signed_by_a_certificate_that_is_no_ca_is_refused() {
    // Anyone the CA issued a certificate to could otherwise sign one for any host.
    let dir = tempfile::tempdir().unwrap();
    let (root, files) = chain_through(dir.path(), false);
    let sim = sim_with(files);
    assert_eq!(
        open(&sim, "localhost", &root, Wall::System),
        Err(ConnectError::CertificateRefused)
    );
}
