//! The xtask commands other than setup: each is a thin, explicit sequence of cargo invocations.

use std::process::Command;

use anyhow::Result;

use crate::setup::{self, Verbosity, run_cmd, target_dir, workspace_root};

fn cargo() -> Command {
    let mut cmd = Command::new(env!("CARGO"));
    cmd.current_dir(workspace_root());
    cmd
}

fn ensure_setup() -> Result<()> {
    if !setup::complete() {
        setup::run(Verbosity::Quiet)?;
    }
    Ok(())
}

pub fn build() -> Result<()> {
    ensure_setup()?;
    run_cmd(cargo().args(["build", "--release", "--package", "lb-userspace"]))?;
    eprintln!("built {}", target_dir().join("release/swarmlb").display());
    Ok(())
}

pub fn build_and_load(ifaces: &[String], config: &str) -> Result<()> {
    build()?;
    let mut run = Command::new(target_dir().join("release/swarmlb"));
    run.current_dir(workspace_root()).arg("run").args(["--config", config]);
    for iface in ifaces {
        run.args(["--iface", iface]);
    }
    run_cmd(&mut run)
}

pub fn test() -> Result<()> {
    ensure_setup()?;
    // The namespace tests run the real `swarmlb` binary (and the takeover test its
    // `takeover_check` example); the Docker tests run both images.
    run_cmd(cargo().args(["build", "--package", "lb-userspace", "--bins", "--examples"]))?;
    crate::image::run()?;
    run_cmd(
        cargo()
            .args(["test", "--workspace", "--exclude", "lb-ebpf", "--no-fail-fast"])
            .args(["--", "--test-threads=1"]),
    )
}

pub fn bench() -> Result<()> {
    ensure_setup()?;
    run_cmd(cargo().args(["bench", "--package", "tests", "--bench", "datapath"]))?;
    // The end-to-end bench runs the real `swarmlb` and `slb-testsrv`, found beside the bench
    // executable's directory (`sibling_binary`): the bench profile builds into <target>/release.
    run_cmd(cargo().args(["build", "--release", "--package", "lb-userspace", "--package", "tests", "--bins"]))?;
    run_cmd(cargo().args(["bench", "--package", "tests", "--bench", "endtoend"]))?;
    run_cmd(cargo().args(["bench", "--package", "tests", "--bench", "vip"]))?;
    run_cmd(cargo().args(["bench", "--package", "tests", "--bench", "scale"]))
}

pub fn demo(keep: bool) -> Result<()> {
    ensure_setup()?;
    run_cmd(cargo().args(["build", "--release", "--package", "lb-userspace", "--package", "tests", "--bins"]))?;
    let mut demo = Command::new(target_dir().join("release/swarmlb-demo"));
    demo.arg("--swarmlb").arg(target_dir().join("release/swarmlb"));
    if keep {
        demo.arg("--keep");
    }
    run_cmd(&mut demo)
}
