//! A small validating JSON reader for the few downlink messages the agent reads (pushes,
//! firmware/get replies, MQTT-channel frame headers).
//!
//! Why not serde_json: on a Cortex-M it costs ~25 KiB of flash (its `Value` tree, float
//! parsing with soft-float, error messages through `core::fmt`), a quarter of the firmware
//! budget, for messages of a dozen fields. serde-json-core is small but can neither keep a
//! value as raw text (`extData` must reach the application untouched) nor read a field that
//! is a number in one push and a string in the next. This reader validates a whole document
//! (RFC 8259: strict syntax, UTF-8, escapes and surrogate pairs, nothing after the value)
//! in one pass without allocating, then hands out values as borrowed raw text with their
//! kind; strings are decoded on demand and numbers read as `u64` only when they are plain
//! non-negative integers. Nesting is bounded so that no input can exhaust the stack.

use alloc::borrow::Cow;
use alloc::string::String;

/// Deepest nesting of arrays and objects accepted (pushes nest three levels).
const MAX_DEPTH: u32 = 64;

/// What kind of value a [`Json`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `null`
    Null,
    /// `true` or `false`
    Bool,
    /// A number (any JSON number).
    Number,
    /// A string.
    String,
    /// An array.
    Array,
    /// An object.
    Object,
}

/// A validated JSON value: its kind and its raw text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Json<'a> {
    kind: Kind,
    raw: &'a str,
}

/// Why a document is not JSON: what was wrong, and the byte offset where it was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyntaxError {
    /// What was expected or found.
    pub what: &'static str,
    /// Byte offset in the document.
    pub at: usize,
}

/// Validates `bytes` as one JSON document (surrounding whitespace allowed).
pub fn parse(bytes: &[u8]) -> Result<Json<'_>, SyntaxError> {
    let text = core::str::from_utf8(bytes).map_err(|e| SyntaxError {
        what: "invalid UTF-8",
        at: e.valid_up_to(),
    })?;
    let mut scanner = Scanner { text, pos: 0 };
    scanner.skip_whitespace();
    let value = scanner.value(0)?;
    scanner.skip_whitespace();
    if scanner.pos != text.len() {
        return Err(scanner.error("trailing characters after the value"));
    }
    Ok(value)
}

impl<'a> Json<'a> {
    /// The value's kind.
    // Out of line: measured smaller than inlined at its uses (flash, issue #21).
    #[inline(never)]
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The value's text exactly as it was in the document.
    pub fn raw(&self) -> &'a str {
        self.raw
    }

    /// The decoded text of a string (borrowed when it has no escapes).
    pub fn as_str(&self) -> Option<Cow<'a, str>> {
        (self.kind == Kind::String).then(|| decode_string(self.raw))
    }

    /// A non-negative integer without fraction or exponent that fits `u64`.
    pub fn as_u64(&self) -> Option<u64> {
        if self.kind != Kind::Number {
            return None;
        }
        parse_digits(self.raw)
    }

    /// An integer without fraction or exponent that fits `i64`.
    #[cfg_attr(not(feature = "mqtt-channel"), allow(dead_code))]
    pub fn as_i64(&self) -> Option<i64> {
        let digits = self.raw.strip_prefix('-').unwrap_or(self.raw);
        if self.kind != Kind::Number || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        parse_i64(self.raw)
    }

    /// `Some(b)` for `true` and `false`.
    pub fn as_bool(&self) -> Option<bool> {
        (self.kind == Kind::Bool).then(|| self.raw == "true")
    }

    /// The members of an object (nothing for other kinds), in document order.
    pub fn members(&self) -> Members<'a> {
        Members(self.inner(Kind::Object))
    }

    /// The elements of an array (nothing for other kinds), in document order.
    #[cfg_attr(
        not(any(feature = "multi-file", feature = "gateway")),
        allow(dead_code)
    )]
    pub fn elements(&self) -> Elements<'a> {
        Elements(self.inner(Kind::Array))
    }

    /// The member `key` of an object (the first one if it repeats).
    #[cfg_attr(
        not(any(feature = "multi-file", feature = "gateway")),
        allow(dead_code)
    )]
    pub fn get(&self, key: &str) -> Option<Json<'a>> {
        self.members().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Fills `found` with the members named in `keys`, by position; `null` counts as absent.
    /// Returns the index of a key that appears twice (it would be ambiguous which one is
    /// meant). The members land in the caller's array: returning them in a `Result` cost a
    /// copy at every call (~100 to 230 B each on Cortex-M, flash, issue #21); one body for
    /// every number of keys.
    #[inline(never)]
    pub(crate) fn fields_into(
        &self,
        keys: &[&str],
        found: &mut [Option<Json<'a>>],
    ) -> Option<usize> {
        for (key, value) in self.members() {
            if let Some(i) = keys.iter().position(|k| *k == key) {
                if found[i].is_some() {
                    return Some(i);
                }
                if value.kind != Kind::Null {
                    found[i] = Some(value);
                }
            }
        }
        None
    }

    // A scanner positioned just inside the brackets of an array or object of `kind`.
    fn inner(&self, kind: Kind) -> Scanner<'a> {
        let text = if self.kind == kind { self.raw } else { "" };
        Scanner {
            text,
            pos: usize::from(!text.is_empty()),
        }
    }
}

/// A string of ASCII digits (at least one) as a `u64`; `None` for anything else or beyond
/// `u64::MAX`. The one number parser of the crate: `str::parse` links a second, generic one.
pub fn parse_digits(digits: &str) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.bytes().try_fold(0u64, |n, b| {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// A decimal `i64` as `str::parse::<i64>` reads it (an optional `+` or `-`, then digits),
/// over [`parse_digits`]: one digit loop rather than core's generic integer parser.
#[cfg_attr(not(feature = "mqtt-channel"), allow(dead_code))]
pub fn parse_i64(text: &str) -> Option<i64> {
    match text.as_bytes().first() {
        Some(b'-') => 0i64.checked_sub_unsigned(parse_digits(text.get(1..)?)?),
        Some(b'+') => i64::try_from(parse_digits(text.get(1..)?)?).ok(),
        _ => i64::try_from(parse_digits(text)?).ok(),
    }
}

/// Iterator over an object's members: (decoded key, value).
pub struct Members<'a>(Scanner<'a>);

impl<'a> Iterator for Members<'a> {
    type Item = (Cow<'a, str>, Json<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        // The text was validated by `parse`, so the scan only follows its structure.
        let s = &mut self.0;
        s.skip_separator()?;
        let key = s.value(0).ok()?;
        s.skip_whitespace();
        s.pos += 1; // ':'
        s.skip_whitespace();
        let value = s.value(0).ok()?;
        Some((decode_string(key.raw), value))
    }
}

/// Iterator over an array's elements.
#[cfg_attr(
    not(any(feature = "multi-file", feature = "gateway")),
    allow(dead_code)
)]
pub struct Elements<'a>(Scanner<'a>);

impl<'a> Iterator for Elements<'a> {
    type Item = Json<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        let s = &mut self.0;
        s.skip_separator()?;
        s.value(0).ok()
    }
}

struct Scanner<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Scanner<'a> {
    fn error(&self, what: &'static str) -> SyntaxError {
        SyntaxError { what, at: self.pos }
    }

    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    // Inside a validated array or object: steps over whitespace and a `,`; `None` at the end.
    fn skip_separator(&mut self) -> Option<()> {
        self.skip_whitespace();
        if self.peek() == Some(b',') {
            self.pos += 1;
            self.skip_whitespace();
        }
        match self.peek() {
            None | Some(b']' | b'}') => None,
            Some(_) => Some(()),
        }
    }

    fn value(&mut self, depth: u32) -> Result<Json<'a>, SyntaxError> {
        let start = self.pos;
        let kind = match self.peek() {
            None => return Err(self.error("unexpected end of the document")),
            Some(b'{') => self.object(depth)?,
            Some(b'[') => self.array(depth)?,
            Some(b'"') => self.string()?,
            Some(b'-' | b'0'..=b'9') => self.number()?,
            Some(b't') => self.literal("true", Kind::Bool)?,
            Some(b'f') => self.literal("false", Kind::Bool)?,
            Some(b'n') => self.literal("null", Kind::Null)?,
            Some(_) => return Err(self.error("expected a value")),
        };
        // `get`, not indexing: both ends sit at ASCII bytes (a value starts and ends at one),
        // and indexing would link core's 262-B slice-error formatter (flash, issue #21).
        let raw = self
            .text
            .get(start..self.pos)
            .ok_or_else(|| self.error("expected a value"))?;
        Ok(Json { kind, raw })
    }

    fn literal(&mut self, word: &str, kind: Kind) -> Result<Kind, SyntaxError> {
        if self.text.as_bytes()[self.pos..].starts_with(word.as_bytes()) {
            self.pos += word.len();
            Ok(kind)
        } else {
            Err(self.error("expected a value"))
        }
    }

    fn nested(&mut self, depth: u32) -> Result<u32, SyntaxError> {
        if depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.pos += 1; // the opening bracket
        self.skip_whitespace();
        Ok(depth + 1)
    }

    fn object(&mut self, depth: u32) -> Result<Kind, SyntaxError> {
        let depth = self.nested(depth)?;
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Kind::Object);
        }
        loop {
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':'"));
            }
            self.pos += 1;
            self.skip_whitespace();
            self.value(depth)?;
            if self.closed(b'}', "expected ',' or '}'")? {
                return Ok(Kind::Object);
            }
        }
    }

    fn array(&mut self, depth: u32) -> Result<Kind, SyntaxError> {
        let depth = self.nested(depth)?;
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Kind::Array);
        }
        loop {
            self.value(depth)?;
            if self.closed(b']', "expected ',' or ']'")? {
                return Ok(Kind::Array);
            }
        }
    }

    // After a member or element: `true` past the closing bracket, `false` past a comma.
    fn closed(&mut self, close: u8, what: &'static str) -> Result<bool, SyntaxError> {
        self.skip_whitespace();
        let closed = match self.peek() {
            Some(b',') => false,
            Some(c) if c == close => true,
            _ => return Err(self.error(what)),
        };
        self.pos += 1;
        if !closed {
            self.skip_whitespace();
        }
        Ok(closed)
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<Kind, SyntaxError> {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(Kind::Number)
    }

    fn string(&mut self) -> Result<Kind, SyntaxError> {
        self.pos += 1; // the opening quote
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Kind::String);
                }
                Some(b'\\') => self.escape()?,
                Some(0..=0x1f) => return Err(self.error("control character in a string")),
                Some(_) => self.pos += 1,
            }
        }
    }

    fn escape(&mut self) -> Result<(), SyntaxError> {
        self.pos += 1; // the backslash
        match self.peek() {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => {
                self.pos += 1;
                Ok(())
            }
            Some(b'u') => {
                let unit = self.hex4()?;
                if (0xDC00..0xE000).contains(&unit) {
                    return Err(self.error("lone low surrogate in a string"));
                }
                if (0xD800..0xDC00).contains(&unit) {
                    let low = match self.text.as_bytes().get(self.pos) {
                        Some(b'\\') => {
                            self.pos += 1;
                            self.hex4()?
                        }
                        _ => 0,
                    };
                    if !(0xDC00..0xE000).contains(&low) {
                        return Err(self.error("lone high surrogate in a string"));
                    }
                }
                Ok(())
            }
            _ => Err(self.error("invalid escape in a string")),
        }
    }

    // At a `u` of `\uXXXX`: reads the four hex digits.
    fn hex4(&mut self) -> Result<u32, SyntaxError> {
        if self.peek() != Some(b'u') {
            return Err(self.error("invalid escape in a string"));
        }
        let value = self
            .text
            .as_bytes()
            .get(self.pos + 1..self.pos + 5)
            .and_then(hex4_value)
            .ok_or_else(|| self.error("invalid \\u escape in a string"))?;
        self.pos += 5;
        Ok(value)
    }
}

// Decodes a validated string literal (with its quotes).
fn decode_string(raw: &str) -> Cow<'_, str> {
    let inner = raw.get(1..raw.len().saturating_sub(1)).unwrap_or("");
    // A byte search, not `str::contains`/`find` with a `char`: no `memchr` linked (flash,
    // issue #21; escapes are rare and strings short).
    let backslash = |s: &str| s.bytes().position(|b| b == b'\\');
    if backslash(inner).is_none() {
        return Cow::Borrowed(inner);
    }
    let mut out = String::with_capacity(inner.len());
    let mut rest = inner;
    while let Some((head, tail)) = split_at_byte(rest, b'\\') {
        out.push_str(head);
        rest = tail;
        let Some(tag) = rest.bytes().next() else {
            break;
        };
        // The scanner let only ASCII escape letters through, so byte 1 is a boundary.
        rest = rest.get(1..).unwrap_or("");
        let c = match tag {
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let unit = hex_unit(rest);
                rest = rest.get(4..).unwrap_or("");
                let code = if (0xD800..0xDC00).contains(&unit) {
                    let low = hex_unit(rest.get(2..).unwrap_or(""));
                    rest = rest.get(6..).unwrap_or("");
                    0x10000 + ((unit - 0xD800) << 10) + (low.wrapping_sub(0xDC00) & 0x3ff)
                } else {
                    unit
                };
                char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
            }
            other => char::from(other), // '"', '\\' and '/'
        };
        out.push(c);
    }
    out.push_str(rest);
    Cow::Owned(out)
}

/// `s` split around the first `byte` (ASCII), without it; `None` if it is absent. Byte
/// slicing through `get`: no `split_once(char)` (the char searcher) and no indexing's
/// slice-error formatter linked (flash, issue #21).
pub(crate) fn split_at_byte(s: &str, byte: u8) -> Option<(&str, &str)> {
    let at = s.bytes().position(|b| b == byte)?;
    Some((s.get(..at)?, s.get(at + 1..)?))
}

fn hex_unit(text: &str) -> u32 {
    text.as_bytes().get(..4).and_then(hex4_value).unwrap_or(0)
}

/// The value of four hex digits; `None` if one is not a hex digit (no sign, unlike
/// `from_str_radix`, whose generic parser this avoids).
fn hex4_value(digits: &[u8]) -> Option<u32> {
    digits
        .iter()
        .try_fold(0u32, |n, &b| Some(n << 4 | char::from(b).to_digit(16)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    fn kind(text: &str) -> Result<Kind, SyntaxError> {
        parse(text.as_bytes()).map(|v| v.kind())
    }

    #[test]
    fn accepts_every_kind_with_surrounding_whitespace() {
        assert_eq!(kind(" null "), Ok(Kind::Null));
        assert_eq!(kind("true"), Ok(Kind::Bool));
        assert_eq!(kind("\t-12.5e+3\n"), Ok(Kind::Number));
        assert_eq!(kind(r#""a\"b""#), Ok(Kind::String));
        assert_eq!(kind("[1, [2], {}]"), Ok(Kind::Array));
        assert_eq!(kind(r#"{"a" : {"b":[]}}"#), Ok(Kind::Object));
    }

    #[test]
    fn refuses_what_rfc_8259_refuses() {
        for bad in [
            "",
            "{",
            "[1,]",
            r#"{"a":1,}"#,
            r#"{"a" 1}"#,
            r#"{a:1}"#,
            "01",
            "1.",
            "-",
            "1e",
            ".5",
            "tru",
            "nul",
            r#""abc"#,
            "\"a\u{1}b\"",
            r#""\x""#,
            r#""\u12G4""#,
            r#""\ud800""#,
            r#""\udc00""#,
            r#""\ud800\u0041""#,
            "1 2",
            "{} x",
            "'a'",
        ] {
            assert!(kind(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(parse(b"\"\xff\"").is_err());
    }

    #[test]
    fn bounds_nesting_so_no_input_exhausts_the_stack() {
        let deep: String = "[".repeat(100_000);
        assert_eq!(kind(&deep).unwrap_err().what, "nested too deeply");
        let ok = alloc::format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert_eq!(kind(&ok), Ok(Kind::Array));
    }

    #[test]
    fn decodes_escapes_and_surrogate_pairs() {
        let v = parse(r#""a\/b\\c\"d\n\u00e9\ud83d\ude00""#.as_bytes()).unwrap();
        assert_eq!(v.as_str().unwrap(), "a/b\\c\"d\né😀");
        let plain = parse(br#""https://h/p?x=%2F""#).unwrap();
        assert!(matches!(
            plain.as_str(),
            Some(Cow::Borrowed("https://h/p?x=%2F"))
        ));
    }

    #[test]
    fn reads_integers_only_when_exact() {
        let n = |t: &str| parse(t.as_bytes()).unwrap().as_u64();
        assert_eq!(n("1626969597470"), Some(1_626_969_597_470));
        assert_eq!(n("18446744073709551615"), Some(u64::MAX));
        assert_eq!(n("18446744073709551616"), None);
        assert_eq!(n("1.0"), None);
        assert_eq!(n("1e3"), None);
        assert_eq!(n("-1"), None);
        assert_eq!(parse(b"-7").unwrap().as_i64(), Some(-7));
        assert_eq!(parse(b"\"7\"").unwrap().as_u64(), None);
    }

    #[test]
    fn parse_i64_reads_what_str_parse_reads() {
        let texts = [
            "0",
            "-0",
            "+0",
            "7",
            "+7",
            "-7",
            "",
            "+",
            "-",
            "+-1",
            "-+1",
            "--1",
            "1-",
            " 1",
            "9223372036854775807",
            "9223372036854775808",
            "-9223372036854775808",
            "-9223372036854775809",
            "+9223372036854775807",
            "18446744073709551616",
            "00000000000000000000012",
            "-00012",
            "1a",
            "\u{661}",
        ];
        for text in texts {
            assert_eq!(parse_i64(text), text.parse::<i64>().ok(), "{text:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_i64_agrees_with_str_parse_on_any_integer(n in proptest::prelude::any::<i64>(), plus in proptest::bool::ANY) {
            let text = if plus && n >= 0 { alloc::format!("+{n}") } else { alloc::format!("{n}") };
            proptest::prop_assert_eq!(parse_i64(&text), Some(n));
        }
    }

    #[test]
    fn walks_members_and_elements_and_keeps_raw_text() {
        let doc = parse(br#"{ "a" : [1, "x" ,{"k":null}], "b\u0021":{"c" : 2 } }"#).unwrap();
        let members: Vec<_> = doc.members().collect();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].0, "a");
        assert_eq!(members[1].0, "b!");
        assert_eq!(members[1].1.raw(), r#"{"c" : 2 }"#);
        let kinds: Vec<_> = members[0].1.elements().map(|e| e.kind()).collect();
        assert_eq!(kinds, [Kind::Number, Kind::String, Kind::Object]);
        assert_eq!(doc.get("a").unwrap().elements().count(), 3);
        assert!(doc.get("zz").is_none());
        assert_eq!(doc.elements().count(), 0);
    }

    #[test]
    fn fields_treat_null_as_absent_and_refuse_duplicates() {
        let doc = parse(br#"{"a":null,"b":1,"c":2}"#).unwrap();
        let mut found = [None; 3];
        assert_eq!(doc.fields_into(&["a", "b", "z"], &mut found), None);
        let [a, b, z] = found;
        assert!(a.is_none() && z.is_none());
        assert_eq!(b.unwrap().as_u64(), Some(1));
        let twice = parse(br#"{"b":1,"b":2}"#).unwrap();
        assert_eq!(twice.fields_into(&["a", "b"], &mut [None; 2]), Some(1));
    }
}
