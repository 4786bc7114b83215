//! `swarmlb status`: joins the datapath's counters with the names in `state.json` into a report,
//! printed as a table or as JSON.

use std::{collections::BTreeMap, path::Path};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::{
    datapath::{
        reader::Counters,
        tables::{Tables, monotonic_ns},
    },
    planner::nat_ports,
    state,
};

/// A NAT port range or connection table this full (in percent) is warned about.
pub const WARN_FULL_PERCENT: u64 = 80;

#[derive(Debug, Serialize)]
pub struct Report {
    /// The swarm node the running agent is (`--node`), if any.
    pub node: Option<String>,
    pub services: Vec<ServiceReport>,
    /// Every reason, by name.
    pub reasons: BTreeMap<&'static str, u64>,
    /// Every connection-table event, by name.
    pub events: BTreeMap<&'static str, u64>,
    /// Entries of the main connection table (two per established connection).
    pub conntrack_entries: usize,
    /// Entries of the new-flow table (two per unconfirmed connection).
    pub new_flow_entries: usize,
    /// NAT port ranges and tables past [`WARN_FULL_PERCENT`], in words.
    pub warnings: Vec<String>,
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
    let scan = Tables::open(pin_dir)?.scan(monotonic_ns()?)?;
    let nat_in_use = scan.nat_ports_by_backend();
    let mut warnings = Vec::new();
    let mut services = Vec::new();
    for s in &plan.services {
        let t = counters.service(s.id)?;
        let (lo, hi) = nat_ports(s, &plan.node);
        let addrs: Vec<String> = s.nat_addrs().map(|a| a.to_string()).collect();
        let capacity = (u64::from(hi - lo) + 1) * addrs.len() as u64;
        let mut backends = Vec::new();
        for b in &s.backends {
            let bt = counters.backend(b.id)?;
            let used = nat_in_use.get(&b.id).copied().unwrap_or(0);
            if used * 100 >= capacity * WARN_FULL_PERCENT {
                warnings.push(format!(
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
            packets: t.packets,
            bytes: t.bytes,
            new_flows: t.new_flows,
            backends,
        });
    }
    let reasons = counters.reasons()?.into_iter().map(|(r, n)| (r.name(), n)).collect();
    let events = counters.events()?.into_iter().map(|(e, n)| (e.name(), n)).collect();
    let (conntrack_entries, new_flow_entries) = scan.live_counts();
    for (what, entries, size) in [
        ("connection table", conntrack_entries, lb_common::maps::CONNTRACK_SIZE),
        ("new-flow table", new_flow_entries, lb_common::maps::NEW_FLOWS_SIZE),
    ] {
        if entries as u64 * 100 >= u64::from(size) * WARN_FULL_PERCENT {
            warnings.push(format!("{what}: {entries} of {size} entries in use"));
        }
    }
    Ok(Report {
        node: plan.local_node.clone(),
        services,
        reasons,
        events,
        conntrack_entries,
        new_flow_entries,
        warnings,
    })
}

/// The human-readable form: services with their backends, nonzero reasons, connection count.
pub fn table(report: &Report) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if let Some(node) = &report.node {
        let _ = writeln!(out, "swarm node: {node}\n");
    }
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
        if let Some(network) = &s.network {
            let _ = write!(at, "  network {network} from {}", s.nat_addr);
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
    let _ = writeln!(
        out,
        "\nconntrack entries: {} of {} established, {} of {} unconfirmed",
        report.conntrack_entries,
        lb_common::maps::CONNTRACK_SIZE,
        report.new_flow_entries,
        lb_common::maps::NEW_FLOWS_SIZE
    );
    for w in &report.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    out
}
