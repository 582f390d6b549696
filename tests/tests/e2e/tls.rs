//! TLS for MQTT and HTTPS, with a CA made in the test and a TLS-terminating proxy in front of
//! the simulator's plain ports.

use md5::{Digest, Md5};
use ota_sim::{JobSpec, PackageSpec, TaskState};
use ota_std::{Error, Trust};
use ota_tests::{
    http_addr, image, mqtt_addr, publish_as_cloud, sim, tls_proxy, TestCa, TestDevice, WAIT,
};

#[test]
fn upgrades_with_mqtt_over_tls() {
    let sim = sim();
    let ca = TestCa::new();
    let port = tls_proxy(&ca, mqtt_addr(&sim));
    let info = sim.add_device().unwrap();
    let data = image(200_000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = port;
        c.mqtt_tls = Some(Trust::CaPem(ca.ca_pem.clone().into_bytes()));
    });
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    device.stop();
}

#[test]
fn downloads_over_https_with_the_test_ca() {
    let sim = sim();
    let ca = TestCa::new();
    let mqtt_port = tls_proxy(&ca, mqtt_addr(&sim));
    let https_port = tls_proxy(&ca, http_addr(&sim));
    let info = sim.add_device().unwrap();
    let data = image(250_000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let trust = Trust::CaPem(ca.ca_pem.clone().into_bytes());
    let device = TestDevice::start(&sim, &info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = mqtt_port;
        c.mqtt_tls = Some(trust.clone());
        c.https_trust = trust;
        c.agent.rules.allow_http = false; // https only, as on the real cloud
        c.agent.request_task_on_connect = false; // the task comes as a push below
    });
    sim.wait_version(&info, "default", "1.0.0", WAIT).unwrap();

    // The simulator's signed URL, served through the TLS proxy: the same path and
    // signature, so the firmware server still knows the device.
    let plain = sim.signed_url(package, &info).unwrap();
    let url = plain.replace(
        sim.http_base_url(),
        &format!("https://localhost:{https_port}"),
    );
    let md5: String = Md5::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let push = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"{url}","md5":"{md5}","sign":"{md5}","signMethod":"Md5"}},"id":1,"message":"success"}}"#,
        data.len()
    );
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    publish_as_cloud(&sim, &format!("/ota/device/upgrade/{pk}/{dn}"), push);

    device.expect_succeeded("2.0.0");
    assert_eq!(std::fs::read(device.path("firmware.img")).unwrap(), data);
    let statuses: Vec<u16> = sim.downloads(&info).iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200]);
    sim.wait_version(&info, "default", "2.0.0", WAIT).unwrap();
    device.stop();
}

#[test]
fn untrusted_broker_certificate_is_a_clear_error() {
    let sim = sim();
    let ca = TestCa::new();
    let port = tls_proxy(&ca, mqtt_addr(&sim));
    let info = sim.add_device().unwrap();
    let device = TestDevice::start(&sim, &info, |c| {
        c.broker_host = "localhost".into();
        c.broker_port = port;
        c.mqtt_tls = Some(Trust::WebPkiRoots);
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
}
