//! Shared drivers for the benchmarks: run a whole download through the agent the way an
//! adapter would, with storage that acknowledges at once, so that what is measured is the
//! core's own body path (chunk → digest → staging → write → write done → progress).
#![forbid(unsafe_code)]

use md5::Digest;
use ota_core::{Action, Agent, BodyBuffer, Boot, Config, DeviceIdentity, Event, FetchId, Instant};

/// Which digest the task carries.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    /// MD5.
    Md5,
    /// SHA-256.
    Sha256,
}

/// A deterministic image of `len` bytes.
pub fn image(len: usize) -> Vec<u8> {
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

/// The push for `image` with `method`.
pub fn push_for(image: &[u8], method: Method) -> String {
    let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let (sign, name) = match method {
        Method::Md5 => (hex(&md5::Md5::digest(image)), "Md5"),
        Method::Sha256 => (hex(&sha2::Sha256::digest(image)), "SHA256"),
    };
    format!(
        r#"{{"code":"1000","data":{{"size":{},"version":"2.0.0","url":"https://h/fw.bin","sign":"{sign}","signMethod":"{name}"}},"id":1}}"#,
        image.len()
    )
}

/// An agent that has accepted the task and has its fetch open, ready for body bytes. Without
/// the read-back before activation: the chunk path alone (benches/reread.rs measures it).
pub fn agent_ready(push: &str, write_block: usize) -> (Agent, FetchId) {
    agent_ready_with(push, write_block, false)
}

/// [`agent_ready`] with `Config::read_back` as given.
pub fn agent_ready_with(push: &str, write_block: usize, read_back: bool) -> (Agent, FetchId) {
    let mut config = Config::new(DeviceIdentity::new("a1TestPK001", "dev01").expect("identity"));
    config.write_block = write_block;
    config.checkpoint_interval = 1024 * 1024;
    config.read_back = read_back;
    let boot = Boot {
        running_version: "1.0.0",
        record: None,
    };
    let mut agent = Agent::new(config, boot, Instant::ZERO).expect("agent");
    let now = Instant::ZERO;
    agent.handle(now, Event::Connected).expect("connect");
    let mut fetch = None;
    while agent.poll_action().is_some() {}
    let topic = "/ota/device/upgrade/a1TestPK001/dev01";
    agent
        .handle(
            now,
            Event::Message {
                topic,
                payload: push.as_bytes(),
            },
        )
        .expect("push");
    while let Some(action) = agent.poll_action() {
        assert!(
            !matches!(action, Action::Fetch { .. }),
            "fetch before the record"
        );
    }
    agent.handle(now, Event::RecordSaved).expect("record");
    while let Some(action) = agent.poll_action() {
        if let Action::Fetch { fetch: id, .. } = action {
            fetch = Some(id);
        }
    }
    let fetch = fetch.expect("fetch");
    let response = Event::HttpResponse {
        fetch,
        status: 200,
        content_length: None,
        content_range: None,
    };
    agent.handle(now, response).expect("response");
    while agent.poll_action().is_some() {}
    (agent, fetch)
}

/// Feeds `image` in `chunk`-byte pieces and acknowledges every storage action at once.
/// Returns true when the image verified.
pub fn download(agent: &mut Agent, fetch: FetchId, image: &[u8], chunk: usize) -> bool {
    download_with(agent, fetch, image, chunk, false)
}

/// [`download`] through `Agent::body_buffer` / `Agent::body_filled`: each piece is copied
/// into the staging block the agent lends (the copy stands for the socket read that fills
/// it), then hashed in place. The agent's own copy of `handle_body` is gone.
pub fn download_lent(agent: &mut Agent, fetch: FetchId, image: &[u8], chunk: usize) -> bool {
    download_with(agent, fetch, image, chunk, true)
}

fn download_with(
    agent: &mut Agent,
    fetch: FetchId,
    image: &[u8],
    chunk: usize,
    lent: bool,
) -> bool {
    let now = Instant::ZERO;
    for piece in image.chunks(chunk) {
        let mut offset = 0;
        while offset < piece.len() {
            let rest = &piece[offset..];
            offset += if lent {
                match agent.body_buffer(now, fetch).expect("buffer") {
                    BodyBuffer::Lent(buffer) => {
                        let n = buffer.len().min(rest.len());
                        buffer[..n].copy_from_slice(&rest[..n]);
                        agent.body_filled(now, fetch, n).expect("filled")
                    }
                    // Every storage action is acknowledged at once: a block is always free.
                    BodyBuffer::Full => panic!("back-pressure with every write acknowledged"),
                    BodyBuffer::Unwanted => panic!("the only fetch"),
                }
            } else {
                agent.handle_body(now, fetch, rest).expect("body")
            };
            loop {
                let mut result = None;
                while let Some(action) = agent.poll_action() {
                    match action {
                        Action::Write { .. } => result = Some(Event::WriteDone),
                        Action::SaveRecord { .. } | Action::ClearRecord => {
                            result = Some(Event::RecordSaved)
                        }
                        Action::Activate { .. } => result = Some(Event::Activated),
                        _ => {}
                    }
                }
                match result {
                    Some(event) => agent.handle(now, event).expect("storage result"),
                    None => break,
                }
            }
        }
    }
    agent.is_image_verified()
}

/// [`bare_digest`] of bytes that are first copied, chunk by chunk, into a buffer of `block`
/// bytes, as a program reading a socket gets them: the floor for any consumer of a network
/// body, against which the lent path (whose copy stands for that read) is compared.
pub fn copied_digest(image: &[u8], chunk: usize, block: usize, method: Method) -> u8 {
    let mut buffer = vec![0u8; block.max(chunk)];
    let mut hash = |update: &mut dyn FnMut(&[u8])| {
        for piece in image.chunks(chunk) {
            let landed = &mut buffer[..piece.len()];
            landed.copy_from_slice(piece);
            update(std::hint::black_box(landed));
        }
    };
    match method {
        Method::Md5 => {
            let mut h = md5::Md5::new();
            hash(&mut |bytes| h.update(bytes));
            h.finalize()[0]
        }
        Method::Sha256 => {
            let mut h = sha2::Sha256::new();
            hash(&mut |bytes| h.update(bytes));
            h.finalize()[0]
        }
    }
}

/// The baseline: the bare digest over the same bytes, fed in the same chunks.
pub fn bare_digest(image: &[u8], chunk: usize, method: Method) -> u8 {
    match method {
        Method::Md5 => {
            let mut h = md5::Md5::new();
            for piece in image.chunks(chunk) {
                h.update(piece);
            }
            h.finalize()[0]
        }
        Method::Sha256 => {
            let mut h = sha2::Sha256::new();
            for piece in image.chunks(chunk) {
                h.update(piece);
            }
            h.finalize()[0]
        }
    }
}
