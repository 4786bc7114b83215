//! `swarmlb flows`: the connections the datapath tracks, one per line (from its client-side
//! entry), joined with the service and backend names in `state.json`, printed as a table or as
//! JSON. Entries idle past their timeout are left out: the datapath treats them as gone.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
};

use anyhow::{Context, Result};
use lb_common::{DIR_TO_BACKEND, Flow, FlowKey, PROTO_TCP, is_unconfirmed, state_name};
use serde::Serialize;

use crate::{
    datapath::tables::{Tables, monotonic_ns},
    state,
};

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct FlowReport {
    /// Service name; `<name> (removed)` for a service the agent has since removed (`#<id>` if
    /// even its name is gone: its id was handed out again).
    pub service: String,
    /// Backend name, likewise.
    pub backend: String,
    pub proto: &'static str,
    pub client: String,
    pub frontend: String,
    /// The source the backend sees: this node's NAT address and port.
    pub nat: String,
    pub backend_addr: String,
    /// TCP: `syn_sent`, `syn_recv` (half-open: the handshake has not completed), `established`,
    /// `half_closed` (one FIN), `closing` (both FINs) or `reset`; UDP: `unreplied` or `replied`.
    pub state: &'static str,
    /// The handshake has not completed (the connection is in the new-flow table).
    pub half_open: bool,
    pub idle_s: u64,
}

/// The live connections, optionally of one service only, sorted by service, backend, client.
pub fn collect(pin_dir: &Path, state_dir: &Path, service: Option<&str>) -> Result<Vec<FlowReport>> {
    let tables = Tables::open(pin_dir).with_context(|| {
        format!("no swarmlb datapath is pinned in {} (has `swarmlb run` started?)", pin_dir.display())
    })?;
    let plan = state::load(state_dir)?.unwrap_or_default();
    let service_names: HashMap<u32, String> = plan.services.iter().map(|s| (s.id, s.name.clone())).collect();
    let backend_names: HashMap<u32, String> =
        plan.services.iter().flat_map(|s| &s.backends).map(|b| (b.id, b.name.clone())).collect();
    let removed = |names: &std::collections::BTreeMap<u32, String>| -> Vec<(u32, String)> {
        names.iter().map(|(id, n)| (*id, format!("{n} (removed)"))).collect()
    };
    let service_names: HashMap<u32, String> =
        removed(&plan.ids.retired_service_names).into_iter().chain(service_names).collect();
    let backend_names: HashMap<u32, String> =
        removed(&plan.ids.retired_backend_names).into_iter().chain(backend_names).collect();
    let now = monotonic_ns()?;
    let name = |names: &HashMap<u32, String>, id: u32| names.get(&id).cloned().unwrap_or_else(|| format!("#{id}"));
    let mut flows: Vec<FlowReport> = tables
        .scan(now)?
        .live
        .into_iter()
        .filter(|(_, f, _)| f.direction == DIR_TO_BACKEND)
        .map(|(k, f, _)| report(&k, &f, name(&service_names, f.service_id), name(&backend_names, f.backend_id), now))
        .filter(|r| service.is_none_or(|s| r.service == s))
        .collect();
    flows.sort();
    Ok(flows)
}

fn report(key: &FlowKey, flow: &Flow, service: String, backend: String, now: u64) -> FlowReport {
    let at = |addr: [u8; 4], port: u16| SocketAddrV4::new(Ipv4Addr::from(addr), port).to_string();
    FlowReport {
        service,
        backend,
        proto: if key.proto == PROTO_TCP { "tcp" } else { "udp" },
        client: at(key.src_addr, key.src_port),
        frontend: at(key.dst_addr, key.dst_port),
        nat: at(flow.new_src_addr, flow.new_src_port),
        backend_addr: at(flow.new_dst_addr, flow.new_dst_port),
        state: state_name(key.proto, flow.state),
        half_open: key.proto == PROTO_TCP && is_unconfirmed(flow.state),
        idle_s: now.saturating_sub(flow.last_seen_ns) / 1_000_000_000,
    }
}

/// The human-readable form, one connection per line, then the count.
pub fn table(flows: &[FlowReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<20} {:<20} {:<5} {:<21} {:<21} {:<21} {:<21} {:<11} {:>6}",
        "SERVICE", "BACKEND", "PROTO", "CLIENT", "FRONTEND", "NAT", "BACKEND ADDR", "STATE", "IDLE S"
    );
    for f in flows {
        let _ = writeln!(
            out,
            "{:<20} {:<20} {:<5} {:<21} {:<21} {:<21} {:<21} {:<11} {:>6}",
            f.service,
            f.backend,
            f.proto,
            f.client,
            f.frontend,
            f.nat,
            f.backend_addr,
            if f.half_open { format!("{} (half-open)", f.state) } else { f.state.to_string() },
            f.idle_s
        );
    }
    let half_open = flows.iter().filter(|f| f.half_open).count();
    let _ = writeln!(out, "\n{} connections, {half_open} of them half-open", flows.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_line_per_connection_and_the_count() {
        let key = FlowKey {
            src_addr: [198, 18, 0, 50],
            dst_addr: [198, 18, 0, 10],
            src_port: 40000,
            dst_port: 80,
            proto: PROTO_TCP,
            _pad: [0; 3],
        };
        let flow = Flow {
            new_src_addr: [198, 18, 1, 1],
            new_dst_addr: [198, 18, 1, 11],
            new_src_port: 20001,
            new_dst_port: 8080,
            state: lb_common::CT_HALF_CLOSED,
            last_seen_ns: 1_000_000_000,
            ..Default::default()
        };
        let r = report(&key, &flow, "web".into(), "web-1".into(), 4_500_000_000);
        assert_eq!(
            (r.client.as_str(), r.nat.as_str(), r.state, r.idle_s),
            ("198.18.0.50:40000", "198.18.1.1:20001", "half_closed", 3)
        );
        let table = table(&[r]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("SERVICE"));
        let row: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            row,
            [
                "web",
                "web-1",
                "tcp",
                "198.18.0.50:40000",
                "198.18.0.10:80",
                "198.18.1.1:20001",
                "198.18.1.11:8080",
                "half_closed",
                "3"
            ]
        );
        assert_eq!(lines.last(), Some(&"1 connections, 0 of them half-open"));
        let syn_recv = Flow { state: lb_common::CT_SYN_RECV, ..flow };
        let r = report(&key, &syn_recv, "web".into(), "web-1".into(), 4_500_000_000);
        assert!(r.half_open);
        let text = super::table(&[r]);
        assert!(text.contains("syn_recv (half-open)"), "{text}");
        assert!(text.ends_with("1 connections, 1 of them half-open\n"), "{text}");
    }
}
