//! Loads the embedded eBPF object with every map pinned in the pin directory (`--pin-dir`,
//! default `/sys/fs/bpf/swarmlb`; created on first run, reused afterwards so established
//! connections survive an agent restart, checked and carried over by [`super::upgrade`]),
//! attaches the XDP program `swarmlb` and, beside it, the TC ingress program `swarmlb_neigh`
//! (the neighbour-resolution hand-off) to interfaces through pinned bpf_links (the socket
//! programs, to a cgroup: [`super::sockets`]), and removes it all on `unload`. Loading and attaching are separate steps so the agent fills new maps before
//! any interface runs the program that reads them.
//!
//! On restart an interface's pinned links are kept and their programs swapped atomically with
//! BPF_LINK_UPDATE (aya's `attach_to_link`): the interface is never without a program, and the
//! new program uses the same pinned maps, so no packet sees an empty table.

use std::{collections::BTreeSet, io::ErrorKind, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::ProgramArray,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
        xdp::XdpLink,
    },
};
use lb_common::maps::{PROG_LB, PROG_LOG, PROG_NEIGH, PROG_TRACED, TRACE_PROG_LOG, TRACE_PROG_TRACED, TRACE_PROGS};
use tracing::{info, warn};

use super::{
    LINK_PREFIX, MAP_PREFIX, link_pin_path, pin_path, tc_link_pin_path,
    upgrade::{self, Carried, MapSizes},
};

/// The loaded program, kept by the agent so interfaces can be attached after start (the
/// overlay endpoints the Docker source takes over).
pub struct Loaded {
    ebpf: Ebpf,
    pin_dir: std::path::PathBuf,
    mode: XdpMode,
    /// Interfaces whose neighbour-resolution hand-off (TC) is attached.
    handoff: BTreeSet<String>,
    /// Old maps an upgrade replaced, until [`Loaded::finish_upgrade`].
    carried: Option<Carried>,
}

impl Loaded {
    /// Once the interfaces run the new program: carries over what the old one added to the
    /// replaced connection tables meanwhile, and lets the old maps go.
    pub fn finish_upgrade(&mut self) -> Result<()> {
        match self.carried.take() {
            Some(carried) => carried.finish(&self.pin_dir),
            None => Ok(()),
        }
    }

    /// Attaches the programs to one more interface, pinned like the others.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        if attach_both(&mut self.ebpf, &self.pin_dir, iface, self.mode)? {
            self.handoff.insert(iface.to_owned());
        }
        Ok(())
    }

    pub fn has_handoff(&self, iface: &str) -> bool {
        self.handoff.contains(iface)
    }

    /// Attaches the socket programs to `cgroup`, pinned like the XDP links.
    pub fn attach_sockets(&mut self, cgroup: &Path) -> Result<()> {
        super::sockets::attach(&mut self.ebpf, &self.pin_dir, cgroup)
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp> {
    ebpf.program_mut(PROG_LB)
        .with_context(|| format!("the eBPF object has no program {PROG_LB:?}"))?
        .try_into()
        .context("program is not XDP")
}

fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier> {
    ebpf.program_mut(PROG_NEIGH)
        .with_context(|| format!("the eBPF object has no program {PROG_NEIGH:?}"))?
        .try_into()
        .context("program is not a TC classifier")
}

/// XDP on `iface`, then the hand-off program beside it. Without the latter (a kernel before 6.6
/// has no TCX links to pin) frames needing a neighbour resolution go through the kernel's IP
/// forwarding instead, so it is a warning, not a failure. `Ok(false)`: XDP only.
fn attach_both(ebpf: &mut Ebpf, pin_dir: &Path, iface: &str, mode: XdpMode) -> Result<bool> {
    attach(xdp_program(ebpf)?, pin_dir, iface, mode)?;
    match attach_tc(tc_program(ebpf)?, pin_dir, iface) {
        Ok(()) => Ok(true),
        Err(e) => {
            warn!(
                iface,
                error = format!("{e:#}"),
                "TC hand-off not attached: frames whose next hop has no neighbour entry are left to the kernel's IP forwarding"
            );
            Ok(false)
        }
    }
}

/// The loader for maps pinned in `pin_dir` at `sizes` (the agent's, and the tests').
pub fn loader(pin_dir: &Path, sizes: &MapSizes) -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    for spec in lb_common::maps::SPECS {
        loader.map_pin_path(spec.name, pin_path(pin_dir, spec.name));
    }
    loader.map_max_entries(lb_common::maps::CONNTRACK, sizes.conntrack);
    loader
}

/// Loads the object, creating or reusing the maps pinned in `pin_dir` (a pin that differs from
/// this build is replaced, its entries carried over where they can be). Nothing is attached yet.
pub fn load(object: &[u8], pin_dir: &Path, sizes: &MapSizes, mode: XdpMode) -> Result<Loaded> {
    ensure_bpffs(pin_dir)?;
    let carried = upgrade::check_pins(pin_dir, &upgrade::expected(sizes))?;
    let mut ebpf = loader(pin_dir, sizes).load(object).context("loading the eBPF object (maps and programs)")?;
    xdp_program(&mut ebpf)?.load().with_context(|| format!("loading program {PROG_LB:?} (verifier)"))?;
    tc_program(&mut ebpf)?.load().with_context(|| format!("loading program {PROG_NEIGH:?} (verifier)"))?;
    load_trace_programs(&mut ebpf)?;
    super::sockets::load(&mut ebpf)?;
    carried.copy(pin_dir)?;
    let carried = (!carried.is_empty()).then_some(carried);
    Ok(Loaded { ebpf, pin_dir: pin_dir.to_owned(), mode, handoff: BTreeSet::new(), carried })
}

/// Loads the programs `swarmlb trace` diverts packets to (the traced pipeline and its logger)
/// and puts them in `slb_trace_progs`, so tracing needs nothing more of the agent.
pub fn load_trace_programs(ebpf: &mut Ebpf) -> Result<()> {
    let mut fds = Vec::new();
    for (name, index) in [(PROG_TRACED, TRACE_PROG_TRACED), (PROG_LOG, TRACE_PROG_LOG)] {
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .with_context(|| format!("the eBPF object has no program {name:?}"))?
            .try_into()
            .context("program is not XDP")?;
        prog.load().with_context(|| format!("loading program {name:?} (verifier)"))?;
        fds.push((index, prog.fd()?.try_clone()?));
    }
    let map = ebpf.map_mut(TRACE_PROGS).with_context(|| format!("the eBPF object has no map {TRACE_PROGS}"))?;
    let mut progs = ProgramArray::try_from(map)?;
    for (index, fd) in &fds {
        progs.set(*index, fd, 0).with_context(|| format!("setting {TRACE_PROGS}[{index}]"))?;
    }
    Ok(())
}

/// `/sys/fs/bpf` must be a bpffs; mount one if it is not (fresh containers often lack it). The
/// pin directory is created and must be on a bpffs.
fn ensure_bpffs(pin_dir: &Path) -> Result<()> {
    let bpffs = Path::new("/sys/fs/bpf");
    let is_bpffs = nix::sys::statfs::statfs(bpffs).map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !matches!(is_bpffs, Ok(true)) {
        std::fs::create_dir_all(bpffs).ok();
        nix::mount::mount(Some("bpffs"), bpffs, Some("bpf"), nix::mount::MsFlags::empty(), None::<&str>)
            .context("/sys/fs/bpf is not a bpffs and mounting one failed")?;
        info!("mounted bpffs on /sys/fs/bpf");
    }
    std::fs::create_dir_all(pin_dir).with_context(|| format!("creating {}", pin_dir.display()))?;
    let on_bpffs = nix::sys::statfs::statfs(pin_dir).map(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    if !matches!(on_bpffs, Ok(true)) {
        bail!("pin directory {} is not on a bpffs (use a directory under /sys/fs/bpf)", pin_dir.display());
    }
    Ok(())
}

fn attach(program: &mut Xdp, pin_dir: &Path, iface: &str, mode: XdpMode) -> Result<()> {
    let reuse = |fd_link: FdLink| -> Result<()> {
        let link = XdpLink::try_from(fd_link).context("pinned link is not an XDP link")?;
        let id = program.attach_to_link(link).context("BPF_LINK_UPDATE")?;
        // Our descriptor closes; the pin keeps the link, now running the new program.
        drop(program.take_link(id)?);
        Ok(())
    };
    if reuse_pinned(&link_pin_path(pin_dir, iface), iface, reuse)? {
        return Ok(());
    }
    let id = program.attach(iface, mode).with_context(|| format!("attaching XDP to {iface} ({mode:?})"))?;
    let link: FdLink = program.take_link(id)?.try_into().map_err(|e: LinkError| {
        anyhow::anyhow!("{iface}: the kernel attached through netlink, not a bpf_link, so it cannot be pinned ({e})")
    })?;
    pin(link, &link_pin_path(pin_dir, iface))?;
    info!(iface, ?mode, "XDP attached");
    Ok(())
}

fn attach_tc(program: &mut SchedClassifier, pin_dir: &Path, iface: &str) -> Result<()> {
    let reuse = |fd_link: FdLink| -> Result<()> {
        let link = SchedClassifierLink::try_from(fd_link).context("pinned link is not a TCX link")?;
        let id = program.attach_to_link(link).context("BPF_LINK_UPDATE")?;
        drop(program.take_link(id)?);
        Ok(())
    };
    let pin_at = tc_link_pin_path(pin_dir, iface);
    if reuse_pinned(&pin_at, iface, reuse)? {
        return Ok(());
    }
    let id = program
        .attach_with_options(iface, TcAttachType::Ingress, TcAttachOptions::TcxOrder(LinkOrder::default()))
        .with_context(|| format!("attaching {PROG_NEIGH} to {iface} (TCX ingress)"))?;
    let link: FdLink = program.take_link(id)?.try_into().context("a TCX link is a bpf_link")?;
    pin(link, &pin_at)?;
    info!(iface, "TC hand-off attached");
    Ok(())
}

/// Swaps the program behind the link pinned at `pin_at`, if there is one, with `reuse`
/// (BPF_LINK_UPDATE, atomic). A pin that cannot be reused (its interface was deleted, so the
/// link is defunct) is removed so the caller attaches anew. `Ok(true)`: reused.
fn reuse_pinned(pin_at: &Path, iface: &str, reuse: impl FnOnce(FdLink) -> Result<()>) -> Result<bool> {
    if !pin_at.exists() {
        return Ok(false);
    }
    match PinnedLink::from_pin(pin_at).context("opening the pinned link").and_then(|p| reuse(p.into())) {
        Ok(()) => {
            info!(iface, pin = %pin_at.display(), "replaced the program on the pinned link (no detach)");
            Ok(true)
        }
        Err(e) => {
            warn!(iface, error = format!("{e:#}"), "cannot reuse the pinned link; attaching anew");
            std::fs::remove_file(pin_at).with_context(|| format!("removing {}", pin_at.display()))?;
            Ok(false)
        }
    }
}

fn pin(link: FdLink, at: &Path) -> Result<()> {
    link.pin(at).with_context(|| format!("pinning the link at {}", at.display()))?;
    Ok(())
}

/// Removes the pinned links in `pin_dir` (detaching the program), then the pinned maps, then
/// the directory. Only `link_*` and `slb_*` pins are touched, so a mistaken `--pin-dir` (say,
/// `/sys/fs/bpf` itself) cannot remove anyone else's pins.
pub fn unload(pin_dir: &Path) -> Result<()> {
    let dir = match std::fs::read_dir(pin_dir) {
        Ok(dir) => dir,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", pin_dir.display())),
    };
    let ours = |p: &Path, prefix: &str| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix));
    let entries: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
    // Links first, so the program stops before its maps go away.
    let links = entries.iter().filter(|p| ours(p, LINK_PREFIX));
    let maps = entries.iter().filter(|p| ours(p, MAP_PREFIX));
    for path in links.chain(maps) {
        std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        info!(pin = %path.display(), "removed");
    }
    match std::fs::remove_dir(pin_dir) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => {
            warn!(dir = %pin_dir.display(), "left in place: it holds pins that are not swarmlb's");
            Ok(())
        }
        Err(e) => bail!("removing {}: {e}", pin_dir.display()),
    }
}
