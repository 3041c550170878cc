//! Finding the PostgreSQL server programs (`initdb`, `pg_ctl`, `postgres`).
//!
//! Client packages often ship `pg_config` and `psql` without the server, so a directory only
//! counts when it holds all three server programs.

/// Names the one directory to look in, instead of the search below: for an installation the
/// search does not find, and for tests that simulate a machine without the server.
pub const BINDIR_VARIABLE: &str = "FORKPOOL_PG_BINDIR";

/// What `forkpool dev --install` and the error below point to: the Debian/Ubuntu package
/// that holds the server programs, installed under `/usr/lib/postgresql/<version>/bin`.
pub const INSTALL_HINT: &str =
    "`bash scripts/install-postgres.sh` (or `apt-get install postgresql`; \
`forkpool dev --install` runs the same steps)";

use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs a test cluster needs; a directory lacking any of them is skipped.
const SERVER_PROGRAMS: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

/// Where to look, in order: `pg_config --bindir` (the installation the developer chose),
/// each `PATH` entry, then Debian's `/usr/lib/postgresql/<version>/bin`, newest first. Only
/// `$FORKPOOL_PG_BINDIR` when that is set.
pub fn default_search_path() -> Vec<PathBuf> {
    if let Some(dir) = std::env::var_os(BINDIR_VARIABLE) {
        return vec![PathBuf::from(dir)];
    }
    let mut dirs = Vec::new();
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        if output.status.success() {
            let dir = String::from_utf8_lossy(&output.stdout).trim().to_owned();
            if !dir.is_empty() {
                dirs.push(PathBuf::from(dir));
            }
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.extend(debian_bindirs(Path::new("/usr/lib/postgresql")));
    dirs
}

/// The first directory of `search_path` holding every server program.
///
/// The error says where it looked and how to install the server, because "initdb not found"
/// alone sends people looking for the wrong package.
pub fn find_server_bindir(search_path: &[PathBuf]) -> Result<PathBuf, String> {
    search_path
        .iter()
        .find(|dir| SERVER_PROGRAMS.iter().all(|p| is_executable(&dir.join(p))))
        .cloned()
        .ok_or_else(|| {
            let searched: Vec<String> = search_path
                .iter()
                .map(|d| d.display().to_string())
                .collect();
            format!(
                "the PostgreSQL server programs ({}) were not found; searched: [{}]. \
                 `forkpool dev` and the tests start a private PostgreSQL server of their own: \
                 install the programs with {INSTALL_HINT}, or put the directory holding \
                 `initdb` on PATH or in ${BINDIR_VARIABLE}",
                SERVER_PROGRAMS.join(", "),
                searched.join(", ")
            )
        })
}

/// `<root>/<version>/bin` for every version installed under `root`, highest version first.
fn debian_bindirs(root: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut versions: Vec<(u32, PathBuf)> = entries
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<f32>().ok()?;
            Some(((version * 10.0) as u32, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by_key(|v| std::cmp::Reverse(v.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
