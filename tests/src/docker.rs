//! This machine's Docker Engine as a one-node swarm for tests against the real thing: swarm mode
//! with every Docker-made address inside 198.18.0.0/15, services that clean up after themselves,
//! and a client namespace wired to the host the way a client reaches a node.

use std::{
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    cmd::{docker, sh},
    netns::{Netns, unique_prefix},
    poll::{Seen, wait_for},
};

/// The swarm's advertise address, on a host-only bridge: swarm traffic never leaves the machine.
pub const ADVERTISE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 254, 1);
const ADVERTISE_IFACE: &str = "slbswarm0";
/// Overlay networks (ingress included) are carved from here.
const ADDRESS_POOL: &str = "198.19.128.0/17";
const GWBRIDGE_SUBNET: &str = "198.18.253.0/24";
/// The node's address towards the test client.
pub const HOST_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 252, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 252, 2);
/// Host side of the client's veth: the interface clients arrive on (swarmlb's `--iface`).
pub const HOST_IFACE: &str = "slbcl0";

/// Swarm mode on the local Engine: joined as found, or initialised here and left on drop.
pub struct DockerSwarm {
    initialised_here: bool,
}

impl DockerSwarm {
    pub fn ensure() -> Result<DockerSwarm> {
        let state = docker("info --format '{{.Swarm.LocalNodeState}}'")
            .context("the Docker Engine must be running for these tests")?;
        let initialised_here = state != "active";
        if initialised_here {
            let _ = sh(&format!("ip link del {ADVERTISE_IFACE} 2>/dev/null"));
            sh(&format!(
                "ip link add {ADVERTISE_IFACE} type bridge && ip addr add {ADVERTISE_ADDR}/32 dev {ADVERTISE_IFACE} \
                 && ip link set {ADVERTISE_IFACE} up"
            ))?;
            // docker_gwbridge must exist before `swarm init`, or Docker picks a private range.
            if docker("network inspect docker_gwbridge --format '{{.Name}}'").is_err() {
                docker(&format!(
                    "network create --driver bridge --subnet {GWBRIDGE_SUBNET} \
                     --opt com.docker.network.bridge.name=docker_gwbridge \
                     --opt com.docker.network.bridge.enable_icc=false \
                     --opt com.docker.network.bridge.enable_ip_masquerade=true docker_gwbridge"
                ))?;
            }
            docker(&format!(
                "swarm init --advertise-addr {ADVERTISE_ADDR} --listen-addr {ADVERTISE_ADDR}:2377 \
                 --default-addr-pool {ADDRESS_POOL} --default-addr-pool-mask-length 24"
            ))?;
        }
        let ingress = docker("network inspect ingress --format '{{range .IPAM.Config}}{{.Subnet}}{{end}}'")?;
        if !ingress.starts_with("198.18.") && !ingress.starts_with("198.19.") {
            bail!(
                "the Engine's swarm uses {ingress} for ingress; these tests only use 198.18.0.0/15 — leave that swarm first"
            );
        }
        Ok(DockerSwarm { initialised_here })
    }
}

impl Drop for DockerSwarm {
    fn drop(&mut self) {
        if self.initialised_here {
            let _ = docker("swarm leave --force");
            let _ = docker("network rm docker_gwbridge");
            let _ = sh(&format!("ip link del {ADVERTISE_IFACE}"));
        }
    }
}

/// A swarm service (or network) removed on drop.
pub struct Removable {
    pub name: String,
    kind: &'static str,
}

impl Drop for Removable {
    fn drop(&mut self) {
        remove(self.kind, &self.name);
    }
}

/// Removes a service or network if it exists. A network is refused while the tasks of a
/// just-removed service still hold endpoints on it, so this retries for a while.
fn remove(kind: &str, name: &str) {
    let gone = wait_for(&format!("{kind} {name} to be removed"), Duration::from_secs(20), || {
        if docker(&format!("{kind} inspect {name} --format '{{{{.ID}}}}'")).is_err() {
            return Ok(Seen::Ready(()));
        }
        let force = if kind == "container" { " --force" } else { "" };
        Ok(Seen::ok(docker(&format!("{kind} rm{force} {name}")).map(drop)))
    });
    if let Err(e) = gone {
        eprintln!("{e:#}");
    }
}

/// `docker service create --name NAME ARGS`; each task of the test image answers with its
/// `<service>.<slot>` name.
pub fn create_service(name: &str, args: &str) -> Result<Removable> {
    remove("service", name);
    docker(&format!(
        "service create --quiet --detach --name {name} --env 'SLB_TASK_NAME={{{{.Service.Name}}}}.{{{{.Task.Slot}}}}' \
         {args} slb-testsrv:latest"
    ))?;
    Ok(Removable { name: name.to_string(), kind: "service" })
}

pub fn create_overlay(name: &str, subnet: &str) -> Result<Removable> {
    create_network(name, &format!("--driver overlay --subnet {subnet}"))
}

/// `docker network create ARGS NAME`.
pub fn create_network(name: &str, args: &str) -> Result<Removable> {
    remove("network", name);
    docker(&format!("network create {args} {name}"))?;
    Ok(Removable { name: name.to_string(), kind: "network" })
}

/// `docker run --detach --name NAME ARGS slb-testsrv:latest --name NAME`: a container serving
/// as the test server, to run `slb-testsrv client` in with [`exec_client`].
pub fn run_container(name: &str, args: &str) -> Result<Removable> {
    remove("container", name);
    docker(&format!("run --detach --name {name} {args} slb-testsrv:latest --name {name}"))?;
    Ok(Removable { name: name.to_string(), kind: "container" })
}

/// `slb-testsrv client MODE TARGET COUNT` as a new container of its own (`docker run --rm
/// ARGS`), which connects the moment it starts.
pub fn run_client(args: &str, mode: &str, target: &str, count: usize) -> Result<crate::sock_client::Output> {
    let out = docker(&format!("run --rm {args} slb-testsrv:latest client {mode} {target} {count}"))?;
    Ok(crate::sock_client::Output::parse(&out))
}

/// `slb-testsrv client MODE TARGET COUNT` inside container `name`.
pub fn exec_client(name: &str, mode: &str, target: &str, count: usize) -> Result<crate::sock_client::Output> {
    let out = docker(&format!("exec {name} /slb-testsrv client {mode} {target} {count}"))?;
    Ok(crate::sock_client::Output::parse(&out))
}

/// Waits until `service` has exactly `replicas` tasks running.
pub fn wait_running(service: &str, replicas: usize) -> Result<()> {
    wait_for(&format!("{replicas} running tasks of {service}"), Duration::from_secs(60), || {
        let states =
            docker(&format!("service ps {service} --filter desired-state=running --format '{{{{.CurrentState}}}}'"))?;
        let running = states.lines().filter(|l| l.starts_with("Running")).count();
        Ok(Seen::when(
            running == replicas && states.lines().count() == replicas,
            format!("{running} running:\n{states}"),
        ))
    })
}

/// A client namespace with a veth to the host (`HOST_IFACE`), as a client reaches a node.
pub struct HostClient {
    pub ns: Netns,
}

impl HostClient {
    pub fn new() -> Result<HostClient> {
        let ns = Netns::new(&format!("{}-client", unique_prefix("d")))?;
        let _ = sh(&format!("ip link del {HOST_IFACE} 2>/dev/null"));
        sh(&format!("ip link add {HOST_IFACE} type veth peer name eth0 netns {}", ns.name))?;
        sh(&format!("ip addr add {HOST_ADDR}/24 dev {HOST_IFACE} && ip link set {HOST_IFACE} up"))?;
        ns.exec(&format!(
            "ip addr add {CLIENT_ADDR}/24 dev eth0 && ip link set eth0 up && ip route add default via {HOST_ADDR} \
             && ethtool -K eth0 tx off >/dev/null && ethtool -K eth0 gro on >/dev/null"
        ))?;
        Ok(HostClient { ns })
    }

    /// The published port as this client reaches it on the node.
    pub fn published(&self, port: u16) -> SocketAddr {
        SocketAddr::from((HOST_ADDR, port))
    }

    /// A permanent neighbour entry for the node, so the client never ARPs: the node cannot learn
    /// the client's address from the client's ARP requests, only by asking itself.
    pub fn never_arp_the_node(&self) -> Result<()> {
        let mac = std::fs::read_to_string(format!("/sys/class/net/{HOST_IFACE}/address"))?;
        self.ns.exec(&format!("ip neigh replace {HOST_ADDR} lladdr {} dev eth0 nud permanent", mac.trim()))?;
        Ok(())
    }

    /// Adds `addr` to the client and makes it the source of its new connections to the node.
    pub fn connect_from(&self, addr: Ipv4Addr) -> Result<()> {
        self.ns.exec(&format!(
            "ip addr add {addr}/24 dev eth0 && ip route replace 198.18.252.0/24 dev eth0 src {addr} \
             && ip route replace default via {HOST_ADDR} src {addr}"
        ))?;
        Ok(())
    }

    /// SYNs the client's kernel has retransmitted so far: a connection that needed one did not
    /// succeed on the first try.
    pub fn syn_retransmits(&self) -> Result<u64> {
        let text = self.ns.exec("cat /proc/net/netstat")?;
        let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
        let (names, values) = (lines.next().context("TcpExt names")?, lines.next().context("TcpExt values")?);
        let at = names.split_whitespace().position(|n| n == "TCPSynRetrans").context("TCPSynRetrans")?;
        Ok(values.split_whitespace().nth(at).context("TCPSynRetrans value")?.parse()?)
    }
}

/// A stack deployed from a compose file, removed on drop.
pub struct Stack {
    pub name: String,
}

impl Stack {
    /// `docker stack deploy -c FILE NAME` with `env` set for variable substitution.
    pub fn deploy(file: &std::path::Path, name: &str, env: &[(&str, &str)]) -> Result<Stack> {
        let vars: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        sh(&format!("{} docker stack deploy -c {} {name}", vars.join(" "), file.display()))?;
        Ok(Stack { name: name.to_string() })
    }

    /// The logs of the stack's services, for a failure message.
    pub fn logs(&self, service: &str) -> String {
        docker(&format!("service logs --raw {}_{service} 2>&1 | tail -n 30", self.name)).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = docker(&format!("stack rm {}", self.name));
        let gone = wait_for(&format!("the containers of stack {} to go", self.name), Duration::from_secs(20), || {
            let ids = docker(&format!("ps -q --filter label=com.docker.stack.namespace={}", self.name))?;
            Ok(Seen::when(ids.is_empty(), ids.replace('\n', " ")))
        });
        if let Err(e) = gone {
            eprintln!("{e:#}");
        }
    }
}
