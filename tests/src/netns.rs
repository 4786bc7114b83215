//! Network namespaces as RAII test hosts: create, run commands or closures inside, delete on drop
//! (killing whatever the test started there).

use std::{
    fs::File,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use nix::sched::{CloneFlags, setns};

use crate::{
    cmd::{quote, sh},
    poll::{Seen, wait_for},
};

/// A unique prefix for one topology, so runs never collide with each other or leftovers.
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("slb{}{}{}", tag, std::process::id() % 10_000, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A named network namespace (`ip netns`), deleted with everything started in it on drop.
pub struct Netns {
    pub name: String,
    children: Vec<Child>,
}

impl Netns {
    pub fn new(name: &str) -> Result<Self> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("namespace tests need root (they create network namespaces and attach XDP)");
        }
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        sh(&format!("ip netns add {name}"))?;
        let ns = Netns { name: name.to_string(), children: Vec::new() };
        ns.exec("ip link set lo up")?;
        Ok(ns)
    }

    /// Runs a shell command inside the namespace and returns its stdout.
    pub fn exec(&self, cmd: &str) -> Result<String> {
        sh(&format!("nsenter --net=/var/run/netns/{} sh -c {}", self.name, quote(cmd)))
    }

    /// Waits until something in the namespace listens on TCP `port`.
    pub fn wait_listening(&self, port: u16) -> Result<()> {
        wait_for(&format!("a TCP listener on port {port} in {}", self.name), Duration::from_secs(5), || {
            let listening = self.exec("ss -Hltn")?;
            let found = listening.lines().any(|l| {
                l.split_whitespace().nth(3).is_some_and(|local| local.rsplit(':').next() == Some(&port.to_string()))
            });
            Ok(Seen::when(found, format!("listeners: {:?}", listening.lines().collect::<Vec<_>>())))
        })
    }

    /// Starts a long-running program inside the namespace; it is killed when the namespace drops.
    pub fn spawn(&mut self, program: &str, args: &[&str]) -> Result<u32> {
        let child = self.command(program, args).stdout(Stdio::null()).spawn()?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// A command that runs `program` inside the namespace; the caller owns the child. Only the
    /// network namespace is entered (not `ip netns exec`'s private mount namespace), so programs
    /// share the host's bpffs, as an agent in a host-network container does.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/var/run/netns/{}", self.name)).arg(program).args(args);
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live here.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = format!("/var/run/netns/{}", self.name);
        let handle = thread::spawn(move || -> Result<T> {
            let file = File::open(&path).with_context(|| format!("opening {path}"))?;
            setns(file, CloneFlags::CLONE_NEWNET).context("setns")?;
            Ok(f())
        });
        handle.join().map_err(|_| anyhow::anyhow!("thread in {} panicked", self.name))?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = sh(&format!("ip netns pids {} | xargs -r kill -9", self.name));
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Path of a binary built in the same target directory as the running executable.
pub fn sibling_binary(name: &str) -> Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(2) {
        let candidate = dir.join(name);
        if candidate.exists() {
            return Ok(candidate);
        }
    }
    bail!("{name} not found beside {}; build it first (cargo xtask test does)", exe.display())
}
