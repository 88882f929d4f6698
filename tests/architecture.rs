//! The structure stays easy to see: within every crate of the workspace, no module uses another module that
//! uses it back, however long the way round. A module is a file (`foo.rs` or `foo/mod.rs`); an edge is any path
//! in its code that names an item of another module of the same crate (`use`, or a qualified path in an
//! expression or a type). Re-exports (`pub use`) are facades, not uses: a path through one counts as a use of
//! the module the item comes from. Test modules (`#[cfg(test)]`) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A module's path from its crate root (`[]` is the root, `["cluster", "watch"]` a nested file).
type ModPath = Vec<String>;

#[derive(Default)]
struct Module {
    file: PathBuf,
    children: BTreeSet<String>,
    /// `pub use` re-exports: the name they give, and the path they name (as written, in this module).
    reexports: BTreeMap<String, Vec<String>>,
    /// Every path this module names, as written.
    paths: Vec<Vec<String>>,
}

/// Every crate root of the workspace: `*/src/lib.rs`, `*/src/main.rs` where there is no lib, and `src/main.rs`.
fn crate_roots() -> Vec<PathBuf> {
    let mut roots = vec![Path::new(ROOT).join("src/main.rs")];
    for entry in std::fs::read_dir(ROOT).unwrap().flatten() {
        let src = entry.path().join("src");
        if entry.path().join("Cargo.toml").is_file() && src.is_dir() {
            let lib = src.join("lib.rs");
            roots.push(if lib.is_file() { lib } else { src.join("main.rs") });
        }
    }
    roots.retain(|r| r.is_file());
    roots
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        a.path().is_ident("cfg") && a.parse_args::<syn::Meta>().is_ok_and(|m| m.path().is_ident("test"))
    })
}

/// Collects one file's module declarations, re-exports and paths.
struct Collector<'a> {
    module: &'a mut Module,
    /// Inline (non-test) modules entered: their names, prefixed to what is collected inside.
    inline: Vec<String>,
}

impl Collector<'_> {
    fn push_path(&mut self, segments: Vec<String>) {
        let mut full = self.inline.iter().map(|s| format!("@{s}")).collect::<Vec<_>>();
        full.extend(segments);
        self.module.paths.push(full);
    }
}

fn use_tree_paths(tree: &syn::UseTree, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match tree {
        syn::UseTree::Path(p) => {
            prefix.push(p.ident.to_string());
            use_tree_paths(&p.tree, prefix, out);
            prefix.pop();
        }
        syn::UseTree::Name(n) => {
            let name = n.ident.to_string();
            let mut path = prefix.clone();
            if name != "self" {
                path.push(name.clone());
            }
            let given = if name == "self" { prefix.last().cloned().unwrap_or_default() } else { name };
            out.push((path, given));
        }
        syn::UseTree::Rename(r) => {
            let mut path = prefix.clone();
            if r.ident != "self" {
                path.push(r.ident.to_string());
            }
            out.push((path, r.rename.to_string()));
        }
        syn::UseTree::Glob(_) => out.push((prefix.clone(), "*".into())),
        syn::UseTree::Group(g) => {
            for tree in &g.items {
                use_tree_paths(tree, prefix, out);
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, item: &'ast syn::ItemMod) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        match &item.content {
            None => {
                self.module.children.insert(item.ident.to_string());
            }
            Some((_, items)) => {
                // Rare: an inline module that is not a test. Its paths count as its parent file's, relative to it.
                self.inline.push(item.ident.to_string());
                for item in items {
                    self.visit_item(item);
                }
                self.inline.pop();
            }
        }
    }

    fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_fn(self, item);
        }
    }

    fn visit_item_impl(&mut self, item: &'ast syn::ItemImpl) {
        if !is_cfg_test(&item.attrs) {
            syn::visit::visit_item_impl(self, item);
        }
    }

    fn visit_item_use(&mut self, item: &'ast syn::ItemUse) {
        if is_cfg_test(&item.attrs) {
            return;
        }
        let mut found = Vec::new();
        use_tree_paths(&item.tree, &mut Vec::new(), &mut found);
        let public = !matches!(item.vis, syn::Visibility::Inherited);
        for (path, given) in found {
            if public && self.inline.is_empty() {
                self.module.reexports.insert(given, path);
            } else {
                self.push_path(path);
            }
        }
    }

    fn visit_path(&mut self, path: &'ast syn::Path) {
        let segments: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
        if segments.len() > 1 {
            self.push_path(segments);
        }
        syn::visit::visit_path(self, path);
    }
}

/// Reads the module tree of the crate rooted at `root`.
fn read_crate(root: &Path) -> BTreeMap<ModPath, Module> {
    let mut modules = BTreeMap::new();
    let mut pending: Vec<(ModPath, PathBuf)> = vec![(Vec::new(), root.to_path_buf())];
    while let Some((path, file)) = pending.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let mut module = Module { file: file.clone(), ..Module::default() };
        let mut collector = Collector { module: &mut module, inline: Vec::new() };
        collector.visit_file(&ast);
        // Children live beside a crate root or a mod.rs, and in a directory named after any other file.
        let name = file.file_stem().unwrap().to_string_lossy().into_owned();
        let dir = match name.as_str() {
            "lib" | "main" | "mod" => file.parent().unwrap().to_path_buf(),
            _ => file.parent().unwrap().join(&name),
        };
        for child in &module.children {
            let flat = dir.join(format!("{child}.rs"));
            let nested = dir.join(child).join("mod.rs");
            let child_file = if flat.is_file() { flat } else { nested };
            let mut child_path = path.clone();
            child_path.push(child.clone());
            pending.push((child_path, child_file));
        }
        modules.insert(path, module);
    }
    modules
}

/// The module a path written in module `from` names, following re-exports; `None` when it leaves the crate.
fn resolve(
    modules: &BTreeMap<ModPath, Module>,
    from: &ModPath,
    written: &[String],
    depth: usize,
) -> Option<ModPath> {
    if depth > 16 {
        return None;
    }
    // Inline-module prefixes (`@name`) make the path relative to that inline module, which is part of `from`.
    let written: Vec<String> = written.iter().filter(|s| !s.starts_with('@')).cloned().collect();
    let (mut at, rest): (ModPath, &[String]) = match written.first().map(String::as_str) {
        Some("crate") => (Vec::new(), &written[1..]),
        Some("self") => (from.clone(), &written[1..]),
        Some("super") => {
            let mut at = from.clone();
            let mut rest = &written[..];
            while rest.first().map(String::as_str) == Some("super") {
                at.pop();
                rest = &rest[1..];
            }
            (at, rest)
        }
        Some(first) if modules.get(from).is_some_and(|m| m.children.contains(first)) => {
            (from.clone(), &written[..])
        }
        Some(first)
            if modules.get(from).is_some_and(|m| m.reexports.contains_key(first)) && from.is_empty() =>
        {
            (from.clone(), &written[..])
        }
        _ => return None,
    };
    let mut rest = rest;
    while let Some(next) = rest.first() {
        let mut child = at.clone();
        child.push(next.clone());
        if modules.contains_key(&child) {
            at = child;
            rest = &rest[1..];
            continue;
        }
        // An item: where it really comes from, if this module only re-exports it.
        if let Some(source) = modules.get(&at).and_then(|m| m.reexports.get(next)) {
            let mut through = source.clone();
            through.extend(rest[1..].iter().cloned());
            return resolve(modules, &at, &through, depth + 1).or(Some(at));
        }
        break;
    }
    Some(at)
}

fn name(path: &ModPath) -> String {
    if path.is_empty() { "(root)".into() } else { path.join("::") }
}

/// Strongly connected components with more than one module (Tarjan's algorithm).
fn cycles(edges: &BTreeMap<ModPath, BTreeSet<ModPath>>) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        edges: &'a BTreeMap<ModPath, BTreeSet<ModPath>>,
        index: BTreeMap<ModPath, usize>,
        low: BTreeMap<ModPath, usize>,
        stack: Vec<ModPath>,
        on_stack: BTreeSet<ModPath>,
        next: usize,
        found: Vec<Vec<ModPath>>,
    }
    fn visit(s: &mut State<'_>, v: &ModPath) {
        s.index.insert(v.clone(), s.next);
        s.low.insert(v.clone(), s.next);
        s.next += 1;
        s.stack.push(v.clone());
        s.on_stack.insert(v.clone());
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v.clone(), low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v.clone(), low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(&w);
                let done = &w == v;
                component.push(w);
                if done {
                    break;
                }
            }
            if component.len() > 1 {
                component.sort();
                s.found.push(component);
            }
        }
    }
    let mut state = State {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !state.index.contains_key(v) {
            visit(&mut state, v);
        }
    }
    state.found
}

#[test]
fn no_module_uses_a_module_that_uses_it_back() {
    let mut problems = Vec::new();
    for root in crate_roots() {
        let modules = read_crate(&root);
        let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
        let mut witness: BTreeMap<(ModPath, ModPath), String> = BTreeMap::new();
        for (from, module) in &modules {
            edges.entry(from.clone()).or_default();
            for written in &module.paths {
                let Some(to) = resolve(&modules, from, written, 0) else { continue };
                if &to == from {
                    continue;
                }
                edges.entry(from.clone()).or_default().insert(to.clone());
                let file = module.file.strip_prefix(ROOT).unwrap_or(&module.file).display().to_string();
                witness
                    .entry((from.clone(), to))
                    .or_insert_with(|| format!("{file}: `{}`", written.join("::")));
            }
        }
        for component in cycles(&edges) {
            let members: BTreeSet<&ModPath> = component.iter().collect();
            let mut lines = Vec::new();
            for from in &component {
                for to in edges[from].iter().filter(|to| members.contains(to)) {
                    lines.push(format!(
                        "    {} -> {}: {}",
                        name(from),
                        name(to),
                        witness[&(from.clone(), to.clone())]
                    ));
                }
            }
            let krate = root.strip_prefix(ROOT).unwrap_or(&root).display().to_string();
            problems.push(format!(
                "{krate}: {}\n{}",
                component.iter().map(name).collect::<Vec<_>>().join(", "),
                lines.join("\n")
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "modules that use each other, directly or round about:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_a_circle_through_a_reexport() {
    // Two files that use each other, one of them through the crate root's re-export.
    let dir = std::env::temp_dir().join(format!("ebb-architecture-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("src/a")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), "mod a;\nmod b;\npub use b::Thing;\n").unwrap();
    std::fs::write(dir.join("src/a/mod.rs"), "mod inner;\npub fn f() { inner::g() }\n").unwrap();
    std::fs::write(dir.join("src/a/inner.rs"), "pub fn g() { let _ = crate::Thing; }\n").unwrap();
    std::fs::write(dir.join("src/b.rs"), "pub struct Thing;\nfn h() { super::a::f() }\n").unwrap();
    let modules = read_crate(&dir.join("src/lib.rs"));
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (from, module) in &modules {
        for written in &module.paths {
            if let Some(to) = resolve(&modules, from, written, 0).filter(|to| to != from) {
                edges.entry(from.clone()).or_default().insert(to);
            }
        }
    }
    let found = cycles(&edges);
    let _ = std::fs::remove_dir_all(&dir);
    let names: Vec<Vec<String>> = found.iter().map(|c| c.iter().map(name).collect()).collect();
    assert_eq!(names, [["a", "a::inner", "b"]], "{edges:?}");
}
