//! The MQTT-channel download (docs/protocol.md §6): answers block requests on
//! `/sys/{pk}/{dn}/thing/file/download` with binary frames on `.../download_reply`, carries out
//! the per-device reply faults (drop, delay, duplicate, reorder, corrupt, wrong offset) and
//! records every answer for tests, like the firmware server does for HTTP.

use crate::faults::{Armed, Fault, FaultTable};
use crate::frames::{self, Header, HeaderData};
use crate::history::{History, RECORDS_KEPT};
use crate::jobs::{BlockRefusal, Engine, Outbound};
use crate::messages::{download_reply_topic, BlockRequest};
use crate::DeviceId;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Largest block a request may ask for. The SDKs ask for 2–10 KiB; the cap keeps every reply
/// well inside the embedded broker's 1 MiB packet limit.
pub const MAX_BLOCK_SIZE: u64 = 256 * 1024;

/// One block request as the simulator answered it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BlockRecord {
    /// The device that asked.
    pub device: DeviceId,
    /// `fileInfo.streamId` (0 when missing).
    pub stream_id: u64,
    /// `fileInfo.fileId` (0 when missing).
    pub file_id: u64,
    /// The package file it named, when the stream and file were found.
    pub file: Option<String>,
    /// `fileBlock.offset` (0 when missing).
    pub offset: u64,
    /// `fileBlock.size` as requested (0 when missing).
    pub size: u64,
    /// `code` of the reply: 200, or 400/403/404 for a refused request.
    pub code: u16,
    /// Data bytes in the reply (`bSize`): `size`, or what is left of the file.
    pub sent: u64,
}

/// A reply held back by [`Fault::ReorderReply`] until the device's next reply.
struct Held {
    frames: Vec<Vec<u8>>,
    fault: Armed<()>,
}

/// Replies sent late by [`Fault::DelayReply`].
struct Delayed {
    due: Instant,
    topic: String,
    frames: Vec<Vec<u8>>,
    fault: Armed<Duration>,
}

/// The block server's state: what it answered, and replies it holds back.
pub(crate) struct BlockServer {
    /// The latest answers (older ones are only counted).
    pub(crate) records: History<BlockRecord>,
    held: BTreeMap<DeviceId, Held>,
    delayed: Vec<Delayed>,
    outbound: Vec<Outbound>,
}

/// A request that checked out: the file's name and the block's bytes.
struct Served {
    file: String,
    file_length: u64,
    offset: u64,
    data: bytes::Bytes,
}

/// A refusal, with the file's length when the file was found.
type Refused = (BlockRefusal, Option<(String, u64)>);

impl Default for BlockServer {
    fn default() -> BlockServer {
        BlockServer {
            records: History::new(RECORDS_KEPT),
            held: BTreeMap::new(),
            delayed: Vec::new(),
            outbound: Vec::new(),
        }
    }
}

impl BlockServer {
    /// Answers one request from `device`, applying its MQTT faults.
    pub(crate) fn serve(
        &mut self,
        engine: &mut Engine,
        faults: &mut FaultTable,
        device: &DeviceId,
        req: &BlockRequest,
        now: Instant,
    ) {
        let topic = download_reply_topic(device);
        let mut record = BlockRecord {
            device: device.clone(),
            stream_id: req.stream_id.unwrap_or(0),
            file_id: req.file_id.unwrap_or(0),
            file: None,
            offset: req.offset.unwrap_or(0),
            size: req.size.unwrap_or(0),
            code: 200,
            sent: 0,
        };
        let served = match check(engine, device, req) {
            Ok(served) => served,
            Err((BlockRefusal(code, message), file)) => {
                if engine.log.admit(device, "refused block requests", now) {
                    tracing::info!("{device} block request refused: {code} {message}");
                }
                let header = Header {
                    code,
                    data: HeaderData {
                        b_offset: record.offset,
                        file_length: file.as_ref().map(|f| f.1),
                        b_size: 0,
                        file_token: req.token.as_deref(),
                    },
                    id: &req.id,
                    message,
                };
                let mut frames = vec![frames::encode(&header, &[])];
                self.release_held(device, &mut frames);
                self.outbound
                    .extend(frames.into_iter().map(|payload| Outbound {
                        topic: topic.clone(),
                        payload,
                    }));
                record.code = code;
                record.file = file.map(|f| f.0);
                self.records.push(record);
                return;
            }
        };
        record.file = Some(served.file.clone());
        record.sent = served.data.len() as u64;
        self.records.push(record);
        let name = served.file.as_str();
        let flag = |wanted: Fault| move |f: &Fault| (*f == wanted).then_some(());
        if let Some(drop) = faults.take(device, name, flag(Fault::DropReply)) {
            drop.fire();
            return;
        }
        let wrong_offset = faults.take(device, name, flag(Fault::WrongOffset));
        let header = Header {
            code: 200,
            data: HeaderData {
                b_offset: served.offset + u64::from(wrong_offset.is_some()),
                file_length: Some(served.file_length),
                b_size: served.data.len() as u64,
                file_token: req.token.as_deref(),
            },
            id: &req.id,
            message: "success",
        };
        let mut frame = frames::encode(&header, &served.data);
        if let Some(wrong) = wrong_offset {
            wrong.fire();
        }
        if let Some(corrupt) = faults.take(device, name, flag(Fault::CorruptBlock)) {
            if frames::corrupt_data_byte(&mut frame, served.data.len() / 2) {
                corrupt.fire();
            }
        }
        let mut frames = match faults.take(device, name, flag(Fault::DuplicateReply)) {
            Some(dup) => {
                dup.fire();
                vec![frame.clone(), frame]
            }
            None => vec![frame],
        };
        if !self.release_held(device, &mut frames) {
            if let Some(reorder) = faults.take(device, name, flag(Fault::ReorderReply)) {
                let held = Held {
                    frames,
                    fault: reorder,
                };
                self.held.insert(device.clone(), held);
                return;
            }
        }
        let delay = faults.take(device, name, |f| match f {
            Fault::DelayReply(d) => Some(*d),
            _ => None,
        });
        match delay {
            Some(fault) => self.delayed.push(Delayed {
                due: now + fault.value,
                topic,
                frames,
                fault,
            }),
            None => self
                .outbound
                .extend(frames.into_iter().map(|payload| Outbound {
                    topic: topic.clone(),
                    payload,
                })),
        }
    }

    /// Appends a reply held back for `device`, if any, after `frames`; that is when a reorder
    /// fault really happened.
    fn release_held(&mut self, device: &DeviceId, frames: &mut Vec<Vec<u8>>) -> bool {
        let Some(held) = self.held.remove(device) else {
            return false;
        };
        held.fault.fire();
        frames.extend(held.frames);
        true
    }

    /// Sends the delayed replies that are due.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        let (due, later) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|d| d.due <= now);
        self.delayed = later;
        for d in due {
            d.fault.fire();
            let topic = d.topic;
            self.outbound
                .extend(d.frames.into_iter().map(|payload| Outbound {
                    topic: topic.clone(),
                    payload,
                }));
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.delayed.iter().map(|d| d.due).min()
    }

    pub(crate) fn take_outbound(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbound)
    }
}

/// Validates a request against the device's active tasks and the file's length.
fn check(engine: &mut Engine, device: &DeviceId, req: &BlockRequest) -> Result<Served, Refused> {
    let bad = |message| (BlockRefusal(400, message), None);
    if let Some(why) = req.malformed {
        return Err(bad(why));
    }
    let (Some(stream_id), Some(file_id)) = (req.stream_id, req.file_id) else {
        return Err(bad("missing fileInfo.streamId or fileInfo.fileId"));
    };
    let (Some(offset), Some(size)) = (req.offset, req.size) else {
        return Err(bad("missing fileBlock.offset or fileBlock.size"));
    };
    if size == 0 || size > MAX_BLOCK_SIZE {
        return Err(bad("fileBlock.size out of range"));
    }
    let file = engine
        .stream_file(device, stream_id, file_id)
        .map_err(|r| (r, None))?;
    let len = file.data.len() as u64;
    if offset >= len {
        let refusal = BlockRefusal(400, "fileBlock.offset past the end of the file");
        return Err((refusal, Some((file.name, len))));
    }
    let end = offset.saturating_add(size).min(len);
    // Both bounds are at most the file's length, which is in memory.
    let data = file.data.slice(offset as usize..end as usize);
    Ok(Served {
        file: file.name,
        file_length: len,
        offset,
        data,
    })
}
