//! Embeds the BPF object built by `cargo xtask build` (the eBPF crate needs
//! Debian's rustc and bpf-linker, which cargo alone cannot drive here).
//!
//! Without one, an empty object is embedded, as aya's own integration
//! tests stub theirs for `cargo check`: the model, store and config tests
//! then build and run as any user on any machine, and `Datapath::load`
//! refuses to run with a message saying how to build the real one.
use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let object = env::var_os("EIP_NAT_BPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            manifest.join("../eip-nat-ebpf/target/bpfel-unknown-none/release/eip-nat")
        });
    println!("cargo:rerun-if-env-changed=EIP_NAT_BPF_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("eip-nat");
    if object.exists() {
        fs::copy(&object, &out).expect("copy the BPF object into OUT_DIR");
    } else {
        println!(
            "cargo:warning=no BPF object at {}: embedding an empty one (the agent will not \
             load; `cargo xtask build` builds the real one)",
            object.display()
        );
        fs::write(&out, []).expect("write the empty stand-in into OUT_DIR");
    }
}
