//! The datapath side of the agent: loading and attaching the XDP program with its maps pinned
//! ([`pins`]), writing a plan's diff into the maps in a safe order ([`writer`], with the Maglev
//! tables in [`maglev`]), and reading the counters back ([`reader`]). The maps themselves are
//! described once, in `lb_common::maps::SPECS`.

use std::path::{Path, PathBuf};

pub mod batch;
pub mod maglev;
pub mod members;
pub mod pins;
pub mod reader;
pub mod sockets;
pub mod tables;
pub mod upgrade;
pub mod writer;

/// Where a map (or link) named `name` is pinned: `<pin dir>/<name>`.
pub(crate) fn pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// Pinned links are `link_<ifname>` (XDP), `link_<ifname>:tc` (TC ingress; no interface name
/// holds a `:`) and `link_cgroup:<hook>` (the socket programs); pinned maps are `slb_<what>`. Nothing else in a pin directory is ours, so
/// `unload` removes only these.
pub(crate) const LINK_PREFIX: &str = "link_";
pub(crate) const TC_LINK_SUFFIX: &str = ":tc";
pub(crate) const MAP_PREFIX: &str = "slb_";

pub(crate) fn link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_path(pin_dir, &format!("{LINK_PREFIX}{iface}"))
}

pub(crate) fn tc_link_pin_path(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_path(pin_dir, &format!("{LINK_PREFIX}{iface}{TC_LINK_SUFFIX}"))
}
