//! `ota-agent check` as a process against the simulator's OpenSSL TLS listeners, in each
//! configuration the platform may present (docs/protocol.md §12): an RSA chain with TLS 1.2
//! and 1.3, an ECDSA chain, TLS 1.2 only, and static-RSA AES-CBC only. It passes where the
//! device can connect and stops with one line at the first step that cannot.

#![cfg(feature = "openssl")]

use std::process::{Command, Output, Stdio};

use ota_sim::{DeviceInfo, PackageSpec, Sim, SimConfig, SimTls, TlsKey, TlsOptions, TlsVersions};

const AGENT: &str = env!("CARGO_BIN_EXE_ota-agent");

/// A simulator whose TLS listeners present `key` and offer `versions` and `ciphers`.
fn sim_with(key: TlsKey, versions: TlsVersions, ciphers: Option<&str>) -> Sim {
    Sim::start(SimConfig {
        tls: Some(SimTls::Generated),
        tls_options: TlsOptions {
            key,
            versions,
            ciphers: ciphers.map(str::to_owned),
            ..TlsOptions::default()
        },
        ..SimConfig::default()
    })
    .expect("simulator with TLS starts")
}

/// `ota-agent check` for `info` on the simulator's MQTT-TLS port at `host`, trusting only
/// the CA file `ca`, plus `extra` flags.
fn check(sim: &Sim, info: &DeviceInfo, host: &str, ca: &[u8], extra: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, ca).unwrap();
    let endpoint = format!("{host}:{}", sim.mqtts_port().unwrap());
    Command::new(AGENT)
        .arg("check")
        .args(["--product-key", &info.id.product_key])
        .args(["--device-name", &info.id.device_name])
        .args(["--endpoint", &endpoint])
        .arg("--ca-file")
        .arg(&ca_path)
        .args(extra)
        .env("OTA_DEVICE_SECRET", &info.device_secret)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An https URL of a package the simulator serves (its signature covers path and query).
fn https_url(sim: &Sim, info: &DeviceInfo) -> String {
    let package = sim
        .add_package(PackageSpec::new("2.0.0", vec![0xA5; 1000]))
        .unwrap();
    let url = sim.signed_url(package, info).unwrap();
    let https = sim.https_base_url().unwrap();
    match url.strip_prefix(sim.http_base_url()) {
        Some(rest) => format!("{https}{rest}"),
        None => url,
    }
}

#[test]
fn check_passes_in_each_tls_configuration_and_reports_what_was_negotiated() {
    let cases = [
        (
            TlsKey::Rsa,
            TlsVersions::Both,
            None,
            "rustls",
            "TLS 1.3 TLS_AES",
        ),
        (
            TlsKey::Ecdsa,
            TlsVersions::Both,
            None,
            "rustls",
            "TLS 1.3 TLS_AES",
        ),
        (
            TlsKey::Rsa,
            TlsVersions::Tls12,
            None,
            "rustls",
            "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_",
        ),
        (
            TlsKey::Rsa,
            TlsVersions::Tls12,
            Some("AES128-SHA:AES256-SHA"),
            "openssl",
            "TLS 1.2 TLS_RSA_WITH_AES_",
        ),
        (
            TlsKey::Rsa,
            TlsVersions::Tls12,
            Some("ECDHE-RSA-AES128-SHA256"),
            "openssl",
            "TLS 1.2 TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
        ),
    ];
    for (key, versions, ciphers, backend, negotiated) in cases {
        let sim = sim_with(key, versions, ciphers);
        let info = sim.add_device().unwrap();
        let ca = sim.ca_pem().unwrap();
        let url = https_url(&sim, &info);
        let flags = ["--tls-backend", backend, "--url", &url];
        let out = check(&sim, &info, "localhost", ca.as_bytes(), &flags);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let case = format!("{key:?} {versions:?} {ciphers:?} {backend}:\n{stdout}{stderr}");
        assert!(out.status.success(), "{case}");
        assert!(
            stdout.contains(&format!("tls        {negotiated}")),
            "{case}"
        );
        assert!(
            stdout.contains("chain 0    O=ota-sim, CN=ota-sim"),
            "{case}"
        );
        let root = "anchor     CA file root O=ota-sim, CN=ota-sim ";
        assert!(stdout.contains(root), "{case}");
        assert!(stdout.contains("CONNACK 0 (accepted)"), "{case}");
        assert!(stdout.contains("subscribe  /sys/"), "{case}");
        assert!(
            stdout.contains(r#"reply      {"id":"1","code":200"#),
            "{case}"
        );
        assert!(
            stdout.contains("http       HTTP/1.1 206 Partial Content, first byte 0xa5"),
            "{case}"
        );
        assert!(stdout.ends_with("check      passed\n"), "{case}");
        assert_eq!(stderr, "", "{case}");
    }
}

#[test]
fn check_fails_at_tls_with_a_wrong_ca_or_host_name() {
    let sim = sim_with(TlsKey::Rsa, TlsVersions::Tls12, None);
    let info = sim.add_device().unwrap();
    // A real root the simulator's chain does not lead to: the platform's own.
    let other = openssl::x509::X509::from_der(ota_core::roots::ALIYUN_IOT_ROOT_CA.der)
        .and_then(|c| c.to_pem())
        .unwrap();
    let other = String::from_utf8(other).unwrap();
    let ca = sim.ca_pem().unwrap();
    let cases = [
        ("localhost", other.as_bytes(), "rustls", "UnknownIssuer"),
        (
            "localhost",
            other.as_bytes(),
            "openssl",
            "certificate verify failed",
        ),
        // The leaf names 127.0.0.1 and localhost; this simulator listens on 127.0.0.2.
        ("127.0.0.2", ca.as_bytes(), "rustls", "not valid for name"),
        (
            "127.0.0.2",
            ca.as_bytes(),
            "openssl",
            "certificate verify failed",
        ),
    ];
    let elsewhere = Sim::start(SimConfig {
        bind: std::net::Ipv4Addr::new(127, 0, 0, 2).into(),
        tls: Some(SimTls::Generated),
        ..SimConfig::default()
    })
    .unwrap();
    let elsewhere_ca = elsewhere.ca_pem().unwrap();
    for (host, ca, backend, reason) in cases {
        let (sim, ca) = match host {
            "127.0.0.2" => (&elsewhere, elsewhere_ca.as_bytes()),
            _ => (&sim, ca),
        };
        let out = check(sim, &info, host, ca, &["--tls-backend", backend]);
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        let case = format!("{host} {backend}:\n{stdout}{stderr}");
        assert_eq!(out.status.code(), Some(1), "{case}");
        assert!(
            stderr.starts_with("ota-agent check: FAILED at tls: "),
            "{case}"
        );
        assert!(stderr.contains(reason), "{case}");
        assert_eq!(stderr.lines().count(), 1, "{case}");
        assert!(!stdout.contains("login"), "{case}");
    }
    assert_eq!(sim.device_version(&info, "default"), None);
}

#[test]
fn rustls_against_cbc_only_says_what_the_server_offers_and_what_to_do() {
    let sim = sim_with(TlsKey::Rsa, TlsVersions::Tls12, Some("AES128-SHA"));
    let info = sim.add_device().unwrap();
    let ca = sim.ca_pem().unwrap();
    let out = check(&sim, &info, "localhost", ca.as_bytes(), &[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let port = sim.mqtts_port().unwrap();
    assert_eq!(
        stderr,
        format!(
            "ota-agent check: FAILED at tls: localhost:{port} offers TLS 1.2 with \
             TLS_RSA_WITH_AES_128_CBC_SHA, which rustls does not speak (received fatal alert: \
             HandshakeFailure): use --tls-backend openssl (tls_backend = \"openssl\")\n"
        )
    );
}

#[test]
fn check_fails_at_login_with_a_wrong_secret() {
    let sim = sim_with(TlsKey::Rsa, TlsVersions::Both, None);
    let mut info = sim.add_device().unwrap();
    info.device_secret = "not-the-secret".into();
    let ca = sim.ca_pem().unwrap();
    let out = check(&sim, &info, "localhost", ca.as_bytes(), &[]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("tls        TLS 1.3"), "{stdout}");
    assert!(
        stderr.starts_with("ota-agent check: FAILED at login: "),
        "{stderr}"
    );
    assert!(stderr.contains("device secret"), "{stderr}");
}

#[test]
fn an_extra_ca_file_adds_to_the_builtin_roots() {
    let sim = sim_with(TlsKey::Rsa, TlsVersions::Both, None);
    let info = sim.add_device().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = dir.path().join("ca.pem");
    std::fs::write(&ca_path, sim.ca_pem().unwrap()).unwrap();
    let out = Command::new(AGENT)
        .arg("check")
        .args(["--product-key", &info.id.product_key])
        .args(["--device-name", &info.id.device_name])
        .args([
            "--endpoint",
            &format!("localhost:{}", sim.mqtts_port().unwrap()),
        ])
        .arg("--extra-ca-file")
        .arg(&ca_path)
        .env("OTA_DEVICE_SECRET", &info.device_secret)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("trust      built-in roots and the extra CA file"));
    assert!(stdout.contains("anchor     extra CA file root O=ota-sim, CN=ota-sim Root CA"));
}
