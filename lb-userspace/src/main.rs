//! The `swarmlb` binary: parses the command line and dispatches.

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use swarmlb::{
    agent,
    cli::{Cli, Command},
    datapath, flows, health, state, status, takeover, trace,
};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line with the whole cause chain, e.g. `config.toml:12: service "web" ...`.
            eprintln!("swarmlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(agent::run(args))
        }
        Command::Status { json, dirs } => {
            let report = status::collect(&dirs.pin_dir, &dirs.state_dir())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", status::table(&report));
            }
            if report.agent.state != health::Liveness::Running {
                // As `systemctl status` does for a unit that is not active.
                std::process::exit(status::EXIT_AGENT_NOT_RUNNING);
            }
            Ok(())
        }
        Command::Flows { json, service, dirs } => {
            let flows = flows::collect(&dirs.pin_dir, &dirs.state_dir(), service.as_deref())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&flows)?);
            } else {
                print!("{}", flows::table(&flows));
            }
            Ok(())
        }
        Command::Trace { client, service, duration, dirs } => {
            let service_id = match &service {
                Some(name) => trace::service_id(&dirs.state_dir(), name)?,
                None => 0,
            };
            let names = trace::Names::from_state(&dirs.state_dir())?;
            let filter = trace::Filter { client, service_id };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(trace::run(&dirs.pin_dir, &names, filter, duration.map(std::time::Duration::from_secs)))
        }
        Command::Unload { dirs } => {
            // An agent of the Docker source attached to the overlay endpoints it took over
            // (`link_slb-<vni>`); only then are Docker's endpoints given back, so unloading a
            // file-source datapath never touches Docker's namespaces.
            let took_over = std::fs::read_dir(&dirs.pin_dir).is_ok_and(|d| {
                d.filter_map(|e| e.ok())
                    .any(|e| e.file_name().to_string_lossy().starts_with(&format!("link_{}", takeover::IFACE_PREFIX)))
            });
            datapath::pins::unload(&dirs.pin_dir)?;
            if took_over {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(takeover::release_all())?;
            }
            state::remove(&dirs.state_dir())
        }
    }
}
