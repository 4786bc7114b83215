//! The namespaces whose sockets are balanced (`slb_sk_member`): each planned member's
//! namespace file is resolved to the kernel's netns cookie (what `bpf_get_netns_cookie` gives
//! the socket programs) and its entries written; entries of namespaces no longer planned are
//! removed. Resolving a cookie means entering the namespace on a short-lived thread, so
//! cookies are cached by the namespace file's inode, which the kernel does not give to another
//! namespace while this one lives.

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::fs::MetadataExt,
    },
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, anyhow};
use aya::maps::{HashMap as BpfHashMap, MapData};
use lb_common::{MEMBER_HOST, MEMBER_NODE, MEMBER_PUBLISHED, MemberKey, maps as names};
use nix::sched::{CloneFlags, setns};
use tracing::{info, warn};

use super::writer::typed;
use crate::planner::PlannedMember;

/// `SO_NETNS_COOKIE` (asm-generic/socket.h, Linux 5.14): the socket's network namespace cookie.
const SO_NETNS_COOKIE: libc::c_int = 71;

pub struct Members {
    map: BpfHashMap<MapData, MemberKey, u32>,
    /// Namespace file -> (device, inode, cookie).
    cookies: HashMap<PathBuf, (u64, u64, u64)>,
    /// What the map holds, as far as this agent wrote or found it.
    written: BTreeMap<MemberKey, u32>,
    /// Members whose namespace could not be resolved at the last sync, with the error (logged
    /// once each).
    failed: BTreeMap<String, String>,
}

/// What one [`Members::sync`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Synced {
    /// Namespaces registered.
    pub registered: usize,
    /// Members whose namespace file could not be resolved (gone meanwhile, or not visible to the
    /// agent): name and why.
    pub failed: Vec<(String, String)>,
}

impl Members {
    pub fn open(pin_dir: &Path) -> Result<Members> {
        let map: BpfHashMap<MapData, MemberKey, u32> = typed!(pin_dir, names::SK_MEMBER);
        // An earlier agent's entries: kept until the first sync says which are still wanted.
        let written = map.iter().filter_map(|e| e.ok()).collect();
        Ok(Members { map, cookies: HashMap::new(), written, failed: BTreeMap::new() })
    }

    /// Makes `slb_sk_member` hold exactly the entries of `members`.
    pub fn sync(&mut self, members: &[PlannedMember]) -> Result<Synced> {
        let mut want = BTreeMap::new();
        let mut synced = Synced::default();
        let mut live = HashMap::new();
        for m in members {
            let cookie = match self.cookie(&m.netns) {
                Ok(entry) => {
                    live.insert(m.netns.clone(), entry);
                    entry.2
                }
                Err(e) => {
                    synced.failed.push((m.name.clone(), format!("{e:#}")));
                    continue;
                }
            };
            synced.registered += 1;
            for (key, flags) in entries(m, cookie) {
                want.insert(key, flags);
            }
        }
        self.cookies = live;
        for (key, flags) in &want {
            if self.written.get(key) != Some(flags) {
                self.map.insert(key, flags, 0).with_context(|| format!("writing {} {key:?}", names::SK_MEMBER))?;
            }
        }
        for key in self.written.keys().filter(|k| !want.contains_key(k)) {
            match self.map.remove(key) {
                Err(aya::maps::MapError::KeyNotFound) | Ok(()) => {}
                Err(e) => return Err(e).with_context(|| format!("removing {} {key:?}", names::SK_MEMBER)),
            }
        }
        self.written = want;
        self.note_failures(&synced.failed);
        Ok(synced)
    }

    fn note_failures(&mut self, failed: &[(String, String)]) {
        let now: BTreeMap<String, String> = failed.iter().cloned().collect();
        for (name, why) in &now {
            if self.failed.get(name) != Some(why) {
                warn!(member = name, "namespace not registered for socket load balancing: {why}");
            }
        }
        for name in self.failed.keys().filter(|n| !now.contains_key(*n)) {
            info!(member = name, "namespace registered for socket load balancing again");
        }
        self.failed = now;
    }

    fn cookie(&self, netns: &Path) -> Result<(u64, u64, u64)> {
        let meta = std::fs::metadata(netns).with_context(|| format!("stat {}", netns.display()))?;
        match self.cookies.get(netns) {
            Some(&(dev, ino, cookie)) if (dev, ino) == (meta.dev(), meta.ino()) => Ok((dev, ino, cookie)),
            _ => Ok((meta.dev(), meta.ino(), netns_cookie(netns)?)),
        }
    }
}

/// The entries of one namespace: its node entry with its flags, and one per VNI.
fn entries(m: &PlannedMember, cookie: u64) -> impl Iterator<Item = (MemberKey, u32)> + '_ {
    let key = move |vni| MemberKey { netns_cookie: cookie, vni, _pad: 0 };
    let flags = if m.node { MEMBER_PUBLISHED } else { 0 } | if m.host { MEMBER_HOST } else { 0 };
    std::iter::once((key(MEMBER_NODE), flags)).chain(m.vnis.iter().map(move |vni| (key(*vni), 0)))
}

/// The cookie of the namespace `netns` names, read from a socket made inside it.
pub fn netns_cookie(netns: &Path) -> Result<u64> {
    let file = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("entering {}", netns.display()))?;
                socket_netns_cookie()
            })
            .join()
            .map_err(|_| anyhow!("the namespace thread panicked"))?
    })
}

fn socket_netns_cookie() -> Result<u64> {
    // SAFETY: plain socket(2); the descriptor is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("a socket in the namespace");
    }
    // SAFETY: `fd` is a new descriptor nothing else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a valid socket descriptor and an out buffer of the size given.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("getsockopt(SO_NETNS_COOKIE) (Linux 5.14 or later)");
    }
    Ok(cookie)
}
