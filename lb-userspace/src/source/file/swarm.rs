//! `[swarm]` with its `[[swarm.node]]`s, and `[[network]]` with its `[[network.endpoint]]`s: the
//! part of the file every node of the swarm shares. Also checks `--node` against the nodes.

use toml::{Spanned, Value};

use super::{ConfigError, RawEndpoint, RawNetwork, RawSwarm, Validator};
use crate::{
    limits,
    model::{Endpoint, Network, Node, Subnet, SwarmSettings},
};

impl Validator<'_> {
    /// `[swarm]` and its nodes, then `--node` checked against them.
    pub(super) fn swarm(&self, raw: Option<&RawSwarm>) -> Result<(SwarmSettings, Vec<Node>), ConfigError> {
        let mut settings = SwarmSettings::default();
        let mut nodes: Vec<Node> = Vec::new();
        if let Some(raw) = raw {
            if let Some(v) = &raw.vxlan_port {
                settings.vxlan_port = self.checked(v, "swarm: ", "vxlan_port", limits::port)?;
            }
            for spanned in &raw.node {
                let node = spanned.get_ref();
                let ctx = "swarm node: ";
                let name = self.name(self.required(&node.name, spanned.span(), ctx, "name")?, ctx)?;
                if nodes.iter().any(|n| n.name == name) {
                    let at = node.name.as_ref().map_or(spanned.span(), Spanned::span);
                    return Err(self.err(at, ctx, "name", format!("duplicate node name {name:?}")));
                }
                let ctx = format!("swarm node {name:?}: ");
                let addr_v = self.required(&node.addr, spanned.span(), &ctx, "addr")?;
                let addr = self.unicast(addr_v, &ctx, "addr")?;
                if let Some(other) = nodes.iter().find(|n| n.addr == addr) {
                    return Err(self.err(
                        addr_v.span(),
                        &ctx,
                        "addr",
                        format!("{addr} is already node {:?}'s address", other.name),
                    ));
                }
                nodes.push(Node { name, addr });
            }
        }
        let first = raw.and_then(|r| r.node.first()).map(Spanned::span);
        let known = || nodes.iter().map(|n| format!("{:?}", n.name)).collect::<Vec<_>>().join(", ");
        match (self.local, first) {
            (None, Some(at)) => Err((self.fail)(
                at,
                format!(
                    "swarm node: this file describes swarm nodes ({}): run with --node NAME to say which one this is",
                    known()
                ),
            )),
            (Some(local), Some(at)) if !nodes.iter().any(|n| n.name == local) => Err((self.fail)(
                at,
                format!("swarm node: --node {local:?} is not one of the swarm nodes ({})", known()),
            )),
            (Some(local), None) => Err(ConfigError::File {
                path: self.path.to_owned(),
                what: format!("--node {local:?} given, but the file has no [[swarm.node]]"),
            }),
            _ => Ok((settings, nodes)),
        }
    }

    pub(super) fn networks(&self, raw: &[Spanned<RawNetwork>], nodes: &[Node]) -> Result<Vec<Network>, ConfigError> {
        let mut networks: Vec<Network> = Vec::with_capacity(raw.len());
        for spanned in raw {
            let net = spanned.get_ref();
            let ctx = "network: ";
            let name = self.name(self.required(&net.name, spanned.span(), ctx, "name")?, ctx)?;
            if networks.iter().any(|n| n.name == name) {
                let at = net.name.as_ref().map_or(spanned.span(), Spanned::span);
                return Err(self.err(at, ctx, "name", format!("duplicate network name {name:?}")));
            }
            let ctx = format!("network {name:?}: ");
            let vni_v = self.required(&net.vni, spanned.span(), &ctx, "vni")?;
            let vni = self.checked(vni_v, &ctx, "vni", limits::vni)?;
            if let Some(other) = networks.iter().find(|n| n.vni == vni) {
                return Err(self.err(
                    vni_v.span(),
                    &ctx,
                    "vni",
                    format!("VNI {vni} is already network {:?}'s", other.name),
                ));
            }
            let subnet_v = self.required(&net.subnet, spanned.span(), &ctx, "subnet")?;
            let subnet = self.subnet(subnet_v, &ctx)?;
            if let Some(other) = networks.iter().find(|n| n.subnet.overlaps(&subnet)) {
                return Err(self.err(
                    subnet_v.span(),
                    &ctx,
                    "subnet",
                    format!("{subnet} overlaps network {:?}'s subnet {}", other.name, other.subnet),
                ));
            }
            let mtu = match &net.mtu {
                None => limits::DEFAULT_OVERLAY_MTU,
                Some(v) => self.checked(v, &ctx, "mtu", limits::overlay_mtu)?,
            };
            let mut network = Network { name, vni, subnet, mtu, endpoints: Vec::with_capacity(net.endpoint.len()) };
            for endpoint in &net.endpoint {
                let e = self.endpoint(endpoint, &network, nodes)?;
                network.endpoints.push(e);
            }
            networks.push(network);
        }
        Ok(networks)
    }

    fn endpoint(
        &self,
        spanned: &Spanned<RawEndpoint>,
        network: &Network,
        nodes: &[Node],
    ) -> Result<Endpoint, ConfigError> {
        let raw = spanned.get_ref();
        let ctx = format!("network {:?} endpoint: ", network.name);
        let node_v = self.required(&raw.node, spanned.span(), &ctx, "node")?;
        let node = self.string(node_v, &ctx, "node")?;
        if !nodes.iter().any(|n| n.name == node) {
            return Err(self.err(node_v.span(), &ctx, "node", format!("unknown node {node:?} (not a [[swarm.node]])")));
        }
        if network.endpoint(node).is_some() {
            return Err(self.err(
                node_v.span(),
                &ctx,
                "node",
                format!("node {node:?} already has an endpoint on this network"),
            ));
        }
        let ctx = format!("network {:?} endpoint of node {node:?}: ", network.name);
        let addr_v = self.required(&raw.addr, spanned.span(), &ctx, "addr")?;
        let addr = self.unicast(addr_v, &ctx, "addr")?;
        if !network.subnet.contains(addr) || network.subnet.is_reserved(addr) {
            return Err(self.err(
                addr_v.span(),
                &ctx,
                "addr",
                format!("{addr} is not a host address of subnet {}", network.subnet),
            ));
        }
        if let Some(other) = network.endpoints.iter().find(|e| e.addr == addr) {
            return Err(self.err(
                addr_v.span(),
                &ctx,
                "addr",
                format!("{addr} is already node {:?}'s endpoint", other.node),
            ));
        }
        Ok(Endpoint { node: node.to_owned(), addr })
    }

    fn subnet(&self, v: &Spanned<Value>, ctx: &str) -> Result<Subnet, ConfigError> {
        let s = self.string(v, ctx, "subnet")?;
        limits::subnet(s).map_err(|e| self.err(v.span(), ctx, "subnet", e))
    }
}
