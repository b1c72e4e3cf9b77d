//! Building the BPF object, the agent and the demo.

use std::{path::PathBuf, process::Command};

use anyhow::Result;

use crate::cmd::{self, root};

/// Environment a parent cargo or the user may set that must not leak into
/// the BPF build (it targets bpfel-unknown-none with Debian's rustc).
const HOST_ONLY_ENV: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_BUILD_TARGET",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_RUSTFLAGS",
];

pub fn bpf_object() -> PathBuf {
    root().join("eip-nat-ebpf/target/bpfel-unknown-none/release/eip-nat")
}

pub fn agent_binary() -> PathBuf {
    root().join("target/release/eip-nat")
}

/// `cargo clippy -D warnings` on the eBPF crate, with Debian's clippy (the
/// one that matches the rustc that builds it), from its own directory.
const EBPF_CLIPPY: &str = "/usr/bin/cargo-clippy";

pub fn has_ebpf_clippy() -> bool {
    std::path::Path::new(EBPF_CLIPPY).exists()
}

pub fn ebpf_clippy() -> Command {
    let mut c = Command::new(EBPF_CLIPPY);
    c.args(["clippy", "--release", "--locked", "--", "-D", "warnings"])
        .current_dir(root().join("eip-nat-ebpf"));
    for var in HOST_ONLY_ENV {
        c.env_remove(var);
    }
    c
}

/// Builds the eBPF crate from its own directory, so its
/// `.cargo/config.toml` (target, rustc, linker) applies.
pub fn ebpf() -> Result<()> {
    let mut c = Command::new("cargo");
    c.args(["build", "--release", "--locked"])
        .current_dir(root().join("eip-nat-ebpf"));
    for var in HOST_ONLY_ENV {
        c.env_remove(var);
    }
    cmd::run(&mut c)
}

pub fn agent() -> Result<()> {
    cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "--locked", "-p", "eip-nat-userspace"])
            .current_dir(root())
            .env("EIP_NAT_BPF_OBJECT", bpf_object()),
    )
}

pub fn all() -> Result<()> {
    ebpf()?;
    agent()?;
    eprintln!("built {} (BPF object embedded)", agent_binary().display());
    Ok(())
}

pub fn bench(quick: bool, only: Option<&str>, placement: Option<&str>) -> Result<()> {
    let mut c = Command::new("cargo");
    c.args([
        "run",
        "--quiet",
        "--release",
        "--locked",
        "-p",
        "integration-tests",
    ])
    .args(["--bin", "eip-nat-bench", "--"])
    .current_dir(root())
    .env("EIP_NAT_BPF_OBJECT", bpf_object())
    .env("EIP_NAT_BIN", agent_binary());
    if quick {
        c.arg("--quick");
    }
    if let Some(part) = only {
        c.arg(format!("--only={part}"));
    }
    if let Some(p) = placement {
        c.arg(format!("--placement={p}"));
    }
    cmd::run(&mut c)
}

pub fn demo() -> Result<()> {
    cmd::run(
        Command::new("cargo")
            .args([
                "run",
                "--quiet",
                "--locked",
                "-p",
                "integration-tests",
                "--bin",
                "eip-nat-demo",
            ])
            .current_dir(root())
            .env("EIP_NAT_BPF_OBJECT", bpf_object())
            .env("EIP_NAT_BIN", agent_binary()),
    )
}
