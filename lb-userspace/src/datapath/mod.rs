//! The datapath side of the agent: loading and attaching the XDP program with its maps pinned
//! ([`pins`]), writing a plan's diff into the maps in a safe order ([`writer`]), and reading the
//! counters back ([`reader`]).

use std::path::{Path, PathBuf};

pub mod batch;
pub mod pins;
pub mod reader;
pub mod tables;
pub mod writer;

/// Every map of the datapath, with the key and value sizes `lb-common` defines: the agent checks
/// a pinned map against these before reusing it.
pub const MAPS: &[(&str, usize, usize)] = {
    use lb_common::{maps::*, *};
    use std::mem::size_of;
    &[
        (SETTINGS, 4, size_of::<Settings>()),
        (FE_PORTS, 4, 1),
        (FRONTENDS, size_of::<FrontendKey>(), size_of::<Frontend>()),
        (LOCAL_ADDRS, 4, 4),
        (SERVICES, 4, size_of::<Service>()),
        (BACKENDS, 4, size_of::<Backend>()),
        (MAGLEV, 4, 4),
        (CONNTRACK, size_of::<FlowKey>(), size_of::<Flow>()),
        (NEW_FLOWS, size_of::<FlowKey>(), size_of::<Flow>()),
        (SNAT_ADDRS, 4, 4),
        (CT_EVENTS, 4, 8),
        (SVC_STATS, 4, size_of::<Traffic>()),
        (BE_STATS, 4, size_of::<Traffic>()),
        (REASONS, 4, 8),
        (TX_PORTS, 4, 8),
        (OVERLAYS, 4, 4),
    ]
};

/// Where a map (or link) named `name` is pinned: `<pin dir>/<name>`.
pub(crate) fn pin_path(pin_dir: &Path, name: &str) -> PathBuf {
    pin_dir.join(name)
}

/// Pinned links are `link_<ifname>` (XDP) and `link_<ifname>:tc` (TC ingress; no interface name
/// holds a `:`); pinned maps are `slb_<what>`. Nothing else in a pin directory is ours, so
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
