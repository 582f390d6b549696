use super::*;
use alloc::format;
#[cfg(feature = "md5")]
use alloc::string::ToString;
use alloc::vec::Vec;
use serde_json::Value;

const DOWNLINK: &str = include_str!("../../testdata/downlink.json");

fn rules() -> TaskRules {
    TaskRules {
        allow_http: false,
        max_image_size: 100 * 1024 * 1024,
        max_message_len: 16 * 1024,
        ..TaskRules::default()
    }
}

/// A push's digest members in the digest of this build (the tests' world's choice).
fn digest_members() -> alloc::string::String {
    use crate::testkit::world::{task_digest_hex, task_digest_members};
    task_digest_members(&task_digest_hex(b"firmware"))
}

/// The word the refusal of `payload` names when it asks for something this build leaves out
/// (features `mqtt-channel`, `multi-file`, `sha256`, `md5`).
fn left_out(payload: &[u8]) -> Option<&'static str> {
    let doc: Value = serde_json::from_slice(payload).ok()?;
    let data = &doc["data"];
    let text = |key: &str| data[key].as_str().unwrap_or_default().to_lowercase();
    // Without MD5 only a `sign` by SHA-256 is a digest: an `md5` or a `signMethod` Md5 is
    // refused (before the channel and the files are read).
    let by_sha256 = text("signMethod").starts_with("sha") && data["sign"].is_string();
    let by_md5 = !data["md5"].is_null() || text("signMethod") == "md5";
    if !cfg!(feature = "md5") && !by_sha256 && by_md5 {
        return Some("without md5");
    }
    if !cfg!(feature = "mqtt-channel") && text("dProtocol") == "mqtt" {
        return Some("mqtt");
    }
    if !cfg!(feature = "multi-file") && !data["files"].is_null() {
        return Some("multi-file");
    }
    if !cfg!(feature = "sha256") && text("signMethod").starts_with("sha") && data["md5"].is_null() {
        return Some("sha256");
    }
    None
}

#[test]
fn every_downlink_vector_parses_as_expected() {
    let doc: Value = serde_json::from_str(DOWNLINK).unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 27);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let payload = case["payload"].as_str().unwrap().as_bytes();
        let expect = &case["expect"];
        let parsed = match case["kind"].as_str().unwrap() {
            "push" => parse_push(payload, &rules()).map(Some),
            "get_reply" => parse_get_reply(payload, &rules()),
            other => panic!("unknown kind {other}"),
        };
        if let Some(word) = left_out(payload) {
            // A task this build cannot do is refused: for that, or for its own fault when a
            // field read earlier is wrong.
            let reason = parsed.expect_err(name).reason.to_lowercase();
            let own = expect["reason_mentions"]
                .as_str()
                .filter(|_| expect["ok"] == false);
            assert!(
                reason.contains(word) || own.is_some_and(|own| reason.contains(own)),
                "{name}: reason {reason:?} should mention {word:?} or {own:?}"
            );
            continue;
        }
        if expect["ok"] == Value::Bool(false) {
            let rejection = parsed.expect_err(name);
            let word = expect["reason_mentions"].as_str().unwrap();
            assert!(
                rejection.reason.to_lowercase().contains(word),
                "{name}: reason {:?} should mention {word:?}",
                rejection.reason
            );
            continue;
        }
        let parsed = parsed.unwrap_or_else(|r| panic!("{name}: rejected: {r}"));
        if expect["no_task"] == Value::Bool(true) {
            assert!(parsed.is_none(), "{name}");
            continue;
        }
        let task = parsed.expect(name);
        assert_eq!(task.version, expect["version"].as_str().unwrap(), "{name}");
        assert_eq!(task.size, expect["size"].as_u64().unwrap(), "{name}");
        assert_eq!(task.module, expect["module"].as_str().unwrap(), "{name}");
        assert_eq!(
            task.digest.method().name(),
            expect["digest_method"].as_str().unwrap(),
            "{name}"
        );
        let mut hex = [0u8; 64];
        assert_eq!(
            task.digest.to_hex(&mut hex),
            expect["digest"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            task.is_diff,
            expect["is_diff"] == Value::Bool(true),
            "{name}"
        );
        match (&task.channel, expect["channel"].as_str().unwrap()) {
            (Channel::Http { url }, "http") => assert!(url.starts_with("https://")),
            #[cfg(feature = "mqtt-channel")]
            (Channel::Mqtt { stream_id, file_id }, "mqtt") => {
                assert_eq!(*stream_id, expect["stream_id"].as_u64().unwrap());
                assert_eq!(*file_id, expect["stream_file_id"].as_u64().unwrap());
            }
            (c, e) => panic!("{name}: channel {c:?}, expected {e}"),
        }
    }
}

#[cfg(feature = "md5")] // MD5 pushes
#[test]
fn ext_data_and_digestsign_are_handed_over_untouched() {
    let doc: Value = serde_json::from_str(DOWNLINK).unwrap();
    let payload = doc["cases"][1]["payload"].as_str().unwrap();
    let task = parse_push(payload.as_bytes(), &rules()).unwrap();
    assert_eq!(
        task.ext_data.as_deref(),
        Some(r#"{"key1":"value1","_package_udi":"{\"ota_notice\":\"hello\"}"}"#)
    );
    assert_eq!(task.digestsign.as_deref(), Some("A4WOP"));
    assert_eq!(task.message_id, "1626969597470");
}

#[test]
fn the_seed_push_with_its_line_wrapped_url_is_refused_with_a_url_reason() {
    // The seed document's url contains the spaces of its line wrap; a real parser sees them.
    let payload = format!(
        r#"{{"code":"1000","data":{{"size":432945,"version":"2.0.0","url":"https://h/nopoll.tar.gz?    Expires=1502955804",{}}},"id":1507707025,"message":"success"}}"#,
        digest_members()
    );
    let r = parse_push(payload.as_bytes(), &rules()).unwrap_err();
    assert!(r.reason.contains("url"), "{r}");
}

#[cfg(feature = "md5")] // MD5 pushes
#[test]
fn the_protocol_page_push_parses() {
    let payload = r#"{"code":"1000","data":{"size":432945,"version":"2.0.0","url":"https://host/path/fw.bin?Expires=1502955804&OSSAccessKeyId=XXX&Signature=abc%3D","md5":"93230c3bde425a9d7984a594ac55ea1e","sign":"93230c3bde425a9d7984a594ac55ea1e","signMethod":"Md5","module":"MCU","isDiff":1,"extData":{"key1":"value1","_package_udi":"{\"k\":\"v\"}"}},"id":1626969597470,"message":"success"}"#;
    let task = parse_push(payload.as_bytes(), &rules()).unwrap();
    assert_eq!(task.module, "MCU");
    assert!(task.is_diff);
    assert_eq!(
        task.url(),
        Some("https://host/path/fw.bin?Expires=1502955804&OSSAccessKeyId=XXX&Signature=abc%3D")
    );
    let get = r#"{"id":"3","code":200,"data":{},"message":"success"}"#;
    assert_eq!(parse_get_reply(get.as_bytes(), &rules()), Ok(None));
}

#[test]
fn oversized_messages_are_refused_before_parsing() {
    let mut payload: Vec<u8> = Vec::new();
    payload.extend_from_slice(br#"{"code":"1000","data":{"url":""#);
    payload.resize(20_000, b'a');
    let r = parse_push(&payload, &rules()).unwrap_err();
    assert!(r.reason.contains("limit"), "{r}");
}

#[test]
fn slot_capacity_http_policy_and_codes_are_enforced() {
    let digest = digest_members();
    let small = TaskRules {
        max_image_size: 100,
        ..rules()
    };
    let push = format!(
        r#"{{"code":"1000","data":{{"size":101,"version":"1","url":"https://h/p",{digest},"module":"MCU"}}}}"#
    );
    let r = parse_push(push.as_bytes(), &small).unwrap_err();
    assert!(
        r.reason.contains("size") && r.reason.contains("capacity"),
        "{r}"
    );
    assert_eq!(r.module.as_deref(), Some("MCU"));

    let http = format!(
        r#"{{"code":"1000","data":{{"size":10,"version":"1","url":"http://h/p",{digest}}}}}"#
    );
    let lax = TaskRules {
        allow_http: true,
        ..rules()
    };
    assert!(parse_push(http.as_bytes(), &lax).is_ok());

    let failed = r#"{"code":"9201","data":{},"message":"device not found"}"#;
    assert!(parse_get_reply(failed.as_bytes(), &rules())
        .unwrap_err()
        .reason
        .contains("code"));
}

#[test]
fn duplicate_keys_and_bad_field_types_are_refused() {
    let dup = r#"{"code":"1000","data":{"size":10,"size":11,"version":"1","url":"https://h/p","md5":"93230c3bde425a9d7984a594ac55ea1e"}}"#;
    assert_eq!(
        parse_push(dup.as_bytes(), &rules()).unwrap_err().reason,
        "invalid json in data: duplicate key size"
    );
    let dup_envelope = r#"{"code":"1000","code":"1000","data":{}}"#;
    assert_eq!(
        parse_push(dup_envelope.as_bytes(), &rules())
            .unwrap_err()
            .reason,
        "invalid json: duplicate key code"
    );
    let bad_module = r#"{"code":"1000","data":{"size":10,"version":"1","url":"https://h/p","md5":"93230c3bde425a9d7984a594ac55ea1e","module":"a/b"}}"#;
    assert!(parse_push(bad_module.as_bytes(), &rules())
        .unwrap_err()
        .reason
        .contains("module"));
    let num_version = r#"{"code":"1000","data":{"size":10,"version":2,"url":"https://h/p","md5":"93230c3bde425a9d7984a594ac55ea1e"}}"#;
    assert!(parse_push(num_version.as_bytes(), &rules())
        .unwrap_err()
        .reason
        .contains("version"));
    let files = r#"{"code":"1000","data":{"version":"1","size":3,"md5":"93230c3bde425a9d7984a594ac55ea1e","files":[]}}"#;
    assert!(parse_push(files.as_bytes(), &rules())
        .unwrap_err()
        .reason
        .contains("files"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
        let _ = parse_push(&bytes, &rules());
        let _ = parse_get_reply(&bytes, &rules());
    }
}

#[cfg(feature = "md5")] // MD5 pushes
#[test]
fn every_rejection_names_its_field() {
    let md5 = "93230c3bde425a9d7984a594ac55ea1e";
    let cases = [
        (format!(r#"{{"code":"1000","data":{{"version":"1","url":"https://h/p","md5":"{md5}"}}}}"#), "no size"),
        (format!(r#"{{"code":true,"data":{{"size":1,"version":"1","url":"https://h/p","md5":"{md5}"}}}}"#), "code"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","url":"https://h/p","md5":"{md5}","extData":"{}"}}}}"#, "x".repeat(5000)), "extdata"),
        (r#"{"code":"1000","data":{"size":1,"version":"1","url":"https://h/p","sign":"ab","signMethod":7}}"#.into(), "signmethod"),
        (r#"{"code":"1000","data":{"size":1,"version":"1","url":"https://h/p","signMethod":"Md5"}}"#.into(), "no sign digest"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","url":"https://h/p","sign":"{md5}"}}}}"#), "without a signmethod"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","url":"https://h/p","md5":"{md5}","dProtocol":"ftp"}}}}"#), "dprotocol"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","url":7,"md5":"{md5}"}}}}"#), "url must be a string"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","url":"https://","md5":"{md5}"}}}}"#), "no host"),
        (format!(r#"{{"code":"1000","data":{{"size":1,"version":"1","dProtocol":"mqtt","streamId":5,"streamFileId":"x","md5":"{md5}"}}}}"#), "streamfileid"),
        (r#"{"code":"1000"}"#.into(), "no data"),
        (r#"{"code":"1000","data":{}}"#.into(), "empty"),
    ];
    for (payload, word) in cases {
        let word = left_out(payload.as_bytes()).unwrap_or(word);
        let r = parse_push(payload.as_bytes(), &rules()).unwrap_err();
        assert!(
            r.to_string().to_lowercase().contains(word),
            "{payload}: {r}"
        );
    }
}

#[test]
fn lenient_shapes_are_accepted() {
    let digest = digest_members();
    let no_code = format!(
        r#"{{"data":{{"size":1,"version":"1","url":"https://h/p",{digest},"dProtocol":"HTTPS","isDiff":true,"extData":null}}}}"#
    );
    let task = parse_push(no_code.as_bytes(), &rules()).unwrap();
    assert!(task.is_diff && task.ext_data.is_none() && task.message_id.is_empty());
    #[cfg(feature = "mqtt-channel")]
    {
        let mqtt = format!(
            r#"{{"code":1000,"data":{{"size":1,"version":"1","dProtocol":"mqtt","streamId":"77",{digest}}}}}"#
        );
        let task = parse_push(mqtt.as_bytes(), &rules()).unwrap();
        assert_eq!(
            task.channel,
            Channel::Mqtt {
                stream_id: 77,
                file_id: 1
            }
        );
        assert_eq!(task.url(), None);
    }
}

#[cfg(all(feature = "multi-file", feature = "sha256", feature = "md5"))] // `fileMd5`s
#[test]
fn multi_file_tasks_are_parsed_and_checked() {
    let md5 = "93230c3bde425a9d7984a594ac55ea1e";
    let file = |name: &str, size: u64| {
        format!(
            r#"{{"fileName":"{name}","fileSize":{size},"fileUrl":"https://h/{name}","fileMd5":"{md5}"}}"#
        )
    };
    let task = |files: &str, extra: &str| {
        format!(
            r#"{{"code":"1000","data":{{"version":"2.0","signMethod":"Md5","files":[{files}]{extra}}},"id":1}}"#
        )
    };
    let ok = task(
        &[file("app.bin", 100), file("cfg.json", 7)].join(","),
        r#","extData":{"k":1}"#,
    );
    let parsed = parse_push(ok.as_bytes(), &rules()).unwrap();
    assert_eq!(parsed.files.len(), 2);
    assert_eq!(parsed.size, 107);
    assert_eq!(parsed.files[1].name, "cfg.json");
    assert_eq!(parsed.url(), Some("https://h/app.bin"));
    assert_eq!(parsed.ext_data.as_deref(), Some(r#"{"k":1}"#));
    let sha = format!(
        r#"{{"fileName":"a","fileSize":1,"fileUrl":"https://h/a","fileSign":"{}"}}"#,
        "AB".repeat(32)
    );
    let parsed = parse_push(task(&sha, "").replace("Md5", "SHA256").as_bytes(), &rules()).unwrap();
    assert_eq!(parsed.digest.method(), crate::task::DigestMethod::Sha256);

    let too_many = (0..21)
        .map(|i| file(&format!("f{i}"), 1))
        .collect::<Vec<_>>()
        .join(",");
    let cases = [
        (task(&too_many, ""), "1 to 20"),
        (task("", ""), "1 to 20"),
        (
            task(
                r#"{"fileSize":1,"fileUrl":"https://h/a","fileMd5":"x"}"#,
                "",
            ),
            "filename",
        ),
        (task(&file("a", 0), ""), "filesize"),
        (
            task(r#"{"fileName":"a","fileSize":1,"fileMd5":"x"}"#, ""),
            "no fileurl",
        ),
        (
            task(
                r#"{"fileName":"a","fileSize":1,"fileUrl":"ftp://h/a","fileMd5":"x"}"#,
                "",
            ),
            "scheme",
        ),
        (
            task(
                r#"{"fileName":"a","fileSize":1,"fileUrl":"https://h/a"}"#,
                "",
            ),
            "no digest",
        ),
        (
            task(
                r#"{"fileName":"a","fileSize":1,"fileUrl":"https://h/a","fileMd5":"12"}"#,
                "",
            ),
            "32 hex",
        ),
        (task(&file("a", 1), r#","dProtocol":"mqtt""#), "mqtt"),
        (task(&file("big", 200 * 1024 * 1024), ""), "capacity"),
        (
            r#"{"code":"1000","data":{"version":"2","files":{}}}"#.into(),
            "array",
        ),
        (task(&file("../evil.bin", 1), ""), "outside"),
        (task(&file("a/b", 1), ""), "outside"),
        (task(&file("..", 1), ""), "outside"),
        (task(&file(r"a\\b", 1), ""), "outside"),
        (task(&file(r"a\u0001b", 1), ""), "outside"),
        (
            task(
                &[file("a.bin", 1), file("b", 2), file("a.bin", 3)].join(","),
                "",
            ),
            "file 2: filename \"a.bin\" is also file 0's",
        ),
        (
            task(&file(".ota-installed", 1), ""),
            "\".ota-installed\" is reserved",
        ),
        (
            task(&file("app.previous", 1), ""),
            "\"app.previous\" is reserved",
        ),
        (task(&file("app.tmp", 1), ""), "\"app.tmp\" is reserved"),
    ];
    for (payload, word) in cases {
        let r = parse_push(payload.as_bytes(), &rules()).unwrap_err();
        assert!(r.reason.to_lowercase().contains(word), "{payload}: {r}");
    }
}

#[test]
fn reply_ids_are_read_from_numbers_and_digit_strings() {
    assert_eq!(reply_id(br#"{"id":42,"data":{}}"#), Some(42));
    assert_eq!(reply_id(br#"{"id":"43","data":{}}"#), Some(43));
    assert_eq!(reply_id(br#"{"id":"x","data":{}}"#), None);
    assert_eq!(reply_id(br#"{"id":[1],"data":{}}"#), None);
    assert_eq!(reply_id(b"nope"), None);
    // Two ids: ambiguous, so no pairing (as before `fields_into`).
    assert_eq!(reply_id(br#"{"id":1,"id":2}"#), None);
}

#[cfg(all(feature = "multi-file", feature = "sha256"))]
#[test]
fn a_file_sign_of_the_wrong_length_names_the_file() {
    let payload = r#"{"code":"1000","data":{"version":"2","signMethod":"SHA256","files":[{"fileName":"a.bin","fileSize":1,"fileUrl":"https://h/a","fileSign":"abcd"}]}}"#;
    let r = parse_push(payload.as_bytes(), &rules()).unwrap_err();
    assert!(
        r.reason.contains("a.bin") && r.reason.contains("64 hex"),
        "{r}"
    );
}

/// `is_safe_file_name` checks bytes; it must refuse exactly what a check of the decoded
/// characters (`char::is_control`, `/`, `\`) refuses, for every character of every width.
#[cfg(feature = "multi-file")]
#[test]
fn safe_file_names_on_bytes_agree_with_a_check_on_chars() {
    let by_chars = |name: &str| {
        (1..=255).contains(&name.len())
            && name != "."
            && name != ".."
            && !name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control())
    };
    let samples = (0..=0x3000u32)
        .chain([0xfeff, 0xfffd, 0x1_0000, 0x1_f600, 0x10_ffff])
        .filter_map(char::from_u32);
    let mut refused = 0;
    for c in samples {
        for name in [format!("{c}"), format!("a{c}b"), format!("{c}{c}.bin")] {
            assert_eq!(is_safe_file_name(&name), by_chars(&name), "{name:?}");
            refused += usize::from(!by_chars(&name));
        }
    }
    // The controls C0, DEL and C1 (65 characters), `/` and `\`, in three names each; and
    // the name ".".
    assert_eq!(refused, 67 * 3 + 1);
    for name in ["", ".", "..", &"a".repeat(256)] {
        assert!(!is_safe_file_name(name), "{name:?}");
    }
    assert!(is_safe_file_name(&"é".repeat(127)));
}
