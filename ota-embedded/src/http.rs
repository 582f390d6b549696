//! One firmware download with reqwless: GET with `Range: bytes=N-`, the status and the
//! `Content-Length`/`Content-Range` headers, then the body (sized, chunked or until close)
//! chunk by chunk. The stream comes from the driver's [`Connect`]or (TLS for `https://`,
//! with the URL's host as the server name) and is handed to reqwless as a plain
//! connection: reqwless only frames HTTP over it.
//!
//! The download does not know the agent: it reports to a [`BodySink`], which the driver
//! implements by feeding the agent and performing what it asks (writes, record saves, MQTT).
//! Body bytes are read straight into the staging block the agent lends ([`read_body`]):
//! the agent hashes them where they lie, and no body byte is copied on the way to flash.

use core::fmt::Write as _;

use embassy_futures::select::{select, Either};
use embedded_io_async::Read;
use nourl::{Url, UrlScheme};
use ota_core::{Agent, BodyBuffer, FetchId, Instant};
use reqwless::client::HttpConnection;
use reqwless::request::{Request, RequestBuilder};

use crate::clock::Clock;
use crate::connect::{Connect, Security};
use crate::error::Error;

/// Bytes of response headers (and body read-ahead) reqwless may buffer.
pub const HEADER_BUF_LEN: usize = 2048;
/// Longest `Content-Range` value kept.
const MAX_CONTENT_RANGE: usize = 64;

/// The status line and headers the agent wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head<'a> {
    pub(crate) status: u16,
    pub(crate) content_length: Option<u64>,
    pub(crate) content_range: Option<&'a str>,
}

/// Whether the download goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// The agent cancelled it (or a reboot is due): drop the connection, report nothing.
    Stop,
}

/// How a download ended, for the driver to report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The body ended cleanly (`HttpEnd`).
    End,
    /// It failed (`HttpFailed` with this reason).
    Failed(&'static str),
    /// The sink stopped it; nothing to report.
    Stopped,
}

/// Where the download's events go.
#[allow(async_fn_in_trait)]
pub(crate) trait BodySink {
    /// Tells the current download apart from a later one (the driver's fetch, or the
    /// gateway's sub-device and fetch).
    type Key: Copy;
    /// The sink's clock, read around each body read.
    type Clock: Clock;
    /// The status and headers arrived.
    async fn response(&mut self, head: Head<'_>) -> Flow;
    /// The current download: its key, the agent that takes its bytes, its fetch and the
    /// clock; `None` when the download was cancelled.
    fn current(&mut self) -> Option<(Self::Key, &mut Agent, FetchId, &Self::Clock)>;
    /// Performs what the agent asks after a body read; whether download `key` goes on.
    async fn settle(&mut self, key: Self::Key) -> Flow;
    /// The agent refused an input or stalled: keep `error` for the driver's caller.
    fn fail(&mut self, error: Error);
    /// Between two reads: serve MQTT, keep-alive.
    async fn idle(&mut self) -> Flow;
    /// When to give up waiting for the network (the agent's deadline).
    fn deadline(&self) -> Option<Instant>;
    /// Sleeps until `at` (the sink owns the clock).
    async fn sleep_until(&self, at: Instant);
    /// The deadline passed: let the agent decide.
    async fn timed_out(&mut self) -> Flow;
}

/// Waits for `work` or the sink's deadline. On timeout, `work` is dropped (the connection is
/// then abandoned) and the agent is told.
async fn guarded<S: BodySink, F: core::future::Future>(
    sink: &mut S,
    work: F,
) -> Result<F::Output, Ending> {
    let out = match sink.deadline() {
        None => Some(work.await),
        Some(at) => match select(work, sink.sleep_until(at)).await {
            Either::First(out) => Some(out),
            Either::Second(()) => None,
        },
    };
    match out {
        Some(out) => Ok(out),
        None => Err(timed_out_ending(sink.timed_out().await)),
    }
}

/// GETs `url` from byte `offset` and streams the answer into `sink`.
pub(crate) async fn fetch<H, S>(
    connector: &H,
    url: &str,
    offset: u64,
    header_buf: &mut [u8],
    sink: &mut S,
) -> Ending
where
    H: Connect,
    S: BodySink,
{
    let Ok(parsed) = Url::parse(url) else {
        return Ending::Failed("invalid URL");
    };
    let security = match parsed.scheme() {
        UrlScheme::HTTPS => Security::Tls,
        UrlScheme::HTTP => Security::Plain,
        _ => return Ending::Failed("not an http(s) URL"),
    };
    let mut range: heapless::String<32> = heapless::String::new();
    // "bytes=" and 20 digits fit.
    let _ = write!(range, "bytes={offset}-");
    let headers = [("Range", range.as_str())];
    let headers = if offset > 0 {
        &headers[..]
    } else {
        &headers[..0]
    };

    let (host, port) = (parsed.host(), parsed.port_or_default());
    let opened = guarded(sink, connector.connect(host, port, security)).await;
    let mut conn = match opened {
        Ok(Ok(stream)) => HttpConnection::Plain(stream),
        Ok(Err(e)) => return Ending::Failed(e.reason()),
        Err(ending) => return ending,
    };
    let request = Request::get(parsed.path())
        .host(host)
        .headers(headers)
        .build();
    let response = match guarded(sink, conn.send(request, header_buf)).await {
        Ok(Ok(response)) => response,
        Ok(Err(e)) => return Ending::Failed(reason(&e)),
        Err(ending) => return ending,
    };
    let mut content_range: heapless::String<MAX_CONTENT_RANGE> = heapless::String::new();
    let mut has_range = false;
    for (name, value) in response.headers() {
        if name.eq_ignore_ascii_case("content-range") {
            if let Ok(value) = core::str::from_utf8(value) {
                has_range = content_range.push_str(value.trim()).is_ok();
            }
        }
    }
    let head = Head {
        status: response.status.0,
        content_length: response.content_length.map(|n| n as u64),
        content_range: has_range.then_some(content_range.as_str()),
    };
    if sink.response(head).await == Flow::Stop {
        return Ending::Stopped;
    }
    let mut body = response.body().reader();
    loop {
        if let Some(ending) = read_into_agent(sink, &mut body).await {
            return ending;
        }
        if sink.idle().await == Flow::Stop {
            return Ending::Stopped;
        }
    }
}

/// Reads body bytes into the current download's agent and performs what they lead to, until
/// one read was taken (`None`: serve the rest of the world, then read again) or the download
/// ends here. A block still full after the sink performed every write means the agent waits
/// for something that never comes: that is [`Error::Stuck`].
async fn read_into_agent<S, R>(sink: &mut S, body: &mut R) -> Option<Ending>
where
    S: BodySink,
    R: Read<Error = reqwless::Error>,
{
    let mut refused = 0;
    loop {
        let Some((key, agent, fetch, clock)) = sink.current() else {
            return Some(Ending::Stopped);
        };
        let read = read_body(agent, fetch, clock, body).await;
        match read {
            BodyRead::Filled => {}
            BodyRead::Full if refused == 0 => refused += 1,
            BodyRead::Full => {
                sink.fail(Error::Stuck);
                return Some(Ending::Stopped);
            }
            BodyRead::Unwanted => return Some(Ending::Stopped),
            BodyRead::End => return Some(Ending::End),
            BodyRead::Failed(reason) => return Some(Ending::Failed(reason)),
            BodyRead::TimedOut => return Some(timed_out_ending(sink.timed_out().await)),
            BodyRead::Agent(e) => {
                sink.fail(Error::Agent(e));
                return Some(Ending::Stopped);
            }
        }
        if sink.settle(key).await == Flow::Stop {
            return Some(Ending::Stopped);
        }
        if matches!(read, BodyRead::Filled) {
            return None;
        }
    }
}

/// What one [`read_body`] did.
enum BodyRead {
    /// Bytes were read into the lent block and handed to the agent: perform its actions.
    Filled,
    /// Back-pressure: the agent's staging block is full or being written.
    Full,
    /// The agent no longer wants this fetch's bytes.
    Unwanted,
    /// The body ended.
    End,
    /// The read failed.
    Failed(&'static str),
    /// The agent's deadline passed while waiting for bytes (the read was dropped).
    TimedOut,
    /// The agent refused an input.
    Agent(ota_core::Error),
}

/// Reads body bytes of `fetch` straight into the staging block `agent` lends
/// ([`Agent::body_buffer`]), racing the read against the agent's deadline, then tells the
/// agent how many arrived ([`Agent::body_filled`]).
async fn read_body<R, C>(agent: &mut Agent, fetch: FetchId, clock: &C, body: &mut R) -> BodyRead
where
    R: Read<Error = reqwless::Error>,
    C: Clock,
{
    let deadline = agent.poll_timeout();
    let buffer = match agent.body_buffer(clock.now(), fetch) {
        Ok(BodyBuffer::Lent(buffer)) => buffer,
        Ok(BodyBuffer::Full) => return BodyRead::Full,
        Ok(BodyBuffer::Unwanted) => return BodyRead::Unwanted,
        Err(e) => return BodyRead::Agent(e),
    };
    let read = match deadline {
        None => body.read(buffer).await,
        Some(at) => match select(body.read(buffer), clock.sleep_until(at)).await {
            Either::First(read) => read,
            Either::Second(()) => return BodyRead::TimedOut,
        },
    };
    match read {
        Ok(0) => BodyRead::End,
        Ok(n) => match agent.body_filled(clock.now(), fetch, n) {
            Ok(_) => BodyRead::Filled,
            Err(e) => BodyRead::Agent(e),
        },
        Err(e) => BodyRead::Failed(reason(&e)),
    }
}

/// What a sink makes of a timeout while reading: the agent decides (see [`guarded`]).
fn timed_out_ending(flow: Flow) -> Ending {
    match flow {
        Flow::Stop => Ending::Stopped,
        // The stream was interrupted mid-read and cannot be trusted any more.
        Flow::Continue => Ending::Failed("timed out"),
    }
}

/// A short description of a reqwless error for the failure report.
fn reason(e: &reqwless::Error) -> &'static str {
    use reqwless::Error as E;
    match e {
        E::Dns => "DNS lookup failed",
        E::InvalidUrl(_) => "invalid URL",
        E::Network(_) | E::ConnectionAborted => "connection failed",
        _ => "HTTP error",
    }
}
