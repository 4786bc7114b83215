//! Socket load balancing's attachment: finding the cgroup v2 root (mounting cgroup2 if the node
//! has no v2 hierarchy mounted), loading the four cgroup sock_addr programs
//! (`lb_common::maps::SOCK_PROGS`) and attaching them there through bpf_links pinned as
//! `link_cgroup:<hook>` beside the XDP links, so `unload` detaches them like the rest.
//!
//! A cgroup link cannot have its program swapped through aya, so a restart attaches the new
//! program beside the old one, then drops the old pin. For that moment both run on every
//! connect: the first rewrites a frontend to a backend, the second sees a backend address, no
//! frontend, and leaves it.

use std::{
    fs::File,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, links::FdLink},
};
use lb_common::{
    SockConfig,
    maps::{self as names, SOCK_PROGS},
};
use tracing::info;

use super::{LINK_PREFIX, pin_path, writer::typed};

/// Where the agent mounts cgroup2 when the node has no v2 hierarchy mounted.
const OWN_MOUNT: &str = "/run/swarmlb/cgroup2";
/// Where hybrid (v1 + v2) nodes and pure v2 nodes mount it, then where the stack binds the
/// host's `/sys/fs/cgroup` (a container's own may show its cgroup namespace's root only).
const MOUNTS: [&str; 4] =
    ["/sys/fs/cgroup/unified", "/sys/fs/cgroup", "/host/sys/fs/cgroup/unified", "/host/sys/fs/cgroup"];
/// The inode of a cgroup hierarchy's root directory.
const ROOT_INODE: u64 = 1;

/// `link_cgroup:<hook>`: the pin of one socket program's link.
pub(crate) fn link_pin_path(pin_dir: &Path, hook: &str) -> PathBuf {
    pin_path(pin_dir, &format!("{LINK_PREFIX}cgroup:{hook}"))
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// The cgroup the socket programs are attached to: `given` (tests attach to a sub-cgroup of
/// their own), else the root of the node's cgroup v2 hierarchy, which every process is under
/// (on a hybrid node, runc puts containers in `/docker/<id>` of it too).
pub fn cgroup(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(path) = given {
        if !is_cgroup2(path) {
            bail!("--cgroup {}: not a cgroup v2 directory", path.display());
        }
        return Ok(path.to_owned());
    }
    let is_root = |p: &Path| is_cgroup2(p) && std::fs::metadata(p).is_ok_and(|m| m.ino() == ROOT_INODE);
    if let Some(mounted) = MOUNTS.iter().map(Path::new).find(|p| is_root(p)) {
        return Ok(mounted.to_owned());
    }
    let root = mount_own()?;
    let inode = std::fs::metadata(&root).with_context(|| format!("stat {}", root.display()))?.ino();
    if inode != ROOT_INODE {
        bail!(
            "{} is not the root of the cgroup v2 hierarchy (inode {inode}, not {ROOT_INODE}): the agent runs in a \
             cgroup namespace of its own, where socket load balancing would cover its own processes only; bind the \
             host's /sys/fs/cgroup at /host/sys/fs/cgroup (as deploy/swarmlb.yml does), or run it in the host's \
             cgroup namespace",
            root.display()
        );
    }
    Ok(root)
}

fn mount_own() -> Result<PathBuf> {
    let at = Path::new(OWN_MOUNT);
    if !is_cgroup2(at) {
        std::fs::create_dir_all(at).with_context(|| format!("creating {OWN_MOUNT}"))?;
        nix::mount::mount(Some("cgroup2"), at, Some("cgroup2"), nix::mount::MsFlags::empty(), None::<&str>)
            .with_context(|| format!("no cgroup v2 hierarchy is mounted, and mounting one at {OWN_MOUNT} failed"))?;
        info!(at = OWN_MOUNT, "mounted cgroup2");
    }
    Ok(at.to_owned())
}

/// Docker's cgroups below the v2 root, as its drivers make them: `docker/<id>` (cgroupfs) or
/// `system.slice/docker-<id>.scope` (systemd).
const CONTAINER_PARENTS: [&str; 2] = ["docker", "system.slice"];

/// The cgroup Docker puts containers below, under the v2 root `root`: the socket programs'
/// way to recognise a container before the agent has registered it (`lb_common::SockConfig`).
pub fn containers_cgroup(root: &Path) -> Option<SockConfig> {
    let (dir, meta) =
        CONTAINER_PARENTS.iter().map(|p| root.join(p)).find_map(|d| Some((d.clone(), d.metadata().ok()?)))?;
    info!(cgroup = %dir.display(), "containers are recognised below this cgroup until they are registered");
    // A cgroup's id is its directory's inode number; these parents sit right below the root.
    Some(SockConfig { containers_cgroup: meta.ino(), containers_level: 1, _pad: 0 })
}

/// Writes `slb_sk_config` (all zero: unregistered containers are not recognised).
pub fn configure(pin_dir: &Path, config: SockConfig) -> Result<()> {
    let mut map: aya::maps::Array<aya::maps::MapData, SockConfig> = typed!(pin_dir, names::SK_CONFIG);
    map.set(0, config, 0).with_context(|| format!("writing {}", names::SK_CONFIG))?;
    Ok(())
}

/// Loads the socket programs (verifier). Nothing is attached yet.
pub fn load(ebpf: &mut Ebpf) -> Result<()> {
    for (name, _) in SOCK_PROGS {
        program(ebpf, name)?.load().with_context(|| format!("loading program {name:?} (verifier)"))?;
    }
    Ok(())
}

fn program<'e>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name:?}"))?
        .try_into()
        .with_context(|| format!("program {name:?} is not a cgroup sock_addr program"))
}

/// Attaches every socket program to `cgroup`, each through a pinned link; a link an earlier
/// agent pinned is replaced (see the module's note).
pub fn attach(ebpf: &mut Ebpf, pin_dir: &Path, cgroup: &Path) -> Result<()> {
    let dir = File::open(cgroup).with_context(|| format!("opening {}", cgroup.display()))?;
    for (name, hook) in SOCK_PROGS {
        let prog = program(ebpf, name)?;
        let id = prog
            .attach(&dir, CgroupAttachMode::Single)
            .with_context(|| format!("attaching {name} to cgroup {} ({hook})", cgroup.display()))?;
        let link: FdLink = prog.take_link(id)?.try_into().context("a cgroup link made by bpf_link_create")?;
        let pin_at = link_pin_path(pin_dir, hook);
        let replaced = pin_at.exists();
        if replaced {
            std::fs::remove_file(&pin_at).with_context(|| format!("removing {}", pin_at.display()))?;
        }
        link.pin(&pin_at).with_context(|| format!("pinning the link at {}", pin_at.display()))?;
        info!(program = name, hook, cgroup = %cgroup.display(), replaced, "socket program attached");
    }
    Ok(())
}
