//! The binary reply of the MQTT-channel download (docs/protocol.md §6): a 2-byte big-endian header
//! length, the JSON header, the data, and the CRC-16/ARC of the data little-endian. Built here
//! from the documented layout (not with ota-core), so a framing mistake on either side shows.

use serde::Serialize;
use serde_json::Value;

/// CRC-16/ARC: poly 0x8005 reflected, init 0, no final xor.
const ARC: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);

/// The CRC a reply carries for `data`.
pub(crate) fn crc16_arc(data: &[u8]) -> u16 {
    ARC.checksum(data)
}

/// The JSON header of a reply, fields in the documented order.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Header<'a> {
    pub(crate) code: u16,
    pub(crate) data: HeaderData<'a>,
    /// The request's id, echoed as it came (number or string).
    pub(crate) id: &'a Value,
    pub(crate) message: &'a str,
}

/// `data` of the header. Error replies have `bSize` 0 and, for an unknown file, no
/// `fileLength`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HeaderData<'a> {
    #[serde(rename = "bOffset")]
    pub(crate) b_offset: u64,
    #[serde(rename = "fileLength", skip_serializing_if = "Option::is_none")]
    pub(crate) file_length: Option<u64>,
    #[serde(rename = "bSize")]
    pub(crate) b_size: u64,
    /// Echoed when the request had one.
    #[serde(rename = "fileToken", skip_serializing_if = "Option::is_none")]
    pub(crate) file_token: Option<&'a str>,
}

/// The whole reply: `2 + H + data.len() + 2` bytes. The caller keeps the header small (ids
/// and tokens are bounded when the request is parsed), so its length fits the 2-byte field.
pub(crate) fn encode(header: &Header<'_>, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap_or_default();
    let len = u16::try_from(json.len()).unwrap_or(u16::MAX);
    let json = &json[..usize::from(len)];
    let mut frame = Vec::with_capacity(2 + json.len() + data.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(json);
    frame.extend_from_slice(data);
    frame.extend_from_slice(&crc16_arc(data).to_le_bytes());
    frame
}

/// Flips every bit of data byte `k` of an encoded reply, leaving the CRC of the true data: the
/// corruption a device must catch with the CRC. Returns whether there was such a byte.
pub(crate) fn corrupt_data_byte(frame: &mut [u8], k: usize) -> bool {
    let Some(h) = frame
        .get(..2)
        .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    else {
        return false;
    };
    let at = 2 + h + k;
    // The CRC's 2 bytes are not data.
    if at + 2 >= frame.len() {
        return false;
    }
    frame[at] ^= 0xff;
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn vectors() -> Value {
        serde_json::from_str(include_str!("../tests/data/frames.json")).unwrap()
    }

    #[test]
    fn crc_check_values() {
        for case in vectors()["crc16_arc"].as_array().unwrap() {
            let want = case["crc"].as_str().unwrap().trim_start_matches("0x");
            let want = u16::from_str_radix(want, 16).unwrap();
            assert_eq!(crc16_arc(case["ascii"].as_str().unwrap().as_bytes()), want);
        }
    }

    #[test]
    fn encodes_the_documented_frame_byte_for_byte() {
        let v = vectors();
        let case = &v["frames"][0];
        let id = Value::String("7".into());
        let header = Header {
            code: 200,
            data: HeaderData {
                b_offset: 0,
                file_length: Some(22),
                b_size: 22,
                file_token: Some("t1"),
            },
            id: &id,
            message: "success",
        };
        let frame = encode(&header, case["data_ascii"].as_str().unwrap().as_bytes());
        assert_eq!(frame, unhex(case["hex"].as_str().unwrap()));
        for bad in &v["frames"].as_array().unwrap()[1..] {
            assert_ne!(
                frame,
                unhex(bad["hex"].as_str().unwrap()),
                "{}",
                bad["name"]
            );
        }
    }

    #[test]
    fn corruption_flips_data_and_keeps_the_crc() {
        let id = Value::from(5);
        let header = Header {
            code: 200,
            data: HeaderData {
                b_offset: 0,
                file_length: Some(3),
                b_size: 3,
                file_token: None,
            },
            id: &id,
            message: "success",
        };
        let good = encode(&header, b"abc");
        let mut bad = good.clone();
        assert!(corrupt_data_byte(&mut bad, 1));
        let n = bad.len();
        assert_eq!(bad[n - 4], b'b' ^ 0xff);
        assert_eq!(bad[n - 2..], good[n - 2..]);
        assert!(!corrupt_data_byte(&mut bad, 3), "the CRC is not data");
        assert!(!corrupt_data_byte(&mut [0u8][..], 0));
    }
}
