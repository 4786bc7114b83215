//! The swarmlb agent as a library: sources produce a [`model::Cluster`], the [`planner`] turns
//! it into a plan with stable ids and a diff, the [`datapath`] writer puts that into the pinned
//! maps; [`status`] reads the counters back. Data flows one way.

/// The XDP object built from `lb-ebpf`, embedded at build time; empty when the build skipped it.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb-ebpf.o"));

/// This binary was built without its datapath.
#[derive(Debug, thiserror::Error)]
#[error(
    "this swarmlb was built with SWARMLB_BUILD_EBPF=0 and carries no eBPF datapath; rebuild it without that setting"
)]
pub struct NoDatapath;

/// The embedded XDP object, or [`NoDatapath`] in a build made with `SWARMLB_BUILD_EBPF=0`.
pub fn ebpf_object() -> Result<&'static [u8], NoDatapath> {
    if EBPF_OBJECT.is_empty() { Err(NoDatapath) } else { Ok(EBPF_OBJECT) }
}

pub mod agent;
pub mod cli;
pub mod datapath;
pub mod flows;
pub mod health;
pub mod host;
pub mod limits;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod planner;
pub mod programmer;
pub mod source;
pub mod state;
pub mod status;
pub mod takeover;
pub mod trace;

#[cfg(test)]
mod tests {
    #[test]
    fn the_object_is_an_elf_file_or_its_absence_names_the_switch() {
        match super::ebpf_object() {
            Ok(object) => assert!(object.starts_with(b"\x7fELF")),
            Err(e) => assert!(e.to_string().contains("SWARMLB_BUILD_EBPF=0"), "{e}"),
        }
    }
}
