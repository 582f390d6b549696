//! Multi-file tasks (`data.files`). The core lays the files out in the slot back to back,
//! each starting on a `write_block` boundary, and its `Write` offsets are slot offsets. This
//! adapter keeps that layout as it is in the staging file (so a resume after a power loss
//! needs nothing beyond the core's record) and splits it only at activation, into
//! `<files_dir>/<fileName>`, all files or none (see `journal` and `Storage::activate`).
//!
//! File names come from the cloud and become paths, so a name that could leave the directory
//! (`/`, `\`, `.`, `..`, NUL or any control character), a name the activation uses for its
//! own files (`*.tmp`, `*.previous`), or a name given twice (the second copy would replace
//! the first one's kept original) refuses the whole task before its first byte is written.

use ota_core::task::TaskFile;

/// The list of installed files of earlier versions of this adapter: still never a file name.
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
        for (i, file) in files.iter().enumerate() {
            check_name(&file.name)?;
            if files[..i].iter().any(|f| f.name == file.name) {
                return Err(format!("file name {:?} is given twice", file.name));
            }
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
        let twice = Layout::new(&[file("a", 1), file("b", 1), file("a", 2)], 4);
        assert!(twice.unwrap_err().contains("twice"));
    }
}
