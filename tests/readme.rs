//! The README's configuration tables against the `config` crate: a key or default that differs fails here.
//! On failure the expected rows are printed, ready to paste.

use ebb_config::keys::{ANNOTATION_KEYS, DefaultDoc, GLOBAL_KEYS, KeyDoc};

const README: &str = include_str!("../README.md");

fn default_cell(doc: &KeyDoc) -> String {
    match doc.default {
        DefaultDoc::Value("") => "(none)".into(),
        DefaultDoc::Value(value) => format!("`{value}`"),
        DefaultDoc::Derived(text) => text.into(),
    }
}

fn row(doc: &KeyDoc) -> String {
    let alias = doc.alias.map(|a| format!("<br>alias `{a}`")).unwrap_or_default();
    let fallback = doc.global.map(|g| format!(" Falls back to `{g}`.")).unwrap_or_default();
    format!("| `{}`{alias} | {} | {} | {}{fallback} |", doc.key, default_cell(doc), doc.accepted, doc.meaning)
}

/// `(key, default cell)` of every row of the README table whose header starts with `header`.
fn table(header: &str) -> Vec<(String, String)> {
    let start = README.find(header).unwrap_or_else(|| panic!("README has no table headed {header:?}"));
    README[start..]
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'))
        .map(|line| {
            let cells: Vec<&str> = line.split('|').map(str::trim).collect();
            let key = cells[1].split("<br>").next().unwrap().trim_matches('`').to_owned();
            (key, cells[2].to_owned())
        })
        .collect()
}

fn check(header: &str, docs: &[KeyDoc]) {
    let rows = table(header);
    let expected: Vec<(String, String)> = docs.iter().map(|d| (d.key.to_owned(), default_cell(d))).collect();
    if rows != expected {
        let fresh: Vec<String> = docs.iter().map(row).collect();
        panic!(
            "README table {header:?} disagrees with the config crate.\nREADME has {rows:#?}\ncode has {expected:#?}\n\
             Expected rows:\n{}",
            fresh.join("\n")
        );
    }
}

#[test]
fn annotation_table_matches_the_code() {
    check("| Annotation | Default |", ANNOTATION_KEYS);
}

#[test]
fn config_map_table_matches_the_code() {
    check("| `config-autoscaler` key | Default |", GLOBAL_KEYS);
}
