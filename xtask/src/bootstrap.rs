//! Installs what a fresh Debian 12 machine lacks, idempotently: each step
//! checks first, so a second run with everything present takes a second.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::cmd::{self, output, root};

/// Debian packages, each with why it is needed.
const PACKAGES: &[(&str, &str)] = &[
    // rustc 1.96 on LLVM 22 with a prebuilt `core` for bpfel-unknown-none:
    // rustup here cannot fetch rust-src for -Z build-std.
    ("rustc-web", "Debian's rustc, which has the BPF core"),
    (
        "libstd-rust-web-dev-bpf",
        "core/alloc for bpfel-unknown-none",
    ),
    (
        "rust-web-clippy",
        "clippy for Debian's rustc: lints the eBPF crate",
    ),
    ("iproute2", "ip: namespaces, veth, routes"),
    (
        "ethtool",
        "turning veth checksum offload off in tests and the demo",
    ),
    ("iputils-ping", "ICMP echo in tests and the demo"),
    ("procps", "sysctl in namespaces"),
    ("nftables", "the benchmark's nftables peers"),
    (
        "prometheus",
        "the Prometheus server the metrics test scrapes the agent with",
    ),
    (
        "tmux",
        "a terminal for the top test: keys sent to the live view, screens read back",
    ),
    (
        "protobuf-compiler",
        "protoc: the etcd client's build compiles etcd's API",
    ),
    (
        "libprotobuf-dev",
        "google/protobuf/*.proto, which etcd's API imports (protoc only recommends it)",
    ),
    ("etcd-server", "a real etcd cluster for the fleet tests"),
    (
        "etcd-client",
        "etcdctl: the fleet tests' health checks and compaction",
    ),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Those of `pkgs` that dpkg does not have installed.
fn missing_of<'a>(pkgs: impl IntoIterator<Item = &'a str>) -> Result<Vec<&'a str>> {
    let mut missing = Vec::new();
    for pkg in pkgs {
        let out = output(Command::new("dpkg-query").args(["-W", "-f=${db:Status-Status}", pkg]))?;
        if String::from_utf8_lossy(&out.stdout).trim() != "installed" {
            missing.push(pkg);
        }
    }
    Ok(missing)
}

fn missing_packages() -> Result<Vec<&'static str>> {
    missing_of(PACKAGES.iter().map(|(pkg, _)| *pkg))
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {pkgs:?}; run as root (the tests need root anyway) or \
             install them: apt-get install {}",
            pkgs.join(" ")
        );
    }
    let lock = ["-o", "DPkg::Lock::Timeout=600"];
    // A fresh machine's package lists may be empty or old; rustc-web 1.96
    // comes from the security suite.
    cmd::run(Command::new("apt-get").args(lock).args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(lock)
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// LLVM major version of Debian's rustc: bpf-linker must use the same one to
/// read the bitcode it emits.
pub fn rustc_llvm_major() -> Result<u32> {
    let out = output(Command::new("/usr/bin/rustc").arg("-vV"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .context("`/usr/bin/rustc -vV` does not say its LLVM version")?;
    version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .with_context(|| format!("unreadable LLVM version {version:?}"))
}

/// The shared libLLVM of that major version, as Debian's libllvmNN ships it.
fn find_libllvm(major: u32) -> Result<PathBuf> {
    let prefix = format!("libLLVM.so.{major}.");
    for dir in fs::read_dir("/usr/lib")?.flatten() {
        let dir = dir.path();
        if !dir.is_dir() {
            continue;
        }
        for f in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if f.file_name().to_string_lossy().starts_with(&prefix) {
                return Ok(f.path());
            }
        }
    }
    bail!("no /usr/lib/*/{prefix}* found; is libllvm{major} installed?")
}

fn cargo_bin() -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        });
    home.join("bin")
}

fn bpf_linker_ok(stamp: &Path, major: u32) -> bool {
    let bin = cargo_bin().join("bpf-linker");
    let Ok(out) = output(Command::new(&bin).arg("--version")) else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).contains(BPF_LINKER_VERSION)
        && fs::read_to_string(stamp).ok().as_deref() == Some(&format!("llvm-{major}"))
}

/// bpf-linker built against the LLVM of Debian's rustc. Its build only needs
/// `lib/libLLVM.so` under `LLVM_PREFIX`, so a one-symlink directory stands
/// in for the 570 MiB llvm-NN-dev package.
fn ensure_bpf_linker() -> Result<()> {
    let major = rustc_llvm_major()?;
    let stamp = cargo_bin().join(".bpf-linker-llvm");
    if bpf_linker_ok(&stamp, major) {
        return Ok(());
    }
    let lib = find_libllvm(major)?;
    let prefix = root().join(format!("target/llvm-{major}-prefix"));
    fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&lib, &link)?;
    eprintln!(
        "installing bpf-linker {BPF_LINKER_VERSION} for LLVM {major} (about two minutes, once)"
    );
    cmd::run(
        Command::new("cargo")
            .args(["install", "--locked", "--force"])
            .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
            .args(["--no-default-features", "--features"])
            .arg(format!("llvm-{major}"))
            .env("LLVM_PREFIX", &prefix)
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WRAPPER"),
    )?;
    fs::write(&stamp, format!("llvm-{major}"))?;
    Ok(())
}

/// bpffs, where later versions pin maps; mounted if missing.
fn ensure_bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts")?;
    if mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some("/sys/fs/bpf"))
        || !is_root()
    {
        return Ok(());
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))
}

/// What the unprivileged lane needs (it builds the agent's crate, whose
/// etcd client compiles etcd's API with protoc): installed if missing, or
/// how to install it.
pub fn protoc() -> Result<()> {
    let missing = missing_of(["protobuf-compiler", "libprotobuf-dev"])?;
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)
}

pub fn run() -> Result<()> {
    let start = Instant::now();
    let missing = missing_packages()?;
    if !missing.is_empty() {
        eprintln!("installing Debian packages: {}", missing.join(" "));
        apt_install(&missing)?;
    }
    if !Path::new("/usr/lib/rustlib/bpfel-unknown-none").exists() {
        bail!("/usr/lib/rustlib/bpfel-unknown-none is missing after installing libstd-rust-web-dev-bpf");
    }
    ensure_bpf_linker()?;
    ensure_bpffs()?;
    eprintln!("bootstrap: ready ({:.1}s)", start.elapsed().as_secs_f64());
    Ok(())
}
