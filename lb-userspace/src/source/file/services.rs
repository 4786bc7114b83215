//! `[node]` and `[[service]]` (with `[[service.backend]]`): what this node serves and how.

use std::net::{Ipv4Addr, SocketAddrV4};

use toml::{Spanned, Value};

use super::{ConfigError, RawBackend, RawNode, RawService, Validator};
use crate::{
    limits,
    model::{ANY_PORT, Backend, Frontend, MalformedPolicy, Network, Node, NodeSettings, Proto, Service},
};

impl Validator<'_> {
    pub(super) fn node(&self, node: &RawNode) -> Result<(NodeSettings, Vec<Ipv4Addr>), ConfigError> {
        let ctx = "node: ";
        let nat = node.nat_addr.as_ref().map(|v| self.nat_addrs(v, ctx)).transpose()?.unwrap_or_default();
        let snat_ports = match &node.snat_ports {
            None => lb_common::maps::DEFAULT_NODE_SNAT_PORTS,
            Some(v) => {
                let s = self.string(v, ctx, "snat_ports")?;
                limits::snat_ports(s).map_err(|e| self.err(v.span(), ctx, "snat_ports", e))?
            }
        };
        let malformed = match &node.malformed {
            None => MalformedPolicy::Pass,
            Some(v) => match self.string(v, ctx, "malformed")? {
                "pass" => MalformedPolicy::Pass,
                "drop" => MalformedPolicy::Drop,
                other => {
                    return Err(self.err(
                        v.span(),
                        ctx,
                        "malformed",
                        format!("expected \"pass\" or \"drop\", found {other:?}"),
                    ));
                }
            },
        };
        Ok((NodeSettings { snat_ports, malformed }, nat))
    }

    pub(super) fn service(
        &self,
        spanned: &Spanned<RawService>,
        node_nat: &[Ipv4Addr],
        nodes: &[Node],
        networks: &[Network],
    ) -> Result<Service, ConfigError> {
        let raw = spanned.get_ref();
        let name_v = self.required(&raw.name, spanned.span(), "service: ", "name")?;
        let name = self.name(name_v, "service: ")?;
        let ctx = format!("service {name:?}: ");
        let network =
            raw.network.as_ref().map(|v| self.service_network(v, &ctx, networks, raw.vip.is_none())).transpose()?;
        let vip = raw.vip.as_ref().map(|v| self.vip(v, raw, &ctx, network)).transpose()?;
        let frontends = match vip {
            Some(vip) => {
                [Proto::Tcp, Proto::Udp].map(|proto| Frontend { addr: Some(vip), port: ANY_PORT, proto }).to_vec()
            }
            None => self.frontends(spanned, &ctx)?,
        };
        let sticky = match &raw.sticky {
            None => false,
            Some(v) => v.get_ref().as_bool().ok_or_else(|| {
                self.err(v.span(), &ctx, "sticky", format!("expected true or false, found {}", v.get_ref().type_str()))
            })?,
        };
        let nat_addrs = match (&raw.nat_addr, network) {
            (Some(v), Some(net)) => {
                return Err(self.err(v.span(), &ctx, "nat_addr", format!(
                    "not allowed on a service with a network: its source address is this node's endpoint on network {:?}", net.name
                )));
            }
            (Some(v), None) => self.nat_addrs(v, &ctx)?,
            (None, Some(_)) => Vec::new(),
            (None, None) if node_nat.is_empty() => {
                return Err(self.err(
                    spanned.span(),
                    &ctx,
                    "nat_addr",
                    "missing: set it here or in [node], or give the service a network",
                ));
            }
            (None, None) => node_nat.to_vec(),
        };
        let mut backends: Vec<Backend> = Vec::with_capacity(raw.backend.len());
        for raw_backend in &raw.backend {
            let backend = self.backend(raw_backend, &name, nodes, network, vip.is_some())?;
            if backends.iter().any(|b| b.name == backend.name) {
                let at = raw_backend.get_ref().name.as_ref().map_or(raw_backend.span(), Spanned::span);
                return Err(self.err(at, &ctx, "name", format!("duplicate backend name {:?}", backend.name)));
            }
            if backends.iter().any(|b| b.addr == backend.addr) {
                let at = raw_backend.get_ref().addr.as_ref().map_or(raw_backend.span(), Spanned::span);
                let ctx = format!("service {name:?} backend {:?}: ", backend.name);
                return Err(self.err(
                    at,
                    &ctx,
                    "addr",
                    format!("address {} already used by another backend of this service", backend.addr),
                ));
            }
            backends.push(backend);
        }
        Ok(Service {
            name,
            frontends,
            backends,
            sticky,
            nat_addrs,
            network: network.map(|n| n.name.clone()),
            vip: vip.is_some(),
            client_source: self.source(&raw.source, &ctx)?,
        })
    }

    /// `source`: `"nat"` (the default: backends see this node's NAT address) or `"client"`
    /// (backends see the client's address).
    fn source(&self, v: &Option<Spanned<Value>>, ctx: &str) -> Result<bool, ConfigError> {
        let Some(v) = v else { return Ok(false) };
        match self.string(v, ctx, "source")? {
            "nat" => Ok(false),
            "client" => Ok(true),
            other => Err(self.err(v.span(), ctx, "source", format!("expected \"nat\" or \"client\", found {other:?}"))),
        }
    }

    /// `frontends`: a non-empty array of `ADDR:PORT/PROTO`.
    fn frontends(&self, spanned: &Spanned<RawService>, ctx: &str) -> Result<Vec<Frontend>, ConfigError> {
        let frontends_v = self.required(&spanned.get_ref().frontends, spanned.span(), ctx, "frontends")?;
        let Value::Array(items) = frontends_v.get_ref() else {
            return Err(self.err(
                frontends_v.span(),
                ctx,
                "frontends",
                format!("expected an array of strings, found {}", frontends_v.get_ref().type_str()),
            ));
        };
        if items.is_empty() {
            return Err(self.err(frontends_v.span(), ctx, "frontends", "at least one frontend is required"));
        }
        let mut frontends = Vec::with_capacity(items.len());
        for item in items {
            let s = item.as_str().ok_or_else(|| {
                self.err(frontends_v.span(), ctx, "frontends", format!("expected strings, found {}", item.type_str()))
            })?;
            let frontend = parse_frontend(s).map_err(|why| {
                self.err(frontends_v.span(), ctx, "frontends", format!("invalid frontend {s:?}: {why}"))
            })?;
            frontends.push(frontend);
        }
        Ok(frontends)
    }

    /// `vip`: a host address of the service's network. A VIP service takes every port, TCP and
    /// UDP, of it, and needs no NAT address.
    fn vip(
        &self,
        v: &Spanned<Value>,
        raw: &RawService,
        ctx: &str,
        network: Option<&Network>,
    ) -> Result<Ipv4Addr, ConfigError> {
        let ip = self.unicast(v, ctx, "vip")?;
        let Some(net) = network else {
            return Err(self.err(v.span(), ctx, "vip", "a VIP is an address of an overlay network: set network"));
        };
        if !net.subnet.contains(ip) || net.subnet.is_reserved(ip) {
            return Err(self.err(
                v.span(),
                ctx,
                "vip",
                format!("{ip} is not a host address of network {:?} ({})", net.name, net.subnet),
            ));
        }
        for (field, given) in [("frontends", &raw.frontends), ("nat_addr", &raw.nat_addr)] {
            if let Some(g) = given {
                return Err(self.err(
                    g.span(),
                    ctx,
                    field,
                    "not allowed on a VIP service (it takes every port of its VIP)",
                ));
            }
        }
        Ok(ip)
    }

    /// `nat_addr`: one address, or a list of up to `MAX_SNAT_PER_SERVICE` distinct ones (each
    /// brings its own NAT ports towards every backend).
    fn nat_addrs(&self, v: &Spanned<Value>, ctx: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
        let Value::Array(items) = v.get_ref() else {
            return Ok(vec![self.ipv4(v, ctx, "nat_addr")?]);
        };
        let max = lb_common::maps::MAX_SNAT_PER_SERVICE;
        if items.is_empty() || items.len() > max {
            return Err(self.err(
                v.span(),
                ctx,
                "nat_addr",
                format!("expected 1 to {max} addresses, found {}", items.len()),
            ));
        }
        let mut addrs = Vec::with_capacity(items.len());
        for item in items {
            let addr = item
                .as_str()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| self.err(v.span(), ctx, "nat_addr", format!("invalid IPv4 address {item}")))?;
            if addrs.contains(&addr) {
                return Err(self.err(v.span(), ctx, "nat_addr", format!("{addr} is listed twice")));
            }
            addrs.push(addr);
        }
        Ok(addrs)
    }

    /// A service's `network`: it must exist and, if `needs_endpoint` (it is not a VIP service),
    /// have an endpoint for this node, whose address becomes the service's source address.
    fn service_network<'n>(
        &self,
        v: &Spanned<Value>,
        ctx: &str,
        networks: &'n [Network],
        needs_endpoint: bool,
    ) -> Result<&'n Network, ConfigError> {
        let name = self.string(v, ctx, "network")?;
        let network = networks.iter().find(|n| n.name == name).ok_or_else(|| {
            self.err(v.span(), ctx, "network", format!("unknown network {name:?} (no [[network]] has that name)"))
        })?;
        match self.local {
            _ if !needs_endpoint => Ok(network),
            None => Err(self.err(v.span(), ctx, "network", format!(
                "network {name:?} needs this node's endpoint address, but no node was named (run with --node NAME)"
            ))),
            Some(local) if network.endpoint(local).is_none() => Err(self.err(v.span(), ctx, "network", format!(
                "network {name:?} has no endpoint for this node {local:?} (add a [[network.endpoint]] with node = {local:?})"
            ))),
            Some(_) => Ok(network),
        }
    }

    fn backend(
        &self,
        spanned: &Spanned<RawBackend>,
        service: &str,
        nodes: &[Node],
        network: Option<&Network>,
        of_vip: bool,
    ) -> Result<Backend, ConfigError> {
        let raw = spanned.get_ref();
        let bctx = format!("service {service:?} backend: ");
        let name = self.name(self.required(&raw.name, spanned.span(), &bctx, "name")?, &bctx)?;
        let ctx = format!("service {service:?} backend {name:?}: ");
        let addr_v = self.required(&raw.addr, spanned.span(), &ctx, "addr")?;
        let s = self.string(addr_v, &ctx, "addr")?;
        // A VIP service's task takes the port the client asked for.
        let parsed = if of_vip { s.parse().map(|ip| SocketAddrV4::new(ip, ANY_PORT)) } else { s.parse() };
        let invalid =
            if of_vip { "invalid IPv4 address (a VIP's backend has no port)" } else { "invalid socket address" };
        let addr = parsed.map_err(|_| self.err(addr_v.span(), &ctx, "addr", format!("{invalid} {s:?}")))?;
        if (addr.port() == 0 && !of_vip)
            || addr.ip().is_unspecified()
            || addr.ip().is_broadcast()
            || addr.ip().is_multicast()
        {
            return Err(self.err(
                addr_v.span(),
                &ctx,
                "addr",
                format!("{s:?} is not a unicast address with a nonzero port"),
            ));
        }
        if let Some(net) = network {
            let ip = *addr.ip();
            if !net.subnet.contains(ip) || net.subnet.is_reserved(ip) {
                return Err(self.err(
                    addr_v.span(),
                    &ctx,
                    "addr",
                    format!("{ip} is not a host address of network {:?} ({})", net.name, net.subnet),
                ));
            }
            if let Some(e) = net.endpoints.iter().find(|e| e.addr == ip) {
                return Err(self.err(
                    addr_v.span(),
                    &ctx,
                    "addr",
                    format!("{ip} is node {:?}'s load-balancer endpoint on network {:?}, not a task", e.node, net.name),
                ));
            }
        }
        let weight = match &raw.weight {
            None => 1,
            Some(v) => self.checked(v, &ctx, "weight", limits::weight)?,
        };
        let node = match &raw.node {
            None => None,
            Some(v) => {
                let node = self.string(v, &ctx, "node")?;
                if !nodes.iter().any(|n| n.name == node) {
                    return Err(self.err(
                        v.span(),
                        &ctx,
                        "node",
                        format!("unknown node {node:?} (not a [[swarm.node]])"),
                    ));
                }
                Some(node.to_owned())
            }
        };
        Ok(Backend { name, addr, weight, node })
    }
}

/// `ADDR:PORT/PROTO` where ADDR is an IPv4 address or `*` (any local address).
fn parse_frontend(s: &str) -> Result<Frontend, String> {
    let (addr_port, proto) = s.rsplit_once('/').ok_or("expected ADDR:PORT/tcp or ADDR:PORT/udp")?;
    let proto = match proto {
        "tcp" => Proto::Tcp,
        "udp" => Proto::Udp,
        other => return Err(format!("unknown protocol {other:?} (tcp or udp)")),
    };
    let (addr, port) = addr_port.rsplit_once(':').ok_or("expected ADDR:PORT/PROTO")?;
    let port: u16 = port.parse().map_err(|_| format!("invalid port {port:?}"))?;
    if port == 0 {
        return Err("port 0 is not a valid frontend port".into());
    }
    let addr = match addr {
        "*" => None,
        a => {
            let ip: Ipv4Addr =
                a.parse().map_err(|_| format!("invalid IPv4 address {a:?} (or * for any local address)"))?;
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(format!("{ip} is not a unicast address (use * for any local address)"));
            }
            Some(ip)
        }
    };
    Ok(Frontend { addr, port, proto })
}
