//! The dependency rules of `src/lib.rs`, checked against the code: every `crate::` and
//! `super::` path in `src/` is an edge from its file's module to the module it names.
//!
//! Read as text, not with a Rust parser (no new dependency for a test): a path in a
//! comment or a string counts too, which errs on the strict side. A module importing its
//! own ancestor (a child using its parent's types) is allowed and not followed; test
//! modules (`#[cfg(test)]` to the end of a file) are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Each source file's module path (`agent::recording::derive`), and its text without tests.
fn modules() -> BTreeMap<String, (PathBuf, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    // (`session/pty_windows.rs` is module `session::pty` on Windows; read as its own.)
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(&root).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts
                .last()
                .is_some_and(|p| p == "mod" || p == "lib" || p == "main")
            {
                let last = parts.pop().unwrap();
                if last == "main" {
                    parts.push("main".into());
                }
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = match text.find("#[cfg(test)]") {
                Some(i) => text[..i].to_owned(),
                None => text,
            };
            out.insert(parts.join("::"), (path, text));
        }
    }
    out
}

/// The paths after `crate::` or `super::` in `text` (a `{a, b::c}` group gives each).
fn paths_after(text: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let before = rest[..i].chars().last();
        rest = &rest[i + prefix.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let take = |s: &str| -> String {
            s.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect::<String>()
                .trim_end_matches(':')
                .to_owned()
        };
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                out.push(take(item.trim()));
            }
        } else {
            out.push(take(rest));
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn resolve(path: &[&str], known: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|p| known.contains(p))
}

/// Every edge between different modules (a module to its ancestors left out).
fn edges() -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules();
    let known: BTreeSet<String> = mods.keys().cloned().collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (name, (_, text)) in &mods {
        let here: Vec<&str> = name.split("::").filter(|s| !s.is_empty()).collect();
        // The module `super` names from this file (for `a/b/mod.rs`, module `a::b`, as for
        // `a/b.rs`): its parent.
        let parent: Vec<&str> = here[..here.len().saturating_sub(1)].to_vec();
        let mut targets = Vec::new();
        for p in paths_after(text, "crate::") {
            let parts: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            targets.extend(resolve(&parts, &known));
        }
        for p in paths_after(text, "super::") {
            let mut base = parent.clone();
            let mut parts: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            while parts.first() == Some(&"super") {
                parts.remove(0);
                base.pop();
            }
            let full: Vec<&str> = base.iter().copied().chain(parts).collect();
            targets.extend(resolve(&full, &known));
        }
        for t in targets {
            let ancestor = t.is_empty() || name.starts_with(&format!("{t}::"));
            if t != *name && !ancestor {
                out.entry(name.clone()).or_default().insert(t);
            }
        }
    }
    out
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(node.to_owned(), 1);
        stack.push(node.to_owned());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next.as_str()).copied().unwrap_or(0) {
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap();
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(next, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.to_owned(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for node in graph.keys() {
        if state.get(node.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(node, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

#[test]
fn the_reader_finds_the_edges_it_should() {
    // The checker itself: known edges are seen, so the rules below cannot pass by reading
    // nothing.
    let e = edges();
    assert!(e["agent::recording::derive"].contains("spool::writer"));
    assert!(e["agent::recording::derive"].contains("spool::format"));
    assert!(e["agent::recording::derive"].contains("spool::reader"));
    assert!(e["cli"].contains("config"));
    // And a made-up loop is found.
    let mut g = e.clone();
    g.entry("config".into()).or_default().insert("cli".into());
    assert!(find_cycle(&g).is_some());
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    if let Some(cycle) = find_cycle(&edges()) {
        panic!("an import loop in src/: {}", cycle.join(" -> "));
    }
}

#[test]
fn protocol_and_timefmt_import_nothing_else_of_the_crate() {
    for (from, to) in edges() {
        if from.starts_with("protocol") || from == "timefmt" {
            let foreign: Vec<_> = to
                .iter()
                .filter(|t| !t.starts_with("protocol") && *t != "timefmt")
                .collect();
            assert!(foreign.is_empty(), "{from} imports {foreign:?}");
        }
    }
}

#[test]
fn delivery_knows_no_agent_and_the_spool_layout_nothing() {
    // lib.rs, rule 2: delivery reads a recording through `spool::layout` and talks to the
    // services through its sink traits; the layout is a leaf both sides share.
    let within = |t: &str, m: &str| t == m || t.starts_with(&format!("{m}::"));
    let edges = edges();
    assert!(edges["delivery::stream"].contains("spool::layout"));
    for (from, to) in &edges {
        if within(from, "delivery") {
            let bad: Vec<_> = to
                .iter()
                .filter(|t| within(t, "agent") || within(t, "session"))
                .collect();
            assert!(bad.is_empty(), "{from} imports {bad:?}");
        }
        if within(from, "spool::layout") {
            let foreign: Vec<_> = to.iter().filter(|t| !within(t, "spool")).collect();
            assert!(foreign.is_empty(), "{from} imports {foreign:?}");
        }
    }
}

#[test]
fn the_daemon_imports_no_subcommand() {
    let commands = ["cli", "replay", "doctor", "dev", "client", "main"];
    for (from, to) in edges() {
        if from == "agent" || from.starts_with("agent::") {
            let bad: Vec<_> = to
                .iter()
                .filter(|t| {
                    commands
                        .iter()
                        .any(|c| t == c || t.starts_with(&format!("{c}::")))
                })
                .collect();
            assert!(bad.is_empty(), "{from} imports {bad:?}");
        }
    }
}

#[test]
fn the_spool_is_read_in_one_place_and_depends_on_no_user_of_it() {
    // lib.rs: `spool` is the format, its one reader and `verify`; the agent, `replay` and
    // the consumers use it, it uses none of them (only the event type it carries).
    for (from, to) in edges() {
        if from == "spool" || from.starts_with("spool::") {
            let bad: Vec<_> = to
                .iter()
                .filter(|t| !t.starts_with("spool") && !t.starts_with("recorder"))
                .collect();
            assert!(bad.is_empty(), "{from} imports {bad:?}");
        }
    }
    // No second reader of spool records: decoding is the reader's alone.
    for (name, (_, text)) in modules() {
        if text.contains("decode_record(") {
            assert!(
                name == "spool::reader" || name == "spool::format",
                "{name} decodes spool records itself; read through spool::reader"
            );
        }
    }
}

#[test]
fn only_the_named_modules_use_the_aws_sdk() {
    // lib.rs, rule 2: the SDK's clients and credential chain are used only here.
    let allowed = [
        "delivery::aws",   // S3 and CloudWatch Logs calls
        "sign",            // the credential chain behind our own SigV4 requests
        "agent::identity", // IMDS and the SDK's configuration
        "agent",           // holds the loaded configuration for the sessions
        "replay",          // reads recordings from S3 (verify, replay)
        "doctor",          // checks credentials and each sink
    ];
    for (name, (_, text)) in modules() {
        let uses = [
            "aws_sdk_",
            "aws_config",
            "aws_smithy",
            "aws_credential_types",
        ]
        .iter()
        .any(|c| text.contains(&format!("{c}::")) || text.contains(&format!("use {c}")));
        assert!(
            !uses || allowed.contains(&name.as_str()),
            "{name} uses the AWS SDK; only {allowed:?} may (src/lib.rs, rule 2)"
        );
    }
}
