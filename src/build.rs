//! Build script: names the commit lb-mio is built from, for `lb-mio --version`.
//!
//! `LB_MIO_COMMIT` in the environment wins (builds outside git, e.g. from a tarball); else
//! `git rev-parse --short HEAD`; else `unknown`. The script runs again only when that variable,
//! HEAD or the branch HEAD points to moves, so an ordinary `cargo build` does not run git.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=LB_MIO_COMMIT");
    let (commit, source) = match std::env::var("LB_MIO_COMMIT") {
        Ok(commit) if !commit.trim().is_empty() => (commit.trim().to_string(), "env"),
        _ => match git(&["rev-parse", "--short", "HEAD"]) {
            Some(commit) => {
                watch_head();
                (commit, "git")
            }
            None => ("unknown".to_string(), "none"),
        },
    };
    println!("cargo:rustc-env=LB_MIO_COMMIT={commit}");
    println!("cargo:rustc-env=LB_MIO_COMMIT_SOURCE={source}");
}

/// Reruns this script when HEAD moves: HEAD itself (a checkout), the branch's file (a commit),
/// or, while the branch is only in packed-refs, its folder (where the first commit creates the
/// file), and packed-refs (where `git gc` moves refs). A worktree's HEAD lives in its own git
/// dir, its branches in the common one.
fn watch_head() {
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"]).map_or(git_dir.clone(), PathBuf::from);
    watch(&git_dir.join("HEAD"));
    watch(&common.join("packed-refs"));
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        let file = common.join(branch);
        match file.parent() {
            Some(folder) if !file.exists() => watch(folder),
            _ => watch(&file),
        }
    }
}

fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

/// `git ARGS` run in the crate's directory: its trimmed stdout, or `None` if it fails.
fn git(args: &[&str]) -> Option<String> {
    let dir = std::env::var_os("CARGO_MANIFEST_DIR")?;
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}
