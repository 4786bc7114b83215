//! Drives the real `swarmlb` binary inside a namespace: start, stop, restart, status.

use std::{
    path::PathBuf,
    process::{Child, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    cmd::sh,
    netns::{Netns, sibling_binary},
    poll::{Seen, wait_for},
};

/// A running `swarmlb run`, stopped with SIGTERM on drop (its pinned datapath stays).
pub struct Agent {
    child: Option<Child>,
    pub log: PathBuf,
    /// Where this process's lines start in `log`, which earlier runs may have appended to.
    log_start: usize,
    /// Where its datapath is pinned; `None` for the default directory.
    pub pin_dir: Option<String>,
}

/// How to start one agent: which node it is and where it pins, for several agents on one machine.
#[derive(Clone, Debug, Default)]
pub struct Placement {
    pub node: Option<String>,
    pub pin_dir: Option<String>,
    /// `--metrics-addr` for `run`.
    pub metrics_addr: Option<String>,
    /// `--max-connections` for `run` (the connection table's size).
    pub max_connections: Option<u32>,
    /// `--resync-interval` (seconds) for `run --source docker`.
    pub resync_interval_s: Option<u64>,
    /// `--cgroup` for `run`: where the socket programs are attached.
    pub cgroup: Option<String>,
}

impl Placement {
    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(node) = &self.node {
            args.extend(["--node".to_string(), node.clone()]);
        }
        if let Some(addr) = &self.metrics_addr {
            args.extend(["--metrics-addr".to_string(), addr.clone()]);
        }
        if let Some(n) = self.max_connections {
            args.extend(["--max-connections".to_string(), n.to_string()]);
        }
        if let Some(cgroup) = &self.cgroup {
            args.extend(["--cgroup".to_string(), cgroup.clone()]);
        }
        args.extend(self.pin_args());
        args
    }

    fn pin_args(&self) -> Vec<String> {
        match &self.pin_dir {
            Some(dir) => vec!["--pin-dir".to_string(), dir.clone()],
            None => Vec::new(),
        }
    }
}

pub fn swarmlb_binary() -> Result<PathBuf> {
    match std::env::var_os("SWARMLB_BIN") {
        Some(path) => Ok(path.into()),
        None => sibling_binary("swarmlb"),
    }
}

/// Removes any datapath a previous run left pinned, so each test starts clean.
pub fn unload() -> Result<()> {
    unload_at(&Placement::default())
}

pub fn unload_at(placement: &Placement) -> Result<()> {
    let bin = swarmlb_binary()?;
    sh(&format!("{} unload {}", bin.display(), placement.pin_args().join(" ")))?;
    Ok(())
}

impl Agent {
    /// Starts `swarmlb run` in `ns` and waits until `status` shows `services` services.
    pub fn start(ns: &Netns, ifaces: &[&str], config: &str, services: usize) -> Result<Agent> {
        Agent::start_placed(ns, &Placement::default(), ifaces, config, services)
    }

    /// Starts `swarmlb run` as a given node with its own pin directory.
    pub fn start_placed(
        ns: &Netns,
        placement: &Placement,
        ifaces: &[&str],
        config: &str,
        services: usize,
    ) -> Result<Agent> {
        let bin = swarmlb_binary()?;
        let mut args = vec!["run".to_string(), "--config".to_string(), config.to_string()];
        args.extend(placement.args());
        args.extend(ifaces.iter().flat_map(|iface| ["--iface".to_string(), iface.to_string()]));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let cmd = ns.command(bin.to_str().context("path")?, &args);
        Agent::launch(cmd, &ns.name, placement, services)
    }

    /// Starts `swarmlb run --source docker` in the host's namespaces, following this machine's
    /// Engine (or the one at `docker_host`), and waits until it programs `services` services.
    pub fn start_docker(
        placement: &Placement,
        ifaces: &[&str],
        docker_host: Option<&str>,
        services: usize,
    ) -> Result<Agent> {
        let mut cmd = std::process::Command::new(swarmlb_binary()?);
        cmd.args(["run", "--source", "docker"]).args(placement.args());
        for iface in ifaces {
            cmd.args(["--iface", iface]);
        }
        if let Some(host) = docker_host {
            cmd.args(["--docker-host", host]);
        }
        if let Some(secs) = placement.resync_interval_s {
            cmd.args(["--resync-interval", &secs.to_string()]);
        }
        let name = placement.pin_dir.as_deref().and_then(|d| d.rsplit('/').next()).unwrap_or("swarmlb");
        Agent::launch(cmd, name, placement, services)
    }

    fn launch(mut cmd: std::process::Command, name: &str, placement: &Placement, services: usize) -> Result<Agent> {
        let log = std::env::temp_dir().join(format!("{name}-swarmlb.log"));
        let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log)?;
        let log_start = log_file.metadata()?.len() as usize;
        let child = cmd.env("RUST_LOG", "info").stdout(Stdio::null()).stderr(log_file).spawn()?;
        let mut agent = Agent { child: Some(child), log, log_start, pin_dir: placement.pin_dir.clone() };
        agent.wait_for_services(services)?;
        Ok(agent)
    }

    /// Waits until this process's first sync is done and `status` lists `count` services (not a
    /// pinned state an earlier agent left), failing early if the agent died.
    pub fn wait_for_services(&mut self, count: usize) -> Result<()> {
        let pid = self.pid().map(u64::from);
        let pin_dir = self.pin_dir.clone();
        let child = &mut self.child;
        let programmed = wait_for(&format!("swarmlb to program {count} services"), Duration::from_secs(20), || {
            if let Some(child) = child.as_mut()
                && let Some(exit) = child.try_wait()?
            {
                bail!("swarmlb run exited ({exit})");
            }
            Ok(match status_at(&Placement { pin_dir: pin_dir.clone(), ..Placement::default() }) {
                Ok(status) => {
                    let services = status["services"].as_array().map_or(0, Vec::len);
                    // Its own sync, not a pinned state an earlier agent left.
                    let synced = status["agent"]["pid"].as_u64() == pid && status["agent"]["sync_ok"] == true;
                    Seen::when(synced && services == count, format!("{services} services, agent {}", status["agent"]))
                }
                Err(e) => Seen::NotYet(format!("{e:#}")),
            })
        });
        programmed.with_context(|| format!("swarmlb log:\n{}", self.log_text()))
    }

    /// `swarmlb status --json` of this agent's datapath.
    pub fn status(&self) -> Result<Value> {
        status_at(&Placement { pin_dir: self.pin_dir.clone(), ..Placement::default() })
    }

    /// What this agent process has logged so far.
    pub fn log_text(&self) -> String {
        let text = std::fs::read(&self.log).unwrap_or_default();
        String::from_utf8_lossy(text.get(self.log_start..).unwrap_or_default()).into_owned()
    }

    /// `swarmlb flows --json` of this agent's datapath: the connections it tracks.
    pub fn flows(&self) -> Result<Vec<Value>> {
        let bin = swarmlb_binary()?;
        let placement = Placement { pin_dir: self.pin_dir.clone(), ..Placement::default() };
        let out = sh(&format!("{} flows --json {}", bin.display(), placement.pin_args().join(" ")))?;
        serde_json::from_str(&out).with_context(|| format!("flows --json printed {out:?}"))
    }

    /// What to look at when traffic through this agent failed: its last log lines, the reason
    /// counters and what it has programmed.
    pub fn diagnosis(&self) -> String {
        let log = self.log_text();
        let lines: Vec<&str> = log.lines().collect();
        let status = match self.status() {
            Ok(status) => format!("reasons: {}\nservices: {}", status["reasons"], status["services"]),
            Err(e) => format!("no status: {e:#}"),
        };
        format!("{status}\nswarmlb log (last 40 lines):\n{}", lines[lines.len().saturating_sub(40)..].join("\n"))
    }

    /// The agent's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends a signal to the agent (e.g. `HUP` to reload).
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().context("agent not running")?;
        sh(&format!("kill -{signal} {pid}"))?;
        Ok(())
    }

    /// Stops the agent with SIGTERM and waits for it; the pinned datapath keeps serving.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            sh(&format!("kill -TERM {}", child.id()))?;
            let exited = wait_for("swarmlb run to exit on SIGTERM", Duration::from_secs(10), || {
                Ok(match child.try_wait()? {
                    Some(exit) => Seen::Ready(exit),
                    None => Seen::NotYet("still running".into()),
                })
            });
            if let Err(e) = exited {
                child.kill()?;
                let _ = child.wait();
                return Err(e);
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
    status_at(&Placement::default())
}

/// `swarmlb status --json`, parsed, whether or not an agent is running (exit 0 or 3).
pub fn status_at(placement: &Placement) -> Result<Value> {
    let out = std::process::Command::new(swarmlb_binary()?)
        .args(["status", "--json"])
        .args(placement.pin_args())
        .output()
        .context("running swarmlb status")?;
    if !matches!(out.status.code(), Some(0 | 3)) {
        bail!("swarmlb status: {}: {}", out.status, String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(&text).with_context(|| format!("status --json printed {text:?}"))
}

/// `swarmlb status` (the table) and its exit code.
pub fn status_text_at(placement: &Placement) -> Result<(String, Option<i32>)> {
    let out = std::process::Command::new(swarmlb_binary()?).arg("status").args(placement.pin_args()).output()?;
    Ok((String::from_utf8_lossy(&out.stdout).into_owned(), out.status.code()))
}
