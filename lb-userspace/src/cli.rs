//! The command line: `swarmlb run`, `swarmlb status`, `swarmlb unload`.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

pub const DEFAULT_STATE_DIR: &str = "/run/swarmlb";

#[derive(Debug, Parser)]
#[command(name = "swarmlb", version, about = "XDP ingress load balancer for Docker Swarm")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load and attach the datapath, apply the config, and keep it applied (reload on change
    /// or SIGHUP). Exiting leaves the datapath serving.
    Run(RunArgs),
    /// Show services, backends, counters and the connection count of the running datapath.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
    /// Detach the datapath and remove its pinned maps and the state file.
    Unload {
        #[arg(long, default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to load-balance on (repeat for several).
    #[arg(long = "iface", required = true)]
    pub ifaces: Vec<String>,
    /// TOML file describing the services (see config/example.toml).
    #[arg(long)]
    pub config: PathBuf,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    #[arg(long, default_value = DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum XdpModeArg {
    /// Native if the driver supports it, generic otherwise (the kernel decides).
    Auto,
    /// Driver (native) XDP; fails if the driver lacks it.
    Native,
    /// Generic (skb) XDP.
    Skb,
}

impl From<XdpModeArg> for aya::programs::XdpMode {
    fn from(mode: XdpModeArg) -> Self {
        match mode {
            XdpModeArg::Auto => aya::programs::XdpMode::Default,
            XdpModeArg::Native => aya::programs::XdpMode::Driver,
            XdpModeArg::Skb => aya::programs::XdpMode::Skb,
        }
    }
}
