//! The small file-system steps that the storage, the journal and the sub-device slots share:
//! a removal that tolerates absence, a sibling path, and making a directory entry durable.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

/// The directory of `path`.
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
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
    File::open(parent_of(path))?.sync_all()
}
