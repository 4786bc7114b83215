//! `[[member]]`: the network namespaces of this node whose sockets are balanced, each with the
//! overlay networks whose VIPs it reaches and whether it reaches the node's published ports.

use std::{collections::HashSet, path::PathBuf};

use toml::{Spanned, Value};

use super::{ConfigError, RawMember, Validator};
use crate::model::{Member, Network};

impl Validator<'_> {
    pub(super) fn members(&self, raw: &[Spanned<RawMember>], networks: &[Network]) -> Result<Vec<Member>, ConfigError> {
        let mut members: Vec<Member> = Vec::with_capacity(raw.len());
        let (mut names, mut paths) = (HashSet::new(), HashSet::new());
        for spanned in raw {
            let member = self.member(spanned, networks)?;
            let r = spanned.get_ref();
            if !names.insert(member.name.clone()) {
                let at = r.name.as_ref().map_or(spanned.span(), Spanned::span);
                return Err(self.err(at, "", "name", format!("duplicate member name {:?}", member.name)));
            }
            if !paths.insert(member.netns.clone()) {
                let at = r.netns.as_ref().map_or(spanned.span(), Spanned::span);
                let ctx = format!("member {:?}: ", member.name);
                return Err(self.err(at, &ctx, "netns", format!("{} is another member's", member.netns.display())));
            }
            members.push(member);
        }
        Ok(members)
    }

    fn member(&self, spanned: &Spanned<RawMember>, networks: &[Network]) -> Result<Member, ConfigError> {
        let raw = spanned.get_ref();
        let name = self.name(self.required(&raw.name, spanned.span(), "member: ", "name")?, "member: ")?;
        let ctx = format!("member {name:?}: ");
        let netns_v = self.required(&raw.netns, spanned.span(), &ctx, "netns")?;
        let netns = PathBuf::from(self.string(netns_v, &ctx, "netns")?);
        if !netns.is_absolute() {
            return Err(self.err(netns_v.span(), &ctx, "netns", "expected an absolute path (/run/netns/NAME)"));
        }
        let mut names = Vec::new();
        if let Some(v) = &raw.networks {
            let Value::Array(items) = v.get_ref() else {
                let found = v.get_ref().type_str();
                return Err(self.err(
                    v.span(),
                    &ctx,
                    "networks",
                    format!("expected an array of strings, found {found}"),
                ));
            };
            for item in items {
                let net = item.as_str().filter(|n| networks.iter().any(|k| k.name == *n)).ok_or_else(|| {
                    self.err(v.span(), &ctx, "networks", format!("{item} is not the name of a [[network]]"))
                })?;
                names.push(net.to_owned());
            }
        }
        let node = self.boolean(&raw.node, &ctx, "node")?;
        let host = self.boolean(&raw.host, &ctx, "host")?;
        if host && !node {
            let at = raw.host.as_ref().map_or(spanned.span(), Spanned::span);
            return Err(self.err(
                at,
                &ctx,
                "host",
                "the node's own namespace reaches its published ports: set node = true",
            ));
        }
        Ok(Member { netns, name, networks: names, node, host })
    }
}
