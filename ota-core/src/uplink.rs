//! Encoders for what the device sends (docs/protocol.md §2, §3, §4, §6): compact JSON, byte-exact.
//!
//! They append to a caller's buffer so that the agent can reuse one arena and send
//! progress without allocating once the arena has grown to its working size.

use alloc::vec::Vec;

use crate::identity::DEFAULT_MODULE;

/// A failure code of the progress topic (docs/protocol.md §4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// `-1`: the upgrade failed (invalid task, rollback, anything not below).
    UpgradeFailed,
    /// `-2`: the download failed.
    DownloadFailed,
    /// `-3`: the image did not verify.
    VerifyFailed,
    /// `-4`: writing or activating the image failed.
    FlashFailed,
}

impl FailureCode {
    /// The step value sent on the wire.
    pub fn step(self) -> i8 {
        match self {
            FailureCode::UpgradeFailed => -1,
            FailureCode::DownloadFailed => -2,
            FailureCode::VerifyFailed => -3,
            FailureCode::FlashFailed => -4,
        }
    }
}

/// A progress step: a percentage in 1..=100 or a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// 1..=100 percent (0 is never sent: the platform reads it as a failure).
    Percent(u8),
    /// A failure code.
    Failed(FailureCode),
}

impl Step {
    fn value(self) -> i16 {
        match self {
            Step::Percent(p) => i16::from(p.clamp(1, 100)),
            Step::Failed(code) => i16::from(code.step()),
        }
    }
}

/// `{"id":"1","params":{"version":"1.2.0"[,"module":"MCU"]}}` on the inform topic. The legacy
/// request topic takes the same shape.
pub fn encode_inform(out: &mut Vec<u8>, id: u64, version: &str, module: &str) {
    open_params(out, id);
    out.extend_from_slice(b"\"version\":");
    push_json_str(out, version);
    push_module(out, module);
    out.extend_from_slice(b"}}");
}

/// `{"id":"4","params":{"step":"37","desc":"downloading"[,"module":"MCU"]}}` on the progress topic.
///
/// Sent for every step of every download, so built without the generic helpers: the arena
/// grows once by the longest report and is written in place, each fixed part one copy of a
/// known length, the numbers written directly; only a description other than "downloading"
/// or a module other than the default goes through [`push_json_str`].
pub fn encode_progress(out: &mut Vec<u8>, id: u64, step: Step, desc: &str, module: &str) {
    // The longest report of a download (20-digit id, step 100, default module): copied in
    // one piece, its head already in place (rather than zeroed a byte at a time).
    const LONGEST: &[u8] =
        b"{\"id\":\"00000000000000000000\",\"params\":{\"step\":\"000\",\"desc\":\"downloading\"}}";
    const HEAD: usize = b"{\"id\":\"".len();
    const STEP: &[u8] = b"\",\"params\":{\"step\":\"";
    const DESC: &[u8] = b"\",\"desc\":";
    const DOWNLOADING: &[u8] = b"\",\"desc\":\"downloading\"}}";
    let start = out.len();
    out.extend_from_slice(LONGEST);
    let text = &mut out[start..];
    let mut at = put_decimal(text, HEAD, id);
    at = put(text, at, STEP);
    // -4..=-1 or 1..=100: a sign and one to three digits, written directly.
    let value = step.value();
    if value < 0 {
        text[at] = b'-';
        at += 1;
    }
    let digits = value.unsigned_abs();
    if digits >= 10 {
        if digits >= 100 {
            text[at] = b'1';
            at += 1;
        }
        text[at] = b'0' + (digits / 10 % 10) as u8;
        at += 1;
    }
    text[at] = b'0' + (digits % 10) as u8;
    at += 1;
    // `DEFAULT_MODULE` spelled out: a 7-byte literal is compared inline, not by `memcmp`.
    if desc.as_bytes() == b"downloading" && module.as_bytes() == b"default" {
        at = put(text, at, DOWNLOADING);
        out.truncate(start + at);
        return;
    }
    at = put(text, at, DESC);
    out.truncate(start + at);
    push_json_str(out, desc);
    push_module(out, module);
    out.extend_from_slice(b"}}");
}

/// Writes `bytes` at `at`; returns where they end. Inlined, so that each copy has a known length.
#[inline(always)]
fn put(text: &mut [u8], at: usize, bytes: &[u8]) -> usize {
    let end = at + bytes.len();
    text[at..end].copy_from_slice(bytes);
    end
}

/// Writes `n` in decimal at `at`; returns where it ends. The digits are counted by comparison
/// and then written last first; those past `u32` take a 64-bit division each (a library call on
/// a 32-bit core), so message ids, which stay below that, come from `u32` arithmetic.
fn put_decimal(text: &mut [u8], at: usize, n: u64) -> usize {
    let mut end = at + 1;
    let mut power = 10u64;
    while n >= power {
        end += 1;
        match power.checked_mul(10) {
            Some(next) => power = next,
            None => break,
        }
    }
    let mut i = end;
    let mut n = n;
    while n > u64::from(u32::MAX) {
        i -= 1;
        text[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    let mut n = n as u32;
    while i > at {
        i -= 1;
        text[i] = b'0' + (n % 10) as u8;
        n /= 10;
    }
    end
}

/// `{"id":"3","version":"1.0","params":{["module":"MCU"]},"method":"thing.ota.firmware.get"}`.
pub fn encode_firmware_get(out: &mut Vec<u8>, id: u64, module: &str) {
    open_id(out, id);
    out.extend_from_slice(b",\"version\":\"1.0\",\"params\":{");
    if module != DEFAULT_MODULE {
        out.extend_from_slice(b"\"module\":");
        push_json_str(out, module);
    }
    out.extend_from_slice(b"},\"method\":\"thing.ota.firmware.get\"}");
}

/// `{"id":"7","version":"1.0","params":{"fileToken":"t1","fileInfo":{"streamId":1397345,"fileId":1},"fileBlock":{"size":10240,"offset":0}}}`
/// on `thing/file/download`: one MQTT-channel block request.
#[cfg(feature = "mqtt-channel")]
pub fn encode_file_download_request(
    out: &mut Vec<u8>,
    id: u64,
    token: &str,
    stream_id: u64,
    file_id: u64,
    offset: u64,
    size: u64,
) {
    open_id(out, id);
    out.extend_from_slice(b",\"version\":\"1.0\",\"params\":{\"fileToken\":");
    push_json_str(out, token);
    out.extend_from_slice(b",\"fileInfo\":{\"streamId\":");
    push_integer(out, stream_id);
    out.extend_from_slice(b",\"fileId\":");
    push_integer(out, file_id);
    out.extend_from_slice(b"},\"fileBlock\":{\"size\":");
    push_integer(out, size);
    out.extend_from_slice(b",\"offset\":");
    push_integer(out, offset);
    out.extend_from_slice(b"}}}");
}

fn open_id(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(b"{\"id\":\"");
    push_integer(out, id);
    out.push(b'"');
}

fn open_params(out: &mut Vec<u8>, id: u64) {
    open_id(out, id);
    out.extend_from_slice(b",\"params\":{");
}

fn push_module(out: &mut Vec<u8>, module: &str) {
    if module != DEFAULT_MODULE {
        out.extend_from_slice(b",\"module\":");
        push_json_str(out, module);
    }
}

/// Appends `s` as a JSON string literal (RFC 8259 escaping). Runs of bytes that need no
/// escape (all but `"`, `\` and control characters; UTF-8 passes as it is) are found with
/// one test per byte and copied whole: progress reports carry a description and a module
/// name every few percent, and they rarely hold a byte to escape.
pub fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut rest = s.as_bytes();
    while let Some(i) = rest
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
    {
        out.extend_from_slice(&rest[..i]);
        let b = rest[i];
        let control;
        let escaped: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            _ => {
                control = [
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ];
                &control
            }
        };
        out.extend_from_slice(escaped);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    out.push(b'"');
}

/// Appends an integer in decimal (itoa: no `core::fmt` on the firmware).
fn push_integer(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    // The cases of ota-core/testdata/uplink.json (docs/protocol.md), byte for byte.
    #[test]
    fn inform_matches_the_vectors() {
        assert_eq!(
            text(|o| encode_inform(o, 1, "1.2.0", "default")),
            r#"{"id":"1","params":{"version":"1.2.0"}}"#
        );
        assert_eq!(
            text(|o| encode_inform(o, 2, "0.9.3", "MCU")),
            r#"{"id":"2","params":{"version":"0.9.3","module":"MCU"}}"#
        );
    }

    #[test]
    fn progress_matches_the_vectors() {
        assert_eq!(
            text(|o| encode_progress(o, 4, Step::Percent(37), "downloading", "MCU")),
            r#"{"id":"4","params":{"step":"37","desc":"downloading","module":"MCU"}}"#
        );
        assert_eq!(
            text(|o| encode_progress(
                o,
                5,
                Step::Failed(FailureCode::VerifyFailed),
                "md5 mismatch",
                "default"
            )),
            r#"{"id":"5","params":{"step":"-3","desc":"md5 mismatch"}}"#
        );
    }

    /// The report as the generic helpers build it (itoa, one string escape per field).
    fn progress_by_helpers(id: u64, step: Step, desc: &str, module: &str) -> String {
        text(|out| {
            open_params(out, id);
            out.extend_from_slice(b"\"step\":\"");
            push_integer(out, step.value());
            out.extend_from_slice(b"\",\"desc\":");
            push_json_str(out, desc);
            push_module(out, module);
            out.extend_from_slice(b"}}");
        })
    }

    #[test]
    fn progress_of_the_longest_download_report() {
        assert_eq!(
            text(|o| encode_progress(o, u64::MAX, Step::Percent(100), "downloading", "default")),
            r#"{"id":"18446744073709551615","params":{"step":"100","desc":"downloading"}}"#
        );
    }

    fn step_strategy() -> impl proptest::strategy::Strategy<Value = Step> {
        use proptest::prelude::*;
        prop_oneof![
            any::<u8>().prop_map(Step::Percent),
            proptest::sample::select(
                &[
                    FailureCode::UpgradeFailed,
                    FailureCode::DownloadFailed,
                    FailureCode::VerifyFailed,
                    FailureCode::FlashFailed,
                ][..]
            )
            .prop_map(Step::Failed),
        ]
    }

    /// A string that is `common` half of the time, else any string.
    fn often(common: &'static str) -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        prop_oneof![Just(String::from(common)), ".*"]
    }

    proptest::proptest! {#[test]
        fn progress_is_what_the_generic_helpers_build(
            id in proptest::prop_oneof![0u64..100_000, proptest::prelude::any::<u64>()],
            step in step_strategy(),
            desc in often("downloading"),
            module in often("default"),
        ) {
            proptest::prop_assert_eq!(
                text(|o| encode_progress(o, id, step, &desc, &module)),
                progress_by_helpers(id, step, &desc, &module)
            );
        }
    }

    #[test]
    fn firmware_get_matches_the_vectors() {
        assert_eq!(
            text(|o| encode_firmware_get(o, 3, "MCU")),
            r#"{"id":"3","version":"1.0","params":{"module":"MCU"},"method":"thing.ota.firmware.get"}"#
        );
        assert_eq!(
            text(|o| encode_firmware_get(o, 6, "default")),
            r#"{"id":"6","version":"1.0","params":{},"method":"thing.ota.firmware.get"}"#
        );
    }

    #[cfg(feature = "mqtt-channel")]
    #[test]
    fn file_download_request_matches_the_vectors() {
        assert_eq!(
            text(|o| encode_file_download_request(o, 7, "t1", 1_397_345, 1, 0, 10240)),
            r#"{"id":"7","version":"1.0","params":{"fileToken":"t1","fileInfo":{"streamId":1397345,"fileId":1},"fileBlock":{"size":10240,"offset":0}}}"#
        );
    }

    #[test]
    fn ids_beyond_u32_and_percent_zero_is_never_sent() {
        assert_eq!(
            text(|o| encode_progress(o, 1_626_969_597_470, Step::Percent(0), "x", "default")),
            r#"{"id":"1626969597470","params":{"step":"1","desc":"x"}}"#
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            text(|o| push_json_str(o, "a\u{1}\"\\\n\r\t")),
            r#""a\u0001\"\\\n\r\t""#
        );
    }

    proptest::proptest! {#[test]
        fn escaped_strings_round_trip_through_a_json_parser(s in ".*") {
            let encoded = text(|o| push_json_str(o, &s));
            let decoded: String = serde_json::from_str(&encoded).unwrap();
            proptest::prop_assert_eq!(decoded, s);
        }
    }
}
