//! The job engine: packages, jobs and per-device task states driven by device messages and
//! deadlines (docs/protocol.md §9). It does no I/O: callers pass the time in and take the MQTT
//! messages it wants sent out, so the lock around it is the only synchronisation needed.

use crate::crypto::{md5_hex, sha256_hex};
use crate::history::{History, LogLimiter};
use crate::messages;
use crate::model::*;
use crate::package::*;
use crate::signing::UrlSigner;
use crate::Error;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod events;
mod task_data;
mod views;

pub(crate) use task_data::BlockRefusal;

/// An MQTT message the cloud sends (JSON, or a binary MQTT-channel block reply).
#[derive(Debug, Clone)]
pub(crate) struct Outbound {
    pub(crate) topic: String,
    pub(crate) payload: Vec<u8>,
}

/// Progress reports kept per device; older ones are only counted.
pub const PROGRESS_HISTORY: usize = 200;

/// Bytes of a progress `desc` kept.
const MAX_DESC: usize = 256;

/// `desc` cut to [`MAX_DESC`] bytes (at a character boundary).
pub(crate) fn short_desc(desc: Option<String>) -> Option<String> {
    desc.map(|mut d| {
        if d.len() > MAX_DESC {
            let mut end = MAX_DESC;
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d.truncate(end);
        }
        d
    })
}

pub(crate) struct Device {
    pub(crate) online: bool,
    /// Open MQTT connections through the simulator's own ports.
    pub(crate) connections: u32,
    pub(crate) versions: BTreeMap<String, String>,
    /// The latest progress reports: a ring of [`PROGRESS_HISTORY`].
    pub(crate) steps: History<ProgressRecord>,
}

/// One file of a package; a single-file package has one, named after its version.
pub(crate) struct PackageFile {
    pub(crate) name: String,
    pub(crate) data: Bytes,
    /// Hex digest per the package's sign method.
    pub(crate) digest: String,
}

pub(crate) struct Package {
    /// The metadata; its `data` and `files` are moved into `files`.
    pub(crate) spec: PackageSpec,
    pub(crate) files: Vec<PackageFile>,
    /// Pushes use the multi-file variant.
    pub(crate) multi: bool,
    pub(crate) verified: bool,
}

struct Job {
    spec: JobSpec,
    canceled: bool,
}

struct Task {
    view: TaskView,
    deadline: Option<Instant>,
    retry_at: Option<Instant>,
}

pub(crate) struct Engine {
    pub(crate) devices: BTreeMap<DeviceId, Device>,
    pub(crate) packages: Vec<Package>,
    jobs: Vec<Job>,
    tasks: Vec<Task>,
    signer: UrlSigner,
    http_base: String,
    /// Base URL of the HTTPS listener, for devices in `over_tls`.
    pub(crate) https_base: Option<String>,
    /// Devices whose latest login came over TLS: their URLs are `https`.
    pub(crate) over_tls: std::collections::BTreeSet<DeviceId>,
    pub(crate) url_ttl: Duration,
    /// Whether devices' connections are seen opening and ending (the embedded broker's
    /// ports): then a device is online exactly while it has one.
    pub(crate) tracks_connections: bool,
    /// URLs that expired for good (`--fault expire`): per device and file path, the latest
    /// `Expires` that is dead. URLs issued later expire after it, so they differ.
    pub(crate) revoked: BTreeMap<(DeviceId, String), u64>,
    last_message_id: u64,
    outbound: Vec<Outbound>,
    /// Watchers of task changes (the live view).
    pub(crate) live: crate::live::LiveFeed,
    /// Coalesces log lines about one device under a storm.
    pub(crate) log: LogLimiter,
}

impl Engine {
    pub(crate) fn new(signer: UrlSigner, http_base: String, url_ttl: Duration) -> Engine {
        Engine {
            devices: BTreeMap::new(),
            packages: Vec::new(),
            jobs: Vec::new(),
            tasks: Vec::new(),
            signer,
            http_base,
            https_base: None,
            over_tls: Default::default(),
            url_ttl,
            tracks_connections: false,
            revoked: BTreeMap::new(),
            last_message_id: 0,
            outbound: Vec::new(),
            live: Default::default(),
            log: LogLimiter::default(),
        }
    }

    pub(crate) fn add_device(&mut self, id: DeviceId) -> Result<(), Error> {
        // Topic wildcards and separators, and the `&`/`|` that delimit the login fields.
        let bad = |s: &str| s.is_empty() || s.contains(['/', '+', '#', '\0', '&', '|']);
        if bad(&id.product_key) || bad(&id.device_name) {
            return Err(Error::InvalidName(id.to_string()));
        }
        if self.devices.contains_key(&id) {
            return Err(Error::DuplicateDevice(id.to_string()));
        }
        let device = Device {
            online: false,
            connections: 0,
            versions: BTreeMap::new(),
            steps: History::new(PROGRESS_HISTORY),
        };
        self.devices.insert(id, device);
        Ok(())
    }

    pub(crate) fn add_package(&mut self, mut spec: PackageSpec) -> Result<PackageId, Error> {
        spec.validate()?;
        let multi = spec.is_multi_file();
        let images = if multi {
            std::mem::take(&mut spec.files)
        } else {
            let name = format!("firmware-{}.bin", spec.version);
            vec![(name, std::mem::take(&mut spec.data))]
        };
        // Each image lives once, shared by every response body; the spec keeps the metadata.
        let files: Vec<PackageFile> = images
            .into_iter()
            .map(|(name, data)| PackageFile {
                digest: match spec.sign_method {
                    SignMethod::Md5 => md5_hex(&data),
                    SignMethod::Sha256 => sha256_hex(&data),
                },
                name,
                data: Bytes::from(data),
            })
            .collect();
        let id = PackageId(self.packages.len() as u32);
        tracing::info!(
            "package {} {} {:?}, {} file(s), {} bytes",
            id.0,
            spec.version,
            spec.download_protocol,
            files.len(),
            files.iter().map(|f| f.data.len()).sum::<usize>()
        );
        self.packages.push(Package {
            spec,
            files,
            multi,
            verified: false,
        });
        Ok(id)
    }

    fn package(&self, id: PackageId) -> Result<&Package, Error> {
        self.packages
            .get(id.0 as usize)
            .ok_or(Error::UnknownPackage)
    }

    pub(crate) fn create_job(&mut self, spec: JobSpec) -> Result<JobId, Error> {
        let package = self.package(spec.package)?;
        if spec.kind == JobKind::Batch && package.spec.needs_verification && !package.verified {
            return Err(Error::PackageNotVerified);
        }
        if spec.kind == JobKind::Verification && spec.devices.as_ref().is_none_or(Vec::is_empty) {
            return Err(Error::NoDevices);
        }
        for d in spec.devices.iter().flatten() {
            if !self.devices.contains_key(d) {
                return Err(Error::UnknownDevice(d.to_string()));
            }
        }
        let id = JobId(self.jobs.len() as u32);
        tracing::info!(
            "job {} {:?} dynamic={} package {}",
            id.0,
            spec.kind,
            spec.dynamic,
            spec.package.0
        );
        self.jobs.push(Job {
            spec,
            canceled: false,
        });
        let devices: Vec<DeviceId> = self.devices.keys().cloned().collect();
        for d in devices {
            self.offer(id, &d);
        }
        Ok(id)
    }

    fn job(&self, id: JobId) -> Result<&Job, Error> {
        self.jobs.get(id.0 as usize).ok_or(Error::UnknownJob)
    }

    /// Creates a task for `device` if the job wants it and it has no other active task.
    fn offer(&mut self, job_id: JobId, device: &DeviceId) {
        let Ok(job) = self.job(job_id) else { return };
        let Ok(package) = self.package(job.spec.package) else {
            return;
        };
        let (module, target) = (package.spec.module.clone(), package.spec.version.clone());
        let in_scope = job
            .spec
            .devices
            .as_ref()
            .is_none_or(|ds| ds.contains(device));
        let has_task = self
            .tasks
            .iter()
            .any(|t| t.view.job == job_id && t.view.device == *device);
        let Some(dev) = self.devices.get(device) else {
            return;
        };
        let current = dev.versions.get(&module).cloned();
        let filter = &job.spec.source_versions;
        let matches = filter.is_empty() || current.as_ref().is_some_and(|v| filter.contains(v));
        // A dynamic job waits for a device's report, so devices on the target are skipped exactly.
        let known = !job.spec.dynamic || current.is_some();
        if !known
            || job.canceled
            || !in_scope
            || has_task
            || !matches
            || current.as_ref() == Some(&target)
        {
            return;
        }
        if self.active_task(device, &module).is_some() {
            tracing::info!(
                "job {} skips {device}: it already has an active task",
                job_id.0
            );
            return;
        }
        let state = if job.spec.needs_confirm {
            TaskState::Confirm
        } else {
            TaskState::Queued
        };
        let online = dev.online;
        self.tasks.push(Task {
            view: TaskView {
                job: job_id,
                device: device.clone(),
                module,
                state,
                source_version: current,
                target_version: target,
                last_step: None,
                reason: None,
                pushes: 0,
                retries_used: 0,
                retry_pending: false,
            },
            deadline: None,
            retry_at: None,
        });
        tracing::info!("task job={} device={device} created {state:?}", job_id.0);
        if state == TaskState::Queued && online {
            self.push(self.tasks.len() - 1);
        }
    }

    fn active_task(&self, device: &DeviceId, module: &str) -> Option<usize> {
        self.tasks.iter().position(|t| {
            t.view.device == *device && t.view.module == module && t.view.state.is_active()
        })
    }

    fn set_state(&mut self, idx: usize, state: TaskState, reason: Option<String>) {
        let t = &mut self.tasks[idx].view;
        tracing::info!(
            "task job={} device={} {:?} -> {state:?}{}",
            t.job.0,
            t.device,
            t.state,
            reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        t.state = state;
        if reason.is_some() {
            t.reason = reason;
        }
        self.live.send(&self.tasks[idx].view);
        if state == TaskState::Succeeded {
            self.mark_verified(self.tasks[idx].view.job);
        }
    }

    /// A package is verified once every task of one of its verification jobs succeeded.
    fn mark_verified(&mut self, job_id: JobId) {
        let Ok(job) = self.job(job_id) else { return };
        if job.spec.kind != JobKind::Verification {
            return;
        }
        let package = job.spec.package;
        let mut tasks = self
            .tasks
            .iter()
            .filter(|t| t.view.job == job_id)
            .peekable();
        let all_ok = tasks.peek().is_some() && tasks.all(|t| t.view.state == TaskState::Succeeded);
        if let (true, Some(p)) = (all_ok, self.packages.get_mut(package.0 as usize)) {
            if !p.verified {
                tracing::info!("package {} verified by job {}", package.0, job_id.0);
            }
            p.verified = true;
        }
    }

    fn next_message_id(&mut self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.last_message_id = now.max(self.last_message_id + 1);
        self.last_message_id
    }

    fn push(&mut self, idx: usize) {
        let Some(data) = self.task_data(idx) else {
            return;
        };
        let id = self.next_message_id();
        let topic = messages::upgrade_topic(&self.tasks[idx].view.device);
        self.outbound.push(Outbound {
            topic,
            payload: messages::push_payload(&data, id).into_bytes(),
        });
        self.tasks[idx].view.pushes += 1;
        if self.tasks[idx].view.state == TaskState::Queued {
            self.set_state(idx, TaskState::Notified, None);
        }
    }

    fn fail(&mut self, idx: usize, reason: String, now: Instant) {
        self.set_state(idx, TaskState::Failed, Some(reason));
        let policy = self
            .job(self.tasks[idx].view.job)
            .ok()
            .and_then(|j| j.spec.retry);
        let task = &mut self.tasks[idx];
        task.deadline = None;
        if let Some(p) = policy.filter(|p| task.view.retries_used < p.count) {
            task.retry_at = Some(now + p.interval);
            task.view.retry_pending = true;
        }
    }

    /// Puts a failed task back in the queue and pushes it if the device is online.
    fn retry(&mut self, idx: usize, automatic: bool) {
        let (device, module) = (
            self.tasks[idx].view.device.clone(),
            self.tasks[idx].view.module.clone(),
        );
        let task = &mut self.tasks[idx];
        task.retry_at = None;
        task.view.retry_pending = false;
        if self.active_task(&device, &module).is_some() {
            return;
        }
        let dev = self.devices.get(&device);
        let current = dev.and_then(|d| d.versions.get(&module)).cloned();
        let online = dev.is_some_and(|d| d.online);
        let task = &mut self.tasks[idx];
        if automatic {
            task.view.retries_used += 1;
        }
        if current.as_ref() != Some(&task.view.target_version) {
            task.view.source_version = current.or(task.view.source_version.take());
        }
        task.view.last_step = None;
        task.deadline = None;
        self.set_state(idx, TaskState::Queued, Some("retry".into()));
        if online {
            self.push(idx);
        }
    }

    pub(crate) fn confirm_job(&mut self, job: JobId) -> Result<usize, Error> {
        self.job(job)?;
        let idxs: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                self.tasks[i].view.job == job && self.tasks[i].view.state == TaskState::Confirm
            })
            .collect();
        for &i in &idxs {
            self.set_state(i, TaskState::Queued, None);
            if self
                .devices
                .get(&self.tasks[i].view.device)
                .is_some_and(|d| d.online)
            {
                self.push(i);
            }
        }
        Ok(idxs.len())
    }

    pub(crate) fn cancel(&mut self, job: JobId, device: Option<&DeviceId>) -> Result<usize, Error> {
        self.job(job)?;
        if device.is_none() {
            self.jobs[job.0 as usize].canceled = true;
        }
        let idxs: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                let v = &self.tasks[i].view;
                v.job == job && device.is_none_or(|d| v.device == *d) && v.state.is_active()
            })
            .collect();
        for &i in &idxs {
            self.tasks[i].deadline = None;
            self.set_state(i, TaskState::Canceled, Some("canceled".into()));
        }
        Ok(idxs.len())
    }

    /// Re-pushes the job's FAILED tasks (only those: pending and finished ones are untouched).
    pub(crate) fn retry_job(&mut self, job: JobId) -> Result<usize, Error> {
        self.job(job)?;
        let idxs: Vec<usize> = (0..self.tasks.len())
            .filter(|&i| {
                self.tasks[i].view.job == job && self.tasks[i].view.state == TaskState::Failed
            })
            .collect();
        for &i in &idxs {
            self.retry(i, false);
        }
        Ok(idxs.len())
    }
}
