//! Slots as files: the staging image written in place, the saved record replaced atomically,
//! activation by rename (keeping the previous image for a rollback) or by a command, and the
//! running version from configuration or a version file.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

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
    /// Run `activate` with `sh -c` (environment: `OTA_IMAGE`, `OTA_VERSION`, `OTA_MODULE`);
    /// exit 0 means activated. `rollback` runs when the health check fails.
    Command {
        /// The activation command.
        activate: String,
        /// The rollback command, if any.
        rollback: Option<String>,
    },
}

/// The device's files and boot hooks.
pub(crate) struct Storage {
    staging_path: PathBuf,
    record_path: PathBuf,
    activation: Activation,
    version: RunningVersion,
    staging: Option<File>,
    /// Written but not yet fsynced.
    dirty: bool,
    image_size: u64,
}

impl Storage {
    pub(crate) fn new(
        staging_path: PathBuf,
        record_path: PathBuf,
        activation: Activation,
        version: RunningVersion,
    ) -> Storage {
        Storage {
            staging_path,
            record_path,
            activation,
            version,
            staging: None,
            dirty: false,
            image_size: 0,
        }
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

    /// A new task: its last write trims the file to this size.
    pub(crate) fn begin_image(&mut self, size: u64) {
        self.image_size = size;
    }

    /// Writes at `offset`; the image's last block also trims and fsyncs the file, so the
    /// `WriteDone` that follows means the whole image is durable.
    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let file = match &mut self.staging {
            Some(file) => file,
            None => self.staging.insert(
                OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&self.staging_path)?,
            ),
        };
        file.write_all_at(data, offset)?;
        self.dirty = true;
        if offset + data.len() as u64 == self.image_size {
            file.set_len(self.image_size)?;
            self.sync_staging()?;
        }
        Ok(())
    }

    fn sync_staging(&mut self) -> io::Result<()> {
        if let (Some(file), true) = (&self.staging, self.dirty) {
            file.sync_data()?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Replaces the record: the image bytes it vouches for are synced first, then the record
    /// goes to a temporary file that is synced and renamed over the old one.
    pub(crate) fn save_record(&mut self, record: &[u8]) -> io::Result<()> {
        self.sync_staging()?;
        let tmp = with_suffix(&self.record_path, ".tmp");
        let mut file = File::create(&tmp)?;
        file.write_all(record)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &self.record_path)?;
        sync_dir(&self.record_path)
    }

    pub(crate) fn clear_record(&mut self) -> io::Result<()> {
        match fs::remove_file(&self.record_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        sync_dir(&self.record_path)
    }

    /// Makes the staged image the installed one.
    pub(crate) fn activate(&mut self, module: &str, version: &str) -> Result<(), String> {
        self.staging = None; // the file moves away; the next task opens a new one
        match &self.activation {
            Activation::Rename { target } => {
                let fail = |what: &str, e: io::Error| format!("{what}: {e}");
                if target.exists() {
                    fs::rename(target, with_suffix(target, ".previous"))
                        .map_err(|e| fail("cannot keep the previous image", e))?;
                }
                fs::rename(&self.staging_path, target)
                    .map_err(|e| fail("cannot install the image", e))?;
                sync_dir(target).map_err(|e| fail("cannot sync", e))?;
                if let RunningVersion::File(path) = &self.version {
                    install_version(path, version).map_err(|e| fail("version file", e))?;
                }
                Ok(())
            }
            Activation::Command { activate, .. } => run_command(
                activate,
                &[
                    ("OTA_IMAGE", self.staging_path.to_string_lossy().as_ref()),
                    ("OTA_VERSION", version),
                    ("OTA_MODULE", module),
                ],
            ),
        }
    }

    /// The new image is healthy: forget the previous one.
    pub(crate) fn confirm(&mut self) -> io::Result<()> {
        if let Activation::Rename { target } = &self.activation {
            remove_if_present(&with_suffix(target, ".previous"))?;
            if let RunningVersion::File(path) = &self.version {
                remove_if_present(&with_suffix(path, ".previous"))?;
            }
            sync_dir(target)?;
        }
        Ok(())
    }

    /// The new image is not healthy: put the previous one (and its version) back.
    pub(crate) fn rollback(&mut self) -> Result<(), String> {
        match &self.activation {
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
                if let RunningVersion::File(path) = &self.version {
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

fn remove_if_present(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Makes a rename or removal in `path`'s directory durable.
fn sync_dir(path: &Path) -> io::Result<()> {
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

    fn storage(dir: &Path) -> Storage {
        Storage::new(
            dir.join("staging.bin"),
            dir.join("record.bin"),
            Activation::Rename {
                target: dir.join("firmware.bin"),
            },
            RunningVersion::File(dir.join("version")),
        )
    }

    #[test]
    fn writes_in_place_and_trims_a_longer_leftover() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("staging.bin"), [9u8; 10]).unwrap();
        let mut s = storage(dir.path());
        s.begin_image(6);
        s.write(3, b"def").unwrap();
        s.write(0, b"abc").unwrap();
        assert_eq!(fs::read(dir.path().join("staging.bin")).unwrap(), b"abcdef");
    }

    #[test]
    fn record_is_replaced_and_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = storage(dir.path());
        assert_eq!(s.load_record().unwrap(), None);
        s.save_record(b"one").unwrap();
        s.save_record(b"two").unwrap();
        assert_eq!(s.load_record().unwrap().as_deref(), Some(&b"two"[..]));
        s.clear_record().unwrap();
        s.clear_record().unwrap();
        assert_eq!(s.load_record().unwrap(), None);
    }

    #[test]
    fn activation_keeps_the_previous_image_until_confirmed_or_rolled_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = |name: &str| dir.path().join(name);
        fs::write(p("firmware.bin"), b"old").unwrap();
        fs::write(p("version"), b"1.0\n").unwrap();
        let mut s = storage(dir.path());
        s.begin_image(3);
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
        let mut s = Storage::new(
            dir.path().join("staging.bin"),
            dir.path().join("record.bin"),
            Activation::Command {
                activate: "test \"$OTA_VERSION\" = 2.0".into(),
                rollback: Some("exit 3".into()),
            },
            RunningVersion::Fixed("1.0".into()),
        );
        assert_eq!(s.activate("default", "2.0"), Ok(()));
        assert!(s.activate("default", "3.0").is_err());
        assert!(s.rollback().unwrap_err().contains("exit status: 3"));
    }
}
