//! What commands print: aligned tables (bold headers and coloured states only on a terminal
//! without NO_COLOR), JSON for scripts, nothing with --quiet. Everything goes through here so
//! the rules hold for every command.

use std::io::{IsTerminal, Write};

use serde_json::Value;

use crate::args::Output;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
    pub quiet: bool,
    pub color: bool,
}

/// How a table cell is drawn when colour is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Plain,
    Good,
    Bad,
    Dim,
}

impl Out {
    pub fn new(output: Output, quiet: bool) -> Self {
        let json = output == Output::Json;
        let color = !json
            && std::io::stdout().is_terminal()
            && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        Self { json, quiet, color }
    }

    /// Prints `value` as JSON with --output json, else lets `human` print (unless --quiet).
    pub fn show(&self, value: &Value, human: impl FnOnce(&Self)) {
        if self.json {
            self.print(&pretty(value));
        } else if !self.quiet {
            human(self);
        }
    }

    /// A line for people; nothing with --quiet or --output json.
    pub fn say(&self, line: &str) {
        if !self.quiet && !self.json {
            self.print(line);
        }
    }

    /// A line printed whatever the options (a secret shown once, an export).
    pub fn always(&self, line: &str) {
        self.print(line);
    }

    fn print(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        // A closed pipe (`anchor flags list | head`) is not an error worth a message.
        let _ = writeln!(stdout, "{text}");
    }

    /// A progress line on stderr, redrawn in place on a terminal; nothing with --quiet.
    pub fn progress(&self, line: &str) {
        if self.quiet {
            return;
        }
        let mut stderr = std::io::stderr().lock();
        if std::io::stderr().is_terminal() {
            let _ = write!(stderr, "\r\x1b[2K{line}");
        } else {
            let _ = writeln!(stderr, "{line}");
        }
        let _ = stderr.flush();
    }

    /// Ends a run of `progress` lines.
    pub fn progress_done(&self) {
        if !self.quiet && std::io::stderr().is_terminal() {
            let _ = writeln!(std::io::stderr().lock());
        }
    }

    pub fn paint(&self, text: &str, tone: Tone) -> String {
        if !self.color {
            return text.to_string();
        }
        let code = match tone {
            Tone::Plain => return text.to_string(),
            Tone::Good => "32",
            Tone::Bad => "31",
            Tone::Dim => "2",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    }

    /// An aligned table; an empty one says so instead.
    pub fn table(&self, headers: &[&str], rows: &[Vec<(String, Tone)>]) {
        if rows.is_empty() {
            self.print("(none)");
            return;
        }
        let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
        for row in rows {
            for (i, (cell, _)) in row.iter().enumerate() {
                if let Some(w) = widths.get_mut(i) {
                    *w = (*w).max(cell.chars().count());
                }
            }
        }
        let header: Vec<String> = headers
            .iter()
            .zip(&widths)
            .map(|(h, w)| format!("{:w$}", h.to_uppercase()))
            .collect();
        let header = header.join("  ").trim_end().to_string();
        if self.color {
            self.print(&format!("\x1b[1m{header}\x1b[0m"));
        } else {
            self.print(&header);
        }
        for row in rows {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|((cell, tone), w)| {
                    let pad = w.saturating_sub(cell.chars().count());
                    format!("{}{}", self.paint(cell, *tone), " ".repeat(pad))
                })
                .collect();
            self.print(cells.join("  ").trim_end());
        }
    }

    /// Key-value lines, aligned.
    pub fn fields(&self, pairs: &[(&str, String)]) {
        let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (key, value) in pairs {
            self.print(&format!("{key:width$}  {value}"));
        }
    }
}

pub fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

/// A plain cell.
pub fn cell(text: impl Into<String>) -> (String, Tone) {
    (text.into(), Tone::Plain)
}

/// A JSON value as a short cell: strings bare, everything else as JSON.
pub fn text(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS` UTC (civil-from-days, Howard Hinnant's
/// algorithm), so no date crate is needed for display.
pub fn time(ms: &Value) -> String {
    let Some(ms) = ms.as_i64() else {
        return String::new();
    };
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Who did something: a user by name, a token as `alice (token)`, the system as
/// `system:rollout-controller`.
pub fn actor(actor: &Value) -> String {
    let kind = actor["kind"].as_str().unwrap_or("");
    let id = actor["id"].as_str().unwrap_or("");
    match kind {
        "user" | "" => id.to_string(),
        // A token's id is `<user>/<token id>`; the user is what people look for.
        "token" => format!("{} (token)", id.split('/').next().unwrap_or(id)),
        _ => format!("{kind}:{id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_print_as_utc_dates() {
        assert_eq!(time(&json!(0)), "1970-01-01 00:00:00");
        assert_eq!(time(&json!(1_709_251_199_000_i64)), "2024-02-29 23:59:59");
        assert_eq!(time(&json!("x")), "");
    }
}
