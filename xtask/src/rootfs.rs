//! Minimal root filesystems for images built from host binaries: a binary and the shared
//! libraries `ldd` resolves for it (the dynamic loader included), copied into a directory.
//!
//! The one implementation: `cargo xtask image` uses it for `swarmlb` and `slb-testsrv`, and the
//! Docker-in-Docker tests (`tests/src/dind.rs`, which include this file by path) for the node
//! image. It needs nothing but `std` and `anyhow`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

/// Copies `binary` (symlinks followed) to `dest`, and every library it links to
/// `lib_dest(library path)`, unless a file is already there.
pub fn copy_with_libraries(binary: &Path, dest: &Path, lib_dest: impl Fn(&Path) -> PathBuf) -> Result<()> {
    copy(binary, dest)?;
    for lib in shared_libraries(binary)? {
        let target = lib_dest(&lib);
        if !target.exists() {
            // `std::fs::copy` follows symlinks: the image gets the file under the name ldd printed.
            copy(&lib, &target)?;
        }
    }
    Ok(())
}

/// Absolute paths of the libraries `ldd` resolves for `binary`, the loader included; none for a
/// static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(binary).output().context("running ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing more.
        if text.contains("not a dynamic") || String::from_utf8_lossy(&out.stderr).contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), String::from_utf8_lossy(&out.stderr));
    }
    let mut libs = Vec::new();
    for line in text.lines() {
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)",
        // "linux-vdso.so.1 (0x…)" (in the kernel, nothing to copy).
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            libs.push(PathBuf::from(p));
        }
    }
    Ok(libs)
}

/// Copies a file (symlinks followed), creating the destination's directory.
pub fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
