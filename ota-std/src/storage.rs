//! One module's slot as files: the staging image written in place, activation by rename
//! (keeping the previous image for a rollback) or by a command, the files of a multi-file
//! task split into a directory at activation (see `multi_file`), and the running version from
//! configuration or a version file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ota_core::Task;

use crate::multi_file::{self, Layout};
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
    /// until the new image is confirmed, so a failed health check can put it back.
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
            return Ok(());
        }
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

    /// Makes the staged image the installed one.
    pub(crate) fn activate(&mut self, module: &str, version: &str) -> Result<(), String> {
        self.staging = None; // the file moves away; the next task opens a new one
        let fail = |what: &str, e: io::Error| format!("{what}: {e}");
        let slot = &self.slot;
        if let Some(layout) = &self.layout {
            multi_file::install(&slot.staging, layout, &slot.files_dir)
                .map_err(|e| fail("cannot install the files", e))?;
        }
        match &slot.activation {
            Activation::Rename { target } => {
                if self.layout.is_some() {
                    remove_if_present(&slot.staging).map_err(|e| fail("staging", e))?;
                } else {
                    if target.exists() {
                        fs::rename(target, with_suffix(target, ".previous"))
                            .map_err(|e| fail("cannot keep the previous image", e))?;
                    }
                    fs::rename(&slot.staging, target)
                        .map_err(|e| fail("cannot install the image", e))?;
                    sync_dir(target).map_err(|e| fail("cannot sync", e))?;
                }
                if let RunningVersion::File(path) = &slot.running_version {
                    install_version(path, version).map_err(|e| fail("version file", e))?;
                }
                Ok(())
            }
            Activation::Command { activate, .. } => {
                let files_dir = slot.files_dir.to_string_lossy();
                let mut env = vec![
                    ("OTA_IMAGE", slot.staging.to_string_lossy()),
                    ("OTA_VERSION", version.into()),
                    ("OTA_MODULE", module.into()),
                ];
                if self.layout.is_some() {
                    env.push(("OTA_FILES_DIR", files_dir));
                }
                let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_ref())).collect();
                run_command(activate, &env)
            }
        }
    }

    /// The new image is healthy: forget the previous one.
    pub(crate) fn confirm(&mut self) -> io::Result<()> {
        multi_file::confirm(&self.slot.files_dir)?;
        if let Activation::Rename { target } = &self.slot.activation {
            remove_if_present(&with_suffix(target, ".previous"))?;
            if let RunningVersion::File(path) = &self.slot.running_version {
                remove_if_present(&with_suffix(path, ".previous"))?;
            }
            sync_dir(target)?;
        }
        Ok(())
    }

    /// The new image is not healthy: put the previous one (and its version) back.
    pub(crate) fn rollback(&mut self) -> Result<(), String> {
        multi_file::rollback(&self.slot.files_dir)
            .map_err(|e| format!("cannot restore the files: {e}"))?;
        match &self.slot.activation {
            Activation::Rename { target } => {
                let restore = |path: &Path| -> io::Result<()> {
                    let previous = with_suffix(path, ".previous");
                    if previous.exists() {
                        fs::rename(&previous, path)?;
                        sync_dir(path)?;
                    }
                    Ok(())
                };
                restore(target).map_err(|e| format!("cannot restore the image: {e}"))?;
                if let RunningVersion::File(path) = &self.slot.running_version {
                    restore(path).map_err(|e| format!("cannot restore the version: {e}"))?;
                }
                Ok(())
            }
            Activation::Command {
                rollback: Some(cmd),
                ..
            } => run_command(cmd, &[]),
            Activation::Command { rollback: None, .. } => Ok(()),
        }
    }
}

/// Keeps the old version as `{path}.previous`, then writes the new one atomically.
fn install_version(path: &Path, version: &str) -> io::Result<()> {
    if path.exists() {
        fs::copy(path, with_suffix(path, ".previous"))?;
    }
    let tmp = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(format!("{version}\n").as_bytes())?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

pub(crate) fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

pub(crate) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a rename or removal in `path`'s directory durable.
pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
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

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::{Channel, DigestMethod, ExpectedDigest};

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

    fn task(size: u64) -> Task {
        Task {
            message_id: "1".into(),
            version: "2.0".into(),
            module: "default".into(),
            size,
            digest: ExpectedDigest::new(DigestMethod::Md5, &[0; 16]).unwrap(),
            channel: Channel::Http {
                url: "http://h/f".into(),
            },
            is_diff: false,
            ext_data: None,
            digestsign: None,
            files: Vec::new(),
        }
    }

    #[test]
    fn writes_in_place_and_trims_a_longer_leftover() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("staging.bin"), [9u8; 10]).unwrap();
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&task(6), 4).unwrap();
        s.write(3, b"def").unwrap();
        s.write(0, b"abc").unwrap();
        assert_eq!(fs::read(dir.path().join("staging.bin")).unwrap(), b"abcdef");
    }

    #[test]
    fn a_task_with_an_unsafe_file_name_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::new(slot(dir.path()));
        let mut t = task(3);
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
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut s = Storage::new(slot(dir.path()));
        s.begin_task(&task(3), 4).unwrap();
        s.write(0, b"new").unwrap();
        s.activate("default", "2.0").unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"new");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "2.0");
        s.rollback().unwrap();
        assert_eq!(fs::read(p("firmware.bin")).unwrap(), b"old");
        assert_eq!(RunningVersion::File(p("version")).read().unwrap(), "1.0");

        s.write(0, b"new").unwrap();
        s.activate("default", "2.0").unwrap();
        s.confirm().unwrap();
        assert!(!p("firmware.bin.previous").exists());
        assert!(!p("version.previous").exists());
    }

    #[test]
    fn command_activation_reports_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Storage::new(Slot {
            activation: Activation::Command {
                activate: "test \"$OTA_VERSION\" = 2.0".into(),
                rollback: Some("exit 3".into()),
            },
            running_version: RunningVersion::Fixed("1.0".into()),
            ..slot(dir.path())
        });
        assert_eq!(s.activate("default", "2.0"), Ok(()));
        assert!(s.activate("default", "3.0").is_err());
        assert!(s.rollback().unwrap_err().contains("exit status: 3"));
    }
}
