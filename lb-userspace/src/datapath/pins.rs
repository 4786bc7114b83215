//! Loads the embedded XDP object with every map pinned in the pin directory (`--pin-dir`,
//! default `/sys/fs/bpf/swarmlb`; created on first run, reused afterwards so established
//! connections survive an agent restart), attaches
//! the `swarmlb` program to interfaces through pinned bpf_links, and removes it all on `unload`.
//!
//! On restart the interface's pinned link is kept and its program swapped atomically with
//! BPF_LINK_UPDATE (aya's `Xdp::attach_to_link`): the interface is never without a program, and
//! the new program uses the same pinned maps, so no packet sees an empty table.

use std::{io::ErrorKind, path::Path};

use anyhow::{Context, Result, bail};
use aya::{
    Ebpf, EbpfLoader,
    maps::MapData,
    programs::{
        Xdp, XdpMode,
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
    },
};
use lb_common::maps::PROG_LB;
use tracing::{info, warn};

use super::{LINK_PREFIX, MAP_PREFIX, MAPS, link_pin_path, pin_path};

/// The loaded program, kept by the agent so interfaces can be attached after start (the
/// overlay endpoints the Docker source takes over).
pub struct Loaded {
    ebpf: Ebpf,
    pin_dir: std::path::PathBuf,
    mode: XdpMode,
}

impl Loaded {
    /// Attaches the program to one more interface, pinned as `link_<ifname>` like the others.
    pub fn attach(&mut self, iface: &str) -> Result<()> {
        let program: &mut Xdp = self
            .ebpf
            .program_mut(PROG_LB)
            .with_context(|| format!("the XDP object has no program {PROG_LB:?}"))?
            .try_into()
            .context("program is not XDP")?;
        attach(program, &self.pin_dir, iface, self.mode)
    }
}

/// Loads the object, creating or reusing the maps pinned in `pin_dir`, and attaches it to
/// `ifaces`.
pub fn load_and_attach(object: &[u8], pin_dir: &Path, ifaces: &[String], mode: XdpMode) -> Result<Loaded> {
    ensure_bpffs(pin_dir)?;
    drop_incompatible_pins(pin_dir)?;
    let mut loader = EbpfLoader::new();
    for (name, _, _) in MAPS {
        loader.map_pin_path(name, pin_path(pin_dir, name));
    }
    let mut ebpf = loader.load(object).context("loading the XDP object (maps and programs)")?;
    let program: &mut Xdp = ebpf
        .program_mut(PROG_LB)
        .with_context(|| format!("the XDP object has no program {PROG_LB:?}"))?
        .try_into()
        .context("program is not XDP")?;
    program.load().with_context(|| format!("loading program {PROG_LB:?} (verifier)"))?;
    for iface in ifaces {
        attach(program, pin_dir, iface, mode)?;
    }
    // Dropping `ebpf` closes our descriptors only: links and maps stay pinned and attached.
    Ok(Loaded { ebpf, pin_dir: pin_dir.to_owned(), mode })
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

/// A pinned map whose layout differs from this build's (an upgrade changed it) cannot be reused:
/// its pin is removed so a fresh map is created, at the cost of that map's contents.
fn drop_incompatible_pins(pin_dir: &Path) -> Result<()> {
    for (name, key_size, value_size) in MAPS {
        let path = pin_path(pin_dir, name);
        if !path.exists() {
            continue;
        }
        let compatible = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map(|i| i.key_size() as usize == *key_size && i.value_size() as usize == *value_size);
        if !matches!(compatible, Ok(true)) {
            warn!(map = name, "pinned map has another layout than this build; recreating it (its contents are lost)");
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

fn attach(program: &mut Xdp, pin_dir: &Path, iface: &str, mode: XdpMode) -> Result<()> {
    let pin = link_pin_path(pin_dir, iface);
    if pin.exists() {
        match replace_program(program, &pin) {
            Ok(()) => {
                info!(iface, "replaced the program on the pinned link (no detach)");
                return Ok(());
            }
            Err(e) => {
                // The interface was deleted (the link is defunct) or the pin is not an XDP
                // link: start over with a fresh link.
                warn!(iface, error = format!("{e:#}"), "cannot reuse the pinned link; attaching anew");
                std::fs::remove_file(&pin).with_context(|| format!("removing {}", pin.display()))?;
            }
        }
    }
    let id = program.attach(iface, mode).with_context(|| format!("attaching XDP to {iface} ({mode:?})"))?;
    let link = program.take_link(id)?;
    let link: FdLink = link.try_into().map_err(|e: LinkError| {
        anyhow::anyhow!("{iface}: the kernel attached through netlink, not a bpf_link, so it cannot be pinned ({e})")
    })?;
    link.pin(&pin).with_context(|| format!("pinning the link at {}", pin.display()))?;
    info!(iface, ?mode, "attached");
    Ok(())
}

/// Swaps the program behind an existing pinned link atomically (BPF_LINK_UPDATE).
fn replace_program(program: &mut Xdp, pin: &Path) -> Result<()> {
    let pinned = PinnedLink::from_pin(pin).context("opening the pinned link")?;
    let fd_link: FdLink = pinned.into();
    let link = XdpLink::try_from(fd_link).context("pinned link is not an XDP link")?;
    let id = program.attach_to_link(link).context("BPF_LINK_UPDATE")?;
    // Our descriptor closes; the pin keeps the link, now running the new program.
    drop(program.take_link(id)?);
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
