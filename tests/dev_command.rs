//! `forkpool dev`: the real binary in a temporary directory with a copy of the example job
//! files — a private cluster in `.forkpool-dev/`, the service on it, Ctrl-C stopping both,
//! the data kept between runs on the same port (another one when that is taken), `--fresh`
//! wiping it, and a clear message when the server programs are missing.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{spawn_tied, Client};

/// A first start runs initdb and the keeper's migration; two cores are shared with other
/// test binaries.
const START_PATIENCE: Duration = Duration::from_secs(120);
/// A fast stop of the service, then of PostgreSQL (a checkpoint).
const STOP_PATIENCE: Duration = Duration::from_secs(60);

/// A directory like a checkout of the repository: the example job files in `workers/`.
/// Mode 0755: as root the server runs as `postgres`, which must reach `.forkpool-dev/`.
fn project_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("forkpool-dev-")
        .tempdir()
        .unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let workers = dir.path().join("workers");
    fs::create_dir(&workers).unwrap();
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("workers");
    for entry in fs::read_dir(examples).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), workers.join(entry.file_name())).unwrap();
    }
    dir
}

/// A running `forkpool dev`, its stdout read line by line.
struct Dev {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
    dir: PathBuf,
}

impl Dev {
    /// Starts `forkpool dev ARGS` in `dir` and waits for its ready banner to end.
    fn start(dir: &Path, args: &[&str]) -> Dev {
        let mut dev = Dev::spawn(dir, args, &[]);
        dev.wait_for_line("forkpool dev: ready");
        dev.wait_for_line("Ctrl-C stops the service");
        dev
    }

    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Dev {
        let stderr = dir.join(format!("dev-stderr-{}.log", fastrand::u32(..)));
        let mut command = Command::new(env!("CARGO_BIN_EXE_forkpool"));
        command
            .arg("dev")
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", "info")
            .env_remove("FORKPOOL_PG_BINDIR")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(&stderr).unwrap());
        let mut child = spawn_tied(command).expect("starting forkpool dev");
        let stdout = child.stdout.take().unwrap();
        let (send, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Dev {
            child,
            lines,
            seen: Vec::new(),
            stderr,
            dir: dir.to_path_buf(),
        }
    }

    /// Waits until a line of stdout starts with `prefix`, and returns it.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + START_PATIENCE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "no line {prefix:?} from forkpool dev within {START_PATIENCE:?}\n{}",
                    self.output()
                ),
            }
        }
    }

    fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.seen.join("\n"),
            fs::read_to_string(&self.stderr).unwrap_or_default()
        )
    }

    fn socket(&self) -> PathBuf {
        self.dir.join(".forkpool-dev/forkpool.sock")
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket())
    }

    /// The port the ready line names.
    fn port(&self) -> u16 {
        let ready = self
            .seen
            .iter()
            .find(|l| l.starts_with("forkpool dev: ready"))
            .expect("ready line");
        let after = ready
            .split("127.0.0.1:")
            .nth(1)
            .expect("a port in the ready line");
        after
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// The postmaster's pid, from its pid file.
    fn postmaster_pid(&self) -> i32 {
        let pid_file = fs::read_to_string(self.pid_file()).expect("postmaster.pid while running");
        pid_file.lines().next().unwrap().trim().parse().unwrap()
    }

    fn pid_file(&self) -> PathBuf {
        self.dir.join(".forkpool-dev/data/postmaster.pid")
    }

    /// Sends `signal` (as a terminal's Ctrl-C would reach only `forkpool dev`: the service
    /// and the server are in process groups of their own) and waits for the exit.
    fn stop(mut self, signal: Signal) -> ExitStatus {
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        self.wait_exit()
    }

    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + STOP_PATIENCE;
        // Reading stdout to its end waits for the exit without polling the process.
        while let Ok(line) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            self.seen.push(line);
        }
        assert!(
            Instant::now() < deadline,
            "forkpool dev did not exit within {STOP_PATIENCE:?}\n{}",
            self.output()
        );
        self.child.wait().unwrap()
    }
}

/// Running means existing and not a zombie.
fn is_running(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('Z')
        }
        Err(_) => false,
    }
}

/// Waits until process `pid` (not our child) has exited, at most `within`, through a pidfd
/// that becomes readable at its exit; whether it did.
fn exits_within(pid: i32, within: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    if fd < 0 {
        return !is_running(pid); // already gone (ESRCH)
    }
    let mut poll = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd; the descriptor is ours and closed right after.
    let ready = unsafe { libc::poll(&mut poll, 1, within.as_millis() as i32) };
    unsafe { libc::close(fd) };
    ready == 1 || !is_running(pid)
}

fn enqueue(dev: &Dev, a: i64) -> i64 {
    let answer = dev.client().request(json!({
        "id": 1, "op": "enqueue", "job": "add", "args": {"a": a, "b": 1}
    }));
    assert_eq!(answer["ok"], true, "{answer}\n{}", dev.output());
    answer["result"]["job_id"].as_i64().unwrap()
}

fn result(dev: &Dev, job_id: i64) -> Value {
    dev.client()
        .request(json!({"id": 1, "op": "result", "job_id": job_id, "wait_ms": 20000}))
}

#[test]
fn dev_serves_the_example_jobs_and_ctrl_c_stops_the_service_and_the_cluster() {
    let dir = project_dir();
    let dev = Dev::start(dir.path(), &[]);
    assert!(
        dev.seen
            .iter()
            .any(|l| l.contains("forkpool submit --socket")),
        "the banner shows a submit to try\n{}",
        dev.output()
    );

    let answer = dev.client().request(json!({
        "id": 1, "op": "run", "job": "add", "args": {"a": 1, "b": 2}
    }));
    assert_eq!(answer["result"]["rows"][0]["sum"], 3, "{answer}");

    let job_id = enqueue(&dev, 41);
    let done = result(&dev, job_id);
    assert_eq!(done["result"]["state"], "completed", "{done}");
    assert_eq!(done["result"]["result"]["rows"][0]["sum"], 42, "{done}");

    let postmaster = dev.postmaster_pid();
    let pid_file = dev.pid_file();
    assert!(is_running(postmaster));
    let status = dev.stop(Signal::SIGINT);
    assert_eq!(status.code(), Some(0), "forkpool dev exits 0 after Ctrl-C");
    assert!(
        !is_running(postmaster),
        "the postmaster {postmaster} is still running"
    );
    assert!(
        !pid_file.exists(),
        "a clean shutdown removes postmaster.pid"
    );
}

#[test]
fn dev_keeps_its_data_and_port_between_runs_moves_off_a_taken_port_and_fresh_wipes_it() {
    let dir = project_dir();
    let dev = Dev::start(dir.path(), &[]);
    let port = dev.port();
    let job_id = enqueue(&dev, 1);
    assert_eq!(result(&dev, job_id)["result"]["state"], "completed");
    assert_eq!(
        dev.stop(Signal::SIGTERM).code(),
        Some(0),
        "SIGTERM also stops it"
    );

    let dev = Dev::start(dir.path(), &[]);
    assert_eq!(dev.port(), port, "the earlier port, free, is kept");
    assert!(
        !dev.seen
            .iter()
            .any(|l| l.contains("creating a PostgreSQL cluster")),
        "the second run reuses the cluster\n{}",
        dev.output()
    );
    let kept = result(&dev, job_id);
    assert_eq!(kept["result"]["state"], "completed", "{kept}");
    assert_eq!(dev.stop(Signal::SIGINT).code(), Some(0));

    let holder = TcpListener::bind(("127.0.0.1", port)).expect("holding the old port");
    let dev = Dev::start(dir.path(), &[]);
    let moved = dev.port();
    assert_ne!(moved, port, "a taken port is given up");
    let config = fs::read_to_string(dir.path().join(".forkpool-dev/forkpool.toml")).unwrap();
    assert!(config.contains(&format!("port={moved} ")), "{config}");
    assert_eq!(result(&dev, job_id)["result"]["state"], "completed");
    assert_eq!(dev.stop(Signal::SIGINT).code(), Some(0));
    drop(holder);

    let dev = Dev::start(dir.path(), &["--fresh"]);
    let gone = result(&dev, job_id);
    assert_eq!(gone["error"]["kind"], "not_found", "{gone}");
    assert_eq!(dev.stop(Signal::SIGINT).code(), Some(0));
}

#[test]
fn a_killed_dev_leaves_neither_the_service_nor_postgres_behind() {
    let dir = project_dir();
    let mut dev = Dev::start(dir.path(), &[]);
    let postmaster = dev.postmaster_pid();
    let status = dev.client().request(json!({"id": 1, "op": "status"}));
    let master = status["result"]["pid"].as_i64().unwrap() as i32;
    kill(Pid::from_raw(dev.child.id() as i32), Signal::SIGKILL).unwrap();
    dev.child.wait().unwrap();
    // The kernel's parent-death signal (SIGINT) stops both: fast, with no one to pass it on.
    for (what, pid) in [
        ("the service's master", master),
        ("the postmaster", postmaster),
    ] {
        assert!(
            exits_within(pid, STOP_PATIENCE),
            "{what} {pid} outlived forkpool dev\n{}",
            dev.output()
        );
    }
}

#[test]
fn dev_without_the_server_programs_says_how_to_install_them() {
    let dir = project_dir();
    let empty = dir.path().join("no-postgres-here");
    fs::create_dir(&empty).unwrap();
    let mut dev = Dev::spawn(
        dir.path(),
        &[],
        &[("FORKPOOL_PG_BINDIR", empty.to_str().unwrap())],
    );
    let status = dev.wait_exit();
    let stderr = fs::read_to_string(&dev.stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    for needle in [
        "PostgreSQL server programs",
        "no-postgres-here",
        "bash scripts/install-postgres.sh",
        "apt-get install postgresql",
        "forkpool dev --install",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from: {stderr}");
    }
    assert!(
        !dir.path().join(".forkpool-dev").exists(),
        "nothing is created without a server"
    );
}

#[test]
fn a_second_dev_in_the_same_directory_is_refused_while_the_first_runs() {
    let dir = project_dir();
    let first = Dev::start(dir.path(), &[]);
    let postmaster = first.postmaster_pid();
    let mut second = Dev::spawn(dir.path(), &["--fresh"], &[]);
    let status = second.wait_exit();
    let stderr = fs::read_to_string(&second.stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("already running (pid {postmaster})")),
        "{stderr}"
    );
    // --fresh did not pull the data from under the running cluster.
    let answer = first.client().request(json!({
        "id": 1, "op": "run", "job": "add", "args": {"a": 1, "b": 2}
    }));
    assert_eq!(answer["result"]["rows"][0]["sum"], 3, "{answer}");
    assert_eq!(first.stop(Signal::SIGINT).code(), Some(0));
}

#[test]
fn as_root_a_directory_the_postgres_user_cannot_reach_is_named() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: the server runs as this user, who reaches the directory");
        return;
    }
    let dir = project_dir();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o700)).unwrap();
    let mut dev = Dev::spawn(dir.path(), &[], &[]);
    let status = dev.wait_exit();
    let stderr = fs::read_to_string(&dev.stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let named = format!("cannot pass through {} (mode 700)", dir.path().display());
    assert!(stderr.contains(&named), "{named:?} missing from: {stderr}");
}
