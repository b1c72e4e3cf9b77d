//! Embeds the BPF object built by `cargo xtask build` (the eBPF crate needs
//! Debian's rustc and bpf-linker, which cargo alone cannot drive here).
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
    if !object.exists() {
        panic!(
            "the BPF object {} is missing: run `cargo xtask build` (it installs the BPF \
             toolchain and builds the eBPF crate), or point EIP_NAT_BPF_OBJECT at one",
            object.display()
        );
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("eip-nat");
    fs::copy(&object, &out).expect("copy the BPF object into OUT_DIR");
}
