//! The crate's invariant, checked on its dependency graph: the use cases know nothing of
//! HTTP servers, HTML or the command line. A dependency that brings one in fails here, not
//! in review.

use std::process::Command;

/// Crates of the edges: web framework, HTML templates, command line, HTTP middleware.
const FORBIDDEN: &[&str] = &["axum", "axum-core", "maud", "clap", "tower-http"];

/// `cargo tree` of this crate's normal dependencies as `name|features` lines (features as
/// resolved when building this crate alone).
fn tree() -> Vec<(String, Vec<String>)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .args([
            "tree",
            "-p",
            env!("CARGO_PKG_NAME"),
            "-e",
            "normal",
            "--prefix",
            "none",
            "--offline",
            "-f",
            "{p}|{f}",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (package, features) = line.split_once('|')?;
            let name = package.split_whitespace().next()?.to_owned();
            let features = features
                .split(',')
                .map(|f| f.split_whitespace().next().unwrap_or_default().to_owned())
                .filter(|f| !f.is_empty())
                .collect();
            Some((name, features))
        })
        .collect()
}

#[test]
fn no_http_server_html_or_command_line_crates() {
    let tree = tree();
    assert!(
        tree.iter().any(|(name, _)| name == "keyward-core"),
        "the tree was read: {tree:?}"
    );
    for (name, features) in &tree {
        assert!(
            !FORBIDDEN.contains(&name.as_str()),
            "keyward-app depends on {name}"
        );
        if name == "hyper" || name == "hyper-util" {
            assert!(
                !features.iter().any(|f| f.starts_with("server")),
                "keyward-app builds {name} with its server side: {features:?}"
            );
        }
    }
}
