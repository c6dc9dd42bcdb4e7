//! `anchor scan`: resolves the options and the `.anchor-scan.toml` file into `ScanOptions`,
//! scans, reads the project's flags (unless offline) and prints the report.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use regex::Regex;
use serde::Deserialize;

use super::Ctx;
use crate::args::{Output, ScanArgs};
use crate::error::CliError;
use crate::output::Out;
use crate::scan::{self, FlagReport, ScanOptions, ServerFlag};

/// `.anchor-scan.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanConfig {
    #[serde(default)]
    patterns: Vec<String>,
    #[serde(default)]
    aliases: BTreeMap<String, String>,
}

const CONFIG_FILE: &str = ".anchor-scan.toml";

/// The options and the file, as one `ScanOptions`; every bad pattern or alias is a usage error
/// naming it.
fn options(args: &ScanArgs) -> Result<ScanOptions, CliError> {
    let config = match &args.config {
        Some(path) => read_config(path)?,
        None if Path::new(CONFIG_FILE).is_file() => read_config(Path::new(CONFIG_FILE))?,
        None => ScanConfig::default(),
    };
    let mut patterns = Vec::new();
    for text in config.patterns.iter().chain(&args.patterns) {
        let regex =
            Regex::new(text).map_err(|e| CliError::Usage(format!("pattern `{text}`: {e}")))?;
        if regex.captures_len() < 2 {
            return Err(CliError::Usage(format!(
                "pattern `{text}` has no capture group for the flag key"
            )));
        }
        patterns.push(regex);
    }
    let mut aliases: Vec<(String, String)> = config.aliases.into_iter().collect();
    for text in &args.aliases {
        let (name, key) = text
            .split_once('=')
            .filter(|(name, key)| !name.is_empty() && !key.is_empty())
            .ok_or_else(|| CliError::Usage(format!("alias `{text}` is not NAME=KEY")))?;
        aliases.push((name.to_string(), key.to_string()));
    }
    Ok(ScanOptions { patterns, aliases })
}

fn read_config(path: &Path) -> Result<ScanConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Local(format!("reading {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| CliError::Usage(format!("{}: {e}", path.display())))
}

fn paths(args: &ScanArgs) -> Result<Vec<PathBuf>, CliError> {
    if args.paths.is_empty() {
        return Ok(vec![PathBuf::from(".")]);
    }
    for path in &args.paths {
        if !path.exists() {
            return Err(CliError::Usage(format!(
                "{}: no such file or directory",
                path.display()
            )));
        }
    }
    Ok(args.paths.clone())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// `--offline`: references only; no URL or token needed.
pub fn offline(args: &ScanArgs, output: Output, out: Out) -> Result<(), CliError> {
    let options = options(args)?;
    let found = scan::find_references(&paths(args)?, &options);
    let reports = scan::classify(&found.references, None, now_ms(), args.days);
    print(&out, output, &reports, &found, true);
    Ok(())
}

pub async fn online(ctx: &Ctx, args: &ScanArgs, output: Output) -> Result<(), CliError> {
    let options = options(args)?;
    let paths = paths(args)?;
    let records = super::flags::all_flags(ctx, &[("archived", Some("true".to_string()))]).await?;
    let server: Vec<ServerFlag> = records.iter().filter_map(ServerFlag::from_json).collect();
    // The walk blocks (its threads are its own); the runtime's other tasks need not wait.
    let found = tokio::task::spawn_blocking(move || scan::find_references(&paths, &options))
        .await
        .map_err(|e| CliError::Local(format!("scanning: {e}")))?;
    let reports = scan::classify(&found.references, Some(&server), now_ms(), args.days);
    print(&ctx.out, output, &reports, &found, false);
    let stale = reports.iter().filter(|r| !r.stale.is_empty()).count();
    if args.fail_on_stale && stale > 0 {
        return Err(CliError::Stale(format!(
            "{stale} stale flag{} (--fail-on-stale)",
            if stale == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

fn print(out: &Out, output: Output, reports: &[FlagReport], found: &scan::Scan, offline: bool) {
    for error in &found.errors {
        out.progress(&format!("warning: {error}"));
    }
    match output {
        Output::Sarif => out.always(&crate::output::pretty(&scan::output::sarif(reports))),
        Output::Json => out.always(&crate::output::pretty(&scan::output::json(
            reports,
            found.files,
            found.bytes,
            offline,
        ))),
        Output::Table => {
            scan::output::table(out, reports, offline);
            out.say(&format!(
                "{} files, {} references, {} flags",
                found.files,
                found.references.len(),
                reports.len()
            ));
        }
    }
}
