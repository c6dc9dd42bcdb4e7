//! The credentials `anchor login` stores: `$XDG_CONFIG_HOME/anchor/config.toml` (or
//! `~/.config/anchor/config.toml`), readable by the user alone, replaced atomically so a
//! crash never leaves half a file.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// A personal access token. Its `Debug` never shows it.
#[derive(Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Token(String);

impl Token {
    pub fn new(token: impl Into<String>) -> Self {
        Self(token.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stored {
    pub url: Option<String>,
    pub token: Option<Token>,
}

/// Where the file lives; `None` when neither `XDG_CONFIG_HOME` nor `HOME` is set.
pub fn path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(base.join("anchor").join("config.toml"))
}

/// The stored credentials; nothing stored is not an error.
pub fn load() -> Result<Stored, CliError> {
    let Some(path) = path() else {
        return Ok(Stored::default());
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text)
            .map_err(|e| CliError::Local(format!("reading {}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Stored::default()),
        Err(e) => Err(CliError::Local(format!("reading {}: {e}", path.display()))),
    }
}

/// Writes the credentials: a temporary file created with mode 0600 beside the target, synced,
/// then renamed over it, so the token is never readable by others nor the file half written.
pub fn save(stored: &Stored) -> Result<PathBuf, CliError> {
    let path = path().ok_or_else(|| {
        CliError::Local("no config directory: set XDG_CONFIG_HOME or HOME".into())
    })?;
    let text = toml::to_string(stored)
        .map_err(|e| CliError::Local(format!("serialising the configuration: {e}")))?;
    write_private(&path, text.as_bytes())
        .map_err(|e| CliError::Local(format!("writing {}: {e}", path.display())))?;
    Ok(path)
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let temporary = dir.join(format!(".config.toml.{}.tmp", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let result = (|| {
        let mut file = options.open(&temporary)?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_never_shows_in_debug_output() {
        let stored = Stored {
            url: Some("http://x".into()),
            token: Some(Token::new("ra_pat_secret")),
        };
        assert!(!format!("{stored:?}").contains("ra_pat_secret"));
    }
}
