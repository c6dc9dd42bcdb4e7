use std::path::PathBuf;

/// Why a client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server refused the SDK key (401 or 403): a wrong, revoked or client-kind key.
    #[error("the server refused the SDK key ({status}): {message}")]
    Unauthorized { status: u16, message: String },
    /// No configuration arrived in time and there was no file to start from.
    #[error(
        "no configuration from {url} within {timeout_ms} ms ({last_error}) and no cache or bootstrap file to start from"
    )]
    NotReady {
        url: String,
        timeout_ms: u128,
        last_error: String,
    },
    /// A configuration file could not be read or is not a configuration.
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    /// The URL is not an absolute http(s) URL.
    #[error("`{0}` is not an http or https URL")]
    Url(String),
    /// The SDK runs its background work on Tokio: build it inside a runtime.
    #[error("the client must be built inside a Tokio runtime")]
    NoRuntime,
}
