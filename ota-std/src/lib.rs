//! The Linux adapter of the OTA stack: it drives [`ota_core::Agent`] with rumqttc (MQTT,
//! Alibaba login, TLS with rustls), ureq (Range downloads on a reader thread, so download and
//! digest overlap) and files (staging image, atomically saved record, activation by rename or
//! command), and ships the `ota-agent` binary.
//!
//! Protocol features and how this adapter stores them:
//! * MQTT-channel downloads need nothing but large enough incoming packets: the limit
//!   follows `agent.mqtt.block_size` (block + 1 KiB, at least 1 MiB, so that an oversized
//!   push reaches the core and gets one `-1` instead of dropping the session).
//! * Activation is atomic across power losses: the new files are prepared beside their
//!   targets, a journal beside the record names them with the digests the cloud gave, the
//!   old files are kept by hard links, and one rename per file installs the new ones; a
//!   start with a journal finishes the activation or puts the old files back (see
//!   `journal`).
//! * Multi-file tasks keep the core's slot layout in the staging file and are split at
//!   activation into `files_dir/{fileName}`, all files or none, the previous ones kept until
//!   the health check confirms. A file name that could leave the directory, or that is
//!   given twice, makes every write of the task fail (`-4`) before a byte is written, with a
//!   `TaskRejected` event saying why.
//! * Extra modules ([`ModuleConfig`]) have their own slot; writes go to the module of the last
//!   `TaskReceived`; activation, confirmation and rollback to the module the core names. The
//!   record is one file for all modules: the core runs one task at a time and names its
//!   module in it.
//! * The legacy request topic, the confirmation policy and the MQTT window are the core's
//!   `Config` fields (`agent.task_request`, `agent.confirmation`, `agent.mqtt`).
//!
//! Which module owns what (imports only go down this list's dependencies, never in a circle):
//! * `device` owns the [`ota_core::Agent`] and its driving loop; `perform` maps each action to
//!   its I/O. The gateway module runs the same pieces per sub-device ([`gateway`]).
//! * `input` is the one channel the loop reads; the I/O threads (`mqtt`, `http`, `writer`)
//!   send into it and know nothing of the loop.
//! * `slots` owns the modules' slots and the shared record; `storage` is one slot's files,
//!   `journal` the atomic activation, `multi_file` the split of a multi-file task, `fs_ops`
//!   the file-system steps they share.
//! * `config`, [`file`](mod@file) and `tls` read and check the settings; [`login`], [`signing_key`],
//!   [`tls_session`] and [`check`] are the platform's login, the product key and
//!   `ota-agent check`.
//!
//! ```no_run
//! use ota_std::{Device, DeviceConfig, DeviceEvent};
//! use std::path::Path;
//!
//! let mut config = DeviceConfig::new("a1TestPK001", "dev01", "secret", "127.0.0.1", 1883,
//!                                    Path::new("/var/lib/ota"))?;
//! config.agent.rules.allow_http = true; // a local simulator serves plain http
//! let device = Device::spawn(config)?;
//! for event in device.events() {
//!     if let DeviceEvent::Succeeded { version } = event {
//!         println!("now running {version}");
//!         break;
//!     }
//! }
//! device.stop()?;
//! # Ok::<(), ota_std::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod check;
mod config;
mod device;
pub mod file;
mod fs_ops;
pub mod gateway;
mod http;
mod input;
mod journal;
pub mod login;
mod mqtt;
mod multi_file;
mod perform;
pub mod signing_key;
mod slots;
mod storage;
mod tls;
pub mod tls_session;
mod writer;

pub use config::{DeviceConfig, Health, ModuleConfig, Reboot};
pub use device::run_until_reboot;
pub use storage::{Activation, RunningVersion, Slot};
pub use tls::{TlsBackend, Trust};

use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use input::Input;

/// Why the device could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is incomplete or invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The broker could not be reached, or refused the login (the text says which).
    #[error("{0}")]
    Mqtt(String),
    /// A TLS setting is unusable.
    #[error("tls: {0}")]
    Tls(String),
    /// A file could not be read or a thread started.
    #[error("i/o: {0}")]
    Io(String),
    /// The reboot command failed.
    #[error("reboot: {0}")]
    Reboot(String),
    /// The agent refused its configuration, or this adapter broke the core's contract.
    #[error("agent: {0}")]
    Core(#[from] ota_core::Error),
    /// The agent took no body bytes and asked for nothing (a contract breach).
    #[error("agent: body bytes refused with no write pending")]
    Stuck,
    /// The device thread panicked.
    #[error("the device thread panicked")]
    Panicked,
}

/// What happened, for applications, progress bars and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    /// The agent (re)started, running this version.
    Started {
        /// Running version.
        version: String,
    },
    /// The MQTT session is up.
    Connected,
    /// The MQTT session went down; it reconnects with back-off.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The whole task of the `TaskReceived` or `TaskOffered` that follows: its module, its
    /// files (multi-file tasks), `extData` as raw JSON text, `isDiff` and `digestsign`.
    Task(Box<ota_core::Task>),
    /// A task was accepted; its download starts or resumes.
    TaskReceived {
        /// Target version.
        version: String,
        /// Image size.
        size: u64,
    },
    /// A task waits for the application's answer (`Confirmation::Ask` in the core's
    /// config): call [`Stopper::answer_offer`].
    TaskOffered {
        /// Target version.
        version: String,
        /// Image size.
        size: u64,
    },
    /// A push was refused (and reported as `-1` when appropriate), or a task could not be
    /// stored (an unsafe file name: its writes fail, reported as `-4`).
    TaskRejected {
        /// Why.
        reason: String,
    },
    /// Download progress.
    Progress {
        /// Bytes of the image held (digested).
        received: u64,
        /// Image size.
        size: u64,
        /// Body bytes received from the network in this boot, re-downloads included.
        downloaded: u64,
    },
    /// The new image runs; the health check started.
    HealthCheck {
        /// The version under test.
        version: String,
    },
    /// Verified and activated; a reboot follows.
    Installed {
        /// New version.
        version: String,
    },
    /// Healthy and confirmed.
    Succeeded {
        /// New version.
        version: String,
    },
    /// The task failed with this code (-1..-4), reported to the cloud.
    Failed {
        /// Progress step reported.
        code: i8,
        /// Why.
        reason: String,
    },
    /// The previous version runs again.
    RolledBack {
        /// Running version.
        version: String,
    },
    /// The cloud canceled the task.
    Canceled,
    /// The application declined the offered task.
    Declined,
    /// The saved record was unusable and was discarded.
    RecordDiscarded {
        /// Why.
        reason: String,
    },
    /// The device reboots now.
    Rebooting,
}

/// How a run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// [`Stopper::stop`] was called.
    Stopped,
    /// The agent asked for a reboot (and the reboot command, if any, returned).
    Rebooted,
}

/// Controls a running device from another thread (stop, answer task offers), across
/// in-process reboots.
#[derive(Clone, Default)]
pub struct Stopper(Arc<Mutex<StopState>>);

#[derive(Default)]
struct StopState {
    stopped: bool,
    inputs: Option<Sender<Input>>,
}

impl Stopper {
    /// Asks the device to stop; its run returns [`Exit::Stopped`].
    pub fn stop(&self) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        state.stopped = true;
        if let Some(inputs) = &state.inputs {
            let _ = inputs.send(Input::Stop);
        }
    }

    /// Accepts or declines the task of the last [`DeviceEvent::TaskOffered`].
    pub fn answer_offer(&self, accept: bool) {
        let state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(inputs) = &state.inputs {
            let _ = inputs.send(Input::Decision(accept));
        }
    }

    /// Points the stopper at a new run's input channel.
    pub(crate) fn install(&self, inputs: Sender<Input>) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.stopped {
            let _ = inputs.send(Input::Stop);
        }
        state.inputs = Some(inputs);
    }
}

/// Runs devices on their own threads.
pub struct Device;

impl Device {
    /// Runs the device on a new thread until stopped. With [`Reboot::InProcess`] a reboot
    /// starts the agent again in the same thread (new version, saved record); with
    /// [`Reboot::Command`] the thread ends after the command.
    pub fn spawn(config: DeviceConfig) -> Result<DeviceHandle, Error> {
        let (tx, events) = mpsc::channel();
        let stopper = Stopper::default();
        let thread_stopper = stopper.clone();
        let name = format!("ota-device-{}", config.device_name);
        let mut config = config;
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let observer = |event: DeviceEvent| {
                    let _ = tx.send(event);
                };
                loop {
                    match run_until_reboot(&config, &observer, &thread_stopper)? {
                        // The broker was reachable before: after a reboot, wait for it.
                        Exit::Rebooted if config.reboot == Reboot::InProcess => {
                            config.fail_fast = false;
                        }
                        exit => return Ok(exit),
                    }
                }
            })
            .map_err(|e| Error::Io(format!("cannot start the device thread: {e}")))?;
        Ok(DeviceHandle {
            events,
            stopper,
            thread,
        })
    }
}

/// A device running on its own thread.
pub struct DeviceHandle {
    events: Receiver<DeviceEvent>,
    stopper: Stopper,
    thread: JoinHandle<Result<Exit, Error>>,
}

impl DeviceHandle {
    /// Everything the device reports, in order.
    pub fn events(&self) -> &Receiver<DeviceEvent> {
        &self.events
    }

    /// A handle that stops the device from anywhere.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    /// Waits (at most `timeout`) for an event `pred` accepts; `None` on timeout or when the
    /// device thread ended. Events before it are consumed.
    pub fn wait_for(
        &self,
        timeout: Duration,
        mut pred: impl FnMut(&DeviceEvent) -> bool,
    ) -> Option<DeviceEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(event) if pred(&event) => return Some(event),
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
            }
        }
    }

    /// Whether the device thread has ended (e.g. with an error).
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Stops the device and returns how its run ended.
    pub fn stop(self) -> Result<Exit, Error> {
        self.stopper.stop();
        self.join()
    }

    /// Waits for the device thread to end by itself.
    pub fn join(self) -> Result<Exit, Error> {
        self.thread.join().unwrap_or(Err(Error::Panicked))
    }
}
