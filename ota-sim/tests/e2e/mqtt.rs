//! MQTT-channel download (docs/protocol.md §6) end to end: whole images block by block, requests past
//! the end, the official SDK's quirky requests, and refusals.

use crate::device::{firmware, Device, WAIT};
use crate::sim;
use ota_sim::{DeviceInfo, JobId, JobSpec, PackageSpec, SignMethod, Sim, TaskState};
use serde_json::Value;
use sha2::{Digest, Sha256};

const SIZE: usize = 25_000;

/// A simulator with one online device that received the push of an MQTT-channel package.
pub fn pushed(spec: PackageSpec) -> (Sim, DeviceInfo, Device, JobId, Value) {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim.add_package(spec).unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let mut dev = Device::online(&sim, &info);
    dev.inform("1.0.0");
    let push = dev.expect_push();
    (sim, info, dev, job, push)
}

fn stream_of(push: &Value) -> u64 {
    push["data"]["streamId"].as_u64().expect("a streamId")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn whole_image_block_by_block_with_crc_and_digest() {
    let data = firmware(SIZE);
    let spec = PackageSpec::new("2.0.0", data.clone())
        .sign_method(SignMethod::Sha256)
        .mqtt();
    let (sim, info, mut dev, job, push) = pushed(spec);
    let d = &push["data"];
    assert!(d.get("url").is_none(), "{d}");
    assert_eq!(d["dProtocol"], "mqtt");
    assert_eq!(d["streamFileId"], 1);
    assert_eq!(d["size"], SIZE);
    let stream = stream_of(&push);
    let image = dev.fetch_file(stream, 1, SIZE as u64, 10_240);
    assert_eq!(hex(&Sha256::digest(&image)), d["sign"].as_str().unwrap());
    assert_eq!(image, data);
    let served: Vec<(u64, u64, u64)> = sim
        .blocks(&info)
        .iter()
        .map(|b| (b.offset, b.size, b.sent))
        .collect();
    assert_eq!(
        served,
        [
            (0, 10_240, 10_240),
            (10_240, 10_240, 10_240),
            (20_480, 10_240, 4_520)
        ]
    );
    assert!(sim.blocks(&info).iter().all(|b| b.code == 200
        && b.stream_id == stream
        && b.file.as_deref() == Some("firmware-2.0.0.bin")));
    // At and past the end: an error code and no data.
    for offset in [SIZE as u64, SIZE as u64 + 1] {
        dev.request_block(9, stream, 1, offset, 1024);
        let frame = dev.expect_frame(WAIT);
        assert_eq!(frame.code(), 400);
        assert_eq!(frame.header["data"]["bSize"], 0);
        assert_eq!(frame.header["data"]["fileLength"], SIZE);
        assert!(frame.data.is_empty() && frame.crc_ok);
    }
    assert_eq!(sim.blocks(&info).last().unwrap().code, 400);
    dev.progress(100, "downloaded");
    dev.inform("2.0.0");
    sim.wait_task_state(job, &info, TaskState::Succeeded, WAIT)
        .unwrap();
}

#[test]
fn firmware_get_reply_carries_the_same_stream() {
    let spec = PackageSpec::new("2.0.0", firmware(100)).mqtt();
    let (_sim, _info, dev, _job, push) = pushed(spec);
    dev.firmware_get("\"3\"", None);
    let reply = dev.expect_get_reply();
    assert_eq!(reply["data"], push["data"]);
}

#[test]
fn quirky_sdk_requests_are_answered() {
    let data = firmware(SIZE);
    let (sim, info, dev, _job, push) = pushed(PackageSpec::new("2.0.0", data.clone()).mqtt());
    let stream = stream_of(&push);
    // Numeric id, no version, no fileToken, pretty-printed, extra keys, a size running past
    // the end, numbers as digit strings.
    let pretty = format!(
        "{{\n  \"id\": 1626969597470,\n  \"params\": {{\n    \"fileInfo\": {{ \"streamId\": {stream}, \"fileId\": \"1\" }},\n    \"fileBlock\": {{ \"size\": 10240, \"offset\": \"20000\", \"x\": 1 }},\n    \"unknown\": [1, 2]\n  }},\n  \"method\": \"thing.file.download\"\n}}"
    );
    dev.request_block_raw(&pretty);
    let frame = dev.expect_frame(WAIT);
    assert!(frame.is_good_for(20_000), "{}", frame.header);
    assert_eq!(frame.header["id"], 1626969597470u64);
    assert!(frame.header["data"].get("fileToken").is_none());
    assert_eq!(frame.header["data"]["bSize"], 5_000);
    assert_eq!(frame.data, &data[20_000..]);
    assert_eq!(frame.header["message"], "success");
    let record = sim.blocks(&info).pop().unwrap();
    assert_eq!(
        (record.offset, record.size, record.sent),
        (20_000, 10_240, 5_000)
    );
}

#[test]
fn unusable_requests_and_foreign_streams_are_refused() {
    let (sim, info, dev, job, push) = pushed(PackageSpec::new("2.0.0", firmware(100)).mqtt());
    let stream = stream_of(&push);
    // Not JSON: ignored (the next reply answers the next request).
    dev.request_block_raw("not json");
    let cases: Vec<(String, u64)> = vec![
        (
            crate::blocks::request("\"1\"", stream + 1000, 1, 0, 10),
            404,
        ),
        (crate::blocks::request("\"2\"", stream, 2, 0, 10), 404),
        (crate::blocks::request("\"3\"", stream, 1, 0, 0), 400),
        (
            r#"{"id":"4","params":{"fileBlock":{"size":10,"offset":0}}}"#.into(),
            400,
        ),
        (
            format!(r#"{{"id":"5","params":{{"fileInfo":{{"streamId":{stream},"fileId":1}}}}}}"#),
            400,
        ),
    ];
    for (request, code) in &cases {
        dev.request_block_raw(request);
        let frame = dev.expect_frame(WAIT);
        assert_eq!(frame.code(), *code, "{request} -> {}", frame.header);
        assert!(frame.data.is_empty() && frame.crc_ok);
        assert_eq!(frame.header["data"]["bSize"], 0);
    }
    let codes: Vec<u16> = sim.blocks(&info).iter().map(|b| b.code).collect();
    assert_eq!(codes, [404, 404, 400, 400, 400]);
    // Another device cannot read this device's stream.
    let other_info = sim.add_device().unwrap();
    let other = Device::online(&sim, &other_info);
    other.request_block(1, stream, 1, 0, 10);
    assert_eq!(other.expect_frame(WAIT).code(), 404);
    // Nor can this one once the task is over.
    sim.cancel_job(job).unwrap();
    dev.request_block(6, stream, 1, 0, 10);
    assert_eq!(dev.expect_frame(WAIT).code(), 404);
}

#[test]
fn http_tasks_have_no_stream() {
    let (_sim, _info, dev, _job, push) = pushed(PackageSpec::new("2.0.0", firmware(100)));
    assert!(push["data"].get("streamId").is_none());
    assert!(push["data"].get("dProtocol").is_none());
    dev.request_block(1, 1_397_345, 1, 0, 10);
    assert_eq!(dev.expect_frame(WAIT).code(), 404);
}

#[test]
fn limits_of_the_mqtt_channel() {
    let sim = sim();
    let big = vec![0u8; ota_sim::MAX_MQTT_FILE_SIZE + 1];
    let err = sim
        .add_package(PackageSpec::new("2.0.0", big.clone()).mqtt())
        .unwrap_err();
    assert!(matches!(err, ota_sim::Error::InvalidPackage(_)), "{err}");
    sim.add_package(PackageSpec::new("2.0.0", big)).unwrap();
    let (_sim, _info, dev, _job, push) = pushed(PackageSpec::new("2.0.0", firmware(100)).mqtt());
    let too_big = ota_sim::MAX_BLOCK_SIZE + 1;
    dev.request_block(1, stream_of(&push), 1, 0, too_big);
    assert_eq!(dev.expect_frame(WAIT).code(), 400);
}
