//! Drives the real `swarmlb` binary inside a namespace: start, stop, restart, status.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::netns::{Netns, sh, sibling_binary};

/// A running `swarmlb run`, stopped with SIGTERM on drop (its pinned datapath stays).
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
}

pub fn swarmlb_binary() -> Result<PathBuf> {
    match std::env::var_os("SWARMLB_BIN") {
        Some(path) => Ok(path.into()),
        None => sibling_binary("swarmlb"),
    }
}

/// Removes any datapath a previous run left pinned, so each test starts clean.
pub fn unload() -> Result<()> {
    let bin = swarmlb_binary()?;
    sh(&format!("{} unload", bin.display()))?;
    Ok(())
}

impl Agent {
    /// Starts `swarmlb run` in `ns` and waits until `status` shows `services` services.
    pub fn start(ns: &Netns, ifaces: &[&str], config: &str, services: usize) -> Result<Agent> {
        let bin = swarmlb_binary()?;
        let log = std::env::temp_dir().join(format!("{}-swarmlb.log", ns.name));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let mut args = vec!["run", "--config", config];
        for iface in ifaces {
            args.extend(["--iface", iface]);
        }
        let child = ns
            .command(bin.to_str().context("path")?, &args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()?;
        let mut agent = Agent { child: Some(child), log };
        agent.wait_for_services(services)?;
        Ok(agent)
    }

    /// Waits until `status` lists `count` services, failing early if the agent died.
    pub fn wait_for_services(&mut self, count: usize) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = &mut self.child {
                if let Some(exit) = child.try_wait()? {
                    bail!("swarmlb run exited ({exit}):\n{}", self.log_text());
                }
            }
            if let Ok(status) = status() {
                if status["services"].as_array().map(Vec::len) == Some(count) {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("swarmlb did not program {count} services in 20 s:\n{}", self.log_text());
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal to the agent (e.g. `HUP` to reload).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.as_ref().context("agent not running")?.id();
        sh(&format!("kill -{signal} {pid}"))?;
        Ok(())
    }

    /// Stops the agent with SIGTERM and waits for it; the pinned datapath keeps serving.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            sh(&format!("kill -TERM {}", child.id()))?;
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    child.kill()?;
                    bail!("swarmlb run ignored SIGTERM for 10 s");
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// `swarmlb status --json`, parsed.
pub fn status() -> Result<Value> {
    let bin = swarmlb_binary()?;
    let out = sh(&format!("{} status --json", bin.display()))?;
    serde_json::from_str(&out).with_context(|| format!("status --json printed {out:?}"))
}
