//! How the engine reacts to device messages (docs/protocol.md §2–§4) and to its own deadlines.

use super::{Engine, Outbound};
use crate::messages::{self, Uplink};
use crate::model::*;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

impl Engine {
    /// A login checked out; its URLs are `https` when it came over TLS.
    pub(crate) fn handle_login(&mut self, device: &DeviceId, tls: bool) {
        match tls {
            true => self.over_tls.insert(device.clone()),
            false => self.over_tls.remove(device),
        };
        self.saw_alive(device);
    }

    /// Marks a device online on a sign of life, unless its connections are tracked: then a
    /// message that arrives after its connection ended must not bring it back.
    pub(crate) fn saw_alive(&mut self, device: &DeviceId) {
        if let Some(d) = self
            .devices
            .get_mut(device)
            .filter(|_| !self.tracks_connections)
        {
            d.online = true;
        }
    }

    /// A connection of `device` opened or ended: it is online while one is open.
    pub(crate) fn handle_connection(&mut self, device: &DeviceId, opened: bool) {
        self.tracks_connections = true;
        let Some(d) = self.devices.get_mut(device) else {
            return;
        };
        d.connections = match opened {
            true => d.connections.saturating_add(1),
            false => d.connections.saturating_sub(1),
        };
        d.online = d.connections > 0;
        if !d.online {
            tracing::info!("{device} is offline");
        }
    }

    pub(crate) fn handle_uplink(&mut self, device: &DeviceId, uplink: Uplink, now: Instant) {
        let tracked = self.tracks_connections;
        let Some(dev) = self.devices.get_mut(device) else {
            tracing::warn!("message from unknown device {device} ignored");
            return;
        };
        if !tracked {
            dev.online = true;
        }
        match uplink {
            Uplink::Inform { version, module } => self.inform(device, &module, version, now),
            Uplink::Progress { step, desc, module } => {
                let desc = super::short_desc(desc);
                dev.steps.push(ProgressRecord {
                    step,
                    desc: desc.clone(),
                    module: module.clone(),
                });
                self.progress(device, &module, step, desc, now);
            }
            Uplink::FirmwareGet { id, module } => {
                let idx = self.pushable_task(device, &module);
                let data = idx.and_then(|i| self.task_data(i));
                let payload = messages::get_reply_payload(&id, data.as_ref());
                self.outbound.push(Outbound {
                    topic: messages::get_reply_topic(device),
                    payload: payload.into_bytes(),
                });
                if let (Some(i), Some(_)) = (idx, data) {
                    self.tasks[i].view.pushes += 1;
                    if self.tasks[i].view.state == TaskState::Queued {
                        self.set_state(i, TaskState::Notified, None);
                    }
                }
            }
            Uplink::LegacyRequest { module } => match self.pushable_task(device, &module) {
                Some(i) => self.push(i),
                None => {
                    if self.log.admit(device, "task requests", now) {
                        tracing::info!("{device} asked for a task; it has none");
                    }
                }
            },
            // Served by the block server, which owns the MQTT faults (see `world`).
            Uplink::Block(_) => {}
            Uplink::Ntp { device_send_time } => {
                let ms = |t: SystemTime| {
                    t.duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_millis() as u64)
                };
                // `now` is when the engine took the request; the wall clock at that moment.
                let received = ms(SystemTime::now()
                    .checked_sub(now.elapsed())
                    .unwrap_or(UNIX_EPOCH));
                let payload =
                    messages::ntp_payload(&device_send_time, received, ms(SystemTime::now()));
                self.outbound.push(Outbound {
                    topic: messages::ntp_response_topic(device),
                    payload: payload.into_bytes(),
                });
            }
        }
    }

    /// The active task a device may be told about (not one waiting for confirmation).
    fn pushable_task(&self, device: &DeviceId, module: &str) -> Option<usize> {
        self.active_task(device, module)
            .filter(|&i| self.tasks[i].view.state != TaskState::Confirm)
    }

    fn inform(&mut self, device: &DeviceId, module: &str, version: String, now: Instant) {
        if self.log.admit(device, "version reports", now) {
            tracing::info!("{device} reports {module} version {version}");
        }
        if let Some(d) = self.devices.get_mut(device) {
            d.versions.insert(module.to_owned(), version.clone());
        }
        if let Some(i) = self.active_task(device, module) {
            let view = &mut self.tasks[i].view;
            if version == view.target_version && view.source_version.is_none() && view.pushes == 0 {
                // Queued before the device ever reported: it was on the target all along.
                tracing::info!("job {} skips {device}: already on {version}", view.job.0);
                self.tasks.remove(i);
            } else if version == view.target_version {
                self.tasks[i].deadline = None;
                self.set_state(i, TaskState::Succeeded, None);
            } else if view.source_version.is_none()
                || view.source_version.as_ref() == Some(&version)
            {
                view.source_version = Some(version);
                if view.state != TaskState::Confirm {
                    self.push(i);
                }
            } else {
                self.fail(i, format!("device reports foreign version {version}"), now);
            }
        }
        if self.active_task(device, module).is_none() {
            let dynamic: Vec<JobId> = (0..self.jobs.len() as u32)
                .map(JobId)
                .filter(|&j| self.jobs[j.0 as usize].spec.dynamic)
                .collect();
            for j in dynamic {
                self.offer(j, device);
            }
        }
    }

    fn progress(
        &mut self,
        device: &DeviceId,
        module: &str,
        step: i64,
        desc: Option<String>,
        now: Instant,
    ) {
        let Some(i) = self.pushable_task(device, module) else {
            if self.log.admit(device, "progress reports", now) {
                tracing::info!("{device} progress {step} without a task");
            }
            return;
        };
        // A negative step ends the task; "0" (the official SDKs send it when a download
        // starts) counts as in progress like any other first report (docs/protocol.md §4).
        if step < 0 {
            let why = desc.unwrap_or_default();
            self.fail(i, format!("progress step {step}: {why}"), now);
            return;
        }
        let changed = self.tasks[i].view.last_step != Some(step);
        self.tasks[i].view.last_step = Some(step);
        if self.tasks[i].view.state != TaskState::InProgress {
            let timeout = self
                .job(self.tasks[i].view.job)
                .ok()
                .and_then(|j| j.spec.timeout);
            self.tasks[i].deadline = timeout.map(|t| now + t);
            self.set_state(i, TaskState::InProgress, None);
        } else if changed {
            self.live.send(&self.tasks[i].view);
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        for i in 0..self.tasks.len() {
            let t = &self.tasks[i];
            if t.view.state == TaskState::InProgress && t.deadline.is_some_and(|d| d <= now) {
                self.fail(i, "timed out".into(), now);
            } else if t.view.state == TaskState::Failed && t.retry_at.is_some_and(|d| d <= now) {
                self.retry(i, true);
            }
        }
    }

    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.tasks
            .iter()
            .filter_map(|t| match t.view.state {
                TaskState::InProgress => t.deadline,
                TaskState::Failed => t.retry_at,
                _ => None,
            })
            .min()
    }
}
