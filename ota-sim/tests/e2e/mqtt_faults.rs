//! Every MQTT-channel reply fault fires and is seen by the device. "No reply" is observed
//! without sleeping: replies leave in request order, so the reply to a later request arriving
//! first proves the earlier one was not sent.

use crate::device::{firmware, WAIT};
use crate::mqtt::pushed;
use ota_sim::{Fault, PackageSpec, Times};
use std::time::{Duration, Instant};

const SIZE: usize = 30_000;
const BLOCK: u64 = 10_000;

fn setup() -> (
    ota_sim::Sim,
    ota_sim::DeviceInfo,
    crate::device::Device,
    u64,
    Vec<u8>,
) {
    let data = firmware(SIZE);
    let (sim, info, dev, _job, push) = pushed(PackageSpec::new("2.0.0", data.clone()).mqtt());
    let stream = push["data"]["streamId"].as_u64().unwrap();
    (sim, info, dev, stream, data)
}

fn id_of(frame: &crate::blocks::Frame) -> &str {
    frame.header["id"].as_str().unwrap()
}

#[test]
fn drop_sends_no_reply() {
    let (sim, info, dev, stream, data) = setup();
    let fault = sim.set_fault(&info, Fault::DropReply, Times::Once);
    dev.request_block(1, stream, 1, 0, BLOCK);
    dev.request_block(2, stream, 1, 0, BLOCK);
    let frame = dev.expect_frame(WAIT);
    assert_eq!(id_of(&frame), "2");
    assert_eq!(frame.data, &data[..BLOCK as usize]);
    assert_eq!(sim.fault_fired(fault), 1);
    assert_eq!(
        sim.blocks(&info).len(),
        2,
        "a dropped reply is still recorded"
    );
}

#[test]
fn delay_holds_one_reply_back_without_holding_up_others() {
    let (sim, info, dev, stream, _data) = setup();
    let delay = Duration::from_millis(300);
    let fault = sim.set_fault(&info, Fault::DelayReply(delay), Times::Once);
    let start = Instant::now();
    dev.request_block(1, stream, 1, 0, BLOCK);
    dev.request_block(2, stream, 1, BLOCK, BLOCK);
    assert_eq!(id_of(&dev.expect_frame(WAIT)), "2");
    let late = dev.expect_frame(WAIT);
    assert!(start.elapsed() >= delay, "{:?}", start.elapsed());
    assert_eq!(id_of(&late), "1");
    assert!(late.is_good_for(0));
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn duplicate_sends_the_reply_twice() {
    let (sim, info, dev, stream, _data) = setup();
    let fault = sim.set_fault(&info, Fault::DuplicateReply, Times::Once);
    dev.request_block(1, stream, 1, BLOCK, BLOCK);
    let first = dev.expect_frame(WAIT);
    assert_eq!(dev.expect_frame(WAIT), first);
    assert!(first.is_good_for(BLOCK));
    dev.request_block(2, stream, 1, 0, BLOCK);
    assert_eq!(id_of(&dev.expect_frame(WAIT)), "2");
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn reorder_sends_a_reply_after_the_next_one() {
    let (sim, info, dev, stream, data) = setup();
    let fault = sim.set_fault(&info, Fault::ReorderReply, Times::Once);
    dev.request_block(1, stream, 1, 0, BLOCK);
    dev.request_block(2, stream, 1, BLOCK, BLOCK);
    let second = dev.expect_frame(WAIT);
    let first = dev.expect_frame(WAIT);
    assert_eq!((id_of(&second), id_of(&first)), ("2", "1"));
    assert!(second.is_good_for(BLOCK) && first.is_good_for(0));
    assert_eq!(first.data, &data[..BLOCK as usize]);
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn corrupt_block_fails_the_crc_and_a_retry_gets_good_data() {
    let (sim, info, dev, stream, data) = setup();
    let fault = sim.set_fault(&info, Fault::CorruptBlock, Times::Once);
    dev.request_block(1, stream, 1, BLOCK, BLOCK);
    let bad = dev.expect_frame(WAIT);
    assert!(!bad.crc_ok, "the device must see the corruption");
    assert_eq!(bad.offset(), BLOCK);
    let good_data = &data[BLOCK as usize..2 * BLOCK as usize];
    let differing = bad
        .data
        .iter()
        .zip(good_data)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(differing, 1);
    dev.request_block(2, stream, 1, BLOCK, BLOCK);
    let good = dev.expect_frame(WAIT);
    assert!(good.is_good_for(BLOCK));
    assert_eq!(good.data, good_data);
    assert_eq!(sim.fault_fired(fault), 1);
}

#[test]
fn wrong_offset_is_announced_with_a_valid_crc() {
    let (sim, info, dev, stream, _data) = setup();
    let fault = sim.set_fault(&info, Fault::WrongOffset, Times::Count(2));
    for id in 1..=3 {
        dev.request_block(id, stream, 1, BLOCK, BLOCK);
    }
    let frames: Vec<_> = (0..3).map(|_| dev.expect_frame(WAIT)).collect();
    assert!(frames.iter().all(|f| f.crc_ok));
    let accepted: Vec<bool> = frames.iter().map(|f| f.is_good_for(BLOCK)).collect();
    assert_eq!(accepted, [false, false, true]);
    assert_eq!(frames[0].offset(), BLOCK + 1);
    assert_eq!(sim.fault_fired(fault), 2);
}

#[test]
fn faults_leave_error_replies_alone() {
    let (sim, info, dev, stream, _data) = setup();
    let fault = sim.set_fault(&info, Fault::DropReply, Times::Once);
    dev.request_block(1, stream, 1, SIZE as u64, BLOCK);
    assert_eq!(dev.expect_frame(WAIT).code(), 400);
    assert_eq!(sim.fault_fired(fault), 0);
    sim.clear_faults(&info);
    // The HTTP faults do not touch block replies either.
    let http = sim.set_fault(&info, Fault::CorruptByte(5), Times::Always);
    dev.request_block(2, stream, 1, 0, BLOCK);
    assert!(dev.expect_frame(WAIT).is_good_for(0));
    assert_eq!(sim.fault_fired(http), 0);
    assert_eq!(sim.fault_fired(fault), 0);
}
