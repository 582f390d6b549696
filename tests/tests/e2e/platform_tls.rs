//! ota-std against TLS shaped like the platform's (docs/protocol.md §12): an RSA chain with
//! TLS 1.2 only, and static-RSA AES-CBC only (OpenSSL backend), with its default trust
//! replaced by the simulator's CA; and the refusals: rustls against CBC only (one line naming
//! the server's offer), a wrong CA, an expired certificate, each with nothing written.

use ota_sim::{JobSpec, PackageSpec, Sim, SimConfig, SimTls, TaskState, TlsOptions, TlsVersions};
use ota_std::{Error, TlsBackend, Trust};
use ota_tests::{image, TestDevice, WAIT};

fn sim_with(versions: TlsVersions, ciphers: Option<&str>) -> Sim {
    Sim::start(SimConfig {
        tls: Some(SimTls::Generated),
        tls_options: TlsOptions {
            versions,
            ciphers: ciphers.map(str::to_owned),
            ..TlsOptions::default()
        },
        ..SimConfig::default()
    })
    .expect("simulator with TLS starts")
}

/// A device of `sim` over MQTT-TLS and HTTPS only, trusting `trust`, with `backend`.
fn tls_device(sim: &Sim, trust: Trust, backend: TlsBackend) -> TestDevice {
    let info = sim.add_device().unwrap();
    let port = sim.mqtts_port().unwrap();
    TestDevice::start(sim, &info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = port;
        c.mqtt_tls = Some(trust.clone());
        c.https_trust = trust;
        c.tls_backend = backend;
        c.agent.rules.allow_http = false;
    })
}

#[test]
fn upgrades_over_tls12_rsa_with_rustls_and_over_cbc_only_with_openssl() {
    let cases = [
        (TlsVersions::Tls12, None, TlsBackend::Rustls),
        (
            TlsVersions::Tls12,
            Some("AES128-SHA:AES256-SHA"),
            TlsBackend::Openssl,
        ),
        (
            TlsVersions::Tls12,
            Some("ECDHE-RSA-AES128-SHA"),
            TlsBackend::Openssl,
        ),
    ];
    for (versions, ciphers, backend) in cases {
        let sim = sim_with(versions, ciphers);
        let trust = Trust::CaPem(sim.ca_pem().unwrap().into_bytes());
        let data = image(200_000);
        let package = sim
            .add_package(PackageSpec::new("2.0.0", data.clone()))
            .unwrap();
        let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
        let device = tls_device(&sim, trust, backend);
        sim.wait_task_state(job, &device.info, TaskState::Succeeded, WAIT)
            .unwrap();
        device.expect_succeeded("2.0.0");
        assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
        let url = sim.signed_url(package, &device.info).unwrap();
        assert!(url.starts_with(sim.https_base_url().unwrap()), "{url}");
        device.stop();
    }
}

/// Starts a device that must fail its first connection; returns the one-line error.
fn first_connection_error(sim: &Sim, trust: Trust, backend: TlsBackend) -> String {
    let device = tls_device(sim, trust, backend);
    let info = device.info.clone();
    let err = device.handle.join().unwrap_err();
    assert_eq!(sim.device_version(&info, "default"), None);
    assert!(!device.dir.path().join("staging.img").exists());
    assert!(!device.dir.path().join("firmware.img").exists());
    match err {
        Error::Mqtt(message) => message,
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn rustls_against_a_cbc_only_broker_names_the_offer_and_the_fix() {
    let sim = sim_with(TlsVersions::Tls12, Some("AES256-SHA"));
    let trust = Trust::CaPem(sim.ca_pem().unwrap().into_bytes());
    let message = first_connection_error(&sim, trust, TlsBackend::Rustls);
    let port = sim.mqtts_port().unwrap();
    assert_eq!(
        message,
        format!(
            "TLS with the broker failed: localhost:{port} offers TLS 1.2 with \
             TLS_RSA_WITH_AES_256_CBC_SHA, which rustls does not speak (received fatal alert: \
             HandshakeFailure): use --tls-backend openssl (tls_backend = \"openssl\")"
        )
    );
}

#[test]
fn the_openssl_backend_refuses_a_wrong_ca() {
    let sim = sim_with(TlsVersions::Tls12, Some("AES128-SHA"));
    // The default trust (the platform's roots and Mozilla's) does not lead to the simulator.
    let message = first_connection_error(&sim, Trust::Builtin, TlsBackend::Openssl);
    assert!(
        message.starts_with("TLS with the broker localhost:"),
        "{message}"
    );
    assert!(message.contains("certificate verify failed"), "{message}");
}

#[test]
fn an_expired_certificate_is_refused_by_both_backends() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, files) = expired_chain(dir.path());
    let sim = Sim::start(SimConfig {
        tls: Some(files),
        ..SimConfig::default()
    })
    .unwrap();
    for (backend, reason) in [
        (TlsBackend::Rustls, "certificate expired"),
        (TlsBackend::Openssl, "certificate has expired"),
    ] {
        let message = first_connection_error(&sim, Trust::CaPem(ca_pem.clone()), backend);
        assert!(message.contains(reason), "{message}");
    }
}

/// A CA (PEM) and a server certificate for localhost it signed, valid only in 2020.
fn expired_chain(dir: &std::path::Path) -> (Vec<u8>, SimTls) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "expired test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem().into_bytes();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().unwrap();
    let mut server = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
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
    (ca_pem, files)
}
