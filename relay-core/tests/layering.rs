//! The engine's modules depend one way: `relay` → `shard` → `session` →
//! the leaves (`offload`, `relay_port`, `wire`, `peer`, ...). A session
//! never names the shard, the relay or a datapath, and the leaves name
//! none of the engine — the import loop they once formed made every change
//! to one of them a change to all three. This reads the sources: a `use`
//! (or a path) that crosses a layer upwards fails here with its file and
//! line.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("source dir") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// Lines of `files` (outside comments) that name any of `forbidden`.
fn crossings(files: &[PathBuf], forbidden: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            if let Some(f) = forbidden.iter().find(|f| code.contains(*f)) {
                found.push(format!("{}:{}: names {f}", file.display(), n + 1));
            }
        }
    }
    found
}

#[test]
fn the_engine_layers_depend_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let session = sources(&src.join("session"));
    assert!(session.len() > 5, "the session sources are where this test looks");
    let mut bad = crossings(&session, &["crate::shard", "crate::relay::", "crate::io::", "crate::ng"]);
    let leaves = [src.join("offload.rs"), src.join("relay_port.rs")];
    bad.extend(crossings(&leaves, &["crate::shard", "crate::relay::", "crate::session", "crate::io::"]));
    assert!(bad.is_empty(), "a layer names one above it:\n{}", bad.join("\n"));
}
