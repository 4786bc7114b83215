use std::net::Ipv4Addr;

use super::*;
use crate::model::{Backend, Proto, Service};

fn svc(name: &str, port: u16, backends: &[(&str, u8, u32)]) -> Service {
    Service {
        name: name.into(),
        frontends: vec![Frontend { addr: None, port, proto: Proto::Tcp }],
        backends: backends
            .iter()
            .map(|(n, last, w)| Backend { name: (*n).into(), addr: SocketAddrV4::new(Ipv4Addr::new(198, 18, 2, *last), 8080), weight: *w, node: None })
            .collect(),
        sticky: false,
        nat_addr: Some(Ipv4Addr::new(198, 18, 2, 1)),
        network: None,
    }
}

fn cluster(services: Vec<Service>) -> Cluster {
    Cluster { node: NodeSettings::default(), swarm: Default::default(), nodes: vec![], networks: vec![], services }
}

type Ids = Vec<(String, u32, Vec<(String, u32)>)>;

fn ids(plan: &Plan) -> Ids {
    plan.services.iter().map(|s| (s.name.clone(), s.id, s.backends.iter().map(|b| (b.name.clone(), b.id)).collect())).collect()
}

#[test]
fn ids_are_stable_across_plans_and_reorderings() {
    let c1 = cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)]), svc("api", 81, &[("a1", 21, 1)])]);
    let p1 = plan(&c1, None, &Plan::default()).unwrap();
    assert_eq!(ids(&p1), vec![("web".into(), 1, vec![("w1".into(), 1), ("w2".into(), 2)]), ("api".into(), 2, vec![("a1".into(), 3)])]);

    // Reordered, one backend added, one reweighted: existing ids do not move.
    let c2 = cluster(vec![svc("api", 81, &[("a1", 21, 5), ("a2", 22, 1)]), svc("web", 80, &[("w2", 12, 1), ("w1", 11, 1)])]);
    let p2 = plan(&c2, None, &p1).unwrap();
    assert_eq!(ids(&p2), vec![("web".into(), 1, vec![("w1".into(), 1), ("w2".into(), 2)]), ("api".into(), 2, vec![("a1".into(), 3), ("a2".into(), 4)])]);

    // Through state.json and back, the same.
    let mut reloaded: Plan = serde_json::from_str(&serde_json::to_string(&p2).unwrap()).unwrap();
    reloaded.rebuild_tables();
    assert_eq!(reloaded, p2);
    assert_eq!(ids(&plan(&c2, None, &reloaded).unwrap()), ids(&p2));
}

#[test]
fn freed_ids_are_not_reused_while_fresh_ones_remain() {
    let p1 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)])]), None, &Plan::default()).unwrap();
    // w2 goes, w3 comes: w3 gets a new id, 2 is retired.
    let p2 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w3", 13, 1)])]), None, &p1).unwrap();
    assert_eq!(ids(&p2)[0].2, vec![("w1".into(), 1), ("w3".into(), 3)]);
    assert_eq!(p2.ids.retired_backends, [2]);
    // A backend whose address changes is a new backend.
    let p3 = plan(&cluster(vec![svc("web", 80, &[("w1", 99, 1), ("w3", 13, 1)])]), None, &p2).unwrap();
    assert_eq!(ids(&p3)[0].2, vec![("w3".into(), 3), ("w1".into(), 4)]);
    // A removed service's id is retired too.
    let p4 = plan(&cluster(vec![svc("api", 81, &[])]), None, &p3).unwrap();
    assert_eq!(p4.services[0].id, 2);
    assert_eq!(p4.ids.retired_services, [1]);
}

#[test]
fn ids_are_reused_oldest_first_only_when_exhausted() {
    let mut ids = IdState { next_backend: MAX_BACKENDS - 1, ..IdState::default() };
    ids.retired_backends.extend([7, 3]);
    assert_eq!(ids.backend_id(), Ok(MAX_BACKENDS - 1));
    assert_eq!(ids.backend_id(), Ok(7));
    assert_eq!(ids.backend_id(), Ok(3));
    assert_eq!(ids.backend_id(), Err(PlanError::OutOfBackendIds));
}

#[test]
fn full_diff_writes_everything() {
    let p = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 0)])]), None, &Plan::default()).unwrap();
    let d = diff(None, &p);
    assert!(d.settings.is_some());
    assert_eq!(d.backends.len(), 2);
    assert_eq!(d.maglev.len(), MAGLEV_SIZE as usize);
    assert!(d.maglev.iter().all(|(i, b)| *i >= MAGLEV_SIZE && *b == 1), "drained w2 gets no slot");
    assert_eq!(d.services, vec![(1, lb_common::Service { snat_addr: [198, 18, 2, 1], flags: 0, active_backends: 1, mss: 0, _pad: 0 })]);
    assert_eq!(d.frontends.len(), 1);
    assert_eq!(d.frontends[0].0, lb_common::FrontendKey { addr: [0; 4], port: 80, proto: 6, _pad: 0 });
    assert_eq!(d.fe_ports, vec![(80, lb_common::PROTO_BIT_TCP)]);
}

#[test]
fn unchanged_plan_gives_an_empty_diff() {
    let c = cluster(vec![svc("web", 80, &[("w1", 11, 1), ("w2", 12, 1)])]);
    let p1 = plan(&c, None, &Plan::default()).unwrap();
    let p2 = plan(&c, None, &p1).unwrap();
    assert_eq!(diff(Some(&p1), &p2), Diff::default());
}

#[test]
fn removing_a_backend_writes_only_moved_slots() {
    let names: Vec<(String, u8)> = (0..10).map(|i| (format!("w{i}"), 10 + i as u8)).collect();
    let all: Vec<(&str, u8, u32)> = names.iter().map(|(n, a)| (n.as_str(), *a, 1)).collect();
    let p1 = plan(&cluster(vec![svc("web", 80, &all)]), None, &Plan::default()).unwrap();
    let p2 = plan(&cluster(vec![svc("web", 80, &all[1..])]), None, &p1).unwrap();
    let d = diff(Some(&p1), &p2);
    let removed_slots = p1.services[0].maglev.iter().filter(|b| **b == 1).count();
    eprintln!("planner: removing 1 of 10 rewrites {} slots ({} were the removed backend's)", d.maglev.len(), removed_slots);
    assert!(d.maglev.len() >= removed_slots && d.maglev.len() < removed_slots + MAGLEV_SIZE as usize / 50);
    assert!(d.backends.is_empty() && d.frontends.is_empty() && d.fe_ports.is_empty());
    assert_eq!(d.services.len(), 1, "active_backends changed");
    assert_eq!(d.summary.backends_removed, 1);
    assert_eq!(d.summary.to_string(), "1 backend removed");
}

#[test]
fn removing_a_service_clears_its_frontends_ports_and_slots() {
    let p1 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1)]), svc("api", 81, &[("a1", 21, 1)])]), None, &Plan::default()).unwrap();
    let p2 = plan(&cluster(vec![svc("web", 80, &[("w1", 11, 1)])]), None, &p1).unwrap();
    let d = diff(Some(&p1), &p2);
    assert_eq!(d.removed_frontends, vec![lb_common::FrontendKey { addr: [0; 4], port: 81, proto: 6, _pad: 0 }]);
    assert_eq!(d.fe_ports, vec![(81, 0)]);
    assert_eq!(d.removed_services, vec![2]);
    assert_eq!(d.removed_maglev.len(), MAGLEV_SIZE as usize);
    assert!(d.removed_maglev.iter().all(|(i, b)| *i >= 2 * MAGLEV_SIZE && *b == 0));
    assert!(d.maglev.is_empty() && d.backends.is_empty());
    assert_eq!(d.summary.to_string(), "1 service removed, 1 backend removed, 1 frontend removed");
}

#[test]
fn frontend_moving_between_services_is_rewritten_not_removed() {
    let mut web = svc("web", 80, &[("w1", 11, 1)]);
    let api = svc("api", 81, &[("a1", 21, 1)]);
    let p1 = plan(&cluster(vec![web.clone(), api.clone()]), None, &Plan::default()).unwrap();
    web.frontends.clear();
    let mut api2 = api.clone();
    api2.frontends.push(Frontend { addr: None, port: 80, proto: Proto::Tcp });
    let p2 = plan(&cluster(vec![web, api2]), None, &p1).unwrap();
    let d = diff(Some(&p1), &p2);
    assert_eq!(d.frontends, vec![(lb_common::FrontendKey { addr: [0; 4], port: 80, proto: 6, _pad: 0 }, lb_common::Frontend { service_id: 2 })]);
    assert!(d.removed_frontends.is_empty() && d.fe_ports.is_empty());
}
