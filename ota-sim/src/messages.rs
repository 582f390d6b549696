//! What goes over MQTT (docs/protocol.md §1–§4): topics, lenient parsing of what devices send, and
//! the compact JSON the cloud sends, built with serde_json from the documented shapes (never
//! with ota-core's encoder, so a format mistake on one side is caught by the other).

use crate::model::{DeviceId, DEFAULT_MODULE};
use serde::Serialize;
use serde_json::Value;

/// MQTT filters the cloud subscribes to (the last two: gateway sessions, docs/protocol.md §14).
pub(crate) const CLOUD_FILTERS: [&str; 8] = [
    "/ext/ntp/+/+/request",
    "/ota/device/inform/+/+",
    "/ota/device/progress/+/+",
    "/ota/device/request/+/+",
    "/sys/+/+/thing/ota/firmware/get",
    "/sys/+/+/thing/file/download",
    "/sys/+/+/thing/topo/+",
    "/ext/session/+/+/combine/+",
];

/// A message from a device, parsed.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Uplink {
    /// The running version of one module.
    Inform { version: String, module: String },
    /// A progress step (`1..=100`, or a negative failure code) with its description.
    Progress {
        step: i64,
        desc: Option<String>,
        module: String,
    },
    /// Alink request for the pending task; `id` is echoed in the reply.
    FirmwareGet { id: Value, module: String },
    /// Legacy request for the pending task, answered with a push.
    LegacyRequest { module: String },
    /// MQTT-channel request for one block (docs/protocol.md §6).
    Block(BlockRequest),
    /// A request for the time (docs/protocol.md §13); `deviceSendTime` as the device sent it.
    Ntp { device_send_time: Value },
}

/// Why a device message was ignored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("topic is not an OTA uplink topic")]
    Topic,
    #[error("payload is not a JSON object: {0}")]
    Json(String),
    #[error("missing or malformed field {0}")]
    Field(&'static str),
}

/// Parses a device message; unknown keys are ignored, numbers given as digit strings accepted.
pub(crate) fn parse_uplink(topic: &str, payload: &[u8]) -> Result<(DeviceId, Uplink), ParseError> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (kind, pk, dn) = match parts.as_slice() {
        ["", "ota", "device", kind, pk, dn] => (*kind, *pk, *dn),
        ["", "sys", pk, dn, "thing", "ota", "firmware", "get"] => ("get", *pk, *dn),
        ["", "sys", pk, dn, "thing", "file", "download"] => ("download", *pk, *dn),
        ["", "ext", "ntp", pk, dn, "request"] => ("ntp", *pk, *dn),
        _ => return Err(ParseError::Topic),
    };
    if pk.is_empty() || dn.is_empty() {
        return Err(ParseError::Topic);
    }
    let json: Value =
        crate::lenient_json::parse(payload).map_err(|e| ParseError::Json(e.to_string()))?;
    if !json.is_object() {
        return Err(ParseError::Json("not an object".into()));
    }
    let params = json.get("params").filter(|p| p.is_object());
    let module = params
        .and_then(|p| text(p.get("module")))
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| DEFAULT_MODULE.to_owned());
    let uplink = match kind {
        "inform" => Uplink::Inform {
            version: params
                .and_then(|p| text(p.get("version")))
                .filter(|v| !v.is_empty())
                .ok_or(ParseError::Field("params.version"))?,
            module,
        },
        "progress" => Uplink::Progress {
            step: params
                .and_then(|p| text(p.get("step")))
                .and_then(|s| s.trim().parse().ok())
                .ok_or(ParseError::Field("params.step"))?,
            desc: params.and_then(|p| text(p.get("desc"))),
            module,
        },
        "get" => Uplink::FirmwareGet {
            id: json.get("id").cloned().unwrap_or(Value::Null),
            module,
        },
        "request" => Uplink::LegacyRequest { module },
        "download" => Uplink::Block(BlockRequest::parse(&json)),
        "ntp" => Uplink::Ntp {
            device_send_time: json
                .get("deviceSendTime")
                .filter(|t| text(Some(t)).is_some_and(|t| t.trim().parse::<u64>().is_ok()))
                .cloned()
                .ok_or(ParseError::Field("deviceSendTime"))?,
        },
        _ => return Err(ParseError::Topic),
    };
    Ok((DeviceId::new(pk, dn), uplink))
}

/// Ids and tokens longer than this are refused, so the echoed header stays small.
const MAX_ECHO_LEN: usize = 256;

/// A block request, parsed leniently: the official SDKs send the id as a number or a string,
/// may leave out `version` or `fileToken`, and may pretty-print. Missing numbers stay `None`
/// so the reply can say what was wrong while still echoing the id.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BlockRequest {
    pub(crate) id: Value,
    pub(crate) token: Option<String>,
    pub(crate) stream_id: Option<u64>,
    pub(crate) file_id: Option<u64>,
    pub(crate) offset: Option<u64>,
    pub(crate) size: Option<u64>,
    /// Set when the id or the token is unusable.
    pub(crate) malformed: Option<&'static str>,
}

impl BlockRequest {
    pub(crate) fn parse(json: &Value) -> BlockRequest {
        let params = json.get("params");
        let num = |path: [&str; 2]| {
            let v = params?.get(path[0])?.get(path[1]);
            text(v)?.trim().parse::<u64>().ok()
        };
        let mut malformed = None;
        let id = match json.get("id") {
            Some(v @ (Value::String(_) | Value::Number(_))) => v.clone(),
            _ => Value::Null,
        };
        let id = if id.to_string().len() > MAX_ECHO_LEN {
            malformed = Some("id too long");
            Value::Null
        } else {
            id
        };
        let token = params.and_then(|p| text(p.get("fileToken")));
        let token = match token {
            Some(t) if t.len() > MAX_ECHO_LEN => {
                malformed = Some("fileToken too long");
                None
            }
            t => t,
        };
        BlockRequest {
            id,
            token,
            stream_id: num(["fileInfo", "streamId"]),
            file_id: num(["fileInfo", "fileId"]),
            offset: num(["fileBlock", "offset"]),
            size: num(["fileBlock", "size"]),
            malformed,
        }
    }
}

/// A string field, or a number written as one.
pub(crate) fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `data` object of a push and of a firmware/get reply (docs/protocol.md §3): one of the
/// single-file HTTP, single-file MQTT or multi-file variants, absent fields left out.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, Default)]
pub struct TaskData {
    /// Image size in bytes (single-file only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    /// Target version.
    pub version: String,
    /// Signed download URL (single-file HTTP only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// MD5 of the image (single-file MD5 packages, like the legacy field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Digest per `signMethod` (single-file only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign: Option<String>,
    /// `Md5` or `SHA256`.
    #[serde(rename = "signMethod")]
    pub sign_method: String,
    /// Module, absent for the default one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// `1` for a delta image.
    #[serde(rename = "isDiff", skip_serializing_if = "Option::is_none")]
    pub is_diff: Option<u8>,
    /// Job tags and `_package_udi`, as given to the package.
    #[serde(rename = "extData", skip_serializing_if = "Option::is_none")]
    pub ext_data: Option<Value>,
    /// Package signature for secure boot, as given to the package.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digestsign: Option<String>,
    /// `"mqtt"` for the MQTT channel.
    #[serde(rename = "dProtocol", skip_serializing_if = "Option::is_none")]
    pub d_protocol: Option<String>,
    /// The MQTT-channel stream of this task.
    #[serde(rename = "streamId", skip_serializing_if = "Option::is_none")]
    pub stream_id: Option<u64>,
    /// The file within the stream (single-file MQTT: 1).
    #[serde(rename = "streamFileId", skip_serializing_if = "Option::is_none")]
    pub stream_file_id: Option<u64>,
    /// The files of a multi-file task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<Vec<TaskFile>>,
}

/// One entry of `data.files` in a multi-file task.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskFile {
    /// Name of the file.
    #[serde(rename = "fileName")]
    pub file_name: String,
    /// Its size in bytes.
    #[serde(rename = "fileSize")]
    pub file_size: u64,
    /// Its signed download URL (HTTP tasks).
    #[serde(rename = "fileUrl", skip_serializing_if = "Option::is_none")]
    pub file_url: Option<String>,
    /// Its file id within the task's stream (MQTT tasks; 1-based, in `files` order).
    #[serde(rename = "streamFileId", skip_serializing_if = "Option::is_none")]
    pub stream_file_id: Option<u64>,
    /// Its MD5 (MD5 packages).
    #[serde(rename = "fileMd5", skip_serializing_if = "Option::is_none")]
    pub file_md5: Option<String>,
    /// Its digest per `signMethod`.
    #[serde(rename = "fileSign")]
    pub file_sign: String,
}

#[derive(Serialize)]
struct Push<'a> {
    code: &'static str,
    data: &'a TaskData,
    id: u64,
    message: &'static str,
}

#[derive(Serialize)]
struct GetReply<'a> {
    id: &'a Value,
    code: u16,
    data: ReplyData<'a>,
    message: &'static str,
}

/// The task, or `{}` for "no task" (field order kept, unlike a `serde_json::Value`).
#[derive(Serialize)]
#[serde(untagged)]
enum ReplyData<'a> {
    Task(&'a TaskData),
    Empty {},
}

/// The push payload: `{"code":"1000","data":{..},"id":<ms>,"message":"success"}`.
pub(crate) fn push_payload(data: &TaskData, id: u64) -> String {
    let push = Push {
        code: "1000",
        data,
        id,
        message: "success",
    };
    serde_json::to_string(&push).unwrap_or_default()
}

/// The firmware/get reply; `data:{}` when there is no task.
pub(crate) fn get_reply_payload(id: &Value, data: Option<&TaskData>) -> String {
    let data = data.map_or(ReplyData::Empty {}, ReplyData::Task);
    let reply = GetReply {
        id,
        code: 200,
        data,
        message: "success",
    };
    serde_json::to_string(&reply).unwrap_or_default()
}

/// The NTP reply: `deviceSendTime` as the device sent it, the server's times in ms as strings.
pub(crate) fn ntp_payload(device_send_time: &Value, received_ms: u64, sent_ms: u64) -> String {
    let reply = serde_json::json!({
        "deviceSendTime": device_send_time,
        "serverRecvTime": received_ms.to_string(),
        "serverSendTime": sent_ms.to_string(),
    });
    reply.to_string()
}

/// Topic of NTP replies to `device`.
pub(crate) fn ntp_response_topic(device: &DeviceId) -> String {
    format!(
        "/ext/ntp/{}/{}/response",
        device.product_key, device.device_name
    )
}

/// Topic of pushes to `device`.
pub(crate) fn upgrade_topic(device: &DeviceId) -> String {
    format!(
        "/ota/device/upgrade/{}/{}",
        device.product_key, device.device_name
    )
}

/// Topic of MQTT-channel block replies to `device`.
pub(crate) fn download_reply_topic(device: &DeviceId) -> String {
    format!(
        "/sys/{}/{}/thing/file/download_reply",
        device.product_key, device.device_name
    )
}

/// Topic of firmware/get replies to `device`.
pub(crate) fn get_reply_topic(device: &DeviceId) -> String {
    format!(
        "/sys/{}/{}/thing/ota/firmware/get_reply",
        device.product_key, device.device_name
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_vectors_parse() {
        let vectors: Value =
            serde_json::from_str(include_str!("../tests/data/uplink.json")).unwrap();
        for case in vectors["cases"].as_array().unwrap() {
            let bytes = case["bytes"].as_str().unwrap().as_bytes();
            let module = case["module"].as_str().unwrap_or(DEFAULT_MODULE).to_owned();
            let (topic, expected) = match case["what"].as_str().unwrap() {
                "inform" => (
                    "/ota/device/inform/pk/dn",
                    Uplink::Inform {
                        version: case["version"].as_str().unwrap().into(),
                        module,
                    },
                ),
                "progress" => (
                    "/ota/device/progress/pk/dn",
                    Uplink::Progress {
                        step: case["step"].as_i64().unwrap(),
                        desc: case["desc"].as_str().map(Into::into),
                        module,
                    },
                ),
                "firmware_get" => (
                    "/sys/pk/dn/thing/ota/firmware/get",
                    Uplink::FirmwareGet {
                        id: Value::String(case["id"].as_str().unwrap().into()),
                        module,
                    },
                ),
                _ => continue,
            };
            let (dev, got) = parse_uplink(topic, bytes).unwrap();
            assert_eq!(dev, DeviceId::new("pk", "dn"));
            assert_eq!(got, expected, "{}", case["bytes"]);
        }
    }

    #[test]
    fn ntp_requests_keep_the_device_time_as_sent() {
        let t = "/ext/ntp/pk/dn/request";
        let (dev, got) = parse_uplink(t, br#"{"deviceSendTime":"1571724098000"}"#).unwrap();
        assert_eq!(dev, DeviceId::new("pk", "dn"));
        assert_eq!(
            got,
            Uplink::Ntp {
                device_send_time: Value::String("1571724098000".into())
            }
        );
        let (_, got) = parse_uplink(t, br#"{"deviceSendTime":1571724098000}"#).unwrap();
        assert_eq!(
            got,
            Uplink::Ntp {
                device_send_time: Value::from(1571724098000u64)
            }
        );
        assert!(parse_uplink(t, b"{}").is_err());
        assert!(parse_uplink(t, br#"{"deviceSendTime":"soon"}"#).is_err());
        assert!(parse_uplink("/ext/ntp/pk/dn/response", b"{}").is_err());
        let reply = ntp_payload(&Value::String("5".into()), 7, 8);
        assert_eq!(
            reply,
            r#"{"deviceSendTime":"5","serverRecvTime":"7","serverSendTime":"8"}"#
        );
    }

    #[test]
    fn lenient_and_malformed_input() {
        let t = "/ota/device/progress/pk/dn";
        let p = parse_uplink(t, br#"{"params":{"step":-2,"x":[1]},"extra":true}"#).unwrap();
        assert!(matches!(p.1, Uplink::Progress { step: -2, .. }));
        assert!(parse_uplink(t, b"not json").is_err());
        assert!(parse_uplink(t, b"[1,2]").is_err());
        assert!(parse_uplink(t, br#"{"params":{"step":"abc"}}"#).is_err());
        assert!(parse_uplink(t, br#"{"params":"x"}"#).is_err());
        assert!(parse_uplink("/ota/device/inform/pk", b"{}").is_err());
        assert!(parse_uplink("/ota/device/inform/pk/dn", br#"{"params":{}}"#).is_err());
        let r = parse_uplink("/ota/device/request/pk/dn", b"{}").unwrap();
        assert_eq!(
            r.1,
            Uplink::LegacyRequest {
                module: DEFAULT_MODULE.into()
            }
        );
    }

    #[test]
    fn push_and_reply_are_compact_and_shaped_as_documented() {
        let data = TaskData {
            size: Some(10),
            version: "2.0.0".into(),
            url: Some("http://h/fw".into()),
            md5: Some("ab".into()),
            sign: Some("ab".into()),
            sign_method: "Md5".into(),
            ..TaskData::default()
        };
        assert_eq!(
            push_payload(&data, 1626969597470),
            r#"{"code":"1000","data":{"size":10,"version":"2.0.0","url":"http://h/fw","md5":"ab","sign":"ab","signMethod":"Md5"},"id":1626969597470,"message":"success"}"#
        );
        assert_eq!(
            get_reply_payload(&Value::String("3".into()), None),
            r#"{"id":"3","code":200,"data":{},"message":"success"}"#
        );
        let reply = get_reply_payload(&Value::from(7), Some(&data));
        assert!(reply.starts_with(r#"{"id":7,"code":200,"data":{"size":10,"#));
    }

    #[test]
    fn mqtt_and_multi_file_variants_are_shaped_as_documented() {
        let mqtt = TaskData {
            size: Some(20000),
            version: "2.0.0".into(),
            sign: Some("ab".into()),
            sign_method: "SHA256".into(),
            module: Some("MCU".into()),
            is_diff: Some(1),
            ext_data: Some(serde_json::json!({"_package_udi": "{\"k\":\"v\"}", "key1": "value1"})),
            digestsign: Some("c2ln".into()),
            d_protocol: Some("mqtt".into()),
            stream_id: Some(1397345),
            stream_file_id: Some(1),
            ..TaskData::default()
        };
        assert_eq!(
            serde_json::to_string(&mqtt).unwrap(),
            r#"{"size":20000,"version":"2.0.0","sign":"ab","signMethod":"SHA256","module":"MCU","isDiff":1,"extData":{"_package_udi":"{\"k\":\"v\"}","key1":"value1"},"digestsign":"c2ln","dProtocol":"mqtt","streamId":1397345,"streamFileId":1}"#
        );
        let file = |name: &str, url: Option<&str>, stream: Option<u64>| TaskFile {
            file_name: name.into(),
            file_size: 3,
            file_url: url.map(Into::into),
            stream_file_id: stream,
            file_md5: Some("cd".into()),
            file_sign: "cd".into(),
        };
        let multi = TaskData {
            version: "3.0".into(),
            sign_method: "Md5".into(),
            files: Some(vec![
                file("a.bin", Some("http://h/a"), None),
                file("b.bin", None, Some(2)),
            ]),
            ..TaskData::default()
        };
        assert_eq!(
            serde_json::to_string(&multi).unwrap(),
            r#"{"version":"3.0","signMethod":"Md5","files":[{"fileName":"a.bin","fileSize":3,"fileUrl":"http://h/a","fileMd5":"cd","fileSign":"cd"},{"fileName":"b.bin","fileSize":3,"streamFileId":2,"fileMd5":"cd","fileSign":"cd"}]}"#
        );
    }

    fn parse_block(s: &str) -> BlockRequest {
        BlockRequest::parse(&serde_json::from_str(s).unwrap())
    }

    #[test]
    fn documented_request_parses() {
        let r = parse_block(
            r#"{"id":"5","version":"1.0","params":{"fileToken":"t1","fileInfo":{"streamId":1397345,"fileId":1},"fileBlock":{"size":10240,"offset":0}}}"#,
        );
        assert_eq!(r.id, Value::String("5".into()));
        assert_eq!(r.token.as_deref(), Some("t1"));
        assert_eq!(
            (r.stream_id, r.file_id, r.offset, r.size),
            (Some(1397345), Some(1), Some(0), Some(10240))
        );
        assert_eq!(r.malformed, None);
    }

    #[test]
    fn sdk_quirks_are_tolerated() {
        let r = parse_block(
            "{\n  \"id\": 12,\n  \"params\": {\n    \"fileInfo\": {\"streamId\": \"7\", \"fileId\": 2, \"x\": []},\n    \"fileBlock\": {\"size\": 2048, \"offset\": \"4096\"}\n  },\n  \"extra\": true\n}",
        );
        assert_eq!(r.id, Value::from(12));
        assert_eq!(r.token, None);
        assert_eq!(
            (r.stream_id, r.file_id, r.offset, r.size),
            (Some(7), Some(2), Some(4096), Some(2048))
        );
    }

    #[test]
    fn unusable_fields_are_reported_not_guessed() {
        let r = parse_block(r#"{"id":[1],"params":{"fileBlock":{"size":-1,"offset":1.5}}}"#);
        assert_eq!(r.id, Value::Null);
        assert_eq!((r.stream_id, r.size, r.offset), (None, None, None));
        let long = "x".repeat(MAX_ECHO_LEN + 1);
        let r = parse_block(&format!(r#"{{"id":"{long}","params":{{}}}}"#));
        assert_eq!((r.id, r.malformed), (Value::Null, Some("id too long")));
        let r = parse_block(&format!(
            r#"{{"id":"1","params":{{"fileToken":"{long}"}}}}"#
        ));
        assert_eq!((r.token, r.malformed), (None, Some("fileToken too long")));
    }
}
