//! Tidy checks on the repository's files, run by `cargo test` (so by `cargo xtask ci`).
//!
//! - Every crate root (`crates/*/src/lib.rs`, and `xtask/src/main.rs`) opens with a `//!`
//!   doc saying what the crate is.
//! - Every member's `Cargo.toml` takes the workspace lints (`[lints] workspace = true`).

use std::fs;
use std::path::{Path, PathBuf};

use crate::root;

/// The directories of the workspace members: `crates/*` and `xtask`.
fn members() -> Vec<PathBuf> {
    let root = root();
    let mut members: Vec<PathBuf> = fs::read_dir(root.join("crates"))
        .expect("the workspace has a crates/ directory")
        .map(|entry| entry.expect("a readable directory entry").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    members.sort();
    members.push(root.join("xtask"));
    members
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root()).unwrap_or(path).display().to_string()
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

fn opens_with_module_doc(source: &str) -> bool {
    source.trim_start_matches('\u{feff}').starts_with("//!")
}

/// Whether a manifest has `workspace = true` in its `[lints]` table (or
/// `lints.workspace = true` at the top level).
fn takes_workspace_lints(manifest: &str) -> bool {
    let mut table = String::new();
    for line in manifest.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.starts_with('[') {
            table = line.trim_matches(['[', ']']).trim().to_owned();
            continue;
        }
        let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if (table == "lints" && compact == "workspace=true")
            || (table.is_empty() && compact == "lints.workspace=true")
        {
            return true;
        }
    }
    false
}

#[test]
fn crate_roots_open_with_a_module_doc() {
    let mut roots: Vec<PathBuf> = members()
        .iter()
        .map(|member| member.join("src").join("lib.rs"))
        .filter(|lib| lib.is_file())
        .collect();
    roots.push(root().join("xtask").join("src").join("main.rs"));
    let missing: Vec<String> = roots
        .iter()
        .filter(|path| !opens_with_module_doc(&read(path)))
        .map(|path| relative(path))
        .collect();
    assert!(
        missing.is_empty(),
        "these crate roots must open with a `//!` doc saying what the crate is: {}",
        missing.join(", ")
    );
}

#[test]
fn members_take_the_workspace_lints() {
    let missing: Vec<String> = members()
        .iter()
        .map(|member| member.join("Cargo.toml"))
        .filter(|manifest| !takes_workspace_lints(&read(manifest)))
        .map(|manifest| relative(&manifest))
        .collect();
    assert!(
        missing.is_empty(),
        "these manifests must have `[lints] workspace = true`: {}",
        missing.join(", ")
    );
}

#[test]
fn workspace_lints_detection() {
    assert!(takes_workspace_lints("[package]\nname = \"x\"\n\n[lints]\nworkspace = true\n"));
    assert!(takes_workspace_lints("[lints]\nworkspace=true # shared\n"));
    assert!(takes_workspace_lints("lints.workspace = true\n[package]\n"));
    assert!(!takes_workspace_lints("[package]\nworkspace = true\n"));
    assert!(!takes_workspace_lints("[lints]\nworkspace = false\n"));
    assert!(!takes_workspace_lints("[lints.rust]\nworkspace = true\n"));
}

#[test]
fn module_doc_detection() {
    assert!(opens_with_module_doc("//! The crate.\n"));
    assert!(!opens_with_module_doc("// The crate.\n"));
    assert!(!opens_with_module_doc("\n//! Late.\n"));
}
