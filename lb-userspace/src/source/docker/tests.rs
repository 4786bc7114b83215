//! The Engine JSON -> Cluster translation, on fixtures shaped like Docker 20.10's answers
//! (bollard's model structs built by hand; no Engine).

use std::{collections::HashMap, net::Ipv4Addr};

use bollard::models::{
    ContainerSummary, ContainerSummaryNetworkSettings, EndpointPortConfig, EndpointPortConfigProtocolEnum as P,
    EndpointPortConfigPublishModeEnum as M, EndpointResource, EndpointSettings, EndpointSpec, EndpointSpecModeEnum,
    Ipam, IpamConfig, LocalNodeState, NetworkAttachmentConfig, NetworkInspect, Node, NodeStatus, PeerInfo, Service,
    ServiceEndpoint, ServiceSpec, SwarmInfo, SystemInfo, Task, TaskSpec, TaskState, TaskStatus,
};
use serde_json::json;

use super::translate::*;
use crate::model::{Frontend, Proto};

pub(super) const LOCAL: &str = "sgvskka3mtycva06fgjowi23g";
pub(super) const OTHER: &str = "n2xxxxxxxxxxxxxxxxxxxxxxx";

pub(super) fn info(manager: bool) -> SystemInfo {
    SystemInfo {
        swarm: Some(SwarmInfo {
            node_id: Some(LOCAL.into()),
            node_addr: Some("198.18.254.1".into()),
            local_node_state: Some(LocalNodeState::ACTIVE),
            control_available: Some(manager),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(super) fn node(id: &str, addr: &str) -> Node {
    Node {
        id: Some(id.into()),
        status: Some(NodeStatus { addr: Some(addr.into()), ..Default::default() }),
        ..Default::default()
    }
}

/// A verbose inspect: `tasks` are (service, task name, ip, host ip).
pub(super) fn network(
    name: &str,
    id: &str,
    vni: &str,
    subnet: &str,
    tasks: &[(&str, &str, &str, &str)],
) -> NetworkInspect {
    let mut services: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    for (svc, task, ip, host) in tasks {
        services.entry(svc.to_string()).or_default().push(json!({
            "Name": task, "EndpointID": "e", "EndpointIP": ip, "Info": {"Host IP": host}
        }));
    }
    NetworkInspect {
        name: Some(name.into()),
        id: Some(id.into()),
        driver: Some("overlay".into()),
        ingress: Some(name == "ingress"),
        options: Some(HashMap::from([(OPT_VNI.to_owned(), vni.to_owned())])),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig { subnet: Some(subnet.into()), ..Default::default() }]),
            ..Default::default()
        }),
        services: Some(
            services
                .into_iter()
                .map(|(k, v)| (k, json!({"VIP": "<nil>", "Ports": ["Target: 8080, Publish: 8080"], "Tasks": v})))
                .collect(),
        ),
        peers: Some(vec![
            PeerInfo { name: Some("7e032ae1f88a".into()), ip: Some("198.18.254.1".into()) },
            PeerInfo { name: Some("aa".into()), ip: Some("198.18.254.2".into()) },
        ]),
        ..Default::default()
    }
}

pub(super) fn ingress() -> NetworkInspect {
    network(
        "ingress",
        "xab33rw0brqlat7awu1og6lp1",
        "4096",
        "198.19.128.0/24",
        &[
            ("", "ingress-endpoint", "198.19.128.2", "198.18.254.1"),
            ("", "ingress-endpoint", "198.19.128.9", "198.18.254.2"),
            ("web", "web.1.aaa", "198.19.128.4", "198.18.254.1"),
            ("web", "web.2.bbb", "198.19.128.5", "198.18.254.2"),
            ("web", "web.3.ccc", "198.19.128.6", "198.18.254.1"),
        ],
    )
}

pub(super) fn service(name: &str, ports: &[(i64, i64, P, M)], labels: &[(&str, &str)], networks: &[&str]) -> Service {
    let ports: Vec<EndpointPortConfig> = ports
        .iter()
        .map(|(p, t, proto, mode)| EndpointPortConfig {
            protocol: Some(*proto),
            target_port: Some(*t),
            published_port: Some(*p),
            publish_mode: Some(*mode),
            ..Default::default()
        })
        .collect();
    Service {
        id: Some(format!("id-{name}")),
        spec: Some(ServiceSpec {
            name: Some(name.into()),
            labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
            task_template: Some(TaskSpec {
                networks: Some(
                    networks
                        .iter()
                        .map(|n| NetworkAttachmentConfig { target: Some(n.to_string()), ..Default::default() })
                        .collect(),
                ),
                ..Default::default()
            }),
            endpoint_spec: Some(EndpointSpec {
                mode: Some(if ports.is_empty() { EndpointSpecModeEnum::DNSRR } else { EndpointSpecModeEnum::VIP }),
                ports: Some(ports.clone()),
            }),
            ..Default::default()
        }),
        endpoint: Some(ServiceEndpoint { ports: Some(ports), ..Default::default() }),
        ..Default::default()
    }
}

pub(super) fn task(id: &str, node: &str, desired: TaskState, state: TaskState) -> Task {
    Task {
        id: Some(id.into()),
        node_id: Some(node.into()),
        desired_state: Some(desired),
        status: Some(TaskStatus { state: Some(state), ..Default::default() }),
        ..Default::default()
    }
}

pub(super) fn running(id: &str, node: &str) -> Task {
    task(id, node, TaskState::RUNNING, TaskState::RUNNING)
}

fn manager_snapshot() -> Snapshot {
    Snapshot {
        info: info(true),
        nodes: Some(vec![node(LOCAL, "198.18.254.1"), node(OTHER, "198.18.254.2")]),
        services: Some(vec![service("web", &[(8080, 8080, P::TCP, M::INGRESS)], &[], &[])]),
        tasks: Some(vec![running("aaa", LOCAL), running("bbb", OTHER), running("ccc", LOCAL)]),
        networks: vec![ingress()],
        containers: vec![],
        sandbox_keys: HashMap::new(),
    }
}

fn backends(t: &Translation, service: &str) -> Vec<(String, String, u32, Option<String>)> {
    let s =
        t.cluster.services.iter().find(|s| s.name == service).unwrap_or_else(|| panic!("no service {service}: {t:#?}"));
    s.backends.iter().map(|b| (b.name.clone(), b.addr.to_string(), b.weight, b.node.clone())).collect()
}

fn be(name: &str, addr: &str, weight: u32, node: &str) -> (String, String, u32, Option<String>) {
    (name.into(), addr.into(), weight, Some(node.into()))
}

#[test]
fn ingress_published_service_on_a_manager() {
    let t = translate(&manager_snapshot()).unwrap();
    assert_eq!(t.local_node, LOCAL);
    assert_eq!(t.notes, Vec::<String>::new());
    let names: Vec<(&str, Ipv4Addr)> = t.cluster.nodes.iter().map(|n| (n.name.as_str(), n.addr)).collect();
    assert_eq!(names, [(LOCAL, Ipv4Addr::new(198, 18, 254, 1)), (OTHER, Ipv4Addr::new(198, 18, 254, 2))]);
    let net = &t.cluster.networks[0];
    assert_eq!(
        (net.name.as_str(), net.vni, net.subnet.to_string(), net.mtu),
        ("ingress", 4096, "198.19.128.0/24".into(), 1450)
    );
    assert_eq!(net.endpoint(LOCAL), Some(Ipv4Addr::new(198, 19, 128, 2)));
    assert_eq!(net.endpoint(OTHER), Some(Ipv4Addr::new(198, 19, 128, 9)));
    let web = &t.cluster.services[0];
    assert_eq!(web.frontends, [Frontend { addr: None, port: 8080, proto: Proto::Tcp }]);
    assert_eq!((web.network.as_deref(), web.nat_addrs.is_empty(), web.sticky), (Some("ingress"), true, false));
    assert_eq!(
        backends(&t, "web"),
        [
            be("web.1", "198.19.128.4:8080", 1, LOCAL),
            be("web.2", "198.19.128.5:8080", 1, OTHER),
            be("web.3", "198.19.128.6:8080", 1, LOCAL)
        ]
    );
    // The model is sound for the planner: this node plans it.
    assert!(crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default()).left_out.is_empty());
}

#[test]
fn task_states_running_starting_and_draining() {
    let mut snap = manager_snapshot();
    snap.tasks = Some(vec![
        running("aaa", LOCAL),
        // Scaled down: desired shutdown, container still stopping -> drain.
        task("bbb", OTHER, TaskState::SHUTDOWN, TaskState::RUNNING),
        // Health check pending: swarm reports `starting` -> not yet a backend.
        task("ccc", LOCAL, TaskState::RUNNING, TaskState::STARTING),
    ]);
    let t = translate(&snap).unwrap();
    assert_eq!(
        backends(&t, "web"),
        [be("web.1", "198.19.128.4:8080", 1, LOCAL), be("web.2", "198.19.128.5:8080", 0, OTHER)]
    );
    // Shut down already, or unknown to /tasks: left out.
    snap.tasks = Some(vec![running("aaa", LOCAL), task("bbb", OTHER, TaskState::SHUTDOWN, TaskState::SHUTDOWN)]);
    assert_eq!(backends(&translate(&snap).unwrap(), "web"), [be("web.1", "198.19.128.4:8080", 1, LOCAL)]);
}

#[test]
fn a_draining_task_sharing_its_slot_with_its_replacement_is_renamed() {
    let mut snap = manager_snapshot();
    let mut net = network(
        "ingress",
        "xab33",
        "4096",
        "198.19.128.0/24",
        &[
            ("", "ingress-endpoint", "198.19.128.2", "198.18.254.1"),
            ("web", "web.1.old", "198.19.128.4", "198.18.254.1"),
            ("web", "web.1.new", "198.19.128.7", "198.18.254.1"),
        ],
    );
    net.ingress = Some(true);
    snap.networks = vec![net];
    snap.tasks = Some(vec![task("old", LOCAL, TaskState::SHUTDOWN, TaskState::RUNNING), running("new", LOCAL)]);
    let t = translate(&snap).unwrap();
    assert_eq!(
        backends(&t, "web"),
        [be("web.1", "198.19.128.7:8080", 1, LOCAL), be("web.1.old", "198.19.128.4:8080", 0, LOCAL)]
    );
}

#[test]
fn host_mode_ports_are_skipped_with_a_note_and_target_ports_split_services() {
    let mut snap = manager_snapshot();
    snap.services = Some(vec![service(
        "web",
        &[
            (8080, 8080, P::TCP, M::INGRESS),
            (5353, 5353, P::UDP, M::INGRESS),
            (8443, 8080, P::TCP, M::INGRESS),
            (9000, 9000, P::TCP, M::HOST),
        ],
        &[],
        &[],
    )]);
    let t = translate(&snap).unwrap();
    assert_eq!(t.notes.len(), 1, "{:?}", t.notes);
    assert!(
        t.notes[0].contains("\"web\"") && t.notes[0].contains("9000") && t.notes[0].contains("host mode"),
        "{:?}",
        t.notes
    );
    let names: Vec<&str> = t.cluster.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web/5353", "web/8080"]);
    let s = &t.cluster.services[1];
    assert_eq!(s.frontends.iter().map(|f| f.to_string()).collect::<Vec<_>>(), ["*:8080/tcp", "*:8443/tcp"]);
    assert_eq!(t.cluster.services[0].frontends[0].to_string(), "*:5353/udp");
    assert_eq!(backends(&t, "web/5353")[0].1, "198.19.128.4:5353");
}

fn user_net() -> NetworkInspect {
    let mut n = network(
        "d-net",
        "dnetid0000000000000000000",
        "4097,4098",
        "198.19.129.0/24",
        &[
            ("d-dns", "d-dns.1.t1", "198.19.129.2", "198.18.254.1"),
            ("d-dns", "d-dns.2.t2", "198.19.129.3", "198.18.254.2"),
        ],
    );
    n.options.as_mut().unwrap().insert(OPT_MTU.into(), "1400".into());
    // Docker 20.10 gossips no endpoint for user overlays: the local one is in Containers only.
    n.containers = Some(HashMap::from([(
        "lb-d-net".to_owned(),
        EndpointResource {
            name: Some("d-net-endpoint".into()),
            ipv4_address: Some("198.19.129.4/24".into()),
            ..Default::default()
        },
    )]));
    n
}

#[test]
fn dnsrr_service_opts_in_by_label_on_its_first_network() {
    let mut snap = manager_snapshot();
    snap.networks.push(user_net());
    snap.services.as_mut().unwrap().push(service(
        "d-dns",
        &[],
        &[(LABEL_PUBLISH, "9090:8080/tcp, 9090:8080/udp"), (LABEL_STICKY, "true")],
        &["dnetid0000000000000000000"],
    ));
    snap.tasks.as_mut().unwrap().extend([running("t1", LOCAL), running("t2", OTHER)]);
    let t = translate(&snap).unwrap();
    assert_eq!(t.notes, Vec::<String>::new());
    let net = t.cluster.network("d-net").unwrap();
    assert_eq!(
        (net.vni, net.mtu, net.endpoint(LOCAL), net.endpoint(OTHER)),
        (4097, 1400, Some(Ipv4Addr::new(198, 19, 129, 4)), None)
    );
    let s = t.cluster.services.iter().find(|s| s.name == "d-dns").unwrap();
    assert_eq!(s.frontends.iter().map(|f| f.to_string()).collect::<Vec<_>>(), ["*:9090/tcp", "*:9090/udp"]);
    assert_eq!((s.network.as_deref(), s.sticky), (Some("d-net"), true));
    assert_eq!(
        backends(&t, "d-dns"),
        [be("d-dns.1", "198.19.129.2:8080", 1, LOCAL), be("d-dns.2", "198.19.129.3:8080", 1, OTHER)]
    );
    assert!(crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default()).left_out.is_empty());
}

#[test]
fn a_bad_label_leaves_out_only_that_service_and_names_it() {
    let mut snap = manager_snapshot();
    snap.networks.push(user_net());
    let svcs = snap.services.as_mut().unwrap();
    svcs.push(service("d-bad", &[], &[(LABEL_PUBLISH, "9090:80/sctp")], &["d-net"]));
    svcs.push(service("d-nonet", &[], &[(LABEL_PUBLISH, "9091:80"), (LABEL_NETWORK, "nope")], &["d-net"]));
    svcs.push(service("d-clash", &[], &[(LABEL_PUBLISH, "8080:80")], &["d-net"]));
    let t = translate(&snap).unwrap();
    let names: Vec<&str> = t.cluster.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web"]);
    assert_eq!(t.notes.len(), 3, "{:#?}", t.notes);
    assert!(
        t.notes[0].contains("\"d-bad\"")
            && t.notes[0].contains("swarmlb.publish=\"9090:80/sctp\"")
            && t.notes[0].contains("sctp")
    );
    assert!(
        t.notes[1].contains("\"d-clash\"") && t.notes[1].contains("8080/tcp") && t.notes[1].contains("\"web\""),
        "{}",
        t.notes[1]
    );
    assert!(t.notes[2].contains("\"d-nonet\"") && t.notes[2].contains("\"nope\""));
}

#[test]
fn publish_label_syntax() {
    let p = |s| parse_publish_label(s);
    assert_eq!(
        p("8080:80/tcp,53:5353/udp,1:2").unwrap(),
        [
            PortSpec { published: 8080, target: 80, proto: Proto::Tcp },
            PortSpec { published: 53, target: 5353, proto: Proto::Udp },
            PortSpec { published: 1, target: 2, proto: Proto::Tcp }
        ]
    );
    for bad in ["", "8080", "8080:0", "70000:80", "a:80", "8080:80/icmp", "8080:80,"] {
        assert!(p(bad).is_err(), "{bad:?} accepted");
    }
    assert_eq!(parse_inspect_port("Target: 8080, Publish: 80"), Some((80, 8080)));
    assert_eq!(parse_inspect_port("garbage"), None);
    assert_eq!(split_task_name("web.1.liv0d6hx"), ("web.1", "liv0d6hx"));
}

#[test]
fn network_parsing_rejects_bad_vni_mtu_and_subnet() {
    for (opt, val, why) in [
        (OPT_VNI, "x", r#"="x" is not a VNI: "x" is not an integer"#),
        (OPT_VNI, "16777216", r#"="16777216" is not a VNI: 16777216 is out of range 1..=16777215"#),
        (OPT_MTU, "100", r#"="100" is not an MTU: 100 is out of range 576..=9216"#),
        (OPT_MTU, "9217", r#"="9217" is not an MTU: 9217 is out of range 576..=9216"#),
    ] {
        let mut snap = manager_snapshot();
        snap.networks[0].options.as_mut().unwrap().insert(opt.into(), val.into());
        let t = translate(&snap).unwrap();
        assert!(t.cluster.services.is_empty() && t.cluster.networks.is_empty());
        assert!(t.notes.iter().any(|n| n.contains("network \"ingress\"") && n.contains(why)), "{:?}", t.notes);
    }
    let mut snap = manager_snapshot();
    snap.networks[0].ipam.as_mut().unwrap().config.as_mut().unwrap()[0].subnet = Some("198.19.128.1/24".into());
    let notes = translate(&snap).unwrap().notes;
    assert!(notes[0].contains(r#"IPAM subnet: "198.19.128.1/24" has host bits set"#), "{notes:?}");
    let mut snap = manager_snapshot();
    snap.networks[0].ipam.as_mut().unwrap().config.as_mut().unwrap()[0].subnet = Some("fd00::/64".into());
    assert!(translate(&snap).unwrap().notes[0].contains("no IPv4 subnet"));
}

#[test]
fn network_parsing_takes_jumbo_mtus_and_skips_ipv6_subnets() {
    let mut snap = manager_snapshot();
    let net = &mut snap.networks[0];
    net.options.as_mut().unwrap().insert(OPT_MTU.into(), "9216".into());
    let config = net.ipam.as_mut().unwrap().config.as_mut().unwrap();
    config.insert(0, IpamConfig { subnet: Some("fd00:1::/64".into()), ..Default::default() });
    let t = translate(&snap).unwrap();
    let ingress = t.cluster.network("ingress").expect("ingress is read");
    assert_eq!((ingress.mtu, ingress.subnet.to_string()), (9216, "198.19.128.0/24".to_owned()));
}

#[test]
fn a_service_on_a_network_without_a_local_endpoint_is_left_out() {
    let mut snap = manager_snapshot();
    snap.networks[0] =
        network("ingress", "x", "4096", "198.19.128.0/24", &[("web", "web.1.aaa", "198.19.128.4", "198.18.254.1")]);
    let t = translate(&snap).unwrap();
    assert!(t.cluster.services.is_empty());
    assert!(t.notes[0].contains("\"web\"") && t.notes[0].contains("no load-balancer endpoint"), "{:?}", t.notes);
}

#[test]
fn not_in_swarm_is_an_error() {
    let mut snap = manager_snapshot();
    snap.info.swarm.as_mut().unwrap().local_node_state = Some(LocalNodeState::INACTIVE);
    assert!(matches!(translate(&snap), Err(TranslateError::NotInSwarm { .. })));
    let mut snap = manager_snapshot();
    snap.info.swarm.as_mut().unwrap().node_addr = Some("".into());
    assert!(matches!(translate(&snap), Err(TranslateError::NoNodeAddr(_))));
}

#[test]
fn worker_falls_back_to_what_the_node_sees() {
    let mut user = user_net();
    user.peers = None;
    let container = ContainerSummary {
        labels: Some(HashMap::from([
            ("com.docker.swarm.service.name".to_owned(), "d-dns".to_owned()),
            (LABEL_PUBLISH.to_owned(), "9090:8080".to_owned()),
        ])),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(HashMap::from([("d-net".to_owned(), EndpointSettings::default())])),
        }),
        ..Default::default()
    };
    let snap = Snapshot {
        info: info(false),
        nodes: None,
        services: None,
        tasks: None,
        networks: vec![ingress(), user],
        containers: vec![container],
        sandbox_keys: HashMap::new(),
    };
    let t = translate(&snap).unwrap();
    // Peers are known by address only.
    let nodes: Vec<&str> = t.cluster.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(nodes, [LOCAL, "peer-198.18.254.2"]);
    let names: Vec<&str> = t.cluster.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["web", "d-dns"]);
    // The inspect's port strings carry no protocol: both are published. Every listed task is a
    // backend.
    let frontends: Vec<String> = t.cluster.services[0].frontends.iter().map(|f| f.to_string()).collect();
    assert_eq!(frontends, ["*:8080/tcp", "*:8080/udp"]);
    assert_eq!(
        backends(&t, "web"),
        [
            be("web.1", "198.19.128.4:8080", 1, LOCAL),
            be("web.2", "198.19.128.5:8080", 1, "peer-198.18.254.2"),
            be("web.3", "198.19.128.6:8080", 1, LOCAL)
        ]
    );
    assert_eq!(backends(&t, "d-dns").len(), 2);
    assert!(crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default()).left_out.is_empty());
}

#[test]
fn worker_publishes_both_protocols_except_on_a_number_two_services_share() {
    let mut ing = ingress();
    let services = ing.services.as_mut().unwrap();
    // web publishes 8080 for TCP and UDP (the inspect lists it twice) and 9000.
    services.get_mut("web").unwrap()["Ports"] =
        json!(["Target: 8080, Publish: 8080", "Target: 8080, Publish: 8080", "Target: 9000, Publish: 9000"]);
    // dns publishes 9000 too (so one of the two is UDP) and 53.
    let dns_task = json!({"Name": "dns.1.ddd", "EndpointID": "e", "EndpointIP": "198.19.128.7", "Info": {"Host IP": "198.18.254.1"}});
    services.insert(
        "dns".into(),
        json!({"VIP": "<nil>", "Ports": ["Target: 9000, Publish: 9000", "Target: 5353, Publish: 53"], "Tasks": [dns_task]}),
    );
    let snap = Snapshot {
        info: info(false),
        nodes: None,
        services: None,
        tasks: None,
        networks: vec![ing],
        containers: vec![],
        sandbox_keys: HashMap::new(),
    };
    let t = translate(&snap).unwrap();
    let frontends = |name: &str| -> Vec<String> {
        let svc = t.cluster.services.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no service {name}"));
        svc.frontends.iter().map(|f| f.to_string()).collect()
    };
    assert_eq!(frontends("web"), ["*:8080/tcp", "*:8080/udp"]);
    assert_eq!(frontends("dns"), ["*:53/tcp", "*:53/udp"]);
    assert_eq!(backends(&t, "dns"), [be("dns.1", "198.19.128.7:5353", 1, LOCAL)]);
    assert!(
        t.notes.iter().any(|n| n.contains("port 9000") && n.contains("\"dns\"") && n.contains("\"web\"")),
        "{:?}",
        t.notes
    );
    assert!(crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default()).left_out.is_empty());
}
