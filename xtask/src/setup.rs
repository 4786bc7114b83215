//! `cargo xtask setup`: brings a fresh Debian machine to the point where swarmlb builds and its
//! tests run — Debian packages, the nightly rust-src component, bpf-linker built against LLVM 22 —
//! and says what it did. Safe to run again: it only installs what is missing.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};

/// Debian packages: LLVM 22 for bpf-linker, bpftool and iproute2/ethtool/iptables for the tests,
/// `prometheus` for `promtool` (the tests lint `/metrics` and the shipped alert rules with it).
const DEBIAN_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "bpftool",
    "iproute2",
    "ethtool",
    "iptables",
    "iputils-ping",
    "socat",
    "prometheus",
];
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    /// Say what was already there too.
    Report,
    /// Only speak when something is installed.
    Quiet,
}

pub fn run(verbosity: Verbosity) -> Result<()> {
    let say = |done: &str| {
        if verbosity == Verbosity::Report {
            eprintln!("setup: {done}");
        }
    };
    let missing: Vec<&str> = DEBIAN_PACKAGES.iter().copied().filter(|p| !debian_package_installed(p)).collect();
    if missing.is_empty() {
        say("Debian packages present");
    } else {
        eprintln!("setup: installing Debian packages: {}", missing.join(" "));
        run_cmd(Command::new("apt-get").arg("update").arg("-qq"))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    if rust_src_present()? {
        say("nightly rust-src present");
    } else {
        install_rust_src()?;
    }

    if bpf_linker_present() {
        say("bpf-linker present");
    } else {
        eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
        run_cmd(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--locked", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22"])
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )?;
    }
    Ok(())
}

/// True when everything `run` would install is there already.
pub fn complete() -> bool {
    DEBIAN_PACKAGES.iter().all(|p| debian_package_installed(p))
        && rust_src_present().unwrap_or(false)
        && bpf_linker_present()
}

fn debian_package_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn nightly_sysroot() -> Result<PathBuf> {
    let out =
        Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output().context("running rustc +nightly")?;
    if !out.status.success() {
        bail!("the nightly toolchain is missing: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn rust_src_present() -> Result<bool> {
    Ok(nightly_sysroot()?.join("lib/rustlib/src/rust/library/core/Cargo.toml").exists())
}

/// rustup first; if the component cannot be downloaded, the tarball shipped in ../shared.
fn install_rust_src() -> Result<()> {
    eprintln!("setup: adding the rust-src component to nightly");
    let added = Command::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if added {
        return Ok(());
    }
    let tarball = workspace_root().join("../shared/toolchain/rust-src-nightly.tgz");
    if !tarball.exists() {
        bail!("rustup could not add rust-src and {} does not exist", tarball.display());
    }
    eprintln!("setup: rustup failed; unpacking {}", tarball.display());
    let dest = nightly_sysroot()?.join("lib/rustlib/src");
    std::fs::create_dir_all(&dest)?;
    run_cmd(Command::new("tar").arg("xzf").arg(&tarball).arg("-C").arg(&dest))
}

fn bpf_linker_present() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").into()
}

/// Where cargo builds: `CARGO_TARGET_DIR` (relative to the workspace) if set, else `target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace_root().join(dir),
        None => workspace_root().join("target"),
    }
}

pub fn run_cmd(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}
