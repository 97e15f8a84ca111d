//! The layout rules of `src/`, checked on every test run
//! (`cargo test --test architecture`): modules depend on lower layers only,
//! sibling files do not import each other in a cycle, every file says what
//! it owns in a `//!` line, and no file grows past the size limit.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "a test or tool fails loudly")]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer; a module may use its own layer's module and
/// any module of a lower layer. Leaves share layer 0 but not each other.
const LAYERS: &[(&str, u8)] = &[
    ("http", 0),
    ("file_watch", 0),
    ("metrics", 0),
    ("timers", 0),
    ("clock", 0),
    ("config", 1),
    ("control_plane", 2),
    ("error", 3),
    ("upstream", 4),
    ("pipeline", 5),
    ("server", 6),
];

const MAX_LINES: usize = 450;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn src() -> (PathBuf, Vec<PathBuf>) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&root, &mut files);
    files.sort();
    (root, files)
}

/// The top-level module a file belongs to (`None` for lib.rs and main.rs).
fn module_of(root: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(root).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?.trim_end_matches(".rs").to_string();
    (first != "lib" && first != "main").then_some(first)
}

/// The top-level modules a file names through `crate::`.
fn crate_uses(text: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for (i, _) in text.match_indices("crate::") {
        let name: String = text[i + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() {
            used.insert(name);
        }
    }
    used
}

#[test]
fn modules_use_only_lower_layers() {
    let (root, files) = src();
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(&root, file) else { continue };
        let own = layer(&module).unwrap_or_else(|| panic!("{module} is not in LAYERS"));
        for used in crate_uses(&std::fs::read_to_string(file).unwrap()) {
            if used == module {
                continue;
            }
            match layer(&used) {
                Some(l) if l < own => {}
                _ => wrong.push(format!("{} uses crate::{used}", file.strip_prefix(&root).unwrap().display())),
            }
        }
    }
    assert!(wrong.is_empty(), "layering broken (see LAYERS):\n{}", wrong.join("\n"));
}

#[test]
fn sibling_files_have_no_import_cycle() {
    let (root, files) = src();
    // Edges between files of one folder, through `super::name` or
    // `crate::folder::name`; the folder's mod.rs is its interface and not
    // counted.
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for file in &files {
        let Some(dir) = file.parent() else { continue };
        if dir == root || file.ends_with("mod.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let folder = dir.file_name().unwrap().to_str().unwrap();
        for sibling in &files {
            if sibling == file || sibling.parent() != Some(dir) || sibling.ends_with("mod.rs") {
                continue;
            }
            let name = sibling.file_stem().unwrap().to_str().unwrap();
            let named = [format!("super::{name}"), format!("crate::{folder}::{name}")];
            if named.iter().any(|n| text.contains(&format!("{n}::")) || text.contains(&format!("{n};"))) {
                edges.entry(file.clone()).or_default().insert(sibling.clone());
            }
        }
    }
    fn visit(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        path: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
    ) {
        if let Some(i) = path.iter().position(|p| p == f) {
            let cycle: Vec<_> = path[i..].iter().map(|p| p.display().to_string()).collect();
            panic!("import cycle: {}", cycle.join(" -> "));
        }
        if !done.insert(f.clone()) {
            return;
        }
        path.push(f.clone());
        for next in edges.get(f).into_iter().flatten() {
            visit(next, edges, path, done);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for f in edges.keys() {
        visit(f, &edges, &mut Vec::new(), &mut done);
    }
}

#[test]
fn every_file_says_what_it_owns_and_stays_small() {
    let (root, files) = src();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        assert!(text.starts_with("//! "), "{name} does not start with a //! line");
        let lines = text.lines().count();
        assert!(lines <= MAX_LINES, "{name} has {lines} lines (limit {MAX_LINES}): split it along a concept");
    }
}

#[test]
fn the_checks_catch_what_they_check() {
    assert_eq!(
        crate_uses("use crate::http::host::Port;\nlet x = crate::error::ProxyError::NoRoute;"),
        BTreeSet::from(["http".to_string(), "error".to_string()])
    );
    let (root, _) = src();
    assert_eq!(module_of(&root, &root.join("upstream/pool.rs")).as_deref(), Some("upstream"));
    assert_eq!(module_of(&root, &root.join("error.rs")).as_deref(), Some("error"));
    assert_eq!(module_of(&root, &root.join("lib.rs")), None);
}
