//! The crate's layering, checked from its source.
//!
//! `core/src` is built in layers, each a top-level module (a folder): the numerics at the bottom,
//! then kernels, the model description, variational inference, prediction, the methods and the
//! test toolkit on top. A module may import from its own layer and the layers below it, never from
//! one above; and no two modules may import each other, directly or round a longer circle.
//!
//! The check reads every `crate::…` path in the library's source (comments and `#[cfg(test)]`
//! modules left out): a `use` line or a path written inline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom to top, by top-level module. `error` sits with the numerics: everything
/// returns its `Error`; so does `progress`, the progress bar every long loop shows, `communicator`, the
/// processes a run is spread over, and `workers`, the threads within one.
const LAYERS: &[(&str, usize)] = &[
    ("error", 0),
    ("num", 0),
    ("progress", 0),
    ("communicator", 0),
    ("workers", 0),
    ("kernels", 1),
    ("model", 2),
    ("vi", 3),
    ("predict", 4),
    ("methods", 5),
    ("testing", 6),
];

/// Items the crate root re-exports that library code may name as `crate::Item`: all from layer 0.
const ROOT_ITEMS: &[&str] = &["Real", "Error", "Result"];

type Module = Vec<String>;

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().find(|(name, _)| *name == top).map(|(_, l)| *l)
}

/// Every `.rs` file under `dir`, with its module path (`vi/guide.rs` → `["vi", "guide"]`).
fn modules(dir: &Path) -> BTreeMap<Module, PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<Module, PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("readable source folder") {
            let path = entry.expect("readable entry").path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under the root").with_extension("");
                let mut parts: Module = rel.iter().map(|p| p.to_string_lossy().into_owned()).collect();
                if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
                    parts.pop();
                }
                out.insert(parts, path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// The source without comments and without its `#[cfg(test)]` modules (tests may import anything).
fn library_text(src: &str) -> String {
    let mut out = String::new();
    let mut lines = src.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            // skip the module: up to the line where its braces close
            let mut depth = 0i64;
            let mut opened = false;
            for l in lines.by_ref() {
                depth += l.matches('{').count() as i64 - l.matches('}').count() as i64;
                opened |= l.contains('{');
                if opened && depth <= 0 {
                    break;
                }
            }
            continue;
        }
        let code = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(code);
        out.push('\n');
    }
    out
}

/// The `crate::…` paths of a text, each split at `::`, with `use crate::{a::b, c}` groups expanded.
fn crate_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let parts: Vec<String> = item.trim().split("::").map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect();
                if !parts.is_empty() {
                    out.push(parts);
                }
            }
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':').collect();
        out.push(path.split("::").filter(|p| !p.is_empty()).map(str::to_string).collect());
    }
    out
}

/// The deepest module that `path` names.
fn target(path: &[String], mods: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    (1..=path.len()).rev().map(|k| path[..k].to_vec()).find(|m| mods.contains_key(m))
}

struct Graph {
    edges: BTreeMap<Module, BTreeSet<Module>>,
    violations: Vec<String>,
}

fn graph(src: &Path) -> Graph {
    let mods = modules(src);
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    let mut violations = Vec::new();
    for (module, file) in &mods {
        let Some(top) = module.first() else { continue }; // the crate root lists the layers
        let Some(own) = layer_of(top) else {
            violations.push(format!("{}: top-level module `{top}` is in no layer (add it to LAYERS)", file.display()));
            continue;
        };
        let text = library_text(&std::fs::read_to_string(file).expect("readable source"));
        for path in crate_paths(&text) {
            let Some(first) = path.first() else { continue };
            if ROOT_ITEMS.contains(&first.as_str()) {
                continue;
            }
            let Some(to) = layer_of(first) else {
                violations.push(format!(
                    "{}: `crate::{}` goes through a root re-export; name the layer's module",
                    file.display(),
                    path.join("::")
                ));
                continue;
            };
            if to > own {
                violations.push(format!(
                    "{} (layer {own}, `{top}`) imports `crate::{}` from layer {to} (`{first}`), above it",
                    file.display(),
                    path.join("::")
                ));
            }
            if let Some(t) = target(&path, &mods) {
                if &t != module {
                    edges.entry(module.clone()).or_default().insert(t);
                }
            }
        }
    }
    Graph { edges, violations }
}

/// The modules on some import circle (Tarjan's strongly connected components of size > 1).
fn circles(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        edges: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<Module, usize>,
        low: BTreeMap<Module, usize>,
        stack: Vec<Module>,
        on: BTreeSet<Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit(v: &Module, s: &mut State) {
        let i = s.index.len();
        s.index.insert(v.clone(), i);
        s.low.insert(v.clone(), i);
        s.stack.push(v.clone());
        s.on.insert(v.clone());
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(w, s);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on.remove(&w);
                let done = &w == v;
                comp.push(w);
                if done {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State { edges, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(v, &mut s);
        }
    }
    s.out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let g = graph(&src());
    assert!(g.violations.is_empty(), "layering violations:\n{}", g.violations.join("\n"));
}

#[test]
fn no_import_circles() {
    let g = graph(&src());
    let found = circles(&g.edges);
    let show: Vec<String> = found.iter().map(|c| c.iter().map(|m| m.join("::")).collect::<Vec<_>>().join(" ↔ ")).collect();
    assert!(found.is_empty(), "import circles:\n{}", show.join("\n"));
}

/// The checker itself: a made-up tree with a violation and a circle is caught.
#[test]
fn the_checker_catches_an_upward_import_and_a_circle() {
    let dir = std::env::temp_dir().join(format!("weightspace_arch_{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (file, text) in [
        ("lib.rs", "mod model; mod vi;"),
        ("model/mod.rs", "pub mod bnn;"),
        // a comment naming crate::vi::fit does not count, and neither does a test module
        ("model/bnn.rs", "// crate::vi::fit\nuse crate::vi::fit::Fit;\n#[cfg(test)]\nmod tests {\n    use crate::testing::x;\n}\n"),
        ("vi/mod.rs", "pub mod fit;\npub mod guide;"),
        ("vi/fit.rs", "use crate::{vi::guide::G, Real};"),
        ("vi/guide.rs", "fn f() { crate::vi::fit::step(); }"),
    ] {
        let p = dir.join(file);
        std::fs::create_dir_all(p.parent().expect("a parent")).expect("temp dir");
        std::fs::write(p, text).expect("temp file");
    }
    let g = graph(&dir);
    assert_eq!(g.violations.len(), 1, "{:?}", g.violations);
    assert!(g.violations[0].contains("crate::vi::fit::Fit") && g.violations[0].contains("above it"), "{:?}", g.violations);
    let found = circles(&g.edges);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 2);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn library_code_does_not_import_the_test_toolkit() {
    let mods = modules(&src());
    let leaks: Vec<String> = mods
        .iter()
        .filter(|(m, _)| m.first().is_some_and(|t| t != "testing"))
        .filter(|(_, f)| library_text(&std::fs::read_to_string(f).expect("readable")).contains("crate::testing"))
        .map(|(_, f)| f.display().to_string())
        .collect();
    assert!(leaks.is_empty(), "library modules importing `testing`: {leaks:?}");
}
