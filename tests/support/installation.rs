//! The installed PostgreSQL server programs and the OS user they run as.

use std::ffi::OsStr;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::binaries::{default_search_path, find_server_bindir};

/// The bootstrap superuser, and the OS user the server runs as when tests run as root.
pub const SUPERUSER: &str = "postgres";

pub struct Installation {
    bindir: PathBuf,
    /// `Some` when the tests run as root: PostgreSQL refuses to run as root, so initdb and
    /// the server run as the `postgres` OS user (which the server package creates).
    server_user: Option<ServerUser>,
}

struct ServerUser {
    uid: u32,
    gid: u32,
}

impl Installation {
    /// Finds the server programs; panics with installation instructions when there are none.
    pub fn find() -> Installation {
        let bindir = find_server_bindir(&default_search_path()).unwrap_or_else(|m| panic!("{m}"));
        let server_user = nix::unistd::geteuid().is_root().then(|| {
            let user = nix::unistd::User::from_name(SUPERUSER)
                .ok()
                .flatten()
                .unwrap_or_else(|| {
                    panic!(
                        "the tests run as root, so the test PostgreSQL must run as the \
                         `postgres` OS user, which does not exist: install the server package \
                         (`bash scripts/install-postgres.sh`), which creates it, or run the \
                         tests as a normal user"
                    )
                });
            ServerUser {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }
        });
        Installation {
            bindir,
            server_user,
        }
    }

    /// A command for one of the server programs (`postgres`, `initdb`, `pg_ctl`).
    pub fn command(&self, program: &str) -> Command {
        self.command_as_server_user(self.bindir.join(program))
    }

    /// Makes `path` (created by the test process) the server user's, so the server can read
    /// it and the guardian can delete it.
    pub fn give_to_server_user(&self, path: &Path) {
        if let Some(user) = &self.server_user {
            chown(path, Some(user.uid), Some(user.gid))
                .unwrap_or_else(|e| panic!("giving {} to the postgres user: {e}", path.display()));
        }
    }

    /// `initdb` tuned for speed: no fsync (`-N`), trust authentication (the caller rewrites
    /// pg_hba.conf), the C locale (no locale data to load).
    pub fn init_data_dir(&self, data_dir: &Path) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(data_dir)
            .args([
                "-U",
                SUPERUSER,
                "-A",
                "trust",
                "-N",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("running initdb");
        if !output.status.success() {
            panic!("initdb failed: {}", output_text(&output));
        }
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
        self.command_as_server_user("sh")
            .arg("-c")
            .arg(GUARDIAN_SCRIPT)
            .arg(self.bindir.join("pg_ctl"))
            .arg(data_dir)
            .arg(root)
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting the cleanup guardian for a test cluster")
    }

    /// `program` run as the server user, with the `PG*` environment removed so a
    /// developer's `PGDATA` or `PGPORT` cannot point it at another cluster.
    fn command_as_server_user(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        if let Some(user) = &self.server_user {
            // "/" because the server user may not be allowed into the test's directory.
            command.uid(user.uid).gid(user.gid).current_dir("/");
        }
        command
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

fn output_text(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
