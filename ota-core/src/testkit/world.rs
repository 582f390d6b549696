//! A deterministic simulated world for the agent: a fake cloud and broker, a fake HTTP
//! server with chunking and faults, in-memory flash with injectable failures and power
//! cuts, a clock that jumps to the next deadline, and a step budget against livelock.

use alloc::collections::VecDeque;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use md5::Digest;

use crate::agent::{
    Action, Agent, BodyBuffer, Boot, Config, Event, FetchId, Notification, Outcome,
};
use crate::identity::DeviceIdentity;
use crate::time::Instant;

/// A fault the HTTP server applies to one request (consumed in order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this status and no body.
    Status(u16),
    /// Answer `200` with the whole image, ignoring Range.
    IgnoreRange,
    /// Close the connection (reset) after this many body bytes.
    CutAfter(usize),
    /// Send this many body bytes, then nothing at all.
    StallAfter(usize),
    /// Flip one byte of the image in this response (at this image offset).
    Corrupt(u64),
    /// `206` with a Content-Range that does not match the request.
    WrongRange,
    /// Send this many bytes beyond the end of the image.
    Extra(usize),
    /// Fail to connect.
    Refuse,
    /// Send this many body bytes, then end cleanly (a short body).
    ShortBody(usize),
    /// Close the connection before any response.
    Closed,
    /// `200` with a Content-Length that is not the image's size.
    WrongLength,
    /// `206` for only `len` bytes of the requested range (then `extra` bytes too many).
    PartialRange { len: usize, extra: usize },
}

/// A fault applied to one MQTT-channel block reply (consumed in order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttFault {
    /// No reply at all.
    Drop,
    /// The reply twice.
    Duplicate,
    /// A data byte flipped (CRC mismatch).
    Corrupt,
    /// The header names another offset.
    WrongOffset,
    /// Code 404 and no data.
    Refuse,
    /// Held back and sent after the next reply.
    Hold,
    /// The header announces a file one byte longer than the image.
    WrongFileLength,
}

/// Where the power fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// At the n-th write (0-based), when it completes; only `torn` bytes of it reach flash,
    /// and the writes issued after it are lost.
    Write { n: usize, torn: usize },
    /// At the n-th record save or clear (0-based); the old record stays.
    Save { n: usize },
    /// During activation.
    Activate,
}

/// What the application answers when a task is offered (`Confirmation::Ask`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Accept,
    Decline,
    /// No answer yet: the test decides later.
    Later,
}

/// What the application answers to a health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    Healthy,
    Unhealthy,
    Silent,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Stop {
    /// Nothing more will happen.
    Quiet,
    /// The power failed at the configured cut.
    PowerLost,
    /// The agent asked for a reboot.
    Reboot,
}

struct HttpStream {
    fetch: FetchId,
    events: VecDeque<HttpStep>,
}

enum HttpStep {
    Response {
        status: u16,
        length: Option<u64>,
        range: Option<String>,
    },
    Body(Vec<u8>),
    End,
    Failed(&'static str),
}

pub struct World {
    pub config: Config,
    pub agent: Agent,
    pub now: Instant,
    pub image: Vec<u8>,
    pub version: String,
    pub running: String,
    pub boot_next: Option<String>,
    /// The version the bootloader goes back to after a rollback.
    pub fallback: String,
    /// Every image the cloud has offered, by target version.
    images: Vec<(String, Vec<u8>)>,
    pub confirmed: bool,
    pub slot: Vec<u8>,
    pub record: Option<Vec<u8>>,
    pub transcript: Vec<String>,
    /// Keep the transcript (tests read it; the fuzz target turns it off for speed).
    pub keep_transcript: bool,
    /// Signed `digestsign` fields by digest: an RSA signature costs milliseconds, and the
    /// fuzz target signs the same few images over and over (carried across runs).
    pub signatures: Signatures,
    pub progress: Vec<i16>,
    pub informs: Vec<String>,
    pub outcomes: Vec<String>,
    pub notes: Vec<String>,
    /// The cloud's task JSON (without the url; one is signed per answer), if any.
    pub cloud_task: Option<String>,
    pub url_generation: u32,
    /// URLs with a generation below this are expired.
    pub url_valid_from: u32,
    pub faults: VecDeque<Fault>,
    pub chunk_sizes: Vec<usize>,
    chunk_cursor: usize,
    pub cut: Option<Cut>,
    pub fail_write: Option<usize>,
    pub fail_save: Option<usize>,
    pub fail_activate: bool,
    pub bootloader_falls_back: bool,
    pub health: Health,
    pub decision: Decision,
    pub writes: usize,
    pub saves: usize,
    /// Reads of the slot the agent asked for.
    pub reads: usize,
    /// The n-th read (0-based) fails.
    pub fail_read: Option<usize>,
    /// Armed: what the next power loss does to the slot.
    pub damage: Option<Damage>,
    /// `Some(len)`: the slot reads short from `len` on (until writes extend it).
    pub slot_readable: Option<usize>,
    pub fetch_offsets: Vec<u64>,
    pub bytes_served: u64,
    pub online: bool,
    pub reply_to_requests: bool,
    inbox: VecDeque<Event<'static>>,
    pub(crate) messages: VecDeque<(String, Vec<u8>)>,
    http: Option<HttpStream>,
    pending_body: Option<(FetchId, Vec<u8>)>,
    pub steps: usize,
    pub max_steps: usize,
    /// Storage results come after network input (as with a slow flash), so body bytes
    /// meet a write in flight and pushes meet pending results.
    pub lazy_storage: bool,
    body_refused: bool,
    /// Offer tasks over the MQTT channel instead of HTTP.
    pub mqtt_channel: bool,
    /// Body bytes go through `Agent::body_buffer` / `body_filled` (read into the lent
    /// staging block) instead of `Agent::handle_body`.
    pub lend_body: bool,
    /// The module of the tasks offered from now on (`None` = default).
    pub module: Option<String>,
    pub mqtt_faults: VecDeque<MqttFault>,
    held_reply: Option<(String, Vec<u8>)>,
    /// Offsets of every MQTT-channel block request.
    pub block_requests: Vec<u64>,
    /// How offered tasks are signed (set before `offer_*_task`).
    pub signing: Signing,
    /// The files of each multi-file task offered, by version.
    file_sets: Vec<(String, Vec<Vec<u8>>)>,
    /// Writes issued and not yet on flash, oldest first: (write number, offset, bytes). A
    /// write reaches flash when the world answers it, so a record that vouched for a write
    /// still in flight would not match the flash.
    writes_in_flight: VecDeque<(usize, usize, Vec<u8>)>,
    /// The most writes that were in flight at once (tests check the ring was used).
    pub most_writes_in_flight: usize,
    // Invariant bookkeeping.
    /// Storage operations in flight other than writes.
    storage_in_flight: usize,
    attempt_last_step: i16,
    expected_failures: Vec<i16>,
    allowed_rejections: usize,
    /// Slot offsets that some response corrupted, by version (those bytes may differ).
    corrupted: Vec<(String, u64)>,
}

/// How the cloud signs the tasks it offers (docs/protocol.md §11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// No `digestsign`.
    Unsigned,
    /// The test key's signature of the image digest.
    Signed,
    /// A genuine signature of the test key, but over another image's digest.
    OverOtherDigest,
    /// `digestsign` that is not a signature at all.
    Garbage,
}

/// A cache of signed `digestsign` fields, by signing mode and digest.
#[derive(Clone, Debug, Default)]
pub struct Signatures(Vec<((Signing, crate::task::ExpectedDigest), String)>);

impl Signatures {
    const CAPACITY: usize = 1024;
}

pub fn md5_hex(data: &[u8]) -> String {
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn sha256_hex(data: &[u8]) -> String {
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The digest of this build's tasks in the tests ([`World::offer_task`]): MD5 when built in,
/// else SHA-256. The one place it is chosen; the helpers below follow it.
pub const TASK_DIGEST: crate::task::DigestMethod = {
    #[cfg(feature = "md5")]
    let method = crate::task::DigestMethod::Md5;
    #[cfg(not(feature = "md5"))]
    let method = crate::task::DigestMethod::Sha256;
    method
};

/// `data`'s digest by [`TASK_DIGEST`], in lowercase hex.
pub fn task_digest_hex(data: &[u8]) -> String {
    match TASK_DIGEST {
        #[cfg(feature = "md5")]
        crate::task::DigestMethod::Md5 => md5_hex(data),
        #[cfg(feature = "sha256")]
        crate::task::DigestMethod::Sha256 => sha256_hex(data),
    }
}

/// A task's digest members for an image whose digest is `hex` (by [`TASK_DIGEST`]): `md5`, or
/// `sign` with `signMethod` SHA256.
pub fn task_digest_members(hex: &str) -> String {
    match TASK_DIGEST {
        #[cfg(feature = "md5")]
        crate::task::DigestMethod::Md5 => format!(r#""md5":"{hex}""#),
        #[cfg(feature = "sha256")]
        crate::task::DigestMethod::Sha256 => format!(r#""sign":"{hex}","signMethod":"SHA256""#),
    }
}

/// A multi-file task's `signMethod` and the member of each file's digest, by [`TASK_DIGEST`].
pub fn files_digest_names() -> (&'static str, &'static str) {
    match TASK_DIGEST {
        #[cfg(feature = "md5")]
        crate::task::DigestMethod::Md5 => ("Md5", "fileMd5"),
        #[cfg(feature = "sha256")]
        crate::task::DigestMethod::Sha256 => ("SHA256", "fileSign"),
    }
}

pub fn test_image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// An agent booting for the first time: version 1.0.0, no record.
pub fn first_boot_agent(config: Config, now: Instant) -> Agent {
    let boot = Boot {
        running_version: "1.0.0",
        record: None,
    };
    Agent::new(config, boot, now).unwrap()
}

pub fn test_config() -> Config {
    let mut config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01").unwrap());
    config.write_block = 1024;
    config.checkpoint_interval = 4096;
    config.rules.allow_http = false;
    config.retry.base_delay = Duration::from_millis(500);
    config.retry.max_delay = Duration::from_secs(8);
    config.url_refresh.base_delay = Duration::from_secs(1);
    config
}

impl World {
    pub fn new(config: Config, image: Vec<u8>) -> Self {
        let agent = first_boot_agent(config.clone(), Instant::ZERO);
        World {
            config,
            agent,
            now: Instant::ZERO,
            // Grown by the writes that go beyond it (`check_write`).
            slot: vec![0xFF; image.len() + 64],
            image,
            version: "2.0.0".into(),
            running: "1.0.0".into(),
            boot_next: None,
            fallback: "1.0.0".into(),
            images: Vec::new(),
            confirmed: false,
            record: None,
            transcript: Vec::new(),
            keep_transcript: true,
            signatures: Signatures::default(),
            progress: Vec::new(),
            informs: Vec::new(),
            outcomes: Vec::new(),
            notes: Vec::new(),
            cloud_task: None,
            url_generation: 0,
            url_valid_from: 0,
            faults: VecDeque::new(),
            chunk_sizes: vec![1000, 1, 4096, 333, 7000],
            chunk_cursor: 0,
            cut: None,
            fail_write: None,
            fail_save: None,
            fail_activate: false,
            bootloader_falls_back: false,
            health: Health::Healthy,
            decision: Decision::Accept,
            writes: 0,
            saves: 0,
            reads: 0,
            fail_read: None,
            damage: None,
            slot_readable: None,
            fetch_offsets: Vec::new(),
            bytes_served: 0,
            online: false,
            reply_to_requests: true,
            inbox: VecDeque::new(),
            messages: VecDeque::new(),
            http: None,
            pending_body: None,
            steps: 0,
            max_steps: 200_000,
            lazy_storage: false,
            body_refused: false,
            mqtt_channel: false,
            lend_body: false,
            module: None,
            mqtt_faults: VecDeque::new(),
            held_reply: None,
            block_requests: Vec::new(),
            signing: Signing::Unsigned,
            file_sets: Vec::new(),
            writes_in_flight: VecDeque::new(),
            most_writes_in_flight: 0,
            storage_in_flight: 0,
            attempt_last_step: 0,
            expected_failures: Vec::new(),
            allowed_rejections: 0,
            corrupted: Vec::new(),
        }
    }

    fn module_field(&self) -> String {
        self.module
            .as_ref()
            .map(|m| format!(r#","module":"{m}""#))
            .unwrap_or_default()
    }

    fn remember_offer(&mut self) {
        self.images.push((self.version.clone(), self.image.clone()));
        if self.slot.len() < self.image.len() + 64 {
            self.slot.resize(self.image.len() + 64, 0xFF); // erased flash
        }
    }

    /// Where file `index` of `version` lies in the slot: (base, length).
    fn file_span(&self, version: &str, index: usize) -> (usize, u64) {
        match self.file_sets.iter().rev().find(|(v, _)| v == version) {
            Some((_, files)) => {
                let block = self.config.write_block;
                let base = files[..index]
                    .iter()
                    .map(|f| f.len().div_ceil(block) * block)
                    .sum();
                (base, files[index].len() as u64)
            }
            None => (0, self.image_of(version).len() as u64),
        }
    }

    /// Offers a multi-file task: the files are laid out in the slot back to back, each on a
    /// write-block boundary, which is what the world's image for this version becomes.
    pub fn offer_files_task(&mut self, files: Vec<Vec<u8>>) {
        let block = self.config.write_block;
        let mut layout = Vec::new();
        for f in &files {
            layout.extend_from_slice(f);
            layout.resize(layout.len().div_ceil(block) * block, 0xFF);
        }
        self.image = layout;
        self.remember_offer();
        self.file_sets.push((self.version.clone(), files));
        self.cloud_task = Some(format!(
            r#""version":"{}","signMethod":"{}""#,
            self.version,
            files_digest_names().0
        ));
    }

    /// The `files` array of a multi-file task, with freshly signed URLs.
    fn files_json(&mut self) -> Option<String> {
        let (version, files) = self
            .file_sets
            .iter()
            .rev()
            .find(|(v, _)| *v == self.version)?;
        let generation = self.url_generation;
        let entries: Vec<String> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let field = files_digest_names().1;
                let digest = format!(r#""{field}":"{}""#, task_digest_hex(f));
                format!(
                    r#"{{"fileName":"part{i}.bin","fileSize":{},"fileUrl":"https://fw.example/{version}/{i}.bin?gen={generation}",{digest}}}"#,
                    f.len()
                )
            })
            .collect();
        Some(format!(r#","files":[{}]"#, entries.join(",")))
    }

    /// True when the cloud offered `version` at some point.
    pub fn was_offered(&self, version: &str) -> bool {
        self.images.iter().any(|(v, _)| v == version)
    }

    /// The image the cloud offered for `version` (the latest offer wins).
    fn image_of(&self, version: &str) -> &[u8] {
        let found = self.images.iter().rev().find(|(v, _)| v == version);
        &found.expect("a version the cloud offered").1
    }

    /// Builds a fresh agent from `self.config` (after a test changed it), as at first boot.
    pub fn restart_agent(&mut self) {
        self.agent = first_boot_agent(self.config.clone(), Instant::ZERO);
    }

    /// Publishes a task for the world's image and version with this build's digest: MD5 when
    /// built in, else SHA-256 (the one place the tests' default digest is chosen).
    pub fn offer_task(&mut self) {
        match TASK_DIGEST {
            #[cfg(feature = "md5")]
            crate::task::DigestMethod::Md5 => self.offer_md5_task(),
            #[cfg(feature = "sha256")]
            crate::task::DigestMethod::Sha256 => self.offer_sha256_task(),
        }
    }

    /// Publishes an MD5 task for the world's image and version.
    #[cfg(feature = "md5")]
    pub fn offer_md5_task(&mut self) {
        self.remember_offer();
        let md5 = md5_hex(&self.image);
        let module = self.module_field();
        let signature = self.digestsign_field(crate::task::DigestMethod::Md5, &md5);
        self.cloud_task = Some(format!(
            r#""size":{},"version":"{}","md5":"{md5}","sign":"{md5}","signMethod":"Md5"{module}{signature}"#,
            self.image.len(),
            self.version
        ));
    }

    /// Publishes a SHA-256 task for the world's image and version.
    #[cfg(feature = "sha256")]
    pub fn offer_sha256_task(&mut self) {
        self.remember_offer();
        let module = self.module_field();
        let sha = sha256_hex(&self.image).to_uppercase();
        let signature = self.digestsign_field(crate::task::DigestMethod::Sha256, &sha);
        self.cloud_task = Some(format!(
            r#""size":{},"version":"{}","sign":"{sha}","signMethod":"SHA256"{module}{signature}"#,
            self.image.len(),
            self.version
        ));
    }

    /// The `digestsign` field for an image whose digest is `hex`, per `self.signing`.
    fn digestsign_field(&mut self, method: crate::task::DigestMethod, hex: &str) -> String {
        let digest = crate::task::ExpectedDigest::from_hex(method, hex).expect("digest hex");
        if matches!(self.signing, Signing::Unsigned | Signing::Garbage) {
            return self.sign_field(digest); // nothing to sign: nothing to cache
        }
        let key = (self.signing, digest);
        if let Some((_, field)) = self.signatures.0.iter().find(|(k, _)| *k == key) {
            return field.clone();
        }
        let field = self.sign_field(digest);
        if self.signatures.0.len() == Signatures::CAPACITY {
            self.signatures.0.remove(0);
        }
        self.signatures.0.push((key, field.clone()));
        field
    }

    fn sign_field(&self, digest: crate::task::ExpectedDigest) -> String {
        match self.signing {
            Signing::Unsigned => String::new(),
            Signing::Garbage => String::from(r#","digestsign":"bm90IGEgc2lnbmF0dXJl""#),
            #[cfg(feature = "signature")]
            Signing::Signed => super::signing::digestsign_field(&digest),
            #[cfg(feature = "signature")]
            Signing::OverOtherDigest => {
                let mut other = [0u8; 32];
                other[..digest.bytes().len()].copy_from_slice(digest.bytes());
                other[0] ^= 1;
                let method = digest.method();
                let other = crate::task::ExpectedDigest::new(method, &other[..method.digest_len()]);
                super::signing::digestsign_field(&other.expect("same length"))
            }
            #[cfg(not(feature = "signature"))]
            Signing::Signed | Signing::OverOtherDigest => {
                let _ = digest;
                panic!("signing tasks needs the feature `signature`")
            }
        }
    }

    fn signed_task_json(&mut self, code: &str) -> String {
        match &self.cloud_task {
            Some(fields) if self.mqtt_channel => {
                // The stream id names the image, like the URL path does over HTTP.
                let stream = 1000
                    + self
                        .images
                        .iter()
                        .rposition(|(v, _)| *v == self.version)
                        .unwrap_or(0);
                format!(
                    r#"{{"code":{code},"data":{{{fields},"dProtocol":"mqtt","streamId":{stream},"streamFileId":1}},"id":1,"message":"success"}}"#
                )
            }
            Some(fields) if self.file_sets.iter().any(|(v, _)| *v == self.version) => {
                let fields = fields.clone();
                let files = self.files_json().unwrap_or_default();
                self.url_generation += 1;
                format!(
                    r#"{{"code":{code},"data":{{{fields}{files}}},"id":1,"message":"success"}}"#
                )
            }
            Some(fields) => {
                let url = format!(
                    "https://fw.example/{}.bin?gen={}",
                    self.version, self.url_generation
                );
                self.url_generation += 1;
                format!(
                    r#"{{"code":{code},"data":{{{fields},"url":"{url}"}},"id":1626969597470,"message":"success"}}"#
                )
            }
            None => format!(r#"{{"code":{code},"data":{{}},"id":"1"}}"#),
        }
    }

    /// The cloud pushes the current task now.
    pub fn push_task(&mut self) {
        let payload = self.signed_task_json("\"1000\"");
        self.messages.push_back((
            "/ota/device/upgrade/a1TestPK001/dev01".into(),
            payload.into_bytes(),
        ));
    }

    pub fn push_raw(&mut self, payload: &str) {
        self.messages.push_back((
            "/ota/device/upgrade/a1TestPK001/dev01".into(),
            payload.as_bytes().to_vec(),
        ));
    }

    /// Hands a message to the agent at once, online or not (as a broker may deliver
    /// messages queued before a session dropped), and performs what follows.
    pub fn deliver(&mut self, topic: &str, payload: &[u8]) {
        let now = self.now;
        self.agent
            .handle(now, Event::Message { topic, payload })
            .unwrap();
        assert!(self.drain().is_none());
    }

    pub fn connect(&mut self) {
        self.online = true;
        self.inbox.push_back(Event::Connected);
    }

    pub fn disconnect(&mut self) {
        self.online = false;
        self.inbox.push_back(Event::Disconnected);
    }

    /// Power comes back: a new agent boots from what the storage holds.
    pub fn reboot(&mut self) {
        if let Some(next) = self.boot_next.take() {
            self.running = if self.bootloader_falls_back {
                self.running.clone()
            } else {
                next
            };
        }
        self.http = None;
        self.pending_body = None;
        self.inbox.clear();
        self.messages.clear();
        self.online = false;
        self.cut = None;
        self.storage_in_flight = 0;
        self.writes_in_flight.clear(); // never reached the flash
        self.expected_failures.clear(); // reports not yet sent were lost with the RAM
        if self.keep_transcript {
            self.transcript.push(format!("boot {}", self.running));
        }
        let record = self.record.clone();
        self.agent = Agent::new(
            self.config.clone(),
            Boot {
                running_version: &self.running,
                record: record.as_deref(),
            },
            self.now,
        )
        .unwrap();
        self.drain();
    }

    /// Runs until nothing more happens, the power fails, or a reboot is asked for.
    pub fn run(&mut self) -> Stop {
        self.run_with(&|_| false).unwrap()
    }

    /// Runs until `until` holds (checked after each step, with all actions performed).
    pub fn run_until(&mut self, until: impl Fn(&World) -> bool) {
        assert_eq!(
            self.run_with(&until),
            None,
            "stopped before the condition held"
        );
    }

    fn run_with(&mut self, until: &dyn Fn(&World) -> bool) -> Option<Stop> {
        loop {
            if let Some(stop) = self.drain() {
                return Some(stop);
            }
            if until(self) {
                return None;
            }
            if let Some(stop) = self.step() {
                return Some(stop);
            }
        }
    }

    /// Performs every queued action, then delivers one input: a storage result, a message,
    /// body bytes, an HTTP event, or the next deadline. `Some` when the run stops there.
    pub fn step(&mut self) -> Option<Stop> {
        self.steps += 1;
        assert!(
            self.steps < self.max_steps,
            "livelock: step budget exhausted"
        );
        if let Some(stop) = self.drain() {
            return Some(stop);
        }
        // Lazy storage: results wait behind messages and body bytes, unless the agent just
        // refused body bytes because it waits for exactly such a result.
        let storage_now = !self.lazy_storage
            || core::mem::take(&mut self.body_refused)
            || (self.pending_body.is_none() && self.messages.is_empty());
        let next_result = if storage_now {
            self.inbox.pop_front()
        } else {
            None
        };
        if let Some(event) = next_result {
            if event == Event::WriteDone {
                // The oldest write in flight completes now (this marker stands for it).
                return self.complete_write();
            }
            if matches!(
                event,
                Event::RecordSaved
                    | Event::RecordSaveFailed
                    | Event::ReadDone { .. }
                    | Event::ReadFailed
                    | Event::Activated
                    | Event::ActivationFailed
            ) {
                self.storage_in_flight -= 1;
            }
            self.agent.handle(self.now, event).unwrap();
        } else if let Some((topic, payload)) = self.messages.pop_front() {
            if self.online && self.agent.is_online() {
                let event = Event::Message {
                    topic: &topic,
                    payload: &payload,
                };
                self.agent.handle(self.now, event).unwrap();
            }
        } else if let Some((fetch, body)) = self.pending_body.take() {
            let taken = if self.lend_body {
                self.read_into_lent_block(fetch, &body)
            } else {
                self.agent.handle_body(self.now, fetch, &body).unwrap()
            };
            assert!(taken <= body.len());
            if taken < body.len() {
                self.body_refused = taken == 0;
                self.pending_body = Some((fetch, body[taken..].to_vec()));
                // Back-pressure must come with something to do, or the world would stall.
                assert!(
                    self.agent.queued_actions() > 0 || !self.inbox.is_empty() || taken > 0,
                    "refused body with nothing pending"
                );
            }
        } else if let Some((fetch, step)) = self
            .http
            .as_mut()
            .and_then(|h| h.events.pop_front().map(|s| (h.fetch, s)))
        {
            match step {
                HttpStep::Response {
                    status,
                    length,
                    range,
                } => {
                    let event = Event::HttpResponse {
                        fetch,
                        status,
                        content_length: length,
                        content_range: range.as_deref(),
                    };
                    self.agent.handle(self.now, event).unwrap();
                }
                HttpStep::Body(bytes) => self.pending_body = Some((fetch, bytes)),
                HttpStep::End => {
                    self.http = None;
                    self.agent
                        .handle(self.now, Event::HttpEnd { fetch })
                        .unwrap();
                }
                HttpStep::Failed(reason) => {
                    self.http = None;
                    self.agent
                        .handle(self.now, Event::HttpFailed { fetch, reason })
                        .unwrap();
                }
            }
        } else if let Some(deadline) = self.agent.poll_timeout() {
            // A deadline before the world's clock passed while time jumped: fire it now.
            if deadline <= self.now {
                // A due deadline must make progress when fired.
                self.agent.handle_timeout(self.now).unwrap();
                let stuck =
                    self.agent.queued_actions() == 0 && self.agent.poll_timeout() == Some(self.now);
                assert!(!stuck, "poll_timeout asks for a busy loop");
                return None;
            }
            self.now = deadline;
            self.agent.handle_timeout(self.now).unwrap();
        } else {
            return Some(Stop::Quiet);
        }
        None
    }

    /// Lets time pass (the agent sees it at its next input).
    pub fn advance(&mut self, span: Duration) {
        self.now = self.now + span;
    }

    /// Performs every queued action.
    fn drain(&mut self) -> Option<Stop> {
        assert!(
            self.agent.queued_actions() <= crate::agent::QUEUE_CAPACITY,
            "action queue unbounded"
        );
        while let Some(mut action) = self.agent.poll_action() {
            if self.keep_transcript {
                self.transcript.push(describe(&action));
            }
            if !self.keep_transcript
                && matches!(action, Action::Notify(Notification::Progress { .. }))
            {
                continue; // only the transcript and the notes would keep it
            }
            if let Action::Read { offset, buf } = &mut action {
                // The slot is read right here, while the action lends its buffer.
                let read = read_slot(&self.slot, self.slot_readable, *offset, buf);
                self.reads += 1;
                let failed = self.fail_read == Some(self.reads - 1);
                self.begin_storage();
                self.inbox.push_back(match failed {
                    true => Event::ReadFailed,
                    false => Event::ReadDone { len: read },
                });
                continue;
            }
            let owned = Owned::from(&action);
            if let Some(stop) = self.perform(owned) {
                // Power is gone: whatever else was queued never happens.
                while self.agent.poll_action().is_some() {}
                return Some(stop);
            }
        }
        None
    }

    fn perform(&mut self, action: Owned) -> Option<Stop> {
        match action {
            Owned::Nothing | Owned::Confirm => self.confirmed |= matches!(action, Owned::Confirm),
            Owned::Publish { topic, payload } => self.on_publish(&topic, &payload),
            Owned::Fetch { fetch, url, offset } => self.serve(fetch, &url, offset),
            Owned::CancelFetch(fetch) => {
                if self.http.as_ref().is_some_and(|h| h.fetch == fetch) {
                    self.http = None;
                }
                if self.pending_body.as_ref().is_some_and(|(f, _)| *f == fetch) {
                    self.pending_body = None;
                }
            }
            Owned::Write { offset, data } => {
                self.begin_write();
                self.check_write(offset, &data);
                let n = self.writes;
                self.writes += 1;
                self.writes_in_flight.push_back((n, offset as usize, data));
                self.most_writes_in_flight =
                    self.most_writes_in_flight.max(self.writes_in_flight.len());
                self.inbox.push_back(Event::WriteDone); // resolved by `complete_write`
            }
            Owned::SaveRecord(record) => {
                self.begin_storage();
                self.check_record(&record);
                return self.store(Some(record));
            }
            Owned::ClearRecord => {
                self.begin_storage();
                return self.store(None);
            }
            Owned::Activate(version) => {
                self.begin_storage();
                if !self.slot_holds(&version) {
                    let tail = &self.transcript[self.transcript.len().saturating_sub(60)..];
                    panic!("activation of an image that is not the task's: {tail:#?}");
                }
                if self.cut == Some(Cut::Activate) {
                    return self.power_lost();
                }
                if self.fail_activate {
                    self.inbox.push_back(Event::ActivationFailed);
                } else {
                    self.fallback = self.running.clone();
                    self.boot_next = Some(version);
                    self.inbox.push_back(Event::Activated);
                }
            }
            Owned::Reboot => return Some(Stop::Reboot),
            Owned::Rollback => self.boot_next = Some(self.fallback.clone()),
            Owned::HealthCheck => match self.health {
                Health::Healthy => self.inbox.push_back(Event::HealthVerdict { healthy: true }),
                Health::Unhealthy => self
                    .inbox
                    .push_back(Event::HealthVerdict { healthy: false }),
                Health::Silent => {}
            },
            Owned::Outcome { text, failed } => {
                if let Some(code) = failed {
                    self.expected_failures.push(code);
                }
                if text == "declined" {
                    self.allowed_rejections += 1; // reported as -1 when so configured
                }
                self.outcomes.push(text);
            }
            Owned::Offered => match self.decision {
                Decision::Accept => self.inbox.push_back(Event::AcceptTask),
                Decision::Decline => self.inbox.push_back(Event::DeclineTask),
                Decision::Later => {}
            },
            Owned::TaskReceived => {
                self.notes.push("task received".into());
            }
            Owned::TaskRejected(text) => {
                self.allowed_rejections += 1;
                self.notes.push(text);
            }
            Owned::Note(text) => self.notes.push(text),
        }
        None
    }

    /// A record, clear or activation: alone, after every write before it was answered (a
    /// record saved while a write is in flight could vouch for bytes not on flash).
    fn begin_storage(&mut self) {
        assert_eq!(
            self.storage_in_flight, 0,
            "two storage operations in flight"
        );
        assert!(
            self.writes_in_flight.is_empty(),
            "a record, clear or activation while {} writes are in flight",
            self.writes_in_flight.len()
        );
        self.storage_in_flight += 1;
    }

    /// Writes: up to `write_buffers` in flight, never beside another storage operation.
    fn begin_write(&mut self) {
        assert_eq!(self.storage_in_flight, 0, "a write beside a record save");
        assert!(
            self.writes_in_flight.len() < self.config.write_buffers,
            "more than {} writes in flight",
            self.config.write_buffers
        );
    }

    /// A write up to `end` makes a truncated slot that long again (a file grows).
    fn extend_readable(&mut self, end: usize) {
        if let Some(readable) = self.slot_readable.as_mut() {
            *readable = (*readable).max(end);
        }
    }

    /// The oldest write in flight reaches flash (or fails, or the power fails during it), and
    /// the agent hears of it: writes complete in the order they were issued.
    /// Offers `body` as a socket would fill the lent staging block: as much as it lends,
    /// read to its start (garbage after it, which must not be hashed), then `body_filled`.
    /// Returns how many bytes were taken, as `handle_body` does.
    fn read_into_lent_block(&mut self, fetch: FetchId, body: &[u8]) -> usize {
        let n = match self.agent.body_buffer(self.now, fetch).unwrap() {
            BodyBuffer::Full => return 0,
            BodyBuffer::Unwanted => return body.len(),
            BodyBuffer::Lent(buffer) => {
                let n = buffer.len().min(body.len());
                buffer[..n].copy_from_slice(&body[..n]);
                buffer[n..].fill(0xa5);
                n
            }
        };
        let taken = self.agent.body_filled(self.now, fetch, n).unwrap();
        assert_eq!(taken, n, "a lent block takes what was read into it");
        taken
    }

    fn complete_write(&mut self) -> Option<Stop> {
        let (n, o, data) = self
            .writes_in_flight
            .pop_front()
            .expect("a write result with no write in flight");
        if let Some(Cut::Write { n: at, torn }) = self.cut {
            if at == n {
                let torn = torn.min(data.len());
                self.slot[o..o + torn].copy_from_slice(&data[..torn]);
                self.extend_readable(o + torn);
                return self.power_lost();
            }
        }
        let event = if self.fail_write == Some(n) {
            Event::WriteFailed
        } else {
            self.slot[o..o + data.len()].copy_from_slice(&data);
            self.extend_readable(o + data.len());
            Event::WriteDone
        };
        self.agent.handle(self.now, event).unwrap();
        None
    }

    fn check_write(&mut self, offset: u64, data: &[u8]) {
        let (o, block) = (offset as usize, self.config.write_block);
        assert!(
            o % block == 0 && !data.is_empty() && data.len() <= block,
            "unaligned write @{o} +{}",
            data.len()
        );
        let version = self
            .agent
            .target_version()
            .expect("writes only while a task runs");
        let image = self.image_of(version);
        assert!(o + data.len() <= image.len(), "write beyond the image");
        for (i, byte) in data.iter().enumerate() {
            let at = (o + i) as u64;
            assert!(
                *byte == image[o + i]
                    || self.corrupted.iter().any(|(v, c)| v == version && *c == at),
                "wrong byte written at {at}"
            );
        }
        if self.slot.len() < o + data.len() {
            self.slot.resize(o + data.len(), 0xFF);
        }
    }

    /// A saved offset never exceeds what is on flash, and its digest mid-state covers
    /// exactly those bytes.
    fn check_record(&mut self, bytes: &[u8]) {
        let record =
            crate::record::Record::decode(bytes).expect("the agent saves decodable records");
        // A record that only carries a new step reuses the previous one's head and CRC: it
        // must be exactly what a full encoding makes of its fields.
        let mut encoded = Vec::new();
        record.encode(&mut encoded);
        assert_eq!(encoded, bytes, "the record as encoded in one piece");
        if let crate::record::Phase::Downloading {
            file,
            offset,
            digest_state,
            step,
        } = &record.phase
        {
            if (*file, *offset, *step) == (0, 0, 0) {
                self.attempt_last_step = 0; // a download starts from scratch: a new attempt
            }
            assert!(
                i16::from(*step) >= self.attempt_last_step,
                "the record's step {step} is below the reported {}",
                self.attempt_last_step
            ); // Within a multi-file task, offsets count from the file's base in the slot.
            let (base, len) = self.file_span(&record.image.version, usize::from(*file));
            let (offset, method) = (*offset as usize, record.image.digest.method());
            assert!(offset as u64 <= len, "record offset beyond the file");
            assert!(offset % self.config.write_block == 0 || offset as u64 == len);
            let restored =
                crate::digest::Hasher::restore(method, digest_state).expect("valid digest state");
            if self.slot.len() < base + offset {
                // Never written: erased bytes, which the digest state will not match.
                self.slot.resize(base + offset, 0xFF);
            }
            let on_flash = &self.slot[base..base + offset];
            let digest = match method {
                #[cfg(feature = "md5")]
                crate::task::DigestMethod::Md5 => md5::Md5::digest(on_flash).to_vec(),
                #[cfg(feature = "sha256")]
                crate::task::DigestMethod::Sha256 => sha2::Sha256::digest(on_flash).to_vec(),
            };
            let expected =
                crate::task::ExpectedDigest::new(method, &digest).expect("digest length");
            assert!(
                restored.matches(&expected),
                "record digest state does not cover exactly the {offset} bytes on flash"
            );
        }
    }

    fn check_progress(&mut self, step: i16) {
        assert!(step != 0 && (-4..=100).contains(&step), "step {step}");
        if step > 0 {
            // Strictly increasing, across boots too (docs/protocol.md §4).
            assert!(
                step > self.attempt_last_step,
                "progress went from {} to {step}",
                self.attempt_last_step
            );
            // Reported only once durable: a power loss now must not let the step repeat.
            let durable = self
                .record
                .as_deref()
                .and_then(|bytes| crate::record::Record::decode(bytes).ok())
                .map(|record| match record.phase {
                    crate::record::Phase::Downloading { step, .. } => i16::from(step),
                    crate::record::Phase::Activating => 100,
                    crate::record::Phase::RollingBack => 0,
                });
            assert!(
                durable.is_some_and(|durable| durable >= step),
                "step {step} reported before a record carrying it was durable ({durable:?})"
            );
            self.attempt_last_step = step;
        } else if let Some(i) = self.expected_failures.iter().position(|c| *c == step) {
            self.expected_failures.remove(i);
        } else {
            assert!(
                step == -1 && self.allowed_rejections > 0,
                "failure report {step} without a failure"
            );
            self.allowed_rejections -= 1;
        }
    }

    /// Every failure the agent declared has been reported (call when online and quiet).
    pub fn assert_reports_settled(&self) {
        let tail = &self.transcript[self.transcript.len().saturating_sub(40)..];
        assert!(
            self.expected_failures.is_empty(),
            "failures never reported: {:?}; the transcript ends with {tail:#?}",
            self.expected_failures
        );
    }

    fn store(&mut self, record: Option<Vec<u8>>) -> Option<Stop> {
        let n = self.saves;
        self.saves += 1;
        if self.cut == Some(Cut::Save { n }) {
            return self.power_lost();
        }
        if self.fail_save == Some(n) {
            self.inbox.push_back(Event::RecordSaveFailed);
        } else {
            self.record = record;
            self.inbox.push_back(Event::RecordSaved);
        }
        None
    }

    fn on_publish(&mut self, topic: &str, payload: &str) {
        let v: serde_json::Value = serde_json::from_str(payload).expect("uplink is JSON");
        if topic.starts_with("/ota/device/progress/") {
            let step: i16 = v["params"]["step"].as_str().unwrap().parse().unwrap();
            self.check_progress(step);
            self.progress.push(step);
            if step < 0 {
                self.cloud_task = None; // the cloud marks the task failed
            }
        } else if topic.starts_with("/ota/device/inform/") {
            let version = v["params"]["version"].as_str().unwrap();
            if version == self.version && self.running == self.version {
                self.cloud_task = None; // success: the device reports the target version
            }
            self.informs.push(version.into());
        } else if topic.ends_with("/thing/file/download") {
            self.serve_block(&v);
        } else if topic.ends_with("/thing/ota/firmware/get")
            || topic.starts_with("/ota/device/request/")
        {
            if !self.reply_to_requests {
                return;
            }
            if topic.ends_with("/get") {
                let payload = self.signed_task_json("200");
                self.messages.push_back((
                    "/sys/a1TestPK001/dev01/thing/ota/firmware/get_reply".into(),
                    payload.into_bytes(),
                ));
            } else if self.cloud_task.is_some() {
                self.push_task();
            }
        }
    }

    fn serve(&mut self, fetch: FetchId, url: &str, offset: u64) {
        self.fetch_offsets.push(offset);
        let generation: u32 = url.rsplit('=').next().unwrap().parse().unwrap();
        // The URL names the file: an old URL still serves the old image.
        let path = url
            .trim_start_matches("https://fw.example/")
            .split(".bin?")
            .next()
            .unwrap();
        let (image, slot_base, version) = match path.split_once('/') {
            // A file of a multi-file task: `{version}/{index}`.
            Some((version, index)) => {
                let index = index.parse::<usize>().unwrap();
                let files = &self
                    .file_sets
                    .iter()
                    .rev()
                    .find(|(v, _)| v == version)
                    .expect("offered")
                    .1;
                (
                    files[index].clone(),
                    self.file_span(version, index).0 as u64,
                    String::from(version),
                )
            }
            None => (self.image_of(path).to_vec(), 0, String::from(path)),
        };
        let mut events = VecDeque::new();
        let fault = self.faults.pop_front();
        let size = image.len() as u64;
        if generation < self.url_valid_from {
            events.push_back(HttpStep::Response {
                status: 403,
                length: Some(230),
                range: None,
            });
            events.push_back(HttpStep::Body(
                b"<Error><Code>AccessDenied</Code></Error>".to_vec(),
            ));
            events.push_back(HttpStep::End);
            self.http = Some(HttpStream { fetch, events });
            return;
        }
        let mut body = image;
        let (mut from, mut status, mut range) = (offset, if offset > 0 { 206 } else { 200 }, None);
        match fault {
            Some(Fault::Refuse) => {
                events.push_back(HttpStep::Failed("connection refused"));
                self.http = Some(HttpStream { fetch, events });
                return;
            }
            Some(Fault::Closed) => {
                events.push_back(HttpStep::End);
                self.http = Some(HttpStream { fetch, events });
                return;
            }
            Some(Fault::PartialRange { len, extra }) => {
                let last = (offset as usize + len.max(1)).min(body.len()) - 1;
                status = 206;
                range = Some(format!("bytes {}-{}/{}", offset, last, size));
                body.truncate(last + 1);
                body.extend(core::iter::repeat_n(0xEE, extra));
            }
            Some(Fault::Status(code)) => {
                events.push_back(HttpStep::Response {
                    status: code,
                    length: Some(0),
                    range: None,
                });
                events.push_back(HttpStep::End);
                self.http = Some(HttpStream { fetch, events });
                return;
            }
            Some(Fault::IgnoreRange) => {
                from = 0;
                status = 200;
            }
            Some(Fault::Corrupt(k)) => {
                if let Some(byte) = body.get_mut(k as usize) {
                    *byte ^= 0x5A;
                    self.corrupted.push((version.clone(), slot_base + k));
                }
            }
            Some(Fault::WrongRange) => {
                range = Some(format!("bytes {}-{}/{}", offset + 1, size - 1, size))
            }
            Some(Fault::Extra(n)) => body.extend(core::iter::repeat_n(0xEE, n)),
            _ => {}
        }
        if status == 206 && range.is_none() {
            range = Some(format!("bytes {}-{}/{}", offset, size - 1, size));
        }
        body.drain(..(from as usize).min(body.len()));
        let mut bytes = body;
        let length = match fault {
            Some(Fault::Extra(_) | Fault::PartialRange { .. }) => None,
            Some(Fault::WrongLength) => Some(bytes.len() as u64 + 1),
            _ => Some(bytes.len() as u64),
        };
        events.push_back(HttpStep::Response {
            status,
            length,
            range,
        });
        let mut limit = bytes.len();
        if let Some(Fault::CutAfter(n) | Fault::StallAfter(n) | Fault::ShortBody(n)) = fault {
            limit = n.min(bytes.len());
        }
        bytes.truncate(limit);
        self.bytes_served += bytes.len() as u64;
        let mut at = 0;
        while at < bytes.len() {
            let n = self.chunk_sizes[self.chunk_cursor % self.chunk_sizes.len()].max(1);
            self.chunk_cursor += 1;
            let end = (at + n).min(bytes.len());
            events.push_back(HttpStep::Body(bytes[at..end].to_vec()));
            at = end;
        }
        match fault {
            Some(Fault::CutAfter(_)) => events.push_back(HttpStep::Failed("connection reset")),
            Some(Fault::StallAfter(_)) => {}
            _ => events.push_back(HttpStep::End),
        }
        self.http = Some(HttpStream { fetch, events });
    }

    /// Answers one MQTT-channel block request (docs/protocol.md §6), applying the next MQTT fault.
    fn serve_block(&mut self, request: &serde_json::Value) {
        let params = &request["params"];
        let stream = params["fileInfo"]["streamId"].as_u64().expect("streamId") as usize;
        let offset = params["fileBlock"]["offset"].as_u64().expect("offset");
        let want = params["fileBlock"]["size"].as_u64().expect("size");
        let token = params["fileToken"].as_str().expect("fileToken").to_string();
        let id = request["id"].as_str().expect("id").to_string();
        let image = self.images[stream - 1000].1.clone();
        self.block_requests.push(offset);
        let fault = self.mqtt_faults.pop_front();
        let (from, reported_offset) = match fault {
            Some(MqttFault::WrongOffset) => (offset as usize, offset + 1),
            _ => (offset as usize, offset),
        };
        let to = (from + want as usize).min(image.len());
        let mut data = image[from.min(to)..to].to_vec();
        let code = if fault == Some(MqttFault::Refuse) {
            404
        } else {
            200
        };
        let file_length = image.len() + usize::from(fault == Some(MqttFault::WrongFileLength));
        let header = format!(
            r#"{{"code":{code},"data":{{"bOffset":{reported_offset},"fileLength":{file_length},"bSize":{},"fileToken":"{token}"}},"id":"{id}","message":"success"}}"#,
            data.len()
        );
        // CRC-16/ARC computed here, not by ota-core's frame code: the world is the oracle.
        let crc = crc::Crc::<u16>::new(&crc::CRC_16_ARC).checksum(&data);
        if fault == Some(MqttFault::Corrupt) && !data.is_empty() {
            data[0] ^= 0xFF; // the CRC no longer matches
        }
        let mut frame = Vec::new();
        frame.extend_from_slice(&(header.len() as u16).to_be_bytes());
        frame.extend_from_slice(header.as_bytes());
        frame.extend_from_slice(&data);
        frame.extend_from_slice(&crc.to_le_bytes());
        let topic = String::from("/sys/a1TestPK001/dev01/thing/file/download_reply");
        match fault {
            Some(MqttFault::Drop) => {}
            Some(MqttFault::Duplicate) => {
                self.messages.push_back((topic.clone(), frame.clone()));
                self.messages.push_back((topic, frame));
            }
            Some(MqttFault::Hold) => self.held_reply = Some((topic, frame)),
            _ => {
                self.messages.push_back((topic, frame));
                // A held reply goes out after the next one: reordered.
                if let Some(held) = self.held_reply.take() {
                    self.messages.push_back(held);
                }
            }
        }
    }

    /// Runs through reboots until quiet; returns how many reboots happened.
    pub fn run_through_reboots(&mut self) -> usize {
        let mut reboots = 0;
        loop {
            match self.run() {
                Stop::Quiet => return reboots,
                Stop::Reboot | Stop::PowerLost => {
                    reboots += 1;
                    assert!(reboots < 20, "reboot loop");
                    self.reboot();
                    self.connect();
                }
            }
        }
    }

    /// Runs until the first fetch after a reboot is issued (true) or the run stops (false).
    pub fn run_until_first_fetch_or_stop(&mut self) -> bool {
        let before = self.fetch_offsets.len() + self.block_requests.len();
        self.run_with(&|w| w.fetch_offsets.len() + w.block_requests.len() > before)
            .is_none()
    }

    pub fn slot_image(&self) -> &[u8] {
        &self.slot[..self.image.len()]
    }

    /// Drops the storage results not yet delivered (a test answers them itself).
    pub fn inbox_clear(&mut self) {
        self.inbox.clear();
    }

    /// True when the slot holds `version`'s image: every file of a multi-file task at its
    /// place (the gaps between them are no file's and may hold anything).
    fn slot_holds(&self, version: &str) -> bool {
        match self.file_sets.iter().rev().find(|(v, _)| v == version) {
            Some((_, files)) => (0..files.len()).all(|i| {
                let (base, len) = self.file_span(version, i);
                self.slot.get(base..base + len as usize) == Some(&files[i][..])
            }),
            None => {
                let image = self.image_of(version);
                self.slot.get(..image.len()) == Some(image)
            }
        }
    }

    /// What a power loss does to the slot, if it was armed to (a flipped byte, a truncation).
    fn damage_slot(&mut self) {
        match self.damage.take() {
            Some(Damage::Flip(at)) => {
                if let Some(byte) = self.slot.get_mut(at) {
                    *byte ^= 0x20;
                }
            }
            Some(Damage::Truncate(len)) => {
                let len = len.min(self.slot.len());
                self.slot[len..].fill(0);
                self.slot_readable = Some(len);
            }
            None => {}
        }
    }

    /// The power fails here: the armed damage hits the slot.
    fn power_lost(&mut self) -> Option<Stop> {
        self.damage_slot();
        Some(Stop::PowerLost)
    }
}

/// What a power loss may do to the staging slot besides the cut itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Damage {
    /// One bit of the byte at this slot offset flips.
    Flip(usize),
    /// The staging area is cut to this length (a file truncated; 0: deleted).
    Truncate(usize),
}

/// Reads the slot as a file would: short where a truncation left it short.
fn read_slot(slot: &[u8], readable: Option<usize>, offset: u64, buf: &mut [u8]) -> usize {
    let end = readable.unwrap_or(slot.len()).min(slot.len());
    let from = usize::try_from(offset).unwrap_or(usize::MAX).min(end);
    let n = buf.len().min(end - from);
    buf[..n].copy_from_slice(&slot[from..from + n]);
    n
}

/// An action copied out of the agent, so the world can act while mutating itself.
enum Owned {
    Nothing,
    Publish {
        topic: String,
        payload: String,
    },
    Fetch {
        fetch: FetchId,
        url: String,
        offset: u64,
    },
    CancelFetch(FetchId),
    Write {
        offset: u64,
        data: Vec<u8>,
    },
    SaveRecord(Vec<u8>),
    ClearRecord,
    Activate(String),
    Reboot,
    Confirm,
    Rollback,
    HealthCheck,
    Outcome {
        text: String,
        failed: Option<i16>,
    },
    TaskReceived,
    Offered,
    TaskRejected(String),
    Note(String),
}

impl From<&Action<'_>> for Owned {
    fn from(action: &Action<'_>) -> Owned {
        match action {
            Action::Subscribe { .. } => Owned::Nothing,
            Action::Publish {
                topic,
                payload,
                qos,
            } => {
                // Only block requests, which the agent retries itself, go unacknowledged.
                let block_request = topic.ends_with("/thing/file/download");
                assert_eq!(
                    *qos == crate::agent::Qos::AtMostOnce,
                    block_request,
                    "{topic}"
                );
                Owned::Publish {
                    topic: topic.to_string(),
                    payload: String::from_utf8(payload.to_vec()).expect("uplink is UTF-8"),
                }
            }
            Action::Fetch { fetch, url, offset } => Owned::Fetch {
                fetch: *fetch,
                url: url.to_string(),
                offset: *offset,
            },
            Action::CancelFetch { fetch } => Owned::CancelFetch(*fetch),
            Action::Write { offset, data } => Owned::Write {
                offset: *offset,
                data: data.to_vec(),
            },
            // Reads are performed in `drain`, while the action lends its buffer.
            Action::Read { .. } => Owned::Nothing,
            Action::SaveRecord { record } => Owned::SaveRecord(record.to_vec()),
            Action::ClearRecord => Owned::ClearRecord,
            Action::Activate { version, .. } => Owned::Activate(version.to_string()),
            Action::Reboot => Owned::Reboot,
            Action::Confirm { .. } => Owned::Confirm,
            Action::Rollback { .. } => Owned::Rollback,
            Action::Notify(Notification::HealthCheckRequested { .. }) => Owned::HealthCheck,
            Action::Notify(Notification::Outcome(o)) => Owned::Outcome {
                text: outcome(o),
                failed: match o {
                    Outcome::Failed { code, .. } => Some(i16::from(code.step())),
                    _ => None,
                },
            },
            Action::Notify(Notification::TaskReceived(_)) => Owned::TaskReceived,
            Action::Notify(Notification::TaskOffered(_)) => Owned::Offered,
            Action::Notify(n @ Notification::TaskRejected { .. }) => {
                Owned::TaskRejected(format!("{n:?}"))
            }
            Action::Notify(n) => Owned::Note(format!("{n:?}")),
        }
    }
}

fn outcome(o: &Outcome) -> String {
    match o {
        Outcome::Installed { version } => format!("installed {version}"),
        Outcome::Succeeded { version } => format!("succeeded {version}"),
        Outcome::Failed { code, reason } => format!("failed {} {reason}", code.step()),
        Outcome::RolledBack { version } => format!("rolled back {version}"),
        Outcome::Canceled => "canceled".into(),
        Outcome::Declined => "declined".into(),
    }
}

fn describe(action: &Action) -> String {
    match action {
        Action::Subscribe { topic } => format!("sub {topic}"),
        Action::Publish { topic, payload, .. } => {
            let kind = if topic.starts_with("/ota/") {
                topic.split('/').nth(3)
            } else {
                topic.rsplit('/').next()
            };
            format!(
                "pub {} {}",
                kind.unwrap_or(topic),
                String::from_utf8_lossy(payload)
            )
        }
        Action::Fetch { fetch, offset, .. } => format!("fetch {} @{offset}", fetch.0),
        Action::CancelFetch { fetch } => format!("cancel {}", fetch.0),
        Action::Write { offset, data } => format!("write @{offset} +{}", data.len()),
        Action::Read { offset, buf } => format!("read @{offset} +{}", buf.len()),
        Action::SaveRecord { .. } => "save record".into(),
        Action::ClearRecord => "clear record".into(),
        Action::Activate { version, .. } => format!("activate {version}"),
        Action::Reboot => "reboot".into(),
        Action::Confirm { module } => format!("confirm {module}"),
        Action::Rollback { module } => format!("rollback {module}"),
        Action::Notify(n) => format!("notify {}", short_note(n)),
    }
}

fn short_note(n: &Notification) -> String {
    match n {
        Notification::TaskReceived(t) => format!("task {}", t.version),
        Notification::TaskOffered(t) => format!("offered {}", t.version),
        Notification::TaskRejected { reason } => format!("rejected {reason}"),
        Notification::Progress { percent, .. } => format!("progress {percent}"),
        Notification::HealthCheckRequested { module, version } => {
            format!("health? {module} {version}")
        }
        Notification::RecordDiscarded(e) => format!("record discarded {e}"),
        Notification::Outcome(o) => outcome(o),
    }
}
