//! Read-only views of the engine for the library API and the `/status` page.

use super::{Engine, Outbound};
use crate::model::*;

impl Engine {
    pub(crate) fn take_outbound(&mut self) -> Vec<Outbound> {
        std::mem::take(&mut self.outbound)
    }

    pub(crate) fn task_views(&self, job: Option<JobId>) -> Vec<TaskView> {
        self.tasks
            .iter()
            .filter(|t| job.is_none_or(|j| t.view.job == j))
            .map(|t| t.view.clone())
            .collect()
    }

    pub(crate) fn task_view(&self, job: JobId, device: &DeviceId) -> Option<TaskView> {
        self.tasks
            .iter()
            .find(|t| t.view.job == job && t.view.device == *device)
            .map(|t| t.view.clone())
    }

    /// The `/status` document: devices, jobs and tasks.
    pub(crate) fn status(&self) -> serde_json::Value {
        let devices: Vec<_> = self.devices.iter().map(|(id, d)| serde_json::json!({
            "product_key": id.product_key, "device_name": id.device_name, "online": d.online,
            "versions": d.versions, "progress": d.steps.iter().map(|s| s.step).collect::<Vec<_>>(),
            "progress_dropped": d.steps.dropped(),
        })).collect();
        let jobs: Vec<_> = self
            .jobs
            .iter()
            .enumerate()
            .map(|(i, j)| {
                serde_json::json!({
                    "id": i, "spec": j.spec, "canceled": j.canceled,
                })
            })
            .collect();
        let packages: Vec<_> = self
            .packages
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let files: Vec<_> = p
                    .files
                    .iter()
                    .map(|f| {
                        serde_json::json!({
                            "name": f.name, "size": f.data.len(), "digest": f.digest,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "id": i, "version": p.spec.version, "module": p.spec.module,
                    "size": p.files.iter().map(|f| f.data.len()).sum::<usize>(),
                    "sign_method": p.spec.sign_method, "digest": p.files.first().map(|f| &f.digest),
                    "download_protocol": p.spec.download_protocol, "multi_file": p.multi,
                    "files": files, "verified": p.verified,
                    "needs_verification": p.spec.needs_verification,
                })
            })
            .collect();
        serde_json::json!({"devices": devices, "packages": packages, "jobs": jobs, "tasks": self.task_views(None)})
    }
}
