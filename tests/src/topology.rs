//! A one-node load-balancing topology in namespaces: a client, a load-balancer node with one
//! interface towards clients (`front`) and one towards backends (`back`), a switch namespace
//! bridging the backends, and backends running `slb-testsrv`.
//!
//! ```text
//!  client ──veth── lb:front [XDP]   lb:back [XDP] ──veth── switch(br0) ──veth── backend-N
//!  198.18.0.2      198.18.0.1       198.18.1.1                              198.18.1.(10+N)
//! ```

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::Result;

use crate::netns::{Netns, sibling_binary, unique_prefix};

pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// The load balancer's client-side address: frontends live here.
pub const LB_FRONT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The load balancer's backend-side address: the source of translated packets.
pub const LB_BACK_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const BACKEND_TCP_PORT: u16 = 8080;
pub const BACKEND_UDP_PORT: u16 = 5353;

pub fn backend_addr(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, 10 + index as u8)
}

pub fn backend_name(index: usize) -> String {
    format!("backend-{}", index + 1)
}

pub struct SingleNode {
    pub client: Netns,
    pub lb: Netns,
    pub switch: Netns,
    /// Indexed by backend index; `None` once removed.
    pub backends: Vec<Option<Netns>>,
}

impl SingleNode {
    pub fn new(backends: usize) -> Result<Self> {
        let prefix = unique_prefix("n");
        let client = Netns::new(&format!("{prefix}-client"))?;
        let lb = Netns::new(&format!("{prefix}-lb"))?;
        let switch = Netns::new(&format!("{prefix}-sw"))?;
        let mut topo = SingleNode { client, lb, switch, backends: Vec::new() };

        topo.veth(&topo.lb, "front", &topo.client, "eth0")?;
        topo.lb.exec(&format!("ip addr add {LB_FRONT_ADDR}/24 dev front && ip link set front up"))?;
        topo.client.exec(&format!(
            "ip addr add {CLIENT_ADDR}/24 dev eth0 && ip link set eth0 up && ip route add default via {LB_FRONT_ADDR}"
        ))?;

        topo.switch.exec("ip link add br0 type bridge && ip link set br0 up")?;
        topo.veth(&topo.lb, "back", &topo.switch, "uplink")?;
        topo.lb.exec(&format!("ip addr add {LB_BACK_ADDR}/24 dev back && ip link set back up"))?;
        topo.switch.exec("ip link set uplink master br0 && ip link set uplink up")?;
        topo.lb.exec("sysctl -qw net.ipv4.ip_forward=1")?;

        // A stack-built packet carries a partial checksum on veth unless offload is off; the
        // datapath rewrites complete checksums only.
        topo.client.exec("ethtool -K eth0 tx off >/dev/null")?;
        // Native XDP redirects into a veth need NAPI on its peer, which GRO turns on.
        topo.client.exec("ethtool -K eth0 gro on >/dev/null")?;
        topo.switch.exec("ethtool -K uplink gro on >/dev/null")?;

        for index in 0..backends {
            topo.add_backend(index)?;
        }
        Ok(topo)
    }

    fn veth(&self, a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
        crate::cmd::sh(&format!("ip link add {a_if} netns {} type veth peer name {b_if} netns {}", a.name, b.name))?;
        Ok(())
    }

    /// Adds backend `index` (namespace, switch port, server) and returns its name.
    pub fn add_backend(&mut self, index: usize) -> Result<String> {
        let name = backend_name(index);
        let mut ns = Netns::new(&format!("{}-b{}", self.lb.name.trim_end_matches("-lb"), index + 1))?;
        let port = format!("b{}", index + 1);
        self.veth(&ns, "eth0", &self.switch, &port)?;
        self.switch.exec(&format!("ip link set {port} master br0 && ip link set {port} up"))?;
        ns.exec(&format!(
            "ip addr add {}/24 dev eth0 && ip link set eth0 up && ip route add default via {LB_BACK_ADDR} \
             && ethtool -K eth0 tx off >/dev/null",
            backend_addr(index)
        ))?;
        let server = sibling_binary("slb-testsrv")?;
        ns.spawn(
            server.to_str().unwrap_or_default(),
            &["--name", &name, "--tcp", &BACKEND_TCP_PORT.to_string(), "--udp", &BACKEND_UDP_PORT.to_string()],
        )?;
        ns.wait_listening(BACKEND_TCP_PORT)?;
        if self.backends.len() <= index {
            self.backends.resize_with(index + 1, || None);
        }
        self.backends[index] = Some(ns);
        Ok(name)
    }

    /// Deletes backend `index`: its switch port first (namespaces are torn down
    /// asynchronously, and the port's name must be free for a backend added back), then its
    /// namespace with its server.
    pub fn remove_backend(&mut self, index: usize) -> Result<()> {
        self.switch.exec(&format!("ip link del b{}", index + 1))?;
        self.backends[index] = None;
        Ok(())
    }

    pub fn frontend(&self, port: u16) -> SocketAddr {
        SocketAddr::from((LB_FRONT_ADDR, port))
    }
}

/// A services file for this topology: `web` (TCP, `LB_FRONT_ADDR:80` and `*:8080`) and `dns`
/// (UDP `LB_FRONT_ADDR:53`), both over the given backend indexes.
pub fn config(backends: &[usize]) -> String {
    let mut toml = format!("[node]\nnat_addr = \"{LB_BACK_ADDR}\"\n\n");
    toml += &format!("[[service]]\nname = \"web\"\nfrontends = [\"{LB_FRONT_ADDR}:80/tcp\", \"*:8080/tcp\"]\n");
    for &i in backends {
        toml += &format!(
            "[[service.backend]]\nname = \"{}\"\naddr = \"{}:{BACKEND_TCP_PORT}\"\n",
            backend_name(i),
            backend_addr(i)
        );
    }
    toml += &format!("\n[[service]]\nname = \"dns\"\nfrontends = [\"{LB_FRONT_ADDR}:53/udp\"]\n");
    for &i in backends {
        toml += &format!(
            "[[service.backend]]\nname = \"{}-udp\"\naddr = \"{}:{BACKEND_UDP_PORT}\"\n",
            backend_name(i),
            backend_addr(i)
        );
    }
    toml
}
