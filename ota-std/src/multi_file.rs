//! Multi-file tasks (`data.files`). The core lays the files out in the slot back to back,
//! each starting on a `write_block` boundary, and its `Write` offsets are slot offsets. This
//! adapter keeps that layout as it is in the staging file (so a resume after a power loss
//! needs nothing beyond the core's record) and splits it only at activation: every file goes
//! to `<files_dir>/<fileName>` through a temporary file that is synced and renamed, so each
//! installed file is either the old one or the whole new one. The previous files are kept as
//! `<fileName>.previous` until the new set is confirmed, like the single image.
//!
//! File names come from the cloud and become paths, so a name that could leave the directory
//! (`/`, `\`, `.`, `..`, NUL or any control character) refuses the whole task before its
//! first byte is written.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use ota_core::task::TaskFile;

use crate::storage::{remove_if_present, sync_dir, with_suffix};

/// Lists the files of the last activation, so that confirm and rollback (after the reboot,
/// when the task is gone from memory) know which ones to finish.
const INSTALLED_LIST: &str = ".ota-installed";

/// One file's place in the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Placed {
    pub(crate) name: String,
    pub(crate) offset: u64,
    pub(crate) size: u64,
}

/// Where each file of a task lies in the slot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) files: Vec<Placed>,
}

impl Layout {
    /// The core's layout for `files` with blocks of `block` bytes; `Err` names the first
    /// file whose name is not a plain file name.
    pub(crate) fn new(files: &[TaskFile], block: u64) -> Result<Layout, String> {
        let mut offset = 0;
        let mut placed = Vec::with_capacity(files.len());
        for file in files {
            check_name(&file.name)?;
            placed.push(Placed {
                name: file.name.clone(),
                offset,
                size: file.size,
            });
            offset += file.size.div_ceil(block.max(1)) * block.max(1);
        }
        Ok(Layout { files: placed })
    }

    /// Where the last file ends: the staging file's final length.
    pub(crate) fn end(&self) -> u64 {
        self.files.last().map_or(0, |f| f.offset + f.size)
    }
}

/// Refuses names that are not a single path component of printable characters.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name == INSTALLED_LIST
        || name.ends_with(".previous")
        || name.ends_with(".tmp")
        || name
            .chars()
            .any(|c| c.is_control() || c == '/' || c == '\\');
    if bad {
        Err(format!("file name {name:?} is not a plain file name"))
    } else {
        Ok(())
    }
}

/// Splits the staged slot into the files of `layout` in `dir`, keeping the files they replace.
pub(crate) fn install(staging: &Path, layout: &Layout, dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let mut slot = File::open(staging)?;
    // The list goes first: a power loss halfway leaves enough to roll back.
    let names: Vec<&str> = layout.files.iter().map(|f| f.name.as_str()).collect();
    write_atomically(&dir.join(INSTALLED_LIST), names.join("\n").as_bytes())?;
    for file in &layout.files {
        let target = dir.join(&file.name);
        let tmp = with_suffix(&target, ".tmp");
        let mut out = File::create(&tmp)?;
        slot.seek(SeekFrom::Start(file.offset))?;
        let copied = io::copy(&mut (&mut slot).take(file.size), &mut out)?;
        if copied != file.size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: the staged slot is short", file.name),
            ));
        }
        out.sync_all()?;
        drop(out);
        if target.exists() {
            fs::rename(&target, with_suffix(&target, ".previous"))?;
        }
        fs::rename(&tmp, &target)?;
    }
    sync_dir(&dir.join(INSTALLED_LIST))
}

/// The new files are healthy: forget the previous ones.
pub(crate) fn confirm(dir: &Path) -> io::Result<()> {
    for name in installed(dir)? {
        remove_if_present(&with_suffix(&dir.join(name), ".previous"))?;
    }
    finish(dir)
}

/// The new files are not healthy: put the previous ones back, remove the ones that are new.
pub(crate) fn rollback(dir: &Path) -> io::Result<()> {
    for name in installed(dir)? {
        let target = dir.join(&name);
        let previous = with_suffix(&target, ".previous");
        if previous.exists() {
            fs::rename(&previous, &target)?;
        } else {
            remove_if_present(&target)?;
        }
    }
    finish(dir)
}

fn installed(dir: &Path) -> io::Result<Vec<String>> {
    match fs::read_to_string(dir.join(INSTALLED_LIST)) {
        // The list was written by `install` from checked names; check again all the same.
        Ok(text) => Ok(text
            .lines()
            .filter(|n| check_name(n).is_ok())
            .map(str::to_owned)
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

fn finish(dir: &Path) -> io::Result<()> {
    let list = dir.join(INSTALLED_LIST);
    if list.exists() {
        remove_if_present(&list)?;
        sync_dir(&list)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::{DigestMethod, ExpectedDigest};

    fn file(name: &str, size: u64) -> TaskFile {
        TaskFile {
            name: name.into(),
            size,
            digest: ExpectedDigest::new(DigestMethod::Md5, &[0; 16]).unwrap(),
            url: "http://h/f".into(),
        }
    }

    #[test]
    fn files_start_on_block_boundaries() {
        let layout = Layout::new(&[file("a", 5), file("b", 8), file("c", 1)], 4).unwrap();
        let offsets: Vec<u64> = layout.files.iter().map(|f| f.offset).collect();
        assert_eq!(offsets, [0, 8, 16]);
        assert_eq!(layout.end(), 17);
    }

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        for name in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "a\nb",
            "x.previous",
        ] {
            assert!(Layout::new(&[file(name, 1)], 4).is_err(), "{name:?}");
        }
        assert!(Layout::new(&[file("app-1.2.bin", 1)], 4).is_ok());
    }

    #[test]
    fn install_splits_the_slot_and_rollback_restores() {
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging.img");
        fs::write(&staging, b"aaaXbbbbbY").unwrap();
        let out = dir.path().join("files");
        fs::create_dir_all(&out).unwrap();
        fs::write(out.join("b"), b"old").unwrap();
        let layout = Layout::new(&[file("a", 3), file("b", 5)], 4).unwrap();
        install(&staging, &layout, &out).unwrap();
        assert_eq!(fs::read(out.join("a")).unwrap(), b"aaa");
        assert_eq!(fs::read(out.join("b")).unwrap(), b"bbbbb");
        rollback(&out).unwrap();
        assert!(!out.join("a").exists());
        assert_eq!(fs::read(out.join("b")).unwrap(), b"old");

        install(&staging, &layout, &out).unwrap();
        confirm(&out).unwrap();
        assert!(!out.join("b.previous").exists());
        assert!(!out.join(INSTALLED_LIST).exists());
    }
}
