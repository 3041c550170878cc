//! Child processes that do not outlive the test process, however it ends.
//!
//! `PR_SET_PDEATHSIG` signals a child when the *thread* that forked it exits, not the
//! process. libtest runs each test on a thread that ends with the test, so a child forked
//! there would be killed as soon as its test returned — and a child kept in a `static` for
//! several tests would die with the first one. Children are therefore forked by one thread
//! that lives as long as the process: it takes commands over a channel and hands back the
//! `Child`. When the process dies — a normal exit, a panic, SIGKILL, a cancelled CI job —
//! that thread goes with it and the kernel sends each child still running SIGKILL.
//!
//! SIGKILL rather than SIGTERM: it also ends a child a test left stopped (SIGSTOP), and it is
//! what `Service`'s `Drop` sends; forkpool's workers follow their master by their own
//! `PR_SET_PDEATHSIG`.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Sender};
use std::sync::OnceLock;

type SpawnRequest = (Command, Sender<io::Result<Child>>);

/// Starts `command` as a child that is killed when the test process dies.
pub fn spawn_tied(mut command: Command) -> io::Result<Child> {
    let parent = std::process::id();
    // SAFETY: between fork and exec the hook makes two system calls and allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The test process may have died between fork and prctl: nothing would signal
            // this child any more.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
    let (reply, answer) = channel();
    spawner()
        .send((command, reply))
        .expect("the thread that starts test children is gone");
    answer
        .recv()
        .expect("the thread that starts test children is gone")
}

/// The channel to the forking thread, started on first use. Its sender sits in a static,
/// which is never dropped, so the thread waits for requests until the process exits.
fn spawner() -> &'static Sender<SpawnRequest> {
    static SPAWNER: OnceLock<Sender<SpawnRequest>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("test-children".to_string())
            .spawn(move || {
                for (mut command, reply) in incoming {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the thread that starts test children");
        requests
    })
}
