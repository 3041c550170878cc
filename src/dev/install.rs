//! `forkpool dev --install`: the PostgreSQL server programs from Debian/Ubuntu packages, by
//! the steps of `scripts/install-postgres.sh`, built into the binary so that one file is
//! the only place they are written down.

use std::process::Command;

/// The repository's installer, run by `bash`.
const INSTALL_SCRIPT: &str = include_str!("../../scripts/install-postgres.sh");

/// Runs the installer (apt-get, through sudo when we are not root), its output on ours.
pub(crate) fn install_server_programs() -> Result<(), String> {
    println!(
        "forkpool dev: installing the PostgreSQL server programs (scripts/install-postgres.sh)"
    );
    let status = Command::new("bash")
        .arg("-c")
        .arg(INSTALL_SCRIPT)
        .status()
        .map_err(|e| format!("running bash for the installer: {e}"))?;
    if !status.success() {
        return Err(format!(
            "installing the PostgreSQL server programs failed ({status}); on a system without \
             apt-get, install PostgreSQL's server package and put the directory holding \
             `initdb` on PATH or in ${}",
            crate::devcluster::binaries::BINDIR_VARIABLE
        ));
    }
    Ok(())
}
