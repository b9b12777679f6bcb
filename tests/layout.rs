//! The rooms of `src/` stay as README.md's Layout describes them: no `#[path]` glue, nothing
//! outside `src/daemon/` reaching into the daemon, the two event loops small, and no circle among
//! the files' `crate::` imports. Reads the sources; runs nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every source file of the binary, by path relative to `src/`, with comments removed (doc links
/// name other modules without importing them).
fn sources() -> BTreeMap<String, String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let code: Vec<&str> = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect();
            (p.strip_prefix(src()).unwrap().to_string_lossy().into_owned(), code.join("\n"))
        })
        .collect()
}

/// The module path of a file: `daemon/node.rs` is `daemon::node`, `daemon/mod.rs` is `daemon`.
fn module_of(file: &str) -> Vec<String> {
    let mut parts: Vec<String> = file.trim_end_matches(".rs").split('/').map(str::to_string).collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "main")) {
        parts.pop();
    }
    parts
}

/// `crate::a::b::c` paths in `code`, as their segments.
fn crate_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(path.split("::").filter(|s| !s.is_empty()).map(str::to_string).collect());
    }
    out
}

#[test]
fn no_path_attributes() {
    for (file, code) in sources() {
        assert!(!code.contains("#[path"), "src/{file} uses #[path]: give the module a file of its own room");
    }
}

#[test]
fn nothing_outside_the_daemon_reaches_into_it() {
    for (file, code) in sources() {
        if file.starts_with("daemon/") {
            continue;
        }
        for p in crate_paths(&code) {
            assert!(p.first().map(String::as_str) != Some("daemon"), "src/{file} uses crate::{}: the daemon's rooms are its own", p.join("::"));
        }
        for (i, _) in code.match_indices("daemon::") {
            let after: String = code[i + "daemon::".len()..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let before = code[..i].chars().last();
            let qualified = before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
            if !qualified {
                assert!(after == "main" || after == "guard_main", "src/{file} uses daemon::{after}; only daemon::main and daemon::guard_main are public");
            }
        }
    }
}

/// Lines of every `impl NAME` block in `file`.
fn impl_lines(file: &str, name: &str) -> usize {
    let code = std::fs::read_to_string(src().join(file)).unwrap();
    let mut total = 0;
    let mut inside = false;
    for line in code.lines() {
        if line.starts_with(&format!("impl {name} ")) || line.starts_with(&format!("impl {name}{{")) {
            inside = true;
        }
        if inside {
            total += 1;
            if line == "}" {
                inside = false;
            }
        }
    }
    total
}

#[test]
fn the_event_loops_stay_small() {
    for (file, name) in [("daemon/node.rs", "Daemon"), ("frontend/event_loop.rs", "Frontend")] {
        let n = impl_lines(file, name);
        assert!(n > 0, "no impl {name} in src/{file}");
        assert!(n < 400, "impl {name} in src/{file} has {n} lines: move work into a service that returns effects");
    }
}

#[test]
fn crate_imports_have_no_circles() {
    let files = sources();
    let by_module: BTreeMap<Vec<String>, String> = files.keys().map(|f| (module_of(f), f.clone())).collect();
    // A path names the file of its longest module prefix (items live in the file of their module).
    let resolve = |path: &[String]| (1..=path.len()).rev().find_map(|n| by_module.get(&path[..n]).cloned());
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, code) in &files {
        let targets = crate_paths(code).iter().filter_map(|p| resolve(p)).filter(|t| t != file).collect();
        edges.insert(file.clone(), targets);
    }
    // Depth-first search for a back edge; report the circle it closes.
    fn visit(f: &str, edges: &BTreeMap<String, BTreeSet<String>>, stack: &mut Vec<String>, done: &mut BTreeSet<String>) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == f) {
            let mut circle = stack[i..].to_vec();
            circle.push(f.to_string());
            return Some(circle);
        }
        if done.contains(f) {
            return None;
        }
        stack.push(f.to_string());
        for t in edges.get(f).into_iter().flatten() {
            if let Some(c) = visit(t, edges, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(f.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for f in edges.keys() {
        if let Some(circle) = visit(f, &edges, &mut Vec::new(), &mut done) {
            panic!("import circle among files: {}", circle.join(" -> "));
        }
    }
    // The check has teeth: the shared rooms are imported, and imports resolve.
    assert!(edges["wire.rs"].contains("spec.rs"), "{:?}", edges["wire.rs"]);
    assert!(edges["frontend/event_loop.rs"].contains("links.rs"));
}
