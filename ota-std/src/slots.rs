//! The modules of one device and the record they share. The core runs one task at a time and
//! keeps one record, which names its module; this maps its storage actions to the module they
//! belong to: `Write`s to the module of the last `TaskReceived`, `Activate` to the module it
//! names, and `Confirm`/`Rollback` (which name none, and come after a reboot) to the module
//! of the last activation, remembered in a small file next to the record.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use ota_core::Task;

use crate::multi_file::write_atomically;
use crate::storage::{remove_if_present, sync_dir, with_suffix, Slot, Storage};
use crate::Error;

/// Every module's storage, the saved record, and which module the current task is for.
pub(crate) struct Slots {
    modules: Vec<(String, Storage)>,
    /// Index into `modules` of the last `TaskReceived`.
    current: usize,
    record_path: PathBuf,
    /// Holds the module name of the last activation until it is confirmed or rolled back.
    activated_path: PathBuf,
}

impl Slots {
    /// `modules[0]` is the agent's main module.
    pub(crate) fn new(modules: Vec<(String, Slot)>, record_path: PathBuf) -> Slots {
        let activated_path = with_suffix(&record_path, ".activated");
        Slots {
            modules: modules
                .into_iter()
                .map(|(name, slot)| (name, Storage::new(slot)))
                .collect(),
            current: 0,
            record_path,
            activated_path,
        }
    }

    fn index_of(&self, module: &str) -> Option<usize> {
        self.modules.iter().position(|(name, _)| name == module)
    }

    /// A task starts or resumes: its writes go to its module from now on. `Err` says why
    /// the task may not be written.
    pub(crate) fn begin_task(&mut self, task: &Task, write_block: u64) -> Result<(), String> {
        // The core refuses tasks of undeclared modules before `TaskReceived`.
        self.current = self.index_of(&task.module).unwrap_or(0);
        self.modules[self.current].1.begin_task(task, write_block)
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.modules[self.current].1.write(offset, data)
    }

    /// The saved record, if there is one.
    pub(crate) fn load_record(&self) -> Result<Option<Vec<u8>>, Error> {
        match fs::read(&self.record_path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Io(format!(
                "cannot read the record {}: {e}",
                self.record_path.display()
            ))),
        }
    }

    /// Replaces the record: the image bytes it vouches for are synced first, then the record
    /// goes to a temporary file that is synced and renamed over the old one.
    pub(crate) fn save_record(&mut self, record: &[u8]) -> io::Result<()> {
        self.modules[self.current].1.sync_staging()?;
        let tmp = with_suffix(&self.record_path, ".tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(record)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &self.record_path)?;
        sync_dir(&self.record_path)
    }

    pub(crate) fn clear_record(&mut self) -> io::Result<()> {
        remove_if_present(&self.record_path)?;
        sync_dir(&self.record_path)
    }

    /// Installs the staged image of `module`, and remembers the module for the confirmation
    /// or rollback after the reboot.
    pub(crate) fn activate(&mut self, module: &str, version: &str) -> Result<(), String> {
        let i = self
            .index_of(module)
            .ok_or_else(|| format!("module {module} has no slot"))?;
        write_atomically(&self.activated_path, module.as_bytes())
            .map_err(|e| format!("cannot note the activated module: {e}"))?;
        self.modules[i].1.activate(module, version)
    }

    /// The storage of the last activation (the main module when nothing says otherwise).
    fn activated(&mut self) -> &mut Storage {
        let name = fs::read_to_string(&self.activated_path).unwrap_or_default();
        let i = self.index_of(name.trim()).unwrap_or(0);
        &mut self.modules[i].1
    }

    fn forget_activation(&self) -> io::Result<()> {
        remove_if_present(&self.activated_path)
    }

    /// The new image is healthy: forget the previous one.
    pub(crate) fn confirm(&mut self) -> io::Result<()> {
        self.activated().confirm()?;
        self.forget_activation()
    }

    /// The new image is not healthy: put the previous one back.
    pub(crate) fn rollback(&mut self) -> Result<(), String> {
        self.activated().rollback()?;
        self.forget_activation()
            .map_err(|e| format!("cannot clear the activation note: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Activation, RunningVersion};
    use std::path::Path;

    fn slot(dir: &Path) -> Slot {
        Slot {
            staging: dir.join("staging.img"),
            activation: Activation::Rename {
                target: dir.join("firmware.img"),
            },
            files_dir: dir.join("files"),
            running_version: RunningVersion::File(dir.join("version")),
        }
    }

    #[test]
    fn record_is_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slots::new(
            vec![("default".into(), slot(dir.path()))],
            dir.path().join("ota.record"),
        );
        assert_eq!(s.load_record().unwrap(), None);
        s.save_record(b"one").unwrap();
        s.save_record(b"two").unwrap();
        assert_eq!(s.load_record().unwrap().as_deref(), Some(&b"two"[..]));
        s.clear_record().unwrap();
        s.clear_record().unwrap();
        assert_eq!(s.load_record().unwrap(), None);
    }

    #[test]
    fn rollback_after_a_reboot_goes_to_the_activated_module() {
        let dir = tempfile::tempdir().unwrap();
        let (main, mcu) = (dir.path().join("main"), dir.path().join("mcu"));
        for d in [&main, &mcu] {
            fs::create_dir_all(d).unwrap();
            fs::write(d.join("firmware.img"), b"old").unwrap();
            fs::write(d.join("version"), b"1\n").unwrap();
            fs::write(d.join("staging.img"), b"new").unwrap();
        }
        let modules = vec![("default".into(), slot(&main)), ("MCU".into(), slot(&mcu))];
        let record = dir.path().join("ota.record");
        Slots::new(modules.clone(), record.clone())
            .activate("MCU", "2")
            .unwrap();
        // A new boot: nothing in memory says which module was activated.
        Slots::new(modules, record).rollback().unwrap();
        assert_eq!(fs::read(mcu.join("firmware.img")).unwrap(), b"old");
        assert_eq!(fs::read(main.join("firmware.img")).unwrap(), b"old");
        assert!(
            main.join("staging.img").exists(),
            "the main module untouched"
        );
    }
}
