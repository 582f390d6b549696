//! A firmware package as it is uploaded: its image or files, how devices fetch it, the fields
//! passed to devices as they are, and the platform's limits it is checked against
//! (docs/protocol.md §3, §8).

use serde::Serialize;

/// Digest a package is announced with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SignMethod {
    /// MD5: `signMethod` `Md5`, and the legacy `md5` field is sent too.
    Md5,
    /// SHA-256: `signMethod` `SHA256`.
    Sha256,
}

/// How devices fetch a package (docs/protocol.md §5, §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DownloadProtocol {
    /// A signed HTTP URL per file (`url`, or `fileUrl` in a multi-file task).
    #[default]
    Http,
    /// Blocks over MQTT: `"dProtocol":"mqtt"` with a `streamId` instead of URLs.
    Mqtt,
}

/// Most files one package may hold (docs/protocol.md §8).
pub const MAX_FILES: usize = 20;

/// Largest image the MQTT channel carries (docs/protocol.md §8).
pub const MAX_MQTT_FILE_SIZE: usize = 16 * 1024 * 1024;

/// Longest `extData`, as compact JSON (docs/protocol.md §8).
pub const MAX_EXT_DATA_LEN: usize = 4096;

/// A firmware package to upload.
#[derive(Debug, Clone)]
pub struct PackageSpec {
    /// Target version, 1–64 chars of `[A-Za-z0-9._-]`.
    pub version: String,
    /// Module, `default` for the whole firmware.
    pub module: String,
    /// The image of a single-file package (empty for a multi-file one).
    pub data: Vec<u8>,
    /// The named files of a multi-file package (empty for a single-file one). Pushes then
    /// carry `data.files` instead of the top-level `size`/`url`/`md5`/`sign`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Digest announced in pushes.
    pub sign_method: SignMethod,
    /// A verification job must succeed before batch jobs may use the package.
    pub needs_verification: bool,
    /// HTTP URLs or the MQTT channel.
    pub download_protocol: DownloadProtocol,
    /// `extData`, a JSON object passed to devices as it is.
    pub ext_data: Option<serde_json::Value>,
    /// `isDiff: 1`: the image is a delta against the running version.
    pub is_diff: bool,
    /// `digestsign`, the package signature for secure boot, passed as it is.
    pub digestsign: Option<String>,
}

impl PackageSpec {
    /// A default-module, MD5 package with one image, served over HTTP, that needs no
    /// verification.
    pub fn new(version: impl Into<String>, data: Vec<u8>) -> PackageSpec {
        PackageSpec {
            version: version.into(),
            module: crate::model::DEFAULT_MODULE.to_owned(),
            data,
            files: Vec::new(),
            sign_method: SignMethod::Md5,
            needs_verification: false,
            download_protocol: DownloadProtocol::Http,
            ext_data: None,
            is_diff: false,
            digestsign: None,
        }
    }

    /// A multi-file package (1–20 files with distinct names), otherwise like [`PackageSpec::new`].
    pub fn files<N: Into<String>>(
        version: impl Into<String>,
        files: impl IntoIterator<Item = (N, Vec<u8>)>,
    ) -> PackageSpec {
        PackageSpec {
            files: files.into_iter().map(|(n, d)| (n.into(), d)).collect(),
            ..PackageSpec::new(version, Vec::new())
        }
    }

    /// Sets the module.
    pub fn module(mut self, module: impl Into<String>) -> PackageSpec {
        self.module = module.into();
        self
    }

    /// Sets the digest method.
    pub fn sign_method(mut self, method: SignMethod) -> PackageSpec {
        self.sign_method = method;
        self
    }

    /// Sets how devices fetch the package.
    pub fn download_protocol(mut self, protocol: DownloadProtocol) -> PackageSpec {
        self.download_protocol = protocol;
        self
    }

    /// Offers the package over the MQTT channel.
    pub fn mqtt(self) -> PackageSpec {
        self.download_protocol(DownloadProtocol::Mqtt)
    }

    /// Sets `extData` (must be a JSON object; keeps a `_package_udi` set before).
    pub fn ext_data(mut self, ext: serde_json::Value) -> PackageSpec {
        let udi = self.take_udi();
        self.ext_data = Some(ext);
        if let Some(udi) = udi {
            self = self.package_udi(udi);
        }
        self
    }

    /// Sets `extData._package_udi`, a string that itself holds JSON.
    pub fn package_udi(mut self, udi: impl Into<String>) -> PackageSpec {
        let mut ext = match self.ext_data.take() {
            Some(serde_json::Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        ext.insert("_package_udi".into(), serde_json::Value::String(udi.into()));
        self.ext_data = Some(serde_json::Value::Object(ext));
        self
    }

    fn take_udi(&mut self) -> Option<String> {
        match self
            .ext_data
            .as_mut()?
            .as_object_mut()?
            .remove("_package_udi")?
        {
            serde_json::Value::String(s) => Some(s),
            _ => None,
        }
    }

    /// Marks the image as a delta (`isDiff: 1`).
    pub fn diff(mut self) -> PackageSpec {
        self.is_diff = true;
        self
    }

    /// Sets `digestsign`.
    pub fn digestsign(mut self, sign: impl Into<String>) -> PackageSpec {
        self.digestsign = Some(sign.into());
        self
    }

    /// Whether pushes use the multi-file variant.
    pub fn is_multi_file(&self) -> bool {
        !self.files.is_empty()
    }

    /// Checks the platform's rules: version and module 1–64 chars of `[A-Za-z0-9._-]`; one
    /// non-empty image, or 1–20 non-empty files with distinct names that fit in a URL path
    /// segment; images for the MQTT channel at most 16 MB; `extData` an object of at most
    /// 4096 chars.
    pub fn validate(&self) -> Result<(), crate::Error> {
        use crate::Error::{EmptyPackage, InvalidName, InvalidPackage};
        let valid = |s: &str| {
            (1..=64).contains(&s.len())
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !valid(&self.version) {
            return Err(InvalidName(self.version.clone()));
        }
        if !valid(&self.module) {
            return Err(InvalidName(self.module.clone()));
        }
        let images: Vec<&[u8]> = if self.is_multi_file() {
            if !self.data.is_empty() {
                return Err(InvalidPackage("both data and files".into()));
            }
            if self.files.len() > MAX_FILES {
                return Err(InvalidPackage(format!("more than {MAX_FILES} files")));
            }
            for (i, (name, _)) in self.files.iter().enumerate() {
                let bad = name.is_empty()
                    || name.len() > 255
                    || name == "."
                    || name == ".."
                    || name.chars().any(|c| c.is_control() || "/\\?#%".contains(c));
                if bad || self.files[..i].iter().any(|(n, _)| n == name) {
                    return Err(InvalidName(name.clone()));
                }
            }
            self.files.iter().map(|(_, d)| d.as_slice()).collect()
        } else {
            vec![self.data.as_slice()]
        };
        if images.iter().any(|d| d.is_empty()) {
            return Err(EmptyPackage);
        }
        if self.download_protocol == DownloadProtocol::Mqtt
            && images.iter().any(|d| d.len() > MAX_MQTT_FILE_SIZE)
        {
            return Err(InvalidPackage(
                "image too large for the MQTT channel".into(),
            ));
        }
        if let Some(ext) = &self.ext_data {
            if !ext.is_object() || ext.to_string().len() > MAX_EXT_DATA_LEN {
                return Err(InvalidPackage(format!(
                    "extData must be an object of at most {MAX_EXT_DATA_LEN} chars"
                )));
            }
        }
        Ok(())
    }

    /// Requires a successful verification job before batch jobs.
    pub fn needs_verification(mut self) -> PackageSpec {
        self.needs_verification = true;
        self
    }
}
