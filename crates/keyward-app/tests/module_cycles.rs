//! No import circles between the modules of any workspace crate: read every crate's sources,
//! draw an edge from a module (a file) to each module its `crate::…`, `super::…` and
//! `self::…` paths name (the deepest one that exists) and to each child module it names
//! (`child::…`), and look for strongly connected components. The crate root is left out: it only declares modules and re-exports them.
//! Test modules (`#[cfg(test)]`, to the end of a file) are left out too.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use regex::Regex;

/// Circles still being taken apart, by crate (each a sorted list of modules). The test
/// fails on any other circle, and on one listed here that no longer exists (so the list
/// only shrinks). None are left; a new one must be taken apart, not listed.
const KNOWN: &[(&str, &[&str])] = &[];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Module path (`a::b`) of each source file of a crate; the root is `""`.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut out = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap_or(&file).with_extension("");
        let mut parts: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
            parts.pop();
        }
        if parts == ["main"] {
            continue;
        }
        out.insert(parts.join("::"), file);
    }
    out
}

/// The top-level items of a `{…}` use group.
fn split_group(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&group[start..]);
    out
}

/// Every path a source names: (`crate` | `super` | `self`, segments).
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    let path = Regex::new(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)(::\{)?")
        .expect("valid regex");
    let segment = Regex::new(r"^\s*([A-Za-z_][A-Za-z0-9_]*(?:::[A-Za-z_][A-Za-z0-9_]*)*)")
        .expect("valid regex");
    let mut out = Vec::new();
    for m in path.captures_iter(text) {
        let base = m[1].to_owned();
        let segments: Vec<String> = m[2]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let Some(open) = m.get(3) else {
            out.push((base, segments));
            continue;
        };
        let rest = &text[open.end()..];
        let mut depth = 1;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        for item in split_group(&rest[..end]) {
            if let Some(s) = segment.captures(item) {
                let mut full = segments.clone();
                full.extend(s[1].split("::").map(str::to_owned));
                out.push((base.clone(), full));
            }
        }
    }
    out
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    let comment = Regex::new(r"//[^\n]*").expect("valid regex");
    let visibility = Regex::new(r"pub\((?:crate|super|self|in [^)]*)\)").expect("valid regex");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, file) in &mods {
        if module.is_empty() {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let text = text.split("#[cfg(test)]").next().unwrap_or_default();
        let text = comment.replace_all(text, "");
        // Visibility (`pub(super)`, `pub(in crate::x)`) names no module it depends on.
        let text = visibility.replace_all(&text, "pub");
        let here: Vec<String> = module.split("::").map(str::to_owned).collect();
        let targets = edges.entry(module.clone()).or_default();
        // A child module named without a prefix (`rewrite::x` inside `forward`).
        for child in mods.keys().filter_map(|m| {
            m.strip_prefix(module.as_str())
                .and_then(|rest| rest.strip_prefix("::"))
                .filter(|rest| !rest.contains("::"))
        }) {
            let named = Regex::new(&format!(r"(^|[^:\w]){child}::")).expect("valid regex");
            if named.is_match(&text) {
                targets.insert(format!("{module}::{child}"));
            }
        }
        for (base, segments) in paths(&text) {
            let full: Vec<String> = match base.as_str() {
                "crate" => segments,
                "super" => here[..here.len() - 1]
                    .iter()
                    .cloned()
                    .chain(segments)
                    .collect(),
                _ => here.iter().cloned().chain(segments).collect(),
            };
            let target = (0..=full.len())
                .rev()
                .map(|k| full[..k].join("::"))
                .find(|candidate| mods.contains_key(candidate));
            if let Some(target) = target
                && !target.is_empty()
                && target != *module
            {
                targets.insert(target);
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        found: Vec<Vec<String>>,
    }
    fn visit<'a>(w: &mut Walk<'a>, v: &'a str) {
        w.index.insert(v, w.next);
        w.low.insert(v, w.next);
        w.next += 1;
        w.stack.push(v);
        w.on_stack.insert(v);
        let edges = w.edges;
        for t in edges.get(v).into_iter().flatten() {
            let t = t.as_str();
            if !w.index.contains_key(t) {
                visit(w, t);
                let low = w.low[v].min(w.low[t]);
                w.low.insert(v, low);
            } else if w.on_stack.contains(t) {
                let low = w.low[v].min(w.index[t]);
                w.low.insert(v, low);
            }
        }
        if w.low[v] == w.index[v] {
            let mut component = Vec::new();
            while let Some(t) = w.stack.pop() {
                w.on_stack.remove(t);
                component.push(t.to_owned());
                if t == v {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                w.found.push(component);
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            visit(&mut walk, v);
        }
    }
    walk.found
}

#[test]
fn no_module_imports_another_that_imports_it_back() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = BTreeSet::new();
    let mut read = 0;
    for entry in std::fs::read_dir(&crates)
        .expect("the workspace's crates")
        .flatten()
    {
        let src = entry.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        read += 1;
        for circle in circles(&graph(&src)) {
            found.insert((name.clone(), circle));
        }
    }
    assert!(read >= 6, "read {read} crates");
    let known: BTreeSet<(String, Vec<String>)> = KNOWN
        .iter()
        .map(|(c, m)| ((*c).to_owned(), m.iter().map(|s| (*s).to_owned()).collect()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(new.is_empty(), "modules that import each other: {new:?}");
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "these circles are gone: remove them from KNOWN: {gone:?}"
    );
}

#[test]
fn a_circle_is_found() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(circles(&edges), vec![vec!["a", "b", "c"]]);
    let text = "use crate::x::{y, z::{w}};\nuse super::q;";
    let found = paths(text);
    assert!(found.contains(&("crate".into(), vec!["x".into(), "y".into()])));
    assert!(found.contains(&("crate".into(), vec!["x".into(), "z".into()])));
    assert!(found.contains(&("super".into(), vec!["q".into()])));
}
