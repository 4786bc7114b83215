//! A cgroup v2 directory of the test's own, to attach the socket programs to (`swarmlb run
//! --cgroup`) so only the processes a test puts there are balanced, never the machine's. Its
//! processes are killed and the directory removed on drop.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use anyhow::{Context, Result, bail};

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
