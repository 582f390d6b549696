//! The MQTT-channel block reply (docs/protocol.md §6): a big-endian header length, a JSON header,
//! the data, and a little-endian CRC-16/ARC of the data.
//!
//! Every check the official SDK skips is made here: total length, code, offset, file length,
//! token and CRC. A frame that fails any of them is never fed to the image.

use alloc::borrow::Cow;

use crate::json::{self, Json, Kind};

const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_ARC);

/// CRC-16/ARC (poly 0x8005 reflected, init 0, no final xor).
pub fn crc16_arc(data: &[u8]) -> u16 {
    CRC16.checksum(data)
}

/// A checked block reply, borrowing its data from the payload.
#[derive(Debug, PartialEq, Eq)]
pub struct BlockReply<'a> {
    /// `id` of the request it answers, as text.
    pub id: Option<&'a str>,
    /// `bOffset`: where the data belongs in the file.
    pub offset: u64,
    /// `fileLength`: the whole file's size.
    pub file_length: u64,
    /// `fileToken` echoed by the cloud.
    pub token: Option<&'a str>,
    /// The block's bytes.
    pub data: &'a [u8],
}

/// Why a reply frame was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Shorter than its own header says.
    #[error("frame truncated")]
    Truncated,
    /// Longer than header + data + CRC.
    #[error("frame has trailing bytes")]
    TrailingBytes,
    /// The JSON header does not parse or lacks a field.
    #[error("frame header is not valid JSON with code and data")]
    BadHeader,
    /// `code` is not 200; the offset is given when the header had one.
    #[error("frame code {code} is not 200")]
    Code {
        /// The code received.
        code: i64,
        /// `bOffset`, if present.
        offset: Option<u64>,
    },
    /// The CRC of the data does not match.
    #[error("frame CRC mismatch at offset {offset}")]
    Crc {
        /// `bOffset` of the damaged block.
        offset: u64,
    },
}

/// The header fields a reply is checked against.
struct Header<'a> {
    code: Option<i64>,
    offset: Option<u64>,
    file_length: Option<u64>,
    size: Option<u64>,
    token: Option<&'a str>,
    id: Option<&'a str>,
    has_data: bool,
}

impl<'a> Header<'a> {
    /// Reads the JSON header; any field of the wrong type makes it a bad header.
    fn read(bytes: &'a [u8]) -> Result<Self, FrameError> {
        let doc = json::parse(bytes).map_err(|_| FrameError::BadHeader)?;
        if doc.kind() != Kind::Object {
            return Err(FrameError::BadHeader);
        }
        // The members land in place (`fields_into`), not copied out of a `Result` (~200 B
        // less in this function, flash, issue #21).
        let mut top = [None; 3];
        if doc.fields_into(&["code", "data", "id"], &mut top).is_some() {
            return Err(FrameError::BadHeader);
        }
        let [code, data, id] = top;
        let code = code.ok_or(FrameError::BadHeader)?;
        let code = match code.as_str() {
            Some(text) => json::parse_i64(&text),
            None => code.as_i64(),
        };
        let mut found = [None; 4];
        let bad_data = match data {
            Some(d) if d.kind() == Kind::Object => d
                .fields_into(&["bOffset", "fileLength", "bSize", "fileToken"], &mut found)
                .is_some(),
            Some(_) => true,
            None => false,
        };
        if bad_data {
            return Err(FrameError::BadHeader);
        }
        let [offset, file_length, size, token] = found;
        let number = |v: Option<Json>| match v {
            Some(v) => v.as_u64().map(Some).ok_or(FrameError::BadHeader),
            None => Ok(None),
        };
        let token = match token.map(|t| t.as_str()) {
            None => None,
            Some(Some(Cow::Borrowed(t))) => Some(t),
            Some(_) => return Err(FrameError::BadHeader),
        };
        Ok(Header {
            code,
            offset: number(offset)?,
            file_length: number(file_length)?,
            size: number(size)?,
            token,
            id: match id.and_then(|i| i.as_str()) {
                Some(Cow::Borrowed(t)) => Some(t),
                _ => None,
            },
            has_data: data.is_some(),
        })
    }
}

impl FrameError {
    /// The same text as `Display`, built without `core::fmt` (it goes into reports).
    pub fn describe(&self) -> alloc::string::String {
        text!(self)
    }
}

/// The text of [`FrameError::describe`] as a `text!` piece: a reason that quotes it is
/// built in one string, without a second one for the error (flash, issue #21).
impl crate::text::Piece for FrameError {
    fn push_to(&self, out: &mut alloc::string::String) {
        match *self {
            FrameError::Truncated => "frame truncated".push_to(out),
            FrameError::TrailingBytes => "frame has trailing bytes".push_to(out),
            FrameError::BadHeader => {
                "frame header is not valid JSON with code and data".push_to(out)
            }
            FrameError::Code { code, .. } => {
                "frame code ".push_to(out);
                code.push_to(out);
                " is not 200".push_to(out);
            }
            FrameError::Crc { offset } => {
                "frame CRC mismatch at offset ".push_to(out);
                offset.push_to(out);
            }
        }
    }
}

/// Parses and checks one reply frame.
pub fn parse_block_reply(frame: &[u8]) -> Result<BlockReply<'_>, FrameError> {
    let [h0, h1, rest @ ..] = frame else {
        return Err(FrameError::Truncated);
    };
    let header_len = usize::from(u16::from_be_bytes([*h0, *h1]));
    let header_bytes = rest.get(..header_len).ok_or(FrameError::Truncated)?;
    let header = Header::read(header_bytes)?;
    if header.code != Some(200) {
        return Err(FrameError::Code {
            code: header.code.unwrap_or(-1),
            offset: header.offset,
        });
    }
    let (true, Some(offset), Some(file_length), Some(size)) = (
        header.has_data,
        header.offset,
        header.file_length,
        header.size,
    ) else {
        return Err(FrameError::BadHeader);
    };
    let body = &rest[header_len..];
    let size = usize::try_from(size).map_err(|_| FrameError::Truncated)?;
    if body.len() < size.saturating_add(2) {
        return Err(FrameError::Truncated);
    }
    if body.len() > size + 2 {
        return Err(FrameError::TrailingBytes);
    }
    let (data, crc) = body.split_at(size);
    if crc16_arc(data) != u16::from_le_bytes([crc[0], crc[1]]) {
        return Err(FrameError::Crc { offset });
    }
    Ok(BlockReply {
        id: header.id,
        offset,
        file_length,
        token: header.token,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;
    use serde_json::Value;

    const FRAMES: &str = include_str!("../testdata/frames.json");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn describe_says_what_display_says() {
        use alloc::string::ToString;
        for e in [
            FrameError::Truncated,
            FrameError::TrailingBytes,
            FrameError::BadHeader,
            FrameError::Code {
                code: -7,
                offset: None,
            },
            FrameError::Crc { offset: 4096 },
        ] {
            assert_eq!(e.describe(), e.to_string());
        }
    }

    #[test]
    fn crc_vectors() {
        let doc: Value = serde_json::from_str(FRAMES).unwrap();
        for case in doc["crc16_arc"].as_array().unwrap() {
            let expected =
                u16::from_str_radix(case["crc"].as_str().unwrap().trim_start_matches("0x"), 16)
                    .unwrap();
            assert_eq!(
                crc16_arc(case["ascii"].as_str().unwrap().as_bytes()),
                expected
            );
        }
    }

    #[test]
    fn frame_vectors() {
        let doc: Value = serde_json::from_str(FRAMES).unwrap();
        for case in doc["frames"].as_array().unwrap() {
            let frame = unhex(case["hex"].as_str().unwrap());
            let parsed = parse_block_reply(&frame);
            if case["ok"] == Value::Bool(true) {
                let reply = parsed.unwrap();
                assert_eq!(reply.offset, case["offset"].as_u64().unwrap());
                assert_eq!(reply.file_length, case["file_length"].as_u64().unwrap());
                assert_eq!(reply.data, case["data_ascii"].as_str().unwrap().as_bytes());
                assert_eq!(reply.token, Some("t1"));
                assert_eq!(reply.id, Some("7"));
            } else {
                assert!(parsed.is_err(), "{}", case["name"]);
            }
        }
    }

    fn frame(header: &str, data: &[u8], crc: u16, extra: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&(header.len() as u16).to_be_bytes());
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(data);
        f.extend_from_slice(&crc.to_le_bytes());
        f.extend_from_slice(extra);
        f
    }

    #[test]
    fn every_defect_is_named() {
        let ok = r#"{"code":200,"data":{"bOffset":4,"fileLength":9,"bSize":3},"id":5}"#;
        let good = frame(ok, b"abc", crc16_arc(b"abc"), &[]);
        let reply = parse_block_reply(&good).unwrap();
        assert_eq!((reply.offset, reply.id, reply.token), (4, None, None));
        assert_eq!(
            parse_block_reply(&frame(ok, b"abc", crc16_arc(b"abc"), &[0])),
            Err(FrameError::TrailingBytes)
        );
        assert_eq!(
            parse_block_reply(&frame(ok, b"abc", 1, &[])),
            Err(FrameError::Crc { offset: 4 })
        );
        assert_eq!(
            parse_block_reply(&good[..good.len() - 3]),
            Err(FrameError::Truncated)
        );
        assert_eq!(parse_block_reply(&[0]), Err(FrameError::Truncated));
        assert_eq!(
            parse_block_reply(&frame("{", b"", 0, &[])),
            Err(FrameError::BadHeader)
        );
        for twice in [
            r#"{"code":200,"code":200,"data":{"bOffset":4,"fileLength":9,"bSize":3}}"#,
            r#"{"code":200,"data":{"bOffset":4,"bOffset":4,"fileLength":9,"bSize":3}}"#,
        ] {
            assert_eq!(
                parse_block_reply(&frame(twice, b"abc", crc16_arc(b"abc"), &[])),
                Err(FrameError::BadHeader)
            );
        }
        let missing = r#"{"code":"200","data":{"bOffset":4}}"#;
        assert_eq!(
            parse_block_reply(&frame(missing, b"", 0, &[])),
            Err(FrameError::BadHeader)
        );
        let refused = r#"{"code":404,"data":{"bOffset":8},"message":"no such stream"}"#;
        assert_eq!(
            parse_block_reply(&frame(refused, b"", 0, &[])),
            Err(FrameError::Code {
                code: 404,
                offset: Some(8)
            })
        );
        let no_data = r#"{"code":200}"#;
        assert_eq!(
            parse_block_reply(&frame(no_data, b"", 0, &[])),
            Err(FrameError::BadHeader)
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_block_reply(&bytes);
        }
    }
}
