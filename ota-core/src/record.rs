//! The saved record: what survives a power loss (docs/architecture.md "The saved record").
//!
//! A small, versioned binary encoding with a CRC-32 at the end. The adapter stores it
//! atomically; the agent hands it back at boot. A record that does not decode is not an
//! error: the agent starts clean and says what it found.

use alloc::string::String;
use alloc::vec::Vec;

use crate::signature::{decode_signature, PackageSignature, SIGNATURE_LEN};
use crate::task::{Channel, DigestMethod, ExpectedDigest, Task};

const MAGIC: &[u8; 4] = b"OTAR";
/// 3: the last reported step and the package signature were added (after the digest state).
const FORMAT: u8 = 3;
/// The previous format: the same fields without the last reported step and the signature.
const FORMAT_WITHOUT_STEP: u8 = 2;
static CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);

/// Where an upgrade stood when the record was saved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Downloading: bytes `0..offset` are written, and `digest_state` is the digest's
    /// mid-state over exactly those bytes.
    Downloading {
        /// The file being downloaded (0 for a single image).
        file: u8,
        /// Durable offset in that file.
        offset: u64,
        /// Serialized digest mid-state at `offset`.
        digest_state: Vec<u8>,
        /// The highest progress step the cloud may have been told (0: none). The agent
        /// publishes a step only once a record carrying it is durable, so after a power
        /// loss its next report exceeds this one (docs/protocol.md §4: never twice the same).
        step: u8,
    },
    /// The image verified and the device is switching to it.
    Activating,
    /// The new image failed its health check; the device is going back.
    RollingBack,
}

/// The identity of the image being installed, as far as resuming needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageId {
    /// Module.
    pub module: String,
    /// Target version.
    pub version: String,
    /// Size in bytes.
    pub size: u64,
    /// Expected digest.
    pub digest: ExpectedDigest,
    /// `Some((stream_id, file_id))` for an MQTT-channel image.
    pub mqtt_stream: Option<(u64, u64)>,
    /// Number of files of a multi-file task (0 for a single image).
    pub files: u8,
    /// The task's `digestsign`, decoded (`None` when absent or malformed): a device with a
    /// key checks it again when it resumes from the record (docs/protocol.md §11).
    pub signature: Option<PackageSignature>,
}

impl ImageId {
    /// The identity of `task`'s image.
    pub fn of(task: &Task) -> Self {
        ImageId {
            module: task.module.clone(),
            version: task.version.clone(),
            size: task.size,
            digest: task.digest,
            mqtt_stream: mqtt_stream(task),
            files: task.files().len() as u8,
            signature: task.digestsign.as_deref().and_then(decode_signature),
        }
    }

    /// True when `task` describes this image (its URL or stream may be new).
    pub fn matches(&self, task: &Task) -> bool {
        self.module == task.module
            && self.version == task.version
            && self.size == task.size
            && self.digest == task.digest
            && self.mqtt_stream.is_some() == mqtt_stream(task).is_some()
            && usize::from(self.files) == task.files().len()
    }
}

/// `(streamId, streamFileId)` of an MQTT-channel task.
fn mqtt_stream(task: &Task) -> Option<(u64, u64)> {
    match task.channel {
        #[cfg(feature = "mqtt-channel")]
        Channel::Mqtt { stream_id, file_id } => Some((stream_id, file_id)),
        Channel::Http { .. } => None,
    }
}

/// Everything the agent persists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The image being installed.
    pub image: ImageId,
    /// The version that was running when the upgrade began (rollback target).
    pub previous_version: String,
    /// Where the upgrade stood.
    pub phase: Phase,
}

/// Why a saved record could not be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Not a record of this project (or an erased slot).
    #[error("not an OTA record (bad magic)")]
    BadMagic,
    /// Written by a newer format.
    #[error("record format {0} is not supported")]
    UnsupportedFormat(u8),
    /// Bytes damaged (a torn or partial save).
    #[error("record checksum mismatch")]
    BadChecksum,
    /// Structurally invalid despite a good checksum.
    #[error("record fields are invalid")]
    Invalid,
    /// The staged bytes the record vouches for were read back and do not hash to its digest
    /// state (changed, truncated or gone): the download starts again from byte 0.
    #[error("the staged bytes no longer match the record")]
    StagingMismatch,
}

impl Record {
    /// Appends the encoding of the record to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let phase = match &self.phase {
            Phase::Downloading {
                file,
                offset,
                digest_state,
                step,
            } => PhaseRef::Downloading {
                file: *file,
                offset: *offset,
                digest_state,
                step: *step,
            },
            Phase::Activating => PhaseRef::Activating,
            Phase::RollingBack => PhaseRef::RollingBack,
        };
        encode_record(out, &self.image, &self.previous_version, phase);
    }

    /// Decodes a record saved by [`Record::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(RecordError::BadMagic);
        }
        let format = bytes[4];
        if format != FORMAT && format != FORMAT_WITHOUT_STEP {
            return Err(RecordError::UnsupportedFormat(format));
        }
        let (body, crc) = bytes.split_at(bytes.len().saturating_sub(4));
        if crc.len() != 4
            || record_crc(body).finalize() != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]])
        {
            return Err(RecordError::BadChecksum);
        }
        let mut r = Reader(&body[5..]);
        Self::decode_fields(&mut r, format == FORMAT)
            .filter(|_| r.0.is_empty())
            .ok_or(RecordError::Invalid)
    }

    fn decode_fields(r: &mut Reader, current: bool) -> Option<Record> {
        let phase = r.u8()?;
        let module = r.string()?;
        let version = r.string()?;
        let previous_version = r.string()?;
        let size = r.u64()?;
        let method = match r.u8()? {
            #[cfg(feature = "md5")]
            0 => DigestMethod::Md5,
            #[cfg(feature = "sha256")]
            1 => DigestMethod::Sha256,
            _ => return None, // unknown, or an algorithm this build leaves out
        };
        let digest = ExpectedDigest::new(method, r.take(method.digest_len())?)?;
        let mqtt_stream = match r.u8()? {
            0 => None,
            1 => Some((r.u64()?, r.u64()?)),
            _ => return None,
        };
        let files = r.u8()?;
        let file = r.u8()?;
        let offset = r.u64()?;
        let state_len = usize::from(r.u8()?);
        let digest_state = r.take(state_len)?.to_vec();
        // Format 2 never reported past its durable offset: the agent takes that as the floor.
        let step = if current { r.u8()? } else { 0 };
        let signature = match if current { r.u8()? } else { 0 } {
            0 => None,
            1 => Some(r.take(SIGNATURE_LEN)?.try_into().ok()?),
            _ => return None,
        };
        let phase = match phase {
            0 if offset <= size && (file < files || files == 0 && file == 0) && step <= 99 => {
                Phase::Downloading {
                    file,
                    offset,
                    digest_state,
                    step,
                }
            }
            1 => Phase::Activating,
            2 => Phase::RollingBack,
            _ => return None,
        };
        Some(Record {
            image: ImageId {
                module,
                version,
                size,
                digest,
                mqtt_stream,
                files,
                signature,
            },
            previous_version,
            phase,
        })
    }
}

/// A [`Phase`] that borrows its digest state, so checkpoints encode without allocating.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PhaseRef<'a> {
    Downloading {
        file: u8,
        offset: u64,
        digest_state: &'a [u8],
        step: u8,
    },
    Activating,
    RollingBack,
}

impl PhaseRef<'_> {
    /// The step byte of a record in this phase.
    pub(crate) fn step(&self) -> u8 {
        match *self {
            PhaseRef::Downloading { step, .. } => step.min(99),
            PhaseRef::Activating | PhaseRef::RollingBack => 0,
        }
    }
}

/// Appends the encoding of a record made of these parts to `out`.
pub(crate) fn encode_record(
    out: &mut Vec<u8>,
    image: &ImageId,
    previous_version: &str,
    phase: PhaseRef<'_>,
) {
    let start = out.len();
    encode_record_head(out, image, previous_version, phase);
    let crc = record_crc(&out[start..]);
    finish_record(out, image, phase.step(), crc);
}

/// The CRC-32 of a record, part way through.
pub(crate) type RecordCrc = crc::Digest<'static, u32>;

/// The CRC-32 over `head`, to be continued by [`finish_record`].
pub(crate) fn record_crc(head: &[u8]) -> RecordCrc {
    let mut crc = CRC.digest();
    crc.update(head);
    crc
}

/// Appends a record's fields before its step byte: the same for every record of one
/// download at one offset, whatever step it carries.
pub(crate) fn encode_record_head(
    out: &mut Vec<u8>,
    image: &ImageId,
    previous_version: &str,
    phase: PhaseRef<'_>,
) {
    out.extend_from_slice(MAGIC);
    out.push(FORMAT);
    let (code, file, offset, state): (u8, u8, u64, &[u8]) = match phase {
        PhaseRef::Downloading {
            file,
            offset,
            digest_state,
            ..
        } => (0, file, offset, digest_state),
        PhaseRef::Activating => (1, 0, 0, &[]),
        PhaseRef::RollingBack => (2, 0, 0, &[]),
    };
    out.push(code);
    push_str(out, &image.module);
    push_str(out, &image.version);
    push_str(out, previous_version);
    out.extend_from_slice(&image.size.to_le_bytes());
    out.push(match image.digest.method() {
        #[cfg(feature = "md5")]
        DigestMethod::Md5 => 0,
        #[cfg(feature = "sha256")]
        DigestMethod::Sha256 => 1,
    });
    out.extend_from_slice(image.digest.bytes());
    match image.mqtt_stream {
        None => out.push(0),
        Some((stream, file)) => {
            out.push(1);
            out.extend_from_slice(&stream.to_le_bytes());
            out.extend_from_slice(&file.to_le_bytes());
        }
    }
    out.push(image.files);
    out.push(file);
    out.extend_from_slice(&offset.to_le_bytes());
    // Digest states are ~100 bytes; a longer one cannot come from `Hasher`.
    let state = if state.len() <= 255 { state } else { &[] };
    out.push(state.len() as u8);
    out.extend_from_slice(state);
}

/// Appends the rest of a record after its head ([`encode_record_head`], whose CRC `crc`
/// is): the step, the signature and the CRC-32 of the whole.
pub(crate) fn finish_record(out: &mut Vec<u8>, image: &ImageId, step: u8, mut crc: RecordCrc) {
    let start = out.len();
    out.push(step);
    match &image.signature {
        None => out.push(0),
        Some(signature) => {
            out.push(1);
            out.extend_from_slice(signature);
        }
    }
    crc.update(&out[start..]);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Module and version names are at most 64 bytes; validated before they get here.
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::from(self.u8()?);
        core::str::from_utf8(self.take(n)?).ok().map(String::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SHA-256 (the longer digest) when built in.
    fn method() -> DigestMethod {
        #[cfg(feature = "sha256")]
        return DigestMethod::Sha256;
        #[cfg(not(feature = "sha256"))]
        return DigestMethod::Md5;
    }

    fn sample(phase: Phase, mqtt: bool) -> Record {
        Record {
            image: ImageId {
                module: "MCU".into(),
                version: "2.0.0".into(),
                size: 432_945,
                digest: ExpectedDigest::from_hex(method(), &"ab".repeat(method().digest_len()))
                    .unwrap(),
                mqtt_stream: mqtt.then_some((1_397_345, 1)),
                files: 0,
                signature: None,
            },
            previous_version: "1.0.0".into(),
            phase,
        }
    }

    #[test]
    fn records_round_trip() {
        let mut state = Vec::new();
        crate::digest::Hasher::new(method()).save_state(&mut state);
        for (phase, mqtt) in [
            (
                Phase::Downloading {
                    file: 0,
                    offset: 4096,
                    digest_state: state,
                    step: 37,
                },
                false,
            ),
            (Phase::Activating, true),
            (Phase::RollingBack, false),
        ] {
            let record = sample(phase, mqtt);
            let mut bytes = Vec::new();
            record.encode(&mut bytes);
            assert!(bytes.len() < 400, "{} bytes", bytes.len());
            assert_eq!(Record::decode(&bytes), Ok(record));
        }
    }

    #[test]
    fn the_package_signature_survives_the_record() {
        let mut record = sample(Phase::Activating, false);
        record.image.signature = Some(core::array::from_fn(|i| i as u8));
        let mut bytes = Vec::new();
        record.encode(&mut bytes);
        assert_eq!(Record::decode(&bytes), Ok(record));
        // A signature tag other than 0 (none) or 1 (256 bytes follow) is refused.
        let mut unsigned = Vec::new();
        sample(Phase::Activating, false).encode(&mut unsigned);
        let tag_at = unsigned.len() - 5;
        unsigned[tag_at] = 2;
        assert_eq!(Record::decode(&reseal(unsigned)), Err(RecordError::Invalid));
    }

    #[test]
    fn damaged_records_are_refused_never_misread() {
        let mut bytes = Vec::new();
        sample(Phase::Activating, false).encode(&mut bytes);
        for cut in 0..bytes.len() {
            assert!(
                Record::decode(&bytes[..cut]).is_err(),
                "prefix of {cut} bytes"
            );
        }
        for i in 5..bytes.len() {
            let mut flipped = bytes.clone();
            flipped[i] ^= 0x10;
            assert_eq!(
                Record::decode(&flipped),
                Err(RecordError::BadChecksum),
                "byte {i}"
            );
        }
        assert_eq!(Record::decode(&[0xff; 64]), Err(RecordError::BadMagic));
        let mut future = bytes.clone();
        future[4] = 9;
        assert_eq!(
            Record::decode(&future),
            Err(RecordError::UnsupportedFormat(9))
        );
    }

    /// Re-seals `bytes` with a valid CRC after a field was edited.
    fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
        let n = bytes.len() - 4;
        let crc = CRC.checksum(&bytes[..n]);
        bytes[n..].copy_from_slice(&crc.to_le_bytes());
        bytes
    }

    #[test]
    fn invalid_fields_under_a_valid_checksum_are_refused() {
        let mut bytes = Vec::new();
        sample(Phase::Activating, true).encode(&mut bytes);
        let phase_at = 5;
        let method_at = 5 + 1 + 4 + 6 + 6 + 8;
        let channel_at = method_at + 1 + method().digest_len();
        for (at, value) in [(phase_at, 9u8), (method_at, 7), (channel_at, 3)] {
            let mut edited = bytes.clone();
            edited[at] = value;
            assert_eq!(
                Record::decode(&reseal(edited)),
                Err(RecordError::Invalid),
                "byte {at}"
            );
        }
        let mut trailing = bytes.clone();
        trailing.insert(bytes.len() - 4, 0);
        assert_eq!(Record::decode(&reseal(trailing)), Err(RecordError::Invalid));
        let mut truncated = bytes[..bytes.len() - 12].to_vec();
        truncated.extend_from_slice(&[0; 4]);
        assert_eq!(
            Record::decode(&reseal(truncated)),
            Err(RecordError::Invalid)
        );
    }

    fn downloading(step: u8) -> Record {
        let mut state = Vec::new();
        crate::digest::Hasher::new(method()).save_state(&mut state);
        sample(
            Phase::Downloading {
                file: 0,
                offset: 8192,
                digest_state: state,
                step,
            },
            false,
        )
    }

    #[test]
    fn a_record_of_the_previous_format_reads_with_no_step_reported() {
        let mut bytes = Vec::new();
        downloading(0).encode(&mut bytes);
        // Format 2 is format 3 without the step and signature-tag bytes just before the CRC.
        let mut old = bytes[..bytes.len() - 6].to_vec();
        old[4] = FORMAT_WITHOUT_STEP;
        old.extend_from_slice(&[0; 4]);
        assert_eq!(Record::decode(&reseal(old)), Ok(downloading(0)));
    }

    #[test]
    fn a_step_beyond_99_is_refused() {
        let mut bytes = Vec::new();
        downloading(42).encode(&mut bytes);
        let at = bytes.len() - 6; // step, signature tag (none), CRC
        assert_eq!(bytes[at], 42);
        bytes[at] = 100;
        assert_eq!(Record::decode(&reseal(bytes)), Err(RecordError::Invalid));
    }

    #[cfg(all(feature = "mqtt-channel", feature = "md5"))] // an MD5 push
    #[test]
    fn the_image_identity_of_a_task_matches_it() {
        let rules = crate::downlink::TaskRules::default();
        let push = br#"{"code":"1000","data":{"size":4252,"streamId":12332,"dProtocol":"mqtt","version":"1.1","streamFileId":1,"md5":"2e78d1a2b3c4d5e6f708192a3b4c3865"}}"#;
        let task = crate::downlink::parse_push(push, &rules).unwrap();
        let id = ImageId::of(&task);
        assert_eq!(id.mqtt_stream, Some((12332, 1)));
        assert!(id.matches(&task));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
            let _ = Record::decode(&bytes);
        }
    }
}
