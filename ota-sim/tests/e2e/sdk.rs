//! The official Link SDK's habits: it logs in with `_ss=1` and never subscribes to the OTA
//! downlink topics, hand-builds block requests with a trailing comma, and expects its
//! `fileToken` back.

use crate::blocks::decode;
use crate::device::{firmware, Device, WAIT};
use crate::sim;
use ota_sim::{Credentials, JobSpec, PackageSpec, TaskState, SDK_TIMESTAMP};

#[test]
fn a_client_that_never_subscribes_gets_its_push_replies_and_blocks() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let data = firmware(6_000);
    let package = sim
        .add_package(PackageSpec::new("2.0.0", data.clone()).mqtt())
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    // The client id as Link SDK 4.x builds it; the password signs the part before `|`.
    let mut creds = Credentials::new(&info.id, &info.device_secret);
    let (pk, dn) = (&info.id.product_key, &info.id.device_name);
    creds.client_id = format!(
        "{pk}.{dn}|timestamp={SDK_TIMESTAMP},_ss=1,_v=sdk-c-4.2.0,securemode=3,signmethod=hmacsha256,ext=3|"
    );
    let mut dev = Device::connect(sim.mqtt_host(), sim.mqtt_port(), &info.id, &creds).unwrap();

    // No SUBSCRIBE was sent, and none is acknowledged to the device.
    dev.inform("1.0.0");
    let push = dev.expect_push();
    assert_eq!(push["data"]["version"], "2.0.0");
    dev.firmware_get("\"77\"", None);
    let reply = dev.expect_get_reply();
    assert_eq!(reply["id"], "77");
    assert_eq!(reply["data"]["streamId"], push["data"]["streamId"]);

    let stream = push["data"]["streamId"].as_u64().unwrap();
    let request = format!(
        "{{\"id\":3,\"version\":\"1.0\",\"params\":{{\"fileToken\":\"tok-9\",\"fileInfo\":{{\"streamId\":{stream},\"fileId\":1,}},\"fileBlock\":{{\"size\":4096,\"offset\":0,}},}}}}"
    );
    dev.request_block_raw(&request);
    let (topic, bytes) = dev.recv_raw(WAIT).expect("a block reply");
    assert_eq!(topic, dev.sys_topic("thing/file/download_reply"));
    let frame = decode(&bytes).unwrap();
    assert!(frame.is_good_for(0), "{:?}", frame.header);
    assert_eq!(frame.header["id"], 3);
    assert_eq!(frame.header["data"]["fileToken"], "tok-9");
    assert_eq!(frame.data, data[..4096]);
    dev.progress(50, "downloading");
    sim.wait_task_state(job, &info, TaskState::InProgress, WAIT)
        .unwrap();
}

#[test]
fn a_client_without_ss_gets_only_what_it_subscribed_to() {
    let sim = sim();
    let info = sim.add_device().unwrap();
    let package = sim
        .add_package(PackageSpec::new("2.0.0", firmware(100)))
        .unwrap();
    let job = sim.create_job(JobSpec::batch(package)).unwrap();
    let mut creds = Credentials::new(&info.id, &info.device_secret);
    creds.client_id = creds.client_id.replace("_ss=1,", "");
    let mut dev = Device::connect(sim.mqtt_host(), sim.mqtt_port(), &info.id, &creds).unwrap();
    dev.inform("1.0.0");
    // The push went out to the broker before the subscription below exists.
    sim.wait_task_state(job, &info, TaskState::Notified, WAIT)
        .unwrap();
    dev.subscribe_to(&dev.sys_topic("thing/ota/firmware/get_reply"));
    dev.firmware_get("\"2\"", None);
    // The first message the device gets is the reply it subscribed for, not the push.
    assert_eq!(dev.expect_get_reply()["id"], "2");
}
