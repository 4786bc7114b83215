use std::{collections::BTreeMap, net::Ipv4Addr};

use super::*;
use crate::model::{Backend, Proto, Service};

fn svc(name: &str, port: u16, backends: &[(&str, u8, u32)]) -> Service {
    Service {
        name: name.into(),
        frontends: vec![Frontend { addr: None, port, proto: Proto::Tcp }],
        backends: backends
            .iter()
            .map(|(n, last, w)| Backend {
                name: (*n).into(),
                addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, *last), 8080),
                weight: *w,
                node: None,
            })
            .collect(),
        sticky: false,
        nat_addrs: vec![Ipv4Addr::new(198, 18, 2, 1)],
        network: None,
        vip: false,
        client_source: false,
    }
}

/// The datapath value of a routed service with one backend, NAT from 198.18.2.1 on the node's
/// port range.
fn routed_service(p: &Plan) -> lb_common::Service {
    let (lo, hi) = p.node.snat_ports;
    lb_common::Service {
        snat_addrs: [[198, 18, 2, 1], [0; 4], [0; 4], [0; 4]],
        snat_count: 1,
        flags: 0,
        active_backends: 1,
        mss: 0,
        _pad: 0,
        snat_port_min: lo,
        snat_port_max: hi,
        vni: 0,
    }
}

fn cluster(services: Vec<Service>) -> Cluster {
    Cluster {
        node: NodeSettings::default(),
        swarm: Default::default(),
        nodes: vec![],
        networks: vec![],
        services,
        members: vec![],
    }
}

type Ids = Vec<(String, u32, Vec<(String, u32)>)>;

fn ids(plan: &Plan) -> Ids {
    plan.services
        .iter()
        .map(|s| (s.name.clone(), s.id, s.backends.iter().map(|b| (b.name.clone(), b.id)).collect()))
        .collect()
}

#[test]
fn ids_are_stable_across_plans_and_reorderings() {
    let c1 = cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)]), svc("api", 81, &[("a1", 21, 1)])]);
    let p1 = plan(&c1, None, &Plan::default()).plan;
    assert_eq!(
        ids(&p1),
        vec![("web".into(), 1, vec![("w1".into(), 1), ("w2".into(), 2)]), ("api".into(), 2, vec![("a1".into(), 3)])]
    );

    // Reordered, one backend added, one reweighted: existing ids do not move.
    let c2 =
        cluster(vec![svc("api", 81, &[("a1", 21, 5), ("a2", 22, 1)]), svc("web", 80, &[("w2", 12, 1), ("w1", 11, 1)])]);
    let p2 = plan(&c2, None, &p1).plan;
    assert_eq!(
        ids(&p2),
        vec![
            ("web".into(), 1, vec![("w1".into(), 1), ("w2".into(), 2)]),
            ("api".into(), 2, vec![("a1".into(), 3), ("a2".into(), 4)])
        ]
    );

    // Through state.json and back, the same.
    let mut reloaded: Plan = serde_json::from_str(&serde_json::to_string(&p2).unwrap()).unwrap();
    reloaded.rebuild_tables();
    assert_eq!(reloaded, p2);
    assert_eq!(ids(&plan(&c2, None, &reloaded).plan), ids(&p2));
}

#[test]
fn freed_ids_are_not_reused_while_fresh_ones_remain() {
    let p1 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)])]), None, &Plan::default()).plan;
    // w2 goes, w3 comes: w3 gets a new id, 2 is retired.
    let p2 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w3", 13, 1)])]), None, &p1).plan;
    assert_eq!(ids(&p2)[0].2, vec![("w1".into(), 1), ("w3".into(), 3)]);
    assert_eq!(p2.ids.retired_backends, [2]);
    // A backend whose address changes is a new backend.
    let p3 = plan(&cluster(vec![svc("web", 80, &[("w1", 99, 1), ("w3", 13, 1)])]), None, &p2).plan;
    assert_eq!(ids(&p3)[0].2, vec![("w3".into(), 3), ("w1".into(), 4)]);
    // A removed service's id is retired too.
    let p4 = plan(&cluster(vec![svc("api", 81, &[])]), None, &p3).plan;
    assert_eq!(p4.services[0].id, 2);
    assert_eq!(p4.ids.retired_services, [1]);
}

#[test]
fn ids_are_reused_oldest_first_only_when_exhausted() {
    let mut ids = IdState { next_backend: MAX_BACKENDS - 1, ..IdState::default() };
    ids.retired_backends.extend([7, 3]);
    assert_eq!(ids.backend_id(), Some(MAX_BACKENDS - 1));
    assert_eq!(ids.backend_id(), Some(7));
    assert_eq!(ids.backend_id(), Some(3));
    assert_eq!(ids.backend_id(), None);
}

#[test]
fn full_diff_writes_everything() {
    let p = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 0)])]), None, &Plan::default()).plan;
    let d = diff(None, &p);
    assert!(d.settings.is_some());
    assert_eq!(d.backends.len(), 2);
    assert_eq!(d.maglev.len(), 1);
    let (id, table) = &d.maglev[0];
    assert_eq!((*id, table.len()), (1, lb_common::maps::maglev_size(2) as usize), "sized for 2 backends");
    assert!(table.iter().all(|b| *b == 1), "drained w2 gets no slot");
    assert_eq!(d.services, vec![(1, routed_service(&p))]);
    assert_eq!(d.snat_addrs, [[198, 18, 2, 1]]);
    assert_eq!(d.frontends.len(), 1);
    assert_eq!(d.frontends[0].0, lb_common::FrontendKey { addr: [0; 4], port: 80, proto: 6, _pad: 0 });
    let tcp = lb_common::PROTO_BIT_TCP;
    assert_eq!(d.fe_ports, vec![(80, tcp | tcp << lb_common::PORT_TRACKED_SHIFT)]);
}

#[test]
fn unchanged_plan_gives_an_empty_diff() {
    let c = cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)])]);
    let p1 = plan(&c, None, &Plan::default()).plan;
    let p2 = plan(&c, None, &p1).plan;
    assert_eq!(diff(Some(&p1), &p2), Diff::default());
}

#[test]
fn removing_a_backend_moves_only_its_slots() {
    let names: Vec<(String, u8)> = (0..10).map(|i| (format!("w{i}"), 10 + i as u8)).collect();
    let all: Vec<(&str, u8, u32)> = names.iter().map(|(n, a)| (n.as_str(), *a, 1)).collect();
    let p1 = plan(&cluster(vec![svc("web", 80, &all)]), None, &Plan::default()).plan;
    let p2 = plan(&cluster(vec![svc("web", 80, &all[1..])]), None, &p1).plan;
    let d = diff(Some(&p1), &p2);
    let (old, new) = (&p1.services[0].maglev, &p2.services[0].maglev);
    assert_eq!(old.len(), new.len(), "9 and 10 backends get the same table size");
    let removed_slots = old.iter().filter(|b| **b == 1).count();
    let moved = old.iter().zip(new.iter()).filter(|(a, b)| a != b).count();
    eprintln!("planner: removing 1 of 10 moves {moved} slots ({removed_slots} were the removed backend's)");
    // At 100 slots a backend, Maglev moves a few percent of the others' slots besides.
    assert!(moved >= removed_slots && moved < removed_slots + old.len() / 20);
    assert_eq!(d.maglev.len(), 1, "the one table is written whole");
    assert!(d.backends.is_empty() && d.frontends.is_empty() && d.fe_ports.is_empty());
    assert_eq!(d.services.len(), 1, "active_backends changed");
    assert_eq!(d.summary.backends_removed, 1);
    assert_eq!(d.summary.to_string(), "1 backend removed");
    let w0 = p1.services[0].backends.iter().find(|b| b.name == "w0").unwrap().id;
    let flagged = lb_common::Backend { addr: [198, 18, 2, 10], port: 8080, flags: lb_common::BACKEND_REMOVED };
    assert_eq!(d.removed_backends, vec![(w0, flagged)], "the removed backend is flagged, its entry kept");
}

#[test]
fn removing_a_service_clears_its_frontends_slots_and_port_but_for_its_connections() {
    let p1 = plan(
        &cluster(vec![svc("web", 80, &[("w1", 11, 1)]), svc("api", 81, &[("a1", 21, 1)])]),
        None,
        &Plan::default(),
    )
    .plan;
    let p2 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1)])]), None, &p1).plan;
    let d = diff(Some(&p1), &p2);
    assert_eq!(d.removed_frontends, vec![lb_common::FrontendKey { addr: [0; 4], port: 81, proto: 6, _pad: 0 }]);
    // The port keeps only its "connections may run" bit: established ones finish, new ones are
    // refused (no frontend); the agent's table sweep clears the bit once none is left.
    assert_eq!(d.fe_ports, vec![(81, lb_common::PROTO_BIT_TCP << lb_common::PORT_TRACKED_SHIFT)]);
    assert_eq!(d.removed_services, vec![2]);
    assert_eq!(d.removed_maglev, vec![2]);
    assert!(d.maglev.is_empty() && d.backends.is_empty());
    let a1 = p1.services[1].backends[0].id;
    assert_eq!(
        d.removed_backends,
        vec![(a1, lb_common::Backend { addr: [198, 18, 2, 21], port: 8080, flags: lb_common::BACKEND_REMOVED })]
    );
    assert_eq!(d.summary.to_string(), "1 service removed, 1 backend removed, 1 frontend removed");
}

#[test]
fn frontend_moving_between_services_is_rewritten_not_removed() {
    let mut web = svc("web", 80, &[("w1", 11, 1)]);
    let api = svc("api", 81, &[("a1", 21, 1)]);
    let p1 = plan(&cluster(vec![web.clone(), api.clone()]), None, &Plan::default()).plan;
    web.frontends.clear();
    let mut api2 = api.clone();
    api2.frontends.push(Frontend { addr: None, port: 80, proto: Proto::Tcp });
    let p2 = plan(&cluster(vec![web, api2]), None, &p1).plan;
    let d = diff(Some(&p1), &p2);
    assert_eq!(
        d.frontends,
        vec![(
            lb_common::FrontendKey { addr: [0; 4], port: 80, proto: 6, _pad: 0 },
            lb_common::Frontend { service_id: 2 }
        )]
    );
    assert!(d.removed_frontends.is_empty() && d.fe_ports.is_empty());
}

mod swarm {
    use super::*;
    use crate::model::{Endpoint, Network, Node, Subnet, SwarmSettings};

    /// Three nodes, one network with an endpoint on each, a service with a task on every node.
    fn swarm_cluster(tasks: &[(&str, u8, &str)]) -> Cluster {
        let net = |name: &str, vni: u32, third: u8, mtu: u16| Network {
            name: name.into(),
            vni,
            subnet: Subnet { addr: Ipv4Addr::new(198, 19, third, 0), prefix: 24 },
            mtu,
            endpoints: (1..=3u8)
                .map(|n| Endpoint { node: format!("node-{n}"), addr: Ipv4Addr::new(198, 19, third, 1 + n) })
                .collect(),
        };
        let web = Service {
            name: "web".into(),
            frontends: vec![Frontend { addr: None, port: 80, proto: Proto::Tcp }],
            backends: tasks
                .iter()
                .map(|(name, last, node)| Backend {
                    name: (*name).into(),
                    addr: SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, *last), 8080),
                    weight: 1,
                    node: Some((*node).into()),
                })
                .collect(),
            sticky: true,
            nat_addrs: Vec::new(),
            network: Some("web-net".into()),
            vip: false,
            client_source: false,
        };
        let mut plain = svc("plain", 81, &[("p1", 11, 1)]);
        plain.nat_addrs = vec![Ipv4Addr::new(198, 18, 2, 1)];
        Cluster {
            node: NodeSettings::default(),
            swarm: SwarmSettings { vxlan_port: 4790 },
            nodes: (1..=3u8)
                .map(|n| Node { name: format!("node-{n}"), addr: Ipv4Addr::new(198, 18, 0, 10 + n) })
                .collect(),
            networks: vec![net("web-net", 4097, 1, 1450), net("db-net", 4098, 2, 1400)],
            services: vec![web, plain],
            members: vec![],
        }
    }

    const TASKS: &[(&str, u8, &str)] =
        &[("web.1", 100, "node-1"), ("web.2", 101, "node-2"), ("web.3", 102, "node-3"), ("web.4", 103, "node-1")];

    /// A service's Maglev table with backend names in place of ids.
    fn table_by_name(plan: &Plan, service: &str) -> Vec<String> {
        let s = plan.services.iter().find(|s| s.name == service).unwrap();
        s.maglev
            .iter()
            .map(|id| s.backends.iter().find(|b| b.id == *id).map_or(String::new(), |b| b.name.clone()))
            .collect()
    }

    #[test]
    fn overlay_services_translate_from_the_local_endpoint_with_mss_and_flag() {
        let c = swarm_cluster(TASKS);
        for (node, endpoint) in [("node-1", 2), ("node-2", 3), ("node-3", 4)] {
            let p = plan(&c, Some(node), &Plan::default()).plan;
            assert_eq!(p.local_node.as_deref(), Some(node));
            assert_eq!(p.overlays, [4097, 4098], "every network's VNI, used or not");
            let d = diff(None, &p);
            assert_eq!(d.settings.unwrap().vxlan_port, 4790);
            assert_eq!(d.overlays, [4097, 4098]);
            let web = p.services.iter().find(|s| s.name == "web").unwrap();
            assert_eq!(
                web.backends.iter().map(|b| b.node.as_deref().unwrap()).collect::<Vec<_>>(),
                ["node-1", "node-2", "node-3", "node-1"]
            );
            let values: HashMap<u32, lb_common::Service> = d.services.iter().copied().collect();
            assert_eq!(
                values[&web.id],
                lb_common::Service {
                    snat_addrs: [[198, 19, 1, endpoint], [0; 4], [0; 4], [0; 4]],
                    snat_count: 1,
                    flags: lb_common::SERVICE_STICKY | lb_common::SERVICE_OVERLAY,
                    active_backends: 4,
                    mss: 1410,
                    _pad: 0,
                    snat_port_min: lb_common::maps::DEFAULT_NODE_SNAT_PORTS.0,
                    snat_port_max: lb_common::maps::DEFAULT_NODE_SNAT_PORTS.1,
                    vni: 0,
                },
                "as {node}"
            );
            let plain = p.services.iter().find(|s| s.name == "plain").unwrap();
            assert_eq!(values[&plain.id], routed_service(&p));
            let settings = d.settings.unwrap();
            assert_eq!((settings.snat_port_min, settings.snat_port_max), (1024, 32767), "the node's range");
        }
    }

    #[test]
    fn every_node_computes_the_same_tables() {
        let c = swarm_cluster(TASKS);
        let as_node1 = plan(&c, Some("node-1"), &Plan::default()).plan;
        // node-2 has another history: it saw other backends first, so its ids differ.
        let history = swarm_cluster(&[("old.1", 50, "node-2"), ("old.2", 51, "node-3"), ("web.3", 102, "node-3")]);
        let earlier = plan(&history, Some("node-2"), &Plan::default()).plan;
        let as_node2 = plan(&c, Some("node-2"), &earlier).plan;
        let ids = |p: &Plan| p.services[0].backends.iter().map(|b| (b.name.clone(), b.id)).collect::<BTreeMap<_, _>>();
        assert_ne!(ids(&as_node1), ids(&as_node2), "the nodes gave different ids");
        let table = table_by_name(&as_node1, "web");
        assert_eq!(table, table_by_name(&as_node2, "web"), "same task in every slot");
        assert_eq!(table, table_by_name(&plan(&c, Some("node-3"), &Plan::default()).plan, "web"));
        assert!(table.iter().all(|name| !name.is_empty()), "every slot has a task");
        // Which node a task runs on does not move it either.
        let mut moved = c.clone();
        moved.services[0].backends[0].node = Some("node-3".into());
        assert_eq!(table, table_by_name(&plan(&moved, Some("node-1"), &Plan::default()).plan, "web"));
    }

    #[test]
    fn a_node_without_an_endpoint_leaves_the_service_out() {
        let mut c = swarm_cluster(TASKS);
        c.networks[0].endpoints.retain(|e| e.node != "node-2");
        let want =
            LeftOut::NoLocalEndpoint { service: "web".into(), network: "web-net".into(), node: Some("node-2".into()) };
        let planned = plan(&c, Some("node-2"), &Plan::default());
        assert_eq!(planned.left_out, vec![want]);
        let names: Vec<&str> = planned.plan.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["plain"], "the other service is still planned");
        assert!(matches!(plan(&c, None, &Plan::default()).left_out[..], [LeftOut::NoLocalEndpoint { node: None, .. }]));
        let served = plan(&c, Some("node-1"), &Plan::default());
        assert!(served.left_out.is_empty() && served.plan.services.len() == 2);
    }

    #[test]
    fn network_changes_diff_overlays_and_services() {
        let c1 = swarm_cluster(TASKS);
        let p1 = plan(&c1, Some("node-1"), &Plan::default()).plan;
        let mut c2 = c1.clone();
        c2.networks.remove(1); // db-net goes
        c2.networks[0].mtu = 1400; // web-net shrinks
        c2.swarm.vxlan_port = 4789;
        let p2 = plan(&c2, Some("node-1"), &p1).plan;
        let d = diff(Some(&p1), &p2);
        assert_eq!((d.overlays.as_slice(), d.removed_overlays.as_slice()), (&[][..], &[4098][..]));
        assert_eq!(d.settings.map(|s| s.vxlan_port), Some(4789));
        assert_eq!(d.services.len(), 1);
        assert_eq!(d.services[0].1.mss, 1360);
        assert!(d.maglev.is_empty() && d.backends.is_empty(), "tasks unchanged");
        assert_eq!(d.summary.to_string(), "1 service changed, 1 overlay removed, settings");
        // Unchanged again: nothing to write.
        assert_eq!(diff(Some(&p2), &plan(&c2, Some("node-1"), &p2).plan), Diff::default());
    }
}

#[test]
fn counters_restart_only_for_new_or_reused_ids() {
    let c1 = cluster(vec![svc("web", 80, &[("web-1", 11, 1), ("web-2", 12, 1)])]);
    let p1 = plan(&c1, None, &Plan::default()).plan;
    let all = stats_to_reset(None, &p1);
    assert_eq!((all.services.len(), all.backends.len()), (1, 2), "unknown counters: all restart");
    // The same plan again (an agent restart reading state.json): nothing restarts.
    assert_eq!(stats_to_reset(Some(&p1), &plan(&c1, None, &p1).plan), StatsReset::default());
    // web-2 replaced by web-3: only the new backend's id starts from zero.
    let c2 = cluster(vec![svc("web", 80, &[("web-1", 11, 1), ("web-3", 13, 1)])]);
    let p2 = plan(&c2, None, &p1).plan;
    let web3 = p2.services[0].backends.iter().find(|b| b.name == "web-3").unwrap().id;
    assert_eq!(stats_to_reset(Some(&p1), &p2), StatsReset { services: vec![], backends: vec![web3] });
    // web-2's name is kept while its id stays retired, for `flows`.
    let web2 = p1.services[0].backends.iter().find(|b| b.name == "web-2").unwrap().id;
    assert_eq!(p2.ids.retired_backend_names.get(&web2).map(String::as_str), Some("web-2"));
}

#[test]
fn what_does_not_fit_is_left_out_and_the_rest_planned() {
    let p1 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1)])]), None, &Plan::default()).plan;
    // No service id and only one backend id left.
    let mut full = p1.clone();
    full.ids.next_service = MAX_SERVICES;
    full.ids.next_backend = MAX_BACKENDS - 1;
    let c =
        cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1), ("w3", 13, 1)]), svc("api", 81, &[("a1", 21, 1)])]);
    let planned = plan(&c, None, &full);
    assert_eq!(
        planned.left_out,
        vec![
            LeftOut::OutOfBackendIds { service: "web".into(), count: 1, first: "w3".into() },
            LeftOut::OutOfServiceIds { service: "api".into() },
        ]
    );
    let web = &planned.plan.services[..];
    assert_eq!(web.len(), 1);
    assert_eq!(web[0].backends.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(), ["w1", "w2"]);
    assert!(planned.left_out[1].to_string().contains("\"api\" left out: no free service id (at most 4095 services)"));

    // A new service never displaces one already planned, whatever the source's order.
    let per_service = 1024u16;
    let wide = |i: u16| {
        let mut s = svc(&format!("s{i}"), 1000, &[]);
        s.frontends =
            (0..per_service).map(|p| Frontend { port: 1000 + i * per_service + p, ..s.frontends[0] }).collect();
        s
    };
    let mut c = cluster((0..MAX_FRONTENDS as u16 / per_service).map(wide).collect());
    let first = plan(&c, None, &Plan::default()).plan;
    c.services.insert(0, svc("late", 999, &[]));
    let planned = plan(&c, None, &first);
    assert_eq!(planned.left_out, vec![LeftOut::TooManyFrontends { service: "late".into(), count: 1 }]);
    assert_eq!(planned.plan.frontend_count(), MAX_FRONTENDS as usize);
}
