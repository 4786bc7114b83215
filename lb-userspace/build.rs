//! Builds the XDP object from `lb-ebpf` (nightly, `-Z build-std=core`, BTF on) and leaves it in
//! OUT_DIR for `include_bytes!`, so the `swarmlb` binary carries its own datapath.
//!
//! `SWARMLB_BUILD_EBPF=0` skips that build and leaves an empty object instead, so `cargo check`
//! and `cargo clippy` need no nightly toolchain or bpf-linker; such a binary refuses to load the
//! datapath (`swarmlb::ebpf_object`).

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, bail};

const EBPF_TARGET: &str = "bpfel-unknown-none";
/// `0` skips building the eBPF object; anything else, or unset, builds it.
const BUILD_SWITCH: &str = "SWARMLB_BUILD_EBPF";

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed={BUILD_SWITCH}");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let object_out = out_dir.join("lb-ebpf.o");
    if env::var(BUILD_SWITCH).is_ok_and(|v| v.trim() == "0") {
        println!("cargo:warning={BUILD_SWITCH}=0: the eBPF datapath is not built; this swarmlb cannot load it");
        std::fs::write(&object_out, []).with_context(|| format!("writing {}", object_out.display()))?;
        return Ok(());
    }
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("lb-userspace has no parent directory")?;
    for watched in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-common/src", "lb-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let target_dir = out_dir.join("ebpf-target");

    let mut cargo = Command::new("rustup");
    cargo
        .current_dir(root)
        .args(["run", "nightly", "cargo", "build", "--package", "lb-ebpf", "--release"])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Cdebuginfo=2\u{1f}-Clink-arg=--btf");
    // The outer cargo's settings are for the host build; the BPF build must not inherit them.
    for inherited in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTUP_TOOLCHAIN",
        "CARGO_MAKEFLAGS",
        "MAKEFLAGS",
        "MFLAGS",
    ] {
        cargo.env_remove(inherited);
    }
    let status = cargo.status().context("cannot run `rustup run nightly cargo`: run `cargo xtask setup` first")?;
    if !status.success() {
        bail!(
            "building lb-ebpf failed ({status}); `cargo xtask setup` installs the nightly \
             rust-src component and bpf-linker it needs"
        );
    }
    let object = target_dir.join(EBPF_TARGET).join("release").join("lb-ebpf");
    std::fs::copy(&object, &object_out).with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}
