//! Firmware downloads with ureq. Each fetch gets a thread that connects and reads the
//! response head, so that connecting, TLS and a slow server never hold the agent thread.
//! Then, with [`BodyRead::Lent`], it hands the body reader to the agent thread, which reads
//! the socket straight into the staging block the core lends ([`Http::read_body`]); with
//! [`BodyRead::Thread`] it reads the body itself into buffers that it sends to the agent
//! thread (they travel back for reuse, so the body path does not allocate, and the fixed
//! number of buffers bounds how far the reader runs ahead).

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ota_core::FetchId;

use crate::config::BodyRead;
use crate::input::{BodyStream, HttpInput, Input};
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
    body_read: BodyRead,
    /// The body the agent thread reads ([`BodyRead::Lent`]), once its head is in.
    stream: Option<(FetchId, BodyStream)>,
}

impl Http {
    /// `timeout` bounds connecting, waiting for the response and every read, so a reader
    /// stuck on a dead connection ends about when the core declares the stall.
    pub(crate) fn new(
        tls: ureq::tls::TlsConfig,
        timeout: Duration,
        buffer_size: usize,
        body_read: BodyRead,
        inputs: Sender<Input>,
    ) -> Result<Http, Error> {
        let buffer_size = buffer_size.max(4096);
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            // With the lent block, one socket read fills ureq's buffer: as large as ours.
            .input_buffer_size(match body_read {
                BodyRead::Lent => buffer_size,
                BodyRead::Thread => 128 * 1024,
            })
            .http_status_as_error(false)
            .timeout_connect(Some(timeout))
            .timeout_recv_response(Some(timeout))
            .timeout_per_read(Some(timeout))
            .user_agent(concat!("ota-rs/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(Http {
            agent: config.into(),
            inputs,
            buffer_size,
            active: Vec::new(),
            spare: Vec::new(),
            body_read,
            stream: None,
        })
    }

    /// Starts `GET url` (from `offset` with a Range header) on a reader thread.
    pub(crate) fn fetch(&mut self, id: FetchId, url: &str, offset: u64) {
        let (free, buffers) = mpsc::sync_channel(BUFFERS);
        let pooled = if self.body_read == BodyRead::Thread {
            BUFFERS
        } else {
            0
        };
        for _ in 0..pooled {
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
            body_read: self.body_read,
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
        self.drop_stream(id);
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
        self.drop_stream(id);
        if let Some(i) = self.active.iter().position(|a| a.id == id) {
            self.active.swap_remove(i);
        }
    }

    fn drop_stream(&mut self, id: FetchId) {
        if self.stream.as_ref().is_some_and(|(s, _)| *s == id) {
            self.stream = None;
        }
    }

    /// The body of `id` is the agent thread's to read from now on ([`Http::read_body`]).
    pub(crate) fn stream(&mut self, id: FetchId, body: BodyStream) {
        if self.is_active(id) {
            self.stream = Some((id, body));
        }
    }

    /// The fetch whose body the agent thread reads, if any.
    pub(crate) fn streaming(&self) -> Option<FetchId> {
        self.stream.as_ref().map(|(id, _)| *id)
    }

    /// One read of the streamed body into `buf` (blocking until some bytes come, the body
    /// ends, or the read times out); `Ok(0)` is the end of the body.
    pub(crate) fn read_body(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some((_, body)) = self.stream.as_mut() else {
            return Ok(0);
        };
        loop {
            match body.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                result => return result,
            }
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
    body_read: BodyRead,
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
        if self.body_read == BodyRead::Lent {
            self.send(HttpInput::Stream(BodyStream(Box::new(body))));
            return;
        }
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
