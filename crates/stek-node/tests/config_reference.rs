//! docs/configuration.md documents every key the config parser accepts.
//!
//! The parser refuses unknown keys and its error lists the accepted ones ("unknown field `x`,
//! expected one of `a`, `b`, ..."). Feeding it an unknown key at the top level and in every
//! section yields the key sets straight from the parser, so this test needs no second list to
//! keep in sync: a key added to the config without a row in the reference fails it.

#![allow(clippy::unwrap_used)] // test harness code: a panic is the failure report

use std::path::Path;

/// A key no version of the config will ever accept.
const PROBE: &str = "stek_reference_probe";

/// What the parser says about `text` followed by the unknown key.
fn parse_error(text: &str) -> Option<String> {
    let text = format!("{text}{PROBE} = 1\n");
    stek_node::Config::parse(Path::new("probe.toml"), &text)
        .err()
        .map(|e| e.to_string())
}

/// The names serde lists after "unknown field `PROBE`, expected": `one of `a`, `b``,
/// `` `a` or `b` `` or `` `a` ``. `None` when the message is not about the probe.
fn expected_fields(message: &str) -> Option<Vec<String>> {
    let start = format!("unknown field `{PROBE}`, expected ");
    let rest = &message[message.find(&start)? + start.len()..];
    let list = rest.lines().next().unwrap_or_default();
    Some(
        list.split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_owned)
            .collect(),
    )
}

/// A table the parser accepts and the keys it accepts in it.
#[derive(Debug)]
struct Section {
    /// The dotted name (`etcd`, `target`); empty for the top level.
    name: String,
    /// `[[name]]` rather than `[name]`.
    array: bool,
    keys: Vec<String>,
}

impl Section {
    /// How docs/configuration.md names it in its heading.
    fn heading(&self) -> String {
        match (self.name.as_str(), self.array) {
            ("", _) => "Top level".to_owned(),
            (n, true) => format!("`[[{n}]]`"),
            (n, false) => format!("`[{n}]`"),
        }
    }
}

/// The top level and every section reachable from it (tables and arrays of tables, nested
/// ones too), each with its accepted keys, as the parser reports them.
fn sections() -> Vec<Section> {
    let message = parse_error("").expect("an unknown top-level key is refused");
    let top = expected_fields(&message).unwrap_or_else(|| {
        panic!("the parse error no longer lists the accepted keys; this test reads them from it:\n{message}")
    });
    let mut out = vec![Section {
        name: String::new(),
        array: false,
        keys: top,
    }];
    let mut i = 0;
    while i < out.len() {
        let (parent, parent_array) = (out[i].name.clone(), out[i].array);
        for key in out[i].keys.clone() {
            let name = if parent.is_empty() {
                key
            } else {
                format!("{parent}.{key}")
            };
            // Inside an array of tables, a sub-table belongs to its last element.
            let opener = if parent_array {
                format!("[[{parent}]]\n")
            } else {
                String::new()
            };
            for array in [false, true] {
                let header = if array {
                    format!("{opener}[[{name}]]\n")
                } else {
                    format!("{opener}[{name}]\n")
                };
                if let Some(keys) = parse_error(&header).as_deref().and_then(expected_fields) {
                    out.push(Section {
                        name: name.clone(),
                        array,
                        keys,
                    });
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// The keys named in the first cell of every table row under the heading that contains
/// `heading`, up to the next heading. `None` when there is no such heading.
fn documented_keys(doc: &str, heading: &str) -> Option<Vec<String>> {
    let mut lines = doc
        .lines()
        .skip_while(|l| !(l.starts_with('#') && l.contains(heading)));
    lines.next()?;
    Some(
        lines
            .take_while(|l| !l.starts_with('#'))
            .filter_map(|l| l.strip_prefix('|')?.split('|').next())
            .flat_map(|cell| {
                cell.split('`')
                    .skip(1)
                    .step_by(2)
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .collect(),
    )
}

/// Every key of `section` the reference lacks, as "heading: key"; sub-sections are documented
/// under their own heading, not as rows.
fn undocumented(doc: &str, section: &Section, subsections: &[String]) -> Vec<String> {
    let heading = section.heading();
    let Some(documented) = documented_keys(doc, &heading) else {
        return vec![format!("{heading}: no such heading")];
    };
    section
        .keys
        .iter()
        .filter(|k| !subsections.contains(k) && !documented.contains(k))
        .map(|k| format!("{heading}: `{k}`"))
        .collect()
}

fn reference() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/configuration.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every section's keys the reference lacks.
fn missing_in(doc: &str, sections: &[Section]) -> Vec<String> {
    sections
        .iter()
        .flat_map(|s| {
            let prefix = if s.name.is_empty() {
                String::new()
            } else {
                format!("{}.", s.name)
            };
            let subsections: Vec<String> = sections
                .iter()
                .filter_map(|sub| sub.name.strip_prefix(&prefix))
                .filter(|rest| !rest.is_empty() && !rest.contains('.'))
                .map(str::to_owned)
                .collect();
            undocumented(doc, s, &subsections)
        })
        .collect()
}

#[test]
fn every_key_the_parser_accepts_has_a_row_in_the_configuration_reference() {
    let sections = sections();
    let names: Vec<&str> = sections.iter().map(|s| s.name.as_str()).collect();
    for expected in ["", "etcd", "raft", "rotation", "target"] {
        assert!(
            names.contains(&expected),
            "section {expected:?} not discovered: {sections:?}"
        );
    }
    let missing = missing_in(&reference(), &sections);
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks these keys the parser accepts; add a row (`key` | type | default | meaning) to the section's table:\n{}",
        missing.join("\n")
    );
}

#[test]
fn a_key_without_a_row_is_reported() {
    // The real parser's sections plus one made-up key: only that key is reported.
    let mut sections = sections();
    let etcd = sections.iter_mut().find(|s| s.name == "etcd").unwrap();
    etcd.keys.push("stek_made_up_key".into());
    assert_eq!(
        missing_in(&reference(), &sections),
        ["`[etcd]`: `stek_made_up_key`"]
    );

    let doc = "# Reference\n\n## `[etcd]`\n\n| key | type |\n|---|---|\n| `endpoints` | array |\n\
               | `cert_file`, `key_file` | paths |\n\nThe `user` key is only mentioned here.\n\n\
               ## `[[target]]`\n\n| key | type |\n|---|---|\n| `format` | string |\n| `user` | string |\n";
    let section = |name: &str, array: bool, keys: &[&str]| Section {
        name: name.into(),
        array,
        keys: keys.iter().map(|k| k.to_string()).collect(),
    };
    assert_eq!(
        undocumented(
            doc,
            &section(
                "etcd",
                false,
                &["endpoints", "cert_file", "key_file", "user"]
            ),
            &[]
        ),
        ["`[etcd]`: `user`"],
        "a key in prose, or in another section's table, is not documented"
    );
    assert!(undocumented(doc, &section("target", true, &["format"]), &[]).is_empty());
    assert_eq!(
        undocumented(doc, &section("admin", false, &["listen"]), &[]),
        ["`[admin]`: no such heading"]
    );
}

#[test]
fn every_form_of_serde_s_field_list_is_read() {
    let msg = |list: &str| {
        format!("TOML parse error at line 1\nunknown field `{PROBE}`, expected {list}\n")
    };
    assert_eq!(
        expected_fields(&msg("one of `a`, `b_c`, `d`")).unwrap(),
        ["a", "b_c", "d"]
    );
    assert_eq!(expected_fields(&msg("`a` or `b`")).unwrap(), ["a", "b"]);
    assert_eq!(expected_fields(&msg("`a`")).unwrap(), ["a"]);
    assert_eq!(
        expected_fields("invalid type: map, expected a string"),
        None
    );
}
