//! The shape of the source: the import graph between files has no cycle,
//! and the top-level modules form layers that are used one way only.
//!
//! The checker reads every `.rs` file under `src/`, finds each crate's
//! modules from its root (`lib.rs`, `bin/*.rs`, `bin/*/main.rs`) through
//! their `mod` declarations, and takes an edge from a file to the file
//! that defines each module it names: `crate::`, `super::` and `self::`
//! paths and a module's own child modules (`connection::Home` in a
//! `mod.rs`), in `use` declarations and in code alike. A path into a folder
//! module counts as an edge to its `mod.rs` unless it names a child module
//! further in. A `pub use` re-export, a `mod` declaration, a comment (doc
//! links included) and a string literal are not edges; an inline module
//! (`#[cfg(test)] mod tests`) counts as its file.
//!
//! The layers, bottom up: `logging` (uses nothing), `protocol` and
//! `config`; `db`; `cluster` and `auth`; `server`. `client` stands on
//! `protocol` alone. Run `cargo test --test layout -- --ignored
//! --nocapture` to print every file's edges.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Source text by path relative to `src/` (`server/mod.rs`).
type Sources = BTreeMap<String, String>;

/// Files each file names, by path relative to `src/`.
type Edges = BTreeMap<String, BTreeSet<String>>;

/// The top-level modules of the library each one may use (besides itself).
const LAYERS: &[(&str, &[&str])] = &[
    ("logging", &[]),
    ("protocol", &["logging"]),
    ("config", &["logging"]),
    ("db", &["protocol", "config", "logging"]),
    ("cluster", &["db", "protocol", "config", "logging"]),
    ("auth", &["db", "protocol", "config", "logging"]),
    (
        "server",
        &["cluster", "auth", "db", "protocol", "config", "logging"],
    ),
    ("client", &["protocol"]),
];

/// Modules the library compiles only for its own unit tests (`#[cfg(test)]`
/// in `lib.rs`): any module's tests may use them; they use nothing of it.
const TEST_ONLY: &[&str] = &["test_certs"];

#[test]
fn no_cycle_between_files() {
    let edges = graph(&read_sources());
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle between files: {}", cycle.join(" -> "));
    }
}

#[test]
fn layers_run_one_way() {
    let violations = layer_violations(&graph(&read_sources()));
    assert!(
        violations.is_empty(),
        "imports against the layer order:\n{}",
        violations.join("\n")
    );
}

#[test]
fn every_source_file_belongs_to_a_crate() {
    let sources = read_sources();
    let reached: BTreeSet<String> = crates(&sources)
        .into_iter()
        .flat_map(|modules| modules.into_values())
        .collect();
    let orphans: Vec<&String> = sources.keys().filter(|f| !reached.contains(*f)).collect();
    assert!(orphans.is_empty(), "files no crate declares: {orphans:?}");
}

/// Prints every file's edges and each top-level module's.
#[test]
#[ignore = "prints the graph; run with --ignored --nocapture"]
fn print_edges() {
    let edges = graph(&read_sources());
    println!("file edges:");
    for (file, targets) in &edges {
        println!("  {file} -> {}", join(targets));
    }
    println!("top-level module edges:");
    for (module, targets) in module_edges(&edges) {
        println!("  {module} -> {}", join(&targets));
    }
}

fn join(targets: &BTreeSet<String>) -> String {
    match targets.is_empty() {
        true => "(none)".to_string(),
        false => targets.iter().cloned().collect::<Vec<_>>().join(", "),
    }
}

/// Every `.rs` file under `src/`.
fn read_sources() -> Sources {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut sources = Sources::new();
    read_dir(&root, &root, &mut sources);
    sources
}

fn read_dir(root: &Path, dir: &Path, sources: &mut Sources) {
    for entry in fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("readable entry").path();
        if path.is_dir() {
            read_dir(root, &path, sources);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).unwrap();
            let name = relative.to_string_lossy().replace('\\', "/");
            sources.insert(name, fs::read_to_string(&path).expect("readable file"));
        }
    }
}

// ---- tokens ----------------------------------------------------------------

/// What the checker sees of Rust: names, `::`, and single punctuation.
/// Comments and literals are gone.
#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    PathSep,
    Punct(char),
}

fn tokens(text: &str) -> Vec<Token> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        i = next_token(&chars, i, &mut out);
    }
    out
}

/// Reads the token at `i` into `out`; returns where the next one starts.
fn next_token(c: &[char], i: usize, out: &mut Vec<Token>) -> usize {
    let at = |k: usize| c.get(k).copied().unwrap_or('\0');
    match c[i] {
        ch if ch.is_whitespace() => i + 1,
        '/' if at(i + 1) == '/' => skip_line(c, i),
        '/' if at(i + 1) == '*' => skip_block_comment(c, i),
        '"' => skip_string(c, i + 1),
        '\'' => skip_char_or_lifetime(c, i),
        'r' | 'b' | 'c' if starts_literal(c, i) => skip_prefixed_literal(c, i),
        ':' if at(i + 1) == ':' => {
            out.push(Token::PathSep);
            i + 2
        }
        ch if ch.is_alphanumeric() || ch == '_' => {
            let end = (i..c.len())
                .find(|&k| !(c[k].is_alphanumeric() || c[k] == '_'))
                .unwrap_or(c.len());
            out.push(Token::Ident(c[i..end].iter().collect()));
            end
        }
        ch => {
            out.push(Token::Punct(ch));
            i + 1
        }
    }
}

fn skip_line(c: &[char], i: usize) -> usize {
    (i..c.len()).find(|&k| c[k] == '\n').unwrap_or(c.len())
}

/// Skips a (nested) block comment starting at `i`.
fn skip_block_comment(c: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < c.len() {
        match (c[i], c.get(i + 1).copied()) {
            ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
            ('*', Some('/')) => {
                (depth, i) = (depth - 1, i + 2);
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    i
}

/// Skips a string body starting at `i` (after the opening quote).
fn skip_string(c: &[char], mut i: usize) -> usize {
    while i < c.len() {
        match c[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// `'a'`, `'\n'` and `'\u{1F600}'` are literals; `'a` is a lifetime.
fn skip_char_or_lifetime(c: &[char], i: usize) -> usize {
    if c.get(i + 1) == Some(&'\\') {
        return (i + 2..c.len())
            .find(|&k| c[k] == '\'')
            .map_or(c.len(), |k| k + 1);
    }
    match c.get(i + 2) == Some(&'\'') {
        true => i + 3,
        false => i + 1,
    }
}

/// Whether a byte, C or raw literal (`b"`, `b'`, `c"`, `r"`, `r#"`,
/// `br#"`) starts at `i`: not inside a name such as `bar`, and not a raw
/// identifier such as `r#type`.
fn starts_literal(c: &[char], i: usize) -> bool {
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return false;
    }
    let k = i + usize::from(c[i] == 'b' || c[i] == 'c');
    if c.get(k) == Some(&'r') {
        let hashes = (k + 1..c.len()).take_while(|&h| c[h] == '#').count();
        return c.get(k + 1 + hashes) == Some(&'"');
    }
    k > i && matches!(c.get(k), Some('"') | Some('\''))
}

fn skip_prefixed_literal(c: &[char], i: usize) -> usize {
    let i = i + usize::from(c[i] == 'b' || c[i] == 'c');
    if c[i] == '\'' {
        return skip_char_or_lifetime(c, i);
    }
    if c[i] != 'r' {
        return skip_string(c, i + 1);
    }
    let hashes = (i + 1..c.len()).take_while(|&k| c[k] == '#').count();
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let body = i + 2 + hashes;
    (body..c.len())
        .find(|&k| c[k..].starts_with(&closing))
        .map_or(c.len(), |k| k + closing.len())
}

fn is_ident(token: Option<&Token>, name: &str) -> bool {
    matches!(token, Some(Token::Ident(s)) if s == name)
}

// ---- modules ---------------------------------------------------------------

/// One crate's modules: module path (`server::router`) → defining file.
type Modules = BTreeMap<String, String>;

/// The crates under `src/`: the library and each binary.
fn crates(sources: &Sources) -> Vec<Modules> {
    let roots = sources.keys().filter(|f| {
        let parts: Vec<&str> = f.split('/').collect();
        matches!(parts[..], ["lib.rs"] | ["bin", _] | ["bin", _, "main.rs"])
    });
    roots.map(|root| crate_modules(sources, root)).collect()
}

fn crate_modules(sources: &Sources, root: &str) -> Modules {
    let mut modules = Modules::new();
    add_module(sources, &mut modules, String::new(), root);
    modules
}

/// Adds the module `path` defined by `file`, then its children.
fn add_module(sources: &Sources, modules: &mut Modules, path: String, file: &str) {
    modules.insert(path.clone(), file.to_string());
    let Some(text) = sources.get(file) else {
        return;
    };
    for (inner, child, declared) in declared_modules(&tokens(text)) {
        let parent = join_path(&path, &inner);
        let child_path = join_path(&parent, &child);
        match declared {
            true => {
                let child_file = child_file(sources, file, path.is_empty(), &inner, &child);
                add_module(sources, modules, child_path, &child_file);
            }
            false => {
                modules.insert(child_path, file.to_string());
            }
        }
    }
}

fn join_path(parent: &str, child: &str) -> String {
    match (parent.is_empty(), child.is_empty()) {
        (true, _) => child.to_string(),
        (_, true) => parent.to_string(),
        _ => format!("{parent}::{child}"),
    }
}

/// Each `mod` in a file: the inline module it sits in (`""` at the top),
/// its name, and whether it is declared (`mod x;`) or inline (`mod x {`).
fn declared_modules(tokens: &[Token]) -> Vec<(String, String, bool)> {
    let mut found = Vec::new();
    walk_scopes(tokens, |i, scope| {
        if !is_ident(tokens.get(i), "mod") {
            return;
        }
        if let Some(Token::Ident(name)) = tokens.get(i + 1) {
            let declared = tokens.get(i + 2) == Some(&Token::Punct(';'));
            found.push((scope.join("::"), name.clone(), declared));
        }
    });
    found
}

/// The file of `child`, declared in `file` inside its inline modules
/// `inner`: beside a crate root or a `mod.rs`, else in the folder named
/// after the file (`a/b.rs` declares `a/b/child.rs`).
fn child_file(sources: &Sources, file: &str, is_root: bool, inner: &str, child: &str) -> String {
    let (dir, name) = file.rsplit_once('/').unwrap_or(("", file));
    let mut base: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
    if !is_root && name != "mod.rs" {
        base.push(name.trim_end_matches(".rs"));
    }
    base.extend(inner.split("::").filter(|s| !s.is_empty()));
    let dir = base.join("/");
    let flat = join_file(&dir, &format!("{child}.rs"));
    match sources.contains_key(&flat) {
        true => flat,
        false => join_file(&dir, &format!("{child}/mod.rs")),
    }
}

fn join_file(dir: &str, name: &str) -> String {
    match dir.is_empty() {
        true => name.to_string(),
        false => format!("{dir}/{name}"),
    }
}

/// Calls `visit` with each token's index and the inline modules around
/// it (`mod tests { .. }` pushes `tests` until its closing brace).
fn walk_scopes(tokens: &[Token], mut visit: impl FnMut(usize, &[String])) {
    let mut scope: Vec<String> = Vec::new();
    let mut opens: Vec<bool> = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        visit(i, &scope);
        match token {
            Token::Punct('{') => {
                let inline = i >= 2 && is_ident(tokens.get(i - 2), "mod");
                if let (true, Some(Token::Ident(name))) = (inline, tokens.get(i - 1)) {
                    scope.push(name.clone());
                }
                opens.push(inline);
            }
            // Every `}` closes one brace; only a module's pops the scope.
            Token::Punct('}') if opens.pop() == Some(true) => {
                scope.pop();
            }
            _ => {}
        }
    }
}

// ---- paths and edges -------------------------------------------------------

/// The file-level import graph of every crate under `src/`.
fn graph(sources: &Sources) -> Edges {
    let mut edges = Edges::new();
    for modules in crates(sources) {
        for (module, file) in &modules {
            let targets = edges.entry(file.clone()).or_default();
            let Some(text) = sources.get(file) else {
                continue;
            };
            if is_file_root(&modules, module, file) {
                for target in file_edges(&modules, module, &tokens(text)) {
                    if target != *file {
                        targets.insert(target);
                    }
                }
            }
        }
    }
    edges
}

/// Whether `module` is the file's own module (not an inline one in it).
fn is_file_root(modules: &Modules, module: &str, file: &str) -> bool {
    let parent = module.rsplit_once("::").map_or("", |(p, _)| p);
    module.is_empty() || modules.get(parent).map(String::as_str) != Some(file)
}

/// The files that the file of `module` names.
fn file_edges(modules: &Modules, module: &str, tokens: &[Token]) -> BTreeSet<String> {
    let mut targets = BTreeSet::new();
    for (scope, path) in paths(tokens) {
        let here = join_path(module, &scope.join("::"));
        if let Some(file) = resolve(modules, &here, &path) {
            targets.insert(file);
        }
    }
    targets
}

/// Every path in a file that may name a module of the crate, with the
/// inline modules it sits in: each path a `use` (not `pub use`) imports,
/// and each `a::b` in code that does not continue another path.
fn paths(tokens: &[Token]) -> Vec<(Vec<String>, Vec<String>)> {
    let mut found = Vec::new();
    let mut skip_to = 0;
    walk_scopes(tokens, |i, scope| {
        if i < skip_to {
            return;
        }
        if is_ident(tokens.get(i), "use") {
            let (trees, end) = use_trees(tokens, i + 1);
            if !is_reexport(tokens, i) {
                found.extend(trees.into_iter().map(|t| (scope.to_vec(), t)));
            }
            skip_to = end;
        } else if let Some(path) = path_at(tokens, i) {
            skip_to = i + 2 * path.len() - 1;
            found.push((scope.to_vec(), path));
        }
    });
    found
}

/// Whether the `use` at `i` is `pub use` or `pub(…) use`.
fn is_reexport(tokens: &[Token], i: usize) -> bool {
    let Some(mut k) = i.checked_sub(1) else {
        return false;
    };
    if tokens[k] == Token::Punct(')') {
        while k > 0 && tokens[k] != Token::Punct('(') {
            k -= 1;
        }
        k = k.saturating_sub(1);
    }
    is_ident(tokens.get(k), "pub")
}

/// The path `a::b::c` starting at `i`, unless it continues another path.
fn path_at(tokens: &[Token], i: usize) -> Option<Vec<String>> {
    let Some(Token::Ident(first)) = tokens.get(i) else {
        return None;
    };
    let continues = i > 0 && tokens[i - 1] == Token::PathSep;
    if continues || tokens.get(i + 1) != Some(&Token::PathSep) {
        return None;
    }
    let mut path = vec![first.clone()];
    let mut k = i + 1;
    while tokens.get(k) == Some(&Token::PathSep) {
        match tokens.get(k + 1) {
            Some(Token::Ident(s)) => path.push(s.clone()),
            _ => break,
        }
        k += 2;
    }
    Some(path)
}

/// The paths of the use tree starting at `start`, and the index after its `;`.
fn use_trees(tokens: &[Token], start: usize) -> (Vec<Vec<String>>, usize) {
    let mut trees = Vec::new();
    let mut prefixes: Vec<Vec<String>> = vec![Vec::new()];
    let mut current: Vec<String> = Vec::new();
    let mut i = start;
    while let Some(token) = tokens.get(i) {
        let prefix = prefixes.last().cloned().unwrap_or_default();
        let whole = || [prefix.clone(), current.clone()].concat();
        match token {
            Token::Ident(s) if s == "as" => i += 1, // the alias is not a path
            Token::Ident(s) => current.push(s.clone()),
            Token::Punct('{') => {
                prefixes.push(whole());
                current.clear();
            }
            Token::Punct('*') => {
                trees.push(whole());
                current.clear();
            }
            Token::Punct(',' | '}' | ';') => {
                if !current.is_empty() {
                    trees.push(whole());
                }
                current.clear();
                if *token == Token::Punct('}') {
                    prefixes.pop();
                }
                if *token == Token::Punct(';') {
                    return (trees, i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    (trees, i)
}

/// The file of the deepest module `path` names from inside `here`, if it
/// names one of the crate's modules.
fn resolve(modules: &Modules, here: &str, path: &[String]) -> Option<String> {
    let mut segments = path.iter().map(String::as_str).peekable();
    let mut at: Vec<&str> = here.split("::").filter(|s| !s.is_empty()).collect();
    match *segments.peek()? {
        "crate" => {
            at.clear();
            segments.next();
        }
        "self" => {
            segments.next();
        }
        "super" => {
            while segments.next_if_eq(&"super").is_some() {
                at.pop()?;
            }
        }
        child if modules.contains_key(&join_path(here, child)) => {}
        _ => return None,
    }
    for segment in segments {
        let deeper = join_path(&at.join("::"), segment);
        match (segment, modules.contains_key(&deeper)) {
            ("self", _) => continue,
            (_, true) => at.push(segment),
            (_, false) => break,
        }
    }
    modules.get(&at.join("::")).cloned()
}

// ---- cycles and layers -----------------------------------------------------

/// A cycle in `edges`, as the files around it (the first repeated at the end).
fn find_cycle(edges: &Edges) -> Option<Vec<String>> {
    let mut done = BTreeSet::new();
    for start in edges.keys() {
        let mut stack = Vec::new();
        if let Some(cycle) = visit(edges, start, &mut stack, &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn visit(
    edges: &Edges,
    file: &str,
    stack: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(at) = stack.iter().position(|f| f == file) {
        let mut cycle = stack[at..].to_vec();
        cycle.push(file.to_string());
        return Some(cycle);
    }
    if done.contains(file) {
        return None;
    }
    stack.push(file.to_string());
    for next in edges.get(file).into_iter().flatten() {
        if let Some(cycle) = visit(edges, next, stack, done) {
            return Some(cycle);
        }
    }
    stack.pop();
    done.insert(file.to_string());
    None
}

/// The library's top-level module of a file (`server/router/http.rs` →
/// `server`; `logging.rs` → `logging`); `None` for the crate root and
/// the binaries.
fn top_module(file: &str) -> Option<&str> {
    let first = file.split('/').next()?;
    match first {
        "lib.rs" | "bin" => None,
        _ => Some(first.trim_end_matches(".rs")),
    }
}

/// The top-level modules each one uses, from the file edges.
fn module_edges(edges: &Edges) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, targets) in edges {
        let Some(from) = top_module(file) else {
            continue;
        };
        let uses = modules.entry(from.to_string()).or_default();
        for to in targets.iter().filter_map(|t| top_module(t)) {
            if to != from {
                uses.insert(to.to_string());
            }
        }
    }
    modules
}

/// Each file edge between top-level modules that [`LAYERS`] does not allow.
fn layer_violations(edges: &Edges) -> Vec<String> {
    let mut violations = Vec::new();
    for (file, targets) in edges {
        let Some(from) = top_module(file) else {
            continue;
        };
        let allowed = LAYERS.iter().find(|(m, _)| *m == from).map(|(_, a)| *a);
        for target in targets {
            let Some(to) = top_module(target).filter(|to| *to != from && !TEST_ONLY.contains(to))
            else {
                continue;
            };
            if !allowed.is_some_and(|a| a.contains(&to)) {
                violations.push(format!("{file} -> {target} ({from} may not use {to})"));
            }
        }
    }
    violations
}

// ---- the checker's own tests -------------------------------------------------

fn in_memory(files: &[(&str, &str)]) -> Sources {
    files
        .iter()
        .map(|(path, text)| (path.to_string(), text.to_string()))
        .collect()
}

fn targets(edges: &Edges, file: &str) -> Vec<String> {
    edges[file].iter().cloned().collect()
}

#[test]
fn checker_names_a_cycle() {
    let sources = in_memory(&[
        ("lib.rs", "mod a;\nmod b;\nmod c;"),
        ("a.rs", "use crate::b::f;\npub fn g() { f() }"),
        ("b.rs", "pub fn f() { super::c::h() }"),
        ("c.rs", "pub fn h() { crate::a::g() }"),
    ]);
    let cycle = find_cycle(&graph(&sources)).expect("a -> b -> c -> a");
    assert_eq!(cycle, ["a.rs", "b.rs", "c.rs", "a.rs"]);
}

#[test]
fn checker_passes_a_graph_without_a_cycle() {
    let sources = in_memory(&[
        ("lib.rs", "mod a;\nmod b;"),
        ("a.rs", "use crate::b::f;"),
        ("b.rs", "pub fn f() {}"),
    ]);
    assert_eq!(find_cycle(&graph(&sources)), None);
}

#[test]
fn checker_resolves_folders_siblings_and_nested_supers() {
    let sources = in_memory(&[
        ("lib.rs", "mod s;"),
        ("s/mod.rs", "mod x;\nmod y;\nfn f() { x::run(); }"),
        (
            "s/x.rs",
            "use super::{self, y::{Y, self}};\npub fn run() {}",
        ),
        (
            "s/y.rs",
            "pub struct Y;\n#[cfg(test)]\nmod tests {\n    use super::super::Z;\n}",
        ),
    ]);
    let edges = graph(&sources);
    assert_eq!(targets(&edges, "s/mod.rs"), ["s/x.rs"]);
    assert_eq!(targets(&edges, "s/x.rs"), ["s/mod.rs", "s/y.rs"]);
    assert_eq!(targets(&edges, "s/y.rs"), ["s/mod.rs"]);
}

#[test]
fn checker_ignores_reexports_comments_and_literals() {
    let sources = in_memory(&[
        ("lib.rs", "mod a;\nmod b;\npub use a::A;"),
        (
            "a.rs",
            "//! See [`crate::b::B`].\npub(crate) use crate::b::B;\n\
             fn f() -> &'static str { let c = '\"'; r#\"crate::b::x\"# }",
        ),
        (
            "b.rs",
            "/* crate::a::A /* nested */ crate::a::A */ pub struct B;",
        ),
    ]);
    let edges = graph(&sources);
    assert!(edges.values().all(BTreeSet::is_empty), "{edges:?}");
}

#[test]
fn checker_reports_an_upward_layer() {
    let sources = in_memory(&[
        ("lib.rs", "mod db;\nmod server;"),
        ("db/mod.rs", "fn f() { crate::server::g() }"),
        ("server.rs", "pub fn g() {}"),
    ]);
    let violations = layer_violations(&graph(&sources));
    assert_eq!(
        violations,
        ["db/mod.rs -> server.rs (db may not use server)"]
    );
}
