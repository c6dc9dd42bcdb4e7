//! A scan's report as a table, JSON or SARIF 2.1.0 (for code scanning: one result per stale
//! reference, one rule per kind of staleness).

use serde_json::{Value, json};

use super::{FlagReport, Staleness};
use crate::output::{Out, Tone, cell};

/// How many references a table row lists before it says "and N more".
const SHOWN_REFERENCES: usize = 3;

/// The JSON form: every flag, and how much was scanned.
pub fn json(reports: &[FlagReport], files: u64, bytes: u64, offline: bool) -> Value {
    json!({
        "offline": offline,
        "files": files,
        "bytes": bytes,
        "references": reports.iter().map(|r| r.references.len()).sum::<usize>(),
        "stale": reports.iter().filter(|r| !r.stale.is_empty()).count(),
        "flags": reports,
    })
}

pub fn table(out: &Out, reports: &[FlagReport], offline: bool) {
    let rows: Vec<Vec<(String, Tone)>> = reports
        .iter()
        .map(|report| {
            let mut places: Vec<String> = report
                .references
                .iter()
                .take(SHOWN_REFERENCES)
                .map(|r| format!("{}:{}", r.file, r.line))
                .collect();
            if report.references.len() > SHOWN_REFERENCES {
                places.push(format!(
                    "and {} more",
                    report.references.len() - SHOWN_REFERENCES
                ));
            }
            let mut row = vec![cell(&report.key), cell(report.references.len().to_string())];
            if !offline {
                row.push(if report.stale.is_empty() {
                    ("no".to_string(), Tone::Good)
                } else {
                    (report.reasons.join("; "), Tone::Bad)
                });
            }
            row.push((places.join(", "), Tone::Dim));
            row
        })
        .collect();
    if offline {
        out.table(&["flag", "refs", "where"], &rows);
    } else {
        out.table(&["flag", "refs", "stale", "where"], &rows);
    }
}

/// SARIF 2.1.0: a result per reference of a stale flag, at that reference. A flag defined on
/// the server but referenced nowhere has no place in the code, so it has no result here (the
/// table and JSON list it).
pub fn sarif(reports: &[FlagReport]) -> Value {
    let rules: Vec<Value> = Staleness::ALL
        .iter()
        .map(|kind| {
            json!({
                "id": kind.rule_id(),
                "name": kind.name(),
                "shortDescription": {"text": kind.summary()},
                "defaultConfiguration": {"level": "warning"},
            })
        })
        .collect();
    let mut results = Vec::new();
    for report in reports {
        for (kind, reason) in report.stale.iter().zip(&report.reasons) {
            let index = Staleness::ALL.iter().position(|k| k == kind).unwrap_or(0);
            for reference in &report.references {
                // SARIF locations are URIs: relative to the scanned root as they are, or
                // `file://` for an absolute path.
                let uri = if reference.file.starts_with('/') {
                    format!("file://{}", reference.file)
                } else {
                    reference.file.clone()
                };
                results.push(json!({
                    "ruleId": kind.rule_id(),
                    "ruleIndex": index,
                    "level": "warning",
                    "message": {"text": format!("Flag `{}`: {reason}.", report.key)},
                    "locations": [{
                        "physicalLocation": {
                            "artifactLocation": {"uri": uri},
                            "region": {
                                "startLine": reference.line,
                                "startColumn": reference.column,
                            },
                        },
                    }],
                }));
            }
        }
    }
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "anchor scan",
                "informationUri": "https://example.invalid/release-anchor",
                "version": env!("CARGO_PKG_VERSION"),
                "rules": rules,
            }},
            "results": results,
        }],
    })
}
