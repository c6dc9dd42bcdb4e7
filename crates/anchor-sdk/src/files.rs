//! Configuration files: the cache the SDK writes after every change (opt-in), bootstrap files
//! and offline files. All three have the format of `GET /sdk/v1/config`.

use std::path::{Path, PathBuf};

use crate::Error;
use crate::held::ConfigPayload;

pub(crate) fn read(path: &Path) -> Result<ConfigPayload, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    serde_json::from_slice(&bytes).map_err(|e| Error::File {
        path: path.to_path_buf(),
        message: format!("not a flag configuration: {e}"),
    })
}

/// Writes the file whole or not at all: a temporary file beside it, then a rename, so a crash
/// mid-write leaves the previous cache intact.
pub(crate) fn write(path: &Path, payload: &ConfigPayload) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(payload).map_err(std::io::Error::other)?;
    let mut temporary: PathBuf = path.to_path_buf();
    temporary.set_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// What identifies a version of a file cheaply: its modification time and length.
pub(crate) fn stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
