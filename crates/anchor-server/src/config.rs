//! The server's configuration, validated as a whole before a port is bound.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// A value that must never be printed: `Debug` and `Display` show `[redacted]`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; call only where it is used.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where the server stores its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Database {
    /// The embedded default: `<data dir>/anchor.db`.
    Sqlite { path: PathBuf },
    /// A `postgres://` URL (it may contain a password, hence the secret).
    Postgres { url: Secret },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub database: Database,
    /// The first admin's password, instead of a generated one-time password.
    pub admin_password: Option<Secret>,
    /// Origins whose pages may call the OFREP routes from a browser (CORS), e.g.
    /// `https://app.example.com`. None by default.
    pub cors_origins: Vec<String>,
    /// SDK telemetry for minutes older than this is refused (7 days by default).
    pub telemetry_max_age: std::time::Duration,
}

/// Every problem with a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .0.join("; "))]
pub struct ConfigError(pub Vec<String>);

impl ServerConfig {
    /// Builds a configuration from raw settings, checking all of them before failing.
    pub fn from_settings(
        listen: &str,
        data_dir: PathBuf,
        database_url: Option<Secret>,
        admin_password: Option<Secret>,
    ) -> Result<Self, ConfigError> {
        let mut problems = Vec::new();
        let listen = match listen.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                problems.push(format!(
                    "listen address `{listen}` is not an IP address and port such as 127.0.0.1:4242"
                ));
                None
            }
        };
        let database = match database_url {
            Some(url)
                if url.expose().starts_with("postgres://")
                    || url.expose().starts_with("postgresql://") =>
            {
                Some(Database::Postgres { url })
            }
            Some(_) => {
                problems.push(
                    "database URL must start with postgres:// (leave it unset for the embedded SQLite store)"
                        .to_string(),
                );
                None
            }
            None => {
                if data_dir.as_os_str().is_empty() {
                    problems.push("the data directory cannot be empty".to_string());
                }
                Some(Database::Sqlite {
                    path: data_dir.join("anchor.db"),
                })
            }
        };
        if let Some(p) = &admin_password
            && p.expose().chars().count() < 12
        {
            problems.push("the admin password must have at least 12 characters".to_string());
        }
        match (listen, database) {
            (Some(listen), Some(database)) if problems.is_empty() => Ok(ServerConfig {
                listen,
                database,
                admin_password,
                cors_origins: Vec::new(),
                telemetry_max_age: std::time::Duration::from_secs(
                    crate::telemetry::DEFAULT_MAX_AGE_SECS as u64,
                ),
            }),
            _ => Err(ConfigError(problems)),
        }
    }
}

impl ServerConfig {
    /// Sets the origins allowed to call OFREP from a browser; each must be a bare
    /// `http(s)://host[:port]` origin.
    pub fn with_cors_origins(mut self, origins: Vec<String>) -> Result<Self, ConfigError> {
        let bad: Vec<String> = origins
            .iter()
            .filter(|o| {
                let rest = o
                    .strip_prefix("https://")
                    .or_else(|| o.strip_prefix("http://"));
                !rest.is_some_and(|r| !r.is_empty() && !r.contains('/'))
            })
            .map(|o| format!("CORS origin `{o}` is not of the form https://host[:port]"))
            .collect();
        if !bad.is_empty() {
            return Err(ConfigError(bad));
        }
        self.cors_origins = origins;
        Ok(self)
    }

    /// Refuses SDK telemetry for minutes older than `days` (1 to 30; the store remembers a
    /// batch's id for 35 days, so a batch retried within the window never counts twice).
    pub fn with_telemetry_max_age_days(mut self, days: u32) -> Result<Self, ConfigError> {
        if !(1..=30).contains(&days) {
            return Err(ConfigError(vec![format!(
                "the telemetry window of {days} days is not between 1 and 30 days"
            )]));
        }
        self.telemetry_max_age = std::time::Duration::from_secs(u64::from(days) * 86_400);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let config = ServerConfig::from_settings(
            "127.0.0.1:4242",
            "data".into(),
            Some(Secret::new("postgres://anchor:hunter2@db/anchor")),
            Some(Secret::new("correct horse battery")),
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("horse"),
            "{shown}"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let err = ServerConfig::from_settings(
            "localhost",
            "data".into(),
            Some(Secret::new("mysql://x")),
            Some(Secret::new("short")),
        )
        .unwrap_err();
        assert_eq!(err.0.len(), 3, "{err}");
    }

    #[test]
    fn cors_origins_must_be_bare_origins() {
        let config = ServerConfig::from_settings("127.0.0.1:4242", "d".into(), None, None).unwrap();
        assert!(
            config
                .clone()
                .with_cors_origins(vec!["https://app.example.com".into()])
                .is_ok()
        );
        let err = config
            .with_cors_origins(vec!["app.example.com".into(), "https://x.com/path".into()])
            .unwrap_err();
        assert_eq!(err.0.len(), 2);
    }

    #[test]
    fn the_telemetry_window_is_one_to_thirty_days() {
        let config = ServerConfig::from_settings("127.0.0.1:4242", "d".into(), None, None).unwrap();
        assert_eq!(config.telemetry_max_age.as_secs(), 7 * 86_400);
        let config = config.with_telemetry_max_age_days(30).unwrap();
        assert_eq!(config.telemetry_max_age.as_secs(), 30 * 86_400);
        assert!(config.clone().with_telemetry_max_age_days(0).is_err());
        assert!(config.with_telemetry_max_age_days(31).is_err());
    }

    #[test]
    fn the_default_is_sqlite_in_the_data_directory() {
        let config =
            ServerConfig::from_settings("127.0.0.1:4242", "anchor-data".into(), None, None)
                .unwrap();
        assert_eq!(
            config.database,
            Database::Sqlite {
                path: "anchor-data/anchor.db".into()
            }
        );
    }
}
