//! The `anchor` binary: command-line definition and glue. `anchor serve` starts the server.

use std::path::PathBuf;

use anchor_server::config::ServerConfig;
use anchor_server::{Secret, launch, start};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Deserialize;

#[derive(Parser)]
#[command(
    name = "anchor",
    version,
    about = "Release Anchor: feature flags and progressive delivery"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (management API; embedded SQLite store by default).
    Serve(ServeArgs),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:4242]
    #[arg(long, env = "ANCHOR_LISTEN")]
    listen: Option<String>,
    /// Directory of the embedded SQLite store [default: ./anchor-data]
    #[arg(long, env = "ANCHOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// A postgres:// URL, to use PostgreSQL instead of the embedded store
    #[arg(long, env = "ANCHOR_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Origins whose pages may call OFREP from a browser (comma-separated)
    #[arg(long, env = "ANCHOR_CORS_ORIGINS", value_delimiter = ',')]
    cors_origins: Vec<String>,
    /// Days after which SDK telemetry for a minute is refused, 1 to 30 [default: 7]
    #[arg(long, env = "ANCHOR_TELEMETRY_MAX_AGE_DAYS")]
    telemetry_max_age_days: Option<u32>,
    /// Days after which telemetry minutes are merged into hours, at least the telemetry max
    /// age [default: 2, or the telemetry max age if longer]
    #[arg(long, env = "ANCHOR_TELEMETRY_MINUTE_RETENTION_DAYS")]
    telemetry_minute_retention_days: Option<u32>,
    /// Days after which telemetry is deleted [default: 90]
    #[arg(long, env = "ANCHOR_TELEMETRY_RETENTION_DAYS")]
    telemetry_retention_days: Option<u32>,
    /// A TOML file with any of: listen, data_dir, database_url, admin_password, cors_origins,
    /// telemetry_max_age_days, telemetry_minute_retention_days, telemetry_retention_days
    #[arg(long, env = "ANCHOR_CONFIG")]
    config: Option<PathBuf>,
}

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
async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ANCHOR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
    }
}
