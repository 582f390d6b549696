//! Fuzz entry points, one per parser plus one over event sequences. The cargo-fuzz targets in
//! `fuzz/` are thin wrappers around these, and `tests/fuzz_corpus.rs` replays the committed
//! corpus through them on stable.

use crate::downlink::{parse_get_reply, parse_push, TaskRules};
use crate::identity::{is_valid_module, is_valid_version, DeviceIdentity, Topics};
use crate::record::Record;
use crate::task::Task;

fn rules() -> TaskRules {
    TaskRules {
        allow_http: true,
        max_image_size: 64 * 1024 * 1024,
        max_message_len: 16 * 1024,
        ..TaskRules::default()
    }
}

fn check_task(task: &Task, rules: &TaskRules) {
    // A multi-file task never names a file twice, nor one of the adapter's own.
    for (i, file) in task.files().iter().enumerate() {
        assert!(task.files()[..i].iter().all(|f| f.name != file.name));
        assert!(!rules
            .reserved_prefixes
            .iter()
            .any(|p| file.name.starts_with(p)));
        assert!(!rules
            .reserved_suffixes
            .iter()
            .any(|s| file.name.ends_with(s)));
    }
    assert!(task.size > 0 && task.size <= rules.max_image_size);
    assert!(is_valid_version(&task.version));
    assert!(is_valid_module(&task.module));
    assert_eq!(task.digest.bytes().len(), task.digest.method().digest_len());
    if let Some(url) = task.url() {
        // Schemes are case-insensitive (RFC 3986), and a host must follow.
        let scheme = url.split("://").next().unwrap_or_default();
        assert!(
            scheme.eq_ignore_ascii_case("https") || scheme.eq_ignore_ascii_case("http"),
            "{url}"
        );
        assert!(url.len() > scheme.len() + 3, "{url}");
        assert!(!url.bytes().any(|b| b <= b' '));
    }
}

/// The agent's JSON reader is never more lenient than serde_json, and stricter only in its
/// nesting bound (and number range, below); where both accept, strings decode to the same text.
fn check_json_reader_against_serde_json(data: &[u8]) {
    let ours = crate::json::parse(data);
    let theirs = serde_json::from_slice::<serde_json::Value>(data);
    match (&ours, &theirs) {
        // serde_json refuses numbers beyond f64 (1e400): valid JSON, which the reader keeps
        // as text.
        (Ok(_), Err(e))
            if alloc::string::ToString::to_string(e).starts_with("number out of range") => {}
        (Ok(_), Err(e)) => panic!("the JSON reader accepts what serde_json refuses: {e}"),
        (Err(e), Ok(_)) => assert_eq!(e.what, "nested too deeply", "at byte {}", e.at),
        (Ok(value), Ok(serde_json::Value::String(s))) => {
            assert_eq!(value.as_str().as_deref(), Some(s.as_str()))
        }
        _ => {}
    }
}

/// An upgrade push: never panics; an accepted task satisfies every validation rule.
pub fn push(data: &[u8]) {
    check_json_reader_against_serde_json(data);
    let rules = rules();
    match parse_push(data, &rules) {
        Ok(task) => check_task(&task, &rules),
        Err(rejection) => assert!(!rejection.reason.is_empty()),
    }
}

/// A firmware/get reply.
pub fn get_reply(data: &[u8]) {
    let rules = rules();
    if let Ok(Some(task)) = parse_get_reply(data, &rules) {
        check_task(&task, &rules);
    }
}

/// Identities: whatever is accepted yields topics with exactly their fixed structure.
pub fn topics(data: &[u8]) {
    let split = data.iter().position(|b| *b == b'|').unwrap_or(data.len());
    let (Ok(pk), Ok(dn)) = (
        core::str::from_utf8(&data[..split]),
        core::str::from_utf8(data.get(split + 1..).unwrap_or_default()),
    ) else {
        return;
    };
    if let Ok(id) = DeviceIdentity::new(pk, dn) {
        let t = Topics::new(&id);
        for (topic, segments) in [
            (&t.inform, 6),
            (&t.upgrade, 6),
            (&t.progress, 6),
            (&t.request, 6),
            (&t.firmware_get, 8),
            (&t.firmware_get_reply, 8),
        ] {
            assert_eq!(topic.split('/').count(), segments, "{topic}");
            assert!(!topic.contains(['+', '#', '\0']), "{topic}");
        }
    }
}

/// Saved records: a record that decodes re-encodes to exactly the same bytes.
pub fn record(data: &[u8]) {
    if let Ok(record) = Record::decode(data) {
        let mut again = alloc::vec::Vec::new();
        record.encode(&mut again);
        assert_eq!(again, data, "decode/encode is not canonical");
    }
}

/// MQTT-channel reply frames: an accepted frame's parts add up to exactly its length and
/// its CRC is right.
#[cfg(feature = "mqtt-channel")]
pub fn mqtt_frame(data: &[u8]) {
    if let Ok(reply) = crate::mqtt_frame::parse_block_reply(data) {
        let header = usize::from(u16::from_be_bytes([data[0], data[1]]));
        assert_eq!(data.len(), 2 + header + reply.data.len() + 2);
        let crc = u16::from_le_bytes([data[data.len() - 2], data[data.len() - 1]]);
        assert_eq!(crate::mqtt_frame::crc16_arc(reply.data), crc);
    }
}

/// The agent driven by an arbitrary scenario in the simulated world, every invariant checked.
pub fn agent(data: &[u8]) {
    super::ops::run(&super::ops::Scenario::from_bytes(data));
}

/// [`agent`] for a long fuzzing run: the signatures signed in earlier runs are kept in
/// `signatures` and the transcript is not written.
pub fn agent_reusing(signatures: &mut super::world::Signatures, data: &[u8]) {
    super::ops::run_reusing(&super::ops::Scenario::from_bytes(data), signatures);
}
