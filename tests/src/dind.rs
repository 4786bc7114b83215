//! A multi-node swarm of real Docker Engines on one machine: each node is a container
//! (Docker-in-Docker) made from an image built here out of this host's own binaries (dockerd,
//! containerd, runc, the docker CLI, legacy iptables, ip, swarmlb) and the libraries `ldd` names,
//! so nothing is pulled. The nodes sit on a host bridge network (`slbd-net`, 198.18.240.0/24); a
//! client namespace is plugged into the same bridge. Everything is removed on drop.
//!
//! What it takes on this machine (root lacks CAP_SYS_RESOURCE, so `--privileged` fails with
//! "unable to apply caps"): every other capability, seccomp/AppArmor/system paths unconfined, and
//! the node's entrypoint remounts `/sys` and its cgroup hierarchies read-write and mounts its own
//! bpffs on `/sys/fs/bpf` (so pins of the nodes' agents never collide). Inside, each Engine uses
//! the vfs storage driver on a tmpfs and only addresses inside 198.18.0.0/15.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    cmd::{docker, quote, sh},
    netns::Netns,
    poll::{Seen, wait_for},
    rootfs,
};

/// The host bridge network the node containers sit on.
pub const NETWORK: &str = "slbd-net";
const NETWORK_SUBNET: &str = "198.18.240.0/24";
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 240, 100);
/// Overlay networks (ingress included) inside the swarm are carved from here.
const ADDRESS_POOL: &str = "198.19.64.0/18";

/// Node `i` (1-based): its container name and address on `slbd-net`.
pub fn node_name(i: usize) -> String {
    format!("slbd-n{i}")
}

pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 240, 10 + i as u8)
}

/// The node image: this host's Engine binaries plus swarmlb, `docker import`ed from a rootfs
/// tarball. Removed on drop.
pub struct NodeImage {
    pub tag: String,
}

/// Host programs the node needs, by name (looked up in PATH).
const PROGRAMS: &[&str] = &[
    "dockerd",
    "containerd",
    "containerd-shim-runc-v2",
    "runc",
    "docker",
    "docker-init",
    "docker-proxy",
    "xtables-legacy-multi",
    "ip",
    "mount",
    "mkdir",
    "cat",
];

/// The node's entrypoint: writable sysfs and cgroups, its own bpffs, then dockerd with the
/// container's arguments.
const ENTRYPOINT: &str = r#"#!/bin/sh
set -e
mount -o remount,rw /sys
for d in /sys/fs/cgroup/*; do mount -o remount,rw,bind "$d" "$d"; done
mount -t bpf bpf /sys/fs/bpf
mkdir -p /var/log
exec dockerd "$@" >/var/log/dockerd.log 2>&1
"#;

impl NodeImage {
    /// Builds `slbd-node:<pid>` with `swarmlb` at /usr/bin/swarmlb.
    pub fn build(swarmlb: &Path) -> Result<NodeImage> {
        let tag = format!("slbd-node:{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("slbd-node-{}", std::process::id()));
        let result = (|| -> Result<()> {
            let _ = std::fs::remove_dir_all(&dir);
            let root = dir.join("rootfs");
            for d in
                ["usr/bin", "usr/lib", "usr/lib64", "etc", "tmp", "run", "var/lib/docker", "proc", "sys", "dev", "root"]
            {
                std::fs::create_dir_all(root.join(d))?;
            }
            // Merged /usr, as on the host: the loader and libraries are found under either name.
            for (link, target) in [
                ("bin", "usr/bin"),
                ("sbin", "usr/bin"),
                ("usr/sbin", "bin"),
                ("lib", "usr/lib"),
                ("lib64", "usr/lib64"),
                ("var/run", "../run"),
            ] {
                std::os::unix::fs::symlink(target, root.join(link))?;
            }
            let mut binaries: Vec<(PathBuf, String)> = Vec::new();
            for name in PROGRAMS {
                let path = sh(&format!("command -v {name}"))
                    .with_context(|| format!("{name} must be installed on the host"))?;
                binaries.push((PathBuf::from(path.trim()), name.to_string()));
            }
            binaries.push((PathBuf::from("/bin/sh"), "sh".to_string()));
            binaries.push((swarmlb.to_path_buf(), "swarmlb".to_string()));
            for (path, name) in &binaries {
                rootfs::copy_with_libraries(path, &root.join("usr/bin").join(name), |lib| in_rootfs(&root, lib))?;
            }
            // Legacy iptables, as the host's dockerd uses, and its match/target plugins.
            for name in
                ["iptables", "iptables-save", "iptables-restore", "ip6tables", "ip6tables-save", "ip6tables-restore"]
            {
                std::os::unix::fs::symlink("xtables-legacy-multi", root.join("usr/bin").join(name))?;
            }
            let plugins = sh("ls -d /usr/lib/*/xtables")?;
            let plugins = Path::new(plugins.lines().next().context("no xtables plugin directory")?);
            for entry in std::fs::read_dir(plugins)? {
                let path = entry?.path();
                rootfs::copy_with_libraries(&path, &in_rootfs(&root, &path), |lib| in_rootfs(&root, lib))?;
            }
            std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
            std::fs::write(root.join("etc/group"), "root:x:0:\ndocker:x:999:\n")?;
            std::fs::write(root.join("etc/nsswitch.conf"), "hosts: files dns\n")?;
            std::fs::write(root.join("etc/hosts"), "")?;
            std::fs::write(root.join("etc/resolv.conf"), "")?;
            let entrypoint = root.join("entrypoint.sh");
            std::fs::write(&entrypoint, ENTRYPOINT)?;
            sh(&format!("chmod 755 {}", entrypoint.display()))?;
            sh(&format!(
                "tar -C {} -c . | docker import --change 'ENTRYPOINT [\"/entrypoint.sh\"]' - {tag} >/dev/null",
                root.display()
            ))?;
            Ok(())
        })();
        let _ = std::fs::remove_dir_all(&dir);
        result.context("building the node image")?;
        Ok(NodeImage { tag })
    }
}

impl Drop for NodeImage {
    fn drop(&mut self) {
        let _ = docker(&format!("rmi -f {}", self.tag));
    }
}

/// Where a host file goes in the merged-/usr rootfs.
fn in_rootfs(root: &Path, path: &Path) -> PathBuf {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let rel = match rel.components().next().and_then(|c| c.as_os_str().to_str()) {
        Some("lib" | "lib64" | "bin" | "sbin") => Path::new("usr").join(rel),
        _ => rel.to_path_buf(),
    };
    root.join(rel)
}

/// A node container running its own Engine.
pub struct Node {
    pub name: String,
    pub addr: Ipv4Addr,
}

impl Node {
    /// `docker CMD` run by this node's Engine.
    pub fn docker(&self, args: &str) -> Result<String> {
        self.exec(&format!("docker {args}"))
    }

    /// A shell command inside the node container.
    pub fn exec(&self, cmd: &str) -> Result<String> {
        docker(&format!("exec {} sh -c {}", self.name, quote(cmd)))
    }

    /// `swarmlb status --json` of the agent running in this node.
    pub fn swarmlb_status(&self) -> Result<Value> {
        let out = self.exec("swarmlb status --json")?;
        serde_json::from_str(&out).with_context(|| format!("{}: swarmlb status: {out}", self.name))
    }

    /// The tail of the agent's log, for failure messages.
    pub fn swarmlb_log(&self) -> String {
        self.exec("cat /var/log/swarmlb.log").map(|l| tail(&l, 15)).unwrap_or_default()
    }

    /// The PID of the node container's init, for entering its namespaces from the host.
    fn pid(&self) -> Result<u32> {
        Ok(docker(&format!("inspect --format '{{{{.State.Pid}}}}' {}", self.name))?.parse()?)
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A swarm of `Node`s: node 1 the manager, the others workers, plus a client namespace on the
/// nodes' network. Containers, the network and the namespace are removed on drop.
pub struct DindSwarm {
    pub nodes: Vec<Node>,
    pub client: Netns,
}

impl DindSwarm {
    /// Starts `count` nodes from `image`, makes a swarm of them and loads `images` (host image
    /// names) into every node's Engine.
    pub fn start(image: &NodeImage, count: usize, images: &[&str]) -> Result<DindSwarm> {
        remove_leftovers(count);
        let client = Netns::new(&format!("slbd-client-{}", std::process::id()))?;
        // From here on, a failure drops what exists so far.
        let mut swarm = DindSwarm { nodes: Vec::new(), client };
        docker(&format!(
            "network create --driver bridge --subnet {NETWORK_SUBNET} --opt com.docker.network.driver.mtu=1500 {NETWORK}"
        ))?;
        for i in 1..=count {
            let node = Node { name: node_name(i), addr: node_addr(i) };
            let run = docker(&format!(
                "run -d --name {name} --hostname {name} --network {NETWORK} --ip {addr} \
                 --cap-add ALL --cap-drop SYS_RESOURCE --security-opt seccomp=unconfined \
                 --security-opt apparmor=unconfined --security-opt systempaths=unconfined \
                 --tmpfs /var/lib/docker:exec,dev,suid {tag} \
                 --storage-driver vfs --userland-proxy=false --bip 198.18.{bip}.1/24 \
                 --default-address-pool base=198.18.{pool}.0/24,size=28",
                name = node.name,
                addr = node.addr,
                tag = image.tag,
                bip = 243 + i,
                pool = 246 + i,
            ));
            swarm.nodes.push(node);
            run?;
        }
        let nodes = &swarm.nodes;
        for node in nodes {
            wait_for(&format!("{}'s Engine", node.name), Duration::from_secs(30), || {
                Ok(Seen::ok(node.docker("info --format '{{.ID}}'")))
            })
            .with_context(|| node.exec("cat /var/log/dockerd.log").map(|l| tail(&l, 20)).unwrap_or_default())?;
            // docker_gwbridge before init/join, or Docker picks a private range for it.
            let i = node.addr.octets()[3] - 10;
            node.docker(&format!(
                "network create --driver bridge --subnet 198.18.{}.0/24 \
                 --opt com.docker.network.bridge.name=docker_gwbridge \
                 --opt com.docker.network.bridge.enable_icc=false \
                 --opt com.docker.network.bridge.enable_ip_masquerade=true docker_gwbridge",
                240 + i
            ))?;
        }
        let manager = &nodes[0];
        manager.docker(&format!(
            "swarm init --advertise-addr {} --default-addr-pool {ADDRESS_POOL} --default-addr-pool-mask-length 24",
            manager.addr
        ))?;
        let token = manager.docker("swarm join-token -q worker")?;
        for node in &nodes[1..] {
            node.docker(&format!("swarm join --token {token} --advertise-addr {} {}:2377", node.addr, manager.addr))?;
        }
        wait_for("every node to be ready", Duration::from_secs(30), || {
            Ok(match manager.docker("node ls --format '{{.Status}}'") {
                Ok(states) => Seen::when(states.lines().filter(|s| *s == "Ready").count() == count, states),
                Err(e) => Seen::NotYet(format!("{e:#}")),
            })
        })?;
        for image in images {
            for node in nodes {
                sh(&format!("docker save {image} | docker exec -i {} docker load -q >/dev/null", node.name))
                    .with_context(|| format!("loading {image} into {}", node.name))?;
            }
        }
        for node in nodes {
            // XDP_REDIRECT out of the node's eth0 (a veth) needs NAPI on its host-side peer,
            // which GRO turns on: without it the replies swarmlb redirects are dropped.
            let link = sh(&format!("nsenter --net=/proc/{}/ns/net ip -o link show eth0", node.pid()?))?;
            let peer_index = link
                .split_once("eth0@if")
                .and_then(|(_, rest)| rest.split(':').next())
                .with_context(|| format!("{}: eth0's peer in {link:?}", node.name))?;
            let peer =
                sh(&format!("ip -o link 2>/dev/null | awk -v i='{peer_index}:' '$1==i{{print $2}}' | cut -d@ -f1"))?;
            sh(&format!("ethtool -K {} gro on >/dev/null", peer.trim()))?;
        }
        // The client: a veth into the bridge, its transmit checksum filled in (XDP rewrites the
        // checksums incrementally and cannot complete a partial one).
        let bridge = format!("br-{}", &docker(&format!("network inspect --format '{{{{.Id}}}}' {NETWORK}"))?[..12]);
        let host_end = format!("slbdc{}", std::process::id() % 100_000);
        sh(&format!("ip link add {host_end} type veth peer name eth0 netns {}", swarm.client.name))?;
        sh(&format!("ip link set {host_end} master {bridge} && ip link set {host_end} up"))?;
        swarm.client.exec(&format!(
            "ip addr add {CLIENT_ADDR}/24 dev eth0 && ip link set eth0 up && ethtool -K eth0 tx off >/dev/null"
        ))?;
        Ok(swarm)
    }

    pub fn manager(&self) -> &Node {
        &self.nodes[0]
    }

    /// A service's published port as the client reaches it on node `i` (0-based).
    pub fn published(&self, i: usize, port: u16) -> SocketAddr {
        SocketAddr::from((self.nodes[i].addr, port))
    }

    /// Starts `swarmlb run --source docker --iface eth0` in every node, following its own Engine.
    pub fn start_swarmlb(&self) -> Result<()> {
        for node in &self.nodes {
            docker(&format!(
                "exec -d {} sh -c 'RUST_LOG=info swarmlb run --source docker --iface eth0 >/var/log/swarmlb.log 2>&1'",
                node.name
            ))?;
        }
        Ok(())
    }

    /// Task name (`<service>.<slot>`) -> node container name, for the running tasks of `service`.
    pub fn task_nodes(&self, service: &str) -> Result<Vec<(String, String)>> {
        let out = self.manager().docker(&format!(
            "service ps {service} --filter desired-state=running --format '{{{{.Name}}}} {{{{.Node}}}} {{{{.CurrentState}}}}'"
        ))?;
        Ok(out
            .lines()
            .filter(|l| l.contains(" Running"))
            .filter_map(|l| {
                let mut words = l.split_whitespace();
                Some((words.next()?.to_string(), words.next()?.to_string()))
            })
            .collect())
    }
}

/// Removes what an interrupted run may have left with the same names.
fn remove_leftovers(count: usize) {
    let names: Vec<String> = (1..=count.max(3)).map(node_name).collect();
    let _ = docker(&format!("rm -f {} 2>/dev/null", names.join(" ")));
    let _ = docker(&format!("network rm {NETWORK} 2>/dev/null"));
}

impl Drop for DindSwarm {
    fn drop(&mut self) {
        // Killing a node kills everything in its PID namespace: its Engine, tasks and agent; its
        // bpffs, network namespaces and XDP attachments go with it.
        let names: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        if !names.is_empty() {
            let _ = docker(&format!("rm -f {}", names.join(" ")));
        }
        let _ = docker(&format!("network rm {NETWORK}"));
        // The client's veth goes with its namespace (Netns's own drop).
    }
}
