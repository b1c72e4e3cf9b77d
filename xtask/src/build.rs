//! Building the BPF objects, the agent and the demo.

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

/// A BPF crate: its own workspace, built for bpfel-unknown-none from its
/// own directory so its `.cargo/config.toml` (target, rustc, linker)
/// applies.
pub struct EbpfCrate {
    pub dir: &'static str,
    /// The object, its `[[bin]]`.
    pub object: &'static str,
}

/// The agent's datapath, the one object the agent embeds.
pub const DATAPATH: EbpfCrate = EbpfCrate {
    dir: "eip-nat-ebpf",
    object: "eip-nat",
};

/// The rig's programs (generator, sink, pass, no-op, minimal NAT), which
/// the tests, the demo and the benchmark embed; never the agent.
pub const RIG: EbpfCrate = EbpfCrate {
    dir: "eip-nat-rig-ebpf",
    object: "eip-nat-rig",
};

pub const EBPF_CRATES: [EbpfCrate; 2] = [DATAPATH, RIG];

impl EbpfCrate {
    pub fn manifest(&self) -> PathBuf {
        root().join(self.dir).join("Cargo.toml")
    }

    pub fn object_path(&self) -> PathBuf {
        root()
            .join(self.dir)
            .join("target/bpfel-unknown-none/release")
            .join(self.object)
    }

    /// `cargo <args>` from the crate's directory, without the host's
    /// compiler settings.
    fn cargo(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new(program);
        c.args(args).current_dir(root().join(self.dir));
        for var in HOST_ONLY_ENV {
            c.env_remove(var);
        }
        c
    }
}

pub fn agent_binary() -> PathBuf {
    root().join("target/release/eip-nat")
}

/// Points a host cargo command at the built objects and agent: the
/// agent's build script embeds the datapath, the tests crate's the rig.
pub fn with_objects(c: &mut Command) -> &mut Command {
    c.env("EIP_NAT_BPF_OBJECT", DATAPATH.object_path())
        .env("EIP_NAT_RIG_OBJECT", RIG.object_path())
        .env("EIP_NAT_BIN", agent_binary())
}

/// `cargo clippy -D warnings` on the eBPF crates, with Debian's clippy (the
/// one that matches the rustc that builds them), each from its own
/// directory.
const EBPF_CLIPPY: &str = "/usr/bin/cargo-clippy";

pub fn has_ebpf_clippy() -> bool {
    std::path::Path::new(EBPF_CLIPPY).exists()
}

pub fn ebpf_clippy() -> Vec<Command> {
    EBPF_CRATES
        .iter()
        .map(|k| {
            k.cargo(
                EBPF_CLIPPY,
                &["clippy", "--release", "--locked", "--", "-D", "warnings"],
            )
        })
        .collect()
}

/// Builds both BPF objects: the datapath and the rig's.
pub fn ebpf() -> Result<()> {
    for k in &EBPF_CRATES {
        cmd::run(&mut k.cargo("cargo", &["build", "--release", "--locked"]))?;
    }
    Ok(())
}

pub fn agent() -> Result<()> {
    cmd::run(
        Command::new("cargo")
            .args(["build", "--release", "--locked", "-p", "eip-nat-userspace"])
            .current_dir(root())
            .env("EIP_NAT_BPF_OBJECT", DATAPATH.object_path()),
    )
}

pub fn all() -> Result<()> {
    ebpf()?;
    agent()?;
    eprintln!(
        "built {} (BPF object embedded) and the rig's object {}",
        agent_binary().display(),
        RIG.object_path().display()
    );
    Ok(())
}

pub fn bench(
    quick: bool,
    only: Option<&str>,
    placement: Option<&str>,
    peers: Option<&str>,
    repetitions: Option<usize>,
) -> Result<()> {
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
    .current_dir(root());
    with_objects(&mut c);
    if quick {
        c.arg("--quick");
    }
    if let Some(part) = only {
        c.arg(format!("--only={part}"));
    }
    if let Some(p) = placement {
        c.arg(format!("--placement={p}"));
    }
    if let Some(p) = peers {
        c.arg(format!("--peers={p}"));
    }
    if let Some(n) = repetitions {
        c.arg(format!("--repetitions={n}"));
    }
    cmd::run(&mut c)
}

/// The demo: one gateway, or (`fleet`) two sharing one etcd.
pub fn demo(fleet: bool) -> Result<()> {
    let bin = if fleet {
        "eip-nat-demo-fleet"
    } else {
        "eip-nat-demo"
    };
    cmd::run(
        with_objects(Command::new("cargo").args([
            "run",
            "--quiet",
            "--locked",
            "-p",
            "integration-tests",
            "--bin",
            bin,
        ]))
        .current_dir(root()),
    )
}
