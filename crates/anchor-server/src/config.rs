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
    /// Telemetry minutes older than this are merged into hours; `None`: 2 days, or the
    /// late-data window above if that is longer (a merged hour must never receive a minute).
    pub telemetry_minute_retention: Option<std::time::Duration>,
    /// Telemetry older than this is deleted (90 days by default).
    pub telemetry_retention: std::time::Duration,
}

/// How long telemetry keeps its minutes by default, and how long it is kept at all.
pub const DEFAULT_MINUTE_RETENTION_DAYS: u32 = 2;
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
const DAY: u64 = 86_400;

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
                telemetry_minute_retention: None,
                telemetry_retention: std::time::Duration::from_secs(
                    u64::from(DEFAULT_RETENTION_DAYS) * DAY,
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
        self.telemetry_max_age = std::time::Duration::from_secs(u64::from(days) * DAY);
        self.check_telemetry_ages()?;
        Ok(self)
    }

    /// Keeps telemetry at minute resolution for `minute_days` (then merged into hours) and
    /// at all for `keep_days`; `None` keeps the default. Either order with
    /// [`Self::with_telemetry_max_age_days`] gives the same checks.
    pub fn with_telemetry_retention_days(
        mut self,
        minute_days: Option<u32>,
        keep_days: Option<u32>,
    ) -> Result<Self, ConfigError> {
        if let Some(days) = minute_days {
            self.telemetry_minute_retention =
                Some(std::time::Duration::from_secs(u64::from(days) * DAY));
        }
        if let Some(days) = keep_days {
            self.telemetry_retention = std::time::Duration::from_secs(u64::from(days) * DAY);
        }
        self.check_telemetry_ages()?;
        Ok(self)
    }

    /// How long telemetry keeps its minutes: as configured, else 2 days or the late-data
    /// window if that is longer.
    pub fn minute_retention(&self) -> std::time::Duration {
        self.telemetry_minute_retention.unwrap_or_else(|| {
            std::time::Duration::from_secs(u64::from(DEFAULT_MINUTE_RETENTION_DAYS) * DAY)
                .max(self.telemetry_max_age)
        })
    }

    /// Minutes must stay minutes as long as late data for them is accepted: ingestion adds
    /// to a minute's row, and a minute merged into its hour would then be counted apart from
    /// it, or (were it merged again) twice. Rows must outlive their minutes.
    fn check_telemetry_ages(&self) -> Result<(), ConfigError> {
        let days = |d: std::time::Duration| d.as_secs() / DAY;
        let minutes = self.minute_retention();
        let mut problems = Vec::new();
        if !(DAY..=365 * DAY).contains(&minutes.as_secs()) {
            problems.push(format!(
                "the telemetry minute retention of {} days is not between 1 and 365 days",
                days(minutes)
            ));
        }
        if minutes < self.telemetry_max_age {
            problems.push(format!(
                "the telemetry minute retention ({} days) is shorter than the window in which \
                 late telemetry is accepted ({} days): minutes already merged into hours would \
                 receive late data",
                days(minutes),
                days(self.telemetry_max_age)
            ));
        }
        if !(DAY..=3_650 * DAY).contains(&self.telemetry_retention.as_secs()) {
            problems.push(format!(
                "the telemetry retention of {} days is not between 1 and 3650 days",
                days(self.telemetry_retention)
            ));
        } else if self.telemetry_retention < minutes {
            problems.push(format!(
                "the telemetry retention ({} days) is shorter than its minute retention ({} days)",
                days(self.telemetry_retention),
                days(minutes)
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(problems))
        }
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
    fn minutes_are_kept_at_least_as_long_as_late_telemetry_is_accepted() {
        let config = ServerConfig::from_settings("127.0.0.1:4242", "d".into(), None, None).unwrap();
        // The default two days give way to the default late-data window of 7.
        assert_eq!(config.minute_retention().as_secs(), 7 * DAY);
        assert_eq!(config.telemetry_retention.as_secs(), 90 * DAY);
        let short = config.clone().with_telemetry_max_age_days(1).unwrap();
        assert_eq!(short.minute_retention().as_secs(), 2 * DAY);
        // Explicitly shorter than the window is refused, in either order of the settings.
        assert!(
            config
                .clone()
                .with_telemetry_retention_days(Some(2), None)
                .is_err()
        );
        let two = short.with_telemetry_retention_days(Some(2), None).unwrap();
        assert!(two.clone().with_telemetry_max_age_days(3).is_err());
        assert!(two.clone().with_telemetry_max_age_days(2).is_ok());
        // The retention outlives the minutes, and both stay in range.
        assert!(
            two.clone()
                .with_telemetry_retention_days(None, Some(1))
                .is_err()
        );
        assert!(
            two.clone()
                .with_telemetry_retention_days(Some(0), None)
                .is_err()
        );
        let err = two
            .with_telemetry_retention_days(Some(400), Some(5_000))
            .unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
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
