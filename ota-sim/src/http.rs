//! The firmware server: signed URLs, `Range` requests and the per-device faults, plus the JSON
//! status page. It speaks plain HTTP/1.1; a TLS acceptor would wrap the listener in `spawn`.
//! It reaches the packages, faults and request log that the world owns only through the
//! [`Firmware`] and [`FirmwareState`] traits, so it imports nothing of the world.

use crate::faults::{body_stream, BodyPlan, Fault, FaultTable};
use crate::model::DeviceId;
use crate::signing::{SignedQuery, UrlError, UrlSigner};
use crate::Error;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use serde::Serialize;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant};

/// One firmware request as the server answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DownloadRecord {
    /// The device the URL names in its query (`pk`, `dn`), even when the request was refused
    /// (see `refused`); `None` when the query names none.
    pub device: Option<DeviceId>,
    /// Why the signed URL was refused (the OSS error code of the 403: `AccessDenied` for an
    /// expired URL, `SignatureDoesNotMatch` for an altered one); `None` when it checked out.
    pub refused: Option<String>,
    /// HTTP status sent.
    pub status: u16,
    /// The `Range` header, as sent.
    pub range: Option<String>,
    /// Body bytes promised by `Content-Length`.
    pub content_length: u64,
    /// The package file asked for (`None` when the path names none).
    pub file: Option<String>,
}

/// The world as the firmware server sees it (implemented by the world's shared state).
pub(crate) trait Firmware: Send + Sync + 'static {
    /// The state one request reads and changes under one lock.
    type State: FirmwareState;
    /// Locks the state.
    fn lock(&self) -> MutexGuard<'_, Self::State>;
    /// Checks the signed URLs.
    fn signer(&self) -> &UrlSigner;
    /// Wakes whoever waits for a change, after a request was recorded.
    fn notify(&self);
}

/// What one firmware request needs of the locked state.
pub(crate) trait FirmwareState {
    /// The `/status` document.
    fn status(&self) -> serde_json::Value;
    /// The name and bytes of the package file `path` names.
    fn file(&self, path: &str) -> Option<(String, Bytes)>;
    /// Whether `device`'s URL for `path` expiring at `expires` was revoked.
    fn is_revoked(&self, device: &DeviceId, path: &str, expires: u64) -> bool;
    /// Revokes that URL: every later request with it is refused.
    fn revoke(&mut self, device: &DeviceId, path: &str, expires: u64);
    /// The injected faults.
    fn faults(&mut self) -> &mut FaultTable;
    /// Whether a refused download of `device` may be logged now (a storm is coalesced).
    fn log_refusal(&mut self, device: &DeviceId, now: Instant) -> bool;
    /// Keeps an answer for tests and `/status`.
    fn record(&mut self, record: DownloadRecord);
}

/// A `Range: bytes=...` header with one range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RangeSpec {
    From(u64),
    FromTo(u64, u64),
    Suffix(u64),
}

/// Parses a single byte range; anything else is ignored as RFC 9110 allows.
fn parse_range(value: &str) -> Option<RangeSpec> {
    let spec = value.trim().strip_prefix("bytes=")?.trim();
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let num = |s: &str| s.trim().parse::<u64>().ok();
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (false, true) => Some(RangeSpec::From(num(a)?)),
        (false, false) => {
            let (a, b) = (num(a)?, num(b)?);
            (a <= b).then_some(RangeSpec::FromTo(a, b))
        }
        (true, false) => Some(RangeSpec::Suffix(num(b)?)),
        (true, true) => None,
    }
}

/// The half-open byte span a range selects, or `None` when it is unsatisfiable (416).
fn resolve(spec: RangeSpec, size: u64) -> Option<(u64, u64)> {
    match spec {
        RangeSpec::From(n) => (n < size).then_some((n, size)),
        RangeSpec::FromTo(n, m) => (n < size).then_some((n, (m + 1).min(size))),
        RangeSpec::Suffix(k) => (k > 0 && size > 0).then_some((size - k.min(size), size)),
    }
}

fn xml_error(status: u16, code: &str, message: &str) -> Response {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error>\n  <Code>{code}</Code>\n  \
         <Message>{message}</Message>\n  <RequestId>ota-sim</RequestId>\n  \
         <HostId>ota-sim</HostId>\n</Error>\n"
    );
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/xml")
        .header(header::CONTENT_LENGTH, body.len())
        .body(Body::from(body))
        .unwrap_or_default()
}

/// The routes: `GET /status` and `GET /fw/{package}/{file}?...`.
fn router<F: Firmware>(shared: Arc<F>) -> Router {
    Router::new()
        .route("/status", get(status::<F>))
        .route("/fw/:package/:file", get(firmware::<F>))
        .with_state(shared)
}

async fn status<F: Firmware>(State(shared): State<Arc<F>>) -> Response {
    let body = serde_json::to_string_pretty(&shared.lock().status()).unwrap_or_default();
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

async fn firmware<F: Firmware>(
    State(shared): State<Arc<F>>,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let query = SignedQuery::parse(uri.query().unwrap_or(""));
    let device = match shared.signer().verify(uri.path(), &query) {
        Ok(d) => d,
        Err(e) => {
            // The named device is unproven, but tests want to see its refused requests.
            let device = match (query.product_key, query.device_name) {
                (Some(pk), Some(dn)) => Some(DeviceId::new(pk, dn)),
                _ => None,
            };
            let mut world = shared.lock();
            let now = Instant::now();
            let log = match &device {
                Some(d) => world.log_refusal(d, now),
                None => true,
            };
            if log {
                tracing::info!("download refused: {e}");
            }
            world.record(DownloadRecord {
                device,
                refused: Some(e.code().to_owned()),
                status: 403,
                range,
                content_length: 0,
                file: None,
            });
            drop(world);
            shared.notify();
            return xml_error(403, e.code(), &e.to_string());
        }
    };
    let expires = query.expires.as_deref().and_then(|e| e.parse().ok());
    let (response, record) = answer(&*shared, uri.path(), device, expires.unwrap_or(0), range);
    shared.lock().record(record);
    shared.notify();
    response
}

/// Decides the answer under the lock; the body is streamed after it is released.
fn answer<F: Firmware>(
    shared: &F,
    path: &str,
    device: DeviceId,
    expires: u64,
    range: Option<String>,
) -> (Response, DownloadRecord) {
    let mut world = shared.lock();
    let mut record = DownloadRecord {
        device: Some(device.clone()),
        refused: None,
        status: 200,
        range: range.clone(),
        content_length: 0,
        file: None,
    };
    let Some((file, data)) = world.file(path) else {
        record.status = 404;
        return (
            xml_error(404, "NoSuchKey", "The specified key does not exist."),
            record,
        );
    };
    record.file = Some(file.clone());
    if world.is_revoked(&device, path, expires) {
        record.status = 403;
        record.refused = Some(UrlError::Expired.code().to_owned());
        return (
            xml_error(403, UrlError::Expired.code(), "Request has expired"),
            record,
        );
    }
    let status_fault = world.faults().take(&device, &file, |f| match f {
        Fault::Status(c) => Some(*c),
        _ => None,
    });
    if let Some(fault) = status_fault {
        fault.fire();
        record.status = fault.value;
        let (code, message) = match fault.value {
            403 => (UrlError::Expired.code(), "Injected fault: access denied"),
            404 => ("NoSuchKey", "The specified key does not exist."),
            _ => ("InternalError", "Injected fault: internal error"),
        };
        return (xml_error(fault.value, code, message), record);
    }
    let size = data.len() as u64;
    let mut spec = range.as_deref().and_then(parse_range);
    if spec.is_some() {
        if let Some(ignore) = world
            .faults()
            .take(&device, &file, |f| (*f == Fault::IgnoreRange).then_some(()))
        {
            ignore.fire();
            spec = None;
        }
    }
    let (start, end) = match spec {
        None => (0, size),
        Some(spec) => match resolve(spec, size) {
            Some(span) => span,
            None => {
                record.status = 416;
                let response = Response::builder()
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .header(header::CONTENT_RANGE, format!("bytes */{size}"))
                    .header(header::CONTENT_LENGTH, 0)
                    .body(Body::empty())
                    .unwrap_or_default();
                return (response, record);
            }
        },
    };
    let len = end - start;
    let cut = world.faults().take(&device, &file, |f| match f {
        Fault::CutAfter(n) if *n < len => Some((*n, false)),
        Fault::ExpireAfter(n) if *n < len => Some((*n, true)),
        _ => None,
    });
    if cut.as_ref().is_some_and(|c| c.value.1) {
        // The URL dies with this response: every later request with it is refused.
        world.revoke(&device, path, expires);
    }
    let plan = BodyPlan {
        cut_after: cut.map(|c| c.map(|(n, _)| n)),
        stall: world.faults().take(&device, &file, |f| match f {
            Fault::Stall { after, duration } if *after < len => Some((*after, *duration)),
            _ => None,
        }),
        corrupt: world.faults().take(&device, &file, |f| match f {
            Fault::CorruptByte(k) if (start..end).contains(k) => Some(*k - start),
            _ => None,
        }),
        rate: world.faults().take(&device, &file, |f| match f {
            Fault::RateLimit(r) => Some(*r),
            _ => None,
        }),
    };
    drop(world);
    let body = data.slice(start as usize..end as usize);
    let mut builder = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ACCEPT_RANGES, "bytes");
    if spec.is_some() {
        record.status = 206;
        builder = builder.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", end - 1),
        );
    }
    record.content_length = len;
    let response = builder
        .body(Body::from_stream(body_stream(body, plan)))
        .unwrap_or_default();
    (response, record)
}

/// Serves HTTP on its own thread with a single-threaded tokio runtime. Header names go out in
/// title case (`Content-Length`, `Content-Range`), as OSS writes them: the official SDKs look
/// for them with a case-sensitive match (docs/protocol.md §5).
pub(crate) fn spawn<F: Firmware>(
    listener: std::net::TcpListener,
    shared: Arc<F>,
) -> Result<tokio::sync::oneshot::Sender<()>, Error> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("ota-sim-http".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!("firmware server: {e}"),
                };
                let router = router(shared);
                let serve = async {
                    loop {
                        let tcp = match listener.accept().await {
                            Ok((tcp, _)) => tcp,
                            Err(e) => {
                                // Out of file descriptors and the like: wait, do not spin.
                                tracing::warn!("firmware server accept: {e}");
                                tokio::time::sleep(Duration::from_millis(100)).await;
                                continue;
                            }
                        };
                        let _ = tcp.set_nodelay(true);
                        let service = hyper_util::service::TowerToHyperService::new(router.clone());
                        tokio::spawn(async move {
                            let connection = hyper::server::conn::http1::Builder::new()
                                .title_case_headers(true)
                                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service);
                            if let Err(e) = connection.await {
                                tracing::debug!("firmware connection: {e}");
                            }
                        });
                    }
                };
                futures_util::future::select(std::pin::pin!(serve), stop_rx).await;
            });
        })?;
    Ok(stop_tx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_and_resolve() {
        assert_eq!(parse_range("bytes=10-"), Some(RangeSpec::From(10)));
        assert_eq!(parse_range("bytes=10-19"), Some(RangeSpec::FromTo(10, 19)));
        assert_eq!(parse_range("bytes=-5"), Some(RangeSpec::Suffix(5)));
        assert_eq!(parse_range("bytes=5-1"), None);
        assert_eq!(parse_range("bytes=0-1,5-6"), None);
        assert_eq!(parse_range("items=0-1"), None);
        assert_eq!(parse_range("bytes=x-"), None);
        assert_eq!(resolve(RangeSpec::From(10), 100), Some((10, 100)));
        assert_eq!(resolve(RangeSpec::From(100), 100), None);
        assert_eq!(resolve(RangeSpec::FromTo(90, 200), 100), Some((90, 100)));
        assert_eq!(resolve(RangeSpec::Suffix(500), 100), Some((0, 100)));
        assert_eq!(resolve(RangeSpec::Suffix(0), 100), None);
    }
}
