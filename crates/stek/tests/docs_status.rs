#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

//! docs/status.md and `stek_store::status::Status` describe one document: the guide's example
//! parses as the type (which refuses unknown fields), and every field the type has is named
//! in the guide's table.

use std::path::Path;

use stek_store::status::Status;

fn guide() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/status.md");
    std::fs::read_to_string(&path).unwrap()
}

/// The first ```json block of the guide.
fn example(text: &str) -> &str {
    let start = text.find("```json\n").expect("a ```json example") + "```json\n".len();
    let end = start + text[start..].find("```").expect("the example ends");
    &text[start..end]
}

/// Every leaf field name under `v`.
fn leaves(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, x) in map {
                match x {
                    serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                        out.push(k.clone());
                        leaves(x, out);
                    }
                    _ => out.push(k.clone()),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|x| leaves(x, out)),
        _ => {}
    }
}

/// Whether `name` is a whole word inside some `code span` of `text` (`rotation.blocked_by[]`
/// names both `rotation` and `blocked_by`).
fn in_a_code_span(text: &str, name: &str) -> bool {
    text.split('`').skip(1).step_by(2).any(|span| {
        span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .any(|w| w == name)
    })
}

#[test]
fn the_guides_example_is_a_status_document_and_every_field_is_explained() {
    let text = guide();
    let parsed: Status = serde_json::from_str(example(&text))
        .unwrap_or_else(|e| panic!("docs/status.md's example is not a Status document: {e}"));
    let mut names = Vec::new();
    leaves(&serde_json::to_value(&parsed).unwrap(), &mut names);
    names.sort();
    names.dedup();
    let missing: Vec<&String> = names.iter().filter(|n| !in_a_code_span(&text, n)).collect();
    assert!(
        missing.is_empty(),
        "docs/status.md's table does not explain these fields: {missing:?}"
    );
}
