//! Running commands with their command line echoed and failures explained.

use std::{
    path::PathBuf,
    process::{Command, Output},
};

use anyhow::{bail, Context, Result};

/// The workspace root (xtask lives one level down).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

fn describe(c: &Command) -> String {
    let mut s = c.get_program().to_string_lossy().into_owned();
    for a in c.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `c`, inheriting stdio, and fails with its command line if it fails.
pub fn run(c: &mut Command) -> Result<()> {
    let line = describe(c);
    eprintln!("+ {line}");
    let status = c.status().with_context(|| format!("starting `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Runs `c` quietly and returns its output, whatever its status.
pub fn output(c: &mut Command) -> Result<Output> {
    let line = describe(c);
    c.output().with_context(|| format!("starting `{line}`"))
}
