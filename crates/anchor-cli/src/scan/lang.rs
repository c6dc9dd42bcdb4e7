//! What a flag reference looks like in each language: the SDK calls whose first argument (Go:
//! second, after the context) is a flag key, and a small lexer that tells code from comments
//! and string contents, so that a call written in a comment or inside a string is not counted.
//!
//! The lexer is deliberately shallow (no nesting, no raw-string delimiters, no template
//! interpolation): it only has to decide whether the *name of the call* stands in code, and it
//! runs only on files where a pattern already matched.

use regex::Regex;

/// A quoted literal, quotes included; `key_of` strips and checks it. A backtick literal with a
/// `$` is a template, whose key is not known before run time.
const LITERAL: &str = r#"(?P<lit>"[^"\\\n]{1,256}"|'[^'\\\n]{1,256}'|`[^`\\\n$]{1,256}`)"#;

/// How comments and strings are written, which decides what the lexer skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    /// `//` and `/* */` comments; `"` strings; `'` strings unless it is Rust's char literal
    /// or lifetime; backtick strings in JavaScript and Go; `#` comments in PHP.
    CLike {
        single_quotes: bool,
        backticks: bool,
        hash_comments: bool,
    },
    /// `#` comments; `"`, `'` and (Python) triple-quoted strings.
    Hash,
}

impl Syntax {
    /// Whether `quote` opens a string (in Rust, Java and C#, `'` opens a char literal).
    pub fn quotes(self, quote: char) -> bool {
        match self {
            Self::CLike {
                single_quotes,
                backticks,
                ..
            } => quote == '"' || (quote == '\'' && single_quotes) || (quote == '`' && backticks),
            Self::Hash => matches!(quote, '"' | '\''),
        }
    }
}

#[derive(Debug)]
pub struct Language {
    pub name: &'static str,
    pub extensions: &'static [&'static str],
    pub syntax: Syntax,
    /// Each with a `lit` group holding the quoted key.
    pub patterns: Vec<Regex>,
}

/// `before` followed by a quoted key.
fn pattern(before: &str) -> Regex {
    // The patterns are constants of this file; `every_language_has_a_fixture` compiles them.
    #[allow(
        clippy::expect_used,
        reason = "constant patterns, compiled by every test"
    )]
    Regex::new(&format!("{before}{LITERAL}")).expect("a valid built-in pattern")
}

/// A call of one of `names` (a regex) whose first argument is a quoted key.
fn call(names: &str) -> Regex {
    pattern(&format!(r"{names}\s*\(\s*"))
}

const fn c_like(single_quotes: bool, backticks: bool, hash_comments: bool) -> Syntax {
    Syntax::CLike {
        single_quotes,
        backticks,
        hash_comments,
    }
}

/// The built-in languages.
pub fn languages() -> Vec<Language> {
    vec![
        Language {
            name: "rust",
            extensions: &["rs"],
            syntax: c_like(false, false, false),
            patterns: vec![
                // The Release Anchor SDK (crates/anchor-sdk).
                call(
                    r"\.(?:(?:bool|string|number|integer|json)_(?:value|details)|evaluate|explain)",
                ),
                // The OpenFeature SDK.
                call(r"\.get_(?:bool|string|int|float|struct)_(?:value|details)"),
            ],
        },
        Language {
            name: "javascript",
            extensions: &[
                "js", "jsx", "mjs", "cjs", "ts", "tsx", "mts", "cts", "vue", "svelte",
            ],
            syntax: c_like(true, true, false),
            patterns: vec![
                call(r"\.get(?:Boolean|String|Number|Object)(?:Value|Details)"),
                // The OpenFeature React SDK's hooks.
                call(
                    r"\buse(?:Flag|SuspenseFlag|(?:Boolean|String|Number|Object)Flag(?:Value|Details))",
                ),
            ],
        },
        Language {
            name: "python",
            extensions: &["py", "pyi"],
            syntax: Syntax::Hash,
            patterns: vec![pattern(
                r"\.get_(?:boolean|string|integer|float|object)_(?:value|details)\s*\(\s*(?:flag_key\s*=\s*)?",
            )],
        },
        Language {
            name: "go",
            extensions: &["go"],
            syntax: c_like(false, true, false),
            // The context comes first: `client.BooleanValue(ctx, "key", false, evalCtx)`.
            patterns: vec![pattern(
                r"\.(?:Boolean|String|Int|Float|Object)(?:Value|ValueDetails)\s*\(\s*[A-Za-z_][\w.()]*\s*,\s*",
            )],
        },
        Language {
            name: "java",
            extensions: &["java", "kt", "kts", "groovy", "scala"],
            syntax: c_like(false, false, false),
            patterns: vec![call(
                r"\.get(?:Boolean|String|Integer|Double|Object)(?:Value|Details)",
            )],
        },
        Language {
            name: "csharp",
            extensions: &["cs"],
            syntax: c_like(false, false, false),
            patterns: vec![call(
                r"\.Get(?:Boolean|String|Integer|Double|Object)(?:Value|Details)(?:Async)?",
            )],
        },
        Language {
            name: "ruby",
            extensions: &["rb"],
            syntax: Syntax::Hash,
            // Parentheses are optional in Ruby; the key is a keyword argument.
            patterns: vec![pattern(
                r"\.fetch_(?:boolean|string|number|integer|float|object)_(?:value|details)[\s(]*flag_key:\s*",
            )],
        },
        Language {
            name: "php",
            extensions: &["php"],
            syntax: c_like(true, false, true),
            patterns: vec![call(
                r"->get(?:Boolean|String|Integer|Float|Object)(?:Value|Details)",
            )],
        },
    ]
}

/// The key inside a quoted literal, if it can be a flag key (the server's rule: a letter or
/// digit, then letters, digits, `-`, `_` and `.`).
pub fn key_of(literal: &str) -> Option<&str> {
    let key = literal.get(1..literal.len().checked_sub(1)?)?;
    let mut chars = key.chars();
    let first = chars.next()?;
    (first.is_ascii_alphanumeric()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    .then_some(key)
}

/// For each byte of `text`, whether it stands in code (not in a comment or inside a string).
pub fn code_mask(text: &[u8], syntax: Syntax) -> Vec<bool> {
    let mut mask = vec![true; text.len()];
    let mut i = 0;
    let at = |i: usize, s: &[u8]| text.get(i..i + s.len()) == Some(s);
    while i < text.len() {
        let start = i;
        let byte = text[i];
        let end = match syntax {
            Syntax::CLike {
                single_quotes,
                backticks,
                hash_comments,
            } => {
                if at(i, b"//") || (hash_comments && byte == b'#') {
                    line_end(text, i)
                } else if at(i, b"/*") {
                    find(text, i + 2, b"*/").map_or(text.len(), |e| e + 2)
                } else if byte == b'"' {
                    string_end(text, i, b'"', true)
                } else if byte == b'\'' && single_quotes {
                    string_end(text, i, b'\'', true)
                } else if byte == b'\'' {
                    // A char literal ('x', '\n', '"'); anything else is a lifetime or a label.
                    char_literal_end(text, i).unwrap_or(i + 1)
                } else if byte == b'`' && backticks {
                    string_end(text, i, b'`', false)
                } else {
                    i + 1
                }
            }
            Syntax::Hash => {
                if byte == b'#' {
                    line_end(text, i)
                } else if at(i, b"\"\"\"") || at(i, b"'''") {
                    find(text, i + 3, &text[i..i + 3]).map_or(text.len(), |e| e + 3)
                } else if byte == b'"' || byte == b'\'' {
                    string_end(text, i, byte, true)
                } else {
                    i + 1
                }
            }
        };
        if end > start + 1 {
            // The opening quote stays code: a call's argument starts with it.
            let from = if matches!(byte, b'"' | b'\'' | b'`') {
                start + 1
            } else {
                start
            };
            mask[from..end.min(text.len())].fill(false);
        }
        i = end.max(start + 1);
    }
    mask
}

fn line_end(text: &[u8], from: usize) -> usize {
    text[from..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(text.len(), |p| from + p)
}

fn find(text: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    if from > text.len() {
        return None;
    }
    text[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The end (after the closing quote) of a string opened at `open`; an unterminated one ends at
/// the end of its line, so that one stray quote does not hide the rest of the file.
fn string_end(text: &[u8], open: usize, quote: u8, escapes: bool) -> usize {
    let mut i = open + 1;
    while i < text.len() {
        match text[i] {
            b'\\' if escapes => i += 2,
            b if b == quote => return i + 1,
            b'\n' if quote != b'`' => return i,
            _ => i += 1,
        }
    }
    text.len()
}

fn char_literal_end(text: &[u8], open: usize) -> Option<usize> {
    let rest = text.get(open + 1..)?;
    if rest.first() == Some(&b'\\') {
        let close = rest.iter().skip(1).take(10).position(|&b| b == b'\'')?;
        return Some(open + 1 + 1 + close + 1);
    }
    // One character, which may take up to four bytes.
    (1..=4)
        .find(|&n| rest.get(n) == Some(&b'\'') && std::str::from_utf8(&rest[..n]).is_ok())
        .map(|n| open + 1 + n + 1)
}
