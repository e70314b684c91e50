//! Tidy: the layer rules of ARCHITECTURE.md ("What a layer must not know"),
//! checked on the source, in the spirit of rust-analyzer's tidy test.
//!
//! Every `src/**/*.rs` is read with comments and literals blanked out; each
//! path it names (`use` trees expanded, `crate::`/`super::`/`self::` made
//! absolute, and inline paths such as `tokio::spawn`) is checked against its
//! layer's rules. A failure names `file:line`, the path and the rule it
//! breaks. The same scan finds `unsafe` anywhere in the workspace outside the
//! two places allowed to hold it.

use std::path::{Path, PathBuf};

/// A layer: a top-level module of the crate (`app` is `app.rs` + `app/`).
struct Rule {
    layer: &'static str,
    /// The crate's layers this one may name (its own always included).
    may_import: &'static [&'static str],
    /// Items of another layer it may name although that layer is not in
    /// `may_import`: (path prefix, why).
    may_also: &'static [&'static str],
    /// External crates (or `std` modules) it must not name.
    must_not_name: &'static [&'static str],
    /// One line for the failure message: the invariant, as ARCHITECTURE.md states it.
    why: &'static str,
}

/// sled and Redis: named only in `storage/`.
const STORAGE_CRATES: &[&str] = &["sled", "redis"];
/// HTTP and WebSocket framing.
const WIRE_CRATES: &[&str] =
    &["hyper", "hyper_util", "http", "http_body_util", "tungstenite", "tokio_tungstenite", "wsframe"];

/// Both of the above: for the layers that know neither a backend nor a wire.
const BACKEND_AND_WIRE_CRATES: &[&str] =
    &["sled", "redis", "hyper", "hyper_util", "http", "http_body_util", "tungstenite", "tokio_tungstenite", "wsframe"];

const RULES: &[Rule] = &[
    Rule {
        layer: "protocol",
        may_import: &[],
        may_also: &[],
        must_not_name: &[
            "tokio",
            "tokio_util",
            "sled",
            "redis",
            "hyper",
            "hyper_util",
            "http",
            "http_body_util",
            "tungstenite",
            "tokio_tungstenite",
            "std::fs",
            "std::io",
            "std::net",
            "std::process",
            "std::thread",
        ],
        why: "protocol/ does no I/O and imports no other layer",
    },
    Rule {
        layer: "storage",
        may_import: &["protocol"],
        may_also: &[],
        must_not_name: WIRE_CRATES,
        why: "storage/ imports only protocol/, and knows no HTTP or WebSocket",
    },
    Rule {
        layer: "service",
        may_import: &["protocol", "storage", "config", "metrics"],
        may_also: &[],
        must_not_name: BACKEND_AND_WIRE_CRATES,
        why: "service/ sees storage only through storage/'s traits and knows no wire, HTTP, WebSocket framing, \
              sled or Redis",
    },
    Rule {
        layer: "app",
        may_import: &["protocol", "service", "config", "metrics"],
        may_also: &[],
        must_not_name: STORAGE_CRATES,
        why: "app sits below both wires and above service/: it imports neither wire, server.rs nor storage/",
    },
    Rule {
        layer: "http",
        may_import: &["app", "protocol", "service", "config", "metrics"],
        may_also: &[],
        must_not_name: STORAGE_CRATES,
        why: "http/ imports neither ws/, server.rs, storage/ nor fedclient/",
    },
    Rule {
        layer: "ws",
        may_import: &["app", "protocol", "service", "config", "metrics"],
        may_also: &[],
        must_not_name: STORAGE_CRATES,
        why: "ws/ imports neither http/, server.rs, storage/ nor fedclient/",
    },
    Rule {
        layer: "admin",
        may_import: &["app", "protocol", "service", "config"],
        may_also: &["http::error_response", "http::json"],
        must_not_name: STORAGE_CRATES,
        why: "admin/ (the admin socket's wire) imports app, protocol/, service/ and of http/ only its one \
              error-to-answer place; nothing of ws/, storage/, fedclient/ or server.rs",
    },
    Rule {
        layer: "fedclient",
        may_import: &["protocol", "config"],
        may_also: &[
            "service::federation::Transport",
            "service::federation::TransportError",
            "service::federation::FedRequest",
            "service::federation::FedAnswer",
            "service::federation::BoxFuture",
        ],
        must_not_name: STORAGE_CRATES,
        why: "fedclient/ imports protocol/ and service's Transport trait (with the types in its signature), \
              nothing of http/, ws/, storage/, app or server.rs",
    },
    Rule {
        layer: "metrics",
        may_import: &["protocol"],
        may_also: &[],
        must_not_name: BACKEND_AND_WIRE_CRATES,
        why: "metrics owns the registry and what is counted; it imports only protocol/ and knows no wire or backend",
    },
    Rule {
        layer: "config",
        may_import: &["protocol"],
        may_also: &[],
        must_not_name: STORAGE_CRATES,
        why: "config imports only protocol/",
    },
    Rule {
        layer: "server",
        may_import: &["admin", "app", "config", "fedclient", "http", "ws", "protocol", "service", "metrics"],
        may_also: &[],
        must_not_name: STORAGE_CRATES,
        why: "server.rs builds everything but storage/, which only service/ opens",
    },
];

/// The only files that may contain `unsafe` or `allow(unsafe_code)`: every
/// other system call goes through rustix. tokio has no safe way to register
/// a descriptor with its reactor, and libc's `localtime_r` has no safe wrapper.
const UNSAFE_ALLOWED: &[&str] = &["tools/chatbench/src/pacer.rs", "tools/chatctl/src/localtime.rs"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rs_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
    entries.sort();
    for p in entries {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if p.is_dir() {
            if !matches!(name.as_str(), "target" | "node_modules" | ".git" | "corpus" | "artifacts") {
                rs_files(&p, out);
            }
        } else if name.ends_with(".rs") {
            out.push(p);
        }
    }
}

/// The source with comments, string and char literals blanked (newlines
/// kept, so byte offsets still give line numbers).
fn strip(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let prev_ident = i > 0 && ident(b[i - 1]);
        if b[i..].starts_with(b"//") {
            let end = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let (mut depth, mut j) = (1, i + 2);
            while j < b.len() && depth > 0 {
                if b[j..].starts_with(b"/*") {
                    depth += 1;
                    j += 2;
                } else if b[j..].starts_with(b"*/") {
                    depth -= 1;
                    j += 2;
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if !prev_ident && (b[i] == b'r' || b[i..].starts_with(b"br")) && {
            let k = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
            b.get(k + hashes) == Some(&b'"')
        } {
            let k = if b[i] == b'b' { i + 2 } else { i + 1 };
            let hashes = b[k..].iter().take_while(|&&c| c == b'#').count();
            let body = k + hashes + 1;
            let mut close = vec![b'"'];
            close.extend(std::iter::repeat_n(b'#', hashes));
            let end = b[body..].windows(close.len()).position(|w| w == close.as_slice()).map_or(b.len(), |n| body + n);
            blank(&mut out, body, end);
            i = end + close.len();
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i + 1, j.min(b.len()));
            i = j + 1;
        } else if b[i] == b'\'' && (!prev_ident || (b[i - 1] == b'b' && (i < 2 || !ident(b[i - 2])))) {
            // A char literal ('x', '\n', '\u{..}', 'é') or a lifetime ('a).
            let rest = &src[i + 1..];
            let mut chars = rest.char_indices();
            match chars.next() {
                Some((_, '\\')) => {
                    let end = rest.find('\'').map_or(b.len(), |n| i + 1 + n);
                    let end = if end == i + 2 { rest[2..].find('\'').map_or(b.len(), |n| i + 3 + n) } else { end };
                    blank(&mut out, i + 1, end);
                    i = end + 1;
                }
                Some((_, c)) if rest[c.len_utf8()..].starts_with('\'') => {
                    blank(&mut out, i + 1, i + 1 + c.len_utf8());
                    i += 2 + c.len_utf8();
                }
                _ => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out).expect("blanking keeps UTF-8: only whole ASCII or multibyte runs are replaced")
}

/// One path the source names, at a line.
struct Named {
    line: usize,
    path: Vec<String>,
}

fn line_of(src: &str, at: usize) -> usize {
    src[..at].bytes().filter(|&c| c == b'\n').count() + 1
}

fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Expands a `use` tree (the text between `use` and `;`) into full paths.
fn expand_use(tree: &str) -> Vec<Vec<String>> {
    fn split_top(s: &str) -> Vec<&str> {
        let (mut depth, mut start, mut parts) = (0, 0, Vec::new());
        for (i, c) in s.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&s[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&s[start..]);
        parts
    }
    fn go(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(brace) = tree.find('{') {
            let head: Vec<String> =
                tree[..brace].split("::").map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
            let inner = &tree[brace + 1..tree.rfind('}').unwrap_or(tree.len())];
            let base: Vec<String> = prefix.iter().cloned().chain(head).collect();
            for part in split_top(inner) {
                go(&base, part, out);
            }
        } else {
            let without_alias = tree.split(" as ").next().unwrap();
            let mut path = prefix.to_vec();
            for seg in without_alias.split("::").map(str::trim).filter(|s| !s.is_empty()) {
                if seg != "self" || path.is_empty() {
                    path.push(seg.to_string());
                }
            }
            out.push(path);
        }
    }
    let mut out = Vec::new();
    go(&[], tree, &mut out);
    out
}

/// Every path a stripped source names: expanded `use` trees, then every
/// other `a::b::c` (not itself the tail of a longer path).
fn named_paths(code: &str) -> Vec<Named> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut masked = b.to_vec();
    let mut i = 0;
    while let Some(n) = code[i..].find("use") {
        let at = i + n;
        i = at + 3;
        let before_ok = at == 0 || !is_ident_byte(b[at - 1]);
        let after_ok = b.get(at + 3).is_some_and(|c| c.is_ascii_whitespace());
        // `use` as a statement: at the start of an item (after `;`, `{`, `}`,
        // an attribute's `]`, a visibility's `)`, `pub`, or the file's start).
        let start_ok = code[..at].trim_end().chars().last().is_none_or(|c| matches!(c, ';' | '{' | '}' | ']' | ')'))
            || code[..at].trim_end().ends_with("pub");
        if !(before_ok && after_ok && start_ok) {
            continue;
        }
        let Some(end) = code[at..].find(';').map(|n| at + n) else { break };
        let line = line_of(code, at);
        for path in expand_use(&code[at + 3..end]) {
            found.push(Named { line, path });
        }
        for c in &mut masked[at..end] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
        i = end;
    }
    let code = String::from_utf8(masked).unwrap();
    let b = code.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts_ident = (b[i].is_ascii_alphabetic() || b[i] == b'_') && (i == 0 || !is_ident_byte(b[i - 1]));
        let after_colons = i >= 2 && &b[i - 2..i] == b"::";
        if !starts_ident || after_colons {
            i += 1;
            continue;
        }
        let mut j = i;
        let mut segs = Vec::new();
        loop {
            let s = j;
            while j < b.len() && is_ident_byte(b[j]) {
                j += 1;
            }
            segs.push(code[s..j].to_string());
            if b[j..].starts_with(b"::") && b.get(j + 2).is_some_and(|&c| c.is_ascii_alphabetic() || c == b'_') {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 {
            found.push(Named { line: line_of(&code, i), path: segs });
        }
        i = j.max(i + 1);
    }
    found
}

/// The module path of a file under `src/` (`src/http/rooms.rs` → `http::rooms`).
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_string());
    }
    parts
}

/// `crate::`, `super::` and `self::` paths made absolute (without `crate`);
/// `None` for a path that starts at an external crate or a local name.
fn absolute(module: &[String], path: &[String], in_binary: bool) -> Option<Vec<String>> {
    match path.first()?.as_str() {
        "crate" if !in_binary => Some(path[1..].to_vec()),
        "parlor" if in_binary => Some(path[1..].to_vec()),
        "self" => Some(module.iter().cloned().chain(path[1..].iter().cloned()).collect()),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let keep = module.len().checked_sub(ups)?;
            Some(module[..keep].iter().cloned().chain(path[ups..].iter().cloned()).collect())
        }
        _ => None,
    }
}

fn layer_violations(rel: &Path, src: &str) -> Vec<String> {
    let code = strip(src);
    let module = module_of(rel.strip_prefix("src").unwrap());
    let in_binary = rel == Path::new("src/main.rs");
    let Some(layer) = module.first().cloned() else {
        // lib.rs declares the layers; main.rs is the binary (any layer, via `parlor::`).
        return Vec::new();
    };
    let Some(rule) = RULES.iter().find(|r| r.layer == layer) else {
        return vec![format!(
            "{}: layer `{layer}` has no rule in tests/tidy.rs (add it there and to ARCHITECTURE.md)",
            rel.display()
        )];
    };
    let layers: Vec<&str> = RULES.iter().map(|r| r.layer).collect();
    let mut bad = Vec::new();
    for Named { line, path } in named_paths(&code) {
        let shown = path.join("::");
        if let Some(abs) = absolute(&module, &path, in_binary) {
            let Some(target) = abs.first() else { continue };
            if !layers.contains(&target.as_str()) || *target == layer || rule.may_import.contains(&target.as_str()) {
                continue;
            }
            let joined = abs.join("::");
            if rule.may_also.iter().any(|p| joined == *p || joined.starts_with(&format!("{p}::"))) {
                continue;
            }
            bad.push(format!("{}:{line}: `{shown}` names {target}/ — rule: {}", rel.display(), rule.why));
        } else {
            let joined = path.join("::");
            for name in rule.must_not_name {
                if joined == *name || joined.starts_with(&format!("{name}::")) {
                    bad.push(format!("{}:{line}: `{shown}` names `{name}` — rule: {}", rel.display(), rule.why));
                }
            }
        }
    }
    bad
}

#[test]
fn layers_import_only_downwards() {
    let root = root();
    let mut files = Vec::new();
    rs_files(&root.join("src"), &mut files);
    assert!(files.len() > 20, "tidy found only {} files under src/", files.len());
    let mut bad = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        bad.extend(layer_violations(rel, &std::fs::read_to_string(file).unwrap()));
    }
    assert!(bad.is_empty(), "imports against ARCHITECTURE.md's layer rules:\n{}", bad.join("\n"));
}

#[test]
fn unsafe_stays_out() {
    let root = root();
    let mut files = Vec::new();
    for dir in ["src", "tests", "crates", "tools", "conformance", "examples", "fuzz"] {
        rs_files(&root.join(dir), &mut files);
    }
    assert!(files.len() > 100, "tidy found only {} files in the workspace", files.len());
    let mut bad = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        if rel == Path::new("tests/tidy.rs") || UNSAFE_ALLOWED.iter().any(|a| rel == Path::new(a)) {
            continue;
        }
        let code = strip(&std::fs::read_to_string(file).unwrap());
        let b = code.as_bytes();
        for (at, _) in code.match_indices("unsafe") {
            let before = at == 0 || !is_ident_byte(b[at - 1]);
            let after = b.get(at + 6).is_none_or(|&c| !is_ident_byte(c));
            let allow = code[..at].trim_end().ends_with("allow(");
            if (before && after) || allow {
                let what = if allow { "allow(unsafe_code)" } else { "unsafe" };
                bad.push(format!(
                    "{}:{}: `{what}` — rule: system calls go through rustix; `unsafe` only in {UNSAFE_ALLOWED:?}",
                    rel.display(),
                    line_of(&code, at)
                ));
            }
        }
    }
    assert!(bad.is_empty(), "`unsafe` outside its allowed modules:\n{}", bad.join("\n"));
}

/// Every crate root of the workspace forbids `unsafe_code` (or denies it,
/// where one module of [`UNSAFE_ALLOWED`] needs it), so the compiler keeps it
/// out too.
#[test]
fn crate_roots_forbid_unsafe() {
    let root = root();
    let roots = [
        ("src/lib.rs", "#![forbid(unsafe_code)]"),
        ("src/main.rs", "#![forbid(unsafe_code)]"),
        ("crates/wsframe/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("crates/testkit/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("conformance/src/lib.rs", "#![forbid(unsafe_code)]"),
        ("conformance/src/main.rs", "#![forbid(unsafe_code)]"),
        ("tools/chatbench/src/main.rs", "#![forbid(unsafe_code)]"),
        ("tools/chatbench/src/lib.rs", "#![deny(unsafe_code)]"),
        ("tools/chatctl/src/main.rs", "#![deny(unsafe_code)]"),
    ];
    let mut bad = Vec::new();
    for (file, attr) in roots {
        let src = std::fs::read_to_string(root.join(file)).unwrap();
        if !src.lines().any(|l| l.trim() == attr) {
            bad.push(format!("{file}: crate root lacks {attr}"));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The scanner itself: a planted import against the rules is found, and
/// comments, strings and lifetimes do not fool it.
#[test]
fn tidy_finds_planted_violations() {
    let src = "//! doc naming crate::storage\nuse crate::protocol::{ErrCode, ws::{self, close}};\n\
               use crate::{storage::Db, ws::upgrade as up};\nfn f<'a>(x: &'a str) -> char { let _ = \"crate::server\"; \
               let _ = redis::cmd; '\"' }\nfn g() { crate::server::run(); super::http::handle(); }\n";
    let bad = layer_violations(Path::new("src/http/rooms.rs"), src);
    let lines: Vec<_> = bad.iter().map(|b| b.split(" — ").next().unwrap().to_string()).collect();
    assert_eq!(
        lines,
        [
            "src/http/rooms.rs:3: `crate::storage::Db` names storage/",
            "src/http/rooms.rs:3: `crate::ws::upgrade` names ws/",
            "src/http/rooms.rs:4: `redis::cmd` names `redis`",
            "src/http/rooms.rs:5: `crate::server::run` names server/",
        ],
        "{bad:#?}"
    );
    let bad =
        layer_violations(Path::new("src/service/x.rs"), "use hyper::body::Incoming;\nuse std::{fs, net::IpAddr};\n");
    assert_eq!(bad.len(), 1, "{bad:#?}");
    let bad =
        layer_violations(Path::new("src/protocol/x.rs"), "use std::{fs, net::IpAddr};\nuse crate::service::Error;\n");
    assert_eq!(bad.len(), 3, "{bad:#?}");
    let bad =
        layer_violations(Path::new("src/fedclient/x.rs"), "use crate::service::federation::{Transport, Federation};\n");
    assert_eq!(bad.len(), 1, "{bad:#?}");
    assert!(bad[0].contains("Federation"), "{bad:#?}");
}

/// Names of one storage backend, which services must not use: they get
/// their stores from `storage::backend` as trait objects (ARCHITECTURE.md,
/// "service/ sees storage only through the traits"). A backend's types are
/// `Redis…` / `Embedded…`; its modules and crates `redis::` / `sled::` /
/// `embedded::`. `code` has its comments and strings blanked already.
fn backend_names(code: &str) -> Vec<(usize, String)> {
    let b = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while at < b.len() {
        if !is_ident_byte(b[at]) || (at > 0 && is_ident_byte(b[at - 1])) {
            at += 1;
            continue;
        }
        let end = (at..b.len()).find(|&i| !is_ident_byte(b[i])).unwrap_or(b.len());
        let ident = &code[at..end];
        let typed = ["Redis", "Embedded"]
            .iter()
            .any(|p| ident.strip_prefix(p).is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_uppercase())));
        let module = matches!(ident, "redis" | "sled" | "embedded") && code[end..].starts_with("::");
        if typed || module {
            found.push((line_of(code, at), ident.to_owned()));
        }
        at = end;
    }
    found
}

#[test]
fn services_name_no_storage_backend() {
    let root = root();
    let mut files = Vec::new();
    rs_files(&root.join("src/service"), &mut files);
    assert!(files.len() > 10, "tidy found only {} files under src/service/", files.len());
    let mut bad = Vec::new();
    for file in &files {
        let rel = file.strip_prefix(&root).unwrap();
        if rel.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let src = std::fs::read_to_string(file).unwrap();
        // Unit tests may build a store of their own.
        let code = strip(&src[..src.find("#[cfg(test)]").unwrap_or(src.len())]);
        for (line, name) in backend_names(&code) {
            bad.push(format!("{}:{line}: `{name}` — rule: services get stores from storage::backend", rel.display()));
        }
    }
    assert!(bad.is_empty(), "services naming a storage backend:\n{}", bad.join("\n"));
}

#[test]
fn backend_names_are_found() {
    let code = "use crate::storage::rooms::redis::x;\nlet t: sled::Tree = EmbeddedLog::open(db);\nlet r = RedisRooms;";
    let names: Vec<String> = backend_names(code).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["redis", "sled", "EmbeddedLog", "RedisRooms"]);
    // Neutral names pass: the backend handle, a word in a longer name, a field.
    assert!(backend_names("let b = Backend::new(db, redis); let x = MyRedisThing; s.embedded = 1;").is_empty());
}
