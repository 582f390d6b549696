//! The device side of the MQTT-channel download (docs/protocol.md §6), written from the documented
//! frame layout with its own CRC, so it checks the simulator rather than sharing its code.

use crate::device::{Device, WAIT};
use serde_json::Value;
use std::time::Duration;

const ARC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);

/// A decoded block reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub header: Value,
    pub data: Vec<u8>,
    /// The CRC trailer matches the data.
    pub crc_ok: bool,
}

impl Frame {
    pub fn code(&self) -> u64 {
        self.header["code"].as_u64().unwrap()
    }

    pub fn offset(&self) -> u64 {
        self.header["data"]["bOffset"].as_u64().unwrap()
    }

    /// A reply a careful device accepts for a request of `offset`.
    pub fn is_good_for(&self, offset: u64) -> bool {
        self.crc_ok && self.code() == 200 && self.offset() == offset
    }
}

/// Splits a reply; `Err` when its length does not add up.
pub fn decode(bytes: &[u8]) -> Result<Frame, String> {
    let h = usize::from(u16::from_be_bytes(
        bytes.get(..2).ok_or("short")?.try_into().unwrap(),
    ));
    let header: Value = serde_json::from_slice(bytes.get(2..2 + h).ok_or("short header")?)
        .map_err(|e| e.to_string())?;
    let size = header["data"]["bSize"].as_u64().unwrap_or(0) as usize;
    if bytes.len() != 2 + h + size + 2 {
        return Err(format!("length {} != 2+{h}+{size}+2", bytes.len()));
    }
    let data = bytes[2 + h..2 + h + size].to_vec();
    let crc = u16::from_le_bytes([bytes[2 + h + size], bytes[3 + h + size]]);
    Ok(Frame {
        crc_ok: crc == ARC.checksum(&data),
        header,
        data,
    })
}

/// The documented request, with the id as given (raw JSON) and the `t1` token.
pub fn request(id: &str, stream: u64, file: u64, offset: u64, size: u64) -> String {
    format!(
        r#"{{"id":{id},"version":"1.0","params":{{"fileToken":"t1","fileInfo":{{"streamId":{stream},"fileId":{file}}},"fileBlock":{{"size":{size},"offset":{offset}}}}}}}"#
    )
}

impl Device {
    /// Publishes a raw block request.
    pub fn request_block_raw(&self, payload: &str) {
        self.publish_raw(&self.sys_topic("thing/file/download"), payload.as_bytes());
    }

    /// Requests one block with a string id.
    pub fn request_block(&self, id: u32, stream: u64, file: u64, offset: u64, size: u64) {
        self.request_block_raw(&request(&format!("\"{id}\""), stream, file, offset, size));
    }

    /// The next block reply; panics on anything else.
    pub fn expect_frame(&self, timeout: Duration) -> Frame {
        let (topic, bytes) = self.recv_raw(timeout).expect("a block reply");
        assert_eq!(topic, self.sys_topic("thing/file/download_reply"));
        decode(&bytes).expect("a well-formed frame")
    }

    /// Fetches a whole file block by block, one request in flight, checking every reply like
    /// a careful device: CRC, code, offset, echoed id and token, file length.
    pub fn fetch_file(&self, stream: u64, file: u64, len: u64, block: u64) -> Vec<u8> {
        let mut image = Vec::new();
        let mut id = 100;
        while (image.len() as u64) < len {
            id += 1;
            let offset = image.len() as u64;
            self.request_block(id, stream, file, offset, block);
            let frame = self.expect_frame(WAIT);
            assert!(frame.is_good_for(offset), "{:?}", frame.header);
            assert_eq!(frame.header["id"], id.to_string());
            assert_eq!(frame.header["data"]["fileToken"], "t1");
            assert_eq!(frame.header["data"]["fileLength"], len);
            assert_eq!(frame.data.len() as u64, block.min(len - offset));
            image.extend_from_slice(&frame.data);
        }
        image
    }
}

#[test]
fn decoder_agrees_with_the_shared_vectors() {
    let v: Value = serde_json::from_str(include_str!("../data/frames.json")).unwrap();
    for case in v["frames"].as_array().unwrap() {
        let hex = case["hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let ok = decode(&bytes).is_ok_and(|f| f.is_good_for(0));
        assert_eq!(ok, case["ok"].as_bool().unwrap(), "{}", case["name"]);
    }
    assert_eq!(ARC.checksum(b"123456789"), 0xbb3d);
}
