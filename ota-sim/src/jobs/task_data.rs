//! What a device is told about a task (the `data` of a push or firmware/get reply, docs/protocol.md
//! §3) and what it may then fetch: a package file by its signed URL, or by the task's
//! MQTT-channel stream (§6).

use super::Engine;
use crate::messages::{TaskData, TaskFile};
use crate::model::*;
use crate::package::*;
use crate::signing::percent_encode;
use crate::{DeviceId, Error};
use bytes::Bytes;

/// Stream ids are the task's index above this, so they look like the platform's (seven
/// digits) and a stream from another task, even of the same device, is recognised as foreign.
const STREAM_BASE: u64 = 1_397_345;

/// A file a device may read blocks of.
pub(crate) struct StreamFile {
    pub(crate) name: String,
    pub(crate) data: Bytes,
}

/// Why a block request is refused: the reply's `code` and `message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockRefusal(pub(crate) u16, pub(crate) &'static str);

impl Engine {
    /// Path of one file of a package on the firmware server. Single-file packages keep the
    /// `firmware-{version}.bin` name; multi-file ones use the file names, escaped.
    pub(crate) fn file_path(&self, id: PackageId, file: usize) -> Result<String, Error> {
        let p = self.package(id)?;
        let f = p.files.get(file).ok_or(Error::UnknownPackage)?;
        Ok(format!("/fw/{}/{}", id.0, percent_encode(&f.name)))
    }

    /// The package and file a firmware-server path names, if any.
    pub(crate) fn find_file(&self, path: &str) -> Option<(PackageId, usize)> {
        let id = PackageId(path.split('/').nth(2)?.parse().ok()?);
        let count = self.package(id).ok()?.files.len();
        (0..count)
            .find(|&i| self.file_path(id, i).ok().as_deref() == Some(path))
            .map(|i| (id, i))
    }

    /// A signed URL for one file of `package`, issued to `device`.
    pub(crate) fn sign_url(
        &self,
        package: PackageId,
        file: usize,
        device: &DeviceId,
    ) -> Result<String, Error> {
        let path = self.file_path(package, file)?;
        let base = match &self.https_base {
            Some(https) if self.over_tls.contains(device) => https,
            _ => &self.http_base,
        };
        let dead = self.revoked.get(&(device.clone(), path.clone())).copied();
        let min_expires = dead.map_or(0, |e| e + 1);
        Ok(self
            .signer
            .sign(base, &path, device, self.url_ttl, min_expires))
    }

    /// Kills the URL of `device` for `path` that expires at `expires`, and every one issued
    /// before it, until the device is handed a fresh one.
    pub(crate) fn revoke(&mut self, device: &DeviceId, path: &str, expires: u64) {
        let dead = self
            .revoked
            .entry((device.clone(), path.to_owned()))
            .or_insert(0);
        *dead = (*dead).max(expires);
    }

    /// Whether that URL was revoked.
    pub(crate) fn is_revoked(&self, device: &DeviceId, path: &str, expires: u64) -> bool {
        self.revoked
            .get(&(device.clone(), path.to_owned()))
            .is_some_and(|&dead| expires <= dead)
    }

    /// The stream id of task `idx`.
    pub(crate) fn stream_id(idx: usize) -> u64 {
        STREAM_BASE + idx as u64
    }

    /// The task as a device sees it, with freshly signed URLs or its stream id.
    pub(super) fn task_data(&self, idx: usize) -> Option<TaskData> {
        let view = &self.tasks[idx].view;
        let job = self.job(view.job).ok()?;
        let package = self.package(job.spec.package).ok()?;
        let spec = &package.spec;
        let md5 = spec.sign_method == SignMethod::Md5;
        let mqtt = spec.download_protocol == DownloadProtocol::Mqtt;
        let mut data = TaskData {
            version: spec.version.clone(),
            sign_method: if md5 { "Md5" } else { "SHA256" }.to_owned(),
            module: (spec.module != DEFAULT_MODULE).then(|| spec.module.clone()),
            is_diff: spec.is_diff.then_some(1),
            ext_data: spec.ext_data.clone(),
            digestsign: spec.digestsign.clone(),
            d_protocol: mqtt.then(|| "mqtt".to_owned()),
            stream_id: mqtt.then(|| Engine::stream_id(idx)),
            ..TaskData::default()
        };
        if package.multi {
            let mut files = Vec::with_capacity(package.files.len());
            for (i, f) in package.files.iter().enumerate() {
                files.push(TaskFile {
                    file_name: f.name.clone(),
                    file_size: f.data.len() as u64,
                    file_url: match mqtt {
                        true => None,
                        false => Some(self.sign_url(job.spec.package, i, &view.device).ok()?),
                    },
                    stream_file_id: mqtt.then_some(i as u64 + 1),
                    file_md5: md5.then(|| f.digest.clone()),
                    file_sign: f.digest.clone(),
                });
            }
            data.files = Some(files);
        } else {
            let f = package.files.first()?;
            data.size = Some(f.data.len() as u64);
            data.md5 = md5.then(|| f.digest.clone());
            data.sign = Some(f.digest.clone());
            if mqtt {
                data.stream_file_id = Some(1);
            } else {
                data.url = Some(self.sign_url(job.spec.package, 0, &view.device).ok()?);
            }
        }
        Some(data)
    }

    /// File `file_id` (1-based) of stream `stream_id`, if that stream is an MQTT-channel task
    /// of `device` that is still active. A request for blocks counts as a sign of life.
    pub(crate) fn stream_file(
        &mut self,
        device: &DeviceId,
        stream_id: u64,
        file_id: u64,
    ) -> Result<StreamFile, BlockRefusal> {
        const NO_STREAM: BlockRefusal = BlockRefusal(404, "stream not found");
        if !self.devices.contains_key(device) {
            return Err(BlockRefusal(403, "unknown device"));
        }
        self.saw_alive(device);
        let idx = stream_id
            .checked_sub(STREAM_BASE)
            .and_then(|i| usize::try_from(i).ok())
            .ok_or(NO_STREAM)?;
        let task = self.tasks.get(idx).ok_or(NO_STREAM)?;
        let view = &task.view;
        if view.device != *device {
            return Err(NO_STREAM);
        }
        if !view.state.is_active() || view.state == TaskState::Confirm {
            return Err(BlockRefusal(404, "task is not active"));
        }
        let job = self.job(view.job).map_err(|_| NO_STREAM)?;
        let package = self.package(job.spec.package).map_err(|_| NO_STREAM)?;
        if package.spec.download_protocol != DownloadProtocol::Mqtt {
            return Err(NO_STREAM);
        }
        let file = usize::try_from(file_id)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| package.files.get(i))
            .ok_or(BlockRefusal(404, "file not found"))?;
        Ok(StreamFile {
            name: file.name.clone(),
            data: file.data.clone(),
        })
    }
}
