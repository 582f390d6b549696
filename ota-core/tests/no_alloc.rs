//! The body path (chunk → digest → staging → write → write done → progress → checkpoint)
//! must not allocate: counted with a global allocator over a whole 1 MiB download, with one
//! staging block and with writes in flight in a ring of two and three.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ota_core::{Action, Agent, BodyBuffer, Boot, Config, DeviceIdentity, Event, FetchId, Instant};
use sha2::Digest;

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What the slot holds after the download (the reads of the read-back come from here).
static IMAGE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Performs the queued actions; returns (writes, progress publishes, record saves).
fn drain(
    agent: &mut Agent,
    events: &mut Vec<Event<'static>>,
    fetch: &mut Option<FetchId>,
) -> (usize, usize, usize) {
    let mut counts = (0, 0, 0);
    while let Some(action) = agent.poll_action() {
        match action {
            Action::Write { .. } => {
                counts.0 += 1;
                events.push(Event::WriteDone);
            }
            Action::Publish { topic, .. } if topic.starts_with("/ota/device/progress/") => {
                counts.1 += 1
            }
            Action::SaveRecord { .. } | Action::ClearRecord => {
                counts.2 += 1;
                events.push(Event::RecordSaved);
            }
            Action::Fetch { fetch: id, .. } => *fetch = Some(id),
            // The read-back before activation: the slot holds what was written, the image.
            Action::Read { offset, buf } => {
                let image = IMAGE.get().expect("the image");
                let at = usize::try_from(offset).unwrap().min(image.len());
                let len = buf.len().min(image.len() - at);
                buf[..len].copy_from_slice(&image[at..at + len]);
                events.push(Event::ReadDone { len });
            }
            _ => {}
        }
    }
    counts
}

#[test]
fn body_chunks_flow_without_allocating() {
    for buffers in [1, 2, 3] {
        for lend in [false, true] {
            download_counting_allocations(buffers, lend);
        }
    }
}

/// `lend`: the bytes are read into the block `Agent::body_buffer` lends, else offered to
/// `Agent::handle_body`.
fn download_counting_allocations(buffers: usize, lend: bool) {
    ALLOCATIONS.store(0, Ordering::SeqCst);
    let image = IMAGE.get_or_init(|| (0..1024 * 1024u32).map(|i| (i % 251) as u8).collect());
    // MD5 when built in, else SHA-256 (the digest whose update is on the body path).
    let (digest, members) = if cfg!(feature = "md5") {
        (md5::Md5::digest(image).to_vec(), r#""md5":"{}""#)
    } else {
        (
            sha2::Sha256::digest(image).to_vec(),
            r#""sign":"{}","signMethod":"SHA256""#,
        )
    };
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let digest = members.replace("{}", &hex);
    let mut config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01").unwrap());
    config.checkpoint_interval = 64 * 1024;
    config.progress_step = 1;
    config.write_buffers = buffers;
    let boot = Boot {
        running_version: "1.0.0",
        record: None,
    };
    let mut agent = Agent::new(config, boot, Instant::ZERO).unwrap();
    let mut events = Vec::new();
    let mut fetch = None;
    let now = Instant::from_millis(1);
    agent.handle(now, Event::Connected).unwrap();
    drain(&mut agent, &mut events, &mut fetch);
    let push = format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"https://h/fw.bin",{digest}}},"id":1}}"#,
        image.len()
    );
    let topic = "/ota/device/upgrade/a1TestPK001/dev01";
    agent
        .handle(
            now,
            Event::Message {
                topic,
                payload: push.as_bytes(),
            },
        )
        .unwrap();
    drain(&mut agent, &mut events, &mut fetch);
    for event in events.drain(..) {
        agent.handle(now, event).unwrap();
    }
    let mut sink = Vec::new();
    drain(&mut agent, &mut sink, &mut fetch);
    let fetch = fetch.expect("fetch after the first record");
    let response = Event::HttpResponse {
        fetch,
        status: 200,
        content_length: Some(image.len() as u64),
        content_range: None,
    };
    agent.handle(now, response).unwrap();
    drain(&mut agent, &mut sink, &mut None);

    let chunks: Vec<&[u8]> = image.chunks(1000).collect();
    let (head, tail) = chunks.split_at(chunks.len() - 5);
    let mut totals = (0, 0, 0);
    // Preallocated so that the test itself does not allocate inside the window.
    let mut results: Vec<Event<'static>> = Vec::with_capacity(8);
    // Storage results are held back (writes stay in flight) until the agent refuses bytes.
    let mut feed = |agent: &mut Agent, chunk: &[u8], totals: &mut (usize, usize, usize)| {
        let mut offset = 0;
        while offset < chunk.len() {
            let rest = &chunk[offset..];
            let taken = if lend {
                match agent.body_buffer(now, fetch).unwrap() {
                    BodyBuffer::Lent(buffer) => {
                        let n = buffer.len().min(rest.len());
                        buffer[..n].copy_from_slice(&rest[..n]);
                        agent.body_filled(now, fetch, n).unwrap()
                    }
                    BodyBuffer::Full => 0,
                    BodyBuffer::Unwanted => unreachable!("the only fetch"),
                }
            } else {
                agent.handle_body(now, fetch, rest).unwrap()
            };
            offset += taken;
            let c = drain(agent, &mut results, &mut None);
            *totals = (totals.0 + c.0, totals.1 + c.1, totals.2 + c.2);
            // Never more storage operations in flight than staging blocks.
            assert!(results.len() <= buffers, "{} in flight", results.len());
            if taken > 0 {
                continue;
            }
            assert!(!results.is_empty(), "bytes refused with nothing in flight");
            while !results.is_empty() {
                agent.handle(now, results.remove(0)).unwrap();
                let c = drain(agent, &mut results, &mut None);
                *totals = (totals.0 + c.0, totals.1 + c.1, totals.2 + c.2);
            }
        }
    };
    // Warm up: the first chunk sizes the action arena.
    feed(&mut agent, head[0], &mut totals);
    COUNTING.store(true, Ordering::SeqCst);
    for chunk in &head[1..] {
        feed(&mut agent, chunk, &mut totals);
    }
    COUNTING.store(false, Ordering::SeqCst);
    for chunk in tail {
        feed(&mut agent, chunk, &mut totals);
    }
    while !results.is_empty() {
        agent.handle(now, results.remove(0)).unwrap();
        drain(&mut agent, &mut results, &mut None);
    }
    assert!(agent.is_image_verified());
    // The window saw real work: writes, progress reports and checkpoints.
    assert!(
        totals.0 >= 250 && totals.1 >= 15 && totals.2 >= 15,
        "{totals:?}"
    );
    assert_eq!(
        ALLOCATIONS.load(Ordering::SeqCst),
        0,
        "allocations while body chunks flowed ({buffers} staging blocks, lent: {lend})"
    );
}
