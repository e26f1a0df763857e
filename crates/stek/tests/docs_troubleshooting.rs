#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

//! docs/troubleshooting.md documents every error message a library error type can produce.
//!
//! Every `#[error("...")]` format string under `crates/*/src` is read straight from the
//! source, so this test needs no second list to keep in sync. For each message, the literal
//! text before its first `{placeholder}` must appear in the guide (whitespace collapsed, so the
//! guide may wrap lines). A message that starts with a placeholder, or whose literal prefix is
//! shorter than [`MIN_PREFIX`] characters, is too generic to look for and is skipped.

use std::path::{Path, PathBuf};

/// Shorter prefixes ("config ", "cannot ", "target[") would match almost any text.
const MIN_PREFIX: usize = 12;

/// One `#[error("...")]` format string, unescaped, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    /// `crates/<crate>/src/<file>.rs:<line>`, for the failure report.
    origin: String,
    /// The format string as Rust reads it (escapes resolved, `{{`/`}}` still doubled).
    format: String,
}

/// Every `#[error("...")]` format string in `source`, with its 1-based line. An attribute whose
/// first argument is not a string literal (`#[error(transparent)]`) has none; occurrences in
/// `//` comments are ignored.
fn extract(source: &str) -> Vec<(usize, String)> {
    const OPEN: &str = "#[error(";
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = source[from..].find(OPEN) {
        let at = from + found;
        from = at + OPEN.len();
        let line_start = source[..at].rfind('\n').map_or(0, |i| i + 1);
        if source[line_start..at].contains("//") {
            continue;
        }
        let rest = source[from..].trim_start();
        if let Some(text) = string_literal(rest) {
            out.push((source[..at].matches('\n').count() + 1, text));
        }
    }
    out
}

/// The value of the Rust string literal (plain or raw) at the start of `s`, or `None` if `s`
/// does not start with one or it is not terminated.
fn string_literal(s: &str) -> Option<String> {
    if let Some(raw) = s.strip_prefix('r') {
        let hashes = raw.len() - raw.trim_start_matches('#').len();
        let body = raw[hashes..].strip_prefix('"')?;
        let close = format!("\"{}", "#".repeat(hashes));
        return body.find(&close).map(|end| body[..end].to_owned());
    }
    let mut chars = s.strip_prefix('"')?.chars().peekable();
    let mut text = String::new();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(text),
            '\\' => match chars.next()? {
                'n' => text.push('\n'),
                't' => text.push('\t'),
                'r' => text.push('\r'),
                '0' => text.push('\0'),
                // A line continuation: the newline and the next line's leading whitespace go.
                '\n' => while chars.next_if(|c| c.is_whitespace()).is_some() {},
                'u' => {
                    let code: String = chars.by_ref().take_while(|c| *c != '}').collect();
                    let code = code.trim_start_matches('{');
                    text.push(char::from_u32(u32::from_str_radix(code, 16).ok()?)?);
                }
                'x' => {
                    let code: String = chars.by_ref().take(2).collect();
                    text.push(char::from(u8::from_str_radix(&code, 16).ok()?));
                }
                // `\"`, `\\`, `\'`.
                other => text.push(other),
            },
            other => text.push(other),
        }
    }
    None
}

/// The literal text of a format string before its first placeholder, trimmed. `{{` and `}}`
/// are literal braces.
fn literal_prefix(format: &str) -> String {
    let mut prefix = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                prefix.push('{');
            }
            '{' => break,
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                prefix.push('}');
            }
            other => prefix.push(other),
        }
    }
    prefix.trim().to_owned()
}

/// The prefixes this test looks for: long enough to mean something.
fn checked_prefix(format: &str) -> Option<String> {
    let prefix = literal_prefix(format);
    (prefix.chars().count() >= MIN_PREFIX).then_some(prefix)
}

/// Runs of whitespace (line breaks included) as one space.
fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The messages whose prefix `doc` lacks, as "origin: prefix".
fn missing(doc: &str, messages: &[Message]) -> Vec<String> {
    let doc = collapse(doc);
    messages
        .iter()
        .filter_map(|m| {
            let prefix = collapse(&checked_prefix(&m.format)?);
            (!doc.contains(&prefix)).then(|| format!("{}: {prefix}", m.origin))
        })
        .collect()
}

/// `crates/`, the parent of this crate's directory.
fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file under `dir`, recursively, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Every `#[error("...")]` message in `crates/*/src/**/*.rs`.
fn source_messages() -> Vec<Message> {
    let crates = crates_dir();
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path().join("src"))
        .filter(|src| src.is_dir())
        .collect();
    sources.sort();
    let mut out = Vec::new();
    for file in sources.iter().flat_map(|src| rust_files(src)) {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(&crates).unwrap_or(&file).display();
        for (line, format) in extract(&text) {
            out.push(Message {
                origin: format!("crates/{shown}:{line}"),
                format,
            });
        }
    }
    out
}

fn guide() -> String {
    let path = crates_dir().join("../docs/troubleshooting.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_error_message_in_the_sources_is_in_the_troubleshooting_guide() {
    let messages = source_messages();
    let checked = messages
        .iter()
        .filter(|m| checked_prefix(&m.format).is_some())
        .count();
    // The crates hold dozens of error types; a handful means the walk or the extractor broke.
    assert!(
        messages.len() >= 30,
        "only {} #[error] messages found under {}: the walk or the extractor no longer reads them",
        messages.len(),
        crates_dir().display()
    );
    let missing = missing(&guide(), &messages);
    assert!(
        missing.is_empty(),
        "docs/troubleshooting.md lacks {} of the {checked} error messages it must explain. Document \
         each one (the message as it appears, what it means, what to do) in the section where a \
         user meets it:\n{}",
        missing.len(),
        missing.join("\n")
    );
}

#[test]
fn the_extractor_reads_prefixes_escapes_and_multi_line_attributes() {
    let sample = r#"
pub enum SampleError {
    /// A plain message with placeholders.
    #[error("the store is unreachable (tried {endpoints}): {reason}")]
    Unreachable { endpoints: String, reason: String },
    /// Starts with a placeholder: nothing to look for.
    #[error("{path} is on {fs}, not on a RAM disk")]
    NotRamDisk { path: String, fs: String },
    /// An escaped quote and escaped braces.
    #[error("unknown format \"{name}\"; use one of: {known}")]
    UnknownFormat { name: String, known: String },
    #[error("a literal {{brace}} stays, then {placeholder}")]
    Brace { placeholder: u8 },
    /// rustfmt's layout for a long message.
    #[error(
        "ring holds too many keys for the policy, at most {max}"
    )]
    TooMany { max: usize },
    /// A continued line and no placeholder at all.
    #[error("ring has no staged key \
             to activate")]
    NoStagedKey,
    /// Too short to look for.
    #[error("key epoch {0}: bad")]
    Short(u64),
    #[error(transparent)]
    Other(std::io::Error),
    // #[error("a commented-out attribute")]
}
"#;
    let found = extract(sample);
    let formats: Vec<&str> = found.iter().map(|(_, f)| f.as_str()).collect();
    assert_eq!(
        formats,
        [
            "the store is unreachable (tried {endpoints}): {reason}",
            "{path} is on {fs}, not on a RAM disk",
            "unknown format \"{name}\"; use one of: {known}",
            "a literal {{brace}} stays, then {placeholder}",
            "ring holds too many keys for the policy, at most {max}",
            "ring has no staged key to activate",
            "key epoch {0}: bad",
        ]
    );
    assert_eq!(found[0].0, 4, "1-based line of the attribute");
    assert_eq!(
        found[4].0, 15,
        "a multi-line attribute is found at its first line"
    );
    let prefixes: Vec<Option<String>> = formats.iter().map(|f| checked_prefix(f)).collect();
    assert_eq!(
        prefixes,
        [
            Some("the store is unreachable (tried".to_owned()),
            None,
            Some("unknown format \"".to_owned()),
            Some("a literal {brace} stays, then".to_owned()),
            Some("ring holds too many keys for the policy, at most".to_owned()),
            Some("ring has no staged key to activate".to_owned()),
            None,
        ]
    );
}

#[test]
fn a_message_missing_from_the_guide_is_reported_with_its_origin() {
    let messages: Vec<Message> = [
        "the store is unreachable (tried {endpoints})",
        "unknown format \"{name}\"",
        "the ring changed since this decision was made; deciding again",
        "{path} does not exist",
    ]
    .iter()
    .enumerate()
    .map(|(i, f)| Message {
        origin: format!("x.rs:{i}"),
        format: (*f).to_owned(),
    })
    .collect();
    let doc = "| `the store is unreachable\n(tried <endpoints>)` | ... |\n\
               `unknown format \"<name>\"` means ...\n";
    assert_eq!(
        missing(doc, &messages),
        ["x.rs:2: the ring changed since this decision was made; deciding again"],
        "a wrapped line matches, a quote matches, a placeholder-led message is skipped"
    );
}

#[test]
fn raw_strings_are_read_whole() {
    assert_eq!(
        string_literal(r##"r#"a "quoted" {x}"# rest"##).as_deref(),
        Some(r#"a "quoted" {x}"#)
    );
    assert_eq!(string_literal("\"unterminated"), None);
    assert_eq!(string_literal("transparent)]"), None);
}
