//! `cargo xtask image`: container images built from the project's own release binaries, with
//! nothing pulled: `FROM scratch`, the binary, and the shared libraries `ldd` lists (with the
//! dynamic loader) at the paths the binary expects them.
//!
//! - `swarmlb:latest`: entrypoint `/swarmlb` (the agent and CLI; see `deploy/swarmlb.yml`);
//! - `slb-testsrv:latest`: entrypoint `/slb-testsrv` (the test server the Docker tests run).

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::setup::{run_cmd, workspace_root};

pub fn run() -> Result<()> {
    crate::commands::build()?;
    let start = Instant::now();
    run_cmd(Command::new(env!("CARGO")).current_dir(workspace_root()).args([
        "build",
        "--release",
        "--package",
        "tests",
        "--bin",
        "slb-testsrv",
    ]))?;
    eprintln!("built slb-testsrv in {:.1?}", start.elapsed());
    let release = workspace_root().join("target/release");
    for (binary, tag) in [("swarmlb", "swarmlb:latest"), ("slb-testsrv", "slb-testsrv:latest")] {
        let start = Instant::now();
        let id = image(&release.join(binary), tag)?;
        println!("{tag} {id} ({:.1?})", start.elapsed());
    }
    Ok(())
}

/// Builds image `tag` holding `binary` as its entrypoint; returns the image id.
fn image(binary: &Path, tag: &str) -> Result<String> {
    let name = binary.file_name().context("binary path")?.to_string_lossy().into_owned();
    let context = workspace_root().join("target/image").join(&name);
    if context.exists() {
        std::fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    std::fs::create_dir_all(&rootfs)?;
    copy(binary, &rootfs.join(&name))?;
    for lib in shared_libraries(binary)? {
        // `std::fs::copy` follows symlinks: the image gets the file under the name ldd printed.
        copy(&lib, &rootfs.join(lib.strip_prefix("/").unwrap_or(&lib)))?;
    }
    std::fs::write(context.join("Dockerfile"), format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/{name}\"]\n"))?;
    let out = Command::new("docker")
        .args(["build", "--quiet", "--tag", tag])
        .arg(&context)
        .output()
        .context("running docker build")?;
    if !out.status.success() {
        bail!("docker build of {tag} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Absolute paths of the libraries `ldd` resolves for `binary`, the loader included.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
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
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)", "/lib64/ld-linux-x86-64.so.2 (0x…)",
        // "linux-vdso.so.1 (0x…)" (in the kernel, nothing to copy).
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        match path {
            Some(p) if p.starts_with('/') => libs.push(PathBuf::from(p)),
            Some("not") => bail!("{}: {line}", binary.display()),
            _ => {}
        }
        if line.contains("not found") {
            bail!("{}: {line}", binary.display());
        }
    }
    Ok(libs)
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}
