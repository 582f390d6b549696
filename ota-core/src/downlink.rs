//! The lenient parser for upgrade pushes and firmware/get replies (docs/protocol.md §3).
//!
//! Lenient where the platform is inconsistent (id number or string, code string or
//! number, size number or digit string, signMethod in any case, hex in either case,
//! unknown keys), strict where a mistake would install the wrong thing. Every
//! rejection carries a reason that names the offending field.

use alloc::borrow::Cow;
use alloc::string::String;
#[cfg(feature = "multi-file")]
use alloc::vec::Vec;

use crate::identity::{is_valid_module, is_valid_version, DEFAULT_MODULE};
use crate::json::{self, Json, Kind};
use crate::task::{Channel, DigestMethod, ExpectedDigest, Task};
#[cfg(feature = "multi-file")]
use crate::task::{TaskFile, MAX_FILES};

/// Largest image the MQTT channel carries (docs/protocol.md §8).
pub const MAX_MQTT_IMAGE: u64 = 16 * 1024 * 1024;

/// Longest `extData` accepted, in bytes of JSON text (docs/protocol.md §8).
pub const MAX_EXT_DATA_LEN: usize = 4096;

/// What a device accepts; the parser checks tasks against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TaskRules {
    /// Accept `http://` URLs (only for local testing; real downloads are HTTPS).
    pub allow_http: bool,
    /// Largest image that fits the slot.
    pub max_image_size: u64,
    /// Largest downlink message parsed; longer ones are rejected unread.
    pub max_message_len: usize,
    /// File names of a multi-file task that would collide with the adapter's own files
    /// beside the installed ones: a name starting with one of these is refused...
    pub reserved_prefixes: &'static [&'static str],
    /// ...and so is a name ending with one of these.
    pub reserved_suffixes: &'static [&'static str],
}

/// Names ota-std keeps beside installed files: `.ota-installed` (and any `.ota*` of its own),
/// `NAME.previous` (the image kept for a rollback) and `NAME.tmp` (a file being written).
pub const RESERVED_PREFIXES: &[&str] = &[".ota"];
/// See [`RESERVED_PREFIXES`].
pub const RESERVED_SUFFIXES: &[&str] = &[".previous", ".tmp"];

impl Default for TaskRules {
    fn default() -> Self {
        TaskRules {
            allow_http: false,
            max_image_size: 1000 * 1024 * 1024,
            max_message_len: 16 * 1024,
            reserved_prefixes: RESERVED_PREFIXES,
            reserved_suffixes: RESERVED_SUFFIXES,
        }
    }
}

/// Why a downlink message was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Human-readable reason, sent as the `desc` of the `-1` report.
    pub reason: String,
    /// The task's module, when it could be read (the report names it).
    pub module: Option<String>,
}

impl core::fmt::Display for Rejection {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Why a task was refused, before it becomes [`Rejection::reason`]: most refusals are a
/// fixed text, kept borrowed (`&'static str`) and copied into a `String` in one place
/// (`into_owned` where the [`Rejection`] is made) instead of allocated at each check (flash,
/// issue #21). Reasons with values in them are built where the values are.
type Why = Cow<'static, str>;

fn reject(reason: impl Into<String>) -> Rejection {
    Rejection {
        reason: reason.into(),
        module: None,
    }
}

/// The keys of `data` the parser reads, in the order of [`Data`]'s slots.
const DATA_KEYS: [&str; 14] = [
    "size",
    "version",
    "url",
    "md5",
    "sign",
    "signMethod",
    "module",
    "isDiff",
    "extData",
    "digestsign",
    "dProtocol",
    "streamId",
    "streamFileId",
    "files",
];

/// The members of `data` the parser reads (`null` counts as absent), one slot per key of
/// [`DATA_KEYS`]: read in place, not moved into a struct of fourteen (that cost ~0.8 KB of
/// flash in moves).
struct Data<'a>([Option<Json<'a>>; 14]);

macro_rules! data_members {
    ($($name:ident = $slot:literal),+) => {
        // `stream_id` and `stream_file_id` are read by the MQTT channel only.
        #[cfg_attr(not(feature = "mqtt-channel"), allow(dead_code))]
        impl<'a> Data<'a> {
            $(
                fn $name(&self) -> Option<Json<'a>> {
                    self.0[$slot]
                }
            )+
        }
    };
}
data_members!(
    size = 0,
    version = 1,
    url = 2,
    md5 = 3,
    sign = 4,
    sign_method = 5,
    module = 6,
    is_diff = 7,
    ext_data = 8,
    digestsign = 9,
    d_protocol = 10,
    stream_id = 11,
    stream_file_id = 12,
    files = 13
);

impl<'a> Data<'a> {
    /// Fills the slots from `object` in place (`fields_into`: nothing copied out of a
    /// `Result`, flash, issue #21).
    fn read(&mut self, object: Json<'a>) -> Result<(), Why> {
        match object.fields_into(&DATA_KEYS, &mut self.0) {
            Some(i) => Err(Why::Owned(text!(
                "invalid json in data: duplicate key ",
                DATA_KEYS[i]
            ))),
            None => Ok(()),
        }
    }

    /// Nothing the parser reads is present: `data` is `{}` (or only unknown keys, `isDiff`,
    /// `extData`, `digestsign`, `streamFileId`).
    fn is_empty(&self) -> bool {
        // size, version, url, md5, sign, signMethod, module, dProtocol, streamId, files: by
        // slot, which is ~100 B smaller than an array of the accessors' copies.
        [0, 1, 2, 3, 4, 5, 6, 10, 11, 13]
            .iter()
            .all(|&slot| self.0[slot].is_none())
    }
}

/// The decoded text of a string value; `None` for absent values and other kinds.
fn string<'a>(value: Option<Json<'a>>) -> Option<Cow<'a, str>> {
    value.and_then(|v| v.as_str())
}

/// Parses an upgrade push (`/ota/device/upgrade/...`). A push always carries a task.
pub fn parse_push(payload: &[u8], rules: &TaskRules) -> Result<Task, Rejection> {
    parse_envelope(payload, rules)?.ok_or_else(empty_push)
}

/// The refusal of a push without a task. The agent parses pushes with [`parse_get_reply`]
/// and refuses an empty one itself: no `Task` moved out of an `Option` there (flash, #21).
pub(crate) fn empty_push() -> Rejection {
    reject("push data is empty: no task in it")
}

/// The `id` of a reply, to pair it with its request (numbers and digit strings alike).
pub fn reply_id(payload: &[u8]) -> Option<u64> {
    let mut found = [None];
    let doc = json::parse(payload).ok()?;
    if doc.fields_into(&["id"], &mut found).is_some() {
        return None;
    }
    let id = found[0]?;
    match id.kind() {
        // As `str::parse` reads it: digits after an optional `+`.
        Kind::String => {
            let id = id.as_str()?;
            json::parse_digits(id.strip_prefix('+').unwrap_or(&id))
        }
        _ => id.as_u64(),
    }
}

/// Parses a firmware/get reply; `Ok(None)` when `data` is `{}` (no task pending).
pub fn parse_get_reply(payload: &[u8], rules: &TaskRules) -> Result<Option<Task>, Rejection> {
    parse_envelope(payload, rules)
}

fn parse_envelope(payload: &[u8], rules: &TaskRules) -> Result<Option<Task>, Rejection> {
    // Every refusal leaves through here: a `Why` (fixed texts borrowed) made a `Rejection`
    // in one place, not at each check (flash, issue #21). `module` is set once it is read.
    let mut module = None;
    envelope_task(payload, rules, &mut module).map_err(|why| Rejection {
        reason: why.into_owned(),
        module,
    })
}

/// [`parse_envelope`] up to its refusal; `module` is the task's module once it is known.
fn envelope_task(
    payload: &[u8],
    rules: &TaskRules,
    module: &mut Option<String>,
) -> Result<Option<Task>, Why> {
    if payload.len() > rules.max_message_len {
        return Err(Why::Owned(text!(
            "message of ",
            payload.len(),
            " bytes exceeds the ",
            rules.max_message_len,
            " byte limit"
        )));
    }
    let envelope = json::parse(payload)
        .map_err(|e| Why::Owned(text!("invalid json: ", e.what, " at byte ", e.at)))?;
    if envelope.kind() != Kind::Object {
        return Err("invalid json: the message is not an object".into());
    }
    // The members land in place (`fields_into`), not copied out of a `Result` (flash, #21).
    const KEYS: [&str; 3] = ["id", "code", "data"];
    let mut found = [None; 3];
    if let Some(i) = envelope.fields_into(&KEYS, &mut found) {
        return Err(Why::Owned(text!("invalid json: duplicate key ", KEYS[i])));
    }
    let [id, code, data] = found;
    check_code(code)?;
    let data = data.ok_or("no data object in the message")?;
    if data.kind() != Kind::Object {
        return Err("data is not an object".into());
    }
    let mut slots = Data([None; DATA_KEYS.len()]);
    slots.read(data)?;
    // Filled, then moved: measured 52 B smaller than filling a `Data` named `data`.
    let data = slots;
    if data.is_empty() {
        return Ok(None);
    }
    let task_module = match data.module() {
        None => String::from(DEFAULT_MODULE),
        Some(m) => match m.as_str() {
            Some(m) if is_valid_module(&m) => m.into_owned(),
            _ => return Err("module must be 1 to 64 characters of [A-Za-z0-9._-]".into()),
        },
    };
    *module = Some(task_module.clone());
    let message_id = match id {
        Some(id) if id.kind() == Kind::String => id.as_str().unwrap_or_default().into_owned(),
        Some(id) if id.kind() == Kind::Number => String::from(id.raw()),
        _ => String::new(),
    };
    build_task(&data, message_id, task_module, rules)
}

fn check_code(code: Option<Json>) -> Result<(), Why> {
    let ok = match code {
        None => true,
        Some(c) => match c.kind() {
            Kind::String => matches!(c.as_str().as_deref(), Some("1000" | "200")),
            _ => matches!(c.as_u64(), Some(1000 | 200)),
        },
    };
    if ok {
        Ok(())
    } else {
        Err("message code is not a success code (1000 or 200)".into())
    }
}

fn build_task(
    data: &Data,
    message_id: String,
    module: String,
    rules: &TaskRules,
) -> Result<Option<Task>, Why> {
    let version = match data.version() {
        Some(v) => match v.as_str() {
            Some(v) if is_valid_version(&v) => v.into_owned(),
            Some(_) => return Err("version must be 1 to 64 characters of [A-Za-z0-9._-]".into()),
            None => return Err("version must be a string".into()),
        },
        None => return Err("no version in the task".into()),
    };
    if let Some(files) = data.files() {
        #[cfg(feature = "multi-file")]
        return build_multi_file_task(data, files, message_id, module, version, rules);
        #[cfg(not(feature = "multi-file"))]
        {
            let _ = files;
            return Err(
                "multi-file tasks (data.files()) are not supported by this firmware".into(),
            );
        }
    }
    let size = match data.size().map(unsigned) {
        Some(Some(0)) => return Err("size must be greater than 0".into()),
        Some(Some(n)) => n,
        Some(None) => return Err("size must be a positive integer".into()),
        None => return Err("no size in the task".into()),
    };
    if size > rules.max_image_size {
        return Err(Why::Owned(text!(
            "image size ",
            size,
            " exceeds the slot capacity of ",
            rules.max_image_size,
            " bytes"
        )));
    }
    let digest = expected_digest(data)?;

    let channel = channel(data, size, rules)?;
    let (is_diff, ext_data, digestsign) = passthrough(data)?;
    Ok(Some(Task {
        message_id,
        version,
        module,
        size,
        digest,
        channel,
        is_diff,
        ext_data,
        digestsign,
        #[cfg(feature = "multi-file")]
        files: Vec::new(),
    }))
}

/// `isDiff`, `extData` and `digestsign`, handed to the application untouched.
fn passthrough(data: &Data) -> Result<(bool, Option<String>, Option<String>), Why> {
    let is_diff =
        matches!(data.is_diff(), Some(v) if unsigned(v) == Some(1) || v.as_bool() == Some(true));
    let ext_data = match data.ext_data() {
        Some(raw) if raw.raw().len() > MAX_EXT_DATA_LEN => {
            return Err(Why::Owned(text!(
                "extData longer than ",
                MAX_EXT_DATA_LEN,
                " bytes"
            )))
        }
        Some(raw) => Some(String::from(raw.raw())),
        None => None,
    };
    let digestsign = string(data.digestsign()).map(Cow::into_owned);
    Ok((is_diff, ext_data, digestsign))
}

/// A multi-file task (`data.files()`, docs/protocol.md §3): each file with its size, URL and digest.
#[cfg(feature = "multi-file")]
// Out of line: inlined into its one caller it made `parse_envelope` larger (flash, issue #21).
#[inline(never)]
fn build_multi_file_task(
    data: &Data,
    files: Json,
    message_id: String,
    module: String,
    version: String,
    rules: &TaskRules,
) -> Result<Option<Task>, Why> {
    if files.kind() != Kind::Array {
        return Err("data.files() must be an array".into());
    }
    let count = files.elements().count();
    if count == 0 || count > MAX_FILES {
        return Err(Why::Owned(text!(
            "data.files() must hold 1 to ",
            MAX_FILES,
            " files, not ",
            count
        )));
    }
    if string(data.d_protocol()).is_some_and(|p| p.eq_ignore_ascii_case("mqtt")) {
        return Err("multi-file tasks over the MQTT channel are not supported".into());
    }
    let method = sign_method(data);
    let mut parsed = Vec::with_capacity(count);
    let mut total: u64 = 0;
    for (i, file) in files.elements().enumerate() {
        // Each refusal names its file once here ("file 3: ..." until the name is known,
        // then "file a.bin: ..."), not in a `text!` per check (flash, issue #21).
        let name =
            file_name(file, &parsed, rules).map_err(|e| Why::Owned(text!("file ", i, ": ", e)))?;
        let (size, url, digest) = file_parts(file, &method, rules)
            .map_err(|e| Why::Owned(text!("file ", name, ": ", e)))?;
        total = total.saturating_add(size);
        // `extend`, not `push`: LLVM made `push`'s move of the file (its digest) a `memmove`,
        // which nothing else links (~1.6 KB of flash, issue #21).
        parsed.extend(core::iter::once(TaskFile {
            name,
            size,
            digest,
            url,
        }));
    }
    if total > rules.max_image_size {
        return Err(Why::Owned(text!(
            "files of ",
            total,
            " bytes exceed the slot capacity of ",
            rules.max_image_size,
            " bytes"
        )));
    }
    let (is_diff, ext_data, digestsign) = passthrough(data)?;
    Ok(Some(Task {
        message_id,
        version,
        module,
        size: total,
        digest: parsed[0].digest,
        channel: Channel::Http {
            url: parsed[0].url.clone(),
        },
        is_diff,
        ext_data,
        digestsign,
        files: parsed,
    }))
}

/// The `fileName` of a file of a multi-file task (`parsed`: the files before it); the refusal
/// without its "file I: ".
#[cfg(feature = "multi-file")]
fn file_name(file: Json, parsed: &[TaskFile], rules: &TaskRules) -> Result<String, Why> {
    let name = match string(file.get("fileName")) {
        Some(n) if is_safe_file_name(&n) => n.into_owned(),
        Some(n) if !n.is_empty() && n.len() <= 255 => {
            return Err(Why::Owned(text!(
                "fileName \"",
                n,
                "\" could name a path outside the task's directory"
            )))
        }
        _ => return Err("fileName must be a string of 1 to 255 bytes".into()),
    };
    if let Some(j) = parsed.iter().position(|f| f.name == name) {
        return Err(Why::Owned(text!(
            "fileName \"",
            name,
            "\" is also file ",
            j,
            "'s: installing both would destroy one"
        )));
    }
    let reserved = rules.reserved_prefixes.iter().any(|p| name.starts_with(p))
        || rules.reserved_suffixes.iter().any(|s| name.ends_with(s));
    if reserved {
        return Err(Why::Owned(text!(
            "fileName \"",
            name,
            "\" is reserved for the agent's own files"
        )));
    }
    Ok(name)
}

/// The size, URL and digest of a file of a multi-file task; the refusal without its
/// "file NAME: ".
#[cfg(feature = "multi-file")]
fn file_parts(
    file: Json,
    method: &Option<Result<DigestMethod, String>>,
    rules: &TaskRules,
) -> Result<(u64, String, ExpectedDigest), Why> {
    let text_of = |key: &str| string(file.get(key));
    let size = match file.get("fileSize").and_then(unsigned) {
        Some(n) if n > 0 => n,
        _ => return Err("fileSize must be a positive integer".into()),
    };
    let url = match text_of("fileUrl") {
        Some(u) => check_url(&u, rules)?,
        None => return Err("no fileUrl".into()),
    };
    // `fileSign` read only with a known method, `fileMd5` only without a usable `fileSign`:
    // fewer decoded strings alive at once (flash, issue #21).
    let signed = match method {
        Some(Ok(m)) => text_of("fileSign").map(|sign| (*m, sign)),
        _ => None,
    };
    let digest = match signed {
        Some((m, sign)) => signed_digest(m, &sign, "fileSign")?,
        None => match text_of("fileMd5") {
            Some(md5) => md5_digest(&md5)?,
            None => return Err("no digest (fileSign with a known signMethod, or fileMd5)".into()),
        },
    };
    Ok((size, url, digest))
}

/// A file name an adapter can store as is: no path separators, no `.` or `..`, no control
/// characters, 1 to 255 bytes.
#[cfg(feature = "multi-file")]
fn is_safe_file_name(name: &str) -> bool {
    (1..=255).contains(&name.len())
        && name != "."
        && name != ".."
        // The control characters are U+0000..=U+001F, U+007F and U+0080..=U+009F (UTF-8:
        // 0xC2 0x80..=0x9F): checked on the bytes, not by decoding `chars` (flash, issue #21).
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b'\\' || b < 0x20 || b == 0x7f)
        && !name
            .as_bytes()
            .windows(2)
            .any(|w| w[0] == 0xc2 && w[1] < 0xa0)
}

fn is_sha256_name(method: &str) -> bool {
    method.eq_ignore_ascii_case("sha256") || method.eq_ignore_ascii_case("sha-256")
}

/// The digest method named by `signMethod`: `None` when absent, `Err(name)` when unknown or
/// compiled out of this build.
fn sign_method(data: &Data) -> Option<Result<DigestMethod, String>> {
    let method = data.sign_method()?;
    Some(match method.as_str() {
        #[cfg(feature = "md5")]
        Some(m) if m.eq_ignore_ascii_case("md5") => Ok(DigestMethod::Md5),
        #[cfg(feature = "sha256")]
        Some(m) if is_sha256_name(&m) => Ok(DigestMethod::Sha256),
        Some(m) => Err(m.into_owned()),
        None => Err(String::from("?")),
    })
}

/// The algorithm a known `signMethod` names when this build leaves it out (feature `md5` or
/// `sha256` off).
fn compiled_out(method: &str) -> Option<&'static str> {
    if !cfg!(feature = "md5") && method.eq_ignore_ascii_case("md5") {
        Some("md5")
    } else if !cfg!(feature = "sha256") && is_sha256_name(method) {
        Some("sha256")
    } else {
        None
    }
}

/// The digest in `field` (`sign`, or a file's `fileSign`) by `method`. One body for the task
/// and its files (flash, issue #21).
fn signed_digest(method: DigestMethod, hex: &str, field: &str) -> Result<ExpectedDigest, Why> {
    ExpectedDigest::from_hex(method, hex).ok_or_else(|| {
        Why::Owned(text!(
            method.name(),
            " digest in ",
            field,
            " must be ",
            method.digest_len() * 2,
            " hex characters"
        ))
    })
}

/// An `md5` (or `fileMd5`) digest; refused when this build has no MD5.
fn md5_digest(hex: &str) -> Result<ExpectedDigest, Why> {
    #[cfg(feature = "md5")]
    return ExpectedDigest::from_hex(DigestMethod::Md5, hex)
        .ok_or_else(|| "md5 digest must be 32 hex characters".into());
    #[cfg(not(feature = "md5"))]
    {
        let _ = hex;
        Err("md5 digests are not supported: this firmware is built without md5".into())
    }
}

/// `sign` with `signMethod` when both are present and the method is known (and built in),
/// else `md5`.
// Out of line: with the borrowed reasons it makes `parse_envelope` smaller (flash, #21).
#[inline(never)]
fn expected_digest(data: &Data) -> Result<ExpectedDigest, Why> {
    let method = sign_method(data);
    let sign = string(data.sign());
    if let (Some(Ok(method)), Some(sign)) = (&method, &sign) {
        return signed_digest(*method, sign, "sign");
    }
    if let Some(md5) = string(data.md5()) {
        return md5_digest(&md5);
    }
    Err(match method {
        Some(Err(m)) => match compiled_out(&m) {
            Some(algorithm) => Why::Owned(text!(
                "signMethod ",
                m,
                " is not supported: this firmware is built without ",
                algorithm,
                ", and there is no md5 digest to fall back on"
            )),
            None => Why::Owned(text!(
                "unsupported signMethod \"",
                m,
                "\" and no md5 digest to fall back on"
            )),
        },
        Some(Ok(_)) => "signMethod given but no sign digest".into(),
        None if sign.is_some() => "sign digest without a signMethod".into(),
        None => "no digest (md5 or sign) in the task".into(),
    })
}

#[cfg_attr(not(feature = "mqtt-channel"), allow(unused_variables))]
fn channel(data: &Data, size: u64, rules: &TaskRules) -> Result<Channel, Why> {
    let mqtt = match data.d_protocol().map(|p| p.as_str()) {
        None => false,
        Some(Some(p)) if p.eq_ignore_ascii_case("mqtt") => true,
        Some(Some(p)) if p.eq_ignore_ascii_case("http") || p.eq_ignore_ascii_case("https") => false,
        Some(_) => return Err("unsupported dProtocol (expected mqtt or https)".into()),
    };
    if mqtt {
        #[cfg(not(feature = "mqtt-channel"))]
        return Err(
            "MQTT-channel downloads (dProtocol mqtt) are not supported by this firmware".into(),
        );
        #[cfg(feature = "mqtt-channel")]
        {
            let stream_id = data
                .stream_id()
                .and_then(unsigned)
                .ok_or("MQTT-channel task without a numeric streamId")?;
            let file_id = match data.stream_file_id() {
                None => 1,
                Some(v) => unsigned(v).ok_or("streamFileId must be a non-negative integer")?,
            };
            if size > MAX_MQTT_IMAGE {
                return Err(Why::Owned(text!(
                    "image size ",
                    size,
                    " exceeds the 16 MB limit of the MQTT channel"
                )));
            }
            return Ok(Channel::Mqtt { stream_id, file_id });
        }
    }
    let url = match data.url() {
        Some(u) => u.as_str().ok_or("url must be a string")?,
        None => return Err("no url in the task (and dProtocol is not mqtt)".into()),
    };
    Ok(Channel::Http {
        url: check_url(&url, rules)?,
    })
}

/// The URL if its scheme is allowed and it has a host and no spaces or control characters.
fn check_url(url: &str, rules: &TaskRules) -> Result<String, Why> {
    // A byte search: `str::find` with a `&str` pattern links the two-way searcher.
    let scheme_end = url
        .as_bytes()
        .windows(3)
        .position(|w| w == b"://")
        .unwrap_or(0);
    // The end of `://` (ASCII) or 0: a boundary either way.
    let scheme = url.get(..scheme_end).unwrap_or("");
    let scheme_ok = scheme.eq_ignore_ascii_case("https")
        || (rules.allow_http && scheme.eq_ignore_ascii_case("http"));
    if !scheme_ok {
        return Err(if scheme.eq_ignore_ascii_case("http") {
            "url is plain http, and this device only downloads over https".into()
        } else {
            "url scheme is not https".into()
        });
    }
    if url.len() <= scheme_end + 3 || url.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err("url has no host, or contains spaces or control characters".into());
    }
    Ok(String::from(url))
}

/// A non-negative integer from a JSON number or a string of ASCII digits.
fn unsigned(v: Json) -> Option<u64> {
    match v.as_str() {
        Some(s) if s.len() <= 20 => json::parse_digits(&s),
        Some(_) => None,
        None => v.as_u64(),
    }
}

#[cfg(test)]
mod tests;
