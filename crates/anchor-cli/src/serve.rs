//! `anchor serve`: settings from flags, environment and an optional TOML file, signals, and
//! the first start's one-time credentials.

use std::path::PathBuf;

use anchor_server::config::ServerConfig;
use anchor_server::{Secret, launch, start};
use anyhow::Context;
use serde::Deserialize;

use crate::args::ServeArgs;

/// The optional configuration file; flags and environment variables override it.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<Secret>,
    admin_password: Option<Secret>,
    #[serde(default)]
    cors_origins: Vec<String>,
    telemetry_max_age_days: Option<u32>,
    telemetry_minute_retention_days: Option<u32>,
    telemetry_retention_days: Option<u32>,
}

fn server_config(args: ServeArgs) -> anyhow::Result<ServerConfig> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the configuration file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text)
                .with_context(|| format!("parsing the configuration file {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| "127.0.0.1:4242".to_string());
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(|| PathBuf::from("anchor-data"));
    let database_url = args.database_url.map(Secret::new).or(file.database_url);
    let admin_password = std::env::var("ANCHOR_ADMIN_PASSWORD")
        .ok()
        .map(Secret::new)
        .or(file.admin_password);
    let cors_origins = if args.cors_origins.is_empty() {
        file.cors_origins
    } else {
        args.cors_origins
    };
    let config = ServerConfig::from_settings(&listen, data_dir, database_url, admin_password)?
        .with_cors_origins(cors_origins)?;
    let config = match args.telemetry_max_age_days.or(file.telemetry_max_age_days) {
        Some(days) => config.with_telemetry_max_age_days(days)?,
        None => config,
    };
    Ok(config.with_telemetry_retention_days(
        args.telemetry_minute_retention_days
            .or(file.telemetry_minute_retention_days),
        args.telemetry_retention_days
            .or(file.telemetry_retention_days),
    )?)
}

/// A future that completes on Ctrl-C (SIGINT) or SIGTERM. The handlers are installed when this
/// is called, before the server announces itself, so no early signal kills it uncleanly.
fn shutdown_signal() -> anyhow::Result<impl Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut interrupt =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut terminate =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::info!("shutting down: finishing requests in flight");
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down: finishing requests in flight");
        })
    }
}

#[allow(
    clippy::print_stdout,
    reason = "the first start prints its one-time credentials"
)]
pub async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = server_config(args)?;
    tracing::info!(?config, "starting");
    let shutdown = shutdown_signal()?;
    let started = start(&config).await.context("starting the server")?;
    let url = format!("http://{}", started.local_addr);
    if let Some(report) = &started.bootstrap {
        println!(
            "Release Anchor is set up: a project `default` with environments development, staging and production."
        );
        println!("  API:                {url}/api/v1  (reference: {url}/api/v1/docs)");
        match &report.generated_password {
            Some(password) => println!(
                "  Admin user:         {}  one-time password: {}  (shown only now)",
                report.admin_username,
                password.expose()
            ),
            None => println!(
                "  Admin user:         {}  (password from ANCHOR_ADMIN_PASSWORD)",
                report.admin_username
            ),
        }
        println!(
            "  API tokens:         POST {url}/api/v1/tokens with the admin's user name and password (HTTP Basic)"
        );
        println!(
            "  SDK keys:           POST {url}/api/v1/projects/default/environments/<environment>/keys {{\"kind\": \"server\"}} (or \"client\")"
        );
    }
    println!("Listening on {url}");
    launch(started.listener, started.state, shutdown)
        .await
        .context("serving")?;
    Ok(())
}
