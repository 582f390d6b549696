//! Firmware downloads with ureq. Each fetch gets a reader thread that fills buffers from the
//! socket and sends them to the agent thread, which digests and writes them: download and MD5
//! run on two cores at once. The buffers travel back for reuse, so the body path does not
//! allocate, and the fixed number of buffers bounds how far the reader runs ahead.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_core::FetchId;

use crate::input::{HttpInput, Input};
use crate::Error;

/// Buffers per fetch: one being filled, one being digested, two in the channel.
const BUFFERS: usize = 4;

struct Active {
    id: FetchId,
    cancel: Arc<AtomicBool>,
    free: SyncSender<Vec<u8>>,
}

/// The HTTP side of one device.
pub(crate) struct Http {
    agent: ureq::Agent,
    inputs: Sender<Input>,
    buffer_size: usize,
    active: Vec<Active>,
    /// Buffers of finished fetches, for the next one.
    spare: Vec<Vec<u8>>,
}

impl Http {
    /// `timeout` bounds connecting, waiting for the response and every read, so a reader
    /// stuck on a dead connection ends about when the core declares the stall.
    pub(crate) fn new(
        tls: ureq::tls::TlsConfig,
        timeout: Duration,
        buffer_size: usize,
        inputs: Sender<Input>,
    ) -> Result<Http, Error> {
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("ota-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Http {
            agent: config.into(),
            inputs,
            buffer_size: buffer_size.max(4096),
            active: Vec::new(),
            spare: Vec::new(),
        })
    }

    /// Starts `GET url` (from `offset` with a Range header) on a reader thread.
    pub(crate) fn fetch(&mut self, id: FetchId, url: &str, offset: u64) {
        let (free, buffers) = mpsc::sync_channel(BUFFERS);
        for _ in 0..BUFFERS {
            let buffer = self
                .spare
                .pop()
                .unwrap_or_else(|| vec![0; self.buffer_size]);
            let _ = free.try_send(buffer);
        }
        let cancel = Arc::new(AtomicBool::new(false));
        let reader = Reader {
            id,
            agent: self.agent.clone(),
            inputs: self.inputs.clone(),
            buffers,
            cancel: cancel.clone(),
        };
        let url = url.to_owned();
        let spawned = std::thread::Builder::new()
            .name("ota-http".into())
            .spawn(move || reader.run(&url, offset));
        if let Err(e) = spawned {
            let reason = format!("cannot start the download thread: {e}");
            let _ = self.inputs.send(Input::Http(id, HttpInput::Failed(reason)));
            return;
        }
        self.active.push(Active { id, cancel, free });
    }

    /// Stops a fetch: its thread ends at its next read, and its late inputs are dropped.
    pub(crate) fn cancel(&mut self, id: FetchId) {
        if let Some(i) = self.active.iter().position(|a| a.id == id) {
            self.active
                .swap_remove(i)
                .cancel
                .store(true, Ordering::SeqCst);
        }
    }

    /// Whether inputs of `id` still matter.
    pub(crate) fn is_active(&self, id: FetchId) -> bool {
        self.active.iter().any(|a| a.id == id)
    }

    /// The fetch ended (body complete or failed).
    pub(crate) fn finished(&mut self, id: FetchId) {
        if let Some(i) = self.active.iter().position(|a| a.id == id) {
            self.active.swap_remove(i);
        }
    }

    /// Gives a body buffer back to its reader (or keeps it for the next fetch).
    pub(crate) fn recycle(&mut self, id: FetchId, buffer: Vec<u8>) {
        let buffer = match self.active.iter().find(|a| a.id == id) {
            Some(active) => match active.free.try_send(buffer) {
                Ok(()) => return,
                Err(mpsc::TrySendError::Full(b) | mpsc::TrySendError::Disconnected(b)) => b,
            },
            None => buffer,
        };
        if self.spare.len() < BUFFERS {
            self.spare.push(buffer);
        }
    }
}

impl Drop for Http {
    fn drop(&mut self) {
        for active in &self.active {
            active.cancel.store(true, Ordering::SeqCst);
        }
    }
}

/// One fetch's thread.
struct Reader {
    id: FetchId,
    agent: ureq::Agent,
    inputs: Sender<Input>,
    buffers: Receiver<Vec<u8>>,
    cancel: Arc<AtomicBool>,
}

impl Reader {
    fn send(&self, input: HttpInput) -> bool {
        !self.cancel.load(Ordering::SeqCst) && self.inputs.send(Input::Http(self.id, input)).is_ok()
    }

    fn run(self, url: &str, offset: u64) {
        let mut request = self.agent.get(url);
        if offset > 0 {
            request = request.header("Range", format!("bytes={offset}-"));
        }
        let response = match request.call() {
            Ok(r) => r,
            Err(e) => {
                self.send(HttpInput::Failed(describe(url, &e)));
                return;
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let content_length = header("content-length").and_then(|v| v.trim().parse().ok());
        let content_range = header("content-range");
        let head = HttpInput::Response {
            status,
            content_length,
            content_range,
        };
        // An error status has an error document as its body, never firmware: the core
        // cancels such a fetch, so its body is not even read.
        if !self.send(head) || !(200..300).contains(&status) {
            return;
        }
        let mut body = response.into_body().into_reader();
        loop {
            // The agent thread hands buffers back; when it is gone, so is this fetch.
            let Ok(mut buffer) = self.buffers.recv() else {
                return;
            };
            if self.cancel.load(Ordering::SeqCst) {
                return;
            }
            let (len, error) = fill(&mut body, &mut buffer);
            if len > 0 && !self.send(HttpInput::Body { buffer, len }) {
                return;
            }
            match error {
                Some(e) => {
                    self.send(HttpInput::Failed(e.to_string()));
                    return;
                }
                None if len == 0 => {
                    self.send(HttpInput::End);
                    return;
                }
                None => {}
            }
        }
    }
}

/// Why a request failed; a TLS handshake rustls cannot complete says what the server offers.
fn describe(url: &str, e: &ureq::Error) -> String {
    if let ureq::Error::Rustls(tls) = e {
        if let Ok(uri) = url.parse::<ureq::http::Uri>() {
            let host = uri.host().unwrap_or_default();
            let port = uri.port_u16().unwrap_or(443);
            if let Some(line) = crate::tls_session::explain(tls, host, port) {
                return format!("TLS failed: {line}");
            }
        }
    }
    e.to_string()
}

/// Longest a filled buffer waits for more bytes before it is handed over.
const BATCH: Duration = Duration::from_millis(5);

/// Reads into `buffer` until it is full, the body ends, or [`BATCH`] has passed since the
/// first byte: few large hand-overs (few thread wake-ups) while the link is fast, prompt
/// delivery (the core sees activity) while it is slow. `(0, None)` is the end of the body;
/// an error comes with the bytes read before it.
fn fill(body: &mut impl Read, buffer: &mut [u8]) -> (usize, Option<io::Error>) {
    let mut len = 0;
    let mut first = None;
    while len < buffer.len() {
        match body.read(&mut buffer[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if first.get_or_insert_with(Instant::now).elapsed() >= BATCH {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (len, Some(e)),
        }
    }
    (len, None)
}
