//! JSON as the official C SDKs write it: their hand-built block requests can end an object
//! with a trailing comma (`{"size":10240,"offset":0,}`), which strict JSON refuses. Such
//! commas are dropped before parsing; commas inside strings are left alone.

use serde_json::Value;

/// Parses `bytes` as JSON, accepting trailing commas before `}` and `]`.
pub(crate) fn parse(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(strict) => serde_json::from_slice(&without_trailing_commas(bytes)).map_err(|_| strict),
    }
}

/// `bytes` with every comma that ends a non-empty object or array (a value before it, `}` or
/// `]` after it, whitespace aside), outside strings, removed.
fn without_trailing_commas(bytes: &[u8]) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let (mut in_string, mut escaped) = (false, false);
    for (i, &b) in bytes.iter().enumerate() {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b',' {
            let next = bytes[i + 1..].iter().find(|c| !c.is_ascii_whitespace());
            let last = out.iter().rev().find(|c| !c.is_ascii_whitespace());
            let after_value = !matches!(last, None | Some(b'{' | b'[' | b','));
            if after_value && matches!(next, Some(b'}' | b']')) {
                continue;
            }
        }
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailing_commas_are_dropped_and_strings_kept() {
        let sdk = br#"{"id":1,"params":{"fileBlock":{"size":10,"offset":0,},"x":[1,2, ],},}"#;
        let v = parse(sdk).unwrap();
        assert_eq!(v["params"]["fileBlock"]["size"], 10);
        assert_eq!(v["params"]["x"], serde_json::json!([1, 2]));
        let v = parse(br#"{"s":"a,}\",]"}"#).unwrap();
        assert_eq!(v["s"], "a,}\",]");
        assert!(parse(b"{,}").is_err());
        assert!(parse(b"[1,,]").is_err());
        assert!(parse(b"not json").is_err());
    }
}
