//! A backend frozen for the length of a test step, resumed however the test ends.

use super::Cluster;

/// A backend stopped by [`Cluster::freeze`]; dropping it (or a panic) resumes the backend.
pub struct Frozen<'a> {
    cluster: &'a Cluster,
    pid: i32,
}

impl Cluster {
    /// Freezes backend `pid` (SIGSTOP) until the returned guard is dropped.
    pub fn freeze(&self, pid: i32) -> Frozen<'_> {
        self.sigstop(pid);
        Frozen { cluster: self, pid }
    }
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        self.cluster.sigcont(self.pid);
    }
}
