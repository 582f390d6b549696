//! Every action of the agent mapped to its I/O, and every I/O result to the event that
//! answers it: MQTT for subscribe and publish, the reader threads for fetches, the files for
//! writes, records and activation, a thread for the health command.

use std::collections::VecDeque;
use std::sync::mpsc::Sender;

use ota_core::{Action, Event, Instant, Notification, Outcome};

use crate::config::{DeviceConfig, Health};
use crate::http::Http;
use crate::input::Input;
use crate::mqtt::Mqtt;
use crate::slots::Slots;
use crate::storage::run_command;
use crate::writer::Writer;
use crate::DeviceEvent;

/// Everything an action needs, apart from the agent that lends it.
pub(crate) struct Io<'a> {
    pub(crate) config: &'a DeviceConfig,
    pub(crate) mqtt: Mqtt,
    pub(crate) http: Http,
    pub(crate) storage: Slots,
    /// The writer thread, when the core may have several writes in flight.
    pub(crate) writer: Option<Writer>,
    pub(crate) inputs: Sender<Input>,
    pub(crate) observer: &'a dyn Fn(DeviceEvent),
    pub(crate) clock: std::time::Instant,
    pub(crate) image_size: u64,
    /// Body bytes received from the network in this boot, re-downloads included.
    pub(crate) downloaded: u64,
    pub(crate) last_progress: std::time::Instant,
    pub(crate) reboot: bool,
    /// Results of performed actions, fed to the agent one per drain.
    pub(crate) results: VecDeque<Event<'static>>,
}

impl Io<'_> {
    pub(crate) fn now(&self) -> Instant {
        Instant::from_millis(u64::try_from(self.clock.elapsed().as_millis()).unwrap_or(u64::MAX))
    }
}

impl Io<'_> {
    pub(crate) fn perform(&mut self, action: Action<'_>) {
        match action {
            Action::Subscribe { topic } => self.mqtt.subscribe(topic),
            Action::Publish {
                topic,
                payload,
                qos,
            } => self.mqtt.publish(topic, payload, qos),
            Action::Fetch { fetch, url, offset } => {
                tracing::debug!("GET {url} from byte {offset}");
                self.http.fetch(fetch, url, offset);
            }
            Action::CancelFetch { fetch } => self.http.cancel(fetch),
            Action::Write { offset, data } => {
                let job = self.storage.prepare_write(offset, data.len());
                let result = match self.writer.as_mut() {
                    // Answered when the thread is done (`Driver::drain` collects it).
                    Some(writer) => match writer.submit(job, data) {
                        Ok(()) => return,
                        Err(e) => Err(e),
                    },
                    None => crate::writer::perform_write(job, data),
                };
                self.results.push_back(write_event(result));
            }
            Action::Read { offset, buf } => {
                let event = match self.storage.read_staged(offset, buf) {
                    Ok(len) => Event::ReadDone { len },
                    Err(e) => {
                        tracing::warn!("cannot read the staged image at byte {offset}: {e}");
                        Event::ReadFailed
                    }
                };
                self.results.push_back(event);
            }
            Action::SaveRecord { record } => {
                let result = self.storage.save_record(record);
                self.record_result(result);
            }
            Action::ClearRecord => {
                let result = self.storage.clear_record();
                self.record_result(result);
            }
            Action::Activate { module, version } => {
                let result = match self.storage.activate(module, version) {
                    Ok(()) => Event::Activated,
                    Err(e) => {
                        tracing::error!("activation failed: {e}");
                        Event::ActivationFailed
                    }
                };
                self.results.push_back(result);
            }
            Action::Reboot => self.reboot = true,
            Action::Confirm { module } => {
                if let Err(e) = self.storage.confirm(module) {
                    tracing::warn!("cannot drop the previous image: {e}");
                }
            }
            Action::Rollback { module } => {
                if let Err(e) = self.storage.rollback(module) {
                    tracing::error!("rollback failed: {e}");
                }
            }
            Action::Notify(note) => self.notify(note),
        }
    }

    /// The result of the oldest write handed to the writer thread, if it is done (or once
    /// it is, when `wait`).
    pub(crate) fn collect_write(&mut self, wait: bool) -> Option<Event<'static>> {
        let result = self.writer.as_mut()?.collect(wait)?;
        Some(write_event(result))
    }

    fn record_result(&mut self, result: std::io::Result<()>) {
        let event = match result {
            Ok(()) => Event::RecordSaved,
            Err(e) => {
                tracing::error!("record: {e}");
                Event::RecordSaveFailed
            }
        };
        self.results.push_back(event);
    }

    fn notify(&mut self, note: Notification<'_>) {
        let event = match note {
            Notification::TaskReceived(task) => {
                self.image_size = task.size;
                (self.observer)(DeviceEvent::Task(Box::new(task.clone())));
                let block = self.config.agent.write_block as u64;
                if let Err(reason) = self.storage.begin_task(task, block) {
                    tracing::error!("task refused: {reason}");
                    (self.observer)(DeviceEvent::TaskRejected { reason });
                }
                DeviceEvent::TaskReceived {
                    version: task.version.clone(),
                    size: task.size,
                }
            }
            Notification::TaskOffered(task) => {
                (self.observer)(DeviceEvent::Task(Box::new(task.clone())));
                DeviceEvent::TaskOffered {
                    version: task.version.clone(),
                    size: task.size,
                }
            }
            Notification::TaskRejected { reason } => DeviceEvent::TaskRejected {
                reason: reason.to_owned(),
            },
            Notification::Progress { received, size, .. } => {
                self.last_progress = std::time::Instant::now();
                DeviceEvent::Progress {
                    received,
                    size,
                    downloaded: self.downloaded,
                }
            }
            Notification::HealthCheckRequested { version, .. } => {
                self.start_health_check();
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
        (self.observer)(event);
    }

    fn start_health_check(&mut self) {
        match &self.config.health {
            Health::Immediate => self
                .results
                .push_back(Event::HealthVerdict { healthy: true }),
            Health::Command(command) => {
                let (command, inputs) = (command.clone(), self.inputs.clone());
                let spawned =
                    std::thread::Builder::new()
                        .name("ota-health".into())
                        .spawn(move || {
                            let healthy = match run_command(&command, &[]) {
                                Ok(()) => true,
                                Err(e) => {
                                    tracing::warn!("health check: {e}");
                                    false
                                }
                            };
                            let _ = inputs.send(Input::Health(healthy));
                        });
                if let Err(e) = spawned {
                    tracing::error!("cannot run the health check: {e}");
                    self.results
                        .push_back(Event::HealthVerdict { healthy: false });
                }
            }
        }
    }
}

fn write_event(result: std::io::Result<()>) -> Event<'static> {
    match result {
        Ok(()) => Event::WriteDone,
        Err(e) => {
            tracing::error!("staging write failed: {e}");
            Event::WriteFailed
        }
    }
}
