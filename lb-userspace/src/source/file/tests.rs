use super::*;
use crate::model::{MalformedPolicy, Proto};

const GOOD: &str = r#"
[node]
nat_addr = "198.18.2.1"
snat_ports = "16384-32767"
malformed = "drop"

[[service]]
name = "web"
frontends = ["198.18.1.1:80/tcp", "*:8080/tcp"]
sticky = true

[[service.backend]]
name = "web-1"
addr = "198.18.2.11:8080"

[[service.backend]]
name = "web-2"
addr = "198.18.2.12:8080"
weight = 0

[[service]]
name = "dns"
frontends = ["*:53/udp"]
nat_addr = "198.18.2.2"

[[service.backend]]
name = "dns-1"
addr = "198.18.2.21:53"
weight = 3
"#;

fn err(text: &str) -> String {
    parse("config.toml", text, None).unwrap_err().to_string()
}

/// Replaces the first occurrence of `from` in the good file.
fn bad(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the sample");
    err(&GOOD.replacen(from, to, 1))
}

#[test]
fn parses_the_documented_format() {
    let c = parse("config.toml", GOOD, None).unwrap();
    assert_eq!(c.node.snat_ports, (16384, 32767));
    assert_eq!(c.node.malformed, MalformedPolicy::Drop);
    assert_eq!(c.services.len(), 2);
    let web = &c.services[0];
    assert!(web.sticky);
    assert_eq!(web.nat_addrs, [Ipv4Addr::new(198, 18, 2, 1)]);
    assert_eq!(web.frontends[0].to_string(), "198.18.1.1:80/tcp");
    assert_eq!(web.frontends[1].to_string(), "*:8080/tcp");
    assert_eq!((web.backends[0].weight, web.backends[1].weight), (1, 0));
    let dns = &c.services[1];
    assert_eq!(dns.nat_addrs, [Ipv4Addr::new(198, 18, 2, 2)]);
    assert_eq!(dns.frontends[0].proto, Proto::Udp);
    assert_eq!(dns.backends[0].weight, 3);
}

#[test]
fn defaults_apply() {
    let c = parse("c.toml", "[node]\nnat_addr = \"198.18.2.1\"\n", None).unwrap();
    assert_eq!(c.node, NodeSettings::default());
    assert!(c.services.is_empty());
    assert!(parse("c.toml", "", None).unwrap().services.is_empty());
}

#[test]
fn the_example_config_parses() {
    let text = include_str!("../../../config/example.toml");
    parse("example.toml", text, None).unwrap();
}

#[test]
fn errors_name_file_line_and_field() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"addr = "198.18.2.12:8080""#,
            r#"addr = "198.18.1.x:80""#,
            r#"config.toml:18: service "web" backend "web-2": field addr: invalid socket address "198.18.1.x:80""#,
        ),
        (
            r#"addr = "198.18.2.11:8080""#,
            r#"addr = "198.18.2.11:0""#,
            r#"config.toml:14: service "web" backend "web-1": field addr: "198.18.2.11:0" is not a unicast address with a nonzero port"#,
        ),
        (
            r#"addr = "198.18.2.11:8080""#,
            r#"addr = 7"#,
            r#"config.toml:14: service "web" backend "web-1": field addr: expected a string, found integer"#,
        ),
        (
            r#"addr = "198.18.2.12:8080""#,
            r#"addr = "198.18.2.11:8080""#,
            r#"config.toml:18: service "web" backend "web-2": field addr: address 198.18.2.11:8080 already used by another backend of this service"#,
        ),
        (
            "weight = 0",
            "weight = -1",
            r#"config.toml:19: service "web" backend "web-2": field weight: -1 is out of range 0..=10000"#,
        ),
        (
            "weight = 0",
            "weight = \"x\"",
            r#"config.toml:19: service "web" backend "web-2": field weight: expected an integer, found string"#,
        ),
        (
            r#"name = "web-2""#,
            r#"name = "web-1""#,
            r#"config.toml:17: service "web": field name: duplicate backend name "web-1""#,
        ),
        (r#"name = "dns""#, r#"name = "web""#, r#"config.toml:22: field name: duplicate service name "web""#),
        (
            r#"name = "web""#,
            r#"name = "we b""#,
            r#"config.toml:8: service: field name: invalid name "we b" (1-128 characters of A-Z a-z 0-9 - _ .)"#,
        ),
        (
            r#"name = "web""#,
            r#"nome = "web""#,
            r#"config.toml:8: unknown field `nome`, expected one of `name`, `network`, `vip`, `source`, `frontends`, `sticky`, `nat_addr`, `backend`"#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = ["*:8080/tcp"]"#,
            r#"config.toml:23: service "dns": field frontends: frontend *:8080/tcp already belongs to service "web""#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = ["*:53/icmp"]"#,
            r#"config.toml:23: service "dns": field frontends: invalid frontend "*:53/icmp": unknown protocol "icmp" (tcp or udp)"#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = ["1.2.3:53/udp"]"#,
            r#"config.toml:23: service "dns": field frontends: invalid frontend "1.2.3:53/udp": invalid IPv4 address "1.2.3" (or * for any local address)"#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = ["*:0/udp"]"#,
            r#"config.toml:23: service "dns": field frontends: invalid frontend "*:0/udp": port 0 is not a valid frontend port"#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = []"#,
            r#"config.toml:23: service "dns": field frontends: at least one frontend is required"#,
        ),
        (
            r#"frontends = ["*:53/udp"]"#,
            r#"frontends = "*:53/udp""#,
            r#"config.toml:23: service "dns": field frontends: expected an array of strings, found string"#,
        ),
        (r#"frontends = ["*:53/udp"]"#, "", r#"config.toml:21: service "dns": field frontends: missing (required)"#),
        (
            "sticky = true",
            "sticky = 1",
            r#"config.toml:10: service "web": field sticky: expected true or false, found integer"#,
        ),
        (
            r#"nat_addr = "198.18.2.2""#,
            r#"nat_addr = "198.18.2""#,
            r#"config.toml:24: service "dns": field nat_addr: invalid IPv4 address "198.18.2""#,
        ),
        (
            r#"nat_addr = "198.18.2.2""#,
            r#"nat_addr = ["198.18.2.2", "198.18.2.2"]"#,
            r#"config.toml:24: service "dns": field nat_addr: 198.18.2.2 is listed twice"#,
        ),
        (
            r#"nat_addr = "198.18.2.2""#,
            r#"nat_addr = ["198.18.2.2", "x"]"#,
            r#"config.toml:24: service "dns": field nat_addr: invalid IPv4 address "x""#,
        ),
        (
            r#"nat_addr = "198.18.2.2""#,
            r#"nat_addr = []"#,
            r#"config.toml:24: service "dns": field nat_addr: expected 1 to 4 addresses, found 0"#,
        ),
        (
            r#"snat_ports = "16384-32767""#,
            r#"snat_ports = "32767-16384""#,
            r#"config.toml:4: node: field snat_ports: port range "32767-16384" is empty or starts at 0"#,
        ),
        (
            r#"snat_ports = "16384-32767""#,
            r#"snat_ports = "16384-70000""#,
            r#"config.toml:4: node: field snat_ports: invalid port range "16384-70000" (expected "FIRST-LAST", e.g. "16384-32767")"#,
        ),
        (
            r#"snat_ports = "16384-32767""#,
            r#"snat_ports = "16384-16400""#,
            r#"config.toml:4: node: field snat_ports: port range "16384-16400" is too small (at least 1024 ports)"#,
        ),
        (
            r#"malformed = "drop""#,
            r#"malformed = "reject""#,
            r#"config.toml:5: node: field malformed: expected "pass" or "drop", found "reject""#,
        ),
        (
            r#"nat_addr = "198.18.2.1""#,
            "",
            r#"config.toml:7: service "web": field nat_addr: missing: set it here or in [node], or give the service a network"#,
        ),
        (
            "sticky = true",
            "source = \"direct\"",
            r#"config.toml:10: service "web": field source: expected "nat" or "client", found "direct""#,
        ),
        (
            "[[service]]\nname = \"web\"",
            "[[service]\nname = \"web\"",
            "config.toml:7: invalid table header: expected `.`, `]]`",
        ),
    ];
    for (from, to, want) in cases {
        assert_eq!(&bad(from, to), want, "replacing {from:?} with {to:?}");
    }
}

#[test]
fn a_service_may_have_several_nat_addresses() {
    let text = GOOD.replace(r#"nat_addr = "198.18.2.2""#, r#"nat_addr = ["198.18.2.2", "198.18.2.3"]"#);
    let c = parse("config.toml", &text, None).unwrap();
    let dns = c.services.iter().find(|s| s.name == "dns").unwrap();
    assert_eq!(dns.nat_addrs, [Ipv4Addr::new(198, 18, 2, 2), Ipv4Addr::new(198, 18, 2, 3)]);
}

#[test]
fn missing_file_is_an_error_naming_it() {
    let e = load(Path::new("/nonexistent/swarmlb.toml"), None).unwrap_err().to_string();
    assert!(e.starts_with("/nonexistent/swarmlb.toml: cannot read"), "{e}");
}

const VIPS: &str = r#"
[[network]]
name = "appnet"
vni = 4242
subnet = "198.19.5.0/24"

[[service]]
name = "api"
network = "appnet"
vip = "198.19.5.200"

[[service.backend]]
name = "api.1"
addr = "198.19.5.11"

[[member]]
name = "client"
netns = "/run/netns/client"
networks = ["appnet"]
node = true

[[member]]
name = "host"
netns = "/proc/self/ns/net"
node = true
host = true
"#;

#[test]
fn a_vip_service_takes_every_port_of_its_vip_and_members_name_their_networks() {
    use crate::model::{ANY_PORT, Member};
    let c = parse("config.toml", VIPS, None).unwrap();
    let api = &c.services[0];
    assert!(api.vip);
    let frontends: Vec<String> = api.frontends.iter().map(ToString::to_string).collect();
    assert_eq!(frontends, ["198.19.5.200:*/tcp", "198.19.5.200:*/udp"]);
    assert_eq!(api.backends[0].addr, std::net::SocketAddrV4::new(Ipv4Addr::new(198, 19, 5, 11), ANY_PORT));
    assert!(api.nat_addrs.is_empty());
    assert_eq!(
        c.members,
        [
            Member {
                netns: "/run/netns/client".into(),
                name: "client".into(),
                networks: vec!["appnet".into()],
                node: true,
                host: false
            },
            Member { netns: "/proc/self/ns/net".into(), name: "host".into(), networks: vec![], node: true, host: true },
        ]
    );
}

#[test]
fn bad_vips_and_members_are_named_with_their_line() {
    let cases = [
        (
            r#"vip = "198.19.5.200""#,
            r#"vip = "198.19.6.200""#,
            r#"config.toml:10: service "api": field vip: 198.19.6.200 is not a host address of network "appnet" (198.19.5.0/24)"#,
        ),
        (
            r#"vip = "198.19.5.200""#,
            "vip = \"198.19.5.200\"\nfrontends = [\"*:80/tcp\"]",
            r#"config.toml:11: service "api": field frontends: not allowed on a VIP service (it takes every port of its VIP)"#,
        ),
        (
            r#"network = "appnet""#,
            "",
            r#"config.toml:10: service "api": field vip: a VIP is an address of an overlay network: set network"#,
        ),
        (
            r#"addr = "198.19.5.11""#,
            r#"addr = "198.19.5.11:80""#,
            r#"config.toml:14: service "api" backend "api.1": field addr: invalid IPv4 address (a VIP's backend has no port) "198.19.5.11:80""#,
        ),
        (
            r#"networks = ["appnet"]"#,
            r#"networks = ["other"]"#,
            r#"config.toml:19: member "client": field networks: "other" is not the name of a [[network]]"#,
        ),
        (
            r#"netns = "/run/netns/client""#,
            r#"netns = "client""#,
            r#"config.toml:18: member "client": field netns: expected an absolute path (/run/netns/NAME)"#,
        ),
        (
            r#"netns = "/run/netns/client""#,
            r#"netns = "/proc/self/ns/net""#,
            r#"config.toml:24: member "host": field netns: /proc/self/ns/net is another member's"#,
        ),
        (
            "node = true\nhost = true",
            "host = true",
            r#"config.toml:25: member "host": field host: the node's own namespace reaches its published ports: set node = true"#,
        ),
    ];
    for (from, to, want) in cases {
        assert!(VIPS.contains(from), "{from:?} not in the sample");
        assert_eq!(&err(&VIPS.replacen(from, to, 1)), want, "replacing {from:?} with {to:?}");
    }
}

#[test]
fn a_service_may_keep_the_clients_address() {
    let c = parse("config.toml", &GOOD.replace("sticky = true", "source = \"client\""), None).unwrap();
    assert!(c.services[0].client_source);
    assert!(!c.services[1].client_source, "full NAT is the default");
}
