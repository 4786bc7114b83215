//! The static TOML source: reads a config file and validates all of it into a
//! [`Cluster`], or fails with an error naming the file, the line and the field. Nothing is ever
//! half-accepted: one bad field rejects the whole file.

use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddrV4},
    ops::Range,
    path::Path,
};

use serde::Deserialize;
use toml::{Spanned, Value};

use crate::model::{
    Backend, Cluster, DEFAULT_SNAT_PORTS, Frontend, MAX_WEIGHT, MalformedPolicy, NodeSettings,
    Proto, Service,
};
use lb_common::maps::{MAX_BACKENDS, MAX_FRONTENDS, MAX_SERVICES};

/// Why a config file was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    /// `{path}:{line}: {what}`, e.g. `config.toml:12: service "web" backend "web-2": field addr:
    /// invalid socket address "198.18.1.x:80"`.
    #[error("{path}:{line}: {what}")]
    Invalid { path: String, line: usize, what: String },
}

/// Reads and validates the file at `path`.
pub fn load(path: &Path) -> Result<Cluster, ConfigError> {
    let display = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: display.clone(), source })?;
    parse(&display, &text)
}

/// Validates `text`; `path` only names the file in errors.
pub fn parse(path: &str, text: &str) -> Result<Cluster, ConfigError> {
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
    Validator { fail: &fail }.cluster(raw)
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
    #[serde(default)]
    service: Vec<Spanned<RawService>>,
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
struct RawService {
    name: Field,
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
}

struct Validator<'a> {
    fail: &'a dyn Fn(Range<usize>, String) -> ConfigError,
}

impl Validator<'_> {
    /// An error about `field` of the thing `ctx` describes (`service "web": `, or empty).
    fn err(&self, span: Range<usize>, ctx: &str, field: &str, msg: impl std::fmt::Display) -> ConfigError {
        (self.fail)(span, format!("{ctx}field {field}: {msg}"))
    }

    fn required<'v>(&self, v: &'v Field, at: Range<usize>, ctx: &str, field: &str) -> Result<&'v Spanned<Value>, ConfigError> {
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

    fn cluster(&self, raw: RawFile) -> Result<Cluster, ConfigError> {
        let (node, node_nat) = match &raw.node {
            Some(node) => self.node(node.get_ref())?,
            None => (NodeSettings { snat_ports: DEFAULT_SNAT_PORTS, malformed: MalformedPolicy::Pass }, None),
        };
        if raw.service.len() >= MAX_SERVICES as usize {
            let at = raw.service[MAX_SERVICES as usize - 1].span();
            return Err((self.fail)(at, format!("too many services (at most {})", MAX_SERVICES - 1)));
        }
        let mut services: Vec<Service> = Vec::new();
        let mut names = HashSet::new();
        let mut claimed: HashMap<Frontend, String> = HashMap::new();
        let mut total_backends = 0usize;
        for raw_service in &raw.service {
            let service = self.service(raw_service, node_nat)?;
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
            total_backends += service.backends.len();
            if total_backends >= MAX_BACKENDS as usize {
                return Err((self.fail)(raw_service.span(), format!("too many backends (at most {} in all)", MAX_BACKENDS - 1)));
            }
            if claimed.len() > MAX_FRONTENDS as usize {
                return Err((self.fail)(raw_service.span(), format!("too many frontends (at most {MAX_FRONTENDS} in all)")));
            }
            services.push(service);
        }
        Ok(Cluster { node, services })
    }

    fn node(&self, node: &RawNode) -> Result<(NodeSettings, Option<Ipv4Addr>), ConfigError> {
        let ctx = "node: ";
        let nat = node.nat_addr.as_ref().map(|v| self.ipv4(v, ctx, "nat_addr")).transpose()?;
        let snat_ports = match &node.snat_ports {
            None => DEFAULT_SNAT_PORTS,
            Some(v) => {
                let s = self.string(v, ctx, "snat_ports")?;
                let bad = || self.err(v.span(), ctx, "snat_ports", format!("invalid port range {s:?} (expected \"FIRST-LAST\", e.g. \"16384-32767\")"));
                let (lo, hi) = s.split_once('-').ok_or_else(bad)?;
                let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
                let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
                if lo == 0 || lo > hi {
                    return Err(self.err(v.span(), ctx, "snat_ports", format!("port range {s:?} is empty or starts at 0")));
                }
                if hi - lo < 1023 {
                    return Err(self.err(v.span(), ctx, "snat_ports", format!("port range {s:?} is too small (at least 1024 ports)")));
                }
                (lo, hi)
            }
        };
        let malformed = match &node.malformed {
            None => MalformedPolicy::Pass,
            Some(v) => match self.string(v, ctx, "malformed")? {
                "pass" => MalformedPolicy::Pass,
                "drop" => MalformedPolicy::Drop,
                other => return Err(self.err(v.span(), ctx, "malformed", format!("expected \"pass\" or \"drop\", found {other:?}"))),
            },
        };
        Ok((NodeSettings { snat_ports, malformed }, nat))
    }

    fn service(&self, spanned: &Spanned<RawService>, node_nat: Option<Ipv4Addr>) -> Result<Service, ConfigError> {
        let raw = spanned.get_ref();
        let name_v = self.required(&raw.name, spanned.span(), "service: ", "name")?;
        let name = self.name(name_v, "service: ")?;
        let ctx = format!("service {name:?}: ");
        let frontends_v = self.required(&raw.frontends, spanned.span(), &ctx, "frontends")?;
        let Value::Array(items) = frontends_v.get_ref() else {
            return Err(self.err(frontends_v.span(), &ctx, "frontends", format!("expected an array of strings, found {}", frontends_v.get_ref().type_str())));
        };
        if items.is_empty() {
            return Err(self.err(frontends_v.span(), &ctx, "frontends", "at least one frontend is required"));
        }
        let mut frontends = Vec::with_capacity(items.len());
        for item in items {
            let s = item.as_str().ok_or_else(|| {
                self.err(frontends_v.span(), &ctx, "frontends", format!("expected strings, found {}", item.type_str()))
            })?;
            let frontend = parse_frontend(s).map_err(|why| self.err(frontends_v.span(), &ctx, "frontends", format!("invalid frontend {s:?}: {why}")))?;
            frontends.push(frontend);
        }
        let sticky = match &raw.sticky {
            None => false,
            Some(v) => v.get_ref().as_bool().ok_or_else(|| {
                self.err(v.span(), &ctx, "sticky", format!("expected true or false, found {}", v.get_ref().type_str()))
            })?,
        };
        let nat_addr = match &raw.nat_addr {
            Some(v) => self.ipv4(v, &ctx, "nat_addr")?,
            None => node_nat.ok_or_else(|| {
                self.err(spanned.span(), &ctx, "nat_addr", "missing: set it here or in [node]")
            })?,
        };
        let mut backends: Vec<Backend> = Vec::with_capacity(raw.backend.len());
        for raw_backend in &raw.backend {
            let backend = self.backend(raw_backend, &name)?;
            if backends.iter().any(|b| b.name == backend.name) {
                let at = raw_backend.get_ref().name.as_ref().map_or(raw_backend.span(), Spanned::span);
                return Err(self.err(at, &ctx, "name", format!("duplicate backend name {:?}", backend.name)));
            }
            if backends.iter().any(|b| b.addr == backend.addr) {
                let at = raw_backend.get_ref().addr.as_ref().map_or(raw_backend.span(), Spanned::span);
                let ctx = format!("service {name:?} backend {:?}: ", backend.name);
                return Err(self.err(at, &ctx, "addr", format!("address {} already used by another backend of this service", backend.addr)));
            }
            backends.push(backend);
        }
        Ok(Service { name, frontends, backends, sticky, nat_addr })
    }

    fn backend(&self, spanned: &Spanned<RawBackend>, service: &str) -> Result<Backend, ConfigError> {
        let raw = spanned.get_ref();
        let bctx = format!("service {service:?} backend: ");
        let name = self.name(self.required(&raw.name, spanned.span(), &bctx, "name")?, &bctx)?;
        let ctx = format!("service {service:?} backend {name:?}: ");
        let addr_v = self.required(&raw.addr, spanned.span(), &ctx, "addr")?;
        let s = self.string(addr_v, &ctx, "addr")?;
        let addr: SocketAddrV4 = s.parse().map_err(|_| self.err(addr_v.span(), &ctx, "addr", format!("invalid socket address {s:?}")))?;
        if addr.port() == 0 || addr.ip().is_unspecified() || addr.ip().is_broadcast() || addr.ip().is_multicast() {
            return Err(self.err(addr_v.span(), &ctx, "addr", format!("{s:?} is not a unicast address with a nonzero port")));
        }
        let weight = match &raw.weight {
            None => 1,
            Some(v) => match v.get_ref().as_integer() {
                Some(w) if (0..=MAX_WEIGHT as i64).contains(&w) => w as u32,
                Some(w) => return Err(self.err(v.span(), &ctx, "weight", format!("{w} is out of range 0..={MAX_WEIGHT}"))),
                None => return Err(self.err(v.span(), &ctx, "weight", format!("expected an integer, found {}", v.get_ref().type_str()))),
            },
        };
        Ok(Backend { name, addr, weight })
    }

    fn name(&self, v: &Spanned<Value>, ctx: &str) -> Result<String, ConfigError> {
        let s = self.string(v, ctx, "name")?;
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !ok {
            return Err(self.err(v.span(), ctx, "name", format!("invalid name {s:?} (1-128 characters of A-Z a-z 0-9 - _ .)")));
        }
        Ok(s.to_owned())
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
            let ip: Ipv4Addr = a.parse().map_err(|_| format!("invalid IPv4 address {a:?} (or * for any local address)"))?;
            if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                return Err(format!("{ip} is not a unicast address (use * for any local address)"));
            }
            Some(ip)
        }
    };
    Ok(Frontend { addr, port, proto })
}

#[cfg(test)]
#[path = "file_tests.rs"]
mod tests;
