//! Netlink connections in Docker's namespaces, and small helpers over link messages.
//!
//! A netlink socket stays bound to the network namespace its thread was in when it was opened,
//! so a connection into another namespace is opened on a short-lived thread of its own that
//! `setns`es first (never on a pooled tokio thread, which would stay in that namespace).

use std::{
    fs::File,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use futures_util::TryStreamExt;
use nix::sched::{CloneFlags, setns};
use rtnetlink::{
    Handle,
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{InfoData, InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage},
    },
};

/// Where Docker keeps its sandboxes' and overlays' network namespaces.
pub const DOCKER_NETNS: &str = "/var/run/docker/netns";

/// A netlink connection into one namespace; its background task ends when this is dropped.
pub struct Nl {
    pub handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Nl {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A connection in the agent's own namespace.
pub fn host() -> Result<Nl> {
    let (conn, handle, _) = rtnetlink::new_connection().context("opening a netlink socket")?;
    Ok(Nl { handle, task: tokio::spawn(conn) })
}

/// Runs `f` on a fresh thread that first enters the network namespace at `path`.
pub async fn run_in_netns<T: Send + 'static>(path: &Path, f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    let ns = File::open(path).with_context(|| format!("opening network namespace {}", path.display()))?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let name = path.display().to_string();
    std::thread::Builder::new()
        .name("slb-netns".into())
        .spawn(move || {
            let result = setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| anyhow!("entering network namespace {name}: {e}"))
                .and_then(|()| f());
            let _ = tx.send(result);
        })
        .context("spawning a thread")?;
    rx.await.context("namespace thread died")?
}

/// A connection in the network namespace at `path`.
pub async fn in_netns(path: &Path) -> Result<Nl> {
    let rt = tokio::runtime::Handle::current();
    let (conn, handle, _) = run_in_netns(path, move || {
        let _guard = rt.enter();
        rtnetlink::new_connection().context("opening a netlink socket")
    })
    .await?;
    Ok(Nl { handle, task: tokio::spawn(conn) })
}

/// Docker's namespaces, those whose name starts with one of `first` listed first.
pub fn docker_netns(first: &[&str]) -> Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = match std::fs::read_dir(DOCKER_NETNS) {
        Ok(dir) => dir.filter_map(|e| e.ok()).map(|e| e.path()).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("listing {DOCKER_NETNS}")),
    };
    let rank = |p: &PathBuf| {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        (!first.iter().any(|f| name.starts_with(f)), name)
    };
    paths.sort_by_key(rank);
    Ok(paths)
}

/// `statfs` type of a mounted namespace file (`NSFS_MAGIC`).
const NSFS_MAGIC: i64 = 0x6e73_6673;

/// Namespace files in [`DOCKER_NETNS`] that are plain files here: Docker bind-mounted a
/// namespace on them after this process's view of the directory was made (a container whose
/// bind of it does not propagate new mounts), so they cannot be entered. Files younger than a
/// second are left out: Docker creates the file, then mounts onto it.
pub fn hidden_netns() -> Vec<PathBuf> {
    let Ok(dir) = std::fs::read_dir(DOCKER_NETNS) else { return Vec::new() };
    let settled = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().is_ok_and(|age| age > std::time::Duration::from_secs(1)))
    };
    let mounted = |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == NSFS_MAGIC);
    let mut hidden: Vec<PathBuf> =
        dir.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| settled(p) && !mounted(p)).collect();
    hidden.sort();
    hidden
}

pub async fn links(h: &Handle) -> Result<Vec<LinkMessage>> {
    h.link().get().execute().try_collect().await.context("listing links")
}

/// The link named `name`, asked for by name (no dump of every link).
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h.link().get().match_name(name).execute().try_next().await {
        Ok(link) => Ok(link),
        Err(e) if is_errno(&e, libc::ENODEV) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("looking up link {name}")),
    }
}

pub async fn addresses(h: &Handle) -> Result<Vec<AddressMessage>> {
    h.address().get().execute().try_collect().await.context("listing addresses")
}

pub fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_alias(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfAlias(n) => Some(n.as_str()),
        _ => None,
    })
}

pub fn link_mac(l: &LinkMessage) -> Option<&[u8]> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(m) => Some(m.as_slice()),
        _ => None,
    })
}

pub fn link_is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

pub fn link_controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

pub fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    link_info(l).find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    })
}

pub fn link_info_data(l: &LinkMessage) -> Option<&InfoData> {
    link_info(l).find_map(|i| match i {
        LinkInfo::Data(d) => Some(d),
        _ => None,
    })
}

fn link_info(l: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(v) => Some(v.iter()),
            _ => None,
        })
        .flatten()
}

/// The IPv4 address of an address message (`IFA_LOCAL`, else `IFA_ADDRESS`).
pub fn addr_v4(a: &AddressMessage) -> Option<std::net::Ipv4Addr> {
    let pick = |want_local: bool| {
        a.attributes.iter().find_map(|x| match x {
            AddressAttribute::Local(std::net::IpAddr::V4(ip)) if want_local => Some(*ip),
            AddressAttribute::Address(std::net::IpAddr::V4(ip)) if !want_local => Some(*ip),
            _ => None,
        })
    };
    pick(true).or_else(|| pick(false))
}

/// Docker's MAC for an address on one of its networks: `02:42:` and the four address bytes.
pub fn docker_mac(ip: std::net::Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Whether a netlink error is "already exists" / "does not exist" (EEXIST / ENOENT / ESRCH).
pub fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.raw_code() == -errno,
        _ => false,
    }
}
