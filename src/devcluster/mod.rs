//! A private PostgreSQL cluster from the installed server programs: what the integration
//! tests (`tests/support`) and `forkpool dev` both start, so the command a newcomer tries
//! first runs on the code the tests exercise.
//!
//! - `binaries.rs`: finding `initdb`, `pg_ctl` and `postgres` (and saying how to install
//!   them);
//! - `installation.rs`: running them, as the `postgres` OS user when we are root; `initdb`;
//! - `server_files.rs`: pg_hba.conf, the settings (port, socket directory, TLS), the
//!   certificates' files;
//! - `certs.rs`: a CA and a server certificate, made at run time;
//! - `postmaster.rs`: the server as our child: start, wait until ready, stop.
//!
//! Imports nothing of ours: the master never reaches it, start-up and the tests may.

pub mod binaries;
pub mod certs;
pub mod installation;
pub mod postmaster;
pub mod server_files;

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A port on 127.0.0.1 that was free a moment ago (the kernel's choice for port 0, which
/// never hands out 5432). The server may still lose a race for it: callers retry.
pub fn free_port() -> std::io::Result<u16> {
    TcpListener::bind("127.0.0.1:0")?
        .local_addr()
        .map(|a| a.port())
}

/// Whether `port` on 127.0.0.1 can be bound now (a cluster's earlier port, to keep it).
pub fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Makes the kernel send `signal` to the child `command` starts when the thread that
/// started it exits (`PR_SET_PDEATHSIG`): a child that must not outlive us, however we end.
/// Set in the child after its switch to another user, which would clear it.
pub fn signal_when_parent_dies(command: &mut Command, signal: libc::c_int) {
    // SAFETY: prctl is async-signal-safe and touches no memory.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}
