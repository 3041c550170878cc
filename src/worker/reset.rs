//! The atfork child reset (DESIGN §2): the first thing a new worker does, before it starts a
//! thread or touches anything the master owned.

use std::ffi::CString;
use std::os::fd::RawFd;

use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal};
use nix::unistd::{getppid, Pid};

/// Puts the freshly forked child into a clean state:
/// 1. default signal dispositions, then an empty signal mask (the master blocked every
///    signal across the fork so that its handlers, which write to the master's self-pipe,
///    cannot run in the child);
/// 2. every inherited descriptor closed except stdio and `keep` (the job channel): the
///    listening socket, clients' sockets and other workers' channels are the master's;
/// 3. killed when the master dies (`PR_SET_PDEATHSIG`), and gone at once if it already has;
/// 4. per-process state: jitter randomness re-seeded, the process named (`forkpool-wN`,
///    `forkpool-queue`).
pub fn atfork_child_reset(keep: RawFd, master: Pid, name: &str) -> Result<(), String> {
    reset_signals()?;
    close_inherited_descriptors(keep)?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
    if getppid() != master {
        return Err("the master exited while this process was starting".to_string());
    }
    // Both halves of the fork would otherwise draw the same "random" jitter.
    fastrand::seed(u64::from(std::process::id()) ^ fastrand::u64(..));
    // PR_SET_NAME takes 15 bytes: `forkpool: worker N` does not fit, `forkpool-wN` does.
    let name = CString::new(name).expect("no NUL in a process name");
    nix::sys::prctl::set_name(&name).map_err(|e| format!("prctl(PR_SET_NAME): {e}"))?;
    Ok(())
}

fn reset_signals() -> Result<(), String> {
    let default = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in a signal context.
        unsafe { sigaction(signal, &default) }
            .map_err(|e| format!("resetting {signal} to its default: {e}"))?;
    }
    // Real-time signals are not in `Signal`; an ignored one survives exec into the master and
    // fork into the worker, so reset them too (glibc's SIGRTMIN() is already past the two it
    // reserves for itself).
    for number in libc::SIGRTMIN()..=libc::SIGRTMAX() {
        // SAFETY: a zeroed sigaction is SIG_DFL with an empty mask and no flags.
        let default: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: as above; the old action is not wanted.
        unsafe { libc::sigaction(number, &default, std::ptr::null_mut()) };
    }
    // Rust programs start with SIGPIPE ignored so a write to a closed socket returns EPIPE
    // instead of killing the process; a worker needs the same.
    let ignore = SigAction::new(SigHandler::SigIgn, SaFlags::empty(), SigSet::empty());
    // SAFETY: as above.
    unsafe { sigaction(Signal::SIGPIPE, &ignore) }.map_err(|e| format!("ignoring SIGPIPE: {e}"))?;
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("unblocking signals: {e}"))
}

/// Closes every descriptor above stderr except `keep`, listed from /proc/self/fd (the
/// descriptors are collected first: closing while reading the directory would close the
/// directory's own descriptor under it).
fn close_inherited_descriptors(keep: RawFd) -> Result<(), String> {
    let listed: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("listing /proc/self/fd: {e}"))?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in listed {
        if fd > 2 && fd != keep {
            // SAFETY: these descriptors belong to the master's objects, which this process
            // never uses again (the worker does not return into the master's code); the
            // listing's own descriptor is already closed and gives EBADF, which is harmless.
            unsafe { libc::close(fd) };
        }
    }
    Ok(())
}
