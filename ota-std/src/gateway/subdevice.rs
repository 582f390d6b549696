//! One sub-device behind the gateway: its own [`Agent`] (identity, record, staging file), its
//! HTTP downloads, and its flasher. Activation hands the verified image to the flasher on a
//! thread; the sub-device then "reboots": its agent starts again with the version it runs now
//! and the record, which leads to the version report (or the rollback outcome).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc::Sender;

use ota_core::{Action, Agent, Boot, Event, FetchId, Instant, Notification, Outcome, Phase};

use crate::fs_ops::{remove_if_present, sync_dir, with_suffix};
use crate::http::Http;
use crate::input::{HttpInput, Input};
use crate::slots::Slots;
use crate::storage::{Activation, RunningVersion, Slot};
use crate::{DeviceEvent, Error};

use super::{GwInput, SubdeviceConfig, SubdeviceVersion};

/// Inputs kept while the flasher runs; further MQTT messages for the sub-device are dropped.
const MAX_HELD: usize = 64;

/// What the loop must do after a sub-device's actions ran.
pub(super) struct Effects {
    pub(super) events: Vec<DeviceEvent>,
    pub(super) publishes: Vec<(String, Vec<u8>, ota_core::Qos)>,
    pub(super) subscribes: Vec<String>,
    /// A task waits for a download slot.
    pub(super) offered: bool,
    /// The flasher started with this version.
    pub(super) flashing: Option<String>,
    /// The flasher failed, saying this.
    pub(super) flash_failed: Option<String>,
}

pub(super) struct Sub {
    pub(super) config: SubdeviceConfig,
    agent: Agent,
    agent_config: ota_core::Config,
    storage: Slots,
    http: Http,
    /// Boots of this sub-device's agent so far: HTTP inputs of an earlier one are stale.
    epoch: u32,
    tls: ureq::tls::TlsConfig,
    inputs: Sender<GwInput>,
    pub(super) index: usize,
    /// Logged in: its agent was given `Connected`.
    pub(super) online: bool,
    /// The flasher runs: inputs wait in `held` until it is done.
    flashing: bool,
    held: VecDeque<GwInput>,
    results: VecDeque<Event<'static>>,
    pub(super) image_size: u64,
    reboot: bool,
    /// A record is saved: an idle agent resumes its download once connected.
    has_record: bool,
}

impl Sub {
    pub(super) fn new(
        index: usize,
        config: SubdeviceConfig,
        agent_config: ota_core::Config,
        tls: ureq::tls::TlsConfig,
        inputs: Sender<GwInput>,
        now: Instant,
    ) -> Result<Sub, Error> {
        let http = new_http(index, 0, &tls, &agent_config, &inputs)?;
        fs::create_dir_all(&config.dir).map_err(|e| {
            Error::Config(format!(
                "sub-device {}: cannot create {}: {e}",
                config.device_name,
                config.dir.display()
            ))
        })?;
        let storage = Slots::new(
            vec![(agent_config.module.clone(), slot_of(&config))],
            config.dir.join("ota.record"),
        );
        let agent = boot(&config, &agent_config, &storage, now)?;
        let has_record = storage.load_record()?.is_some();
        Ok(Sub {
            config,
            agent,
            agent_config,
            storage,
            http,
            epoch: 0,
            tls,
            inputs,
            index,
            online: false,
            flashing: false,
            held: VecDeque::new(),
            results: VecDeque::new(),
            image_size: 0,
            reboot: false,
            has_record,
        })
    }

    pub(super) fn phase(&self) -> Phase {
        self.agent.phase()
    }

    /// Whether it takes a download slot: downloading, or about to resume one from its
    /// record (idle with a record, once it is connected).
    pub(super) fn holds_slot(&self, connected: bool) -> bool {
        match self.agent.phase() {
            Phase::Downloading => true,
            Phase::Idle => self.has_record && connected,
            _ => false,
        }
    }

    /// Would resume a download from its record once connected.
    pub(super) fn resumes(&self) -> bool {
        self.agent.phase() == Phase::Idle && self.has_record
    }

    pub(super) fn running_version(&self) -> &str {
        self.agent.running_version()
    }

    pub(super) fn fetched(&self) -> u64 {
        self.agent.fetched_size()
    }

    /// When its agent wants `handle_timeout` (never while flashing: it waits for the result).
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        if self.flashing {
            return None;
        }
        self.agent.poll_timeout()
    }

    /// Feeds one input; while the flasher runs, inputs other than its result are held back.
    pub(super) fn handle(&mut self, now: Instant, input: GwInput) -> Result<Effects, Error> {
        if self.flashing && !matches!(input, GwInput::Flashed { .. }) {
            // Bounded: messages beyond it are dropped (the agent asks again after the flash).
            if self.held.len() < MAX_HELD || !matches!(input, GwInput::Message { .. }) {
                self.held.push_back(input);
            }
            return Ok(self.no_effects());
        }
        let mut effects = self.no_effects();
        match input {
            GwInput::Online => {
                self.online = true;
                self.agent.handle(now, Event::Connected)?;
            }
            GwInput::Offline => {
                self.online = false;
                self.agent.handle(now, Event::Disconnected)?;
            }
            GwInput::Accept => {
                // An offer that is gone (canceled, superseded) has nothing to accept.
                if let Err(e) = self.agent.handle(now, Event::AcceptTask) {
                    tracing::debug!("{}: accept ignored: {e}", self.config.device_name);
                }
            }
            GwInput::Message { topic, payload } => {
                let event = Event::Message {
                    topic: &topic,
                    payload: &payload,
                };
                self.agent.handle(now, event)?;
            }
            GwInput::Sub {
                epoch,
                input: Input::Http(fetch, http),
                ..
            } => {
                if epoch == self.epoch {
                    self.handle_http(now, fetch, http, &mut effects)?
                }
            }
            GwInput::Flashed { result, .. } => {
                self.flashing = false;
                let event = match result {
                    Ok(()) => Event::Activated,
                    Err(reason) => {
                        effects.flash_failed = Some(reason);
                        Event::ActivationFailed
                    }
                };
                self.agent.handle(now, event)?;
            }
            GwInput::Tick => self.agent.handle_timeout(now)?,
            // The boot's own actions (e.g. a health check after a flash) are drained below.
            GwInput::Start | GwInput::Mqtt(_) | GwInput::Sub { .. } => {}
        }
        self.drain(now, &mut effects)?;
        // What came in while flashing, now that it is done.
        while !self.flashing {
            let Some(input) = self.held.pop_front() else {
                break;
            };
            let more = self.handle(now, input)?;
            effects.merge(more);
        }
        Ok(effects)
    }

    fn no_effects(&self) -> Effects {
        Effects {
            events: Vec::new(),
            publishes: Vec::new(),
            subscribes: Vec::new(),
            offered: false,
            flashing: None,
            flash_failed: None,
        }
    }

    fn handle_http(
        &mut self,
        now: Instant,
        fetch: FetchId,
        input: HttpInput,
        effects: &mut Effects,
    ) -> Result<(), Error> {
        if !self.http.is_active(fetch) {
            if let HttpInput::Body { buffer, .. } = input {
                self.http.recycle(fetch, buffer);
            }
            return Ok(());
        }
        match input {
            HttpInput::Response {
                status,
                content_length,
                content_range,
            } => self.agent.handle(
                now,
                Event::HttpResponse {
                    fetch,
                    status,
                    content_length,
                    content_range: content_range.as_deref(),
                },
            )?,
            HttpInput::Body { buffer, len } => {
                let result = self.feed_body(now, fetch, &buffer[..len], effects);
                self.http.recycle(fetch, buffer);
                result?;
            }
            HttpInput::End => {
                self.http.finished(fetch);
                self.agent.handle(now, Event::HttpEnd { fetch })?;
            }
            HttpInput::Failed(reason) => {
                self.http.finished(fetch);
                let event = Event::HttpFailed {
                    fetch,
                    reason: &reason,
                };
                self.agent.handle(now, event)?;
            }
        }
        Ok(())
    }

    /// Offers the bytes until the agent took them all; writes are done right here (one
    /// staging block per sub-device), so each refusal is followed by a write that frees it.
    fn feed_body(
        &mut self,
        now: Instant,
        fetch: FetchId,
        mut bytes: &[u8],
        effects: &mut Effects,
    ) -> Result<(), Error> {
        while !bytes.is_empty() {
            let taken = self.agent.handle_body(now, fetch, bytes)?;
            bytes = &bytes[taken..];
            let progressed = self.drain(now, effects)?;
            if taken == 0 && !progressed {
                return Err(Error::Stuck);
            }
        }
        Ok(())
    }

    /// Performs every queued action and feeds each storage result back.
    fn drain(&mut self, now: Instant, effects: &mut Effects) -> Result<bool, Error> {
        let mut progressed = false;
        loop {
            while let Some(action) = self.agent.poll_action() {
                progressed = true;
                // A record saved (or cleared) says whether a download can resume.
                let record_change = match &action {
                    Action::SaveRecord { .. } => Some(true),
                    Action::ClearRecord => Some(false),
                    _ => None,
                };
                perform(
                    action,
                    &mut self.storage,
                    &mut self.http,
                    &mut self.results,
                    effects,
                    &Ctx {
                        config: &self.config,
                        inputs: &self.inputs,
                        index: self.index,
                        write_block: self.agent_config.write_block as u64,
                    },
                    &mut self.flashing,
                    &mut self.reboot,
                    &mut self.image_size,
                );
                if let Some(saved) = record_change {
                    if self.results.back() == Some(&Event::RecordSaved) {
                        self.has_record = saved;
                    }
                }
            }
            let Some(result) = self.results.pop_front() else {
                break;
            };
            progressed = true;
            self.agent.handle(now, result)?;
        }
        if std::mem::take(&mut self.reboot) {
            // The sub-device boots its new image (or not): a new agent with the version it
            // runs now and the record, as after a real reboot.
            effects.events.push(DeviceEvent::Rebooting);
            self.agent = boot(&self.config, &self.agent_config, &self.storage, now)?;
            self.epoch += 1;
            self.http = new_http(
                self.index,
                self.epoch,
                &self.tls,
                &self.agent_config,
                &self.inputs,
            )?;
            effects.events.push(DeviceEvent::Started {
                version: self.agent.running_version().to_owned(),
            });
            // What the new agent queued at boot (its health check) first, then the session.
            self.drain(now, effects)?;
            if self.online {
                self.agent.handle(now, Event::Connected)?;
                self.drain(now, effects)?;
            }
            return Ok(true);
        }
        Ok(progressed)
    }
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.events.extend(other.events);
        self.publishes.extend(other.publishes);
        self.subscribes.extend(other.subscribes);
        self.offered |= other.offered;
        self.flashing = other.flashing.or(self.flashing.take());
        self.flash_failed = other.flash_failed.or(self.flash_failed.take());
    }
}

struct Ctx<'a> {
    config: &'a SubdeviceConfig,
    inputs: &'a Sender<GwInput>,
    index: usize,
    write_block: u64,
}

#[allow(clippy::too_many_arguments)]
fn perform(
    action: Action<'_>,
    storage: &mut Slots,
    http: &mut Http,
    results: &mut VecDeque<Event<'static>>,
    effects: &mut Effects,
    ctx: &Ctx<'_>,
    flashing: &mut bool,
    reboot: &mut bool,
    image_size: &mut u64,
) {
    match action {
        Action::Subscribe { topic } => effects.subscribes.push(topic.to_owned()),
        Action::Publish {
            topic,
            payload,
            qos,
        } => effects
            .publishes
            .push((topic.to_owned(), payload.to_vec(), qos)),
        Action::Fetch { fetch, url, offset } => {
            tracing::debug!("{}: GET {url} from byte {offset}", ctx.config.device_name);
            http.fetch(fetch, url, offset);
        }
        Action::CancelFetch { fetch } => http.cancel(fetch),
        Action::Write { offset, data } => {
            let job = storage.prepare_write(offset, data.len());
            let event = match crate::writer::perform_write(job, data) {
                Ok(()) => Event::WriteDone,
                Err(e) => {
                    tracing::error!("{}: staging write failed: {e}", ctx.config.device_name);
                    Event::WriteFailed
                }
            };
            results.push_back(event);
        }
        Action::Read { offset, buf } => {
            let event = match storage.read_staged(offset, buf) {
                Ok(len) => Event::ReadDone { len },
                Err(e) => {
                    tracing::warn!(
                        "{}: cannot read the staged image at byte {offset}: {e}",
                        ctx.config.device_name
                    );
                    Event::ReadFailed
                }
            };
            results.push_back(event);
        }
        Action::SaveRecord { record } => {
            results.push_back(record_event(storage.save_record(record)))
        }
        Action::ClearRecord => results.push_back(record_event(storage.clear_record())),
        Action::Activate { version, .. } => {
            *flashing = true;
            effects.flashing = Some(version.to_owned());
            start_flasher(ctx, version);
        }
        Action::Reboot => *reboot = true,
        Action::Confirm { .. } => {
            // The sub-device runs the new image: the staged copy is no longer needed.
            if let Err(e) = remove_if_present(&ctx.config.dir.join("staging.img")) {
                tracing::warn!(
                    "{}: cannot remove the staged image: {e}",
                    ctx.config.device_name
                );
            }
        }
        Action::Rollback { .. } => {
            // The sub-device runs its old image again (its version says so); nothing to undo
            // on the gateway.
            tracing::warn!("{}: the sub-device rolled back", ctx.config.device_name);
        }
        Action::Notify(note) => notify(note, storage, results, effects, ctx, image_size),
    }
}

fn record_event(result: io::Result<()>) -> Event<'static> {
    match result {
        Ok(()) => Event::RecordSaved,
        Err(e) => {
            tracing::error!("record: {e}");
            Event::RecordSaveFailed
        }
    }
}

fn notify(
    note: Notification<'_>,
    storage: &mut Slots,
    results: &mut VecDeque<Event<'static>>,
    effects: &mut Effects,
    ctx: &Ctx<'_>,
    image_size: &mut u64,
) {
    let event = match note {
        Notification::TaskReceived(task) => {
            *image_size = task.size;
            if let Err(reason) = storage.begin_task(task, ctx.write_block) {
                effects.events.push(DeviceEvent::TaskRejected { reason });
            }
            DeviceEvent::TaskReceived {
                version: task.version.clone(),
                size: task.size,
            }
        }
        Notification::TaskOffered(task) => {
            effects.offered = true;
            DeviceEvent::TaskOffered {
                version: task.version.clone(),
                size: task.size,
            }
        }
        Notification::TaskRejected { reason } => DeviceEvent::TaskRejected {
            reason: reason.to_owned(),
        },
        Notification::Progress { received, size, .. } => DeviceEvent::Progress {
            received,
            size,
            downloaded: received,
        },
        Notification::HealthCheckRequested { version, .. } => {
            // The flasher (and the version after it) already said whether it runs.
            results.push_back(Event::HealthVerdict { healthy: true });
            DeviceEvent::HealthCheck {
                version: version.to_owned(),
            }
        }
        Notification::RecordDiscarded(e) => DeviceEvent::RecordDiscarded {
            reason: format!("{e:?}"),
        },
        Notification::Outcome(outcome) => match outcome {
            Outcome::Installed { version } => DeviceEvent::Installed {
                version: version.to_owned(),
            },
            Outcome::Succeeded { version } => DeviceEvent::Succeeded {
                version: version.to_owned(),
            },
            Outcome::Failed { code, reason } => DeviceEvent::Failed {
                code: code.step(),
                reason: reason.to_owned(),
            },
            Outcome::RolledBack { version } => DeviceEvent::RolledBack {
                version: version.to_owned(),
            },
            Outcome::Canceled => DeviceEvent::Canceled,
            Outcome::Declined => DeviceEvent::Declined,
        },
    };
    effects.events.push(event);
}

/// Runs the flasher on a thread with `OTA_IMAGE`, `OTA_VERSION`, `OTA_SUBDEVICE` (and
/// `OTA_PRODUCT_KEY`); exit 0 means flashed. Then the version-after-flash command, if any,
/// says what the sub-device runs; that version (or `version` itself) is kept in the
/// sub-device's `version` file for the next start.
fn start_flasher(ctx: &Ctx<'_>, version: &str) {
    let (config, inputs, index) = (ctx.config.clone(), ctx.inputs.clone(), ctx.index);
    let version = version.to_owned();
    let spawned = std::thread::Builder::new()
        .name("ota-flasher".into())
        .spawn(move || {
            let result = flash(&config, &version);
            let _ = inputs.send(GwInput::Flashed { index, result });
        });
    if let Err(e) = spawned {
        let result = Err(format!("cannot start the flasher thread: {e}"));
        let _ = ctx.inputs.send(GwInput::Flashed { index, result });
    }
}

fn flash(config: &SubdeviceConfig, version: &str) -> Result<(), String> {
    let image = config.dir.join("staging.img");
    let output = Command::new("sh")
        .arg("-c")
        .arg(&config.flasher)
        .env("OTA_IMAGE", &image)
        .env("OTA_VERSION", version)
        .env("OTA_SUBDEVICE", &config.device_name)
        .env("OTA_PRODUCT_KEY", &config.product_key)
        .output()
        .map_err(|e| format!("cannot run {:?}: {e}", config.flasher))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(format!(
            "{:?} failed ({}) {last}",
            config.flasher, output.status
        ));
    }
    let running = match &config.version_after_flash {
        Some(command) => command_output(command, &config.device_name)?,
        None => version.to_owned(),
    };
    write_version(&config.dir.join("version"), &running)
        .map_err(|e| format!("cannot keep the version: {e}"))
}

/// The first line `sh -c command` prints, trimmed; `Err` when it fails or prints nothing.
fn command_output(command: &str, device_name: &str) -> Result<String, String> {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("OTA_SUBDEVICE", device_name)
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!("{command:?} failed ({})", output.status));
    }
    let text = String::from_utf8_lossy(&output.stdout);
    match text.lines().next().map(str::trim) {
        Some(line) if !line.is_empty() => Ok(line.to_owned()),
        _ => Err(format!("{command:?} printed no version")),
    }
}

fn write_version(path: &Path, version: &str) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{version}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// The version the sub-device runs: its version command's answer, else the version kept after
/// the last flash, else the configured one.
fn running_version(config: &SubdeviceConfig) -> Result<String, Error> {
    let kept = config.dir.join("version");
    match &config.version {
        SubdeviceVersion::Command(command) => command_output(command, &config.device_name)
            .map_err(|e| Error::Config(format!("sub-device {}: {e}", config.device_name))),
        SubdeviceVersion::Fixed(version) => match fs::read_to_string(&kept) {
            Ok(text) if !text.trim().is_empty() => Ok(text.trim().to_owned()),
            _ => Ok(version.clone()),
        },
    }
}

fn boot(
    config: &SubdeviceConfig,
    agent_config: &ota_core::Config,
    storage: &Slots,
    now: Instant,
) -> Result<Agent, Error> {
    let version = running_version(config)?;
    let record = storage.load_record()?;
    let boot = Boot {
        running_version: &version,
        record: record.as_deref(),
    };
    Agent::new(agent_config.clone(), boot, now)
        .map_err(|e| Error::Config(format!("sub-device {}: {e}", config.device_name)))
}

/// The HTTP side of one boot of a sub-device's agent; its inputs carry `epoch`.
fn new_http(
    index: usize,
    epoch: u32,
    tls: &ureq::tls::TlsConfig,
    agent_config: &ota_core::Config,
    inputs: &Sender<GwInput>,
) -> Result<Http, Error> {
    let http_inputs = super::forward(inputs.clone(), move |input| GwInput::Sub {
        index,
        epoch,
        input,
    })?;
    Http::new(
        tls.clone(),
        agent_config.stall_timeout,
        super::SUBDEVICE_READ_BUFFER,
        http_inputs,
    )
}

/// The sub-device's files: `staging.img`, `ota.record`, and `version` after a flash.
fn slot_of(config: &SubdeviceConfig) -> Slot {
    Slot {
        staging: config.dir.join("staging.img"),
        // Activation is the flasher, run by `start_flasher`, never by the slot.
        activation: Activation::Command {
            activate: config.flasher.clone(),
            rollback: None,
        },
        files_dir: config.dir.join("files"),
        running_version: RunningVersion::File(config.dir.join("version")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(dir: &Path, version: SubdeviceVersion, flasher: &str) -> SubdeviceConfig {
        SubdeviceConfig {
            product_key: "a1SubPK0001".into(),
            device_name: "node01".into(),
            device_secret: "s".into(),
            version,
            dir: dir.to_owned(),
            flasher: flasher.into(),
            version_after_flash: None,
        }
    }

    #[test]
    fn the_running_version_comes_from_the_command_else_the_last_flash_else_the_config() {
        let dir = tempfile::tempdir().unwrap();
        let fixed = sub(dir.path(), SubdeviceVersion::Fixed("1.0.0".into()), "true");
        assert_eq!(running_version(&fixed).unwrap(), "1.0.0");
        write_version(&dir.path().join("version"), "2.0.0").unwrap();
        assert_eq!(running_version(&fixed).unwrap(), "2.0.0");
        let command = "echo \"$OTA_SUBDEVICE-3.1\"; echo ignored";
        let asked = sub(
            dir.path(),
            SubdeviceVersion::Command(command.into()),
            "true",
        );
        assert_eq!(running_version(&asked).unwrap(), "node01-3.1");
        let silent = sub(dir.path(), SubdeviceVersion::Command("true".into()), "true");
        let err = running_version(&silent).unwrap_err().to_string();
        assert!(
            err.contains("node01") && err.contains("printed no version"),
            "{err}"
        );
    }

    #[test]
    fn the_flasher_gets_the_image_and_its_exit_code_decides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("staging.img"), b"image").unwrap();
        let out = dir.path().join("out");
        let flasher = format!(
            "cat \"$OTA_IMAGE\" > {0}; echo \"$OTA_VERSION $OTA_SUBDEVICE $OTA_PRODUCT_KEY\" >> {0}",
            out.display()
        );
        let mut config = sub(
            dir.path(),
            SubdeviceVersion::Fixed("1.0.0".into()),
            &flasher,
        );
        flash(&config, "2.0.0").unwrap();
        let written = std::fs::read_to_string(&out).unwrap();
        assert_eq!(written, "image2.0.0 node01 a1SubPK0001\n");
        assert_eq!(running_version(&config).unwrap(), "2.0.0");
        // What the sub-device says it runs after the flash is what is kept.
        config.version_after_flash = Some("echo 1.9.9".into());
        flash(&config, "2.0.0").unwrap();
        assert_eq!(running_version(&config).unwrap(), "1.9.9");
        config.flasher = "echo 'no answer on UART' >&2; exit 3".into();
        let err = flash(&config, "2.0.0").unwrap_err();
        assert!(
            err.contains("no answer on UART") && err.contains('3'),
            "{err}"
        );
    }
}
