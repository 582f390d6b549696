//! What the driving loop waits for: the one channel that the MQTT, HTTP, writer and
//! health-check threads send into and the driver (`device`, or the gateway's loop) reads.
//! It lives apart from all of them so that the threads and the driver depend on it, not on
//! each other.

use ota_core::FetchId;

/// Everything the agent thread waits for.
pub(crate) enum Input {
    Connected,
    Disconnected(String),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    /// The first connection failed and the configuration says to give up.
    MqttFatal(String),
    Http(FetchId, HttpInput),
    Health(bool),
    /// The writer thread finished a write (its result waits in the writer).
    Written,
    /// The application's answer to an offered task.
    Decision(bool),
    Stop,
}

/// What a reader thread reports about its fetch.
#[derive(Debug)]
pub(crate) enum HttpInput {
    /// Status line and the headers the core checks.
    Response {
        status: u16,
        content_length: Option<u64>,
        content_range: Option<String>,
    },
    /// `buffer[..len]` is body; hand the buffer back with `Http::recycle`.
    Body { buffer: Vec<u8>, len: usize },
    /// The body ended cleanly.
    End,
    /// Connect, TLS, reset, read timeout...
    Failed(String),
}
