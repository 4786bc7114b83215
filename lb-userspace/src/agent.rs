//! `swarmlb run`: the agent's life. Gets a first desired state from its source (a file, or the
//! Docker Engine), loads and attaches the datapath, makes the maps match the plan (a full sync,
//! since the maps may hold anything a previous run left), then keeps them in step: every later
//! [`Update`] from the source is planned and only the diff written — one code path for both
//! sources. A bad update (a file with errors, an Engine that does not answer) is logged and the
//! last good state keeps serving. SIGINT/SIGTERM end the agent, leaving maps and links pinned so
//! the datapath keeps serving.
//!
//! Sources: `file` re-reads the config on SIGHUP or when its mtime changes;
//! `docker` ([`crate::source::docker`]) runs as its own task and sends updates through a watch
//! channel. With the Docker source, every overlay network a service uses has its load-balancer
//! endpoint taken over ([`takeover::Takeover::ensure`], in full only when something changed)
//! before each apply, and the XDP program attached to the interface that gives (pinned
//! `link_<ifname>`, added to `slb_tx_ports`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result, bail};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{debug, error, info, warn};

use crate::{
    cli::{AUTO, METRICS_PORT, MetricsAddr, RunArgs, SourceKind},
    datapath::{
        pins::{self, Loaded},
        sockets,
        tables::{self, Tables},
        upgrade::MapSizes,
        writer::Writer,
    },
    health::{self, Attachment, Heartbeat},
    host,
    metrics::{self, SyncStatus},
    model::Cluster,
    programmer::Programmer,
    source::{docker, file},
    takeover,
};

/// How often the config file's mtime and the node's addresses are checked.
const POLL: Duration = Duration::from_secs(1);

/// A desired state from a source.
#[derive(Clone, Debug, PartialEq)]
pub struct Update {
    pub cluster: Cluster,
    /// Which swarm node of `cluster` this agent is (`None`: single-node).
    pub local: Option<String>,
    /// The first event this update answers (Docker source): "synced in N ms after event".
    pub trigger: Option<Instant>,
    /// When the source started reading this state (the lag of an update no event triggered).
    pub read_at: Instant,
    /// What the source left out and why (for `/metrics` and `/healthz`).
    pub notes: Vec<String>,
}

impl Update {
    fn from_file(cluster: Cluster, local: Option<String>, read_at: Instant) -> Update {
        Update { cluster, local, trigger: None, read_at, notes: Vec::new() }
    }
}

enum Source {
    File { config: PathBuf, node: Option<String>, seen: Option<SystemTime> },
    Docker { rx: watch::Receiver<Option<Update>> },
}

pub async fn run(args: RunArgs) -> Result<()> {
    let object = crate::ebpf_object()?;
    let state_dir = args.dirs.state_dir();
    let pin_dir = args.dirs.pin_dir.clone();
    let status = Arc::new(SyncStatus::new());
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;

    // Nothing touches the kernel before the source has given a good state.
    let (source, first) = match args.source {
        SourceKind::File => {
            let config = file_config(&args)?;
            let local = args.node.clone();
            let read_at = Instant::now();
            let cluster = file::load(&config, local.as_deref())?;
            let seen = mtime(&config);
            (Source::File { config, node: local.clone(), seen }, Update::from_file(cluster, local, read_at))
        }
        SourceKind::Docker => {
            if args.node.is_some() {
                bail!("--node is for --source file; the Docker source asks the Engine which node this is");
            }
            let host = args.docker_host.clone();
            docker::engine::socket_path(&host)?;
            let (tx, mut rx) = watch::channel(None);
            let resync = Duration::from_secs(args.resync_interval);
            tokio::spawn(docker::run(host.clone(), resync, tx, status.clone()));
            info!("waiting for the Docker Engine at {host}");
            let first = loop {
                tokio::select! {
                    changed = rx.changed() => {
                        changed.context("the Docker source stopped")?;
                        if let Some(u) = rx.borrow_and_update().clone() {
                            break u;
                        }
                    }
                    _ = int.recv() => return Ok(()),
                    _ = term.recv() => return Ok(()),
                }
            };
            (Source::Docker { rx }, first)
        }
    };
    let local = first.local.as_deref();
    match local.and_then(|name| first.cluster.node(name)) {
        Some(node) => info!(
            nodes = first.cluster.nodes.len(),
            networks = first.cluster.networks.len(),
            "this agent is swarm node {:?} ({})",
            node.name,
            node.addr
        ),
        None => info!("single-node configuration (no --node)"),
    }
    info!(pin_dir = %pin_dir.display(), state_dir = %state_dir.display(), "datapath directories");

    let node_addr = local.and_then(|name| first.cluster.node(name)).map(|n| n.addr);
    let ifaces = resolve_ifaces(&args.ifaces, node_addr)?;
    let metrics_addr = match args.metrics_addr {
        MetricsAddr::Off => None,
        MetricsAddr::At(addr) => Some(addr),
        MetricsAddr::Auto => node_addr
            .or_else(|| ifaces.first().and_then(|i| host::iface_addr(i)))
            .map(|ip| SocketAddr::from((ip, METRICS_PORT))),
    };
    if let Some(addr) = metrics_addr {
        let (pin_dir, state_dir, status) = (pin_dir.clone(), state_dir.clone(), status.clone());
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, pin_dir, state_dir, status).await {
                error!("metrics server stopped: {e:#}");
            }
        });
    }

    host::prepare_sysctls(&ifaces);
    host::check_snat_range(first.cluster.node.snat_ports);
    let ifindexes = ifaces.iter().map(|i| host::ifindex(i)).collect::<Result<Vec<_>>>()?;
    let sizes = MapSizes { conntrack: args.max_connections * 2 };
    let given_cgroup = (args.cgroup != AUTO).then(|| Path::new(&args.cgroup));
    let cgroup = sockets::cgroup(given_cgroup)?;
    // Only Docker's containers start faster than the agent hears of them; a cgroup given for a
    // test is not the node's root, below which Docker's cgroup sits.
    let containers = matches!(args.source, SourceKind::Docker) && given_cgroup.is_none();
    let sock_config = containers.then(|| sockets::containers_cgroup(&cgroup)).flatten().unwrap_or_default();
    let loaded = pins::load(object, &pin_dir, &sizes, args.xdp_mode.into())?;

    let mut writer = Writer::open(&pin_dir)?;
    writer.add_tx_ports(&ifindexes)?;
    let addrs = host::local_ipv4_addrs()?;
    writer.sync_local_addrs(&addrs)?;
    info!(count = addrs.len(), "local addresses programmed");

    // The file source describes overlays someone else wired (the tests' virtual swarm); the
    // Docker source takes Docker's endpoints over.
    let takeover = matches!(source, Source::Docker { .. }).then(takeover::Takeover::default);
    let mut agent = Agent {
        programmer: Arc::new(std::sync::Mutex::new(Programmer::new(writer, state_dir.clone()))),
        left_out: Vec::new(),
        unregistered: Vec::new(),
        loaded,
        pin_dir: pin_dir.clone(),
        state_dir,
        takeover,
        attached: BTreeMap::new(),
        takeover_errors: BTreeMap::new(),
        status,
        node: first.local.clone(),
        started_ns: tables::monotonic_ns()?,
        restart: None,
    };
    agent.take_over(&first.cluster, local).await;
    if let Some(e) = agent.restart.take() {
        agent.beat(true);
        return Err(e);
    }
    let result = agent.program(&first).await;
    agent.record(&result, &first);
    result?;
    // The maps hold the plan: only now do the interfaces get (or switch to) the new program.
    for (iface, ifindex) in ifaces.iter().zip(&ifindexes) {
        agent.loaded.attach(iface)?;
        agent.attached.insert(iface.clone(), attachment(&agent.loaded, iface, *ifindex).await);
    }
    sockets::configure(&pin_dir, sock_config)?;
    agent.loaded.attach_sockets(&cgroup)?;
    agent.loaded.finish_upgrade()?;
    agent.beat(false);
    let served = agent.serve(source, int, term).await;
    agent.beat(true);
    served
}

/// The file source's `--config`. The command line leaves it optional (the Docker source needs
/// none), so its absence is refused here.
fn file_config(args: &RunArgs) -> Result<PathBuf> {
    args.config.clone().context("--source file needs --config FILE")
}

/// `--iface` as given, with `auto` replaced by the client-facing interface.
fn resolve_ifaces(given: &[String], node_addr: Option<Ipv4Addr>) -> Result<Vec<String>> {
    let mut ifaces = Vec::with_capacity(given.len());
    for iface in given {
        if iface != AUTO {
            ifaces.push(iface.clone());
            continue;
        }
        let (found, why) = host::client_facing_iface(node_addr)?;
        info!(iface = found, "--iface auto: {why}");
        if !ifaces.contains(&found) {
            ifaces.push(found);
        }
    }
    Ok(ifaces)
}

/// What `health.json` says about an interface the programs were just attached to.
async fn attachment(loaded: &Loaded, iface: &str, ifindex: u32) -> Attachment {
    let xdp_mode = host::xdp_mode(ifindex).await.unwrap_or_else(|e| {
        warn!(iface, "cannot read the XDP mode: {e:#}");
        "unknown"
    });
    Attachment {
        iface: iface.to_owned(),
        ifindex,
        xdp_mode: xdp_mode.to_owned(),
        neigh_handoff: loaded.has_handoff(iface),
    }
}

struct Agent {
    programmer: Arc<std::sync::Mutex<Programmer>>,
    /// What the last plan left out, for `/healthz`.
    left_out: Vec<String>,
    /// Members whose namespace could not be registered at the last write, in words.
    unregistered: Vec<String>,
    loaded: Loaded,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    /// The overlay endpoints taken over before each apply (Docker source only).
    takeover: Option<takeover::Takeover>,
    /// Interfaces the programs are attached to (by this run).
    attached: BTreeMap<String, Attachment>,
    /// The last takeover error per network, to log each once.
    takeover_errors: BTreeMap<String, String>,
    status: Arc<SyncStatus>,
    /// The swarm node this agent is, for the heartbeat.
    node: Option<String>,
    started_ns: u64,
    /// Set when only a fresh process can go on (see [`takeover::HiddenNetns`]).
    restart: Option<anyhow::Error>,
}

impl Agent {
    async fn serve(
        &mut self,
        mut source: Source,
        mut int: tokio::signal::unix::Signal,
        mut term: tokio::signal::unix::Signal,
    ) -> Result<()> {
        let mut hup = signal(SignalKind::hangup())?;
        let mut ticks = tokio::time::interval(POLL);
        let mut sweeps = tokio::time::interval(tables::SWEEP_INTERVAL);
        loop {
            let docker_update = async {
                match &mut source {
                    Source::Docker { rx } => rx.changed().await.map(|()| rx.borrow_and_update().clone()),
                    Source::File { .. } => std::future::pending().await,
                }
            };
            tokio::select! {
                update = docker_update => match update {
                    Ok(Some(update)) => {
                        self.update(Ok(update)).await;
                        if let Some(e) = self.restart.take() {
                            return Err(e);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => bail!("the Docker source stopped"),
                },
                _ = hup.recv() => {
                    if let Source::File { config, node, seen } = &mut source {
                        info!("SIGHUP: reloading {}", config.display());
                        *seen = mtime(config);
                        let read_at = Instant::now();
                        let loaded = file::load(config, node.as_deref()).map_err(anyhow::Error::from);
                        self.update(loaded.map(|cluster| Update::from_file(cluster, node.clone(), read_at))).await;
                    } else {
                        info!("SIGHUP ignored: the Docker source follows the Engine's events");
                    }
                }
                _ = ticks.tick() => {
                    if let Source::File { config, node, seen } = &mut source {
                        let now = mtime(config);
                        if now != *seen {
                            *seen = now;
                            info!("{} changed: reloading", config.display());
                            let read_at = Instant::now();
                            let loaded = file::load(config, node.as_deref()).map_err(anyhow::Error::from);
                            self.update(loaded.map(|cluster| Update::from_file(cluster, node.clone(), read_at))).await;
                        }
                    }
                    self.refresh_addrs();
                    self.beat(false);
                }
                _ = sweeps.tick() => self.sweep_tables().await,
                _ = int.recv() => break,
                _ = term.recv() => break,
            }
        }
        info!("exiting; the datapath stays attached and keeps serving (`swarmlb unload` removes it)");
        Ok(())
    }

    /// Plans and applies a new desired state; on any error the last good state keeps serving.
    async fn update(&mut self, update: Result<Update>) {
        let update = match update {
            Ok(u) => u,
            Err(e) => {
                error!("update rejected, still serving the last good state: {e:#}");
                self.status.record_err(format!("{e:#}"));
                return;
            }
        };
        self.take_over(&update.cluster, update.local.as_deref()).await;
        let result = self.program(&update).await;
        if let Err(e) = &result {
            error!("update rejected, still serving the last good state: {e:#}");
        }
        self.record(&result, &update);
    }

    /// Plans and writes `update` off the async runtime.
    async fn program(&mut self, update: &Update) -> Result<()> {
        let programmed =
            Programmer::program(&self.programmer, Arc::new(update.cluster.clone()), update.local.clone()).await?;
        self.left_out = programmed.left_out.iter().map(|l| l.to_string()).collect();
        for note in &self.left_out {
            warn!("{note}");
        }
        // Logged once each by the member writer; shown as problems while they last.
        self.unregistered = programmed
            .members
            .failed
            .iter()
            .map(|(name, why)| format!("namespace of {name:?} not registered for socket load balancing: {why}"))
            .collect();
        Ok(())
    }

    fn record(&self, result: &Result<()>, update: &Update) {
        match result {
            Ok(()) => {
                if let Some(t) = update.trigger {
                    info!("synced in {} ms after event", t.elapsed().as_millis());
                }
                // An update no event triggered (start, periodic resync, file) counts from its read.
                self.status.record_ok(update.trigger.unwrap_or(update.read_at).elapsed());
                let mut problems = update.notes.clone();
                problems.extend(self.left_out.iter().cloned());
                problems.extend(self.unregistered.iter().cloned());
                problems.extend(self.takeover_errors.iter().map(|(net, e)| format!("network {net:?}: takeover: {e}")));
                self.status.set_problems(problems);
            }
            Err(e) => self.status.record_err(format!("{e:#}")),
        }
    }

    /// Before an apply: every overlay network a service uses gets its endpoint taken over, and
    /// the program attached to the interface that gives (and that interface put in
    /// `slb_tx_ports`); overlays no service uses any more are given back. A network whose
    /// takeover fails is logged (once per distinct error) and its services are still programmed:
    /// the maps stay true to the swarm, and the next apply retries.
    async fn take_over(&mut self, cluster: &Cluster, local: Option<&str>) {
        let Some(mut takeover) = self.takeover.take() else { return };
        // A VIP service is reached by sockets, not packets: its network needs no takeover.
        let used: BTreeSet<&str> =
            cluster.services.iter().filter(|s| !s.vip).filter_map(|s| s.network.as_deref()).collect();
        let (mut full, mut cached) = (0, 0);
        let mut kept = BTreeSet::new();
        for name in &used {
            let Some(network) = cluster.network(name) else { continue };
            let Some(endpoint) = local.and_then(|l| network.endpoint(l)) else { continue };
            kept.insert(network.vni);
            let tasks: BTreeSet<Ipv4Addr> = cluster
                .services
                .iter()
                .filter(|s| s.network.as_deref() == Some(*name) && !s.vip)
                .flat_map(|s| s.backends.iter().map(|b| *b.addr.ip()))
                .collect();
            let ran = match takeover.ensure(network, endpoint, &tasks).await {
                Ok((a, run)) if self.attached.get(&a.iface).map(|x| x.ifindex) != Some(a.ifindex) => {
                    self.attach_endpoint(name, &a.iface, a.ifindex).await.map(|()| run)
                }
                other => other.map(|(_, run)| run),
            };
            match ran {
                Ok(takeover::Run::Full) => full += 1,
                Ok(takeover::Run::Cached) => cached += 1,
                Err(_) => {}
            }
            if !self.note_takeover(name, ran.map(|_| ())) {
                self.takeover = Some(takeover);
                return;
            }
        }
        let released = takeover.release_gone(&kept).await;
        for iface in &released {
            self.attached.remove(iface);
        }
        self.takeover_errors.retain(|name, _| used.contains(name.as_str()));
        self.takeover = Some(takeover);
        debug!(full, cached, released = released.len(), "overlay endpoint takeovers");
    }

    /// Logs a network's takeover result (each distinct error once). `false`: only a restart
    /// helps (set in `restart`).
    fn note_takeover(&mut self, network: &str, result: Result<()>) -> bool {
        match result {
            Err(e) if e.downcast_ref::<takeover::HiddenNetns>().is_some() => {
                error!("{e:#}; exiting so that swarm starts the agent again (the datapath keeps serving)");
                self.restart = Some(e);
                return false;
            }
            Ok(()) => {
                if self.takeover_errors.remove(network).is_some() {
                    info!(network, "overlay endpoint takeover works again");
                }
            }
            Err(e) => {
                let e = format!("{e:#}");
                if self.takeover_errors.get(network) != Some(&e) {
                    warn!(network, "overlay endpoint takeover failed: {e}");
                    self.takeover_errors.insert(network.to_owned(), e);
                }
            }
        }
        true
    }

    async fn attach_endpoint(&mut self, network: &str, iface: &str, ifindex: u32) -> Result<()> {
        host::prepare_sysctls(&[iface.to_owned()]);
        self.loaded.attach(iface)?;
        self.programmer().writer().add_tx_ports(&[ifindex])?;
        info!(network, iface, ifindex, "overlay endpoint taken over; XDP attached");
        let attachment = attachment(&self.loaded, iface, ifindex).await;
        self.attached.insert(iface.to_owned(), attachment);
        Ok(())
    }

    /// The writer, for the small writes made on the async thread (never during a
    /// [`Programmer::program`]: the agent's loop awaits those).
    fn programmer(&self) -> std::sync::MutexGuard<'_, Programmer> {
        self.programmer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes `health.json`: alive (or, with `exited`, gone), how the last sync went, and what
    /// is attached. A failed write is logged: status then reports the agent as not running.
    fn beat(&self, exited: bool) {
        let beat = tables::monotonic_ns().map(|now| Heartbeat {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            node: self.node.clone(),
            started_ns: self.started_ns,
            beat_ns: now,
            exited,
            sync: self.status.snapshot(),
            interfaces: self.attached.values().cloned().collect(),
        });
        if let Err(e) = beat.and_then(|b| health::write(&self.state_dir, &b)) {
            warn!("cannot write the heartbeat: {e:#}");
        }
    }

    /// Removes idled-out connection entries (off the async thread: the read is proportional to
    /// the tables) and releases the ports of removed frontends whose connections have all ended.
    async fn sweep_tables(&mut self) {
        let pin_dir = self.pin_dir.clone();
        let swept = tokio::task::spawn_blocking(move || Tables::open(&pin_dir)?.sweep())
            .await
            .map_err(anyhow::Error::from)
            .and_then(|r| r);
        let released = swept.and_then(|swept| {
            if swept.removed > 0 {
                debug!(removed = swept.removed, "idled-out connection entries removed");
            }
            self.programmer().writer().release_ports(&swept.client_ports)
        });
        match released {
            Ok(ports) if !ports.is_empty() => {
                info!(?ports, "the last connections of removed frontends ended; ports released")
            }
            Ok(_) => {}
            Err(e) => warn!("connection table sweep failed: {e:#}"),
        }
    }

    fn refresh_addrs(&mut self) {
        match host::local_ipv4_addrs().and_then(|a| self.programmer().writer().sync_local_addrs(&a)) {
            Ok(true) => info!("local addresses changed; slb_local_addrs updated"),
            Ok(false) => {}
            Err(e) => warn!("cannot refresh local addresses: {e:#}"),
        }
    }
}

fn mtime(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn run_args(args: &[&str]) -> RunArgs {
        match Cli::try_parse_from(args).unwrap().command {
            Command::Run(run) => run,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_file_source_is_refused_without_config() {
        let e = file_config(&run_args(&["swarmlb", "run", "--iface", "eth0"])).unwrap_err();
        assert_eq!(e.to_string(), "--source file needs --config FILE");
        let args = run_args(&["swarmlb", "run", "--iface", "eth0", "--config", "c.toml"]);
        assert_eq!(file_config(&args).unwrap(), PathBuf::from("c.toml"));
    }
}
