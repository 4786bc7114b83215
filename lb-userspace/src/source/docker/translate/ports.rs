//! A service's published ports, parsed from each place they are found: the `swarmlb.publish`
//! label, the service's endpoint (ingress and host mode), a verbose network inspect's `Ports`.

use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum, Service as DockerService,
};

use crate::model::Proto;

/// One published port of a service, before it is grouped by target port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct PortSpec {
    pub published: u16,
    pub target: u16,
    pub proto: Proto,
}

/// Parses `swarmlb.publish`: `published:target[/tcp|/udp]`, comma separated.
pub fn parse_publish_label(value: &str) -> Result<Vec<PortSpec>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("empty entry in {value:?}"));
        }
        let (ports, proto) = match item.split_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some((_, other)) => return Err(format!("{item:?}: protocol {other:?} is neither tcp nor udp")),
            None => (item, Proto::Tcp),
        };
        let Some((published, target)) = ports.split_once(':') else {
            return Err(format!("{item:?}: expected PUBLISHED:TARGET[/PROTO]"));
        };
        let port = |s: &str| match s.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{item:?}: {s:?} is not a port (1-65535)")),
            Ok(p) => Ok(p),
        };
        out.push(PortSpec { published: port(published)?, target: port(target)?, proto });
    }
    Ok(out)
}

/// Parses one `Ports` string of a verbose network inspect (`"Target: 8080, Publish: 80"`) into
/// (published, target). The Engine does not say the protocol there.
pub fn parse_inspect_port(s: &str) -> Option<(u16, u16)> {
    let mut target = None;
    let mut published = None;
    for part in s.split(',') {
        let (k, v) = part.split_once(':')?;
        let v = v.trim().parse::<u16>().ok().filter(|p| *p != 0)?;
        match k.trim() {
            "Target" => target = Some(v),
            "Publish" => published = Some(v),
            _ => {}
        }
    }
    Some((published?, target?))
}

/// The service's ports published in ingress mode (the API's default), TCP and UDP.
pub(super) fn ingress_ports(s: &DockerService) -> impl Iterator<Item = PortSpec> + '_ {
    endpoint_ports(s).filter_map(|p| {
        if p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST) {
            return None;
        }
        let proto = match p.protocol {
            None | Some(EndpointPortConfigProtocolEnum::TCP) => Proto::Tcp,
            Some(EndpointPortConfigProtocolEnum::UDP) => Proto::Udp,
            _ => return None, // sctp
        };
        let port = |v: Option<i64>| v.and_then(|v| u16::try_from(v).ok()).filter(|v| *v != 0);
        Some(PortSpec { published: port(p.published_port)?, target: port(p.target_port)?, proto })
    })
}

/// The published port numbers of the service's ports published in host mode.
pub(super) fn host_ports(s: &DockerService) -> impl Iterator<Item = i64> + '_ {
    endpoint_ports(s)
        .filter(|p| p.publish_mode == Some(EndpointPortConfigPublishModeEnum::HOST))
        .map(|p| p.published_port.unwrap_or(0))
}

fn endpoint_ports(s: &DockerService) -> impl Iterator<Item = &EndpointPortConfig> {
    // `Endpoint.Ports` is what swarm allocated; the spec is the fallback while it is pending.
    let actual = s.endpoint.as_ref().and_then(|e| e.ports.as_ref()).filter(|p| !p.is_empty());
    let spec = s.spec.as_ref().and_then(|s| s.endpoint_spec.as_ref()).and_then(|e| e.ports.as_ref());
    actual.or(spec).into_iter().flatten()
}
