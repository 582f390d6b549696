//! What goes over MQTT (PROTOCOL.md §1–§4): topics, lenient parsing of what devices send, and
//! the compact JSON the cloud sends, built with serde_json from the documented shapes (never
//! with ota-core's encoder, so a format mistake on one side is caught by the other).

use crate::DeviceId;
use serde::Serialize;
use serde_json::Value;

/// The module name meaning "the whole firmware".
pub const DEFAULT_MODULE: &str = "default";

/// MQTT filters the cloud subscribes to.
pub(crate) const CLOUD_FILTERS: [&str; 4] = [
    "/ota/device/inform/+/+",
    "/ota/device/progress/+/+",
    "/ota/device/request/+/+",
    "/sys/+/+/thing/ota/firmware/get",
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
        _ => return Err(ParseError::Topic),
    };
    if pk.is_empty() || dn.is_empty() {
        return Err(ParseError::Topic);
    }
    let json: Value =
        serde_json::from_slice(payload).map_err(|e| ParseError::Json(e.to_string()))?;
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
        _ => return Err(ParseError::Topic),
    };
    Ok((DeviceId::new(pk, dn), uplink))
}

/// A string field, or a number written as one.
fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The `data` object of a push and of a firmware/get reply (PROTOCOL.md §3).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TaskData {
    /// Image size in bytes.
    pub size: u64,
    /// Target version.
    pub version: String,
    /// Signed download URL.
    pub url: String,
    /// MD5 of the image (only for MD5 packages, like the legacy field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub md5: Option<String>,
    /// Digest per `signMethod`.
    pub sign: String,
    /// `Md5` or `SHA256`.
    #[serde(rename = "signMethod")]
    pub sign_method: String,
    /// Module, absent for the default one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
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

/// Topic of pushes to `device`.
pub(crate) fn upgrade_topic(device: &DeviceId) -> String {
    format!(
        "/ota/device/upgrade/{}/{}",
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
            size: 10,
            version: "2.0.0".into(),
            url: "http://h/fw".into(),
            md5: Some("ab".into()),
            sign: "ab".into(),
            sign_method: "Md5".into(),
            module: None,
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
}
