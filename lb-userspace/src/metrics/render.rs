//! The Prometheus text (OpenMetrics) page, rendered from a [`Snapshot`]: a fresh registry per
//! scrape, filled from counters read at scrape time, so nothing is cached between scrapes.

use std::{sync::atomic::AtomicU64, time::UNIX_EPOCH};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use super::sync::SyncState;
use crate::{health::Liveness, status::Report};

/// What one scrape saw.
pub struct Snapshot {
    /// The datapath's counters joined with `state.json`; `None` if no datapath is pinned.
    pub report: Option<Report>,
    pub sync: SyncState,
}

/// `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of [`to_text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The Prometheus text format (0.0.4) of an OpenMetrics page from [`render`], for scrapers that
/// do not ask for OpenMetrics (`curl`, `promtool check metrics`): a counter family is named
/// with its `_total` suffix there, and `# EOF` and `# UNIT` lines do not exist.
pub fn to_text_format(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> =
        lines.iter().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    service: String,
    backend: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabels {
    table: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabels {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InterfaceLabels {
    iface: String,
    xdp_mode: String,
    neigh_handoff: String,
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type Counters<L> = Family<L, Counter>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn counter<L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static>(
    r: &mut Registry,
    name: &str,
    help: &str,
) -> Counters<L> {
    let f = Counters::<L>::default();
    r.register(name, help, f.clone());
    f
}

pub fn render(s: &Snapshot) -> String {
    let mut r = Registry::with_prefix("swarmlb");
    let node = s.report.as_ref().and_then(|r| r.node.clone()).unwrap_or_default();
    let nl = NodeLabels { node: node.clone() };

    let build = Family::<BuildLabels, Gauge>::default();
    r.register("build_info", "The agent's version", build.clone());
    build.get_or_create(&BuildLabels { version: env!("CARGO_PKG_VERSION").to_owned() }).set(1);
    let up = Family::<NodeLabels, Gauge>::default();
    r.register("datapath_up", "1 if the pinned maps could be read at this scrape", up.clone());
    up.get_or_create(&nl).set(i64::from(s.report.is_some()));

    if let Some(report) = &s.report {
        let agent_up = Family::<NodeLabels, Gauge>::default();
        r.register("agent_up", "1 if the agent's heartbeat is fresh (it follows the swarm)", agent_up.clone());
        agent_up.get_or_create(&nl).set(i64::from(report.agent.state == Liveness::Running));
        if let Some(age) = report.agent.heartbeat_age_s {
            let g = Family::<NodeLabels, FloatGauge>::default();
            r.register("agent_heartbeat_age_seconds", "Time since the agent's last heartbeat", g.clone());
            g.get_or_create(&nl).set(age);
        }
        let problems = Family::<NodeLabels, Gauge>::default();
        r.register("health_problems", "Problems listed by /healthz and swarmlb status", problems.clone());
        problems.get_or_create(&nl).set(report.problems.len() as i64);
        let ifaces = Family::<InterfaceLabels, Gauge>::default();
        r.register("interface_info", "An interface the datapath runs on, and how", ifaces.clone());
        for i in &report.interfaces {
            let l = InterfaceLabels {
                iface: i.iface.clone(),
                xdp_mode: i.xdp_mode.clone(),
                neigh_handoff: i.neigh_handoff.to_string(),
                node: node.clone(),
            };
            ifaces.get_or_create(&l).set(1);
        }

        let sp = counter::<ServiceLabels>(&mut r, "service_packets", "Packets translated for a service");
        let sb = counter::<ServiceLabels>(&mut r, "service_bytes", "Bytes translated for a service");
        let sf = counter::<ServiceLabels>(&mut r, "service_new_flows", "New flows of a service");
        let bp = counter::<BackendLabels>(&mut r, "backend_packets", "Packets translated to or from a backend");
        let bb = counter::<BackendLabels>(&mut r, "backend_bytes", "Bytes translated to or from a backend");
        let bf = counter::<BackendLabels>(&mut r, "backend_new_flows", "New flows sent to a backend");
        let rs = counter::<ReasonLabels>(&mut r, "reason_packets", "Packets by the datapath's decision");
        let nat = Family::<BackendLabels, Gauge>::default();
        r.register("backend_nat_ports", "NAT source ports held by a backend's live connections", nat.clone());
        let nat_cap = Family::<BackendLabels, Gauge>::default();
        r.register(
            "backend_nat_ports_capacity",
            "NAT source ports a backend can have (range times SNAT addresses)",
            nat_cap.clone(),
        );
        for svc in &report.services {
            let l = ServiceLabels { service: svc.name.clone(), node: node.clone() };
            sp.get_or_create(&l).inc_by(svc.packets);
            sb.get_or_create(&l).inc_by(svc.bytes);
            sf.get_or_create(&l).inc_by(svc.new_flows);
            for be in &svc.backends {
                let l = BackendLabels { service: svc.name.clone(), backend: be.name.clone(), node: node.clone() };
                bp.get_or_create(&l).inc_by(be.packets);
                bb.get_or_create(&l).inc_by(be.bytes);
                bf.get_or_create(&l).inc_by(be.new_flows);
                nat.get_or_create(&l).set(be.nat_ports as i64);
                nat_cap.get_or_create(&l).set(be.nat_port_capacity as i64);
            }
        }
        for (reason, n) in &report.reasons {
            rs.get_or_create(&ReasonLabels { reason: (*reason).to_string(), node: node.clone() }).inc_by(*n);
        }
        let ev = counter::<EventLabels>(&mut r, "conntrack_events", "What the connection tables did, by event");
        for (event, n) in &report.events {
            ev.get_or_create(&EventLabels { event: (*event).to_string(), node: node.clone() }).inc_by(*n);
        }
        let sock = counter::<EventLabels>(&mut r, "socket_lb_events", "What the socket programs did, by event");
        for (event, n) in &report.socket_lb.events {
            sock.get_or_create(&EventLabels { event: (*event).to_string(), node: node.clone() }).inc_by(*n);
        }
        let ns = Family::<NodeLabels, Gauge>::default();
        r.register("socket_lb_namespaces", "Network namespaces whose sockets are balanced", ns.clone());
        ns.get_or_create(&nl).set(report.socket_lb.registered as i64);
        let ct = Family::<TableLabels, Gauge>::default();
        r.register("conntrack_entries", "Entries in a connection table (two per connection)", ct.clone());
        let cap = Family::<TableLabels, Gauge>::default();
        r.register("conntrack_capacity_entries", "Size of a connection table", cap.clone());
        for (table, entries, size) in [
            ("established", report.conntrack_entries, report.conntrack_capacity),
            ("unconfirmed", report.new_flow_entries, report.new_flow_capacity),
        ] {
            let l = TableLabels { table: table.to_string(), node: node.clone() };
            ct.get_or_create(&l).set(entries as i64);
            cap.get_or_create(&l).set(i64::from(size));
        }
    }

    let sync = &s.sync;
    let ok = Family::<NodeLabels, Gauge>::default();
    r.register("sync_ok", "1 if the last sync of the swarm into the maps succeeded", ok.clone());
    ok.get_or_create(&nl).set(i64::from(sync.ok));
    let failures = counter::<NodeLabels>(&mut r, "sync_failures", "Failed syncs since the agent started");
    failures.get_or_create(&nl).inc_by(sync.failures);
    let problems = Family::<NodeLabels, Gauge>::default();
    r.register("sync_problems", "Non-fatal problems of the last sync (see /healthz)", problems.clone());
    problems.get_or_create(&nl).set(sync.problems.len() as i64);
    if let Some(t) = sync.last_success {
        let g = Family::<NodeLabels, FloatGauge>::default();
        r.register("sync_last_success_timestamp_seconds", "Unix time of the last successful sync", g.clone());
        g.get_or_create(&nl).set(t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0));
    }
    if let Some(lag) = sync.last_lag {
        let g = Family::<NodeLabels, FloatGauge>::default();
        r.register("sync_lag_seconds", "Event to maps written, of the last successful sync", g.clone());
        g.get_or_create(&nl).set(lag.as_secs_f64());
    }

    let mut out = String::new();
    encode(&mut out, &r).expect("writing to a String cannot fail");
    out
}

/// `/healthz`: 200 "ok" only while `swarmlb status` would list no problem; otherwise 503 with
/// each problem on a line. `report` is what the scrape read, or why it could not.
pub fn health(report: Result<&Report, &str>) -> (u16, String) {
    match report {
        Err(e) => (503, format!("problem: cannot read the datapath: {e}\n")),
        Ok(r) if r.problems.is_empty() => (200, "ok\n".into()),
        Ok(r) => (503, r.problems.iter().map(|p| format!("problem: {p}\n")).collect()),
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        time::{Duration, UNIX_EPOCH},
    };

    use super::*;
    use crate::{
        health::Attachment,
        status::{AgentReport, BackendReport, Report, ServiceReport, SocketLbReport},
    };

    fn snapshot() -> Snapshot {
        let be = |id, name: &str, p, b, f| BackendReport {
            id,
            name: name.into(),
            addr: "198.19.128.4:8080".into(),
            weight: 1,
            node: Some("node-2".into()),
            packets: p,
            bytes: b,
            new_flows: f,
            nat_ports: f,
            nat_port_capacity: 31744,
        };
        let report = Report {
            node: Some("node-1".into()),
            agent: AgentReport {
                state: Liveness::Running,
                pid: Some(7),
                version: Some("0.1.0".into()),
                heartbeat_age_s: Some(0.5),
                uptime_s: Some(60.0),
                last_sync_age_s: Some(3.0),
                last_sync_lag_s: Some(0.012),
                sync_ok: true,
                sync_failures: 2,
            },
            interfaces: vec![Attachment {
                iface: "eth0".into(),
                ifindex: 2,
                xdp_mode: "native".into(),
                neigh_handoff: true,
            }],
            services: vec![ServiceReport {
                id: 1,
                name: "web".into(),
                frontends: vec!["0.0.0.0:8080/tcp".into()],
                sticky: false,
                network: Some("ingress".into()),
                nat_addr: "198.19.128.2".into(),
                source: "nat",
                packets: 30,
                bytes: 3000,
                new_flows: 3,
                backends: vec![be(1, "web.1", 10, 1000, 1), be(2, "web.2", 20, 2000, 2)],
            }],
            reasons: BTreeMap::from([("pass", 7), ("no_backend", 0)]),
            events: BTreeMap::from([("confirmed", 3)]),
            socket_lb: SocketLbReport {
                members: vec!["host".into(), "client".into()],
                registered: 2,
                events: BTreeMap::from([("balanced", 40)]),
            },
            conntrack_entries: 6,
            conntrack_capacity: 16384,
            new_flow_entries: 2,
            new_flow_capacity: lb_common::maps::NEW_FLOWS_SIZE,
            problems: Vec::new(),
        };
        let mut sync = SyncState { attempted: true, ok: true, failures: 2, ..Default::default() };
        sync.last_success = Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        sync.last_lag = Some(Duration::from_millis(250));
        Snapshot { report: Some(report), sync }
    }

    #[test]
    fn renders_every_family() {
        let text = render(&snapshot());
        for line in [
            "# TYPE swarmlb_service_packets counter",
            r#"swarmlb_service_packets_total{service="web",node="node-1"} 30"#,
            r#"swarmlb_service_bytes_total{service="web",node="node-1"} 3000"#,
            r#"swarmlb_service_new_flows_total{service="web",node="node-1"} 3"#,
            r#"swarmlb_backend_packets_total{service="web",backend="web.2",node="node-1"} 20"#,
            r#"swarmlb_backend_bytes_total{service="web",backend="web.1",node="node-1"} 1000"#,
            r#"swarmlb_backend_new_flows_total{service="web",backend="web.2",node="node-1"} 2"#,
            r#"swarmlb_reason_packets_total{reason="pass",node="node-1"} 7"#,
            r#"swarmlb_reason_packets_total{reason="no_backend",node="node-1"} 0"#,
            r#"swarmlb_conntrack_entries{table="established",node="node-1"} 6"#,
            r#"swarmlb_conntrack_entries{table="unconfirmed",node="node-1"} 2"#,
            r#"swarmlb_conntrack_capacity_entries{table="established",node="node-1"} 16384"#,
            r#"swarmlb_conntrack_capacity_entries{table="unconfirmed",node="node-1"} 32768"#,
            r#"swarmlb_conntrack_events_total{event="confirmed",node="node-1"} 3"#,
            r#"swarmlb_socket_lb_events_total{event="balanced",node="node-1"} 40"#,
            r#"swarmlb_socket_lb_namespaces{node="node-1"} 2"#,
            r#"swarmlb_backend_nat_ports{service="web",backend="web.2",node="node-1"} 2"#,
            r#"swarmlb_backend_nat_ports_capacity{service="web",backend="web.2",node="node-1"} 31744"#,
            r#"swarmlb_datapath_up{node="node-1"} 1"#,
            r#"swarmlb_sync_ok{node="node-1"} 1"#,
            r#"swarmlb_sync_failures_total{node="node-1"} 2"#,
            r#"swarmlb_sync_problems{node="node-1"} 0"#,
            r#"swarmlb_sync_last_success_timestamp_seconds{node="node-1"} 1700000000.0"#,
            r#"swarmlb_sync_lag_seconds{node="node-1"} 0.25"#,
            r#"swarmlb_agent_up{node="node-1"} 1"#,
            r#"swarmlb_agent_heartbeat_age_seconds{node="node-1"} 0.5"#,
            r#"swarmlb_health_problems{node="node-1"} 0"#,
            r#"swarmlb_interface_info{iface="eth0",xdp_mode="native",neigh_handoff="true",node="node-1"} 1"#,
            r#"swarmlb_build_info{version="0.1.0"} 1"#,
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
    }

    #[test]
    fn text_format_names_counters_with_their_suffix() {
        let text = to_text_format(&render(&snapshot()));
        assert!(text.contains("# HELP swarmlb_service_packets_total Packets translated for a service.\n"), "{text}");
        assert!(text.contains("# TYPE swarmlb_service_packets_total counter\n"), "{text}");
        assert!(text.contains("# TYPE swarmlb_agent_up gauge\n"), "{text}");
        assert!(text.contains("swarmlb_service_packets_total{service=\"web\",node=\"node-1\"} 30\n"), "{text}");
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn without_a_datapath() {
        let text = render(&Snapshot { report: None, sync: SyncState::default() });
        assert!(text.contains(r#"swarmlb_datapath_up{node=""} 0"#), "{text}");
        assert!(text.contains(r#"swarmlb_sync_ok{node=""} 0"#), "{text}");
        assert!(!text.contains("swarmlb_service_packets_total"), "{text}");
        assert!(!text.contains("sync_lag_seconds{"), "{text}");
    }

    #[test]
    fn health_is_ok_only_without_problems() {
        assert_eq!(health(Err("no pinned maps")), (503, "problem: cannot read the datapath: no pinned maps\n".into()));
        let mut report = snapshot().report.unwrap();
        assert_eq!(health(Ok(&report)), (200, "ok\n".into()));
        report.problems = vec!["agent not running".into(), "network \"x\": takeover: boom".into()];
        assert_eq!(
            health(Ok(&report)),
            (503, "problem: agent not running\nproblem: network \"x\": takeover: boom\n".into())
        );
    }
}
