//! The gateway's session messages (docs/protocol.md §14): topology add/get, sub-device login
//! and logout requests, and the replies and error notices the cloud sends back.
//!
//! Requests are built byte by byte like the uplinks (`crate::uplink`); replies go through the
//! core's validating JSON reader and accept what the platform and SDKs are seen to send:
//! `code` as a number or a digit string, `id` as a string or a number, `data` as `{}`, one
//! `{productKey,deviceName}` object or an array of them.

use alloc::string::String;
use alloc::vec::Vec;

use crate::json::{self, Kind};
use crate::uplink::push_json_str;

/// What a login or topology request says about one sub-device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedDevice<'a> {
    /// The sub-device's ProductKey.
    pub product_key: &'a str,
    /// The sub-device's DeviceName.
    pub device_name: &'a str,
    /// Milliseconds; the cloud does not check its freshness.
    pub timestamp: u64,
    /// The hex HMAC of [`super::sign::sign_text`].
    pub sign: &'a str,
}

impl SignedDevice<'_> {
    /// The members shared by topology and login requests; `sign_method_key` is `signmethod`
    /// for topology and `signMethod` for login (the platform spells them differently).
    fn push_members(&self, out: &mut Vec<u8>, sign_method_key: &str) {
        out.extend_from_slice(b"\"productKey\":");
        push_json_str(out, self.product_key);
        out.extend_from_slice(b",\"deviceName\":");
        push_json_str(out, self.device_name);
        out.extend_from_slice(b",\"clientId\":");
        push_json_str(out, &client_id(self.product_key, self.device_name));
        out.extend_from_slice(b",\"timestamp\":\"");
        out.extend_from_slice(itoa::Buffer::new().format(self.timestamp).as_bytes());
        out.extend_from_slice(b"\",\"");
        out.extend_from_slice(sign_method_key.as_bytes());
        out.extend_from_slice(b"\":\"hmacSha256\",\"sign\":");
        push_json_str(out, self.sign);
    }
}

/// The sub-device's client id in the signed parameters: `{pk}&{dn}`.
pub fn client_id(product_key: &str, device_name: &str) -> String {
    text!(product_key, "&", device_name)
}

/// `thing.topo.add` for the given sub-devices (at most 30 per request).
pub fn encode_topo_add(out: &mut Vec<u8>, id: u64, devices: &[SignedDevice<'_>]) {
    push_id(out, id);
    out.extend_from_slice(b",\"version\":\"1.0\",\"params\":[");
    for (i, device) in devices.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.push(b'{');
        device.push_members(out, "signmethod");
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"method\":\"thing.topo.add\"}");
}

/// `thing.topo.get`: which sub-devices the cloud already has under this gateway.
pub fn encode_topo_get(out: &mut Vec<u8>, id: u64) {
    push_id(out, id);
    out.extend_from_slice(b",\"version\":\"1.0\",\"params\":{},\"method\":\"thing.topo.get\"}");
}

/// `combine/login` of one sub-device.
pub fn encode_login(out: &mut Vec<u8>, id: u64, device: &SignedDevice<'_>) {
    push_id(out, id);
    out.extend_from_slice(b",\"params\":{");
    device.push_members(out, "signMethod");
    out.extend_from_slice(b",\"cleanSession\":\"true\"}}");
}

/// `combine/logout` of one sub-device.
pub fn encode_logout(out: &mut Vec<u8>, id: u64, product_key: &str, device_name: &str) {
    push_id(out, id);
    out.extend_from_slice(b",\"params\":{\"productKey\":");
    push_json_str(out, product_key);
    out.extend_from_slice(b",\"deviceName\":");
    push_json_str(out, device_name);
    out.extend_from_slice(b"}}");
}

fn push_id(out: &mut Vec<u8>, id: u64) {
    out.extend_from_slice(b"{\"id\":\"");
    out.extend_from_slice(itoa::Buffer::new().format(id).as_bytes());
    out.push(b'"');
}

/// A reply (`topo/*_reply`, `combine/*_reply`) or an `/ext/error` notice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request it answers; `None` for notices, which carry none.
    pub id: Option<u64>,
    /// 200 on success, else the error code of docs/protocol.md §14.
    pub code: u32,
    /// The `(productKey, deviceName)` pairs named in `data` (or at the top level).
    pub devices: Vec<(String, String)>,
}

/// Parses a reply or notice; `Err` says what is wrong with it.
pub fn parse_reply(payload: &[u8]) -> Result<Reply, &'static str> {
    let root = json::parse(payload).map_err(|_| "invalid json")?;
    if root.kind() != Kind::Object {
        return Err("not a json object");
    }
    let id = root.get("id").and_then(|v| number_or_digits(&v));
    let code = root
        .get("code")
        .and_then(|v| number_or_digits(&v))
        .and_then(|c| u32::try_from(c).ok())
        .ok_or("no code")?;
    let mut devices = Vec::new();
    match root.get("data") {
        Some(data) if data.kind() == Kind::Array => {
            for element in data.elements() {
                devices.extend(device_of(&element));
            }
        }
        Some(data) => devices.extend(device_of(&data)),
        None => devices.extend(device_of(&root)),
    }
    Ok(Reply { id, code, devices })
}

fn device_of(value: &json::Json<'_>) -> Option<(String, String)> {
    if value.kind() != Kind::Object {
        return None;
    }
    let pk = value.get("productKey")?.as_str()?;
    let dn = value.get("deviceName")?.as_str()?;
    Some((pk.into_owned(), dn.into_owned()))
}

fn number_or_digits(value: &json::Json<'_>) -> Option<u64> {
    value.as_u64().or_else(|| {
        let s = value.as_str()?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn device(sign: &str) -> SignedDevice<'_> {
        SignedDevice {
            product_key: "a1SubPK0001",
            device_name: "node1",
            timestamp: 42,
            sign,
        }
    }

    #[test]
    fn requests_have_the_shapes_of_the_protocol() {
        assert_eq!(
            text(|o| encode_topo_add(o, 1, &[device("AB"), device("CD")])),
            concat!(
                r#"{"id":"1","version":"1.0","params":["#,
                r#"{"productKey":"a1SubPK0001","deviceName":"node1","clientId":"a1SubPK0001&node1","timestamp":"42","signmethod":"hmacSha256","sign":"AB"},"#,
                r#"{"productKey":"a1SubPK0001","deviceName":"node1","clientId":"a1SubPK0001&node1","timestamp":"42","signmethod":"hmacSha256","sign":"CD"}"#,
                r#"],"method":"thing.topo.add"}"#
            )
        );
        assert_eq!(
            text(|o| encode_login(o, 2, &device("AB"))),
            concat!(
                r#"{"id":"2","params":{"productKey":"a1SubPK0001","deviceName":"node1","clientId":"a1SubPK0001&node1","#,
                r#""timestamp":"42","signMethod":"hmacSha256","sign":"AB","cleanSession":"true"}}"#
            )
        );
        assert_eq!(
            text(|o| encode_logout(o, 3, "a1SubPK0001", "node1")),
            r#"{"id":"3","params":{"productKey":"a1SubPK0001","deviceName":"node1"}}"#
        );
        assert_eq!(
            text(|o| encode_topo_get(o, 4)),
            r#"{"id":"4","version":"1.0","params":{},"method":"thing.topo.get"}"#
        );
        for request in [
            text(|o| encode_topo_add(o, 1, &[device("AB")])),
            text(|o| encode_login(o, 2, &device("AB"))),
        ] {
            serde_json::from_str::<serde_json::Value>(&request).unwrap();
        }
    }

    #[test]
    fn replies_accept_every_shape_of_data_and_code() {
        let r = parse_reply(br#"{"id":"7","code":200,"message":"success","data":{"productKey":"pk","deviceName":"dn"}}"#).unwrap();
        assert_eq!(
            r,
            Reply {
                id: Some(7),
                code: 200,
                devices: vec![("pk".into(), "dn".into())]
            }
        );
        let r = parse_reply(br#"{"id":8,"code":"200","data":[{"productKey":"a","deviceName":"b"},{"productKey":"c","deviceName":"d"}]}"#).unwrap();
        assert_eq!(r.id, Some(8));
        assert_eq!(r.devices.len(), 2);
        let r = parse_reply(br#"{"id":"9","code":200,"data":{}}"#).unwrap();
        assert!(r.devices.is_empty());
        let r = parse_reply(
            br#"{"code":520,"message":"device no session","productKey":"pk","deviceName":"dn"}"#,
        )
        .unwrap();
        assert_eq!(
            r,
            Reply {
                id: None,
                code: 520,
                devices: vec![("pk".into(), "dn".into())]
            }
        );
    }

    #[test]
    fn broken_replies_say_why() {
        assert_eq!(parse_reply(b"{"), Err("invalid json"));
        assert_eq!(parse_reply(b"[]"), Err("not a json object"));
        assert_eq!(parse_reply(br#"{"id":"1"}"#), Err("no code"));
        assert_eq!(parse_reply(br#"{"id":"1","code":-5}"#), Err("no code"));
        assert_eq!(parse_reply(br#"{"id":"1","code":"2x"}"#), Err("no code"));
    }
}
