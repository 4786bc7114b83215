//! `swarmlb status`: joins the datapath's counters with the names in `state.json` and the
//! agent's heartbeat (`health.json`) into a report, printed as a table or as JSON. Its
//! `problems` are what `/healthz` answers with: an empty list is the only healthy state.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    datapath::{
        reader::Counters,
        tables::{Tables, monotonic_ns},
    },
    health::{self, Attachment, Heartbeat, Liveness},
    state,
};

/// `swarmlb status` exits with this when no agent is running: it still prints the report.
pub const EXIT_AGENT_NOT_RUNNING: i32 = 3;

/// A NAT port range or connection table this full (in percent) is warned about.
pub const WARN_FULL_PERCENT: u64 = 80;

#[derive(Debug, Serialize)]
pub struct Report {
    /// The swarm node the running agent is (`--node`), if any.
    pub node: Option<String>,
    pub agent: AgentReport,
    /// Interfaces the datapath runs on, as the agent last attached them.
    pub interfaces: Vec<Attachment>,
    pub services: Vec<ServiceReport>,
    /// Every reason, by name.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Every connection-table event, by name.
    pub events: BTreeMap<&'static str, u64>,
    pub socket_lb: SocketLbReport,
    /// Entries of the main connection table (two per established connection).
    pub conntrack_entries: usize,
    pub conntrack_capacity: u32,
    /// Entries of the new-flow table (two per unconfirmed connection).
    pub new_flow_entries: usize,
    pub new_flow_capacity: u32,
    /// Everything an operator should act on, in words: an agent that is not running, a failing
    /// sync, what the last sync left out, NAT port ranges and tables past [`WARN_FULL_PERCENT`].
    pub problems: Vec<String>,
}

/// Socket load balancing: which namespaces it covers and what its programs did.
#[derive(Debug, Serialize)]
pub struct SocketLbReport {
    /// The namespaces the agent balances, by name (a container's, `host`).
    pub members: Vec<String>,
    /// Namespaces registered in the datapath (fewer than `members` when some could not be
    /// resolved: the agent logs why).
    pub registered: usize,
    /// Every socket-program event, by name.
    pub events: BTreeMap<&'static str, u64>,
}

/// Whether an agent keeps these maps in step with the swarm, from its heartbeat.
#[derive(Debug, Serialize)]
pub struct AgentReport {
    pub state: Liveness,
    pub pid: Option<u32>,
    pub version: Option<String>,
    pub heartbeat_age_s: Option<f64>,
    pub uptime_s: Option<f64>,
    /// Seconds since the last successful sync (source -> maps).
    pub last_sync_age_s: Option<f64>,
    /// Seconds from the event or read that triggered the last good sync to its maps written.
    pub last_sync_lag_s: Option<f64>,
    pub sync_ok: bool,
    /// Failed syncs since the agent started.
    pub sync_failures: u64,
}

impl AgentReport {
    fn from_beat(beat: Option<&Heartbeat>, now_ns: u64) -> AgentReport {
        let (state, age) = health::liveness(beat, now_ns);
        let secs = |ns: u64| Duration::from_nanos(ns).as_secs_f64();
        AgentReport {
            state,
            pid: beat.map(|b| b.pid),
            version: beat.map(|b| b.version.clone()),
            heartbeat_age_s: age.map(|a| a.as_secs_f64()),
            uptime_s: beat.map(|b| secs(b.beat_ns.saturating_sub(b.started_ns))),
            last_sync_age_s: beat
                .and_then(|b| b.sync.last_success)
                .map(|t| SystemTime::now().duration_since(t).unwrap_or_default().as_secs_f64()),
            last_sync_lag_s: beat.and_then(|b| b.sync.last_lag).map(|lag| lag.as_secs_f64()),
            sync_ok: beat.is_some_and(|b| b.sync.ok),
            sync_failures: beat.map_or(0, |b| b.sync.failures),
        }
    }
}

/// What the heartbeat says is wrong, first of the problems.
fn agent_problems(agent: &AgentReport, beat: Option<&Heartbeat>) -> Vec<String> {
    let mut problems = Vec::new();
    match (agent.state, beat) {
        (Liveness::NeverStarted, _) | (_, None) => {
            problems.push("no agent has run: the datapath serves what is in its maps, following nothing".into())
        }
        (Liveness::NotRunning, Some(beat)) => problems.push(format!(
            "agent not running: last heartbeat {} ago{}; the datapath keeps serving the state of then, \
             task changes since are not applied",
            ago(agent.heartbeat_age_s.unwrap_or_default()),
            if beat.exited { " (it exited)" } else { "" }
        )),
        (Liveness::Running, Some(beat)) => {
            if !beat.sync.attempted {
                problems.push("agent starting: no sync yet".into());
            } else if !beat.sync.ok {
                problems.push(format!("sync failing, serving the last good state: {}", beat.sync.message));
            }
            problems.extend(beat.sync.problems.iter().cloned());
        }
    }
    problems
}

/// `93 s`, `12 min`, `5 h`: an age at a glance.
fn ago(secs: f64) -> String {
    match secs {
        s if s < 120.0 => format!("{s:.0} s"),
        s if s < 7200.0 => format!("{:.0} min", s / 60.0),
        s => format!("{:.0} h", s / 3600.0),
    }
}

#[derive(Debug, Serialize)]
pub struct ServiceReport {
    pub id: u32,
    pub name: String,
    pub frontends: Vec<String>,
    pub sticky: bool,
    /// The overlay network its tasks are on, if any.
    pub network: Option<String>,
    /// Source addresses of translated packets, comma-separated.
    pub nat_addr: String,
    /// What backends see as the source: `nat` (the node's NAT address) or `client` (the
    /// client's own address).
    pub source: &'static str,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendReport>,
}

#[derive(Debug, Serialize)]
pub struct BackendReport {
    pub id: u32,
    pub name: String,
    pub addr: String,
    pub weight: u32,
    /// The swarm node the task runs on, when known.
    pub node: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// NAT source ports its live connections hold (each connection holds one).
    pub nat_ports: u64,
    /// NAT source ports it can have: the service's port range times its SNAT addresses.
    pub nat_port_capacity: u64,
}

pub fn collect(pin_dir: &Path, state_dir: &Path) -> Result<Report> {
    let counters = Counters::open(pin_dir).with_context(|| {
        format!("no swarmlb datapath is pinned in {} (has `swarmlb run` started?)", pin_dir.display())
    })?;
    let plan = state::load(state_dir)?.unwrap_or_default();
    let now = monotonic_ns()?;
    let scan = Tables::open(pin_dir)?.scan(now)?;
    let nat_in_use = scan.nat_ports_by_backend();
    let beat = health::read(state_dir);
    let agent = AgentReport::from_beat(beat.as_ref(), now);
    let mut problems = agent_problems(&agent, beat.as_ref());
    let mut services = Vec::new();
    for s in &plan.services {
        let t = counters.service(s.id)?;
        let (lo, hi) = plan.node.snat_ports;
        let addrs: Vec<String> = s.nat_addrs().map(|a| a.to_string()).collect();
        let capacity = (u64::from(hi - lo) + 1) * addrs.len() as u64;
        let mut backends = Vec::new();
        for b in &s.backends {
            let bt = counters.backend(b.id)?;
            let used = nat_in_use.get(&b.id).copied().unwrap_or(0);
            if used * 100 >= capacity * WARN_FULL_PERCENT {
                problems.push(format!(
                    "service {:?} backend {:?}: {used} of {capacity} NAT ports in use (range {lo}-{hi} on {})",
                    s.name,
                    b.name,
                    addrs.join(", ")
                ));
            }
            backends.push(BackendReport {
                id: b.id,
                name: b.name.clone(),
                addr: b.addr.to_string(),
                weight: b.weight,
                node: b.node.clone(),
                packets: bt.packets,
                bytes: bt.bytes,
                new_flows: bt.new_flows,
                nat_ports: used,
                nat_port_capacity: capacity,
            });
        }
        services.push(ServiceReport {
            id: s.id,
            name: s.name.clone(),
            frontends: s.frontends.iter().map(ToString::to_string).collect(),
            sticky: s.sticky,
            network: s.network.clone(),
            nat_addr: addrs.join(","),
            source: if s.client_source { "client" } else { "nat" },
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
            backends,
        });
    }
    let reasons = counters.reasons()?.into_iter().map(|(r, n)| (r.name(), n)).collect();
    let events = counters.events()?.into_iter().map(|(e, n)| (e.name(), n)).collect();
    let socket_lb = SocketLbReport {
        members: plan.members.iter().map(|m| m.name.clone()).collect(),
        registered: counters.registered_namespaces(),
        events: counters.sock_events()?.into_iter().map(|(e, n)| (e.name(), n)).collect(),
    };
    let (conntrack_entries, new_flow_entries) = scan.live_counts();
    let conntrack_capacity = capacity(pin_dir, lb_common::maps::CONNTRACK)?;
    let new_flow_capacity = capacity(pin_dir, lb_common::maps::NEW_FLOWS)?;
    for (what, entries, size) in [
        ("connection table", conntrack_entries, conntrack_capacity),
        ("new-flow table", new_flow_entries, new_flow_capacity),
    ] {
        if entries as u64 * 100 >= u64::from(size) * WARN_FULL_PERCENT {
            problems.push(format!("{what}: {entries} of {size} entries in use"));
        }
    }
    Ok(Report {
        node: plan.local_node.clone(),
        agent,
        interfaces: beat.map(|b| b.interfaces).unwrap_or_default(),
        services,
        reasons,
        events,
        socket_lb,
        conntrack_entries,
        conntrack_capacity,
        new_flow_entries,
        new_flow_capacity,
        problems,
    })
}

/// A pinned table's `max_entries` (the connection table's is set at load, `--max-connections`).
fn capacity(pin_dir: &Path, name: &str) -> Result<u32> {
    let path = crate::datapath::pin_path(pin_dir, name);
    let map = aya::maps::MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(map.info().with_context(|| format!("reading {name}'s size"))?.max_entries())
}

/// The human-readable form: services with their backends, nonzero reasons, connection count.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(node) = &report.node {
        let _ = writeln!(out, "swarm node: {node}");
    }
    let a = &report.agent;
    let _ = match a.state {
        Liveness::Running => writeln!(
            out,
            "agent: running (pid {}, version {}, up {}), last sync {}",
            a.pid.unwrap_or_default(),
            a.version.as_deref().unwrap_or("?"),
            ago(a.uptime_s.unwrap_or_default()),
            match a.last_sync_age_s {
                Some(s) => format!(
                    "{} ago{}{}",
                    ago(s),
                    a.last_sync_lag_s.map(|lag| format!(" (took {:.0} ms)", lag * 1000.0)).unwrap_or_default(),
                    if a.sync_ok { "" } else { ", now failing" }
                ),
                None => "never".into(),
            }
        ),
        Liveness::NotRunning => {
            writeln!(out, "agent: NOT RUNNING (last heartbeat {} ago)", ago(a.heartbeat_age_s.unwrap_or_default()))
        }
        Liveness::NeverStarted => writeln!(out, "agent: NEVER STARTED"),
    };
    for i in &report.interfaces {
        let _ = writeln!(
            out,
            "interface {} (ifindex {}): XDP {}, neighbour hand-off {}",
            i.iface,
            i.ifindex,
            i.xdp_mode,
            if i.neigh_handoff { "attached" } else { "not attached" }
        );
    }
    let _ = writeln!(out);
    let row = |out: &mut String, id: String, name: String, weight: String, t: (u64, u64, u64), at: String| {
        let _ = writeln!(out, "{id:<5} {name:<24} {weight:>6} {:>12} {:>14} {:>10}  {at}", t.0, t.1, t.2);
    };
    let header = ("ID", "SERVICE / BACKEND", "WEIGHT", "PACKETS", "BYTES", "NEW FLOWS");
    let _ = writeln!(
        out,
        "{:<5} {:<24} {:>6} {:>12} {:>14} {:>10}  FRONTENDS / ADDRESS",
        header.0, header.1, header.2, header.3, header.4, header.5
    );
    for s in &report.services {
        let mut at = s.frontends.join(" ") + if s.sticky { " (sticky)" } else { "" };
        match &s.network {
            Some(network) if s.nat_addr.is_empty() => {
                let _ = write!(at, "  VIP on network {network} (socket LB)");
            }
            Some(network) if s.source == "client" => {
                let _ = write!(at, "  network {network} from the client's address");
            }
            Some(network) => {
                let _ = write!(at, "  network {network} from {}", s.nat_addr);
            }
            None if s.source == "client" => at.push_str("  from the client's address"),
            None => {}
        }
        row(&mut out, s.id.to_string(), s.name.clone(), String::new(), (s.packets, s.bytes, s.new_flows), at);
        for b in &s.backends {
            let at = match &b.node {
                Some(node) => format!("{} on {node}", b.addr),
                None => b.addr.clone(),
            };
            let at = format!("{at}  nat ports {}/{}", b.nat_ports, b.nat_port_capacity);
            row(
                &mut out,
                format!("  {}", b.id),
                format!("  {}", b.name),
                b.weight.to_string(),
                (b.packets, b.bytes, b.new_flows),
                at,
            );
        }
    }
    if report.services.is_empty() {
        let _ = writeln!(out, "(no services applied)");
    }
    let _ = writeln!(out, "\nREASON                    PACKETS");
    let nonzero: Vec<_> = report.reasons.iter().filter(|(_, n)| **n > 0).collect();
    for (reason, n) in &nonzero {
        let _ = writeln!(out, "{reason:<25} {n:>8}");
    }
    if nonzero.is_empty() {
        let _ = writeln!(out, "(none yet)");
    }
    let events: Vec<String> = report.events.iter().filter(|(_, n)| **n > 0).map(|(e, n)| format!("{e} {n}")).collect();
    if !events.is_empty() {
        let _ = writeln!(out, "\nconnection events: {}", events.join(", "));
    }
    let sock = &report.socket_lb;
    let sock_events: Vec<String> =
        sock.events.iter().filter(|(_, n)| **n > 0).map(|(e, n)| format!("{e} {n}")).collect();
    let _ = writeln!(
        out,
        "\nsocket LB: {} of {} namespaces registered ({}){}",
        sock.registered,
        sock.members.len(),
        sock.members.join(", "),
        if sock_events.is_empty() { String::new() } else { format!("; {}", sock_events.join(", ")) }
    );
    let _ = writeln!(
        out,
        "\nconntrack entries: {} of {} established, {} of {} unconfirmed",
        report.conntrack_entries, report.conntrack_capacity, report.new_flow_entries, report.new_flow_capacity
    );
    if !report.problems.is_empty() {
        let _ = writeln!(out);
    }
    for p in &report.problems {
        let _ = writeln!(out, "problem: {p}");
    }
    out
}
