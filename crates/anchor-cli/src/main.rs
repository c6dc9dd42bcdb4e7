//! The `anchor` binary: the command line (`args`), the server (`serve`), and the management
//! commands over the HTTP API (`commands`, through `http`, printing through `output`).

mod args;
mod commands;
mod config;
mod error;
mod http;
mod mcp;
mod output;
// Also used by `anchor mcp`, which looks for stale flags the same way.
#[cfg(test)]
mod reference;
mod scan;
mod serve;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use crate::args::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            tracing_subscriber::fmt()
                .with_writer(std::io::stderr)
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_env("ANCHOR_LOG")
                        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
                )
                .init();
            match serve::serve(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    let _ = writeln!(std::io::stderr(), "Error: {error:?}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Mcp(args) => match mcp::run(cli.global, args).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: {error}");
                ExitCode::from(error.exit_code())
            }
        },
        command => match commands::run(cli.global, command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                let _ = writeln!(std::io::stderr(), "error: {error}");
                ExitCode::from(error.exit_code())
            }
        },
    }
}
