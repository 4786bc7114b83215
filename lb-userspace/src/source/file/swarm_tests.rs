use super::*;

/// Two nodes, two networks (db-net only on node-1), two overlay services.
const SWARM: &str = r#"[node]
snat_ports = "16384-32767"

[swarm]
vxlan_port = 4790

[[swarm.node]]
name = "node-1"
addr = "198.18.0.11"

[[swarm.node]]
name = "node-2"
addr = "198.18.0.12"

[[network]]
name = "web-net"
vni = 4097
subnet = "198.19.1.0/24"

[[network.endpoint]]
node = "node-1"
addr = "198.19.1.2"

[[network.endpoint]]
node = "node-2"
addr = "198.19.1.3"

[[network]]
name = "db-net"
vni = 4098
subnet = "198.19.2.0/24"
mtu = 1400

[[network.endpoint]]
node = "node-1"
addr = "198.19.2.2"

[[service]]
name = "web"
network = "web-net"
frontends = ["*:80/tcp"]

[[service.backend]]
name = "web.1"
addr = "198.19.1.100:8080"
node = "node-1"

[[service.backend]]
name = "web.2"
addr = "198.19.1.101:8080"
node = "node-2"

[[service]]
name = "db"
network = "db-net"
frontends = ["*:5432/tcp"]

[[service.backend]]
name = "db.1"
addr = "198.19.2.100:5432"
"#;

fn err_as(local: Option<&str>, text: &str) -> String {
    parse("config.toml", text, local).unwrap_err().to_string()
}

/// Replaces the first occurrence of `from` in the sample and parses it as node-1.
fn bad(from: &str, to: &str) -> String {
    assert!(SWARM.contains(from), "{from:?} not in the sample");
    err_as(Some("node-1"), &SWARM.replacen(from, to, 1))
}

#[test]
fn parses_nodes_networks_endpoints_and_task_nodes() {
    let c = parse("config.toml", SWARM, Some("node-1")).unwrap();
    assert_eq!(c.swarm.vxlan_port, 4790);
    let nodes: Vec<(&str, Ipv4Addr)> = c.nodes.iter().map(|n| (n.name.as_str(), n.addr)).collect();
    assert_eq!(nodes, [("node-1", Ipv4Addr::new(198, 18, 0, 11)), ("node-2", Ipv4Addr::new(198, 18, 0, 12))]);
    let web = c.network("web-net").unwrap();
    assert_eq!((web.vni, web.subnet.to_string(), web.mtu), (4097, "198.19.1.0/24".to_owned(), 1450));
    assert_eq!(web.endpoint("node-1"), Some(Ipv4Addr::new(198, 19, 1, 2)));
    assert_eq!(web.endpoint("node-2"), Some(Ipv4Addr::new(198, 19, 1, 3)));
    let db = c.network("db-net").unwrap();
    assert_eq!((db.vni, db.mtu, db.endpoints.len()), (4098, 1400, 1));
    let svc = &c.services[0];
    assert_eq!((svc.network.as_deref(), svc.nat_addrs.is_empty()), (Some("web-net"), true));
    let task_nodes: Vec<Option<&str>> = svc.backends.iter().map(|b| b.node.as_deref()).collect();
    assert_eq!(task_nodes, [Some("node-1"), Some("node-2")]);
    assert_eq!(c.services[1].backends[0].node, None, "a task's node is optional");
}

#[test]
fn swarm_defaults_apply() {
    let c = parse("c.toml", &SWARM.replacen("vxlan_port = 4790\n", "", 1), Some("node-1")).unwrap();
    assert_eq!(c.swarm.vxlan_port, 4789);
    // `[[swarm.node]]` alone, without a `[swarm]` header, is the same thing.
    let c = parse("c.toml", &SWARM.replacen("[swarm]\nvxlan_port = 4790\n", "", 1), Some("node-1")).unwrap();
    assert_eq!((c.swarm.vxlan_port, c.nodes.len()), (4789, 2));
    // Single-node files have no swarm part at all.
    let c = parse("c.toml", "[node]\nnat_addr = \"198.18.2.1\"\n", None).unwrap();
    assert!(c.nodes.is_empty() && c.networks.is_empty());
}

#[test]
fn the_swarm_example_parses_as_every_node() {
    let text = include_str!("../../../config/swarm-example.toml");
    for node in ["node-1", "node-2", "node-3"] {
        let c = parse("swarm-example.toml", text, Some(node)).unwrap();
        assert_eq!((c.nodes.len(), c.networks.len()), (3, 1));
        let tasks: Vec<&str> = c.services[0].backends.iter().filter_map(|b| b.node.as_deref()).collect();
        assert_eq!(tasks, ["node-1", "node-2", "node-3"]);
    }
}

#[test]
fn swarm_errors_name_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        ("vxlan_port = 4790", "vxlan_port = 0", "config.toml:5: swarm: field vxlan_port: 0 is out of range 1..=65535"),
        (
            r#"name = "node-2""#,
            r#"name = "node-1""#,
            r#"config.toml:12: swarm node: field name: duplicate node name "node-1""#,
        ),
        (
            r#"addr = "198.18.0.12""#,
            r#"addr = "198.18.0.11""#,
            r#"config.toml:13: swarm node "node-2": field addr: 198.18.0.11 is already node "node-1"'s address"#,
        ),
        (
            r#"addr = "198.18.0.12""#,
            r#"addr = "224.0.0.1""#,
            r#"config.toml:13: swarm node "node-2": field addr: 224.0.0.1 is not a unicast address"#,
        ),
        (
            r#"name = "db-net""#,
            r#"name = "web-net""#,
            r#"config.toml:29: network: field name: duplicate network name "web-net""#,
        ),
        (
            "vni = 4097",
            "vni = 16777216",
            r#"config.toml:17: network "web-net": field vni: 16777216 is out of range 1..=16777215"#,
        ),
        (
            "vni = 4098",
            "vni = 4097",
            r#"config.toml:30: network "db-net": field vni: VNI 4097 is already network "web-net"'s"#,
        ),
        (
            r#"subnet = "198.19.1.0/24""#,
            r#"subnet = "198.19.1.5/24""#,
            r#"config.toml:18: network "web-net": field subnet: "198.19.1.5/24" has host bits set (did you mean "198.19.1.0/24"?)"#,
        ),
        (
            r#"subnet = "198.19.1.0/24""#,
            r#"subnet = "198.19.1.0""#,
            r#"config.toml:18: network "web-net": field subnet: invalid subnet "198.19.1.0" (expected ADDR/PREFIX, e.g. "198.19.1.0/24")"#,
        ),
        (
            r#"subnet = "198.19.2.0/24""#,
            r#"subnet = "198.19.0.0/16""#,
            r#"config.toml:31: network "db-net": field subnet: 198.19.0.0/16 overlaps network "web-net"'s subnet 198.19.1.0/24"#,
        ),
        ("mtu = 1400", "mtu = 100", r#"config.toml:32: network "db-net": field mtu: 100 is out of range 576..=9216"#),
        ("mtu = 1400", "mtu = 9217", r#"config.toml:32: network "db-net": field mtu: 9217 is out of range 576..=9216"#),
        (
            r#"subnet = "198.19.2.0/24""#,
            r#"subnet = "198.19.2.0/31""#,
            r#"config.toml:31: network "db-net": field subnet: invalid subnet "198.19.2.0/31": prefix length must be 1..=30"#,
        ),
        (
            "mtu = 1400",
            "mtu = \"big\"",
            r#"config.toml:32: network "db-net": field mtu: expected an integer, found string"#,
        ),
        (
            "node = \"node-1\"\naddr = \"198.19.2.2\"",
            "node = \"node-9\"\naddr = \"198.19.2.2\"",
            r#"config.toml:35: network "db-net" endpoint: field node: unknown node "node-9" (not a [[swarm.node]])"#,
        ),
        (
            "node = \"node-2\"\naddr = \"198.19.1.3\"",
            "node = \"node-1\"\naddr = \"198.19.1.3\"",
            r#"config.toml:25: network "web-net" endpoint: field node: node "node-1" already has an endpoint on this network"#,
        ),
        (
            r#"addr = "198.19.1.3""#,
            r#"addr = "198.19.1.2""#,
            r#"config.toml:26: network "web-net" endpoint of node "node-2": field addr: 198.19.1.2 is already node "node-1"'s endpoint"#,
        ),
        (
            r#"addr = "198.19.1.3""#,
            r#"addr = "198.19.9.3""#,
            r#"config.toml:26: network "web-net" endpoint of node "node-2": field addr: 198.19.9.3 is not a host address of subnet 198.19.1.0/24"#,
        ),
        (
            r#"addr = "198.19.1.3""#,
            r#"addr = "198.19.1.255""#,
            r#"config.toml:26: network "web-net" endpoint of node "node-2": field addr: 198.19.1.255 is not a host address of subnet 198.19.1.0/24"#,
        ),
        (
            "addr = \"198.19.2.2\"\n",
            "",
            r#"config.toml:34: network "db-net" endpoint of node "node-1": field addr: missing (required)"#,
        ),
        (
            r#"network = "db-net""#,
            r#"network = "nope""#,
            r#"config.toml:55: service "db": field network: unknown network "nope" (no [[network]] has that name)"#,
        ),
        (
            "network = \"web-net\"\n",
            "network = \"web-net\"\nnat_addr = \"198.18.2.1\"\n",
            r#"config.toml:41: service "web": field nat_addr: not allowed on a service with a network: its source address is this node's endpoint on network "web-net""#,
        ),
        (
            r#"addr = "198.19.1.101:8080""#,
            r#"addr = "198.18.5.101:8080""#,
            r#"config.toml:50: service "web" backend "web.2": field addr: 198.18.5.101 is not a host address of network "web-net" (198.19.1.0/24)"#,
        ),
        (
            r#"addr = "198.19.1.101:8080""#,
            r#"addr = "198.19.1.3:8080""#,
            r#"config.toml:50: service "web" backend "web.2": field addr: 198.19.1.3 is node "node-2"'s load-balancer endpoint on network "web-net", not a task"#,
        ),
        (
            "addr = \"198.19.1.101:8080\"\nnode = \"node-2\"",
            "addr = \"198.19.1.101:8080\"\nnode = \"node-3\"",
            r#"config.toml:51: service "web" backend "web.2": field node: unknown node "node-3" (not a [[swarm.node]])"#,
        ),
        (
            "mtu = 1400",
            "mtux = 1400",
            "config.toml:32: unknown field `mtux`, expected one of `name`, `vni`, `subnet`, `mtu`, `endpoint`",
        ),
    ];
    for (from, to, want) in cases {
        assert_eq!(&bad(from, to), want, "replacing {from:?} with {to:?}");
    }
}

#[test]
fn the_local_node_is_checked_against_the_file() {
    assert_eq!(
        err_as(None, SWARM),
        r#"config.toml:7: swarm node: this file describes swarm nodes ("node-1", "node-2"): run with --node NAME to say which one this is"#
    );
    assert_eq!(
        err_as(Some("node-9"), SWARM),
        r#"config.toml:7: swarm node: --node "node-9" is not one of the swarm nodes ("node-1", "node-2")"#
    );
    // db-net has no endpoint on node-2, and service "db" uses it.
    assert_eq!(
        err_as(Some("node-2"), SWARM),
        r#"config.toml:55: service "db": field network: network "db-net" has no endpoint for this node "node-2" (add a [[network.endpoint]] with node = "node-2")"#
    );
    let single = "[node]\nnat_addr = \"198.18.2.1\"\n";
    assert_eq!(
        err_as(Some("node-1"), single),
        r#"config.toml: --node "node-1" given, but the file has no [[swarm.node]]"#
    );
    let no_nodes = "[[network]]\nname = \"n\"\nvni = 5000\nsubnet = \"198.19.3.0/24\"\n\n[[service]]\nname = \"s\"\nnetwork = \"n\"\nfrontends = [\"*:80/tcp\"]\n";
    assert_eq!(
        err_as(None, no_nodes),
        r#"config.toml:8: service "s": field network: network "n" needs this node's endpoint address, but no node was named (run with --node NAME)"#
    );
}
