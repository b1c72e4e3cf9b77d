//! Embeds the rig's BPF object (`eip-nat-rig-ebpf`: the generator, the
//! sink, the pass and no-op programs, the minimal NAT) built by `cargo xtask
//! build`, as `eip-nat-userspace/build.rs` embeds the agent's. Without one,
//! an empty stand-in: the pure tests still build and run, and loading a
//! rig program says how to build the real object.
use std::{env, fs, path::PathBuf};

fn main() {
    let object = env::var_os("EIP_NAT_RIG_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap())
                .join("../eip-nat-rig-ebpf/target/bpfel-unknown-none/release/eip-nat-rig")
        });
    println!("cargo:rerun-if-env-changed=EIP_NAT_RIG_OBJECT");
    println!("cargo:rerun-if-changed={}", object.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("eip-nat-rig");
    match fs::read(&object) {
        Ok(bytes) => fs::write(&out, bytes),
        Err(_) => {
            println!(
                "cargo:warning=no rig BPF object at {}: embedding an empty one (the rig \
                 programs will not load; `cargo xtask build` builds the real one)",
                object.display()
            );
            fs::write(&out, [])
        }
    }
    .expect("write the rig object into OUT_DIR");
}
