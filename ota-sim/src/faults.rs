//! Per-device faults of the firmware server and of the MQTT-channel block replies, and the body
//! stream that carries out the HTTP ones. Every fault counts the times it really fired, so a
//! test can prove the path it meant to exercise ran.

use crate::DeviceId;
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use std::io;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Largest body chunk handed to the HTTP stack at once.
const CHUNK: usize = 64 * 1024;

/// A misbehaviour of the firmware server (HTTP) or of the MQTT-channel block replies. The MQTT
/// ones apply to replies that carry data (code 200), never to error replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection after this many body bytes of a response (fires only when the
    /// response is longer).
    CutAfter(u64),
    /// The URL expires mid-download: close the connection after this many body bytes (like
    /// [`Fault::CutAfter`]); from then on that URL (and any issued before it) is answered
    /// `403 AccessDenied`, as an expired OSS URL is, until the device asks for a fresh one
    /// (firmware/get or the legacy request) and uses it.
    ExpireAfter(u64),
    /// Answer a ranged request with `200` and the whole file.
    IgnoreRange,
    /// Answer with this status (403, 404, 500, ...) and an OSS-like XML error body.
    Status(u16),
    /// Flip every bit of the byte at this offset of the file (fires when it is sent).
    CorruptByte(u64),
    /// Send `after` body bytes, then nothing for `duration`, then close the connection.
    Stall {
        /// Bytes sent before the stall.
        after: u64,
        /// How long nothing is sent.
        duration: Duration,
    },
    /// Send the body at this many bytes per second.
    RateLimit(u64),
    /// MQTT: send no reply to a block request.
    DropReply,
    /// MQTT: send the reply this much later (replies to later requests are not held up).
    DelayReply(Duration),
    /// MQTT: send the reply twice.
    DuplicateReply,
    /// MQTT: hold the reply back and send it right after the next reply to the same device
    /// (fires when it is sent out of order).
    ReorderReply,
    /// MQTT: flip every bit of the block's middle data byte, keeping the CRC of the true data.
    CorruptBlock,
    /// MQTT: announce a `bOffset` one past the requested offset (the data is the right one).
    WrongOffset,
    /// Pushes and firmware/get replies carry a `digestsign` that does not verify (docs/protocol.md
    /// §11): well formed, but not the product key's signature of the image.
    WrongSignature,
}

/// How many responses a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Times {
    /// The next applicable response only.
    Once,
    /// This many applicable responses.
    Count(u32),
    /// Every applicable response until cleared.
    Always,
}

/// Handle of an injected fault, to read how often it fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FaultId(pub u32);

/// How often and when a fault fired.
#[derive(Default)]
struct Counter {
    count: AtomicU32,
    /// Unix milliseconds of the first and the latest firing (0: never).
    first_ms: AtomicU64,
    last_ms: AtomicU64,
}

impl Counter {
    fn bump(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        self.count.fetch_add(1, Ordering::SeqCst);
        let _ = self
            .first_ms
            .compare_exchange(0, now, Ordering::SeqCst, Ordering::SeqCst);
        self.last_ms.store(now, Ordering::SeqCst);
    }
}

struct Entry {
    device: DeviceId,
    /// Only responses for this file of a package; `None`: any file.
    file: Option<String>,
    fault: Fault,
    remaining: Option<u32>,
    active: bool,
    times: Times,
    fired: Arc<Counter>,
}

/// All faults ever set; cleared ones stay so their counters remain readable.
#[derive(Default)]
pub(crate) struct FaultTable {
    entries: Vec<Entry>,
}

/// A fault chosen for one response, with the counter to bump when it happens.
#[derive(Clone)]
pub(crate) struct Armed<T> {
    pub(crate) value: T,
    fired: Arc<Counter>,
}

impl<T> Armed<T> {
    pub(crate) fn fire(&self) {
        self.fired.bump();
    }

    /// The same fault with its value changed.
    pub(crate) fn map<U>(self, f: impl FnOnce(T) -> U) -> Armed<U> {
        Armed {
            value: f(self.value),
            fired: self.fired,
        }
    }
}

impl FaultTable {
    pub(crate) fn add(
        &mut self,
        device: DeviceId,
        file: Option<String>,
        fault: Fault,
        times: Times,
    ) -> FaultId {
        let remaining = match times {
            Times::Once => Some(1),
            Times::Count(n) => Some(n),
            Times::Always => None,
        };
        self.entries.push(Entry {
            device,
            file,
            fault,
            remaining,
            active: true,
            times,
            fired: Arc::default(),
        });
        FaultId(self.entries.len() as u32 - 1)
    }

    pub(crate) fn clear(&mut self, device: &DeviceId) {
        for e in self.entries.iter_mut().filter(|e| e.device == *device) {
            e.active = false;
        }
    }

    pub(crate) fn fired(&self, id: FaultId) -> u32 {
        self.entries
            .get(id.0 as usize)
            .map_or(0, |e| e.fired.count.load(Ordering::SeqCst))
    }

    /// Every fault ever set, for `/status`: what, for whom, and whether and when it fired.
    pub(crate) fn report(&self) -> serde_json::Value {
        let entries: Vec<serde_json::Value> = self
            .entries
            .iter()
            .enumerate()
            .map(|(id, e)| {
                let ms = |a: &AtomicU64| Some(a.load(Ordering::SeqCst)).filter(|&t| t > 0);
                let times = match e.times {
                    Times::Once => "once".to_owned(),
                    Times::Always => "always".to_owned(),
                    Times::Count(n) => n.to_string(),
                };
                serde_json::json!({
                    "id": id, "device": e.device, "file": e.file, "fault": e.fault.to_string(),
                    "times": times, "active": e.active,
                    "fired": e.fired.count.load(Ordering::SeqCst),
                    "first_fired_unix_ms": ms(&e.fired.first_ms),
                    "last_fired_unix_ms": ms(&e.fired.last_ms),
                })
            })
            .collect();
        serde_json::Value::Array(entries)
    }

    /// Takes one use of the first active fault of `device` for `file` that `pick` accepts.
    pub(crate) fn take<T>(
        &mut self,
        device: &DeviceId,
        file: &str,
        pick: impl Fn(&Fault) -> Option<T>,
    ) -> Option<Armed<T>> {
        let entry = self.entries.iter_mut().find(|e| {
            e.active
                && e.device == *device
                && e.file.as_deref().is_none_or(|f| f == file)
                && e.remaining != Some(0)
                && pick(&e.fault).is_some()
        })?;
        if let Some(n) = entry.remaining.as_mut() {
            *n -= 1;
        }
        Some(Armed {
            value: pick(&entry.fault)?,
            fired: entry.fired.clone(),
        })
    }
}

/// The faults that act on one response body.
#[derive(Default, Clone)]
pub(crate) struct BodyPlan {
    pub(crate) cut_after: Option<Armed<u64>>,
    pub(crate) stall: Option<Armed<(u64, Duration)>>,
    /// Offset of the byte to corrupt, relative to the start of the body.
    pub(crate) corrupt: Option<Armed<u64>>,
    pub(crate) rate: Option<Armed<u64>>,
}

struct BodyState {
    data: Bytes,
    pos: usize,
    plan: BodyPlan,
    rate_started: bool,
    done: bool,
}

/// The body as a stream that carries out `plan`. A cut or a stall ends in an error, which
/// makes the HTTP server drop the connection short of its `Content-Length`.
pub(crate) fn body_stream(
    data: Bytes,
    plan: BodyPlan,
) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
    let state = BodyState {
        data,
        pos: 0,
        plan,
        rate_started: false,
        done: false,
    };
    futures_util::stream::unfold(state, next_chunk)
}

async fn next_chunk(mut st: BodyState) -> Option<(Result<Bytes, io::Error>, BodyState)> {
    if st.done || st.pos >= st.data.len() {
        return None;
    }
    let to_usize = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    let cut = st.plan.cut_after.as_ref().map(|a| to_usize(a.value));
    let stall = st.plan.stall.as_ref().map(|a| to_usize(a.value.0));
    let stop = cut.into_iter().chain(stall).min();
    if stop.is_some_and(|s| st.pos >= s) {
        st.done = true;
        if let Some(stall) = &st.plan.stall {
            stall.fire();
            tokio::time::sleep(stall.value.1).await;
        } else if let Some(cut) = &st.plan.cut_after {
            cut.fire();
            // Pending once so the server flushes the bytes already handed over before closing.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        return Some((Err(io::Error::other("injected fault: connection cut")), st));
    }
    let mut len = CHUNK;
    if let Some(rate) = &st.plan.rate {
        if !st.rate_started {
            st.rate_started = true;
            rate.fire();
        }
        let per_sec = rate.value.max(1);
        len = to_usize(per_sec / 20).clamp(1, CHUNK);
        tokio::time::sleep(Duration::from_secs_f64(len as f64 / per_sec as f64)).await;
    }
    let end = (st.pos + len)
        .min(stop.unwrap_or(usize::MAX))
        .min(st.data.len());
    let mut chunk = st.data.slice(st.pos..end);
    if let Some(corrupt) = &st.plan.corrupt {
        let k = to_usize(corrupt.value);
        if (st.pos..end).contains(&k) {
            let mut copy = BytesMut::from(&chunk[..]);
            copy[k - st.pos] ^= 0xff;
            chunk = copy.freeze();
            corrupt.fire();
        }
    }
    st.pos = end;
    Some((Ok(chunk), st))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_is_used_up_and_counters_survive_clear() {
        let dev = DeviceId::new("pk", "dn");
        let mut t = FaultTable::default();
        let id = t.add(dev.clone(), None, Fault::Status(500), Times::Once);
        let status = |f: &Fault| match f {
            Fault::Status(c) => Some(*c),
            _ => None,
        };
        let armed = t.take(&dev, "a.bin", status).unwrap();
        assert_eq!(armed.value, 500);
        armed.fire();
        assert!(t.take(&dev, "a.bin", status).is_none());
        assert!(t
            .take(&DeviceId::new("pk", "other"), "a.bin", status)
            .is_none());
        t.clear(&dev);
        assert_eq!(t.fired(id), 1);
    }

    #[test]
    fn always_stays_until_cleared() {
        let dev = DeviceId::new("pk", "dn");
        let mut t = FaultTable::default();
        t.add(dev.clone(), None, Fault::IgnoreRange, Times::Always);
        let pick = |f: &Fault| (*f == Fault::IgnoreRange).then_some(());
        assert!(t.take(&dev, "a.bin", pick).is_some());
        assert!(t.take(&dev, "b.bin", pick).is_some());
        t.clear(&dev);
        assert!(t.take(&dev, "a.bin", pick).is_none());
    }

    #[test]
    fn a_file_fault_applies_to_that_file_only() {
        let dev = DeviceId::new("pk", "dn");
        let mut t = FaultTable::default();
        t.add(
            dev.clone(),
            Some("b.bin".into()),
            Fault::DropReply,
            Times::Always,
        );
        let pick = |f: &Fault| (*f == Fault::DropReply).then_some(());
        assert!(t.take(&dev, "a.bin", pick).is_none());
        assert!(t.take(&dev, "b.bin", pick).is_some());
    }
}
