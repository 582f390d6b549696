//! One module's slot as files: the staging image written in place, activation by rename
//! (keeping the previous image for a rollback) or by a command, the files of a multi-file
//! task split into a directory at activation (see `multi_file`), all under the activation
//! journal (see `journal`), and the running version from configuration or a version file.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ota_core::{ExpectedDigest, Task};

use crate::fs_ops::{parent_of, remove_if_present, sync_dir, with_suffix};
use crate::journal::{
    copy_range, has_digest, keep_previous, sha256_of, write_atomically, Entry, Journal,
};
use crate::multi_file::Layout;
use crate::writer::WriteJob;
use crate::Error;

/// Where the running version comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunningVersion {
    /// A fixed version (e.g. compiled in, or given on the command line).
    Fixed(String),
    /// A file holding the version of the installed image. Activation by rename rewrites it
    /// (and rollback restores it), so a restart after an upgrade reports the new version.
    File(PathBuf),
}

impl RunningVersion {
    /// Reads the version now.
    pub fn read(&self) -> Result<String, Error> {
        match self {
            RunningVersion::Fixed(v) => Ok(v.clone()),
            RunningVersion::File(path) => fs::read_to_string(path)
                .map(|s| s.trim().to_owned())
                .map_err(|e| Error::Config(format!("version file {}: {e}", path.display()))),
        }
    }
}

/// How a verified image becomes the one that runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Rename the staged image over `target`; the old target is kept as `{target}.previous`
    /// (a hard link) until the new image is confirmed, so a failed health check can put it
    /// back. A journal beside the record makes the switch atomic across power losses.
    Rename {
        /// Path of the installed image.
        target: PathBuf,
    },
    /// Run `activate` with `sh -c` (environment: `OTA_IMAGE`, `OTA_VERSION`, `OTA_MODULE`,
    /// and `OTA_FILES_DIR` once the files of a multi-file task are in it); exit 0 means
    /// activated. `rollback` runs when the health check fails.
    Command {
        /// The activation command.
        activate: String,
        /// The rollback command, if any.
        rollback: Option<String>,
    },
}

/// Where one module's slot lives and how it is installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The staging file, written in place (the whole slot of a multi-file task).
    pub staging: PathBuf,
    /// How a verified image is installed.
    pub activation: Activation,
    /// Where the files of a multi-file task are installed, each as `<dir>/<fileName>`.
    pub files_dir: PathBuf,
    /// Where the running version comes from.
    pub running_version: RunningVersion,
}

/// One module's files and boot hooks.
pub(crate) struct Storage {
    slot: Slot,
    /// Shared with the writer thread while writes are in flight.
    staging: Option<Arc<File>>,
    /// Written but not yet fsynced.
    dirty: bool,
    /// Where the last write ends: the slot's final length.
    slot_len: u64,
    /// The current task's files, when it has several.
    layout: Option<Layout>,
    /// The digests the cloud gave: the image's, or each file's in layout order.
    digests: Vec<ExpectedDigest>,
    /// Why the current task may not be written (an unsafe file name).
    refused: Option<String>,
}

impl Storage {
    pub(crate) fn new(slot: Slot) -> Storage {
        Storage {
            slot,
            staging: None,
            dirty: false,
            slot_len: 0,
            layout: None,
            digests: Vec::new(),
            refused: None,
        }
    }

    /// A new task (or the resumed one): the slot's length and, for a multi-file task, where
    /// its files lie. A task whose file names are unsafe is refused: every write fails
    /// before touching the disk, and the reason is returned.
    pub(crate) fn begin_task(&mut self, task: &Task, write_block: u64) -> Result<(), String> {
        self.refused = None;
        self.layout = None;
        self.slot_len = task.size;
        if task.files.is_empty() {
            self.digests = vec![task.digest];
            return Ok(());
        }
        self.digests = task.files.iter().map(|f| f.digest).collect();
        match Layout::new(&task.files, write_block) {
            Ok(layout) => {
                self.slot_len = layout.end();
                self.layout = Some(layout);
                Ok(())
            }
            Err(reason) => {
                self.refused = Some(reason.clone());
                Err(reason)
            }
        }
    }

    /// Writes at `offset`, here and now (see [`Storage::prepare_write`]).
    #[cfg(test)]
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        crate::writer::perform_write(self.prepare_write(offset, data.len()), data)
    }

    /// What a write of `len` bytes at `offset` takes, for this thread or the writer thread:
    /// the slot's last block also trims and fsyncs the file, so the `WriteDone` that follows
    /// means the whole slot is durable.
    pub(crate) fn prepare_write(&mut self, offset: u64, len: usize) -> WriteJob {
        if let Some(reason) = &self.refused {
            return WriteJob::Fail(io::Error::other(reason.clone()));
        }
        let file = match &mut self.staging {
            Some(file) => file,
            None => match OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&self.slot.staging)
            {
                Ok(file) => self.staging.insert(Arc::new(file)),
                Err(e) => return WriteJob::Fail(e),
            },
        };
        // Set before the bytes land: the next sync (before any record) comes after them.
        self.dirty = true;
        WriteJob::Write {
            file: Arc::clone(file),
            offset,
            finish: (offset + len as u64 == self.slot_len).then_some(self.slot_len),
        }
    }

    /// Whether bytes were written since the last sync.
    #[cfg(test)]
    pub(crate) fn unsynced(&self) -> bool {
        self.dirty
    }

    /// Makes the written bytes durable (before a record vouches for them).
    pub(crate) fn sync_staging(&mut self) -> io::Result<()> {
        if let (Some(file), true) = (&self.staging, self.dirty) {
            file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Reads the staging file at `offset` into `buf` as far as it goes (fewer bytes: the
    /// file is shorter). The core re-reads what it is about to trust: the staged prefix of a
    /// resumed download, and the whole image before activation (`read_back`). Opened by
    /// path, so the bytes are those of the file that activation will install.
    pub(crate) fn read_staged(&mut self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let file = File::open(&self.slot.staging)?;
        let mut len = 0;
        while len < buf.len() {
            match file.read_at(&mut buf[len..], offset + len as u64) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(len)
    }

    /// Makes the staged image (or every file of a multi-file task) the installed one, all or
    /// nothing, under the journal at `journal`: the new files are prepared beside their
    /// targets (a staging file on another filesystem is copied into the target's directory),
    /// the journal is saved, each old file is kept by a hard link, and one rename per file
    /// installs the new one; then the version file. A failure puts the old files back.
    pub(crate) fn activate(
        &mut self,
        module: &str,
        version: &str,
        journal: &Path,
    ) -> Result<(), String> {
        self.staging = None; // the file moves away; the next task opens a new one
        match Journal::load(journal) {
            Ok(None) => {}
            Ok(Some(_)) => return Err("an earlier activation is unfinished".into()),
            Err(e) => return Err(format!("activation journal: {e}")),
        }
        let mut prepared = Vec::new();
        if let Err(e) = self.prepare(&mut prepared) {
            self.discard(&prepared);
            return Err(format!("cannot prepare the new files: {e}"));
        }
        if !prepared.is_empty() {
            let entries = prepared.iter().map(|(entry, _)| entry.clone()).collect();
            let record = Journal {
                module: module.to_owned(),
                version: version.to_owned(),
                previous: match &self.slot.running_version {
                    RunningVersion::File(_) => self.slot.running_version.read().ok(),
                    RunningVersion::Fixed(_) => None,
                },
                entries,
            };
            if let Err(e) = record.save(journal) {
                self.discard(&prepared);
                return Err(format!("cannot save the activation journal: {e}"));
            }
            if let Err(e) = self.switch(&prepared, version) {
                let undo = self.restore(&record, journal);
                return Err(match undo {
                    Ok(()) => format!("cannot install the new files (the old ones are back): {e}"),
                    Err(u) => format!("cannot install the new files: {e}; nor restore: {u}"),
                });
            }
        }
        let Activation::Command { activate, .. } = &self.slot.activation else {
            return Ok(());
        };
        let files_dir = self.slot.files_dir.to_string_lossy();
        let mut env = vec![
            ("OTA_IMAGE", self.slot.staging.to_string_lossy()),
            ("OTA_VERSION", version.into()),
            ("OTA_MODULE", module.into()),
        ];
        if self.layout.is_some() {
            env.push(("OTA_FILES_DIR", files_dir));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
        let result = run_command(activate, &env);
        if result.is_err() && !prepared.is_empty() {
            if let Ok(Some(record)) = Journal::load(journal) {
                let _ = self.restore(&record, journal);
            }
        }
        result
    }

    /// Where the file of `entry` is installed.
    fn target_of(&self, entry: &Entry) -> Option<PathBuf> {
        match (&entry.file, &self.slot.activation) {
            (Some(name), _) => Some(self.slot.files_dir.join(name)),
            (None, Activation::Rename { target }) => Some(target.clone()),
            (None, Activation::Command { .. }) => None,
        }
    }

    /// The new files beside their targets, each with its journal entry: the files of a
    /// multi-file task copied out of the slot, or the staged image (linked, or copied when
    /// it lies on another filesystem, where no rename reaches).
    fn prepare(&self, out: &mut Vec<(Entry, PathBuf)>) -> io::Result<()> {
        let slot = &self.slot;
        let exists = |path: &Path| fs::symlink_metadata(path).is_ok();
        if let Some(layout) = &self.layout {
            fs::create_dir_all(&slot.files_dir)?;
            let staged = File::open(&slot.staging)?;
            if self.digests.len() != layout.files.len() {
                return Err(io::Error::other("the task's files and digests differ"));
            }
            for (placed, digest) in layout.files.iter().zip(&self.digests) {
                let target = slot.files_dir.join(&placed.name);
                let tmp = with_suffix(&target, ".tmp");
                copy_range(&staged, placed.offset, placed.size, &tmp)
                    .inspect_err(|_| drop(remove_if_present(&tmp)))?;
                let entry = Entry {
                    file: Some(placed.name.clone()),
                    digest: *digest,
                    existed: exists(&target),
                };
                out.push((entry, tmp));
                remove_if_present(&with_suffix(&target, ".previous"))?;
            }
            return Ok(());
        }
        let Activation::Rename { target } = &slot.activation else {
            return Ok(()); // the command installs the image
        };
        // Beside the target as `{target}.tmp`: a second name of the staged file where one can
        // be made, else (another filesystem, or one without hard links) a synced copy.
        let staged = File::open(&slot.staging)?;
        let tmp = with_suffix(target, ".tmp");
        remove_if_present(&tmp)?; // a stale name of an older staged file
        if fs::hard_link(&slot.staging, &tmp).is_err() {
            let len = staged.metadata()?.len();
            copy_range(&staged, 0, len, &tmp).inspect_err(|_| drop(remove_if_present(&tmp)))?;
        }
        // The task's digest (what the core verified); an image activated without a task in
        // this run (never by the core) is identified by its own SHA-256.
        let digest = match self.digests.first() {
            Some(digest) => *digest,
            None => sha256_of(&tmp)?,
        };
        let entry = Entry {
            file: None,
            digest,
            existed: exists(target),
        };
        out.push((entry, tmp));
        remove_if_present(&with_suffix(target, ".previous"))
    }

    /// Removes the temporary files of a failed preparation (the staging file stays).
    fn discard(&self, prepared: &[(Entry, PathBuf)]) {
        for (_, from) in prepared {
            let _ = remove_if_present(from);
        }
    }

    /// Keeps every old file by a hard link, renames every new one over it, then writes the
    /// version file and drops the staging file.
    fn switch(&self, prepared: &[(Entry, PathBuf)], version: &str) -> io::Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for (entry, from) in prepared {
            let target = self.target_of(entry).ok_or(io::ErrorKind::InvalidInput)?;
            if entry.existed {
                keep_previous(&target, &with_suffix(&target, ".previous"))?;
            }
            fs::rename(from, &target)?;
            let dir = parent_of(&target).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            File::open(dir)?.sync_all()?;
        }
        if let Activation::Rename { .. } = self.slot.activation {
            if let RunningVersion::File(path) = &self.slot.running_version {
                write_atomically(path, format!("{version}\n").as_bytes())?;
            }
            if fs::symlink_metadata(&self.slot.staging).is_ok() {
                remove_if_present(&self.slot.staging)?;
                sync_dir(&self.slot.staging)?;
            }
        }
        Ok(())
    }

    /// Puts back every old file the journal names (and removes the new ones that replaced
    /// nothing), restores the version file, then removes the journal. Safe to repeat after a
    /// power loss at any point of itself or of the activation.
    fn restore(&self, record: &Journal, journal: &Path) -> io::Result<()> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        for entry in &record.entries {
            let Some(target) = self.target_of(entry) else {
                continue;
            };
            let previous = with_suffix(&target, ".previous");
            if !entry.existed {
                remove_if_present(&target)?;
            } else if fs::symlink_metadata(&previous).is_ok() {
                // Also when the rename never happened: both names are then the old file,
                // and the rename does nothing but the removal below.
                fs::rename(&previous, &target)?;
                remove_if_present(&previous)?;
            }
            remove_if_present(&with_suffix(&target, ".tmp"))?;
            remove_if_present(&with_suffix(&previous, ".tmp"))?;
            let dir = parent_of(&target).to_path_buf();
            if !dirs.contains(&dir) {
                dirs.push(dir);
            }
        }
        for dir in dirs {
            File::open(dir)?.sync_all()?;
        }
        if let (Activation::Rename { .. }, RunningVersion::File(path), Some(previous)) = (
            &self.slot.activation,
            &self.slot.running_version,
            &record.previous,
        ) {
            if self.slot.running_version.read().ok().as_ref() != Some(previous) {
                write_atomically(path, format!("{previous}\n").as_bytes())?;
            }
        }
        Journal::remove(journal)
    }

    /// Whether every file the journal names holds its new bytes.
    fn is_installed(&self, record: &Journal) -> io::Result<bool> {
        for entry in &record.entries {
            let Some(target) = self.target_of(entry) else {
                continue;
            };
            if !has_digest(&target, &entry.digest)? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// At boot, with a journal left by a power loss: finishes the activation when every new
    /// file is in place (the version file then names the new version; with `task_over`, the
    /// old files are dropped too), otherwise (or when the core was `rolling_back`) restores
    /// the old files and version. Returns what it did, for the log.
    pub(crate) fn recover(
        &mut self,
        record: &Journal,
        journal: &Path,
        rolling_back: bool,
        task_over: bool,
    ) -> io::Result<String> {
        if !rolling_back && self.is_installed(record)? {
            if let (Activation::Rename { .. }, RunningVersion::File(path)) =
                (&self.slot.activation, &self.slot.running_version)
            {
                if self.slot.running_version.read().ok().as_deref() != Some(&record.version) {
                    write_atomically(path, format!("{}\n", record.version).as_bytes())?;
                }
            }
            if task_over {
                self.confirm(journal)?;
            }
            return Ok(format!(
                "{} is installed: activation finished",
                record.version
            ));
        }
        self.restore(record, journal)?;
        let previous = record.previous.as_deref().unwrap_or("the previous version");
        Ok(format!(
            "{} was not completely installed: {previous} restored",
            record.version
        ))
    }

    /// The new image is healthy: forget the previous one.
    pub(crate) fn confirm(&mut self, journal: &Path) -> io::Result<()> {
        let Some(record) = Journal::load(journal)? else {
            return Ok(());
        };
        for entry in &record.entries {
            if let Some(target) = self.target_of(entry) {
                remove_if_present(&with_suffix(&target, ".previous"))?;
            }
        }
        Journal::remove(journal)
    }

    /// The new image is not healthy: put the previous one (and its version) back.
    pub(crate) fn rollback(&mut self, journal: &Path) -> Result<(), String> {
        match Journal::load(journal) {
            Ok(Some(record)) => self
                .restore(&record, journal)
                .map_err(|e| format!("cannot restore the previous files: {e}"))?,
            Ok(None) => {}
            Err(e) => return Err(format!("activation journal: {e}")),
        }
        match &self.slot.activation {
            Activation::Command {
                rollback: Some(cmd),
                ..
            } => run_command(cmd, &[]),
            _ => Ok(()),
        }
    }
}

/// Runs `sh -c command`; `Ok` on exit status 0.
pub(crate) fn run_command(command: &str, env: &[(&str, &str)]) -> Result<(), String> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env.iter().copied())
        .status()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{command:?} failed ({status})"))
    }
}

/// A single-file HTTP task of the default module, for the tests of this crate's storage.
#[cfg(test)]
pub(crate) fn http_task(version: &str, size: u64, digest: ota_core::ExpectedDigest) -> Task {
    Task {
        message_id: "1".into(),
        version: version.into(),
        module: "default".into(),
        size,
        digest,
        channel: ota_core::Channel::Http {
            url: "http://h/f".into(),
        },
        is_diff: false,
        ext_data: None,
        digestsign: None,
        files: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::{DigestMethod, ExpectedDigest};

    fn slot(dir: &Path) -> Slot {
        Slot {
            staging: dir.join("staging.bin"),
            activation: Activation::Rename {
                target: dir.join("firmware.bin"),
            },
            files_dir: dir.join("files"),
            running_version: RunningVersion::File(dir.join("version")),
        }
    }

    fn sha256(data: &[u8]) -> ExpectedDigest {
        use sha2::Digest;
        ExpectedDigest::new(DigestMethod::Sha256, &sha2::Sha256::digest(data)).unwrap()
    }

    /// A task for the image `data`.
    fn task(data: &[u8]) -> Task {
        http_task("2.0", data.len() as u64, sha256(data))
    }

    #[test]
    fn writes_in_place_and_trims_a_longer_leftover() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("staging.bin"), [9u8; 10]).unwrap();
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&task(b"abcdef"), 4).unwrap();
        s.write(3, b"def").unwrap();
        s.write(0, b"abc").unwrap();
        assert_eq!(fs::read(dir.path().join("staging.bin")).unwrap(), b"abcdef");
    }

    #[test]
    fn a_task_with_an_unsafe_file_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::new(slot(dir.path()));
        let mut t = task(b"abc");
        t.files.push(ota_core::task::TaskFile {
            name: "../evil".into(),
            size: 3,
            digest: t.digest,
            url: "http://h/f".into(),
        });
        assert!(s.begin_task(&t, 4).unwrap_err().contains("../evil"));
        assert!(s.write(0, b"abc").is_err());
        assert!(!dir.path().join("staging.bin").exists());
    }

    #[test]
    fn activation_keeps_the_previous_image_until_confirmed_or_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let journal = p("ota.record.journal");
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&task(b"new"), 4).unwrap();
        s.write(0, b"new").unwrap();
        s.activate("default", "2.0", &journal).unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"new");
        assert_eq!(fs::read(p("firmware.bin.previous")).unwrap(), b"old");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "2.0");
        assert!(
            journal.exists(),
            "the journal lasts until confirmed or rolled back"
        );
        assert!(!p("staging.bin").exists());
        s.rollback(&journal).unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"old");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "1.0");
        assert!(!journal.exists() && !p("firmware.bin.previous").exists());

        s.write(0, b"new").unwrap();
        s.activate("default", "2.0", &journal).unwrap();
        s.confirm(&journal).unwrap();
        assert!(!p("firmware.bin.previous").exists());
        assert!(!journal.exists());
    }

    /// The state a power loss leaves after the image's rename and before the version file
    /// (the case 3): the next boot finishes the activation instead of reporting a
    /// rollback that never happened.
    #[test]
    fn a_boot_after_the_rename_finishes_the_activation() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let journal = p("ota.record.journal");
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&task(b"new"), 4).unwrap();
        s.write(0, b"new").unwrap();
        s.activate("default", "2.0", &journal).unwrap();
        fs::write(p("version"), b"1.0\n").unwrap(); // as if the version file never changed
        let record = Journal::load(&journal).unwrap().unwrap();
        let done = Storage::new(slot(dir.path()))
            .recover(&record, &journal, false, false)
            .unwrap();
        assert!(done.contains("finished"), "{done}");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "2.0");
        assert!(
            journal.exists(),
            "kept for the health check's confirm or rollback"
        );
        // The core was rolling back when the power went: the old image comes back.
        Storage::new(slot(dir.path()))
            .recover(&record, &journal, true, false)
            .unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"old");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "1.0");
        assert!(!journal.exists());
    }

    /// Before the rename, the old image is both the target and its `.previous` link: the
    /// boot restores it (once) and the version file still says the old version.
    #[test]
    fn a_boot_before_the_rename_restores_the_old_image() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let journal = p("ota.record.journal");
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        fs::write(p("staging.bin"), b"new").unwrap();
        let record = Journal {
            module: "default".into(),
            version: "2.0".into(),
            previous: Some("1.0".into()),
            entries: vec![Entry {
                file: None,
                digest: sha256_of(&p("staging.bin")).unwrap(),
                existed: true,
            }],
        };
        record.save(&journal).unwrap();
        fs::hard_link(p("firmware.bin"), p("firmware.bin.previous")).unwrap();
        let done = Storage::new(slot(dir.path()))
            .recover(&record, &journal, false, true)
            .unwrap();
        assert!(done.contains("1.0 restored"), "{done}");
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"old");
        assert!(!p("firmware.bin.previous").exists());
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "1.0");
        assert!(!journal.exists());
    }

    /// The case 2: staging on another filesystem than the target. The image is
    /// copied into the target's directory first, and renamed from there.
    #[test]
    fn staging_on_another_filesystem_is_copied_beside_the_target() {
        let (Ok(shm), dir) = (
            tempfile::tempdir_in("/dev/shm"),
            tempfile::tempdir().unwrap(),
        ) else {
            eprintln!("skipped: no /dev/shm for a second filesystem");
            return;
        };
        let dev = |p: &Path| std::os::unix::fs::MetadataExt::dev(&fs::metadata(p).unwrap());
        if dev(shm.path()) == dev(dir.path()) {
            eprintln!("skipped: /dev/shm is on the same filesystem as the temporary directory");
            return;
        }
        let p = |name: &str| dir.path().join(name);
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut s = Storage::new(Slot {
            staging: shm.path().join("staging.bin"),
            ..slot(dir.path())
        });
        s.begin_task(&task(b"new"), 4).unwrap();
        s.write(0, b"new").unwrap();
        let journal = p("ota.record.journal");
        s.activate("default", "2.0", &journal).unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"new");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "2.0");
        assert!(!shm.path().join("staging.bin").exists());
        assert!(!p("firmware.bin.tmp").exists());
    }

    /// A failure after the journal and the image's rename (here the version file's
    /// directory is missing) puts the old image back: never no image, never a mix.
    #[test]
    fn a_failed_activation_leaves_the_old_image_and_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        fs::write(p("firmware.bin"), b"old").unwrap();
        let mut s = Storage::new(Slot {
            running_version: RunningVersion::File(p("gone/version")),
            ..slot(dir.path())
        });
        s.begin_task(&task(b"new"), 4).unwrap();
        s.write(0, b"new").unwrap();
        let journal = p("ota.record.journal");
        let err = s.activate("default", "2.0", &journal).unwrap_err();
        assert!(err.contains("the old ones are back"), "{err}");
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"old");
        assert!(!p("firmware.bin.previous").exists());
        assert!(!journal.exists());
    }

    /// A multi-file task is installed whole or not at all: a power loss between two of its
    /// renames brings every old file back and removes the new ones.
    #[test]
    fn multi_file_tasks_install_all_files_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        let files = p("files");
        fs::create_dir_all(&files).unwrap();
        fs::write(files.join("a"), b"old-a").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut t = task(b"");
        for (name, data) in [("a", &b"aaa"[..]), ("b", b"bbbbb")] {
            t.files.push(ota_core::task::TaskFile {
                name: name.into(),
                size: data.len() as u64,
                digest: sha256(data),
                url: "http://h/f".into(),
            });
        }
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&t, 4).unwrap();
        s.write(0, b"aaaXbbbbb").unwrap();
        let journal = p("ota.record.journal");
        s.activate("default", "2.0", &journal).unwrap();
        assert_eq!(fs::read(files.join("a")).unwrap(), b"aaa");
        assert_eq!(fs::read(files.join("b")).unwrap(), b"bbbbb");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "2.0");
        assert!(!p("staging.bin").exists(), "the slot was split");

        // As if the power went after `a`'s rename, before `b`'s.
        fs::rename(files.join("b"), files.join("b.tmp")).unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let record = Journal::load(&journal).unwrap().unwrap();
        Storage::new(slot(dir.path()))
            .recover(&record, &journal, false, false)
            .unwrap();
        assert_eq!(fs::read(files.join("a")).unwrap(), b"old-a");
        let left: Vec<_> = fs::read_dir(&files)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["a"], "no new file, no leftover");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "1.0");
        assert!(!journal.exists());
    }

    #[test]
    fn command_activation_reports_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("ota.record.journal");
        let mut s = Storage::new(Slot {
            activation: Activation::Command {
                activate: "test \"$OTA_VERSION\" = 2.0".into(),
                rollback: Some("exit 3".into()),
            },
            running_version: RunningVersion::Fixed("1.0".into()),
            ..slot(dir.path())
        });
        assert_eq!(s.activate("default", "2.0", &journal), Ok(()));
        assert!(s.activate("default", "3.0", &journal).is_err());
        assert!(s.rollback(&journal).unwrap_err().contains("exit status: 3"));
    }
}
