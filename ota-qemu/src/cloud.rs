//! The cloud's side of the scripted upgrade: the device's identity and topics, the image it
//! serves, and the push announcing it (docs/protocol.md §3), built the way the platform sends it.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use md5::{Digest, Md5};

pub const PRODUCT_KEY: &str = "a1TestPK001";
pub const DEVICE_NAME: &str = "dev01";
pub const OLD_VERSION: &str = "1.0.0";
pub const NEW_VERSION: &str = "2.0.0";
/// The module a task without `module` is for.
pub const MODULE: &str = "default";

pub const UPGRADE_TOPIC: &str = "/ota/device/upgrade/a1TestPK001/dev01";
pub const INFORM_TOPIC: &str = "/ota/device/inform/a1TestPK001/dev01";
pub const PROGRESS_TOPIC: &str = "/ota/device/progress/a1TestPK001/dev01";
pub const FIRMWARE_GET_TOPIC: &str = "/sys/a1TestPK001/dev01/thing/ota/firmware/get";

/// Image size: not a multiple of the 4 KiB write block, so the last write is a short tail.
pub const IMAGE_SIZE: usize = 250_000;

/// A signed OSS-style URL, as long and escaped as the platform's.
pub const IMAGE_URL: &str = "https://ota-cn-shanghai.oss.example.com/a1TestPK001/fw-2.0.0.bin\
?Expires=1502955804&OSSAccessKeyId=LTAI4FzxXXXXXXXXXXXXXXXX&Signature=x8Kk%2F3aQ7bZ9vN1mR5tL0pWcYdE%3D";

/// The image: [`IMAGE_SIZE`] bytes of a fixed xorshift32 sequence, the same on every run.
pub fn image() -> Vec<u8> {
    let mut state: u32 = 0x2545_F491;
    (0..IMAGE_SIZE)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state >> 24) as u8
        })
        .collect()
}

/// Lower-case hex of a digest.
pub fn hex(digest: &[u8]) -> String {
    let mut out = String::with_capacity(digest.len() * 2);
    for byte in digest {
        let _ = write!(out, "{byte:02x}");
    }
    out
}

/// MD5 of `data` (set-up only: the measured bare MD5 is in main).
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// The upgrade push for the image with MD5 `md5` (hex): compact JSON, a millisecond `id`
/// beyond 2^32, `md5` and `sign` with `signMethod`, `extData` with a nested JSON string.
pub fn push(md5: &str) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        concat!(
            r#"{{"code":"1000","data":{{"size":{size},"version":"{version}","url":"{url}","#,
            r#""md5":"{md5}","sign":"{md5}","signMethod":"Md5","#,
            r#""extData":{{"key1":"value1","_package_udi":"{{\"k\":\"v\"}}"}}}},"#,
            r#""id":1626969597470,"message":"success"}}"#
        ),
        size = IMAGE_SIZE,
        version = NEW_VERSION,
        url = IMAGE_URL,
        md5 = md5,
    );
    out
}
