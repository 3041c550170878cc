//! The installed PostgreSQL server programs and the OS user they run as.

use std::ffi::OsStr;
use std::os::unix::fs::chown;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::binaries::{default_search_path, find_server_bindir, INSTALL_HINT};

/// The bootstrap superuser, and the OS user the server runs as when we run as root.
pub const SUPERUSER: &str = "postgres";

/// Where the server programs are, and whom they run as.
pub struct Installation {
    bindir: PathBuf,
    /// `Some` when we run as root: PostgreSQL refuses to run as root, so initdb and the
    /// server run as the `postgres` OS user (which the server package creates).
    server_user: Option<ServerUser>,
}

struct ServerUser {
    uid: u32,
    gid: u32,
}

impl Installation {
    /// Finds the server programs (and, as root, the `postgres` OS user); the error says how
    /// to install what is missing.
    pub fn find() -> Result<Installation, String> {
        let bindir = find_server_bindir(&default_search_path())?;
        let server_user = if nix::unistd::geteuid().is_root() {
            let user = nix::unistd::User::from_name(SUPERUSER)
                .ok()
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "running as root, so PostgreSQL must run as the `{SUPERUSER}` OS user, \
                         which does not exist: install the server package with {INSTALL_HINT}, \
                         which creates it, or run as a normal user"
                    )
                })?;
            Some(ServerUser {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            })
        } else {
            None
        };
        Ok(Installation {
            bindir,
            server_user,
        })
    }

    /// The directory holding `initdb`, `pg_ctl` and `postgres`.
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Whether the server runs as another OS user than ours (we are root).
    pub fn runs_as_other_user(&self) -> bool {
        self.server_user.is_some()
    }

    /// A command for one of the server programs (`postgres`, `initdb`, `pg_ctl`).
    pub fn command(&self, program: &str) -> Command {
        self.command_as_server_user(self.bindir.join(program))
    }

    /// Makes `path` (created by us) the server user's, so the server can read it and write
    /// into it.
    pub fn give_to_server_user(&self, path: &Path) -> Result<(), String> {
        match &self.server_user {
            Some(user) => chown(path, Some(user.uid), Some(user.gid))
                .map_err(|e| format!("giving {} to the {SUPERUSER} user: {e}", path.display())),
            None => Ok(()),
        }
    }

    /// `initdb` tuned for speed: no fsync (`-N`), trust authentication (the caller rewrites
    /// pg_hba.conf), the C locale (no locale data to load).
    pub fn init_data_dir(&self, data_dir: &Path) -> Result<(), String> {
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
            .map_err(|e| format!("running initdb: {e}"))?;
        if !output.status.success() {
            return Err(format!("initdb failed: {}", output_text(&output)));
        }
        Ok(())
    }

    /// `program` run as the server user, with the `PG*` environment removed so a
    /// developer's `PGDATA` or `PGPORT` cannot point it at another cluster.
    pub fn command_as_server_user(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("PG") {
                command.env_remove(name);
            }
        }
        if let Some(user) = &self.server_user {
            // "/" because the server user may not be allowed into our directory.
            command.uid(user.uid).gid(user.gid).current_dir("/");
        }
        command
    }
}

fn output_text(output: &Output) -> String {
    format!(
        "{}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
