//! Builds the XDP object from `lb-ebpf` (nightly, `-Z build-std=core`, BTF on) and leaves it in
//! OUT_DIR for `include_bytes!`, so the `swarmlb` binary carries its own datapath.

use std::{env, path::PathBuf, process::Command};

use anyhow::{Context, bail};

const EBPF_TARGET: &str = "bpfel-unknown-none";

fn main() -> anyhow::Result<()> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.parent().context("lb-userspace has no parent directory")?;
    for watched in ["lb-ebpf/src", "lb-ebpf/Cargo.toml", "lb-common/src", "lb-common/Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
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
    std::fs::copy(&object, out_dir.join("lb-ebpf.o")).with_context(|| format!("copying {}", object.display()))?;
    Ok(())
}
