//! The driving loop: one thread owns the [`Agent`], waits on one channel (MQTT, HTTP and
//! health-check inputs) for at most `poll_timeout`, hands the input to the agent, and performs
//! every action it asks for. Storage actions are done right here, so their result event is
//! fed back before the next input, exactly as the core's contract wants, except staging
//! writes when the core may have several in flight (`agent.write_buffers` > 1): those go to
//! the writer thread, and their results are fed back as they complete, in order.

use std::collections::VecDeque;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use ota_core::{Agent, Boot, Event, FetchId, Instant, Phase};

use crate::config::{DeviceConfig, Reboot};
use crate::http::Http;
use crate::input::{HttpInput, Input};
use crate::mqtt::{Mqtt, MqttSettings};
use crate::perform::Io;
use crate::slots::Slots;
use crate::storage::run_command;
use crate::writer::Writer;
use crate::{DeviceEvent, Error, Exit, Stopper};

/// How long the end of a run waits for the broker to acknowledge the last reports, and
/// then for the connection to close (the next session must not overlap this one).
const CLOSE_SESSION: Duration = Duration::from_secs(3);

/// Body progress is shown at most this often (the core's own reports are throttled too).
const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// Runs one boot of the device: connect, serve tasks, and return when the agent asks for a
/// reboot (after running the reboot command, if configured) or when stopped.
pub fn run_until_reboot(
    config: &DeviceConfig,
    observer: &dyn Fn(DeviceEvent),
    stopper: &Stopper,
) -> Result<Exit, Error> {
    config.check()?;
    let modules = std::iter::once((config.agent.module.clone(), config.main_slot()))
        .chain(
            config
                .extra_modules
                .iter()
                .map(|m| (m.name.clone(), m.slot.clone())),
        )
        .collect();
    let mut storage = Slots::new(modules, config.record.clone());
    let record = storage.load_record()?;
    // Files and version files agree before any version is read.
    storage.recover(record.as_deref())?;
    let version = config.running_version.read()?;
    let agent_config = config.agent_config()?;
    let (tx, rx) = mpsc::channel();
    stopper.install(tx.clone());
    let http = Http::new(
        config.https_trust.ureq_config(config.tls_backend)?,
        config.agent.stall_timeout,
        config.read_buffer,
        tx.clone(),
    )?;
    let tls = match &config.mqtt_tls {
        Some(trust) => Some(crate::tls::mqtt_tls(trust, config.tls_backend)?),
        None => None,
    };
    let mqtt = Mqtt::start(
        MqttSettings {
            host: config.broker_host.clone(),
            port: config.broker_port,
            login: config.login(),
            tls,
            keep_alive: config.keep_alive,
            reconnect_min: config.reconnect_min,
            reconnect_max: config.reconnect_max,
            fail_fast: config.fail_fast,
            max_incoming: max_incoming_packet(config.agent.mqtt.block_size),
        },
        tx.clone(),
    )?;
    let writer = if config.agent.write_buffers > 1 {
        Some(Writer::start(tx.clone()).map_err(|e| Error::Io(format!("writer thread: {e}")))?)
    } else {
        None
    };
    let clock = std::time::Instant::now();
    let boot = Boot {
        running_version: &version,
        record: record.as_deref(),
    };
    let agent = Agent::new(agent_config, boot, Instant::ZERO)?;
    observer(DeviceEvent::Started { version });
    let mut driver = Driver {
        agent,
        io: Io {
            config,
            mqtt,
            http,
            storage,
            writer,
            inputs: tx,
            observer,
            clock,
            image_size: 0,
            downloaded: 0,
            last_progress: clock,
            reboot: false,
            results: VecDeque::new(),
        },
    };
    let exit = driver.drain().and_then(|_| driver.run(&rx));
    // Whatever ended the run, the session ends before the next one may start.
    driver.io.mqtt.close(CLOSE_SESSION);
    let exit = exit?;
    if exit == Exit::Rebooted {
        observer(DeviceEvent::Rebooting);
        if let Reboot::Command(command) = &config.reboot {
            run_command(command, &[]).map_err(Error::Reboot)?;
        }
    }
    Ok(exit)
}

/// Largest MQTT packet accepted: block replies of the MQTT channel (the block plus a JSON
/// header of ~150 bytes, the length, the CRC and the topic), and pushes up to 1 MiB. rumqttc
/// drops the whole session on a larger packet, so the bound is far above any real push: an
/// oversized one reaches the core, which refuses it with one `-1` (docs/protocol.md §4),
/// while the bound still caps what one packet may allocate.
pub(crate) fn max_incoming_packet(block_size: u32) -> usize {
    let block = usize::try_from(block_size).unwrap_or(usize::MAX);
    block.saturating_add(1024).max(MAX_PUSH)
}

/// The largest push this adapter receives whole (see [`max_incoming_packet`]).
const MAX_PUSH: usize = 1 << 20;

struct Driver<'a> {
    agent: Agent,
    io: Io<'a>,
}

impl Driver<'_> {
    fn run(&mut self, rx: &Receiver<Input>) -> Result<Exit, Error> {
        loop {
            if self.io.reboot {
                return Ok(Exit::Rebooted); // the caller flushes and closes the session
            }
            let input = match self.agent.poll_timeout() {
                Some(deadline) => {
                    let wait = deadline
                        .as_millis()
                        .saturating_sub(self.io.now().as_millis());
                    rx.recv_timeout(Duration::from_millis(wait))
                }
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            match input {
                Ok(Input::Stop) => return Ok(Exit::Stopped),
                Ok(input) => self.handle(input)?,
                Err(RecvTimeoutError::Timeout) => {
                    self.agent.handle_timeout(self.io.now())?;
                    self.drain()?;
                }
                // Unreachable while `Io` holds a sender; stop rather than spin.
                Err(RecvTimeoutError::Disconnected) => return Ok(Exit::Stopped),
            }
        }
    }

    fn handle(&mut self, input: Input) -> Result<(), Error> {
        let now = self.io.now();
        match input {
            Input::Connected => {
                (self.io.observer)(DeviceEvent::Connected);
                self.agent.handle(now, Event::Connected)?;
            }
            Input::Disconnected(reason) => {
                (self.io.observer)(DeviceEvent::Disconnected { reason });
                self.agent.handle(now, Event::Disconnected)?;
            }
            Input::Message { topic, payload } => {
                let event = Event::Message {
                    topic: &topic,
                    payload: &payload,
                };
                self.agent.handle(now, event)?;
            }
            Input::MqttFatal(reason) => return Err(Error::Mqtt(reason)),
            Input::Http(fetch, input) => return self.handle_http(fetch, input),
            Input::Health(healthy) => {
                // A verdict after the core's own health deadline has nothing to answer.
                if self.agent.phase() == Phase::CheckingHealth {
                    self.agent.handle(now, Event::HealthVerdict { healthy })?;
                }
            }
            Input::Decision(accept) => {
                let event = if accept {
                    Event::AcceptTask
                } else {
                    Event::DeclineTask
                };
                // An answer to an offer that is gone (superseded, canceled) is ignored.
                if let Err(e) = self.agent.handle(now, event) {
                    tracing::warn!("answer to a task offer ignored: {e}");
                }
            }
            // `drain` collects the finished writes.
            Input::Written | Input::Stop => {}
        }
        self.drain().map(drop)
    }

    fn handle_http(&mut self, fetch: FetchId, input: HttpInput) -> Result<(), Error> {
        if !self.io.http.is_active(fetch) {
            if let HttpInput::Body { buffer, .. } = input {
                self.io.http.recycle(fetch, buffer);
            }
            return Ok(());
        }
        let now = self.io.now();
        match input {
            HttpInput::Response {
                status,
                content_length,
                content_range,
            } => {
                let event = Event::HttpResponse {
                    fetch,
                    status,
                    content_length,
                    content_range: content_range.as_deref(),
                };
                self.agent.handle(now, event)?;
            }
            HttpInput::Body { buffer, len } => {
                let result = self.feed_body(fetch, &buffer[..len]);
                self.io.http.recycle(fetch, buffer);
                return result;
            }
            HttpInput::End => {
                self.io.http.finished(fetch);
                self.agent.handle(now, Event::HttpEnd { fetch })?;
            }
            HttpInput::Failed(reason) => {
                self.io.http.finished(fetch);
                tracing::debug!("download failed: {reason}");
                let event = Event::HttpFailed {
                    fetch,
                    reason: &reason,
                };
                self.agent.handle(now, event)?;
            }
        }
        self.drain().map(drop)
    }

    /// Offers the bytes until the agent took them all. It takes fewer while every staging
    /// block is full or being written; `drain` performs the queued writes, and when they run
    /// on the writer thread, this waits for the oldest to complete; then the rest goes in.
    fn feed_body(&mut self, fetch: FetchId, mut bytes: &[u8]) -> Result<(), Error> {
        self.io.downloaded += bytes.len() as u64;
        while !bytes.is_empty() {
            let taken = self.agent.handle_body(self.io.now(), fetch, bytes)?;
            bytes = &bytes[taken..];
            let mut progressed = self.drain()?;
            if taken == 0 && !progressed {
                // Every block is being written and none is done yet: wait for the oldest.
                if let Some(result) = self.io.collect_write(true) {
                    self.agent.handle(self.io.now(), result)?;
                    progressed = true;
                    self.drain()?;
                }
            }
            if taken == 0 && !progressed {
                return Err(Error::Stuck);
            }
        }
        self.show_progress(false);
        Ok(())
    }

    fn show_progress(&mut self, force: bool) {
        let size = self.io.image_size;
        if size == 0 || self.agent.phase() != Phase::Downloading {
            return;
        }
        if force || self.io.last_progress.elapsed() >= PROGRESS_EVERY {
            self.io.last_progress = std::time::Instant::now();
            (self.io.observer)(DeviceEvent::Progress {
                received: self.agent.fetched_size(),
                size,
                downloaded: self.io.downloaded,
            });
        }
    }

    /// Performs every queued action, feeding each storage result back (which may queue
    /// more). Returns whether anything happened: an action performed or a result fed (a
    /// write the writer thread finished frees a block even when no action follows).
    fn drain(&mut self) -> Result<bool, Error> {
        let mut progressed = false;
        loop {
            while let Some(action) = self.agent.poll_action() {
                progressed = true;
                self.io.perform(action);
            }
            // Results of writes done here first, then those the writer thread finished.
            let Some(result) = self
                .io
                .results
                .pop_front()
                .or_else(|| self.io.collect_write(false))
            else {
                return Ok(progressed);
            };
            progressed = true;
            self.agent.handle(self.io.now(), result)?;
        }
    }
}
