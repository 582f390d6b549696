//! The firmware server (docs/protocol.md §5): Range, signed URLs, and every injectable fault.

use crate::device::{firmware, http_get, Got, WAIT};
use crate::sim;
use ota_sim::{DeviceInfo, Fault, PackageSpec, Sim, Times};
use std::time::{Duration, Instant};

const SIZE: usize = 100_000;

fn setup() -> (Sim, DeviceInfo, String, Vec<u8>) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = firmware(SIZE);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()))
        .unwrap();
    let url = sim.signed_url(package, &info).unwrap();
    (sim, info, url, data)
}

fn get(url: &str, range: Option<&str>) -> Got {
    http_get(url, range, WAIT)
}

#[test]
fn whole_file_has_content_length() {
    let (sim, info, url, data) = setup();
    let got = get(&url, None);
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-length"), Some("100000"));
    assert_eq!(got.body, data);
    assert_eq!(sim.downloads(&info).len(), 1);
}

#[test]
fn range_requests_get_206_with_content_range() {
    let (_sim, _info, url, data) = setup();
    let got = get(&url, Some("bytes=40000-"));
    assert_eq!(got.status, 206);
    assert_eq!(
        got.header("content-range"),
        Some("bytes 40000-99999/100000")
    );
    assert_eq!(got.header("content-length"), Some("60000"));
    assert_eq!(got.body, &data[40000..]);
    let got = get(&url, Some("bytes=10-19"));
    assert_eq!(got.status, 206);
    assert_eq!(got.header("content-range"), Some("bytes 10-19/100000"));
    assert_eq!(got.body, &data[10..20]);
    let got = get(&url, Some("bytes=100000-"));
    assert_eq!(got.status, 416);
    assert_eq!(got.header("content-range"), Some("bytes */100000"));
}

#[test]
fn expired_url_gets_403_access_denied() {
    let (sim, info, _url, _data) = setup();
    sim.set_url_ttl(Duration::ZERO);
    let url = sim.signed_url(ota_sim::PackageId(0), &info).unwrap();
    let got = get(&url, None);
    assert_eq!(got.status, 403);
    let body = String::from_utf8(got.body).unwrap();
    assert!(
        body.contains("<Error>") && body.contains("<Code>AccessDenied</Code>"),
        "{body}"
    );
    assert!(
        body.contains("<Message>Request has expired</Message>"),
        "{body}"
    );
}

#[test]
fn altered_url_gets_403_signature_does_not_match() {
    let (sim, info, url, _data) = setup();
    let other = sim.add_device().unwrap();
    for altered in [
        url.replace(&info.id.device_name, &other.id.device_name),
        url.replace("Expires=", "Expires=9"),
        url.replace("/fw/0/", "/fw/1/"),
        url.split("&Signature").next().unwrap().to_owned(),
    ] {
        let got = get(&altered, None);
        assert_eq!(got.status, 403, "{altered}");
        let body = String::from_utf8(got.body).unwrap();
        assert!(
            body.contains("<Code>SignatureDoesNotMatch</Code>"),
            "{body}"
        );
    }
}

#[test]
fn cut_after_n_bytes_fires_once() {
    let (sim, info, url, data) = setup();
    let fault = sim.set_fault(&info, Fault::CutAfter(30_000), Times::Once);
    let got = get(&url, None);
    assert_eq!(got.status, 200);
    assert!(got.error.is_some(), "the body must end short");
    assert_eq!(got.body, &data[..30_000]);
    assert_eq!(sim.fault_fired(fault), 1);
    let again = get(&url, Some("bytes=30000-"));
    assert_eq!((again.status, again.error), (206, None));
    assert_eq!(again.body, &data[30_000..]);
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn ignore_range_answers_200_with_whole_file() {
    let (sim, info, url, data) = setup();
    let fault = sim.set_fault(&info, Fault::IgnoreRange, Times::Always);
    let full = get(&url, None);
    assert_eq!(
        sim.fault_fired(fault),
        0,
        "a request without Range is not affected"
    );
    assert_eq!(full.body, data);
    let got = get(&url, Some("bytes=5000-"));
    assert_eq!(got.status, 200);
    assert_eq!(got.header("content-range"), None);
    assert_eq!(got.body, data);
    assert_eq!(sim.fault_fired(fault), 1);
}

fn status_fault(code: u16, times: Times, expected: &[u16]) {
    let (sim, info, url, _data) = setup();
    let fault = sim.set_fault(&info, Fault::Status(code), times);
    let statuses: Vec<u16> = (0..expected.len())
        .map(|_| get(&url, None).status)
        .collect();
    assert_eq!(statuses, expected);
    let fired = expected.iter().filter(|&&s| s == code).count() as u32;
    assert_eq!(sim.fault_fired(fault), fired);
}

#[test]
fn status_403_404_500_once() {
    status_fault(403, Times::Once, &[403, 200]);
    status_fault(404, Times::Once, &[404, 200]);
    status_fault(500, Times::Once, &[500, 200]);
}

#[test]
fn status_403_404_500_always() {
    status_fault(403, Times::Always, &[403, 403, 403]);
    status_fault(404, Times::Always, &[404, 404, 404]);
    status_fault(500, Times::Always, &[500, 500, 500]);
    status_fault(500, Times::Count(2), &[500, 500, 200]);
}

#[test]
fn status_fault_body_is_xml() {
    let (sim, info, url, _data) = setup();
    sim.set_fault(&info, Fault::Status(500), Times::Once);
    let body = String::from_utf8(get(&url, None).body).unwrap();
    assert!(body.contains("<Code>InternalError</Code>"), "{body}");
}

#[test]
fn corrupt_byte_k_flips_that_byte_only() {
    let (sim, info, url, data) = setup();
    let fault = sim.set_fault(&info, Fault::CorruptByte(70_000), Times::Once);
    let untouched = get(&url, Some("bytes=0-999"));
    assert_eq!(untouched.body, &data[..1000]);
    assert_eq!(
        sim.fault_fired(fault),
        0,
        "byte outside the range is not sent"
    );
    let got = get(&url, Some("bytes=50000-"));
    let mut expected = data[50_000..].to_vec();
    expected[20_000] ^= 0xff;
    assert_eq!(got.body, expected);
    assert_eq!(sim.fault_fired(fault), 1);
    assert_eq!(get(&url, None).body, data);
}

#[test]
fn stall_sends_some_bytes_then_nothing() {
    let (sim, info, url, data) = setup();
    let stall = Fault::Stall {
        after: 20_000,
        duration: Duration::from_secs(3),
    };
    let fault = sim.set_fault(&info, stall, Times::Once);
    let got = http_get(&url, None, Duration::from_millis(400));
    assert!(got.error.is_some(), "the body must not complete");
    assert_eq!(got.body, &data[..20_000]);
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn rate_limit_slows_the_body() {
    let (sim, info, url, data) = setup();
    let fault = sim.set_fault(&info, Fault::RateLimit(400_000), Times::Always);
    let start = Instant::now();
    let got = get(&url, None);
    let took = start.elapsed();
    assert_eq!(got.body, data);
    assert!(
        took >= Duration::from_millis(200),
        "100 kB at 400 kB/s took {took:?}"
    );
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn faults_are_per_device() {
    let (sim, info, _url, data) = setup();
    let other = sim.add_device().unwrap();
    let fault = sim.set_fault(&info, Fault::Status(500), Times::Always);
    let url = sim.signed_url(ota_sim::PackageId(0), &other).unwrap();
    assert_eq!(get(&url, None).body, data);
    assert_eq!(sim.fault_fired(fault), 0);
    sim.clear_faults(&info);
}
