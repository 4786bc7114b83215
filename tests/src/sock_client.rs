//! What `slb-testsrv client` prints, read back: one answer per line (the backend that answered
//! and what the socket reported as its peer), or an error line. The tests that need a client in
//! a cgroup or a container of its own (socket load balancing) run that binary there.

use std::collections::BTreeMap;

/// One answer: the backend's name and the peer address the client's socket reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    pub backend: String,
    pub peer: String,
}

/// The answers and the error lines of a client's output.
#[derive(Clone, Debug, Default)]
pub struct Output {
    pub answers: Vec<Answer>,
    pub errors: Vec<String>,
}

impl Output {
    pub fn parse(stdout: &str) -> Output {
        let mut out = Output::default();
        for line in stdout.lines() {
            match line.split_once(" peer=") {
                Some((backend, peer)) => out.answers.push(Answer { backend: backend.into(), peer: peer.into() }),
                None => out.errors.push(line.to_owned()),
            }
        }
        out
    }

    /// Answers per backend.
    pub fn spread(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for a in &self.answers {
            *counts.entry(a.backend.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Whether every answer's peer was `peer`.
    pub fn all_from(&self, peer: &str) -> bool {
        self.answers.iter().all(|a| a.peer == peer)
    }
}
