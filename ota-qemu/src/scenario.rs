//! The run: the baselines, then the upgrade in its three phases, then the verdict and the
//! figures. Each phase is its own (not inlined) function and the long-lived state is on the
//! heap, so the harness's own stack frames stay small beside the agent's.

use alloc::boxed::Box;
use alloc::vec;

use md5::{Digest, Md5};
use ota_core::{Agent, Event, Phase};

use crate::cloud::{self, IMAGE_SIZE, NEW_VERSION, OLD_VERSION};
use crate::device::Device;
use crate::heap::HEAP;
use crate::probe::{Call, Probe};
use crate::report::{self, Figures};
use crate::{config, CHUNK, WRITE_BLOCK};

/// Everything, in order; returns only when every check passed.
pub fn run() {
    let mut figures = Box::new(Figures {
        readout: crate::probe::readout_instructions(),
        ..Figures::default()
    });
    // Set-up, outside every measurement.
    let image = cloud::image();
    let md5 = cloud::md5_hex(&image);
    let push = cloud::push(&md5);
    let mut device = Box::new(Device::new());
    baselines(&image, &md5, &mut figures);

    // From here on only the agent allocates.
    let heap_before = HEAP.in_use();
    HEAP.reset_peak();
    let mut agent = first_boot(&mut device, push.as_bytes());
    figures.connect_push = device.probe.take_meters();
    download(&mut device, &mut agent, &image);
    figures.download = device.probe.take_meters();
    drop(agent);
    reboot(&mut device);
    figures.reboot_confirm = device.probe.take_meters();
    figures.heap_peak = HEAP.peak() - heap_before;
    check!(
        HEAP.in_use() == heap_before,
        "{} B still allocated after the agents were dropped",
        HEAP.in_use() - heap_before
    );
    report::check_transcript(&device);
    report::print(&figures, &device);
}

/// Bare MD5, then MD5 with the staging copy, over the image in the body's chunks.
#[inline(never)]
fn baselines(image: &[u8], md5: &str, figures: &mut Figures) {
    let mut probe = Probe::default();
    let digest = bare_md5(image, &mut probe);
    check!(cloud::hex(&digest) == md5, "bare MD5 over chunks differs");
    figures.bare = probe.take_meters()[Call::Baseline as usize].clone();
    let mut block = vec![0u8; WRITE_BLOCK];
    let digest = md5_and_staging(image, &mut block, &mut probe);
    check!(cloud::hex(&digest) == md5, "MD5 with staging differs");
    figures.staged = probe.take_meters()[Call::Baseline as usize].clone();
    figures.baseline_depth = probe.own[Call::Baseline as usize];
}

/// Bare MD5: the baseline of the instruction ratio.
fn bare_md5(image: &[u8], probe: &mut Probe) -> [u8; 16] {
    let mut hasher = probe.call(Call::Baseline, Md5::new);
    for chunk in image.chunks(CHUNK) {
        probe.call(Call::Baseline, || hasher.update(chunk));
    }
    probe.call(Call::Baseline, || hasher.finalize()).into()
}

/// MD5 plus the copy into a write-block staging buffer: the least any design that hashes
/// on the way into a staging block can execute.
fn md5_and_staging(image: &[u8], block: &mut [u8], probe: &mut Probe) -> [u8; 16] {
    let mut hasher = probe.call(Call::Baseline, Md5::new);
    let mut staged = 0;
    for chunk in image.chunks(CHUNK) {
        let mut rest = chunk;
        while !rest.is_empty() {
            probe.call(Call::Baseline, || {
                let n = rest.len().min(block.len() - staged);
                block[staged..staged + n].copy_from_slice(&rest[..n]);
                hasher.update(&rest[..n]);
                rest = &rest[n..];
                staged = (staged + n) % block.len();
            });
        }
    }
    probe.call(Call::Baseline, || hasher.finalize()).into()
}

/// First boot on 1.0.0: connect, then the cloud pushes the task.
#[inline(never)]
fn first_boot(device: &mut Device, push: &[u8]) -> Box<Agent> {
    let mut agent = device.boot(config(), OLD_VERSION);
    device.settle(&mut agent);
    device.input(&mut agent, Call::Connected, Event::Connected);
    device.tick(20);
    let push = Event::Message {
        topic: cloud::UPGRADE_TOPIC,
        payload: push,
    };
    device.input(&mut agent, Call::Push, push);
    check!(
        device.log.task_received && device.log.fetches == 1,
        "no download started"
    );
    agent
}

/// The download: the response, every chunk, every write and checkpoint, the verification
/// and the activation, up to the agent's request to reboot.
#[inline(never)]
fn download(device: &mut Device, agent: &mut Agent, image: &[u8]) {
    let fetch = device.fetch();
    let response = Event::HttpResponse {
        fetch,
        status: 200,
        content_length: Some(IMAGE_SIZE as u64),
        content_range: None,
    };
    device.input(agent, Call::HttpResponse, response);
    for chunk in image.chunks(CHUNK) {
        device.tick(1);
        device.body(agent, fetch, chunk);
    }
    device.input(agent, Call::HttpEnd, Event::HttpEnd { fetch });
    let log = &device.log;
    check!(
        log.activated && log.installed && log.reboot,
        "no activation and reboot"
    );
    check!(
        device.slot[..] == image[..],
        "the slot differs from the image"
    );
}

/// The reboot into 2.0.0: the agent comes back from the saved record, reports the new
/// version, and confirms once the application says the image is healthy.
#[inline(never)]
fn reboot(device: &mut Device) {
    device.tick(5_000);
    let mut agent = device.boot(config(), NEW_VERSION);
    device.settle(&mut agent);
    check!(device.log.health_check, "no health check after the reboot");
    device.input(&mut agent, Call::Connected, Event::Connected);
    device.tick(1_000);
    let verdict = Event::HealthVerdict { healthy: true };
    device.input(&mut agent, Call::HealthVerdict, verdict);
    check!(
        agent.phase() == Phase::Idle,
        "agent not idle: {:?}",
        agent.phase()
    );
    check!(
        agent.running_version() == NEW_VERSION,
        "running {}",
        agent.running_version()
    );
}
