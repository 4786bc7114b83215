//! The static TOML source: reads a config file and validates all of it into a
//! [`Cluster`], or fails with an error naming the file, the line and the field. Nothing is ever
//! half-accepted: one bad field rejects the whole file.
//!
//! Split by section: this module holds the raw (spanned) file layout and the shared field
//! checks; [`swarm`] validates `[swarm]`, `[[swarm.node]]` and `[[network]]`; [`services`]
//! validates `[node]` and `[[service]]`; [`members`] validates `[[member]]`.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    ops::Range,
    path::Path,
};

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::{
    limits::Invalid,
    model::{Cluster, Frontend, NodeSettings, Service},
};

mod members;
mod services;
mod swarm;

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// `{path}:{line}: {what}`, e.g. `config.toml:12: service "web" backend "web-2": field addr:
    /// invalid socket address "198.18.1.x:80"`.
    #[error("{path}:{line}: {what}")]
    Invalid { path: String, line: usize, what: String },
    /// A problem of the file as a whole, with no line to point at (e.g. `--node` names a node
    /// and the file has none).
    #[error("{path}: {what}")]
    File { path: String, what: String },
}

/// Reads and validates the file at `path` for the swarm node named `local` (`--node`; `None`
/// for a single-node setup).
pub fn load(path: &Path, local: Option<&str>) -> Result<Cluster, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: display.clone(), source })?;
    parse(&display, &text, local)
}

/// Validates `text` for the swarm node named `local`; `path` only names the file in errors.
pub fn parse(path: &str, text: &str, local: Option<&str>) -> Result<Cluster, ConfigError> {
    let fail = |span: Range<usize>, what: String| ConfigError::Invalid {
        path: path.to_owned(),
        line: line_of(text, span.start),
        what,
    };
    let raw: RawFile = toml::from_str(text).map_err(|e| {
        // toml's own messages name the offending key or value; keep only the first line.
        let message = e.message().lines().collect::<Vec<_>>().join(": ");
        fail(e.span().unwrap_or(0..0), message)
    })?;
    Validator { fail: &fail, path, local }.cluster(raw)
}

/// 1-based line holding byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|b| **b == b'\n').count() + 1
}

type Field = Option<Spanned<Value>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    node: Option<Spanned<RawNode>>,
    swarm: Option<RawSwarm>,
    #[serde(default)]
    network: Vec<Spanned<RawNetwork>>,
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
    #[serde(default)]
    member: Vec<Spanned<RawMember>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    nat_addr: Field,
    snat_ports: Field,
    malformed: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwarm {
    vxlan_port: Field,
    #[serde(default)]
    node: Vec<Spanned<RawSwarmNode>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSwarmNode {
    name: Field,
    addr: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetwork {
    name: Field,
    vni: Field,
    subnet: Field,
    mtu: Field,
    #[serde(default)]
    endpoint: Vec<Spanned<RawEndpoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEndpoint {
    node: Field,
    addr: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: Field,
    network: Field,
    vip: Field,
    source: Field,
    frontends: Field,
    sticky: Field,
    nat_addr: Field,
    #[serde(default)]
    backend: Vec<Spanned<RawBackend>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    name: Field,
    addr: Field,
    weight: Field,
    node: Field,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    name: Field,
    netns: Field,
    networks: Field,
    node: Field,
    host: Field,
}

struct Validator<'a> {
    fail: &'a dyn Fn(Range<usize>, String) -> ConfigError,
    path: &'a str,
    /// `--node`: which swarm node this agent is.
    local: Option<&'a str>,
}

impl Validator<'_> {
    /// An error about `field` of the thing `ctx` describes (`service "web": `, or empty).
    fn err(&self, span: Range<usize>, ctx: &str, field: &str, msg: impl std::fmt::Display) -> ConfigError {
        (self.fail)(span, format!("{ctx}field {field}: {msg}"))
    }

    fn required<'v>(
        &self,
        v: &'v Field,
        at: Range<usize>,
        ctx: &str,
        field: &str,
    ) -> Result<&'v Spanned<Value>, ConfigError> {
        v.as_ref().ok_or_else(|| self.err(at, ctx, field, "missing (required)"))
    }

    fn string<'v>(&self, v: &'v Spanned<Value>, ctx: &str, field: &str) -> Result<&'v str, ConfigError> {
        v.get_ref().as_str().ok_or_else(|| {
            self.err(v.span(), ctx, field, format!("expected a string, found {}", v.get_ref().type_str()))
        })
    }

    fn ipv4(&self, v: &Spanned<Value>, ctx: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
        let s = self.string(v, ctx, field)?;
        s.parse().map_err(|_| self.err(v.span(), ctx, field, format!("invalid IPv4 address {s:?}")))
    }

    /// An IPv4 address a host can have (not 0.0.0.0, broadcast, multicast or loopback).
    fn unicast(&self, v: &Spanned<Value>, ctx: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
        let ip = self.ipv4(v, ctx, field)?;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(self.err(v.span(), ctx, field, format!("{ip} is not a unicast address")));
        }
        Ok(ip)
    }

    /// An integer that `check` (one of [`crate::limits`]) accepts.
    fn checked<T>(
        &self,
        v: &Spanned<Value>,
        ctx: &str,
        field: &str,
        check: impl Fn(i64) -> Result<T, Invalid>,
    ) -> Result<T, ConfigError> {
        let n = v.get_ref().as_integer().ok_or_else(|| {
            self.err(v.span(), ctx, field, format!("expected an integer, found {}", v.get_ref().type_str()))
        })?;
        check(n).map_err(|e| self.err(v.span(), ctx, field, e))
    }

    fn boolean(&self, v: &Field, ctx: &str, field: &str) -> Result<bool, ConfigError> {
        match v {
            None => Ok(false),
            Some(v) => v.get_ref().as_bool().ok_or_else(|| {
                self.err(v.span(), ctx, field, format!("expected true or false, found {}", v.get_ref().type_str()))
            }),
        }
    }

    fn name(&self, v: &Spanned<Value>, ctx: &str) -> Result<String, ConfigError> {
        self.name_field(v, ctx, "name")
    }

    /// A name (of a service, backend, node or network) in `field`.
    fn name_field(&self, v: &Spanned<Value>, ctx: &str, field: &str) -> Result<String, ConfigError> {
        let s = self.string(v, ctx, field)?;
        let ok = !s.is_empty() && s.len() <= 128 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(self.err(
                v.span(),
                ctx,
                field,
                format!("invalid name {s:?} (1-128 characters of A-Z a-z 0-9 - _ .)"),
            ));
        }
        Ok(s.to_owned())
    }

    fn cluster(&self, raw: RawFile) -> Result<Cluster, ConfigError> {
        let (node, node_nat) = match &raw.node {
            Some(node) => self.node(node.get_ref())?,
            None => (NodeSettings::default(), Vec::new()),
        };
        let (swarm, nodes) = self.swarm(raw.swarm.as_ref())?;
        let networks = self.networks(&raw.network, &nodes)?;
        let mut services: Vec<Service> = Vec::new();
        let mut names = HashSet::new();
        let mut claimed: HashMap<Frontend, String> = HashMap::new();
        for raw_service in &raw.service {
            let service = self.service(raw_service, &node_nat, &nodes, &networks)?;
            if !names.insert(service.name.clone()) {
                let at = raw_service.get_ref().name.as_ref().map_or(raw_service.span(), Spanned::span);
                return Err(self.err(at, "", "name", format!("duplicate service name {:?}", service.name)));
            }
            for frontend in &service.frontends {
                if let Some(owner) = claimed.insert(*frontend, service.name.clone()) {
                    let at = raw_service.get_ref().frontends.as_ref().map_or(raw_service.span(), Spanned::span);
                    let ctx = format!("service {:?}: ", service.name);
                    let msg = if owner == service.name {
                        format!("frontend {frontend} listed twice")
                    } else {
                        format!("frontend {frontend} already belongs to service {owner:?}")
                    };
                    return Err(self.err(at, &ctx, "frontends", msg));
                }
            }
            services.push(service);
        }
        let members = self.members(&raw.member, &networks)?;
        Ok(Cluster { node, swarm, nodes, networks, services, members })
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod swarm_tests;
