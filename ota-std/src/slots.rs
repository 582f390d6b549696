//! The modules of one device and the record they share. The core runs one task at a time and
//! keeps one record, which names its module; this maps its storage actions to the module they
//! belong to: `Write`s to the module of the last `TaskReceived`; `Activate`, `Confirm` and
//! `Rollback` to the module they name.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::PathBuf;

use ota_core::record::{Phase, Record};
use ota_core::Task;

use crate::fs_ops::{remove_if_present, sync_dir, with_suffix};
use crate::journal::Journal;
use crate::storage::{Slot, Storage};
use crate::writer::WriteJob;
use crate::Error;

/// Every module's storage, the saved record, and which module the current task is for.
pub(crate) struct Slots {
    modules: Vec<(String, Storage)>,
    /// Index into `modules` of the last `TaskReceived`.
    current: usize,
    record_path: PathBuf,
    /// The last record saved in this run, decoded: what the staged bytes durable so far
    /// vouch for (see [`Slots::save_record`]).
    saved: Option<Record>,
}

impl Slots {
    /// `modules[0]` is the agent's main module.
    pub(crate) fn new(modules: Vec<(String, Slot)>, record_path: PathBuf) -> Slots {
        Slots {
            modules: modules
                .into_iter()
                .map(|(name, slot)| (name, Storage::new(slot)))
                .collect(),
            current: 0,
            record_path,
            saved: None,
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

    /// A write of the current task's module, to be done here or on the writer thread.
    pub(crate) fn prepare_write(&mut self, offset: u64, len: usize) -> WriteJob {
        self.modules[self.current].1.prepare_write(offset, len)
    }

    /// Reads the current task's staging file (see [`Storage::read_staged`]).
    pub(crate) fn read_staged(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.modules[self.current].1.read_staged(offset, buf)
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
    ///
    /// A record that vouches for the same staged bytes as the last one saved (a progress
    /// step between two checkpoints: the same image, file, offset and digest state, a higher
    /// step) skips the sync of the staging file: those bytes were durable before the last
    /// record was saved, and the bytes written since are vouched for by no record yet. On a
    /// disk that is one `fdatasync` of up to a checkpoint interval of dirty pages fewer per
    /// step.
    pub(crate) fn save_record(&mut self, record: &[u8]) -> io::Result<()> {
        let decoded = Record::decode(record).ok();
        let same_bytes = match (&self.saved, &decoded) {
            (Some(saved), Some(new)) => vouch_for_the_same_bytes(saved, new),
            _ => false,
        };
        // Until this save succeeds, nothing is known to be durable.
        self.saved = None;
        if !same_bytes {
            self.modules[self.current].1.sync_staging()?;
        }
        let tmp = with_suffix(&self.record_path, ".tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(record)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &self.record_path)?;
        sync_dir(&self.record_path)?;
        self.saved = decoded;
        Ok(())
    }

    pub(crate) fn clear_record(&mut self) -> io::Result<()> {
        self.saved = None;
        remove_if_present(&self.record_path)?;
        sync_dir(&self.record_path)
    }

    /// The storage of `module`.
    fn slot_of(&mut self, module: &str) -> Result<&mut Storage, String> {
        let i = self
            .index_of(module)
            .ok_or_else(|| format!("module {module} has no slot"))?;
        Ok(&mut self.modules[i].1)
    }

    /// The activation journal, beside the record (one task at a time, like the record).
    fn journal_path(&self) -> PathBuf {
        with_suffix(&self.record_path, ".journal")
    }

    /// Installs the staged image of `module`.
    pub(crate) fn activate(&mut self, module: &str, version: &str) -> Result<(), String> {
        let journal = self.journal_path();
        self.slot_of(module)?.activate(module, version, &journal)
    }

    /// The new image of `module` is healthy: forget the previous one.
    pub(crate) fn confirm(&mut self, module: &str) -> Result<(), String> {
        let journal = self.journal_path();
        self.slot_of(module)?
            .confirm(&journal)
            .map_err(|e| e.to_string())
    }

    /// The new image of `module` is not healthy: put the previous one back.
    pub(crate) fn rollback(&mut self, module: &str) -> Result<(), String> {
        let journal = self.journal_path();
        self.slot_of(module)?.rollback(&journal)
    }

    /// At boot, before any running version is read: an activation journal left behind by a
    /// power loss is settled, so that every module's files and version file agree (see
    /// `Storage::recover`). The core's saved `record` says whether it was rolling back, and
    /// whether the task is over (no record of its activation): then the old files go too.
    pub(crate) fn recover(&mut self, record: Option<&[u8]>) -> Result<(), Error> {
        let path = self.journal_path();
        let unsettled = |e: std::io::Error| {
            Error::Io(format!(
                "cannot settle the interrupted activation ({}): {e}",
                path.display()
            ))
        };
        let Some(journal) = Journal::load(&path).map_err(unsettled)? else {
            return Ok(());
        };
        let phase = record
            .and_then(|bytes| Record::decode(bytes).ok())
            .filter(|r| r.image.module == journal.module)
            .map(|r| r.phase);
        let rolling_back = phase == Some(Phase::RollingBack);
        let task_over = !matches!(phase, Some(Phase::Activating | Phase::RollingBack));
        let storage = self
            .slot_of(&journal.module)
            .map_err(|e| unsettled(std::io::Error::other(e)))?;
        let done = storage
            .recover(&journal, &path, rolling_back, task_over)
            .map_err(unsettled)?;
        tracing::warn!("interrupted activation: {done}");
        Ok(())
    }
}

/// Whether `new` vouches for exactly the staged bytes `saved` vouched for: both downloading
/// the same image (from the same running version), at the same file and offset, with the same
/// digest mid-state over those bytes; only the progress step may differ.
fn vouch_for_the_same_bytes(saved: &Record, new: &Record) -> bool {
    let durable = |r: &Record| match &r.phase {
        Phase::Downloading {
            file,
            offset,
            digest_state,
            ..
        } => Some((*file, *offset, digest_state.clone())),
        Phase::Activating | Phase::RollingBack => None,
    };
    saved.image == new.image
        && saved.previous_version == new.previous_version
        && durable(saved).is_some()
        && durable(saved) == durable(new)
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

    fn task(size: u64) -> Task {
        let digest = ota_core::ExpectedDigest::new(ota_core::DigestMethod::Md5, &[0; 16]);
        crate::storage::http_task("2", size, digest.unwrap())
    }

    /// The staging file is synced before a record that vouches for more bytes than the last
    /// one, and not before a progress step that vouches for the same bytes.
    #[test]
    fn only_records_that_vouch_for_new_bytes_sync_the_staging_file() {
        use ota_core::record::ImageId;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Slots::new(
            vec![("default".into(), slot(dir.path()))],
            dir.path().join("ota.record"),
        );
        let task = task(8192);
        s.begin_task(&task, 4096).unwrap();
        let record = |offset: u64, state: &[u8], step: u8| {
            let mut out = Vec::new();
            Record {
                image: ImageId::of(&task),
                previous_version: "1".into(),
                phase: Phase::Downloading {
                    file: 0,
                    offset,
                    digest_state: state.to_vec(),
                    step,
                },
            }
            .encode(&mut out);
            out
        };
        let unsynced = |s: &Slots| s.modules[0].1.unsynced();

        s.modules[0].1.write(0, &[1; 4096]).unwrap();
        s.save_record(&record(4096, b"at 4096", 1)).unwrap();
        assert!(!unsynced(&s), "a checkpoint syncs the bytes it vouches for");
        // Bytes past the checkpoint, then a step: it vouches for the same 4096 bytes.
        s.modules[0].1.write(4096, &[2; 100]).unwrap();
        s.save_record(&record(4096, b"at 4096", 5)).unwrap();
        assert!(unsynced(&s), "a step record does not sync again");
        assert_eq!(s.load_record().unwrap(), Some(record(4096, b"at 4096", 5)));
        // The next checkpoint vouches for new bytes: synced.
        s.save_record(&record(4196, b"at 4196", 5)).unwrap();
        assert!(!unsynced(&s));
        // Another image at the same offset and state, or a record after a clear, syncs.
        s.modules[0].1.write(4196, &[3; 100]).unwrap();
        let mut other = task.clone();
        other.version = "3".into();
        let mut other_record = Vec::new();
        Record {
            image: ImageId::of(&other),
            previous_version: "1".into(),
            phase: Phase::Downloading {
                file: 0,
                offset: 4196,
                digest_state: b"at 4196".to_vec(),
                step: 5,
            },
        }
        .encode(&mut other_record);
        s.save_record(&other_record).unwrap();
        assert!(!unsynced(&s), "another image");
        s.modules[0].1.write(4296, &[4; 100]).unwrap();
        s.clear_record().unwrap();
        s.save_record(&other_record).unwrap();
        assert!(!unsynced(&s), "nothing is known durable after a clear");
    }

    #[test]
    fn rollback_after_a_reboot_goes_to_the_module_named() {
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
        // A new boot: the core names the module in its `Rollback`.
        Slots::new(modules, record).rollback("MCU").unwrap();
        assert_eq!(fs::read(mcu.join("firmware.img")).unwrap(), b"old");
        assert_eq!(fs::read(main.join("firmware.img")).unwrap(), b"old");
        assert!(
            main.join("staging.img").exists(),
            "the main module untouched"
        );
    }

    /// The boot after a power loss during the rollback of an unhealthy image: the core's
    /// record says it was rolling back, so the old image comes back although the new one is
    /// whole; a journal that is not one stops the start with an error naming it.
    #[test]
    fn a_boot_settles_the_journal_as_the_core_record_says() {
        use ota_core::record::{ImageId, Phase, Record};
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        fs::write(p("firmware.img"), b"old").unwrap();
        fs::write(p("version"), b"1\n").unwrap();
        fs::write(p("staging.img"), b"new").unwrap();
        let modules = vec![("default".into(), slot(dir.path()))];
        let mut slots = Slots::new(modules.clone(), p("ota.record"));
        slots.activate("default", "2").unwrap();
        assert_eq!(fs::read(p("firmware.img")).unwrap(), b"new");
        let task = task(3);
        let mut record = Vec::new();
        Record {
            image: ImageId::of(&task),
            previous_version: "1".into(),
            phase: Phase::RollingBack,
        }
        .encode(&mut record);
        Slots::new(modules.clone(), p("ota.record"))
            .recover(Some(&record))
            .unwrap();
        assert_eq!(fs::read(p("firmware.img")).unwrap(), b"old");
        assert_eq!(fs::read(p("version")).unwrap(), b"1\n");
        assert!(!p("ota.record.journal").exists());

        fs::write(p("ota.record.journal"), b"not a journal").unwrap();
        let err = Slots::new(modules, p("ota.record"))
            .recover(None)
            .unwrap_err();
        assert!(err.to_string().contains("ota.record.journal"), "{err}");
    }
}
