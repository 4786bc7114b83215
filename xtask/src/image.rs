//! `cargo xtask image`: container images built from the project's own release binaries, with
//! nothing pulled: `FROM scratch`, the binary, and the shared libraries `ldd` lists (with the
//! dynamic loader) at the paths the binary expects them.
//!
//! - `swarmlb:latest`: entrypoint `/swarmlb` (the agent and CLI; see `deploy/swarmlb.yml`);
//! - `slb-testsrv:latest`: entrypoint `/slb-testsrv` (the test server the Docker tests run).

use std::{path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{
    rootfs,
    setup::{run_cmd, target_dir, workspace_root},
};

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
    let release = target_dir().join("release");
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
    let context = target_dir().join("image").join(&name);
    if context.exists() {
        std::fs::remove_dir_all(&context).with_context(|| format!("clearing {}", context.display()))?;
    }
    let root = context.join("rootfs");
    std::fs::create_dir_all(&root)?;
    // Each library at the path ldd printed, which is where the binary's loader looks.
    rootfs::copy_with_libraries(binary, &root.join(&name), |lib| root.join(lib.strip_prefix("/").unwrap_or(lib)))?;
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
