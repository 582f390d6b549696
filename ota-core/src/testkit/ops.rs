//! Arbitrary operation sequences over the simulated world, for property tests and fuzzing.
//!
//! Whatever the sequence, the world's invariant checks hold at every step (no activation
//! of a wrong image, every written byte the image's, records covering exactly the bytes on
//! flash, monotone progress, one report per failure, bounded queue, no busy loop). After
//! the sequence the world heals and runs to the end; when the sequence was benign (the
//! small reference model below), the upgrade must have succeeded.

use alloc::vec;
use alloc::vec::Vec;
use core::time::Duration;

use super::world::{
    test_config, test_image, Cut, Damage, Fault, Health, MqttFault, Signatures, Signing, Stop,
    World,
};

/// One thing that happens to the device or the cloud.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Let the world deliver up to this many inputs.
    Steps(u8),
    Connect,
    Disconnect,
    /// The cloud pushes its current task again.
    PushSameTask,
    /// The cloud replaces the task with another image and version.
    ReplaceTask(u8),
    /// The same, but badly signed: a signature over another digest (even seed) or garbage.
    ReplaceTaskMissigned(u8),
    /// A malformed push (one of a few shapes).
    PushGarbage(u8),
    /// The next HTTP request suffers this fault.
    Fault(Fault),
    FailNextWrite,
    FailNextSave,
    FailActivation,
    /// Power fails at the next write, `torn` bytes of it reaching flash.
    CutNextWrite(u16),
    /// Power fails at the next record save.
    CutNextSave,
    AdvanceSecs(u16),
    /// Every URL issued so far expires.
    ExpireUrls,
    /// The cloud cancels the task.
    DropTask,
    /// The next MQTT-channel block reply suffers this fault.
    Mqtt(MqttFault),
    /// The next health check fails.
    Unhealthy,
    /// The next read of the slot fails.
    FailNextRead,
    /// The next power loss flips a bit of the slot (at this offset modulo the image).
    FlipAtPowerLoss(u16),
    /// The next power loss truncates the staging area (to this length modulo the image).
    TruncateAtPowerLoss(u16),
}

/// A whole scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    pub image_len: usize,
    pub sha256: bool,
    /// Storage results arrive after network input (a slow flash).
    pub lazy_storage: bool,
    /// `Some(window)`: the image comes over the MQTT channel.
    pub mqtt_window: Option<u8>,
    /// The task holds three files (HTTP only).
    pub multi_file: bool,
    /// The device has the test key and the cloud signs its tasks (feature `signature`).
    pub signed: bool,
    /// Staging blocks (`Config::write_buffers`): writes in flight at once.
    pub write_buffers: usize,
    /// HTTP body bytes are read into the block the agent lends (`Agent::body_buffer`)
    /// instead of offered to `Agent::handle_body`.
    pub lend_body: bool,
    pub chunk_sizes: Vec<usize>,
    pub ops: Vec<Op>,
}

/// What a scenario asks for, less what this build leaves out (features `sha256`,
/// `mqtt-channel`, `multi-file`): its world offers only tasks the agent can take.
pub fn built_in(
    sha256: bool,
    mqtt_window: Option<u8>,
    multi_file: bool,
) -> (bool, Option<u8>, bool) {
    (
        sha256 && cfg!(feature = "sha256"),
        mqtt_window.filter(|_| cfg!(feature = "mqtt-channel")),
        multi_file && cfg!(feature = "multi-file"),
    )
}

impl Op {
    /// True when the op cannot make a correct agent fail the upgrade, alone or with other
    /// benign ops within the budgets counted by [`Scenario::is_benign`].
    fn is_benign(&self) -> bool {
        match self {
            Op::Steps(_) | Op::Connect | Op::Disconnect | Op::PushSameTask | Op::AdvanceSecs(_) => {
                true
            }
            Op::CutNextWrite(_) | Op::CutNextSave | Op::ExpireUrls => true,
            // The resume reads the durable prefix back and starts again when it changed.
            Op::FlipAtPowerLoss(_) | Op::TruncateAtPowerLoss(_) => true,
            Op::Fault(f) => !matches!(f, Fault::Corrupt(_) | Fault::Status(400..=402 | 405..=499)),
            Op::Mqtt(_) => true,
            _ => false,
        }
    }
}

impl Scenario {
    /// The reference model: benign ops within the retry budgets always end in success.
    pub fn is_benign(&self) -> bool {
        let faults = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::Fault(_)))
            .count();
        let dead = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::ExpireUrls | Op::Fault(Fault::Status(403 | 404))))
            .count();
        let cuts = self
            .ops
            .iter()
            .filter(|o| matches!(o, Op::CutNextWrite(_) | Op::CutNextSave))
            .count();
        let mqtt = self.ops.iter().filter(|o| matches!(o, Op::Mqtt(_))).count();
        // A device with a key refuses multi-file tasks (no per-file signature).
        let unverifiable = self.signs() && self.multi_file && self.mqtt_window.is_none();
        self.ops.iter().all(Op::is_benign)
            && faults <= 8
            && dead <= 4
            && cuts <= 6
            && mqtt <= 4
            && !unverifiable
    }

    /// Whether signing is on: only builds with the verifier can sign.
    fn signs(&self) -> bool {
        self.signed && cfg!(feature = "signature")
    }

    /// Decodes a scenario from fuzzer bytes (every input is valid).
    pub fn from_bytes(data: &[u8]) -> Scenario {
        let mut it = data.iter().copied();
        let mut next = move || it.next();
        let len_hi = next().unwrap_or(0);
        let len_lo = next().unwrap_or(64);
        let len = usize::from(len_hi) << 8 | usize::from(len_lo);
        let flags = next().unwrap_or(0);
        let signed = flags & 0x80 == 0x80;
        // Images of a few KiB: a dozen write blocks and a few checkpoints already reach
        // every path, and each byte costs hashing three times (download, records checked
        // against the slot, read-back). A signed scenario's images come from a few sizes
        // around the block, window and checkpoint edges: each new digest costs an RSA
        // signature, which a fuzzing run then finds in its cache.
        let image_len = if signed {
            SIGNED_LENGTHS[len % SIGNED_LENGTHS.len()]
        } else {
            1 + len % MAX_IMAGE_LEN
        };
        let (sha256, lazy_storage) = (flags & 1 == 1, flags & 2 == 2);
        let mqtt_window = (flags & 4 == 4).then_some(1 + (flags >> 3) % 3);
        let multi_file = flags & 0x40 == 0x40;
        let (sha256, mqtt_window, multi_file) = built_in(sha256, mqtt_window, multi_file);
        // Every flag bit is taken: the entry point comes from the length's bit 8, which
        // only shifts the length modulo the largest image.
        let lend_body = len_hi & 1 == 1;
        let write_buffers = 1 + usize::from(flags >> 5 & 1) + usize::from(flags >> 4 & 1);
        let chunk_sizes = (0..3)
            .map(|_| 1 + usize::from(next().unwrap_or(200)) * 37)
            .collect();
        let mut ops = Vec::new();
        while let Some(tag) = next() {
            let arg = next().unwrap_or(0);
            let arg16 = u16::from(arg) * 97;
            ops.push(match tag % 20 {
                0..=4 => Op::Steps(arg),
                5 => Op::Connect,
                6 => Op::Disconnect,
                7 => Op::PushSameTask,
                8 => Op::ReplaceTask(arg),
                9 => Op::PushGarbage(arg),
                10 => Op::Fault(fault(arg, image_len)),
                11 => Op::Fault(fault(arg.wrapping_add(3), image_len)),
                12 => Op::FailNextWrite,
                13 => Op::FailNextSave,
                14 => match arg % 9 {
                    0 => Op::FailActivation,
                    1 => Op::DropTask,
                    2 => Op::Unhealthy,
                    3 => Op::Mqtt(MqttFault::Drop),
                    4 => Op::Mqtt(MqttFault::Duplicate),
                    5 => Op::Mqtt(MqttFault::Corrupt),
                    6 => Op::Mqtt(MqttFault::WrongOffset),
                    7 => Op::Mqtt(MqttFault::Refuse),
                    _ => Op::Mqtt(MqttFault::Hold),
                },
                15 => Op::CutNextWrite(arg16 % 1100),
                16 => Op::CutNextSave,
                17 => Op::AdvanceSecs(arg16),
                18 => Op::ExpireUrls,
                _ if arg % 4 == 0 => Op::ReplaceTaskMissigned(arg / 4),
                _ if arg % 4 == 1 => Op::FlipAtPowerLoss(arg16),
                _ if arg % 4 == 2 => Op::TruncateAtPowerLoss(arg16),
                _ if arg & 4 == 0 => Op::FailNextRead,
                _ => Op::Steps(arg.saturating_mul(4)),
            });
            if ops.len() >= 64 {
                break;
            }
        }
        Scenario {
            image_len,
            sha256,
            lazy_storage,
            mqtt_window,
            multi_file,
            signed,
            write_buffers,
            lend_body,
            chunk_sizes,
            ops,
        }
    }
}

/// Largest image of a scenario (see `Scenario::from_bytes`).
const MAX_IMAGE_LEN: usize = 6_000;

/// Image sizes of signed scenarios (see `Scenario::from_bytes`).
const SIGNED_LENGTHS: [usize; 12] = [
    1, 511, 512, 513, 700, 2047, 2048, 2049, 3001, 4096, 5000, 5999,
];

/// Seeds of replaced images in signed scenarios: few, for the same reason.
const SIGNED_SEEDS: u8 = 4;

fn fault(arg: u8, image_len: usize) -> Fault {
    let at = usize::from(arg) * 131 % image_len.max(1);
    match arg % 14 {
        0 => Fault::Status(500),
        1 => Fault::Status(403),
        2 => Fault::Status(404),
        3 => Fault::IgnoreRange,
        4 => Fault::CutAfter(at),
        5 => Fault::StallAfter(at),
        6 => Fault::Corrupt(at as u64),
        7 => Fault::WrongRange,
        8 => Fault::Extra(1 + usize::from(arg)),
        9 => Fault::ShortBody(at),
        10 => Fault::Closed,
        11 => Fault::WrongLength,
        12 => Fault::PartialRange {
            len: at,
            extra: usize::from(arg % 2) * 7,
        },
        _ => Fault::Refuse,
    }
}

const GARBAGE: [&str; 4] = [
    "{not json",
    r#"{"code":"1000","data":{"size":0,"version":"9","url":"https://h/p","md5":"93230c3bde425a9d7984a594ac55ea1e"}}"#,
    r#"{"code":"1000","data":{"size":10,"version":"9","url":"ftp://h/p","md5":"93230c3bde425a9d7984a594ac55ea1e"}}"#,
    r#"{"code":"1000","data":"x"}"#,
];

/// Runs the scenario; panics when an invariant breaks. Returns the finished world.
pub fn run(scenario: &Scenario) -> World {
    run_with(scenario, Signatures::default(), true)
}

/// The fuzz target's run: no transcript, and the signatures of earlier runs reused (an RSA
/// signature costs more than the whole run otherwise).
pub fn run_reusing(scenario: &Scenario, signatures: &mut Signatures) {
    let w = run_with(scenario, core::mem::take(signatures), false);
    *signatures = w.signatures;
}

fn run_with(scenario: &Scenario, signatures: Signatures, transcript: bool) -> World {
    let mut config = test_config();
    config.write_block = 512;
    config.checkpoint_interval = 2048;
    #[cfg(feature = "mqtt-channel")]
    {
        config.mqtt.block_size = 700;
        config.mqtt.window = scenario.mqtt_window.unwrap_or(1);
    }
    config.write_buffers = scenario.write_buffers;
    let mut w = World::new(config, test_image(scenario.image_len, 1));
    (w.signatures, w.keep_transcript) = (signatures, transcript);
    w.chunk_sizes = scenario.chunk_sizes.clone();
    w.lazy_storage = scenario.lazy_storage;
    w.mqtt_channel = scenario.mqtt_window.is_some();
    w.lend_body = scenario.lend_body;
    w.max_steps = 400_000;
    #[cfg(feature = "signature")]
    if scenario.signed {
        w.config.package_key = Some(super::signing::test_key());
        w.restart_agent();
        w.signing = Signing::Signed;
    }
    let offer = |w: &mut World| {
        #[cfg(feature = "sha256")]
        if scenario.sha256 {
            return w.offer_sha256_task();
        }
        w.offer_task()
    };
    if scenario.multi_file && scenario.mqtt_window.is_none() {
        let third = scenario.image_len / 3 + 1;
        w.offer_files_task(vec![
            test_image(third, 1),
            test_image(1 + third / 7, 2),
            test_image(third, 3),
        ]);
    } else {
        offer(&mut w);
    }
    w.connect();
    let mut reboots = 0;
    for op in &scenario.ops {
        match op {
            Op::Steps(n) => {
                for _ in 0..*n {
                    match w.step() {
                        None => {}
                        Some(Stop::Quiet) => break,
                        Some(Stop::Reboot | Stop::PowerLost) => {
                            reboots += 1;
                            w.reboot();
                            w.connect();
                        }
                    }
                }
            }
            Op::Connect => {
                if !w.online {
                    w.connect();
                }
            }
            Op::Disconnect => {
                if w.online {
                    w.disconnect();
                }
            }
            Op::PushSameTask => w.push_task(),
            Op::ReplaceTask(seed) => {
                let seed = &if scenario.signed {
                    seed % SIGNED_SEEDS
                } else {
                    *seed
                };
                w.image = test_image(scenario.image_len / 2 + usize::from(*seed) + 1, *seed);
                w.version = alloc::format!("3.{seed}");
                offer(&mut w);
                w.push_task();
            }
            Op::ReplaceTaskMissigned(seed) => {
                let seed = &if scenario.signed {
                    seed % SIGNED_SEEDS
                } else {
                    *seed
                };
                let signing = w.signing;
                // Only a build with the verifier holds the test key that signs, and only a
                // device with the key tells a signature over another digest from garbage.
                w.signing = if seed % 2 == 0 && scenario.signs() {
                    Signing::OverOtherDigest
                } else {
                    Signing::Garbage
                };
                w.image = test_image(scenario.image_len / 2 + usize::from(*seed) + 1, *seed);
                w.version = alloc::format!("4.{seed}");
                offer(&mut w);
                w.push_task();
                w.signing = signing;
            }
            Op::PushGarbage(i) => w.push_raw(GARBAGE[usize::from(*i) % GARBAGE.len()]),
            Op::Fault(f) => w.faults.push_back(f.clone()),
            Op::FailNextWrite => w.fail_write = Some(w.writes),
            Op::FailNextSave => w.fail_save = Some(w.saves),
            Op::FailActivation => w.fail_activate = true,
            Op::CutNextWrite(torn) => {
                w.cut = Some(Cut::Write {
                    n: w.writes,
                    torn: usize::from(*torn),
                })
            }
            Op::CutNextSave => w.cut = Some(Cut::Save { n: w.saves }),
            Op::AdvanceSecs(s) => w.advance(Duration::from_secs(u64::from(*s))),
            Op::ExpireUrls => w.url_valid_from = w.url_generation,
            Op::DropTask => w.cloud_task = None,
            Op::Mqtt(f) => w.mqtt_faults.push_back(*f),
            Op::Unhealthy => w.health = Health::Unhealthy,
            Op::FailNextRead => w.fail_read = Some(w.reads),
            Op::FlipAtPowerLoss(at) => {
                w.damage = Some(Damage::Flip(usize::from(*at) % w.image.len().max(1)))
            }
            Op::TruncateAtPowerLoss(len) => {
                w.damage = Some(Damage::Truncate(usize::from(*len) % w.image.len().max(1)))
            }
        }
    }
    // Heal and let the story finish.
    w.faults.clear();
    w.mqtt_faults.clear();
    (w.fail_write, w.fail_save, w.fail_activate, w.cut) = (None, None, false, None);
    (w.fail_read, w.damage) = (None, None);
    if !w.online {
        w.connect();
    }
    reboots += w.run_through_reboots();
    assert!(reboots < 40);
    w.assert_reports_settled();
    if w.running == w.version {
        assert!(
            w.confirmed || w.health == Health::Unhealthy,
            "running the target without confirmation"
        );
        // A failed clear may leave a stale record until the next connect or boot.
        if !scenario.ops.contains(&Op::FailNextSave) {
            assert_eq!(w.record, None, "record left behind after success");
        }
    }
    if scenario.is_benign() {
        assert_eq!(
            w.running, w.version,
            "benign scenario did not upgrade: {:?}",
            w.outcomes
        );
        assert!(w.confirmed);
    }
    w
}
