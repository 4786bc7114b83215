//! What the last takeover of each overlay left, and whether the next apply can trust it: a
//! takeover walks Docker's namespaces and rebuilds the veth, so it reruns only when its inputs
//! changed, the last run failed, or a cheap check shows that what it made is gone (Docker
//! deleted or recreated a namespace, someone removed the veth). Otherwise only the neighbour
//! entries of tasks that came or went are written. An overlay no namespace had is looked for
//! again only once Docker's namespace files differ from those it looked through.

use std::{collections::BTreeSet, fmt, net::Ipv4Addr, os::unix::fs::MetadataExt, path::PathBuf};

use crate::model::Subnet;

/// What a takeover is made from, as the cluster gives it (the MAC follows from the address).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inputs {
    pub endpoint: Ipv4Addr,
    pub subnet: Subnet,
    pub mtu: u16,
}

/// Identity of a namespace file: a bind-mounted namespace reports its nsfs inode, so a
/// namespace recreated under the same name differs, and so does an unmounted file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// `None` if the file cannot be read (it was removed).
    pub fn of(path: &std::path::Path) -> Option<FileId> {
        std::fs::metadata(path).ok().map(|m| FileId { dev: m.dev(), ino: m.ino() })
    }
}

/// A namespace file as a takeover found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Netns {
    pub path: PathBuf,
    pub id: Option<FileId>,
}

impl Netns {
    pub fn at(path: PathBuf) -> Netns {
        let id = FileId::of(&path);
        Netns { path, id }
    }
}

/// What a takeover that succeeded made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ensured {
    pub inputs: Inputs,
    /// Docker's overlay namespace (the veth's peer is in it).
    pub overlay: Netns,
    /// The namespace of Docker's endpoint interface it parked (none held the address).
    pub holder: Option<Netns>,
    /// `slb-<vni>` in the host namespace.
    pub ifindex: u32,
    pub tasks: BTreeSet<Ipv4Addr>,
}

/// Docker's namespace files, by name, as listed before a takeover looked through them.
pub type Listing = Vec<(PathBuf, Option<FileId>)>;

/// How the last takeover of one overlay ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Last {
    Ensured(Ensured),
    /// It failed with these inputs; the next apply retries in full.
    Failed(Inputs),
    /// No Docker namespace had the overlay: looking again is worth it only once the namespaces
    /// differ from `seen`.
    Missing {
        inputs: Inputs,
        seen: Listing,
    },
}

impl Last {
    pub fn inputs(&self) -> &Inputs {
        match self {
            Last::Ensured(e) => &e.inputs,
            Last::Failed(i) | Last::Missing { inputs: i, .. } => i,
        }
    }
}

/// The host side of the veth as it is now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub up: bool,
}

/// The cheap checks of what the last takeover made or found, read just before deciding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `slb-<vni>`, if there is a link by that name.
    pub link: Option<LinkState>,
    pub overlay: Option<FileId>,
    pub holder: Option<FileId>,
    /// Docker's namespaces now (read after a [`Last::Missing`] only).
    pub listing: Listing,
}

/// Why a takeover runs in full.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    New,
    LastFailed,
    NamespacesChanged,
    InputsChanged,
    LinkGone,
    LinkChanged,
    OverlayReplaced,
    HolderReplaced,
}

impl fmt::Display for Why {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Why::New => "first takeover",
            Why::LastFailed => "the last one failed",
            Why::NamespacesChanged => "Docker's namespaces changed since no overlay was found",
            Why::InputsChanged => "the endpoint, subnet or MTU changed",
            Why::LinkGone => "the veth is gone",
            Why::LinkChanged => "the veth changed (ifindex, MAC or down)",
            Why::OverlayReplaced => "Docker's overlay namespace was removed or recreated",
            Why::HolderReplaced => "Docker's endpoint namespace was removed or recreated",
        })
    }
}

/// Neighbour entries to write on a takeover that still holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NeighDiff {
    pub add: Vec<Ipv4Addr>,
    pub remove: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Full(Why),
    /// What the last takeover made holds: only `diff` to write.
    Hit {
        prev: Ensured,
        diff: NeighDiff,
    },
    /// Still no Docker namespace that could have the overlay: the last answer stands.
    StillMissing(Listing),
}

/// What to do for one overlay, given how its last takeover ended and what is there now.
pub fn decide(last: Option<Last>, inputs: &Inputs, observed: &Observed, tasks: &BTreeSet<Ipv4Addr>) -> Action {
    let prev = match last {
        None => return Action::Full(Why::New),
        Some(Last::Failed(_)) => return Action::Full(Why::LastFailed),
        Some(Last::Missing { inputs: last, seen }) => {
            return match (last == *inputs, seen == observed.listing) {
                (false, _) => Action::Full(Why::InputsChanged),
                (true, false) => Action::Full(Why::NamespacesChanged),
                (true, true) => Action::StillMissing(seen),
            };
        }
        Some(Last::Ensured(prev)) => prev,
    };
    if prev.inputs != *inputs {
        return Action::Full(Why::InputsChanged);
    }
    let want = LinkState { ifindex: prev.ifindex, mac: super::nl::docker_mac(inputs.endpoint), up: true };
    match observed.link {
        None => return Action::Full(Why::LinkGone),
        Some(link) if link != want => return Action::Full(Why::LinkChanged),
        Some(_) => {}
    }
    if prev.overlay.id.is_none() || observed.overlay != prev.overlay.id {
        return Action::Full(Why::OverlayReplaced);
    }
    if prev.holder.as_ref().is_some_and(|h| h.id.is_none() || observed.holder != h.id) {
        return Action::Full(Why::HolderReplaced);
    }
    let diff = NeighDiff {
        add: tasks.difference(&prev.tasks).copied().collect(),
        remove: prev.tasks.difference(tasks).copied().collect(),
    };
    Action::Hit { prev, diff }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> Inputs {
        Inputs {
            endpoint: Ipv4Addr::new(10, 0, 1, 2),
            subnet: Subnet { addr: Ipv4Addr::new(10, 0, 1, 0), prefix: 24 },
            mtu: 1450,
        }
    }

    const OVERLAY: FileId = FileId { dev: 4, ino: 100 };
    const HOLDER: FileId = FileId { dev: 4, ino: 200 };

    fn tasks(last: &[u8]) -> BTreeSet<Ipv4Addr> {
        last.iter().map(|&b| Ipv4Addr::new(10, 0, 1, b)).collect()
    }

    fn ensured_state() -> Ensured {
        Ensured {
            inputs: inputs(),
            overlay: Netns { path: "/var/run/docker/netns/1-abc".into(), id: Some(OVERLAY) },
            holder: Some(Netns { path: "/var/run/docker/netns/lb_abc".into(), id: Some(HOLDER) }),
            ifindex: 7,
            tasks: tasks(&[10, 11]),
        }
    }

    fn ensured() -> Last {
        Last::Ensured(ensured_state())
    }

    /// The neighbour diff of a hit, `None` for a full run.
    fn hit(action: Action) -> Option<NeighDiff> {
        match action {
            Action::Hit { diff, .. } => Some(diff),
            Action::Full(_) | Action::StillMissing(_) => None,
        }
    }

    fn intact() -> Observed {
        Observed {
            link: Some(LinkState { ifindex: 7, mac: [0x02, 0x42, 10, 0, 1, 2], up: true }),
            overlay: Some(OVERLAY),
            holder: Some(HOLDER),
            listing: Vec::new(),
        }
    }

    #[test]
    fn unchanged_and_intact_is_a_hit_with_nothing_to_write() {
        let action = decide(Some(ensured()), &inputs(), &intact(), &tasks(&[10, 11]));
        assert_eq!(action, Action::Hit { prev: ensured_state(), diff: NeighDiff::default() });
    }

    #[test]
    fn a_hit_writes_only_the_neighbours_that_changed() {
        let diff = hit(decide(Some(ensured()), &inputs(), &intact(), &tasks(&[11, 12, 13])));
        let add = tasks(&[12, 13]).into_iter().collect();
        assert_eq!(diff, Some(NeighDiff { add, remove: vec![Ipv4Addr::new(10, 0, 1, 10)] }));
    }

    #[test]
    fn no_or_failed_last_run_is_a_full_run() {
        assert_eq!(decide(None, &inputs(), &Observed::default(), &tasks(&[])), Action::Full(Why::New));
        let failed = Last::Failed(inputs());
        assert_eq!(decide(Some(failed), &inputs(), &intact(), &tasks(&[10, 11])), Action::Full(Why::LastFailed));
    }

    #[test]
    fn changed_inputs_are_a_full_run() {
        let mut other = inputs();
        other.mtu = 1400;
        assert_eq!(decide(Some(ensured()), &other, &intact(), &tasks(&[10, 11])), Action::Full(Why::InputsChanged));
        let mut other = inputs();
        other.endpoint = Ipv4Addr::new(10, 0, 1, 3);
        assert_eq!(decide(Some(ensured()), &other, &intact(), &tasks(&[10, 11])), Action::Full(Why::InputsChanged));
    }

    #[test]
    fn a_failed_check_is_a_full_run() {
        let check = |observed: Observed| decide(Some(ensured()), &inputs(), &observed, &tasks(&[10, 11]));
        assert_eq!(check(Observed { link: None, ..intact() }), Action::Full(Why::LinkGone));
        let link = intact().link.unwrap();
        for changed in [
            LinkState { ifindex: 8, ..link },
            LinkState { mac: [0x02, 0x42, 10, 0, 1, 9], ..link },
            LinkState { up: false, ..link },
        ] {
            assert_eq!(check(Observed { link: Some(changed), ..intact() }), Action::Full(Why::LinkChanged));
        }
        let recreated = Some(FileId { dev: 4, ino: 101 });
        assert_eq!(check(Observed { overlay: recreated, ..intact() }), Action::Full(Why::OverlayReplaced));
        assert_eq!(check(Observed { overlay: None, ..intact() }), Action::Full(Why::OverlayReplaced));
        assert_eq!(check(Observed { holder: recreated, ..intact() }), Action::Full(Why::HolderReplaced));
    }

    #[test]
    fn a_missing_overlay_is_looked_for_again_only_when_the_namespaces_change() {
        let seen: Listing = vec![("/var/run/docker/netns/ingress_sbox".into(), Some(HOLDER))];
        let missing = || Some(Last::Missing { inputs: inputs(), seen: seen.clone() });
        let now = |listing: Listing| Observed { listing, ..Observed::default() };
        let same = decide(missing(), &inputs(), &now(seen.clone()), &tasks(&[10]));
        assert_eq!(same, Action::StillMissing(seen.clone()));
        let mut more = seen.clone();
        more.push(("/var/run/docker/netns/1-abc".into(), Some(OVERLAY)));
        assert_eq!(decide(missing(), &inputs(), &now(more), &tasks(&[10])), Action::Full(Why::NamespacesChanged));
        let recreated = vec![("/var/run/docker/netns/ingress_sbox".into(), Some(FileId { dev: 4, ino: 300 }))];
        assert_eq!(decide(missing(), &inputs(), &now(recreated), &tasks(&[10])), Action::Full(Why::NamespacesChanged));
        let other = Inputs { mtu: 1400, ..inputs() };
        assert_eq!(decide(missing(), &other, &now(seen.clone()), &tasks(&[10])), Action::Full(Why::InputsChanged));
    }

    #[test]
    fn without_a_holder_its_namespace_is_not_checked() {
        let last = Last::Ensured(Ensured { holder: None, ..ensured_state() });
        let observed = Observed { holder: None, ..intact() };
        let action = decide(Some(last), &inputs(), &observed, &tasks(&[10, 11]));
        assert_eq!(hit(action), Some(NeighDiff::default()));
    }
}
