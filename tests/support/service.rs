//! The real `forkpool` binary, started on a configuration written for one test, and a client
//! that speaks its socket protocol.
//!
//! Readiness is awaited as an event: the master's log lines are read from its stderr as they
//! come, and `start` returns once every worker has logged `ready`.
//!
//! No service outlives the test process: the master is started by [`spawn_tied`], so the
//! kernel kills it when the process dies (its workers follow it by their own
//! `PR_SET_PDEATHSIG`); `Drop` stops it and removes its directory, and a service kept in a
//! static for several tests ([`Service::shared`]) is stopped and removed at process exit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;
use serde_json::{json, Value};

use super::tied::spawn_tied;
use super::Cluster;

/// How long a test waits for an event of the service before it fails with the logs.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`Service::wait_for_status`] asks: `status` is cheap, and what it waits for
/// (a worker's heartbeat, once a second) has no event of its own.
const STATUS_POLL: Duration = Duration::from_millis(20);

/// What the test process's environment may hold that would tell the service under test it
/// runs under systemd (when `cargo test` itself runs in a unit or under journald): removed,
/// so a test sets them only on purpose.
const SYSTEMD_VARIABLES: [&str; 8] = [
    "NOTIFY_SOCKET",
    "CREDENTIALS_DIRECTORY",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
];

/// What a test's service looks like.
pub struct ServiceOptions {
    pub workers: usize,
    pub threads: usize,
    /// `url` of `[databases.main]`.
    pub database_url: String,
    /// More TOML appended to the configuration (e.g. a `[service]` key is not possible this
    /// way; use `service_keys`).
    pub service_keys: Vec<(String, String)>,
    pub worker_keys: Vec<(String, String)>,
    pub database_keys: Vec<(String, String)>,
    /// `[queue]` keys. None: durable jobs off (`database = ""`), so the tests of the
    /// socket, the pools and supervision see no claims; [`ServiceOptions::durable`] turns
    /// them on.
    pub queue_keys: Vec<(String, String)>,
    /// Extra job files: (name, TOML), next to copies of the repository's `workers/`.
    pub jobs: Vec<(String, String)>,
    /// Whole sections (e.g. `[schedules.NAME]`), written after `[queue]` and before
    /// `[databases.main]`, which stays last.
    pub extra_toml: Vec<String>,
    pub env: Vec<(String, String)>,
    /// The program to run: the `forkpool` binary, or one of the examples built on the library.
    pub program: PathBuf,
}

impl ServiceOptions {
    /// Two single-threaded workers on the cluster over TCP with TLS verified (verify-full).
    pub fn on(cluster: &Cluster) -> ServiceOptions {
        ServiceOptions {
            workers: 2,
            threads: 1,
            database_url: format!(
                "{} sslrootcert={}",
                cluster.tcp_url("verify-full"),
                cluster.ca_cert().display()
            ),
            service_keys: Vec::new(),
            worker_keys: Vec::new(),
            database_keys: Vec::new(),
            queue_keys: Vec::new(),
            jobs: Vec::new(),
            extra_toml: Vec::new(),
            env: Vec::new(),
            program: PathBuf::from(env!("CARGO_BIN_EXE_forkpool")),
        }
    }

    /// Runs the example program `name` (built by `cargo test` next to the test binaries)
    /// instead of `forkpool`.
    pub fn example(mut self, name: &str) -> Self {
        let deps = std::env::current_exe().expect("the test's own path");
        let profile_dir = deps
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>");
        self.program = profile_dir.join("examples").join(name);
        assert!(
            self.program.exists(),
            "{} is not built (cargo test builds examples)",
            self.program.display()
        );
        self
    }

    pub fn job(mut self, name: &str, toml: &str) -> Self {
        self.jobs.push((name.to_string(), toml.to_string()));
        self
    }

    /// Appends `text` (whole sections, such as `[schedules.NAME]`) to the configuration,
    /// before `[databases.main]`.
    pub fn extra_toml(mut self, text: &str) -> Self {
        self.extra_toml.push(text.to_string());
        self
    }

    pub fn service_key(mut self, key: &str, toml_value: &str) -> Self {
        self.service_keys
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    pub fn worker_key(mut self, key: &str, toml_value: &str) -> Self {
        self.worker_keys
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    pub fn queue_key(mut self, key: &str, toml_value: &str) -> Self {
        self.queue_keys
            .push((key.to_string(), toml_value.to_string()));
        self
    }

    /// Durable jobs on, in the service's own database `main`.
    pub fn durable(self) -> Self {
        self.queue_key("database", "\"main\"")
    }

    pub fn database_key(mut self, key: &str, toml_value: &str) -> Self {
        self.database_keys
            .push((key.to_string(), toml_value.to_string()));
        self
    }
}

/// The service's stderr, collected line by line as it arrives.
#[derive(Default)]
struct Log {
    lines: Mutex<Vec<String>>,
    grew: Condvar,
}

pub struct Service {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub config: PathBuf,
    log: Arc<Log>,
    pub workers: usize,
    /// What `start_again` runs again.
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl Service {
    /// Writes the configuration and job files into a fresh directory, starts
    /// `forkpool run`, and returns once every worker is ready.
    pub fn start(options: ServiceOptions) -> Service {
        let durable = options
            .queue_keys
            .iter()
            .any(|(key, value)| key == "database" && value != "\"\"");
        let service = Service::spawn(options);
        service.wait_for_log("ready", service.workers);
        if durable {
            service.wait_for_log("durable jobs ready", 1);
        }
        service
    }

    /// Starts the binary without waiting for anything (for tests of start-up failures).
    pub fn spawn(options: ServiceOptions) -> Service {
        let dir = tempfile::Builder::new()
            .prefix("forkpool-service-")
            .tempdir()
            .expect("temp dir");
        let config_dir = dir.path().join("config");
        let workers_dir = dir.path().join("workers");
        std::fs::create_dir_all(&config_dir).unwrap();
        std::fs::create_dir_all(&workers_dir).unwrap();
        let repo_workers = Path::new(env!("CARGO_MANIFEST_DIR")).join("workers");
        for entry in std::fs::read_dir(repo_workers).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                std::fs::copy(&path, workers_dir.join(path.file_name().unwrap())).unwrap();
            }
        }
        for (name, toml) in &options.jobs {
            std::fs::write(workers_dir.join(format!("{name}.toml")), toml).unwrap();
        }
        let mut config = String::from("[service]\n");
        for (key, value) in &options.service_keys {
            config += &format!("{key} = {value}\n");
        }
        config += &format!(
            "\n[workers]\ncount = {}\nthreads = {}\n",
            options.workers, options.threads
        );
        for (key, value) in &options.worker_keys {
            config += &format!("{key} = {value}\n");
        }
        // Before [databases.main], which stays last: tests append keys to it.
        config += "\n[queue]\n";
        if options.queue_keys.is_empty() {
            config += "database = \"\"\n";
        }
        let (limits, keys): (Vec<_>, Vec<_>) = options
            .queue_keys
            .iter()
            .partition(|(key, _)| key.starts_with("limits."));
        for (key, value) in keys {
            config += &format!("{key} = {value}\n");
        }
        if !limits.is_empty() {
            config += "\n[queue.limits]\n";
            for (key, value) in limits {
                config += &format!("{} = {value}\n", &key["limits.".len()..]);
            }
        }
        for text in &options.extra_toml {
            config += &format!("\n{}\n", text.trim());
        }
        config += &format!(
            "\n[databases.main]\nurl = {}\n",
            toml_string(&options.database_url)
        );
        for (key, value) in &options.database_keys {
            config += &format!("{key} = {value}\n");
        }
        let config_path = config_dir.join("forkpool.toml");
        std::fs::write(&config_path, config).unwrap();
        let (child, log) = launch(&options.program, &config_path, &options.env);
        Service {
            child: Some(child),
            socket: config_dir.join("forkpool.sock"),
            config: config_path,
            dir,
            log,
            workers: options.workers,
            program: options.program,
            env: options.env,
        }
    }

    /// Starts the service again on the same directory and configuration (so the same socket
    /// path and host identity) after its master exited (`wait_exit`), and returns once every
    /// worker is ready. The logs are the new master's from here on.
    pub fn start_again(&mut self) {
        assert!(
            self.child.is_none(),
            "the previous master must have exited (wait_exit) before a restart"
        );
        let (child, log) = launch(&self.program, &self.config, &self.env);
        self.child = Some(child);
        self.log = log;
        self.wait_for_log("ready", self.workers);
    }

    /// The service kept in `cell` for the tests of one binary that share it, started by
    /// `start` on first use. A static is never dropped, so an atexit handler stops it and
    /// removes its directory when the test process exits.
    pub fn shared(
        cell: &'static OnceLock<Service>,
        start: impl FnOnce() -> Service,
    ) -> &'static Service {
        cell.get_or_init(|| {
            let service = start();
            static REGISTER: Once = Once::new();
            // SAFETY: registers a plain function with no captured state.
            REGISTER.call_once(|| unsafe {
                libc::atexit(stop_shared_services);
            });
            lock(&SHARED_SERVICES).push(SharedService {
                owner: std::process::id(),
                master: service.pid(),
                dir: service.dir.path().to_path_buf(),
            });
            service
        })
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("running").id() as i32)
    }

    /// Everything the service logged so far.
    pub fn logs(&self) -> String {
        self.log.lines.lock().unwrap().join("\n")
    }

    /// Waits until at least `count` log lines contain `needle`; panics with the logs if the
    /// service does not get there within `EVENT_TIMEOUT`.
    pub fn wait_for_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        let mut lines = self.log.lines.lock().unwrap();
        loop {
            if lines.iter().filter(|line| line.contains(needle)).count() >= count {
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let logs = lines.join("\n");
                panic!(
                    "waited {EVENT_TIMEOUT:?} for {count} log lines with {needle:?}; logs:\n{logs}"
                );
            }
            lines = self.log.grew.wait_timeout(lines, left).unwrap().0;
        }
    }

    pub fn client(&self) -> Client {
        Client::connect(&self.socket)
    }

    /// Runs one job on a fresh connection and returns the whole answer.
    pub fn submit(&self, job: &str, args: Value) -> Value {
        self.client()
            .request(json!({"id": 1, "op": "run", "job": job, "args": args}))
    }

    pub fn status(&self) -> Value {
        let answer = self
            .client()
            .request(json!({"id": "status", "op": "status"}));
        assert_eq!(answer["ok"], true, "status failed: {answer}");
        answer["result"].clone()
    }

    /// Asks for `status` until `done` holds for the answer and returns that answer; panics
    /// with the last answer and the logs after `EVENT_TIMEOUT`. For what only a heartbeat
    /// brings (RSS, pool counters): the test cannot be told when one arrives.
    pub fn wait_for_status(&self, what: &str, mut done: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let status = self.status();
            if done(&status) {
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "waited {EVENT_TIMEOUT:?} for {what}; last status: {status:#}\nlogs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(STATUS_POLL);
        }
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal).expect("signalling the master");
    }

    /// Waits for the master to exit (and reaps it).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = Pid::from_raw(child.id() as i32);
        let (done, exited) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(child.wait());
        });
        match exited.recv_timeout(EVENT_TIMEOUT) {
            Ok(status) => status.expect("waiting for the master"),
            Err(_) => {
                let _ = kill(pid, Signal::SIGKILL);
                panic!("the service did not exit; logs:\n{}", self.logs());
            }
        }
    }

    /// The pids of the workers, from `status`.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.status()["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_i64().unwrap() as i32)
            .collect()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A service in a static: what the atexit handler needs to stop it and remove its directory.
struct SharedService {
    /// The test process that started it: a child forked from that process (without exec)
    /// inherits the handler and must not stop its parent's service when it exits.
    owner: u32,
    master: Pid,
    dir: PathBuf,
}

static SHARED_SERVICES: Mutex<Vec<SharedService>> = Mutex::new(Vec::new());

/// At exit: what `Drop` does for a service that is never dropped. Never panics.
extern "C" fn stop_shared_services() {
    for service in lock(&SHARED_SERVICES).drain(..) {
        if service.owner != std::process::id() {
            continue;
        }
        let _ = kill(service.master, Signal::SIGKILL);
        let _ = waitpid(service.master, None);
        let _ = std::fs::remove_dir_all(&service.dir);
    }
}

/// Locks even a mutex poisoned by a panicking test: cleanup must still happen.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A connection to the service: send requests (pipelined if you like), read answers.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> Client {
        let stream = UnixStream::connect(socket)
            .unwrap_or_else(|e| panic!("connecting to {}: {e}", socket.display()));
        stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, request: Value) {
        let mut line = request.to_string();
        line.push('\n');
        self.send_raw(line.as_bytes());
    }

    /// The next answer line; `None` when the service closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {line:?}")),
            ),
            Err(e) => panic!("reading an answer: {e}"),
        }
    }

    pub fn request(&mut self, request: Value) -> Value {
        self.send(request);
        self.recv()
            .expect("the service closed the connection without answering")
    }
}

/// Runs `program run --config CONFIG` tied to the test process, its stderr collected line by
/// line into the returned log.
fn launch(program: &Path, config: &Path, env: &[(String, String)]) -> (Child, Arc<Log>) {
    let mut command = Command::new(program);
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env_remove("FORKPOOL_CONFIG")
        .env_remove("FORKPOOL_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for key in SYSTEMD_VARIABLES {
        command.env_remove(key);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = spawn_tied(command).expect("starting the forkpool binary");
    let log = Arc::new(Log::default());
    let stderr = child.stderr.take().unwrap();
    {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log.lines.lock().unwrap().push(line);
                log.grew.notify_all();
            }
        });
    }
    (child, log)
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}
