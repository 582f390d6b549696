//! The activation journal: a small text file next to the record, saved atomically before the
//! first installed file changes and removed once the new image is confirmed or the old one is
//! back. It says what is being installed (module, version, the version it replaces) and, for
//! every file that changes (the image, or each file of a multi-file task), the digest the
//! cloud gave for its new bytes (the one the core verified) and whether an old file was
//! there. With it, a boot after a power loss anywhere in
//! activation finds out what is really installed (the digest of each target) and either
//! finishes the activation or restores the previous files: the target is always exactly the
//! old or the new image, and the version file always names the image that is there.
//!
//! ```text
//! ota-journal 1
//! module default
//! version 2.0.0
//! previous 1.0.0
//! image md5 <hex> <1 if an old image was there, else 0>
//! file sha256 <hex> <0|1> <fileName>
//! ```

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use ota_core::digest::Hasher;
use ota_core::{DigestMethod, ExpectedDigest};
use sha2::{Digest, Sha256};

use crate::fs_ops::{remove_if_present, sync_dir, with_suffix};
use crate::multi_file::check_name;

const MAGIC: &str = "ota-journal 1";

/// A journal is a few hundred bytes per file; anything larger is not one of ours.
const MAX_LEN: u64 = 256 * 1024;

/// Read and copy unit of the digest passes.
const CHUNK: usize = 64 * 1024;

/// One activation in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Journal {
    pub(crate) module: String,
    pub(crate) version: String,
    /// The running version the new one replaces (`None` without a version file).
    pub(crate) previous: Option<String>,
    pub(crate) entries: Vec<Entry>,
}

/// One installed file that changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Entry {
    /// `None`: the slot's image (the `Activation::Rename` target); `Some`: a file of a
    /// multi-file task in the slot's files directory.
    pub(crate) file: Option<String>,
    /// The digest of the new bytes.
    pub(crate) digest: ExpectedDigest,
    /// An old file was there: it is kept as `{target}.previous` until the end.
    pub(crate) existed: bool,
}

impl Journal {
    fn encode(&self) -> io::Result<String> {
        let mut text = format!(
            "{MAGIC}\nmodule {}\nversion {}\n",
            self.module, self.version
        );
        if let Some(previous) = &self.previous {
            text += &format!("previous {previous}\n");
        }
        for entry in &self.entries {
            let mut hex = [0; 64];
            let hex = entry.digest.to_hex(&mut hex);
            let method = match entry.digest.method() {
                DigestMethod::Md5 => "md5",
                DigestMethod::Sha256 => "sha256",
            };
            let existed = u8::from(entry.existed);
            match &entry.file {
                None => text += &format!("image {method} {hex} {existed}\n"),
                Some(name) => text += &format!("file {method} {hex} {existed} {name}\n"),
            }
        }
        // Versions, modules and file names were checked, and none holds a line break; a
        // journal that would not read back the same is refused rather than written.
        match Journal::decode(&text) {
            Some(back) if back == *self => Ok(text),
            _ => Err(io::Error::other("the activation cannot be journaled")),
        }
    }

    fn decode(text: &str) -> Option<Journal> {
        let mut lines = text.lines();
        if lines.next()? != MAGIC {
            return None;
        }
        let mut journal = Journal {
            module: String::new(),
            version: String::new(),
            previous: None,
            entries: Vec::new(),
        };
        for line in lines {
            let (key, rest) = line.split_once(' ')?;
            match key {
                "module" => journal.module = rest.to_owned(),
                "version" => journal.version = rest.to_owned(),
                "previous" => journal.previous = Some(rest.to_owned()),
                "image" | "file" => {
                    let mut parts = rest.splitn(4, ' ');
                    let method = match parts.next()? {
                        "md5" => DigestMethod::Md5,
                        "sha256" => DigestMethod::Sha256,
                        _ => return None,
                    };
                    let digest = ExpectedDigest::from_hex(method, parts.next()?)?;
                    let existed = match parts.next()? {
                        "0" => false,
                        "1" => true,
                        _ => return None,
                    };
                    let file = match (key, parts.next()) {
                        ("image", None) => None,
                        ("file", Some(name)) if check_name(name).is_ok() => Some(name.to_owned()),
                        _ => return None,
                    };
                    journal.entries.push(Entry {
                        file,
                        digest,
                        existed,
                    });
                }
                _ => return None,
            }
        }
        let complete = !journal.module.is_empty() && !journal.version.is_empty();
        complete.then_some(journal)
    }

    /// Saves the journal atomically (temporary file, fsync, rename, fsync of the directory).
    pub(crate) fn save(&self, path: &Path) -> io::Result<()> {
        write_atomically(path, self.encode()?.as_bytes())
    }

    /// The journal at `path`: `Ok(None)` when there is none, `Err` when it cannot be read
    /// or is not a journal (left in place: it is not this adapter's to guess about).
    pub(crate) fn load(path: &Path) -> io::Result<Option<Journal>> {
        let file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut text = String::new();
        file.take(MAX_LEN + 1).read_to_string(&mut text)?;
        if text.len() as u64 > MAX_LEN {
            return Err(io::Error::other(format!("{} is too large", path.display())));
        }
        Journal::decode(&text)
            .map(Some)
            .ok_or_else(|| io::Error::other(format!("{} is not a journal", path.display())))
    }

    /// Removes the journal durably: the activation or rollback it covered is complete.
    pub(crate) fn remove(path: &Path) -> io::Result<()> {
        remove_if_present(path)?;
        sync_dir(path)
    }
}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = with_suffix(path, ".tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    sync_dir(path)
}

/// Whether the file at `path` has the digest `expected` (`false` when there is no such file).
pub(crate) fn has_digest(path: &Path, expected: &ExpectedDigest) -> io::Result<bool> {
    let mut hasher = Hasher::new(expected.method());
    let found = read_through(path, |bytes| hasher.update(bytes))?;
    Ok(found && hasher.matches(expected))
}

/// SHA-256 of the file at `path`, for an image whose task digest is not known here.
pub(crate) fn sha256_of(path: &Path) -> io::Result<ExpectedDigest> {
    let mut hasher = Sha256::new();
    if !read_through(path, |bytes| hasher.update(bytes))? {
        return Err(io::ErrorKind::NotFound.into());
    }
    let digest = hasher.finalize();
    ExpectedDigest::new(DigestMethod::Sha256, &digest).ok_or_else(|| io::Error::other("digest"))
}

/// Feeds the whole file at `path` to `each`; `false` when there is no such file.
fn read_through(path: &Path, mut each: impl FnMut(&[u8])) -> io::Result<bool> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut buffer = vec![0; CHUNK];
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(true);
        }
        each(&buffer[..n]);
    }
}

/// Copies `len` bytes of `src` from `offset` to a new file `dst`, synced; a short source is
/// an error.
pub(crate) fn copy_range(src: &File, offset: u64, len: u64, dst: &Path) -> io::Result<()> {
    let mut out = File::create(dst)?;
    let mut buffer = vec![0; CHUNK];
    let mut done = 0u64;
    while done < len {
        let want = usize::try_from((len - done).min(CHUNK as u64)).unwrap_or(CHUNK);
        let n = src.read_at(&mut buffer[..want], offset + done)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the staged slot is short",
            ));
        }
        out.write_all(&buffer[..n])?;
        done += n as u64;
    }
    out.sync_all()
}

/// Keeps `target` as `previous`: a hard link (no copy, and the old image stays whole), or a
/// synced copy where the filesystem has no hard links.
pub(crate) fn keep_previous(target: &Path, previous: &Path) -> io::Result<()> {
    remove_if_present(previous)?;
    if fs::hard_link(target, previous).is_ok() {
        return Ok(());
    }
    let tmp: PathBuf = with_suffix(previous, ".tmp");
    let source = File::open(target)?;
    let len = source.metadata()?.len();
    copy_range(&source, 0, len, &tmp)?;
    fs::rename(&tmp, previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal() -> Journal {
        Journal {
            module: "default".into(),
            version: "2.0.0".into(),
            previous: Some("1.0.0".into()),
            entries: vec![
                Entry {
                    file: None,
                    digest: ExpectedDigest::new(DigestMethod::Md5, &[7; 16]).unwrap(),
                    existed: true,
                },
                Entry {
                    file: Some("app 1.bin".into()),
                    digest: ExpectedDigest::new(DigestMethod::Sha256, &[0xab; 32]).unwrap(),
                    existed: false,
                },
            ],
        }
    }

    #[test]
    fn a_journal_reads_back_as_saved_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.record.journal");
        assert_eq!(Journal::load(&path).unwrap(), None);
        journal().save(&path).unwrap();
        assert_eq!(Journal::load(&path).unwrap(), Some(journal()));
        Journal::remove(&path).unwrap();
        assert_eq!(Journal::load(&path).unwrap(), None);
    }

    #[test]
    fn what_is_not_a_journal_is_an_error_and_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j");
        for text in [
            "",
            "ota-journal 1\n",
            "ota-journal 1\nmodule m\nversion 2\nimage md5 00 1\n",
            "ota-journal 1\nmodule m\nversion 2\nimage crc 00000000 1\n",
            "ota-journal 1\nmodule m\nversion 2\nfile md5 00000000000000000000000000000000 0 ../x\n",
            "ota-journal 1\nmodule m\nversion 2\ncolour blue\n",
        ] {
            fs::write(&path, text).unwrap();
            assert!(Journal::load(&path).is_err(), "{text:?}");
        }
        let mut bad = journal();
        bad.version = "2.0\nfile x".into();
        assert!(bad.save(&dir.path().join("k")).is_err());
        assert!(!dir.path().join("k").exists());
    }

    #[test]
    fn copies_are_exact_and_digests_are_checked_against_the_task() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::write(&src, b"0123456789").unwrap();
        let file = File::open(&src).unwrap();
        let dst = dir.path().join("dst");
        copy_range(&file, 2, 5, &dst).unwrap();
        assert_eq!(fs::read(&dst).unwrap(), b"23456");
        let md5 = |hex| ExpectedDigest::from_hex(DigestMethod::Md5, hex).unwrap();
        assert!(has_digest(&dst, &md5("adcaec3805aa912c0d0b14a81bedb6ff")).unwrap());
        assert!(!has_digest(&dst, &md5("adcaec3805aa912c0d0b14a81bedb6fe")).unwrap());
        let sha = sha256_of(&dst).unwrap();
        assert!(has_digest(&dst, &sha).unwrap());
        assert!(copy_range(&file, 8, 5, &dst).is_err(), "short");
        assert!(!has_digest(&dir.path().join("none"), &sha).unwrap());
        assert!(sha256_of(&dir.path().join("none")).is_err());
    }
}
