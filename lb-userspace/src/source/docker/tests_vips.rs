//! The VIP services and member namespaces of the translation, on a manager's and a worker's
//! snapshot of one node: an attachable overlay `appnet` with a VIP service, a dnsrr service and a
//! VIP outside its subnet, a service published on ingress only, and local containers on `appnet`,
//! on the bridge only and on the host's network.

use std::{collections::HashMap, net::SocketAddrV4};

use bollard::models::{
    ContainerSummary, ContainerSummaryHostConfig, ContainerSummaryNetworkSettings, EndpointPortConfigProtocolEnum as P,
    EndpointPortConfigPublishModeEnum as M, EndpointResource, EndpointSettings, EndpointSpec, EndpointSpecModeEnum,
    NetworkInspect, Service, ServiceEndpoint, ServiceEndpointVirtualIps, ServiceSpec, TaskState,
};
use serde_json::json;

use super::{
    tests::{LOCAL, OTHER, info, ingress, network, node, running, service, task},
    translate::*,
};
use crate::model::{self, ANY_PORT, Backend, Frontend, Member, Proto};

const APPNET_ID: &str = "appnetid00000000000000000";
const INGRESS_ID: &str = "xab33rw0brqlat7awu1og6lp1";

fn set_vip(net: &mut NetworkInspect, svc: &str, vip: &str) {
    net.services.as_mut().unwrap().get_mut(svc).unwrap()["VIP"] = json!(vip);
}

/// `appnet` as this node's verbose inspect shows it: `api` (VIP, 3 tasks), `dns` (dnsrr) and
/// `far` (a VIP outside the subnet); the local `lb-appnet` endpoint and one attached container.
fn appnet() -> NetworkInspect {
    let mut n = network(
        "appnet",
        APPNET_ID,
        "4100",
        "10.0.1.0/24",
        &[
            ("api", "api.1.t1", "10.0.1.6", "198.18.254.1"),
            ("api", "api.2.t2", "10.0.1.7", "198.18.254.2"),
            ("api", "api.3.t3", "10.0.1.8", "198.18.254.1"),
            ("dns", "dns.1.d1", "10.0.1.10", "198.18.254.2"),
            ("far", "far.1.f1", "10.0.1.12", "198.18.254.1"),
        ],
    );
    set_vip(&mut n, "api", "10.0.1.5");
    set_vip(&mut n, "dns", "");
    set_vip(&mut n, "far", "10.0.2.5");
    n.attachable = Some(true);
    n.containers = Some(HashMap::from([
        (
            "lb-appnet".to_owned(),
            EndpointResource {
                name: Some("appnet-endpoint".into()),
                ipv4_address: Some("10.0.1.2/24".into()),
                ..Default::default()
            },
        ),
        (
            "c1".to_owned(),
            EndpointResource {
                name: Some("client".into()),
                ipv4_address: Some("10.0.1.20/24".into()),
                ..Default::default()
            },
        ),
    ]));
    n
}

/// Ingress, where `web` (published 8080) has a VIP too.
fn ingress_with_vip() -> NetworkInspect {
    let mut n = ingress();
    set_vip(&mut n, "web", "198.19.128.3");
    n
}

/// A service without published ports, with its `Endpoint.VirtualIPs` (network id, CIDR).
fn vip_service(name: &str, mode: EndpointSpecModeEnum, vips: &[(&str, &str)]) -> Service {
    Service {
        id: Some(format!("id-{name}")),
        spec: Some(ServiceSpec {
            name: Some(name.into()),
            endpoint_spec: Some(EndpointSpec { mode: Some(mode), ports: None }),
            ..Default::default()
        }),
        endpoint: Some(ServiceEndpoint { virtual_ips: Some(virtual_ips(vips)), ..Default::default() }),
        ..Default::default()
    }
}

fn virtual_ips(vips: &[(&str, &str)]) -> Vec<ServiceEndpointVirtualIps> {
    vips.iter()
        .map(|(net, addr)| ServiceEndpointVirtualIps {
            network_id: Some(net.to_string()),
            addr: Some(addr.to_string()),
        })
        .collect()
}

fn container(id: &str, name: &str, mode: &str, networks: &[(&str, &str)]) -> ContainerSummary {
    ContainerSummary {
        id: Some(id.into()),
        names: Some(vec![format!("/{name}")]),
        host_config: Some(ContainerSummaryHostConfig { network_mode: Some(mode.into()), ..Default::default() }),
        network_settings: Some(ContainerSummaryNetworkSettings {
            networks: Some(
                networks
                    .iter()
                    .map(|(n, id)| {
                        (n.to_string(), EndpointSettings { network_id: Some(id.to_string()), ..Default::default() })
                    })
                    .collect(),
            ),
        }),
        ..Default::default()
    }
}

/// On `appnet`, on the bridge only, on the host's network, and one that could not be inspected.
fn containers() -> (Vec<ContainerSummary>, HashMap<String, String>) {
    let containers = vec![
        container("c2", "solo", "default", &[("bridge", "bridgeid")]),
        container("c1", "client", "appnet", &[("appnet", APPNET_ID)]),
        container("c3", "hostnet", "host", &[("host", "hostid")]),
        container("c4", "gone", "default", &[("bridge", "bridgeid")]),
    ];
    let keys = [("c1", "/var/run/docker/netns/1a2b"), ("c2", "/var/run/docker/netns/3c4d"), ("c3", "")];
    (containers, keys.iter().map(|(id, k)| (id.to_string(), k.to_string())).collect())
}

fn manager_snapshot() -> Snapshot {
    let mut web = service("web", &[(8080, 8080, P::TCP, M::INGRESS)], &[], &[]);
    web.endpoint.as_mut().unwrap().virtual_ips = Some(virtual_ips(&[(INGRESS_ID, "198.19.128.3/24")]));
    let (containers, sandbox_keys) = containers();
    Snapshot {
        info: info(true),
        nodes: Some(vec![node(LOCAL, "198.18.254.1"), node(OTHER, "198.18.254.2")]),
        services: Some(vec![
            web,
            vip_service("api", EndpointSpecModeEnum::VIP, &[(APPNET_ID, "10.0.1.5/24")]),
            vip_service("dns", EndpointSpecModeEnum::DNSRR, &[]),
            vip_service("far", EndpointSpecModeEnum::VIP, &[(APPNET_ID, "10.0.2.5/24")]),
        ]),
        tasks: Some(vec![
            running("aaa", LOCAL),
            running("bbb", OTHER),
            running("ccc", LOCAL),
            running("t1", LOCAL),
            running("t2", OTHER),
            // Scaled down, still stopping: drained.
            task("t3", LOCAL, TaskState::SHUTDOWN, TaskState::RUNNING),
            running("d1", OTHER),
            running("f1", LOCAL),
        ]),
        networks: vec![ingress_with_vip(), appnet()],
        containers,
        sandbox_keys,
    }
}

/// The same node as a worker: no `/services`, `/tasks`, `/nodes`, and no local endpoint on
/// `appnet` yet (a VIP service does not need one).
fn worker_snapshot() -> Snapshot {
    let mut net = appnet();
    net.containers.as_mut().unwrap().remove("lb-appnet");
    let (containers, sandbox_keys) = containers();
    Snapshot {
        info: info(false),
        nodes: None,
        services: None,
        tasks: None,
        networks: vec![ingress_with_vip(), net],
        containers,
        sandbox_keys,
    }
}

fn api_vip(backends: [(&str, &str, u32, &str); 3]) -> model::Service {
    let vip = "10.0.1.5".parse().unwrap();
    model::Service {
        name: "api@appnet".into(),
        frontends: vec![
            Frontend { addr: Some(vip), port: ANY_PORT, proto: Proto::Tcp },
            Frontend { addr: Some(vip), port: ANY_PORT, proto: Proto::Udp },
        ],
        backends: backends
            .iter()
            .map(|(name, ip, weight, node)| Backend {
                name: name.to_string(),
                addr: SocketAddrV4::new(ip.parse().unwrap(), ANY_PORT),
                weight: *weight,
                node: Some(node.to_string()),
            })
            .collect(),
        sticky: false,
        nat_addrs: vec![],
        network: Some("appnet".into()),
        vip: true,
        client_source: false,
    }
}

fn expected_members() -> Vec<Member> {
    let member = |netns: &str, name: &str, networks: &[&str], host: bool| Member {
        netns: netns.into(),
        name: name.into(),
        networks: networks.iter().map(|n| n.to_string()).collect(),
        node: true,
        host,
    };
    vec![
        member(HOST_NETNS, "host", &[], true),
        member("/var/run/docker/netns/1a2b", "client", &["appnet"], false),
        member("/var/run/docker/netns/3c4d", "solo", &[], false),
    ]
}

fn far_note(notes: &[String]) -> bool {
    notes.iter().any(|n| n.contains("\"far\"") && n.contains("10.0.2.5") && n.contains("10.0.1.0/24"))
}

fn service_names(t: &Translation) -> Vec<&str> {
    t.cluster.services.iter().map(|s| s.name.as_str()).collect()
}

#[test]
fn manager_serves_the_vips_of_user_overlays_and_drains_stopping_tasks() {
    let t = translate(&manager_snapshot()).unwrap();
    assert_eq!(t.notes.len(), 1, "{:#?}", t.notes);
    assert!(far_note(&t.notes), "{:?}", t.notes);
    // No VIP service for web (ingress), dns (dnsrr) or far (outside the subnet).
    assert_eq!(service_names(&t), ["web", "api@appnet"]);
    assert_eq!(
        t.cluster.services[1],
        api_vip([("api.1", "10.0.1.6", 1, LOCAL), ("api.2", "10.0.1.7", 1, OTHER), ("api.3", "10.0.1.8", 0, LOCAL)])
    );
    let networks: Vec<&str> = t.cluster.networks.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(networks, ["appnet", "ingress"]);
    assert_eq!(t.cluster.members, expected_members());
    let planned = crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default());
    assert!(planned.left_out.is_empty(), "{:?}", planned.left_out);
}

#[test]
fn worker_serves_the_vips_its_inspects_list_without_a_local_endpoint() {
    let t = translate(&worker_snapshot()).unwrap();
    assert_eq!(t.notes.len(), 1, "{:#?}", t.notes);
    assert!(far_note(&t.notes), "{:?}", t.notes);
    assert_eq!(service_names(&t), ["web", "api@appnet"]);
    let peer = "peer-198.18.254.2";
    assert_eq!(
        t.cluster.services[1],
        api_vip([("api.1", "10.0.1.6", 1, LOCAL), ("api.2", "10.0.1.7", 1, peer), ("api.3", "10.0.1.8", 1, LOCAL)])
    );
    let appnet = t.cluster.network("appnet").expect("a VIP's network is in the cluster");
    assert_eq!((appnet.vni, appnet.endpoint(LOCAL)), (4100, None));
    assert_eq!(t.cluster.members, expected_members());
    let planned = crate::planner::plan(&t.cluster, Some(LOCAL), &Default::default());
    assert!(planned.left_out.is_empty(), "{:?}", planned.left_out);
}

#[test]
fn manager_trusts_its_virtual_ips_over_the_inspect() {
    let mut snap = manager_snapshot();
    let net = &mut snap.networks[1];
    set_vip(net, "api", "10.0.1.9");
    set_vip(net, "dns", "10.0.1.11");
    snap.services.as_mut().unwrap().push(vip_service("other", EndpointSpecModeEnum::VIP, &[("nonet", "10.0.3.5/24")]));
    let t = translate(&snap).unwrap();
    assert_eq!(service_names(&t), ["web", "api@appnet"]);
    assert_eq!(t.cluster.services[1].frontends[0].to_string(), "10.0.1.5:*/tcp");
    let has = |words: &[&str]| t.notes.iter().any(|n| words.iter().all(|w| n.contains(w)));
    assert!(has(&["\"api\"", "\"10.0.1.9\"", "using 10.0.1.5"]), "{:#?}", t.notes);
    assert!(has(&["\"dns\"", "10.0.1.11", "/services has none"]), "{:#?}", t.notes);
    // "other" is on a network no local task is attached to: not this node's to serve, no note.
    assert!(!t.notes.iter().any(|n| n.contains("\"other\"")), "{:#?}", t.notes);
    assert!(far_note(&t.notes));
    assert_eq!(t.notes.len(), 3, "{:#?}", t.notes);
}
