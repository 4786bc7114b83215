//! `cargo xtask`: the project's own commands, so a newcomer needs nothing but cargo.

mod commands;
mod image;
mod rootfs;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "swarmlb developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test swarmlb (idempotent).
    Setup,
    /// Build the eBPF object (BTF on) and the `swarmlb` binary that embeds it.
    Build,
    /// Build, load and attach the datapath on IFACE, program it from FILE, run until Ctrl-C.
    BuildAndLoad {
        /// Interface to attach to (repeat for several).
        #[arg(long = "iface", required = true)]
        ifaces: Vec<String>,
        /// Services file (TOML).
        #[arg(long, default_value = "lb-userspace/config/example.toml")]
        config: String,
    },
    /// Run every test: unit, packet (BPF_PROG_TEST_RUN) and namespace tests. Needs root.
    Test,
    /// Report ns per packet through BPF_PROG_TEST_RUN, as ratios to a no-op program, then
    /// end-to-end TCP rates through plain routing, iptables DNAT and swarmlb in namespaces.
    Bench,
    /// Build a client, a load-balancer node and three backends in namespaces, run swarmlb,
    /// send traffic and show where it went. No swarm needed.
    Demo {
        /// Leave the topology and agent running until Ctrl-C.
        #[arg(long)]
        keep: bool,
    },
    /// Build the container images swarmlb:latest and slb-testsrv:latest (FROM scratch, from the
    /// release binaries and the libraries they link) and print their ids.
    Image,
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(setup::Verbosity::Report),
        Command::Build => commands::build(),
        Command::BuildAndLoad { ifaces, config } => commands::build_and_load(&ifaces, &config),
        Command::Test => commands::test(),
        Command::Bench => commands::bench(),
        Command::Demo { keep } => commands::demo(keep),
        Command::Image => image::run(),
    }
}
