//! The command line: `swarmlb run`, `swarmlb status`, `swarmlb flows`, `swarmlb trace`,
//! `swarmlb unload`.

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand, ValueEnum};

pub use lb_common::maps::PIN_DIR as DEFAULT_PIN_DIR;

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
    /// Show whether the agent runs, the attached interfaces, services, backends, counters, table
    /// fill and problems of the datapath. Exits 3 when no agent is running.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// List the connections the datapath tracks: client, frontend, NAT source, backend, state.
    Flows {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only the connections of this service.
        #[arg(long)]
        service: Option<String>,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Print the datapath's decisions (frontend, new or existing connection, NAT, verdict and
    /// reason) about the packets of one client and/or one service as they happen. Tracing is
    /// off again when this ends (Ctrl-C, --duration, or a few seconds after it is killed).
    Trace {
        /// Only packets of this client (its IPv4 address).
        #[arg(long)]
        client: Option<std::net::Ipv4Addr>,
        /// Only packets of this service (a name in the agent's state).
        #[arg(long)]
        service: Option<String>,
        /// Stop after this many seconds.
        #[arg(long)]
        duration: Option<u64>,
        #[command(flatten)]
        dirs: Dirs,
    },
    /// Detach the datapath and remove its pinned maps and the state file.
    Unload {
        #[command(flatten)]
        dirs: Dirs,
    },
}

/// Where one datapath instance lives. Several agents (one per virtual node, in tests) can share
/// a machine, each with its own pin directory.
#[derive(Debug, Clone, clap::Args)]
pub struct Dirs {
    /// bpffs directory holding the pinned maps and links.
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// Directory of state.json [default: /run/<last component of --pin-dir>, so /run/swarmlb]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
}

impl Dirs {
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| default_state_dir(&self.pin_dir))
    }
}

/// `/run/<file name of the pin dir>`: `/run/swarmlb` for the default pin dir.
pub fn default_state_dir(pin_dir: &Path) -> PathBuf {
    let name = pin_dir.file_name().map_or_else(|| "swarmlb".into(), |n| n.to_os_string());
    Path::new("/run").join(name)
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Interface to load-balance on (repeat for several): the underlay interface(s). `auto`: the
    /// one holding this node's swarm address, else the one of the default route.
    #[arg(long = "iface", default_value = AUTO)]
    pub ifaces: Vec<String>,
    /// Where the desired state comes from.
    #[arg(long, value_enum, default_value_t = SourceKind::File)]
    pub source: SourceKind,
    /// TOML file describing the services (see config/example.toml); `--source file` only.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Which `[[swarm.node]]` of the config this agent is (required when the config lists
    /// swarm nodes); `--source file` only.
    #[arg(long)]
    pub node: Option<String>,
    /// The Docker Engine's unix socket (`unix:///path` or `/path`); `--source docker` only.
    #[arg(long, env = "DOCKER_HOST", default_value = "/var/run/docker.sock")]
    pub docker_host: String,
    /// Seconds between full reads of the Engine even without events (the safety net for missed
    /// events, and how soon a stalled Engine is noticed); `--source docker` only.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub resync_interval: u64,
    #[arg(long, value_enum, default_value_t = XdpModeArg::Auto)]
    pub xdp_mode: XdpModeArg,
    /// Connections the connection table holds (two entries each; 1,048,576 take ~300 MB). A
    /// different value on a later start recreates the table, carrying open connections over.
    #[arg(long, default_value_t = lb_common::maps::CONNTRACK_SIZE / 2,
        value_parser = clap::value_parser!(u32).range(1024..=MAX_CONNECTIONS))]
    pub max_connections: u32,
    /// Serve Prometheus `/metrics` and `/healthz` here: ADDR:PORT, `off`, or `auto` (this node's
    /// address, the swarm one if any, else the first of the first interface, port 9720).
    #[arg(long, default_value = AUTO)]
    pub metrics_addr: MetricsAddr,
    /// The cgroup v2 directory the socket programs (VIPs and published ports from the node and
    /// its containers) are attached to, for every process below it: `auto`, the root of the
    /// node's cgroup v2 hierarchy (mounted at /run/swarmlb/cgroup2 if none is), or a path.
    #[arg(long, default_value = AUTO)]
    pub cgroup: String,
    #[command(flatten)]
    pub dirs: Dirs,
}

/// Largest `--max-connections`: 32 Mi table entries, ~10 GB of kernel memory.
pub const MAX_CONNECTIONS: i64 = 1 << 24;

/// The value that asks the agent to choose (`--iface`, `--metrics-addr`).
pub const AUTO: &str = "auto";
/// The metrics port `--metrics-addr auto` uses.
pub const METRICS_PORT: u16 = 9720;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsAddr {
    Auto,
    Off,
    At(std::net::SocketAddr),
}

impl std::str::FromStr for MetricsAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            AUTO => Ok(MetricsAddr::Auto),
            "off" => Ok(MetricsAddr::Off),
            _ => s.parse().map(MetricsAddr::At).map_err(|e| format!("{s:?}: {e} (ADDR:PORT, auto or off)")),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SourceKind {
    /// A TOML file (`--config`), re-read on SIGHUP or when it changes.
    File,
    /// The local Docker Engine in swarm mode (`--docker-host`), followed through its events.
    Docker,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_dir_follows_the_pin_dir_unless_given() {
        let parse = |args: &[&str]| match Cli::try_parse_from(args).unwrap().command {
            Command::Status { dirs, .. }
            | Command::Flows { dirs, .. }
            | Command::Trace { dirs, .. }
            | Command::Unload { dirs } => dirs,
            Command::Run(run) => run.dirs,
        };
        let d = parse(&["swarmlb", "status"]);
        assert_eq!(
            (d.pin_dir.as_path(), d.state_dir()),
            (Path::new("/sys/fs/bpf/swarmlb"), PathBuf::from("/run/swarmlb"))
        );
        let d = parse(&["swarmlb", "unload", "--pin-dir", "/sys/fs/bpf/slb-node2"]);
        assert_eq!(d.state_dir(), PathBuf::from("/run/slb-node2"));
        let d = parse(&["swarmlb", "flows", "--service", "web", "--pin-dir", "/sys/fs/bpf/slb-node3"]);
        assert_eq!(d.state_dir(), PathBuf::from("/run/slb-node3"));
        let d = parse(&[
            "swarmlb",
            "run",
            "--iface",
            "eth0",
            "--config",
            "c.toml",
            "--node",
            "node-1",
            "--pin-dir",
            "/sys/fs/bpf/x",
            "--state-dir",
            "/tmp/s",
        ]);
        assert_eq!(d.state_dir(), PathBuf::from("/tmp/s"));
    }

    #[test]
    fn config_is_optional_on_the_command_line() {
        let run = |args: &[&str]| match Cli::try_parse_from(args).map(|c| c.command) {
            Ok(Command::Run(run)) => Ok(run),
            Ok(_) => unreachable!(),
            Err(e) => Err(e.kind()),
        };
        let r =
            run(&["swarmlb", "run", "--iface", "eth0", "--source", "docker", "--docker-host", "unix:///tmp/d.sock"])
                .unwrap();
        assert_eq!((r.source, r.config, r.docker_host.as_str()), (SourceKind::Docker, None, "unix:///tmp/d.sock"));
        // Parsing accepts the file source without --config; `run` refuses it (`agent::file_config`).
        assert_eq!(run(&["swarmlb", "run", "--iface", "eth0"]).unwrap().config, None);
        let r = run(&["swarmlb", "run", "--iface", "eth0", "--config", "c.toml"]).unwrap();
        assert_eq!(r.source, SourceKind::File);
    }
}
