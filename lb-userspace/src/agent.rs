//! `swarmlb run`: the agent's life. Validates the config, loads and attaches the datapath, makes
//! the maps match the plan (a full sync, since the maps may hold anything a previous run left),
//! then keeps them in step: a SIGHUP or a change of the file re-reads it and writes only the
//! diff. A bad file on reload is logged and the last good state keeps serving. SIGINT/SIGTERM
//! end the agent, leaving maps and links pinned so the datapath keeps serving.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::{
    EBPF_OBJECT,
    cli::RunArgs,
    datapath::{pins, writer::Writer},
    host,
    planner::{self, Plan},
    source::file,
    state,
};

/// How often the config file's mtime and the node's addresses are checked.
const POLL: Duration = Duration::from_secs(1);

pub async fn run(args: RunArgs) -> Result<()> {
    // Nothing touches the kernel before the config is known to be good.
    let local = args.node.as_deref();
    let cluster = file::load(&args.config, local)?;
    let state_dir = args.dirs.state_dir();
    let pin_dir = args.dirs.pin_dir.clone();
    let saved = state::load(&state_dir).unwrap_or_else(|e| {
        warn!(error = format!("{e:#}"), "ignoring unreadable state file; ids start afresh");
        None
    });
    let plan = planner::plan(&cluster, local, &saved.unwrap_or_default()).context("planning")?;
    match local.and_then(|name| cluster.node(name)) {
        Some(node) => info!(
            nodes = cluster.nodes.len(),
            networks = cluster.networks.len(),
            "this agent is swarm node {:?} ({})",
            node.name,
            node.addr
        ),
        None => info!("single-node configuration (no --node)"),
    }
    info!(pin_dir = %pin_dir.display(), state_dir = %state_dir.display(), "datapath directories");

    host::prepare_sysctls(&args.ifaces);
    host::check_snat_range(plan.node.snat_ports);
    let ifindexes = args.ifaces.iter().map(|i| host::ifindex(i)).collect::<Result<Vec<_>>>()?;
    pins::load_and_attach(EBPF_OBJECT, &pin_dir, &args.ifaces, args.xdp_mode.into())?;

    let mut writer = Writer::open(&pin_dir)?;
    writer.add_tx_ports(&ifindexes)?;
    let addrs = host::local_ipv4_addrs()?;
    writer.sync_local_addrs(&addrs)?;
    info!(count = addrs.len(), "local addresses programmed");

    let mut agent = Agent { writer, applied: None, config: args.config.clone(), node: args.node.clone(), state_dir };
    agent.apply(plan)?;
    agent.serve().await
}

struct Agent {
    writer: Writer,
    /// What the maps hold; `None` if a write failed and the next apply must be a full sync.
    applied: Option<Plan>,
    config: PathBuf,
    /// `--node`: which swarm node this agent is.
    node: Option<String>,
    state_dir: PathBuf,
}

impl Agent {
    async fn serve(&mut self) -> Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let mut ticks = tokio::time::interval(POLL);
        let mut seen = mtime(&self.config);
        loop {
            tokio::select! {
                _ = hup.recv() => {
                    info!("SIGHUP: reloading {}", self.config.display());
                    seen = mtime(&self.config);
                    self.reload();
                }
                _ = ticks.tick() => {
                    let now = mtime(&self.config);
                    if now != seen {
                        seen = now;
                        info!("{} changed: reloading", self.config.display());
                        self.reload();
                    }
                    self.refresh_addrs();
                }
                _ = int.recv() => break,
                _ = term.recv() => break,
            }
        }
        info!("exiting; the datapath stays attached and keeps serving (`swarmlb unload` removes it)");
        Ok(())
    }

    /// Re-reads the config; on any error the last good state keeps serving.
    fn reload(&mut self) {
        let local = self.node.as_deref();
        let result = file::load(&self.config, local)
            .map_err(anyhow::Error::from)
            .and_then(|cluster| {
                let prev = self.applied.clone().or_else(|| state::load(&self.state_dir).ok().flatten()).unwrap_or_default();
                Ok(planner::plan(&cluster, local, &prev)?)
            })
            .and_then(|plan| self.apply(plan));
        if let Err(e) = result {
            error!("reload rejected, still serving the last good configuration: {e:#}");
        }
    }

    fn apply(&mut self, plan: Plan) -> Result<()> {
        let full = self.applied.is_none();
        let diff = planner::diff(self.applied.as_ref(), &plan);
        if !full && diff.summary.is_empty() && diff == planner::Diff::default() {
            if self.applied.as_ref() != Some(&plan) {
                // Only what status shows changed (e.g. the node a task runs on).
                state::save(&self.state_dir, &plan)?;
                self.applied = Some(plan);
                info!("applied: no map changes (names only)");
            } else {
                info!("config unchanged");
            }
            return Ok(());
        }
        // Until the writes are done, the maps are in between plans.
        let previous = self.applied.take();
        self.writer.apply(&diff).inspect_err(|_| self.applied = None)?;
        let swept = if full { self.writer.sweep(&plan)? } else { 0 };
        state::save(&self.state_dir, &plan)?;
        let counts = format!(
            "{} services, {} backends, {} frontends",
            plan.services.len(),
            plan.backend_count(),
            plan.frontend_count()
        );
        if full {
            info!("applied: {counts} (full sync, {swept} stale entries removed)");
        } else {
            info!("applied: {counts} (changed: {})", diff.summary);
        }
        drop(previous);
        self.applied = Some(plan);
        Ok(())
    }

    fn refresh_addrs(&mut self) {
        match host::local_ipv4_addrs().and_then(|a| self.writer.sync_local_addrs(&a)) {
            Ok(true) => info!("local addresses changed; slb_local_addrs updated"),
            Ok(false) => {}
            Err(e) => warn!("cannot refresh local addresses: {e:#}"),
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}
