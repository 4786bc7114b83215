//! A cgroup v2 directory of the test's own, to attach the socket programs to (`swarmlb run
//! --cgroup`) so only the processes a test puts there are balanced, never the machine's: a
//! client run in it ([`TestCgroup::run_in`]), or the test process itself for a while
//! ([`InCgroup`], the benches' load generators). Its processes are killed and the directory
//! removed on drop.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    cmd::{quote, sh},
    netns::{Netns, unique_prefix},
};

/// Where a cgroup v2 hierarchy is mounted on a hybrid or a pure v2 machine.
const MOUNTS: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

pub struct TestCgroup {
    pub path: PathBuf,
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

impl TestCgroup {
    pub fn new() -> Result<TestCgroup> {
        let Some(root) = MOUNTS.iter().map(Path::new).find(|p| is_cgroup2(p)) else {
            bail!("no cgroup v2 hierarchy is mounted at {MOUNTS:?}");
        };
        let path = root.join(unique_prefix("cg"));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TestCgroup { path })
    }

    pub fn path_str(&self) -> &str {
        self.path.to_str().unwrap_or_default()
    }

    /// Runs `program args` in this cgroup and in `ns`'s network namespace, to completion.
    pub fn run_in(&self, ns: &Netns, program: &Path, args: &[&str]) -> Result<Output> {
        let args: Vec<String> = args.iter().map(|a| quote(a)).collect();
        let script = format!(
            "echo $$ > {} && exec nsenter --net=/var/run/netns/{} {} {}",
            quote(&self.path.join("cgroup.procs").to_string_lossy()),
            ns.name,
            quote(&program.to_string_lossy()),
            args.join(" ")
        );
        std::process::Command::new("sh").args(["-c", &script]).output().context("running a client in the cgroup")
    }

    /// `bpftool cgroup show` of this cgroup: the programs attached to it.
    pub fn attached(&self) -> Result<String> {
        sh(&format!("bpftool cgroup show {}", quote(self.path_str())))
    }
}

/// The cgroup v2 directory this process is in (`/proc/self/cgroup`, the `0::` line), below the
/// hierarchy `cg` was made in (a `TestCgroup` is made directly below the hierarchy's root).
pub fn own_cgroup(cg: &TestCgroup) -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .with_context(|| format!("no cgroup v2 line in /proc/self/cgroup: {text:?}"))?;
    let root = cg.path.parent().context("the test cgroup has no parent")?;
    Ok(root.join(relative.trim_start_matches('/')))
}

fn move_process(to: &Path) -> Result<()> {
    let procs = to.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).with_context(|| format!("writing {}", procs.display()))
}

/// This whole process (every thread, and threads and children created meanwhile) inside the test
/// cgroup, where the socket programs act on its sockets, until `leave` or drop moves it back to
/// the cgroup it came from (or, failing that, the hierarchy's root). It borrows the `TestCgroup`,
/// so it is always gone before the cgroup's drop kills what is left in it.
pub struct InCgroup<'a> {
    cg: &'a TestCgroup,
    home: PathBuf,
    inside: bool,
}

impl<'a> InCgroup<'a> {
    pub fn enter(cg: &'a TestCgroup) -> Result<InCgroup<'a>> {
        let home = own_cgroup(cg)?;
        ensure!(home != cg.path, "already in the test cgroup");
        move_process(&cg.path)?;
        let mut guard = InCgroup { cg, home, inside: true };
        let now = own_cgroup(cg)?;
        if now != cg.path {
            guard.inside = false;
            bail!("moved into {} but /proc/self/cgroup shows {}", cg.path.display(), now.display());
        }
        Ok(guard)
    }

    fn move_out(&mut self) -> Result<()> {
        if !self.inside {
            return Ok(());
        }
        let root = self.cg.path.parent().context("the test cgroup has no parent")?.to_path_buf();
        let moved = move_process(&self.home).or_else(|e| {
            eprintln!("could not move back to {}: {e:#}; moving to {}", self.home.display(), root.display());
            move_process(&root)
        });
        moved?;
        let now = own_cgroup(self.cg)?;
        ensure!(now != self.cg.path, "still in the test cgroup after moving out");
        self.inside = false;
        Ok(())
    }

    pub fn leave(mut self) -> Result<()> {
        self.move_out()
    }
}

impl Drop for InCgroup<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.move_out() {
            eprintln!("leaving the test cgroup {}: {e:#}", self.cg.path.display());
        }
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = std::fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            if std::fs::remove_dir(&self.path).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        eprintln!("could not remove {}", self.path.display());
    }
}
