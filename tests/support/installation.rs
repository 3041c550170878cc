//! The installed PostgreSQL server programs (`forkpool::devcluster::installation`), found or
//! the test fails, and the guardian that cleans up after a test process that died.

use std::ops::Deref;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use forkpool::devcluster::installation;
pub use forkpool::devcluster::installation::SUPERUSER;

/// The library's installation, whose failures fail the test. Derefs to it, so the
/// library's postmaster takes it as it is.
pub struct Installation {
    inner: installation::Installation,
}

impl Installation {
    /// Finds the server programs; panics with installation instructions when there are none.
    pub fn find() -> Installation {
        let inner = installation::Installation::find().unwrap_or_else(|m| panic!("{m}"));
        Installation { inner }
    }

    /// A command for one of the server programs (`postgres`, `initdb`, `pg_ctl`).
    pub fn command(&self, program: &str) -> Command {
        self.inner.command(program)
    }

    /// Makes `path` (created by the test process) the server user's, so the server can read
    /// it and the guardian can delete it.
    pub fn give_to_server_user(&self, path: &Path) {
        self.inner
            .give_to_server_user(path)
            .unwrap_or_else(|m| panic!("{m}"));
    }

    /// `initdb` tuned for speed (see the library's `init_data_dir`).
    pub fn init_data_dir(&self, data_dir: &Path) {
        self.inner
            .init_data_dir(data_dir)
            .unwrap_or_else(|m| panic!("{m}"));
    }

    /// Starts the guardian of a cluster: a shell that outlives the test process if that one
    /// dies without cleaning up (SIGKILL, a cancelled CI job, Ctrl-C).
    ///
    /// It blocks reading its stdin, a pipe whose only writer is the test process (Rust opens
    /// pipes close-on-exec, so the server does not inherit it). A clean shutdown writes
    /// [`GUARDIAN_DISMISSED`]; end of file means the test process is gone, and the guardian
    /// stops the server and removes the directory. Its own process group and ignored signals
    /// keep a terminal's Ctrl-C from killing it before it has done that.
    pub fn spawn_guardian(&self, data_dir: &Path, root: &Path) -> Child {
        self.inner
            .command_as_server_user("sh")
            .arg("-c")
            .arg(GUARDIAN_SCRIPT)
            .arg(self.inner.bindir().join("pg_ctl"))
            .arg(data_dir)
            .arg(root)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cleanup guardian for a test cluster")
    }
}

impl Deref for Installation {
    type Target = installation::Installation;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

/// `$0` is pg_ctl, `$1` the data directory, `$2` the cluster's temporary directory.
const GUARDIAN_SCRIPT: &str = r#"trap '' INT TERM HUP QUIT
read -r word
[ "$word" = dismissed ] && exit 0
"$0" -D "$1" -m immediate -w stop
rm -rf "$2""#;

/// What the test process writes to the guardian when it has cleaned up itself.
pub const GUARDIAN_DISMISSED: &str = "dismissed\n";
