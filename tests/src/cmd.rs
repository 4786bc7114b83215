//! Host commands, the one place tests run them: `sh` (a shell command line) and `docker` (the
//! host Engine's CLI). Both run in the calling thread's network namespace, so a thread that has
//! entered a test namespace configures that namespace.

use std::process::Command;

use anyhow::{Context, Result, bail};

/// Runs `sh -c CMD` to completion and returns its stdout, failing with its stderr when it fails.
pub fn sh(cmd: &str) -> Result<String> {
    let out = Command::new("sh").arg("-c").arg(cmd).output().with_context(|| format!("running {cmd}"))?;
    if !out.status.success() {
        bail!("`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `docker ARGS` against this machine's Engine; its stdout, trimmed.
pub fn docker(args: &str) -> Result<String> {
    Ok(sh(&format!("docker {args}"))?.trim().to_string())
}

/// Quotes `s` as one word for `sh -c`.
pub fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
