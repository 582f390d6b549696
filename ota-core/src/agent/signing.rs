//! The secure-upgrade check (docs/protocol.md §11) at the two places an image can move towards
//! activation: once its digest matched at the end of a download, and when a download is
//! restored from the record after a power loss. Feature `signature`.
//!
//! What is signed is the image digest the task carries. A multi-file task has one digest
//! per file but the push carries no per-file signature, so a device with a key refuses
//! multi-file tasks rather than activate files nothing vouches for.

use alloc::format;
use alloc::string::String;

use super::{Agent, State};
use crate::record::ImageId;
use crate::signature::SignatureError;

const MULTI_FILE: &str =
    "package signature: a multi-file task carries no per-file signature, refused";

impl Agent {
    /// Why the download that just matched its digest must not be activated, if it must not.
    pub(super) fn signature_refusal(&self) -> Option<String> {
        let key = self.config.package_key.as_ref()?;
        let State::Downloading(d) = &self.state else {
            return None;
        };
        if !d.task.files().is_empty() {
            return Some(String::from(MULTI_FILE));
        }
        let checked = key.verify_text(&d.task.digest, d.task.digestsign.as_deref());
        checked.err().map(|e| describe(e, &d.task.version))
    }

    /// Why a download restored from the record must not go on, if it must not: the
    /// signature saved with it is checked again, so an image that could never be activated
    /// is not downloaded to the end first.
    pub(super) fn restored_signature_refusal(&self, image: &ImageId) -> Option<String> {
        let key = self.config.package_key.as_ref()?;
        if image.files > 0 {
            return Some(String::from(MULTI_FILE));
        }
        let checked = match &image.signature {
            None => Err(SignatureError::Missing),
            Some(signature) => key.verify(&image.digest, signature),
        };
        checked.err().map(|e| describe(e, &image.version))
    }
}

fn describe(error: SignatureError, version: &str) -> String {
    format!("{error} (version {version}); not activated")
}
