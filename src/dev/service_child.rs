//! The service of `forkpool dev`: `forkpool run` as a child process, in a process group of
//! its own, told to stop by us alone.
//!
//! A child rather than the master in this process: the master is one thread that reaps every
//! child it has, and would reap the postmaster too; this process has opened a connection and
//! may hold runtime threads, which a master must never fork under. So this process is only
//! a parent: the postmaster and the service are its two children, and it passes the stop
//! signals on in order — the service first, PostgreSQL once the service has exited.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

use crate::devcluster::signal_when_parent_dies;

/// Starts `<this program> run --config <config>`. Its own process group keeps a terminal's
/// Ctrl-C from reaching it before us (we pass it on); the parent-death signal stops it fast
/// if we die without doing so. `FORKPOOL_*` variables are not passed: the generated
/// configuration is the whole configuration, and a production
/// `FORKPOOL_DATABASES__MAIN__URL` in the shell would point the service elsewhere.
pub(crate) fn spawn(config: &Path) -> Result<Child, String> {
    let program =
        std::env::current_exe().map_err(|e| format!("finding this program's path: {e}"))?;
    let mut command = Command::new(&program);
    command.arg("run").arg("--config").arg(config);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FORKPOOL_") {
            command.env_remove(name);
        }
    }
    command.process_group(0);
    signal_when_parent_dies(&mut command, libc::SIGINT);
    command
        .spawn()
        .map_err(|e| format!("starting {} run: {e}", program.display()))
}

/// Passes `signal` on to the service.
pub(crate) fn forward(child: &Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
}

/// Whether the service answers `status` on `socket` with its durable jobs ready (the queue
/// keeper has migrated the schema): then every command the banner suggests works.
pub(crate) fn is_ready(socket: &Path) -> bool {
    let ask = || -> std::io::Result<Value> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"{\"id\": 1, \"op\": \"status\"}\n")?;
        let mut line = String::new();
        BufReader::new(stream).read_line(&mut line)?;
        Ok(serde_json::from_str(&line)?)
    };
    ask().is_ok_and(|answer| answer["result"]["durable"]["ready"] == Value::Bool(true))
}

/// The exit code to end with: the service's own, or 1 when a signal killed it.
pub(crate) fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or(crate::exit::EXIT_FAILED)
}
