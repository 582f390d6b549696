//! The platform's time over MQTT (docs/protocol.md §13), for devices without a real-time
//! clock: they cannot check certificate dates until they know the date. Once connected the
//! device publishes `{"deviceSendTime":"<local ms>"}` at QoS 0 on the request topic; the reply
//! on the response topic adds the server's receive and send times (Unix ms), and the current
//! Unix time at the reply's arrival is
//! `(serverRecvTime + serverSendTime + deviceRecvTime - deviceSendTime) / 2`.
//!
//! "Local ms" is any monotonic millisecond count (uptime): only differences of it are used.

use alloc::string::String;
use alloc::vec::Vec;

use crate::identity::DeviceIdentity;
use crate::json::{self, Kind};

/// `/ext/ntp/{pk}/{dn}/request`: publish the request here at QoS 0.
pub fn request_topic(id: &DeviceIdentity) -> String {
    text!(
        "/ext/ntp/",
        id.product_key(),
        "/",
        id.device_name(),
        "/request"
    )
}

/// `/ext/ntp/{pk}/{dn}/response`: subscribe before sending the request.
pub fn response_topic(id: &DeviceIdentity) -> String {
    text!(
        "/ext/ntp/",
        id.product_key(),
        "/",
        id.device_name(),
        "/response"
    )
}

/// `{"deviceSendTime":"<device_send_ms>"}`, appended to `out`.
pub fn encode_request(out: &mut Vec<u8>, device_send_ms: u64) {
    out.extend_from_slice(b"{\"deviceSendTime\":\"");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(device_send_ms).as_bytes());
    out.extend_from_slice(b"\"}");
}

/// The three times of a reply, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Response {
    /// The device's local time of the request, echoed.
    pub device_send: u64,
    /// Unix time the server received the request.
    pub server_recv: u64,
    /// Unix time the server sent the reply.
    pub server_send: u64,
}

/// Why a reply was not used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NtpError {
    /// Not a JSON object with the three times as digit strings or numbers.
    #[error("time reply is not an object with deviceSendTime, serverRecvTime, serverSendTime")]
    Malformed,
    /// The server says it sent before it received.
    #[error("time reply sent before it was received")]
    Inconsistent,
    /// It answers another request than the one in flight (or none is).
    #[error("time reply answers another request")]
    Unexpected,
    /// The local clock reads earlier at the reply than at the request.
    #[error("local clock went backwards between request and reply")]
    ClockWentBack,
}

/// Reads a reply; each time may be a JSON number or a string of digits.
pub fn decode_response(payload: &[u8]) -> Result<Response, NtpError> {
    let doc = json::parse(payload).map_err(|_| NtpError::Malformed)?;
    if doc.kind() != Kind::Object {
        return Err(NtpError::Malformed);
    }
    let mut found = [None; 3];
    if doc
        .fields_into(
            &["deviceSendTime", "serverRecvTime", "serverSendTime"],
            &mut found,
        )
        .is_some()
    {
        return Err(NtpError::Malformed);
    }
    let [ds, sr, ss] = found;
    let millis = |v: Option<json::Json>| -> Result<u64, NtpError> {
        let v = v.ok_or(NtpError::Malformed)?;
        match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().map_err(|_| NtpError::Malformed)
            }
            Some(_) => Err(NtpError::Malformed),
            None => v.as_u64().ok_or(NtpError::Malformed),
        }
    };
    let response = Response {
        device_send: millis(ds)?,
        server_recv: millis(sr)?,
        server_send: millis(ss)?,
    };
    if response.server_send < response.server_recv {
        return Err(NtpError::Inconsistent);
    }
    Ok(response)
}

impl Response {
    /// The Unix time (ms) at `device_recv` (local ms when the reply arrived).
    pub fn unix_ms_at(&self, device_recv: u64) -> Result<u64, NtpError> {
        let round_trip = device_recv
            .checked_sub(self.device_send)
            .ok_or(NtpError::ClockWentBack)?;
        // In u128: the sum of two Unix times and a round trip cannot overflow it.
        let sum =
            u128::from(self.server_recv) + u128::from(self.server_send) + u128::from(round_trip);
        u64::try_from(sum / 2).map_err(|_| NtpError::Inconsistent)
    }
}

/// One request in flight at a time: a reply is used only if it echoes the request's time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeRequest {
    sent: Option<u64>,
}

impl TimeRequest {
    /// Encodes a request sent at local time `now_ms` into `out` and remembers it (a new
    /// request replaces one still unanswered).
    pub fn start(&mut self, now_ms: u64, out: &mut Vec<u8>) {
        self.sent = Some(now_ms);
        encode_request(out, now_ms);
    }

    /// Whether a request awaits its reply.
    pub fn is_pending(&self) -> bool {
        self.sent.is_some()
    }

    /// The Unix time (ms) at local time `now_ms` from a reply to the pending request.
    pub fn handle_response(&mut self, payload: &[u8], now_ms: u64) -> Result<u64, NtpError> {
        let response = decode_response(payload)?;
        if self.sent != Some(response.device_send) {
            return Err(NtpError::Unexpected);
        }
        let unix = response.unix_ms_at(now_ms)?;
        self.sent = None;
        Ok(unix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_request_follow_the_protocol() {
        let id = DeviceIdentity::new("a1TestPK001", "dev01").unwrap();
        assert_eq!(request_topic(&id), "/ext/ntp/a1TestPK001/dev01/request");
        assert_eq!(response_topic(&id), "/ext/ntp/a1TestPK001/dev01/response");
        let mut out = Vec::new();
        encode_request(&mut out, 1_571_724_098_000);
        assert_eq!(out, br#"{"deviceSendTime":"1571724098000"}"#);
    }

    #[test]
    fn the_documented_reply_gives_the_midpoint_formula() {
        let reply = br#"{"deviceSendTime":"1571724098000","serverRecvTime":"1571724098110","serverSendTime":"1571724098115"}"#;
        let r = decode_response(reply).unwrap();
        // Arrived 230 ms after sending: (110 + 115 + 230) / 2 past the device's send time.
        assert_eq!(r.unix_ms_at(1_571_724_098_230), Ok(1_571_724_098_227));
    }

    #[test]
    fn uptime_clocks_and_numbers_work() {
        let mut request = TimeRequest::default();
        let mut out = Vec::new();
        request.start(5_000, &mut out);
        assert!(request.is_pending());
        let reply = br#"{"deviceSendTime":5000,"serverRecvTime":1700000000050,"serverSendTime":1700000000052}"#;
        // (1700000000050 + 1700000000052 + 100) / 2
        assert_eq!(request.handle_response(reply, 5_100), Ok(1_700_000_000_101));
        assert!(!request.is_pending());
        // The same reply again answers nothing in flight.
        assert_eq!(
            request.handle_response(reply, 5_200),
            Err(NtpError::Unexpected)
        );
    }

    #[test]
    fn bad_replies_are_refused() {
        let mut request = TimeRequest::default();
        request.start(10, &mut Vec::new());
        for (reply, error) in [
            (&b"not json"[..], NtpError::Malformed),
            (b"[]", NtpError::Malformed),
            (br#"{"deviceSendTime":"10","serverRecvTime":"5"}"#, NtpError::Malformed),
            (
                br#"{"deviceSendTime":"10","serverRecvTime":"5","serverRecvTime":"5","serverSendTime":"6"}"#,
                NtpError::Malformed,
            ),
            (
                br#"{"deviceSendTime":"10","serverRecvTime":"-5","serverSendTime":"6"}"#,
                NtpError::Malformed,
            ),
            (
                br#"{"deviceSendTime":"10","serverRecvTime":1.5,"serverSendTime":"6"}"#,
                NtpError::Malformed,
            ),
            (
                br#"{"deviceSendTime":"10","serverRecvTime":"99999999999999999999999","serverSendTime":"6"}"#,
                NtpError::Malformed,
            ),
            (
                br#"{"deviceSendTime":"10","serverRecvTime":"7","serverSendTime":"6"}"#,
                NtpError::Inconsistent,
            ),
            (
                br#"{"deviceSendTime":"11","serverRecvTime":"5","serverSendTime":"6"}"#,
                NtpError::Unexpected,
            ),
        ] {
            assert_eq!(request.handle_response(reply, 20), Err(error), "{reply:?}");
        }
        let reply = br#"{"deviceSendTime":"10","serverRecvTime":"5","serverSendTime":"6"}"#;
        assert_eq!(
            request.handle_response(reply, 9),
            Err(NtpError::ClockWentBack)
        );
        let huge = alloc::format!(
            r#"{{"deviceSendTime":"10","serverRecvTime":"{m}","serverSendTime":"{m}"}}"#,
            m = u64::MAX
        );
        // Past u64 milliseconds: refused, not wrapped.
        assert_eq!(
            request.handle_response(huge.as_bytes(), 20),
            Err(NtpError::Inconsistent)
        );
        assert!(request.is_pending());
    }
}
