//! Tidy: the layout ARCHITECTURE.md draws, kept true by a test (after
//! rust-analyzer's `tidy.rs`), so that no reviewer has to remember it.
//!
//! Every rule is a plain function over the workspace's Rust files (path and
//! text), so `each_rule_catches_its_violation` can feed it a made-up file
//! that breaks it and see it fail. The rules:
//! - the pure core (`api/`, the controller's `model/` and `services/`, and
//!   every plan file) does no I/O and reads no clock;
//! - the pure core imports only the pure core; the lower layers (the
//!   controller's `db/`, the agent's `sys/`) only the pure core and
//!   themselves; the leaves (the agent's settings, its hex) nothing;
//! - SQL only in the controller's `db/`;
//! - processes are started only in the few files listed below;
//! - one atomic-write helper per crate (the only `rename` of a file);
//! - no two modules import each other;
//! - every file says what it is for in a `//!` line;
//! - no file over [`MAX_LINES`] lines unless [`LONG_FILES`] says why;
//! - every path ARCHITECTURE.md names exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Longest file, in lines, before it needs a reason in [`LONG_FILES`].
const MAX_LINES: usize = 800;

/// Files allowed over [`MAX_LINES`], each with the reason.
const LONG_FILES: &[(&str, &str)] = &[];

/// The only files that start processes (`nft`, `dnsmasq`, `wg`, PostgreSQL).
const PROCESS_FILES: &[&str] = &[
    "controller/src/db/embedded_pg.rs",
    "cpe-agent/src/dns/dnsmasq.rs",
    "cpe-agent/src/sys/processes.rs",
    "cpe-agent/src/wireguard/interfaces.rs",
];

/// Each crate's one atomic-write helper (temporary file, fsync, rename,
/// fsync of the directory).
const ATOMIC_WRITERS: &[&str] = &[
    "controller/src/trust/key_files.rs",
    "cpe-agent/src/sys/atomic_write.rs",
];

/// Files that do no I/O, read no clock and import only each other (`…/`: a folder).
const PURE: &[&str] = &[
    "api/src/",
    "controller/src/model/",
    "controller/src/services/",
    "controller/src/rollout/plan.rs",
    "controller/src/vpn/addresses.rs",
    "controller/src/vpn/plan.rs",
    "cpe-agent/src/backend/interval_layers.rs",
    "cpe-agent/src/backend/iptables/sets.rs",
    "cpe-agent/src/backend/iptables/spec.rs",
    "cpe-agent/src/backend/nft/sets.rs",
    "cpe-agent/src/backend/nft/tunnels.rs",
    "cpe-agent/src/backend/planning.rs",
    "cpe-agent/src/classify/",
    "cpe-agent/src/sitename/",
    "cpe-agent/src/sys/hex.rs",
    "cpe-agent/src/sys/settings.rs",
    "cpe-agent/src/wireguard/listing.rs",
];

/// Files that import nothing of their own crate.
const LEAVES: &[&str] = &["cpe-agent/src/sys/hex.rs", "cpe-agent/src/sys/settings.rs"];

/// Folders that import only themselves and the pure core: the controller's
/// SQL and the agent's system layer sit below everything that uses them.
const LOWER_LAYERS: &[(&str, &str)] =
    &[("controller/src/db/", "db"), ("cpe-agent/src/sys/", "sys")];

/// What the pure core may not name: I/O, processes, async runtimes, the
/// database, HTTP, and clocks (time is an input there).
const IMPURE: &[&str] = &[
    "sqlx",
    "tokio",
    "std::fs",
    "std::process",
    "std::net::TcpListener",
    "std::net::TcpStream",
    "std::net::UdpSocket",
    "reqwest",
    "axum",
    "SystemTime",
    "Instant::now",
    "Utc::now",
    "Local::now",
];

/// One Rust file of the workspace.
struct SourceFile {
    /// Relative to the workspace root, with `/`.
    path: String,
    text: String,
}

impl SourceFile {
    fn new(path: &str, text: &str) -> Self {
        SourceFile {
            path: path.to_owned(),
            text: text.to_owned(),
        }
    }

    /// Code the crate ships: in its own `src/`, not a test module or file.
    fn is_shipped(&self) -> bool {
        self.path.split('/').nth(1) == Some("src") && !self.path.ends_with("/tests.rs")
    }

    fn is_pure(&self) -> bool {
        self.is_shipped() && (matches_any(&self.path, PURE) || self.path.ends_with("/plan.rs"))
    }

    /// The text without its test modules and comments, which may name
    /// anything.
    fn code(&self) -> String {
        without_test_modules(&self.text)
            .lines()
            .map(|line| match line.find("//") {
                Some(at) => &line[..at],
                None => line,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The crate folder (`api`, `controller`, `cpe-agent`).
    fn crate_dir(&self) -> &str {
        self.path.split('/').next().unwrap_or_default()
    }

    /// The module path within its crate (`services::pay_per_site::gate`),
    /// for files under `src/`.
    fn module(&self) -> Option<String> {
        let (_, rest) = self.path.split_once("/src/")?;
        let rest = rest.strip_suffix(".rs")?;
        let mut parts: Vec<&str> = rest.split('/').collect();
        if matches!(parts.last(), Some(&("mod" | "lib" | "main"))) {
            parts.pop();
        }
        (parts.first() != Some(&"bin")).then(|| parts.join("::"))
    }
}

/// `text` without its `#[cfg(test)] mod name { ... }` blocks, wherever they
/// are. Braces inside strings, characters and comments are skipped.
fn without_test_modules(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("#[cfg(test)]") {
        let after = rest[at + "#[cfg(test)]".len()..].trim_start();
        let is_inline_module = after.starts_with("mod ")
            && after
                .find(['{', ';'])
                .is_some_and(|i| after.as_bytes()[i] == b'{');
        if !is_inline_module {
            out.push_str(&rest[..at + 1]);
            rest = &rest[at + 1..];
            continue;
        }
        out.push_str(&rest[..at]);
        let open = rest.len() - after.len() + after.find('{').expect("checked above");
        rest = &rest[matching_brace(rest, open).map_or(rest.len(), |close| close + 1)..];
    }
    out.push_str(rest);
    out
}

/// The index of the `}` that closes the `{` at `open`, skipping string,
/// character and comment contents.
fn matching_brace(text: &str, open: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let (mut depth, mut i) = (0usize, open);
    while i < bytes.len() {
        match bytes[i] {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                i += text[i..].find('\n').unwrap_or(text.len() - i);
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += text[i..].find("*/").map_or(text.len() - i, |e| e + 1);
            }
            b'r' if matches!(bytes.get(i + 1), Some(b'"' | b'#')) && !is_ident(bytes, i) => {
                // A raw string: r"..." or r#"..."#, closed by the same number of #.
                let hashes = bytes[i + 1..].iter().take_while(|b| **b == b'#').count();
                let start = i + 1 + hashes + 1;
                let closing = format!("\"{}", "#".repeat(hashes));
                i = text[start.min(text.len())..]
                    .find(&closing)
                    .map_or(text.len(), |e| start + e + closing.len() - 1);
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            // A character literal ('{', '\''), not a lifetime ('a).
            b'\'' if bytes.get(i + 1) == Some(&b'\\') => {
                i += 2;
                while i < bytes.len() && bytes[i] != b'\'' {
                    i += 1;
                }
            }
            b'\'' if bytes.get(i + 2) == Some(&b'\'') => i += 2,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether the byte before `i` continues an identifier (`for` in `for"`).
fn is_ident(bytes: &[u8], i: usize) -> bool {
    i > 0 && (bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_')
}

fn matches_any(path: &str, patterns: &[&str]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('/') {
        Some(folder) => path.starts_with(&format!("{folder}/")),
        None => path == *p,
    })
}

/// Every `crate::a::b` path in `code`, as its segments.
fn crate_paths(code: &str) -> Vec<Vec<&str>> {
    let mut paths = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // `isdf_crate::` or `$crate::`
        }
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segments: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        match rest[end..].strip_prefix('{') {
            // `use crate::a::{b, c::d}`: each name in the braces, after the prefix.
            Some(group) => {
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                    let item = item.split(" as ").next().unwrap_or(item);
                    let mut path = segments.clone();
                    path.extend(item.split("::").map(str::trim).filter(|s| *s != "self"));
                    paths.push(path);
                }
            }
            None if !segments.is_empty() => paths.push(segments),
            None => {}
        }
    }
    paths
}

fn check_pure_code(file: &SourceFile, out: &mut Vec<String>) {
    if !file.is_pure() {
        return;
    }
    let code = file.code();
    for word in IMPURE {
        if code.contains(word) {
            out.push(format!(
                "{}: names `{word}`, but it is pure (no I/O, no clock; see PURE in tidy.rs)",
                file.path
            ));
        }
    }
}

/// The modules of each crate (module path -> file), for resolving paths.
fn modules_by_crate(files: &[SourceFile]) -> BTreeMap<&str, BTreeMap<String, &SourceFile>> {
    let mut by_crate: BTreeMap<&str, BTreeMap<String, &SourceFile>> = BTreeMap::new();
    for file in files.iter().filter(|f| f.is_shipped()) {
        if let Some(module) = file.module() {
            by_crate
                .entry(file.crate_dir())
                .or_default()
                .insert(module, file);
        }
    }
    by_crate
}

/// The module a `crate::` path names (its longest prefix that is a module;
/// the crate root for a re-export there), if the crate has it.
fn resolve<'m>(modules: &'m BTreeMap<String, &SourceFile>, path: &[&str]) -> Option<&'m str> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find_map(|candidate| modules.get_key_value(&candidate).map(|(k, _)| k.as_str()))
}

/// The pure core imports only the pure core; `db/` imports only the pure
/// core and itself; leaves import nothing of their crate.
fn check_imports(files: &[SourceFile], out: &mut Vec<String>) {
    let by_crate = modules_by_crate(files);
    let no_modules = BTreeMap::new();
    for file in files.iter().filter(|f| f.is_shipped()) {
        let layer = LOWER_LAYERS
            .iter()
            .find(|(folder, _)| file.path.starts_with(folder));
        let is_leaf = LEAVES.contains(&file.path.as_str());
        if !(file.is_pure() || layer.is_some() || is_leaf) {
            continue;
        }
        let modules = by_crate.get(file.crate_dir()).unwrap_or(&no_modules);
        for path in crate_paths(&file.code()) {
            let target = resolve(modules, &path);
            let target_is_pure = target.is_some_and(|m| modules[m].is_pure());
            let (allowed, what) = if is_leaf {
                (
                    false,
                    "a leaf (LEAVES in tidy.rs) imports nothing of its crate",
                )
            } else if let Some((_, module)) = layer {
                (
                    target_is_pure || path[0] == *module,
                    "a lower layer (LOWER_LAYERS in tidy.rs) imports only the pure core and itself",
                )
            } else {
                (target_is_pure, "the pure core imports only the pure core")
            };
            if !allowed {
                out.push(format!(
                    "{}: uses `crate::{}`; {what}",
                    file.path,
                    path.join("::")
                ));
            }
        }
    }
}

fn check_sql(file: &SourceFile, out: &mut Vec<String>) {
    if !file.path.starts_with("controller/src/") || file.path.starts_with("controller/src/db/") {
        return;
    }
    let code = file.code();
    for word in [
        "sqlx::query",
        "query_as(",
        "query_scalar(",
        "query!(",
        "query_as!(",
    ] {
        if code.contains(word) {
            out.push(format!(
                "{}: runs SQL (`{word}`); every SQL statement belongs in controller/src/db/",
                file.path
            ));
        }
    }
}

fn check_processes(file: &SourceFile, out: &mut Vec<String>) {
    if !file.is_shipped() || PROCESS_FILES.contains(&file.path.as_str()) {
        return;
    }
    let code = file.code();
    for word in ["Command::new", "process::Command", "tokio::process"] {
        if code.contains(word) {
            out.push(format!(
                "{}: starts a process (`{word}`); only PROCESS_FILES in tidy.rs may",
                file.path
            ));
        }
    }
}

fn check_atomic_writes(file: &SourceFile, out: &mut Vec<String>) {
    if !file.is_shipped() || ATOMIC_WRITERS.contains(&file.path.as_str()) {
        return;
    }
    if file.code().contains("fs::rename") {
        out.push(format!(
            "{}: renames a file; write files through the crate's one atomic-write helper \
             (ATOMIC_WRITERS in tidy.rs)",
            file.path
        ));
    }
}

fn check_doc(file: &SourceFile, out: &mut Vec<String>) {
    if !file.text.starts_with("//!") {
        out.push(format!(
            "{}: does not start with a `//!` line saying what it is for",
            file.path
        ));
    }
}

fn check_length(file: &SourceFile, out: &mut Vec<String>) {
    let lines = file.text.lines().count();
    let allowed = LONG_FILES.iter().any(|(path, _)| *path == file.path);
    if lines > MAX_LINES && !allowed {
        out.push(format!(
            "{}: {lines} lines; split it by concern, or add it to LONG_FILES in tidy.rs with \
             the reason (at most {MAX_LINES} otherwise)",
            file.path
        ));
    }
    if lines <= MAX_LINES && allowed {
        out.push(format!(
            "{}: listed in LONG_FILES but has only {lines} lines; remove the entry",
            file.path
        ));
    }
}

/// No import cycle between the modules of a crate (an ancestor and its
/// descendant excepted: `mod.rs` re-exports what its children define).
fn check_cycles(files: &[SourceFile], out: &mut Vec<String>) {
    let related = |a: &str, b: &str| {
        a.is_empty()
            || b.is_empty()
            || a.starts_with(&format!("{b}::"))
            || b.starts_with(&format!("{a}::"))
    };
    for modules in modules_by_crate(files).values() {
        let mut edges: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for (module, file) in modules {
            for path in crate_paths(&file.code()) {
                if let Some(target) = resolve(modules, &path) {
                    if !related(module, target) {
                        edges.entry(module).or_default().insert(target);
                    }
                }
            }
        }
        for cycle in strongly_connected(&edges) {
            out.push(format!(
                "{}: modules {} import each other (a cycle); move what they share to a \
                 module below them",
                modules[cycle[0]].path,
                cycle.join(", ")
            ));
        }
    }
}

/// The strongly connected components of more than one node (Tarjan).
fn strongly_connected<'a>(edges: &BTreeMap<&'a str, BTreeSet<&'a str>>) -> Vec<Vec<&'a str>> {
    struct Walk<'a, 'e> {
        edges: &'e BTreeMap<&'a str, BTreeSet<&'a str>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<Vec<&'a str>>,
    }
    impl<'a> Walk<'a, '_> {
        fn visit(&mut self, node: &'a str) {
            let n = self.index.len();
            self.index.insert(node, n);
            self.low.insert(node, n);
            self.stack.push(node);
            for &next in self.edges.get(node).into_iter().flatten() {
                if !self.index.contains_key(next) {
                    self.visit(next);
                    let low = self.low[node].min(self.low[next]);
                    self.low.insert(node, low);
                } else if self.stack.contains(&next) {
                    let low = self.low[node].min(self.index[next]);
                    self.low.insert(node, low);
                }
            }
            if self.low[node] == self.index[node] {
                let at = self
                    .stack
                    .iter()
                    .rposition(|n| *n == node)
                    .expect("on the stack");
                let mut component = self.stack.split_off(at);
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for &node in edges.keys() {
        if !walk.index.contains_key(node) {
            walk.visit(node);
        }
    }
    walk.found
}

/// Every path ARCHITECTURE.md names in backquotes (a token with a `/`, of
/// path characters only) names a file or folder of the repository: the
/// workspace-relative path itself, or its end (`dns/plan.rs` inside a
/// crate's section).
fn check_architecture_paths(document: &str, repository: &BTreeSet<String>, out: &mut Vec<String>) {
    let path_like = |t: &str| {
        t.contains('/')
            && !t.starts_with('/')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '.' | '_' | '-'))
    };
    for token in document
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| path_like(t))
    {
        let wanted = token.trim_end_matches('/');
        let found = repository
            .iter()
            .any(|p| p == wanted || p.ends_with(&format!("/{wanted}")));
        if !found {
            out.push(format!(
                "ARCHITECTURE.md: names `{token}`, which does not exist"
            ));
        }
    }
}

/// Every file and folder of the repository (without `target/` and `.git/`),
/// relative to its root.
fn repository_paths(root: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for entry in
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("directory entry").path();
            let name = path.file_name().unwrap_or_default();
            if name == "target" || name == ".git" {
                continue;
            }
            let relative = path.strip_prefix(root).expect("under the root");
            out.insert(relative.to_string_lossy().replace('\\', "/"));
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Every violation in `files`.
fn violations(files: &[SourceFile]) -> Vec<String> {
    let mut out = Vec::new();
    for file in files {
        check_pure_code(file, &mut out);
        check_sql(file, &mut out);
        check_processes(file, &mut out);
        check_atomic_writes(file, &mut out);
        check_doc(file, &mut out);
        check_length(file, &mut out);
    }
    check_imports(files, &mut out);
    check_cycles(files, &mut out);
    out
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the controller is inside the workspace")
        .to_owned()
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<SourceFile>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() && !path.ends_with("target") {
            collect(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(root).expect("under the root");
            out.push(SourceFile {
                path: relative.to_string_lossy().replace('\\', "/"),
                text: std::fs::read_to_string(&path)
                    .unwrap_or_else(|e| panic!("reading {}: {e}", path.display())),
            });
        }
    }
}

/// The Rust files of the three crates (sources, tests, benches, examples, fuzz crates).
fn workspace_files() -> Vec<SourceFile> {
    let root = workspace_root();
    let mut files = Vec::new();
    for krate in ["api", "controller", "cpe-agent"] {
        for part in ["src", "tests", "benches", "examples", "fuzz"] {
            let dir = root.join(krate).join(part);
            if dir.is_dir() {
                collect(&root, &dir, &mut files);
            }
        }
    }
    files
}

#[test]
fn the_tree_keeps_its_layout() {
    let files = workspace_files();
    assert!(files.len() > 100, "found only {} Rust files", files.len());
    let listed = LONG_FILES
        .iter()
        .map(|(path, _)| path)
        .chain(PROCESS_FILES)
        .chain(ATOMIC_WRITERS)
        .chain(LEAVES)
        .chain(LOWER_LAYERS.iter().map(|(folder, _)| folder))
        .chain(PURE);
    for path in listed {
        let exists = files
            .iter()
            .any(|f| f.path == *path || f.path.starts_with(path) && path.ends_with('/'));
        assert!(exists, "tidy.rs lists {path}, which does not exist");
    }
    let mut found = violations(&files);
    let architecture = std::fs::read_to_string(workspace_root().join("ARCHITECTURE.md"))
        .expect("ARCHITECTURE.md at the workspace root");
    check_architecture_paths(
        &architecture,
        &repository_paths(&workspace_root()),
        &mut found,
    );
    assert!(
        found.is_empty(),
        "{} layout rules broken:\n{}",
        found.len(),
        found.join("\n")
    );
}

#[test]
fn each_rule_catches_its_violation() {
    let doc = "//! A file.\n";
    let cases: &[(&str, String, &str)] = &[
        (
            "controller/src/services/flow_block.rs",
            format!("{doc}use sqlx::PgPool;\n"),
            "names `sqlx`",
        ),
        (
            "controller/src/model/labels.rs",
            format!("{doc}fn f() {{ let _ = std::fs::read(\"x\"); }}\n"),
            "names `std::fs`",
        ),
        (
            "cpe-agent/src/backend/nft/plan.rs",
            format!("{doc}fn f() {{ tokio::spawn(async {{}}); }}\n"),
            "names `tokio`",
        ),
        (
            "controller/src/rollout/plan.rs",
            format!("{doc}fn f() {{ chrono::Utc::now(); }}\n"),
            "names `Utc::now`",
        ),
        (
            "controller/src/handlers/devices.rs",
            format!("{doc}fn f() {{ sqlx::query(\"SELECT 1\"); }}\n"),
            "every SQL statement belongs",
        ),
        (
            "cpe-agent/src/agent/mod.rs",
            format!("{doc}fn f() {{ std::process::Command::new(\"nft\"); }}\n"),
            "starts a process",
        ),
        (
            "cpe-agent/src/router_blocks.rs",
            format!("{doc}fn f() {{ std::fs::rename(\"a\", \"b\").unwrap(); }}\n"),
            "renames a file",
        ),
        (
            "controller/src/app.rs",
            "fn main() {}\n".to_owned(),
            "`//!` line",
        ),
        (
            "controller/src/app.rs",
            format!("{doc}{}", "fn f() {}\n".repeat(MAX_LINES)),
            "split it by concern",
        ),
        (
            "controller/src/services/compiler.rs",
            format!("{doc}use crate::reconcile::Reconciler;\n"),
            "the pure core imports only the pure core",
        ),
        (
            "controller/src/db/devices.rs",
            format!("{doc}use crate::http::error::ApiError;\n"),
            "a lower layer (LOWER_LAYERS in tidy.rs) imports only",
        ),
        (
            "cpe-agent/src/sys/state.rs",
            format!("{doc}use crate::backend::Backend;\n"),
            "a lower layer (LOWER_LAYERS in tidy.rs) imports only",
        ),
        (
            "cpe-agent/src/sys/settings.rs",
            format!("{doc}use crate::sys::time::unix_now;\n"),
            "a leaf (LEAVES in tidy.rs) imports nothing",
        ),
    ];
    for (path, text, expected) in cases {
        let found = violations(&[SourceFile::new(path, text)]);
        assert!(
            found.iter().any(|v| v.contains(expected)),
            "{path}: expected a violation containing {expected:?}, got {found:#?}"
        );
    }
    // The same rules pass what they should: tests and comments may name anything.
    let clean = format!(
        "{doc}// tokio, std::fs and sqlx::query in a comment\nfn f() {{}}\n\n#[cfg(test)]\nmod tests {{\n    fn g() {{ let _ = std::fs::read(\"x\"); }}\n}}\n"
    );
    let found = violations(&[SourceFile::new("controller/src/services/x.rs", &clean)]);
    assert!(found.is_empty(), "{found:#?}");
    // Code after a test module is checked, however many braces its strings hold.
    let after_tests = format!(
        "{doc}#[cfg(test)]\nmod tests {{\n    const A: &str = \"}}}}\";\n    const B: &str = r#\"{{\"#;\n    const C: char = '}}';\n}}\n\nfn f() {{ let _ = std::fs::read(\"x\"); }}\n"
    );
    let found = violations(&[SourceFile::new(
        "controller/src/services/x.rs",
        &after_tests,
    )]);
    assert!(
        found.iter().any(|v| v.contains("names `std::fs`")),
        "{found:#?}"
    );

    // ARCHITECTURE.md naming a path that is not there (and one that is).
    let repository: BTreeSet<String> = [
        "controller",
        "controller/src",
        "controller/src/vpn",
        "controller/src/vpn/plan.rs",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    let mut found = Vec::new();
    check_architecture_paths(
        "`controller/src/vpn/plan.rs`, `vpn/plan.rs`, `vpn/` and `GET /device/v1/config`; `vpn/plans.rs`",
        &repository,
        &mut found,
    );
    assert_eq!(
        found,
        ["ARCHITECTURE.md: names `vpn/plans.rs`, which does not exist"]
    );

    // Three modules importing each other in a ring.
    let ring = [
        ("cpe-agent/src/dns.rs", "settings::Settings"),
        ("cpe-agent/src/settings.rs", "wireguard::TunnelSettings"),
        ("cpe-agent/src/wireguard.rs", "dns::process_runs"),
    ];
    let files: Vec<SourceFile> = ring
        .iter()
        .map(|(path, uses)| SourceFile::new(path, &format!("{doc}use crate::{uses};\n")))
        .collect();
    let found = violations(&files);
    assert!(
        found
            .iter()
            .any(|v| v.contains("modules dns, settings, wireguard import each other")),
        "{found:#?}"
    );
    // A module may use its parent's re-exports and its children.
    let family = [
        (
            "controller/src/reconcile/mod.rs",
            "reconcile::inputs::load_staged",
        ),
        (
            "controller/src/reconcile/inputs.rs",
            "reconcile::Reconciler",
        ),
    ];
    let files: Vec<SourceFile> = family
        .iter()
        .map(|(path, uses)| SourceFile::new(path, &format!("{doc}use crate::{uses};\n")))
        .collect();
    let found = violations(&files);
    assert!(found.is_empty(), "{found:#?}");
}
