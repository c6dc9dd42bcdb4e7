//! `anchor scan`: finds the flag keys a source tree refers to, and joins them with what the
//! server knows of each flag to say which are stale.
//!
//! Three steps, each usable alone (`anchor mcp` calls the first two):
//! - [`find_references`] walks the paths (gitignore rules, hidden files skipped, in parallel
//!   with `ignore`'s walker) and matches each file of a known language against the SDK call
//!   patterns of `lang`, plus the user's own patterns and aliases. No network.
//! - [`classify`] joins references with the server's flags (`ServerFlag`, read from the flag
//!   API's JSON) and says, per flag, whether and why it is stale. Pure: `now` is an argument.
//! - `output` prints a report as a table, JSON or SARIF.

mod lang;
pub mod output;
mod report;

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use regex::Regex;
use serde::Serialize;

pub use report::{FlagReport, ServerFlag, Staleness, classify};

/// One place in the code that names a flag key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Reference {
    /// As walked from the scanned path, with `/` separators.
    pub file: String,
    /// 1-based.
    pub line: u32,
    /// 1-based, in characters.
    pub column: u32,
    pub key: String,
    /// `rust`, `javascript`, …, or `pattern` (a `--pattern`) or `alias` (an `--alias`).
    pub language: String,
}

/// What to look for beyond the built-in SDK calls.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Each with one capture group (or one named `key`) holding the key; applied to every
    /// text file, comments included (a pattern is the user's to make precise).
    pub patterns: Vec<Regex>,
    /// (name, key): the identifier `name`, as a whole word, refers to flag `key` (a constant
    /// that holds the key, a wrapper function named after the flag).
    pub aliases: Vec<(String, String)>,
}

/// A scan's references and how much it read.
#[derive(Debug, Default)]
pub struct Scan {
    pub references: Vec<Reference>,
    pub files: u64,
    pub bytes: u64,
    /// Files that could not be read, with why (`path: error`).
    pub errors: Vec<String>,
}

/// The references under `paths` (files or directories), sorted by file, line and column, with
/// how much was read. The walk is parallel (one thread per core) and blocks until done.
pub fn find_references(paths: &[PathBuf], options: &ScanOptions) -> Scan {
    let matcher = Matcher::new(options);
    let Some((first, rest)) = paths.split_first() else {
        return Scan::default();
    };
    let mut walk = ignore::WalkBuilder::new(first);
    for path in rest {
        walk.add(path);
    }
    // A tree that is not a git checkout still has its .gitignore files respected.
    walk.require_git(false);
    let (sender, receiver) = mpsc::channel::<Scan>();
    walk.build_parallel().run(|| {
        let matcher = &matcher;
        let mut local = Local {
            scan: Scan::default(),
            sender: sender.clone(),
        };
        Box::new(move |entry| {
            match entry {
                Ok(entry) if entry.file_type().is_some_and(|t| t.is_file()) => {
                    matcher.file(entry.path(), &mut local.scan);
                }
                Ok(_) => {}
                Err(error) => local.scan.errors.push(error.to_string()),
            }
            ignore::WalkState::Continue
        })
    });
    drop(sender);
    let mut total = Scan::default();
    for part in receiver {
        total.references.extend(part.references);
        total.files += part.files;
        total.bytes += part.bytes;
        total.errors.extend(part.errors);
    }
    total.references.sort();
    total.references.dedup();
    total.errors.sort();
    total
}

/// One walker thread's findings, sent when the walker drops its visitor.
struct Local {
    scan: Scan,
    sender: mpsc::Sender<Scan>,
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.sender.send(std::mem::take(&mut self.scan));
    }
}

struct Matcher {
    languages: Vec<lang::Language>,
    patterns: Vec<Regex>,
    /// One alternation of every alias name, as whole words, and the key of each name.
    aliases: Option<(Regex, Vec<(String, String)>)>,
}

impl Matcher {
    fn new(options: &ScanOptions) -> Self {
        let aliases = (!options.aliases.is_empty()).then(|| {
            let names: Vec<String> = options
                .aliases
                .iter()
                .map(|(name, _)| regex::escape(name))
                .collect();
            // Escaped names make a valid alternation.
            let regex = Regex::new(&format!(r"\b(?:{})\b", names.join("|")))
                .expect("escaped names compile");
            (regex, options.aliases.clone())
        });
        Self {
            languages: lang::languages(),
            patterns: options.patterns.clone(),
            aliases,
        }
    }

    fn language(&self, path: &Path) -> Option<&lang::Language> {
        let extension = path.extension()?.to_str()?;
        self.languages
            .iter()
            .find(|l| l.extensions.contains(&extension))
    }

    fn file(&self, path: &Path, scan: &mut Scan) {
        let language = self.language(path);
        let custom = !self.patterns.is_empty() || self.aliases.is_some();
        if language.is_none() && !custom {
            return;
        }
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(error) => {
                scan.errors.push(format!("{}: {error}", path.display()));
                return;
            }
        };
        scan.files += 1;
        scan.bytes += bytes.len() as u64;
        // Binary files (a NUL early on, as grep decides) and non-UTF-8 text are not source.
        if bytes.iter().take(8192).any(|&b| b == 0) {
            return;
        }
        let Ok(text) = std::str::from_utf8(&bytes) else {
            return;
        };
        let file = display(path);
        let mut lines = Lines::new(text);
        let mut found = |start: usize, key: &str, language: &str| {
            let (line, column) = lines.position(start);
            scan.references.push(Reference {
                file: file.clone(),
                line,
                column,
                key: key.to_string(),
                language: language.to_string(),
            });
        };
        if let Some(language) = language {
            let mut mask: Option<Vec<bool>> = None;
            for pattern in &language.patterns {
                for captures in pattern.captures_iter(text) {
                    let (Some(call), Some(literal)) = (captures.get(0), captures.name("lit"))
                    else {
                        continue;
                    };
                    let Some(key) = lang::key_of(literal.as_str()).filter(|_| {
                        literal
                            .as_str()
                            .chars()
                            .next()
                            .is_some_and(|q| language.syntax.quotes(q))
                    }) else {
                        continue;
                    };
                    let mask = mask
                        .get_or_insert_with(|| lang::code_mask(text.as_bytes(), language.syntax));
                    if mask[call.start()] {
                        found(call.start(), key, language.name);
                    }
                }
            }
        }
        for pattern in &self.patterns {
            for captures in pattern.captures_iter(text) {
                let group = captures.name("key").or_else(|| captures.get(1));
                if let Some(group) = group.filter(|g| !g.is_empty()) {
                    found(group.start(), group.as_str(), "pattern");
                }
            }
        }
        if let Some((regex, aliases)) = &self.aliases {
            for name in regex.find_iter(text) {
                for (_, key) in aliases.iter().filter(|(n, _)| n == name.as_str()) {
                    found(name.start(), key, "alias");
                }
            }
        }
    }
}

fn display(path: &Path) -> String {
    let text = path.to_string_lossy().replace('\\', "/");
    match text.strip_prefix("./") {
        Some(rest) if !rest.is_empty() => rest.to_string(),
        _ => text,
    }
}

/// Byte offsets to (line, column), for offsets visited in any order.
struct Lines<'a> {
    text: &'a str,
    starts: Option<Vec<usize>>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self { text, starts: None }
    }

    fn position(&mut self, offset: usize) -> (u32, u32) {
        let text = self.text;
        let starts = self.starts.get_or_insert_with(|| {
            std::iter::once(0)
                .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                .collect()
        });
        let line = starts.partition_point(|&s| s <= offset).max(1);
        let start = starts[line - 1];
        let column = text[start..offset].chars().count() + 1;
        (
            u32::try_from(line).unwrap_or(u32::MAX),
            u32::try_from(column).unwrap_or(u32::MAX),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/scan")
    }

    /// Every key starting with `yes-` in a fixture is a reference, with the fixture's
    /// language; a key starting with `no-` (a comment, a string, another call) is not.
    #[test]
    fn every_language_finds_its_sdk_calls_and_not_comments_or_strings() {
        let scan = find_references(&[fixtures()], &ScanOptions::default());
        let expected_language = |file: &str| match file.rsplit('.').next() {
            Some("rs") => "rust",
            Some("ts") => "javascript",
            Some("py") => "python",
            Some("go") => "go",
            Some("java" | "kt") => "java",
            Some("cs") => "csharp",
            Some("rb") => "ruby",
            Some("php") => "php",
            other => panic!("a fixture of no language: {other:?}"),
        };
        let yes = Regex::new(r"yes-[a-z0-9-]+").unwrap();
        let mut files = 0;
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let name = display(&path);
            let expected: BTreeSet<&str> = yes.find_iter(&text).map(|m| m.as_str()).collect();
            let found: Vec<&Reference> =
                scan.references.iter().filter(|r| r.file == name).collect();
            let keys: BTreeSet<&str> = found.iter().map(|r| r.key.as_str()).collect();
            assert_eq!(keys, expected, "{name}");
            assert_eq!(
                found.len(),
                expected.len(),
                "{name}: one reference per call"
            );
            for reference in found {
                assert_eq!(reference.language, expected_language(&name), "{name}");
                // The position is the call's, on the line that holds it.
                let line = text.lines().nth(reference.line as usize - 1).unwrap();
                let at: String = line.chars().skip(reference.column as usize - 1).collect();
                assert!(
                    at.starts_with('.') || at.starts_with("->") || at.starts_with("use"),
                    "{name}:{}:{} points at `{at}`",
                    reference.line,
                    reference.column
                );
            }
            files += 1;
        }
        assert_eq!(files, 9);
        assert_eq!(scan.files, 9);
        assert!(scan.errors.is_empty(), "{:?}", scan.errors);
    }

    #[test]
    fn patterns_and_aliases_find_what_the_user_declares() {
        let dir = std::env::temp_dir().join(format!("anchor-scan-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ignored")).unwrap();
        std::fs::write(
            dir.join("app.ex"),
            "if Flags.on?(:checkout_v2) do\n  NEW_SEARCH\nend\nNEW_SEARCHES\n",
        )
        .unwrap();
        std::fs::write(dir.join(".gitignore"), "ignored/\n").unwrap();
        std::fs::write(
            dir.join("ignored/skip.rs"),
            "client.bool_value(\"skipped\", ctx, false)",
        )
        .unwrap();
        let options = ScanOptions {
            patterns: vec![Regex::new(r"Flags\.on\?\(:(?P<key>\w+)\)").unwrap()],
            aliases: vec![("NEW_SEARCH".into(), "new-search".into())],
        };
        let scan = find_references(std::slice::from_ref(&dir), &options);
        let found: Vec<(u32, u32, &str, &str)> = scan
            .references
            .iter()
            .map(|r| (r.line, r.column, r.key.as_str(), r.language.as_str()))
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            found,
            [
                (1, 15, "checkout_v2", "pattern"),
                (2, 3, "new-search", "alias")
            ]
        );
    }

    #[test]
    fn positions_count_lines_and_characters_from_one() {
        let mut lines = Lines::new("ab\né.x\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(3), (2, 1));
        // `é` is two bytes and one character.
        assert_eq!(lines.position(5), (2, 2));
    }
}
