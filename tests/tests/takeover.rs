//! The overlay-endpoint takeover against a fake Docker layout, no Engine: an overlay namespace
//! with bridge and VXLAN, Docker's `lb_` sandbox holding the endpoint, a task and 50 container
//! namespaces, all inside a private mount namespace (`lb-userspace/examples/takeover_fake_docker.sh`
//! driving the `takeover_check` example through `swarmlb::takeover`). A step that fails before
//! parking leaves Docker's endpoint up; the first run is full, a rerun with nothing changed comes
//! from the cache (the same veth), a deleted veth is rebuilt by a full run and then cached again;
//! the task answers from the host side; release brings Docker's endpoint back. Needs root.

use std::{path::Path, process::Command};

use anyhow::{Context, Result, ensure};
use tests::netns::sibling_binary;

/// The lines of the section of `out` whose heading starts with `heading`.
fn section<'a>(out: &'a str, heading: &str) -> Vec<&'a str> {
    out.lines()
        .skip_while(|l| !l.starts_with(&format!("== {heading}")))
        .skip(1)
        .take_while(|l| !l.starts_with("== "))
        .collect()
}

#[test]
fn takeover_works_only_when_something_changed_and_never_leaves_the_endpoint_down() -> Result<()> {
    let check = sibling_binary("examples/takeover_check")?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../lb-userspace/examples/takeover_fake_docker.sh");
    let run = Command::new("timeout").arg("120").arg("bash").arg(&script).arg(&check).output().context("the script")?;
    let out = format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    ensure!(run.status.success(), "{}: {}\n{out}", script.display(), run.status);

    let failed = section(&out, "MTU 60");
    ensure!(failed.iter().any(|l| l.starts_with("failed in")), "the MTU step did not fail:\n{out}");
    ensure!(
        failed.iter().any(|l| l.contains("docker endpoint: state UP")),
        "a failed takeover parked Docker's endpoint:\n{out}"
    );

    let runs: Vec<(String, String)> = section(&out, "MTU 1450")
        .iter()
        .filter_map(|l| {
            let ifindex = l.split("ifindex: ").nth(1)?.split(' ').next()?.to_string();
            let kind = l.split("} ").nth(1)?.split(' ').next()?.to_string();
            Some((kind, ifindex))
        })
        .collect();
    let kinds: Vec<&str> = runs.iter().map(|(k, _)| k.as_str()).collect();
    ensure!(kinds == ["Full", "Cached", "Full", "Cached"], "runs {kinds:?}:\n{out}");
    ensure!(runs[0].1 == runs[1].1 && runs[2].1 == runs[3].1 && runs[1].1 != runs[2].1, "veths {runs:?}:\n{out}");
    ensure!(out.contains("state DOWN alias swarmlb-parked"), "Docker's endpoint was not parked:\n{out}");
    ensure!(section(&out, "ping").iter().any(|l| l.contains(" 0% packet loss")), "the task did not answer:\n{out}");
    ensure!(section(&out, "release").iter().any(|l| l.contains("docker endpoint: state UP")), "not released:\n{out}");
    Ok(())
}
