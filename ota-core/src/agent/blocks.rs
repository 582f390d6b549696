//! The MQTT-channel download (docs/protocol.md §6): block requests on `thing/file/download`,
//! checked reply frames on `download_reply`, a bounded window of requests in flight, a reply
//! timeout with bounded retries, and the same staging, digest, checkpoints and resume as HTTP.

use alloc::string::String;
use alloc::vec::Vec;

use super::actions::{Queued, Topic};
use super::{swap_remove, Agent, State};
use crate::mqtt_frame::{parse_block_reply, FrameError};
use crate::task::{Channel, Task};
use crate::time::Instant;
use crate::uplink::{encode_file_download_request, FailureCode};

/// A block request waiting for its reply.
#[derive(Clone, Copy, Debug)]
struct Outstanding {
    offset: u64,
    size: u64,
    deadline: Instant,
}

/// Block-transfer state of one MQTT-channel download.
#[derive(Debug)]
pub(super) struct Blocks {
    stream_id: u64,
    file_id: u64,
    /// Sent as `fileToken` and expected back: replies meant for an older task are told apart.
    token: String,
    outstanding: Vec<Outstanding>,
    /// Replies that arrived but are not staged yet, by offset (at most one window).
    arrived: Vec<(u64, Vec<u8>)>,
    /// First byte not yet requested.
    next_offset: u64,
}

impl Blocks {
    /// `Some` for an MQTT-channel task, starting at `offset`.
    pub(super) fn for_task(task: &Task, generation: u32, offset: u64) -> Option<Blocks> {
        match task.channel {
            Channel::Mqtt { stream_id, file_id } => Some(Blocks {
                stream_id,
                file_id,
                token: text!("ota", generation),
                outstanding: Vec::new(),
                arrived: Vec::new(),
                next_offset: offset,
            }),
            Channel::Http { .. } => None,
        }
    }

    /// The same image came with (maybe) another stream: ask for it there from now on.
    pub(super) fn adopt(&mut self, task: &Task) {
        if let Channel::Mqtt { stream_id, file_id } = task.channel {
            (self.stream_id, self.file_id) = (stream_id, file_id);
        }
    }

    /// After a reconnect no reply to earlier requests can be trusted to come: forget them,
    /// keep what arrived contiguously from `received`, and ask again from its end.
    pub(super) fn restart(&mut self, received: u64) {
        self.outstanding.clear();
        // At most a window of blocks: the block at `end` is searched for and swapped to the
        // front part, the rest dropped. Neither `sort_by_key` (2.5 KiB) nor a sort and
        // `retain` (flash, issue #21).
        let (mut end, mut kept) = (received, 0);
        while let Some(i) = self.arrived[kept..]
            .iter()
            .position(|(offset, _)| *offset == end)
        {
            if let (front @ [_, ..], [found, ..]) = self.arrived[kept..].split_at_mut(i) {
                // Two distinct elements: `mem::swap`, whose copies do not overlap
                // (`slice::swap` may, and links `memmove`; see `remove_in_order`).
                core::mem::swap(&mut front[0], found);
            }
            end += self.arrived[kept].1.len() as u64;
            kept += 1;
        }
        self.arrived.truncate(kept);
        self.next_offset = end;
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.outstanding.iter().map(|o| o.deadline).min()
    }
}

impl Agent {
    /// Feeds arrived blocks, in order, into the staging block as far as it has room.
    pub(super) fn stage_arrived_blocks(&mut self) {
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        // Taken out for the loop, so that `stage` may borrow the download.
        let Some(mut blocks) = d.blocks.take() else {
            return;
        };
        let size = d.task.size;
        let mut staged_any = false;
        while let Some(i) = blocks
            .arrived
            .iter()
            .position(|(offset, _)| *offset == d.received)
        {
            let n = d.stage(&mut self.ring, &blocks.arrived[i].1, size);
            staged_any |= n > 0;
            let (offset, data) = &mut blocks.arrived[i];
            if n == data.len() {
                swap_remove(&mut blocks.arrived, i);
            } else {
                // The rest into a new buffer, not shifted in place: no `memmove` linked
                // (see `remove_in_order`).
                *data = data.split_off(n);
                *offset += n as u64;
                break; // the staging block is full
            }
        }
        d.blocks = Some(blocks);
        if staged_any {
            self.report_progress();
        }
    }

    /// Keeps the window full: one request per free slot while online.
    pub(super) fn request_blocks(&mut self) {
        let block_size = u64::from(self.config.mqtt.block_size);
        let (window, timeout, now) = (
            usize::from(self.config.mqtt.window),
            self.config.mqtt.reply_timeout,
            self.now,
        );
        if !self.online {
            return;
        }
        loop {
            let State::Downloading(d) = &mut self.state else {
                return;
            };
            let size = d.task.size;
            let Some(blocks) = d.blocks.as_mut() else {
                return;
            };
            if blocks.outstanding.len() + blocks.arrived.len() >= window
                || blocks.next_offset >= size
            {
                return;
            }
            let offset = blocks.next_offset;
            let len = block_size.min(size - offset);
            blocks.next_offset += len;
            blocks.outstanding.push(Outstanding {
                offset,
                size: len,
                deadline: now + timeout,
            });
            self.send_block_request(offset, len);
        }
    }

    fn send_block_request(&mut self, offset: u64, len: u64) {
        let id = self.next_id();
        let State::Downloading(d) = &self.state else {
            return;
        };
        let Some(b) = d.blocks.as_ref() else {
            return;
        };
        let range = self.outbox.encode(|out| {
            encode_file_download_request(out, id, &b.token, b.stream_id, b.file_id, offset, len)
        });
        self.outbox
            .push(Queued::Publish(Topic::FileDownload, range));
    }

    /// A reply frame on `download_reply`.
    pub(super) fn on_block_reply(&mut self, payload: &[u8]) {
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        let size = d.task.size;
        let Some(blocks) = d.blocks.as_mut() else {
            return;
        };
        let reply = match parse_block_reply(payload) {
            Ok(reply) => reply,
            // The error kept as it came, not parsed again for its text: one call of the
            // parser (flash, issue #21).
            Err(
                e @ (FrameError::Crc { offset }
                | FrameError::Code {
                    offset: Some(offset),
                    ..
                }),
            ) if blocks.outstanding.iter().any(|o| o.offset == offset) => {
                let why = text!("bad reply for the block at ", offset, ": ", e);
                self.retry_block(offset, &why);
                return;
            }
            // Unattributable garbage: the request's timeout will ask again.
            Err(_) => return,
        };
        if reply.token != Some(blocks.token.as_str()) {
            return; // a reply meant for another task (or another client)
        }
        let Some(i) = blocks
            .outstanding
            .iter()
            .position(|o| o.offset == reply.offset)
        else {
            return; // a duplicate, or a reply to a request given up on
        };
        let expected = blocks.outstanding[i].size;
        if reply.file_length != size || reply.data.len() as u64 != expected {
            let why = text!(
                "block at ",
                reply.offset,
                " has ",
                reply.data.len(),
                " bytes of a ",
                reply.file_length,
                "-byte file, expected ",
                expected,
                " of ",
                size
            );
            self.retry_block(reply.offset, &why);
            return;
        }
        swap_remove(&mut blocks.outstanding, i);
        blocks.arrived.push((reply.offset, reply.data.to_vec()));
        d.failures = 0;
    }

    /// Asks for the block at `offset` again, within the retry budget.
    fn retry_block(&mut self, offset: u64, why: &str) {
        let (max, timeout, now) = (
            self.config.mqtt.max_attempts,
            self.config.mqtt.reply_timeout,
            self.now,
        );
        let State::Downloading(d) = &mut self.state else {
            return;
        };
        d.failures += 1;
        if d.failures > max {
            let reason = text!(
                "MQTT-channel download failed after ",
                d.failures,
                " attempts: ",
                why
            );
            self.fail(FailureCode::DownloadFailed, &reason);
            return;
        }
        let Some(o) = d
            .blocks
            .as_mut()
            .and_then(|b| b.outstanding.iter_mut().find(|o| o.offset == offset))
        else {
            return;
        };
        o.deadline = now + timeout;
        let len = o.size;
        if self.online {
            self.send_block_request(offset, len);
        }
    }

    /// Requests whose reply did not come in time are asked again.
    pub(super) fn on_block_timeouts(&mut self) {
        let now = self.now;
        if !self.online {
            return;
        }
        // By index, not over a collected list of the late offsets: `retry_block` neither
        // reorders nor removes requests (it moves a deadline, or fails the download and ends
        // the loop), and no `Vec` is built (flash, issue #21).
        let mut i = 0;
        loop {
            let State::Downloading(d) = &self.state else {
                return;
            };
            let Some(o) = d.blocks.as_ref().and_then(|b| b.outstanding.get(i)) else {
                return;
            };
            i += 1;
            if o.deadline > now {
                continue;
            }
            let offset = o.offset;
            let why = text!(
                "no reply for the block at ",
                offset,
                " within ",
                self.config.mqtt.reply_timeout.as_secs(),
                " s"
            );
            self.retry_block(offset, &why);
        }
    }
}
