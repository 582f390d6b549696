//! TLS against the simulator's own TLS listeners: MQTT over TLS and HTTPS downloads with the
//! CA it generated, plain devices beside TLS ones on the same simulator, and a device that
//! trusts another CA refused.

use ota_sim::{JobSpec, PackageSpec, TaskState};
use ota_std::{Error, Trust};
use ota_tests::{image, tls_sim, TestDevice, WAIT};

#[test]
fn upgrades_over_mqtt_tls_and_https_with_the_simulators_ca() {
    let sim = tls_sim();
    let ca = sim.ca_pem().expect("a generated CA");
    let port = sim.mqtts_port().expect("a TLS port");
    let (tls_info, plain_info) = (sim.add_device().unwrap(), sim.add_device().unwrap());
    let data = image(250_000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package).dynamic()).unwrap();
    let trust = Trust::CaPem(ca.into_bytes());
    let tls_device = TestDevice::start(&sim, &tls_info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = port;
        c.mqtt_tls = Some(trust.clone());
        c.https_trust = trust;
        c.agent.rules.allow_http = false; // https only, as on the real cloud
    });
    let plain_device = TestDevice::start(&sim, &plain_info, |_| {});
    for (info, device) in [(&tls_info, &tls_device), (&plain_info, &plain_device)] {
        sim.wait_task_state(job, info, TaskState::Succeeded, WAIT)
            .unwrap();
        device.expect_succeeded("2.0.0");
        assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
        let statuses: Vec<u16> = sim.downloads(info).iter().map(|r| r.status).collect();
        assert_eq!(statuses, [200]);
    }
    // The TLS device was given an https URL, the plain one an http URL.
    let https = sim.https_base_url().unwrap();
    assert!(sim
        .signed_url(package, &tls_info)
        .unwrap()
        .starts_with(https));
    let plain_url = sim.signed_url(package, &plain_info).unwrap();
    assert!(plain_url.starts_with(sim.http_base_url()), "{plain_url}");
    tls_device.stop();
    plain_device.stop();
}

#[test]
fn a_device_trusting_another_ca_is_refused() {
    let sim = tls_sim();
    let port = sim.mqtts_port().unwrap();
    let info = sim.add_device().unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = port;
        c.mqtt_tls = Some(Trust::CaPem(other.cert.pem().into_bytes()));
    });
    let err = device.handle.join().unwrap_err();
    let Error::Mqtt(message) = &err else {
        panic!("unexpected error {err:?}");
    };
    assert!(
        message.starts_with("TLS with the broker localhost:"),
        "{message}"
    );
    assert!(message.contains("UnknownIssuer"), "{message}");
    assert_eq!(sim.device_version(&info, "default"), None);
}
