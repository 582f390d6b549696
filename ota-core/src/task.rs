//! An upgrade task as the agent understands it, after validation.

use alloc::string::String;
#[cfg(feature = "multi-file")]
use alloc::vec::Vec;

/// How the image's digest is computed: the algorithms this build has (features `md5`,
/// `sha256`). A push naming one that is compiled out is refused (docs/protocol.md §3).
/// The default is the first one built in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DigestMethod {
    /// MD5, 16 bytes.
    #[cfg(feature = "md5")]
    #[default]
    Md5,
    /// SHA-256, 32 bytes.
    #[cfg(feature = "sha256")]
    #[cfg_attr(not(feature = "md5"), default)]
    Sha256,
}

impl DigestMethod {
    /// Length of the digest in bytes.
    pub const fn digest_len(self) -> usize {
        match self {
            #[cfg(feature = "md5")]
            DigestMethod::Md5 => 16,
            #[cfg(feature = "sha256")]
            DigestMethod::Sha256 => 32,
        }
    }

    /// Lower-case name used in logs and failure descriptions.
    pub const fn name(self) -> &'static str {
        match self {
            #[cfg(feature = "md5")]
            DigestMethod::Md5 => "md5",
            #[cfg(feature = "sha256")]
            DigestMethod::Sha256 => "sha256",
        }
    }
}

/// The digest the image must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ExpectedDigest {
    method: DigestMethod,
    bytes: [u8; 32],
}

impl ExpectedDigest {
    /// Builds a digest from its raw bytes; `None` if the length does not fit the method.
    pub fn new(method: DigestMethod, bytes: &[u8]) -> Option<Self> {
        if bytes.len() != method.digest_len() {
            return None;
        }
        let mut buf = [0u8; 32];
        buf[..bytes.len()].copy_from_slice(bytes);
        Some(ExpectedDigest { method, bytes: buf })
    }

    /// Parses hex of either case; `None` unless exactly the method's length of hex digits.
    pub fn from_hex(method: DigestMethod, hex: &str) -> Option<Self> {
        let hex = hex.as_bytes();
        if hex.len() != method.digest_len() * 2 {
            return None;
        }
        let mut buf = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            buf[i] = (hex_value(pair[0])? << 4) | hex_value(pair[1])?;
        }
        Some(ExpectedDigest { method, bytes: buf })
    }

    /// The method.
    pub fn method(&self) -> DigestMethod {
        self.method
    }

    /// The digest bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..self.method.digest_len()]
    }

    /// Lower-case hex, written into `out` (64 bytes fit every method).
    pub fn to_hex<'a>(&self, out: &'a mut [u8; 64]) -> &'a str {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let n = self.method.digest_len();
        for (i, b) in self.bytes().iter().enumerate() {
            out[2 * i] = DIGITS[usize::from(b >> 4)];
            out[2 * i + 1] = DIGITS[usize::from(b & 15)];
        }
        core::str::from_utf8(&out[..2 * n]).unwrap_or_default()
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Where the image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Channel {
    /// HTTP(S) GET of a signed URL.
    Http {
        /// The signed URL, verbatim.
        url: String,
    },
    /// Blocks requested over MQTT (docs/protocol.md §6).
    #[cfg(feature = "mqtt-channel")]
    Mqtt {
        /// `streamId` of the push.
        stream_id: u64,
        /// `streamFileId` of the push.
        file_id: u64,
    },
}

/// A validated upgrade task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// The message id, as text (numbers beyond u32 included).
    pub message_id: String,
    /// Target version.
    pub version: String,
    /// Module (`default` when the push had none).
    pub module: String,
    /// Image size in bytes, > 0.
    pub size: u64,
    /// Expected digest.
    pub digest: ExpectedDigest,
    /// Download channel.
    pub channel: Channel,
    /// `isDiff`: the image is a delta against the running version.
    pub is_diff: bool,
    /// `extData`, the raw JSON text as received (job tags, `_package_udi`).
    pub ext_data: Option<String>,
    /// `digestsign`, the package signature for secure boot, untouched.
    pub digestsign: Option<String>,
    /// The files of a multi-file task (`data.files`), in order; empty for a single image.
    /// For a multi-file task `size` is their total, and `digest` and `channel` are the
    /// first file's. Only with the `multi-file` feature; [`Task::files`] reads it.
    #[cfg(feature = "multi-file")]
    pub files: Vec<TaskFile>,
}

/// One file of a multi-file task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskFile {
    /// `fileName`.
    pub name: String,
    /// `fileSize`, > 0.
    pub size: u64,
    /// `fileSign` (per the task's `signMethod`) or `fileMd5`.
    pub digest: ExpectedDigest,
    /// `fileUrl`, signed.
    pub url: String,
}

/// Most files a task may carry (docs/protocol.md §8).
pub const MAX_FILES: usize = 20;

impl Task {
    /// True when `other` describes the same image: module, version, size and digest match.
    /// The URL may differ (a fresh signature for the same file).
    pub fn same_image(&self, other: &Task) -> bool {
        self.module == other.module
            && self.version == other.version
            && self.size == other.size
            && self.digest == other.digest
            && core::mem::discriminant(&self.channel) == core::mem::discriminant(&other.channel)
            && self.files().len() == other.files().len()
            && self
                .files()
                .iter()
                .zip(other.files())
                .all(|(a, b)| a.name == b.name && a.size == b.size && a.digest == b.digest)
    }

    /// The files of a multi-file task; empty for a single image, and always without the
    /// `multi-file` feature, so that the code for further files is compiled out.
    pub fn files(&self) -> &[TaskFile] {
        #[cfg(feature = "multi-file")]
        return &self.files;
        #[cfg(not(feature = "multi-file"))]
        return &[];
    }

    /// The URL of an HTTP task.
    pub fn url(&self) -> Option<&str> {
        match &self.channel {
            Channel::Http { url } => Some(url),
            #[cfg(feature = "mqtt-channel")]
            Channel::Mqtt { .. } => None,
        }
    }
}

// Its vectors are MD5 digests.
#[cfg(all(test, feature = "md5"))]
mod tests {
    use super::*;

    #[test]
    fn hex_is_accepted_in_either_case_and_exact_length_only() {
        let lower = ExpectedDigest::from_hex(DigestMethod::Md5, "93230c3bde425a9d7984a594ac55ea1e");
        let upper = ExpectedDigest::from_hex(DigestMethod::Md5, "93230C3BDE425A9D7984A594AC55EA1E");
        assert!(lower.is_some());
        assert_eq!(lower, upper);
        let mut buf = [0u8; 64];
        assert_eq!(
            lower.unwrap().to_hex(&mut buf),
            "93230c3bde425a9d7984a594ac55ea1e"
        );
        assert!(
            ExpectedDigest::from_hex(DigestMethod::Md5, "93230c3bde425a9d7984a594ac55ea1")
                .is_none()
        );
        assert!(
            ExpectedDigest::from_hex(DigestMethod::Md5, "z3230c3bde425a9d7984a594ac55ea1e")
                .is_none()
        );
        #[cfg(feature = "sha256")]
        {
            assert!(ExpectedDigest::from_hex(
                DigestMethod::Sha256,
                "93230c3bde425a9d7984a594ac55ea1e"
            )
            .is_none());
            assert!(ExpectedDigest::new(DigestMethod::Sha256, &[0; 16]).is_none());
        }
    }
}
