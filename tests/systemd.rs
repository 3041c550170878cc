//! forkpool under systemd (DESIGN §9), with the test standing in for systemd: it listens on a
//! `NOTIFY_SOCKET` datagram socket, passes a listening socket as descriptor 3 with
//! `LISTEN_FDS`/`LISTEN_PID`, and sets `JOURNAL_STREAM`. The units themselves are checked by
//! `systemd-analyze verify` when it is installed. Everything runs the real binary against a
//! real PostgreSQL cluster.

mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixDatagram, UnixListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde_json::{json, Value};

use support::{spawn_tied, Client, Cluster, Service, ServiceOptions, APP_PASSWORD, EVENT_TIMEOUT};

// ---- the notification socket ---------------------------------------------------------------

/// The test's end of `NOTIFY_SOCKET`: every datagram the service sent, in order.
///
/// A thread reads the socket all the time, as systemd does, and passes each datagram on
/// through a channel: a test busy with `status` or `submit` must not let the socket's queue
/// fill up (`net.unix.max_dgram_qlen`, 10 by default), or the service's messages are dropped.
struct Notifications {
    received: Receiver<String>,
    /// For `sync`, and to end the reader on drop.
    socket: UnixDatagram,
    path: PathBuf,
    _dir: tempfile::TempDir,
    seen: Vec<String>,
    marks: u32,
}

impl Notifications {
    fn bind() -> Notifications {
        let dir = tempfile::Builder::new()
            .prefix("forkpool-notify-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).expect("binding the notify socket");
        let reader = socket.try_clone().unwrap();
        let (deliver, received) = channel();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            // Ends when `drop` shuts the socket down (recv gives 0) or the test is gone.
            while let Ok(n @ 1..) = reader.recv(&mut buffer) {
                let message = String::from_utf8_lossy(&buffer[..n]).into_owned();
                if deliver.send(message).is_err() {
                    break;
                }
            }
        });
        Notifications {
            received,
            socket,
            path,
            _dir: dir,
            seen: Vec::new(),
            marks: 0,
        }
    }

    /// The variable that names this socket to the service.
    fn env(&self) -> (&'static str, String) {
        ("NOTIFY_SOCKET", self.path.to_str().unwrap().to_string())
    }

    /// The next datagram within `timeout`, if one comes.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        match self.received.recv_timeout(timeout) {
            Ok(message) => {
                self.seen.push(message.clone());
                Some(message)
            }
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => panic!("the notify socket reader stopped"),
        }
    }

    fn wait_for_any(&mut self) -> String {
        self.next(EVENT_TIMEOUT)
            .unwrap_or_else(|| panic!("no notification within {EVENT_TIMEOUT:?}"))
    }

    /// Reads datagrams until one has the line `line` (e.g. `READY=1`); returns it.
    fn wait_for(&mut self, line: &str) -> String {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "waited {EVENT_TIMEOUT:?} for {line:?}; received: {:#?}",
                    self.seen
                );
            }
            if let Some(message) = self.next(left) {
                if message.lines().any(|l| l == line) {
                    return message;
                }
            }
        }
    }

    /// Takes in everything the service sent so far: the test sends a mark of its own to the
    /// socket and reads up to it (a datagram socket keeps order), so nothing already sent is
    /// still on its way through the reader. Call it when the service sends no more (stopped
    /// or exited).
    fn sync(&mut self) {
        self.marks += 1;
        let mark = format!("TEST_MARK={}", self.marks);
        UnixDatagram::unbound()
            .unwrap()
            .send_to(mark.as_bytes(), &self.path)
            .expect("sending a mark to the notify socket");
        loop {
            let message = self.wait_for_any();
            if message == mark {
                self.seen.pop();
                return;
            }
        }
    }
}

impl Drop for Notifications {
    fn drop(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Both);
    }
}

/// A STATUS= line: "2/2 workers serving, queue 0, 0.5 jobs/s" as (serving, target, queue,
/// jobs/s); panics naming the line if it is not one.
fn parse_status(line: &str) -> (usize, usize, usize, f64) {
    let parsed = (|| {
        let (workers, rest) = line.split_once(" workers serving, queue ")?;
        let (serving, target) = workers.split_once('/')?;
        let (queue, rest) = rest.split_once(", ")?;
        let rate = rest.strip_suffix(" jobs/s")?;
        Some((
            serving.parse().ok()?,
            target.parse().ok()?,
            queue.parse().ok()?,
            rate.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)?,
        ))
    })();
    parsed.unwrap_or_else(|| {
        panic!("STATUS={line:?} is not \"N/M workers serving, queue Q, R jobs/s\"")
    })
}

/// The value of `KEY=value` in a notification.
fn field<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
}

fn monotonic_usec() -> i128 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    assert_eq!(
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) },
        0
    );
    now.tv_sec as i128 * 1_000_000 + now.tv_nsec as i128 / 1_000
}

/// Workers of `generation` that serve (idle or busy), from a `status` answer.
fn serving(status: &Value, generation: u64) -> usize {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            w["generation"] == generation && matches!(w["state"].as_str(), Some("idle" | "busy"))
        })
        .count()
}

// ---- the units -----------------------------------------------------------------------------

/// The unit files, with `ExecStart=` pointing at the binary under test: `systemd-analyze
/// verify` requires the program to exist, and the units name /usr/local/bin/forkpool.
fn units_for_verify() -> tempfile::TempDir {
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd");
    let dir = tempfile::tempdir().unwrap();
    for name in [
        "forkpool.service",
        "forkpool.socket",
        "forkpool@.service",
        "forkpool@.socket",
    ] {
        let text = unit_text(name);
        if name.ends_with(".service") {
            assert!(
                text.contains("ExecStart=/usr/local/bin/forkpool run"),
                "{name}"
            );
        }
        let text = text.replace("/usr/local/bin/forkpool", env!("CARGO_BIN_EXE_forkpool"));
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    assert!(units.join("forkpool.sysusers").exists());
    dir
}

fn unit_text(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `program args…`, or None (with the reason printed) when the program is not installed.
fn run_if_installed(program: &str, args: &[&std::ffi::OsStr]) -> Option<(bool, String)> {
    match Command::new(program).args(args).output() {
        Ok(output) => Some((
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("{program} is not installed: this check does not run here");
            None
        }
        Err(e) => panic!("running {program}: {e}"),
    }
}

/// `systemd-analyze verify` on both units, and on an instance of each template (verify finds
/// `forkpool@.service` next to the `forkpool@test.service` it is given).
#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = units_for_verify();
    let mut args = vec![std::ffi::OsString::from("verify")];
    for name in [
        "forkpool.service",
        "forkpool.socket",
        "forkpool@test.service",
        "forkpool@test.socket",
    ] {
        args.push(dir.path().join(name).into_os_string());
    }
    let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let Some((ok, said)) = run_if_installed("systemd-analyze", &args) else {
        return;
    };
    assert!(ok, "systemd-analyze verify:\n{said}");
    assert!(
        !said.contains("forkpool"),
        "systemd-analyze verify has remarks:\n{said}"
    );
}

/// The directives of a unit file (no comments, no blank lines), in order.
fn directives(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// forkpool@.service is forkpool.service with the instance's own config, socket and runtime
/// directory, and nothing else changed: a setting added to one is added to the other.
#[test]
fn the_template_is_the_service_with_the_instance_paths() {
    let expected: Vec<String> = directives(&unit_text("forkpool.service"))
        .into_iter()
        .map(|line| {
            line.replace(
                "/etc/forkpool/forkpool.toml",
                "/etc/forkpool/%i/forkpool.toml",
            )
            .replace(
                "/run/forkpool/forkpool.sock",
                "/run/forkpool/%i/forkpool.sock",
            )
            .replace("RuntimeDirectory=forkpool", "RuntimeDirectory=forkpool/%i")
            .replace("for PostgreSQL", "for PostgreSQL (%i)")
        })
        .collect();
    assert_eq!(directives(&unit_text("forkpool@.service")), expected);
    let expected: Vec<String> = directives(&unit_text("forkpool.socket"))
        .into_iter()
        .filter(|line| line != "Service=forkpool.service")
        .map(|line| {
            line.replace(
                "/run/forkpool/forkpool.sock",
                "/run/forkpool/%i/forkpool.sock",
            )
            .replace("job socket", "job socket (%i)")
        })
        .collect();
    assert_eq!(directives(&unit_text("forkpool@.socket")), expected);
}

/// A bad configuration exits 2, and the unit does not restart on 2: five restarts cannot fix
/// a typo. The credential the README describes is shown in the unit, ready to turn on.
#[test]
fn a_bad_configuration_exits_2_which_the_unit_does_not_restart() {
    let unit = unit_text("forkpool.service");
    assert!(
        directives(&unit).contains(&"RestartPreventExitStatus=2".to_string()),
        "{unit}"
    );
    assert!(unit.contains("\n#LoadCredential=db-password:/etc/forkpool/db-password\n"));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("forkpool.toml");
    std::fs::write(&config, "[workers]\ncount = \"many\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .arg("run")
        .arg("--config")
        .arg(&config)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("workers.count"), "{stderr}");
}

/// The sysusers.d file creates the service's user and its clients' group, as
/// `systemd-sysusers` reads it (against an empty root, writing nothing).
#[test]
fn sysusers_file_creates_the_user_and_the_clients_group() {
    let root = tempfile::tempdir().unwrap();
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/forkpool.sysusers");
    let root_arg = format!("--root={}", root.path().display());
    let args = [
        std::ffi::OsStr::new("--dry-run"),
        std::ffi::OsStr::new(&root_arg),
        file.as_os_str(),
    ];
    let Some((ok, said)) = run_if_installed("systemd-sysusers", &args) else {
        return;
    };
    assert!(ok, "systemd-sysusers:\n{said}");
    assert!(said.contains("Creating user 'forkpool'"), "{said}");
    assert!(said.contains("Creating group 'forkpool-clients'"), "{said}");
    assert!(
        !said.contains("ignoring") && !said.contains("Unknown"),
        "{said}"
    );
    for unit in ["forkpool.service", "forkpool@.service"] {
        assert!(directives(&unit_text(unit)).contains(&"User=forkpool".to_string()));
    }
    for unit in ["forkpool.socket", "forkpool@.socket"] {
        assert!(directives(&unit_text(unit)).contains(&"SocketGroup=forkpool-clients".to_string()));
    }
}

// ---- credentials ---------------------------------------------------------------------------

/// The service's configuration with the password kept out of the url and read from the file
/// systemd's `LoadCredential=db-password:…` writes: `${CREDENTIALS_DIRECTORY}/db-password`.
/// The cluster asks for a password over TCP, so a job that answers proves the file was read.
fn credential_options(cluster: &Cluster) -> ServiceOptions {
    let options = ServiceOptions::on(cluster)
        .database_key("password_file", "\"${CREDENTIALS_DIRECTORY}/db-password\"");
    let url = options
        .database_url
        .replace(&format!("password={APP_PASSWORD} "), "");
    assert!(!url.contains(APP_PASSWORD), "{url}");
    ServiceOptions {
        database_url: url,
        ..options
    }
}

#[test]
fn password_file_in_the_credentials_directory_connects() {
    let credentials = tempfile::tempdir().unwrap();
    std::fs::write(
        credentials.path().join("db-password"),
        format!("{APP_PASSWORD}\n"),
    )
    .unwrap();
    let mut options = credential_options(Cluster::shared());
    options.env.push((
        "CREDENTIALS_DIRECTORY".to_string(),
        credentials.path().to_str().unwrap().to_string(),
    ));
    let service = Service::start(options);
    let answer = service.submit("add", json!({"a": 40, "b": 2}));
    assert_eq!(answer["ok"], true, "{answer}");
    assert_eq!(answer["result"]["rows"][0]["sum"], 42, "{answer}");
}

#[test]
fn password_file_naming_an_unset_credentials_directory_stops_the_start_naming_it() {
    let mut service = Service::spawn(credential_options(Cluster::shared()));
    // Read before the exit is awaited: the log is collected from stderr by another thread.
    service.wait_for_log(
        "the environment variable CREDENTIALS_DIRECTORY is not set",
        1,
    );
    let status = service.wait_exit();
    let logs = service.logs();
    assert_eq!(status.code(), Some(2), "logs:\n{logs}");
    assert!(
        logs.lines()
            .any(|line| line.contains("databases.main.password_file")
                && line.contains("CREDENTIALS_DIRECTORY is not set")),
        "logs:\n{logs}"
    );
}

// ---- notifications -------------------------------------------------------------------------

#[test]
fn notifies_ready_status_reloading_stopping_and_pings_the_watchdog() {
    let mut notifications = Notifications::bind();
    let mut options = ServiceOptions::on(Cluster::shared());
    let (key, value) = notifications.env();
    options.env.push((key.to_string(), value));
    // WATCHDOG_PID is left out: sd_watchdog_enabled(3) then takes the watchdog as ours.
    options
        .env
        .push(("WATCHDOG_USEC".to_string(), "200000".to_string()));
    let mut service = Service::spawn(options);

    let ready = notifications.wait_for("READY=1");
    let status = service.status();
    assert_eq!(
        serving(&status, 1),
        2,
        "READY=1 before the workers served: {status}"
    );
    let line = field(&ready, "STATUS").expect("READY=1 comes with a STATUS=");
    assert_eq!(parse_status(line), (2, 2, 0, 0.0), "no job ran yet: {line}");
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);

    // STATUS= is refreshed on its own, and the job just run counts in one refresh's jobs/s:
    // each line counts the jobs finished since the one before.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no STATUS= counted the job within {EVENT_TIMEOUT:?}: {:#?}",
            notifications.seen
        );
        let message = notifications.wait_for_any();
        let Some(line) = field(&message, "STATUS") else {
            continue;
        };
        let (serving, target, queue, rate) = parse_status(line);
        assert_eq!((serving, target, queue), (2, 2, 0), "{line}");
        if rate > 0.0 {
            break;
        }
    }
    for _ in 0..3 {
        notifications.wait_for("WATCHDOG=1");
    }

    // A stopped loop pings no more; a resumed one pings again.
    service.signal(Signal::SIGSTOP);
    match waitpid(service.pid(), Some(WaitPidFlag::WUNTRACED)) {
        Ok(WaitStatus::Stopped(_, Signal::SIGSTOP)) => {}
        other => panic!("expected the master stopped, got {other:?}"),
    }
    notifications.sync();
    let silent_for = Duration::from_secs(1); // five watchdog intervals
    if let Some(message) = notifications.next(silent_for) {
        let _ = kill(service.pid(), Signal::SIGCONT);
        panic!("a stopped master sent {message:?}");
    }
    service.signal(Signal::SIGCONT);
    notifications.wait_for("WATCHDOG=1");

    // Reload: RELOADING=1 with the monotonic time, READY=1 once the new generation serves.
    let before = monotonic_usec();
    service.signal(Signal::SIGHUP);
    let reloading = notifications.wait_for("RELOADING=1");
    let after = monotonic_usec();
    let stamp: i128 = field(&reloading, "MONOTONIC_USEC")
        .expect("RELOADING=1 comes with MONOTONIC_USEC=")
        .parse()
        .unwrap();
    assert!(
        before <= stamp && stamp <= after,
        "{before} <= {stamp} <= {after}"
    );
    let ready = notifications.wait_for("READY=1");
    let line = field(&ready, "STATUS").expect("READY=1 comes with a STATUS=");
    let (serving_now, target, _, _) = parse_status(line);
    assert_eq!((serving_now, target), (2, 2), "{line}");
    let status = service.status();
    assert_eq!(
        serving(&status, 2),
        2,
        "READY=1 before the reload was done: {status}"
    );

    service.signal(Signal::SIGTERM);
    notifications.wait_for("STOPPING=1");
    assert!(service.wait_exit().success());
    notifications.sync();
    let after_stopping: Vec<&String> = notifications
        .seen
        .iter()
        .skip_while(|m| !m.contains("STOPPING=1"))
        .filter(|m| m.contains("READY=1"))
        .collect();
    assert!(
        after_stopping.is_empty(),
        "READY=1 after STOPPING=1: {after_stopping:?}"
    );
}

/// systemd stuck or slow: the queue of NOTIFY_SOCKET full and nobody reading. The master
/// drops its notifications instead of waiting in send, so clients are still answered.
#[test]
fn a_notify_socket_nobody_reads_does_not_stop_the_service() {
    let dir = tempfile::Builder::new()
        .prefix("forkpool-notify-")
        .tempdir()
        .unwrap();
    let path = dir.path().join("notify.sock");
    let _never_read = UnixDatagram::bind(&path).expect("binding the notify socket");
    // Filled before the service starts, so that every notification meets a full queue.
    let filler = UnixDatagram::unbound().unwrap();
    filler.set_nonblocking(true).unwrap();
    let mut queued = 0;
    loop {
        match filler.send_to(b"FILLER=1", &path) {
            Ok(_) => queued += 1,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the notify socket: {e}"),
        }
        assert!(queued < 100_000, "the notify socket's queue never filled");
    }
    let mut options = ServiceOptions::on(Cluster::shared());
    for (key, value) in [
        ("NOTIFY_SOCKET", path.to_str().unwrap()),
        ("WATCHDOG_USEC", "20000"), // WATCHDOG=1 every 10 ms
        ("RUST_LOG", "info,forkpool::systemd=debug"),
    ] {
        options.env.push((key.to_string(), value.to_string()));
    }
    // Returns once the workers are ready: the master was not stuck in its first send.
    let service = Service::start(options);
    service.wait_for_log(
        "NOTIFY_SOCKET is full (systemd is not reading): dropped READY=1",
        1,
    );
    service.wait_for_log("dropped WATCHDOG=1", 20);

    let status = service.status();
    assert_eq!(serving(&status, 1), 2, "{status}");
    let answer = service.submit("add", json!({"a": 1, "b": 2}));
    assert_eq!(answer["result"]["rows"], json!([{"sum": 3}]), "{answer}");
    // Still dropping, still answering.
    let dropped = service.logs().matches("dropped WATCHDOG=1").count();
    service.wait_for_log("dropped WATCHDOG=1", dropped + 20);
    assert_eq!(service.status()["totals"]["succeeded"], 1);
}

// ---- socket activation ---------------------------------------------------------------------

/// Writes `digits` of `value` into `buffer` (NUL-terminated) without allocating: this runs
/// between fork and exec.
fn decimal(mut value: u32, buffer: &mut [u8; 16]) -> *const libc::c_char {
    let mut at = buffer.len() - 1;
    buffer[at] = 0;
    loop {
        at -= 1;
        buffer[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buffer[at..].as_ptr().cast()
}

#[test]
fn serves_on_the_socket_systemd_passes_and_leaves_it_in_place() {
    let cluster = Cluster::shared();
    let dir = tempfile::Builder::new()
        .prefix("forkpool-activated-")
        .tempdir()
        .unwrap();
    let workers = dir.path().join("workers");
    std::fs::create_dir(&workers).unwrap();
    let repo_workers = Path::new(env!("CARGO_MANIFEST_DIR")).join("workers");
    for entry in std::fs::read_dir(repo_workers).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, workers.join(path.file_name().unwrap())).unwrap();
    }
    let url = ServiceOptions::on(cluster).database_url;
    let config = dir.path().join("forkpool.toml");
    std::fs::write(
        &config,
        format!(
            "[service]\nsocket = \"own.sock\"\ncatalog = \"workers\"\n\n\
             [workers]\ncount = 2\n\n[databases.main]\nurl = {}\n",
            Value::String(url)
        ),
    )
    .unwrap();

    // What systemd does for forkpool.socket: bind, listen, hand over as descriptor 3.
    let activated = dir.path().join("activated.sock");
    let listener = UnixListener::bind(&activated).unwrap();
    let listener_fd = listener.as_raw_fd();
    let mut notifications = Notifications::bind();
    let log_path = dir.path().join("stderr.log");
    // The whole environment is set in the hook: std installs a changed environment only
    // after the hooks ran, which would undo a LISTEN_PID set there; an unchanged one is the
    // process's `environ`, which setenv in the child changes.
    let set: Vec<(std::ffi::CString, std::ffi::CString)> = [
        ("RUST_LOG", "info".to_string()),
        ("LISTEN_FDS", "1".to_string()),
        notifications.env(),
    ]
    .into_iter()
    .map(|(key, value)| {
        (
            std::ffi::CString::new(key).unwrap(),
            std::ffi::CString::new(value).unwrap(),
        )
    })
    .collect();
    let mut command = Command::new(env!("CARGO_BIN_EXE_forkpool"));
    command
        .args(["run", "--config"])
        .arg(&config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log_path).unwrap());
    // SAFETY: between fork and exec the hook calls only dup2, fcntl, getpid and
    // setenv/unsetenv (glibc keeps malloc usable in a forked child) on data prepared before.
    unsafe {
        command.pre_exec(move || {
            let failed = |rc: libc::c_int| {
                if rc < 0 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            };
            if listener_fd == 3 {
                failed(libc::fcntl(3, libc::F_SETFD, 0))?;
            } else {
                failed(libc::dup2(listener_fd, 3))?;
            }
            for (key, value) in &set {
                failed(libc::setenv(key.as_ptr(), value.as_ptr(), 1))?;
            }
            failed(libc::unsetenv(c"FORKPOOL_CONFIG".as_ptr()))?;
            failed(libc::unsetenv(c"FORKPOOL_SOCKET".as_ptr()))?;
            let mut buffer = [0u8; 16];
            let pid = decimal(libc::getpid() as u32, &mut buffer);
            failed(libc::setenv(c"LISTEN_PID".as_ptr(), pid, 1))
        });
    }
    let child = spawn_tied(command).expect("starting the forkpool binary");
    let logs = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let guard = KillOnDrop(Pid::from_raw(child.id() as i32));

    notifications.wait_for("READY=1");
    assert!(
        !dir.path().join("own.sock").exists(),
        "the configured socket was bound although systemd passed one; logs:\n{}",
        logs()
    );
    assert!(
        logs().contains(&format!("serving on {}", activated.display())),
        "logs:\n{}",
        logs()
    );

    let answer = Client::connect(&activated)
        .request(json!({"id": 1, "op": "run", "job": "add", "args": {"a": 1, "b": 2}}));
    assert_eq!(answer["ok"], true, "answer: {answer}\nlogs:\n{}", logs());
    kill(guard.0, Signal::SIGTERM).unwrap();
    notifications.wait_for("STOPPING=1");
    let status = wait_with_timeout(child);
    std::mem::forget(guard);
    assert!(status.success(), "exit {status}; logs:\n{}", logs());
    assert!(
        activated.exists(),
        "the service removed the socket systemd owns; logs:\n{}",
        logs()
    );
    drop(listener);
}

/// Kills the child if the test fails before it stopped it.
struct KillOnDrop(Pid);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGKILL);
    }
}

/// Waits for the child's exit in a thread, so the test can give up on it.
fn wait_with_timeout(mut child: std::process::Child) -> std::process::ExitStatus {
    let pid = Pid::from_raw(child.id() as i32);
    let (done, exited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait());
    });
    match exited.recv_timeout(EVENT_TIMEOUT) {
        Ok(Ok(status)) => status,
        other => {
            let _ = kill(pid, Signal::SIGKILL);
            panic!("the service did not exit: {other:?}");
        }
    }
}

// ---- status --prometheus -------------------------------------------------------------------

/// `forkpool status` of `service` as the binary prints it (`format`: `--prometheus`, or
/// `--table` for the default); its exit code must be 0.
fn status_output(service: &Service, format: &str) -> String {
    let mut command = Command::new(env!("CARGO_BIN_EXE_forkpool"));
    command.arg("status");
    if format != "--table" {
        command.arg(format);
    }
    let output = command
        .arg("--socket")
        .arg(&service.socket)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(0), "status {format}:\n{text}");
    text
}

/// Parses the text exposition: samples by `name{labels}`, and the names with HELP and TYPE.
/// Checks the naming convention on the way: a counter's name ends in `_total`, and only a
/// counter's does.
fn parse_exposition(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    let mut samples = BTreeMap::new();
    let mut types = BTreeMap::new();
    let mut helped = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.push(rest.split_whitespace().next().unwrap().to_string());
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap().to_string();
            types.insert(name, words.next().unwrap().to_string());
        } else {
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample: {line:?}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|e| panic!("sample value ({e}): {line:?}"));
            let name = series.split('{').next().unwrap();
            assert!(types.contains_key(name), "{name} has no TYPE line");
            assert!(helped.iter().any(|h| h == name), "{name} has no HELP line");
            samples.insert(series.to_string(), value);
        }
    }
    for (name, kind) in &types {
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}"
        );
    }
    (samples, types)
}

#[test]
fn status_prometheus_counts_the_jobs_that_ran() {
    let cluster = Cluster::shared();
    // One worker with one thread: every job goes through the same pool, whose counters
    // can then be known exactly. Its own application_name, to find its session.
    let application_name = "forkpool-prometheus-test";
    let mut options = ServiceOptions::on(cluster)
        .database_key("application_name", &format!("\"{application_name}\""));
    options.workers = 1;
    let service = Service::start(options);
    let pool_of = |status: &Value| status["workers"][0]["pools"]["main"].clone();
    let jobs = 5;
    for a in 0..jobs {
        assert_eq!(service.submit("add", json!({"a": a}))["ok"], true);
    }
    // Pool counters come with the worker's heartbeat, once a second.
    service.wait_for_status("a heartbeat after the jobs", |status| {
        pool_of(status)["checkouts"] == jobs && pool_of(status)["in_use"] == 0
    });
    // A connection closed for a reason: its session killed, found dead by the pre-use
    // ping of the next job, replaced.
    assert_eq!(cluster.terminate_backends(application_name), 1);
    assert_eq!(service.submit("add", json!({"a": 0}))["ok"], true);
    let jobs = jobs + 1;
    let status = service.wait_for_status("a heartbeat after the replacement", |status| {
        pool_of(status)["checkouts"] == jobs && pool_of(status)["in_use"] == 0
    });
    let pool = pool_of(&status);
    assert_eq!(pool["closed_by_reason"], json!({"ping": 1}), "{status}");

    let text = status_output(&service, "--prometheus");
    let (samples, _) = parse_exposition(&text);
    assert_eq!(
        samples["forkpool_jobs_accepted_total"], jobs as f64,
        "{text}"
    );
    assert_eq!(
        samples["forkpool_jobs_succeeded_total"], jobs as f64,
        "{text}"
    );
    assert_eq!(samples["forkpool_jobs_failed_total"], 0.0, "{text}");
    assert_eq!(samples["forkpool_queue_depth"], 0.0, "{text}");
    assert_eq!(samples["forkpool_workers{state=\"idle\"}"], 1.0, "{text}");
    assert_eq!(
        samples["forkpool_worker_jobs_done_total{slot=\"1\"}"], jobs as f64,
        "{text}"
    );
    let rss = samples["forkpool_worker_rss_bytes{slot=\"1\"}"];
    assert!(rss > 0.0, "no RSS after a heartbeat:\n{text}");

    // The pool, exactly: one connection at a time, two opened, the first closed by the
    // failed ping; every job one checkout, none waited out.
    let labels = "{slot=\"1\",database=\"main\"}";
    let pool_series: BTreeMap<&str, f64> = samples
        .iter()
        .filter(|(series, _)| series.starts_with("forkpool_pool_"))
        .map(|(series, value)| (series.as_str(), *value))
        .collect();
    for (family, expected) in [
        ("forkpool_pool_connections", 1.0),
        ("forkpool_pool_idle_connections", 1.0),
        ("forkpool_pool_in_use_connections", 0.0),
        ("forkpool_pool_waiting_checkouts", 0.0),
        ("forkpool_pool_connections_created_total", 2.0),
        ("forkpool_pool_ping_failures_total", 1.0),
        ("forkpool_pool_checkout_timeouts_total", 0.0),
        ("forkpool_pool_checkouts_total", jobs as f64),
    ] {
        assert_eq!(
            pool_series.get(format!("{family}{labels}").as_str()),
            Some(&expected),
            "{family}:\n{text}"
        );
    }
    let pings = pool_series[format!("forkpool_pool_pings_total{labels}").as_str()];
    assert!(pings >= 1.0, "the failed ping was not counted:\n{text}");
    let waited = pool_series[format!("forkpool_pool_checkout_wait_seconds_total{labels}").as_str()];
    assert!(waited >= 0.0, "{text}");
    let closed: Vec<(&str, f64)> = pool_series
        .iter()
        .filter(|(series, _)| series.starts_with("forkpool_pool_connections_closed_total{"))
        .map(|(series, value)| (*series, *value))
        .collect();
    assert_eq!(
        closed,
        [(
            "forkpool_pool_connections_closed_total{slot=\"1\",database=\"main\",reason=\"ping\"}",
            1.0
        )],
        "{text}"
    );
    assert_eq!(
        pool_series.len(),
        11,
        "a pool series unaccounted for:\n{text}"
    );
    assert!(
        !text.contains("forkpool_durable_") && !text.contains("forkpool_queue_jobs"),
        "durable series with durable jobs off:\n{text}"
    );

    let both = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["status", "--prometheus", "--json", "--socket"])
        .arg(&service.socket)
        .output()
        .unwrap();
    assert_eq!(
        both.status.code(),
        Some(2),
        "--json and --prometheus together"
    );

    // Not under journald, not a terminal: plain lines, no priority prefix, no colour.
    let logs = service.logs();
    assert!(!logs.contains('\x1b'), "colour in a pipe:\n{logs}");
    assert!(
        !logs.starts_with('<'),
        "a journald prefix without JOURNAL_STREAM:\n{logs}"
    );
}

/// `status` of a durable service after one durable job ran, in its own queue: the table shows
/// the queue's line and this host's, the Prometheus text the durable series with their labels.
#[test]
fn status_shows_the_durable_queue_and_this_host_as_table_and_prometheus() {
    let service = Service::start(
        ServiceOptions::on(Cluster::shared())
            .durable()
            .queue_key("poll_interval", "\"100ms\""),
    );
    service.wait_for_log("queue ready", 1);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let queue = format!("status-{}-{nanos}", std::process::id());
    let mut client = service.client();
    let enqueued = client.request(json!({
        "id": 1, "op": "enqueue", "job": "add", "args": {"a": 1}, "queue": queue,
    }));
    let job_id = enqueued["result"]["job_id"].clone();
    let ended =
        client.request(json!({"id": 2, "op": "result", "job_id": job_id, "wait_ms": 30000}));
    assert_eq!(ended["result"]["state"], "completed", "{ended}");

    // The keeper counts the queues every 2 s: wait for a count that has the job completed,
    // and for this host's heartbeat.
    // This host is the one named by this service's socket (`hostname:socket path`).
    let identity_ends = format!(":{}", service.socket.display());
    let this_host = |host: &Value| {
        host["host"]
            .as_str()
            .is_some_and(|identity| identity.ends_with(&identity_ends))
    };
    let queue_of = |status: &Value| {
        status["durable"]["queues"]
            .as_array()
            .and_then(|queues| queues.iter().find(|q| q["queue"] == queue.as_str()))
            .cloned()
            .unwrap_or(Value::Null)
    };
    let status = service.wait_for_status("the completed job counted, this host seen", |status| {
        queue_of(status)["completed"] == 1
            && status["durable"]["hosts"]
                .as_array()
                .is_some_and(|hosts| hosts.iter().any(this_host))
    });
    let host = status["durable"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|host| this_host(host))
        .unwrap()
        .clone();

    let table = status_output(&service, "--table");
    assert!(
        table.contains("\ndurable jobs: ready — database main, 0 running here\n"),
        "{table}"
    );
    let fields_of = |first: &str| -> Vec<String> {
        table
            .lines()
            .find(|line| line.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no line for {first}:\n{table}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // available, scheduled, running, completed, discarded, cancelled, then the oldest
    // available job's age: none waits.
    let queue_line = fields_of(&queue);
    assert_eq!(
        queue_line[1..],
        ["0", "0", "0", "1", "0", "0", "0.0", "s"],
        "{table}"
    );
    let host_line = fields_of(host["host"].as_str().unwrap());
    assert_eq!(host_line[1], host["instance"].to_string(), "{table}");
    assert_eq!(host_line[2], host["hostname"].as_str().unwrap(), "{table}");
    assert_eq!(host_line[3], host["pid"].to_string(), "{table}");
    assert_eq!(host_line.last().map(String::as_str), Some("ago"), "{table}");
    let counts = table
        .lines()
        .skip_while(|line| !line.starts_with("enqueued "))
        .nth(1)
        .unwrap_or_else(|| panic!("no totals:\n{table}"));
    assert_eq!(
        counts.split_whitespace().collect::<Vec<_>>(),
        ["1", "1", "1", "0", "0", "0", "0", "0", "0"],
        "enqueued, claimed, completed; no retry, discard, cancel, release, loss or rescue:\n{table}"
    );

    let text = status_output(&service, "--prometheus");
    let (samples, types) = parse_exposition(&text);
    assert_eq!(types["forkpool_queue_jobs"], "gauge");
    assert_eq!(types["forkpool_queue_oldest_available_seconds"], "gauge");
    assert_eq!(types["forkpool_durable_jobs_total"], "counter");
    assert_eq!(types["forkpool_durable_ready"], "gauge");
    assert_eq!(types["forkpool_queue_hosts"], "gauge");
    for (state, count) in [
        ("available", 0.0),
        ("scheduled", 0.0),
        ("running", 0.0),
        ("completed", 1.0),
        ("discarded", 0.0),
        ("cancelled", 0.0),
    ] {
        let series = format!("forkpool_queue_jobs{{queue=\"{queue}\",state=\"{state}\"}}");
        assert_eq!(samples.get(&series), Some(&count), "{series}:\n{text}");
    }
    let oldest = format!("forkpool_queue_oldest_available_seconds{{queue=\"{queue}\"}}");
    assert_eq!(samples.get(&oldest), Some(&0.0), "{text}");
    for (outcome, count) in [
        ("enqueued", 1.0),
        ("claimed", 1.0),
        ("completed", 1.0),
        ("retried", 0.0),
        ("discarded", 0.0),
        ("cancelled", 0.0),
        ("released", 0.0),
        ("lost", 0.0),
        ("rescued", 0.0),
    ] {
        let series = format!("forkpool_durable_jobs_total{{outcome=\"{outcome}\"}}");
        assert_eq!(samples.get(&series), Some(&count), "{series}:\n{text}");
    }
    assert_eq!(samples["forkpool_durable_ready"], 1.0, "{text}");
    // Other tests' services share the database: at least this one.
    assert!(samples["forkpool_queue_hosts"] >= 1.0, "{text}");
}

// ---- journald ------------------------------------------------------------------------------

#[test]
fn under_journald_every_line_carries_its_syslog_priority() {
    let mut options = ServiceOptions::on(Cluster::shared());
    options
        .env
        .push(("JOURNAL_STREAM".to_string(), "1:1".to_string()));
    let mut service = Service::start(options);
    // At workers.count already: SIGTTOU is refused with a warning.
    service.signal(Signal::SIGTTOU);
    service.wait_for_log("SIGTTOU", 1);
    service.signal(Signal::SIGTERM);
    assert!(service.wait_exit().success());
    let logs = service.logs();
    for line in logs.lines() {
        let priority = line
            .strip_prefix('<')
            .and_then(|rest| rest.split_once('>'))
            .map(|(n, _)| n);
        assert!(
            matches!(priority, Some("3" | "4" | "6" | "7")),
            "no syslog priority: {line:?}\nlogs:\n{logs}"
        );
        assert!(!line.contains('\x1b'), "colour: {line:?}");
    }
    assert!(
        logs.lines()
            .any(|l| l.starts_with("<6>") && l.contains("ready")),
        "logs:\n{logs}"
    );
    assert!(
        logs.lines().any(|l| l.starts_with("<4>SIGTTOU")),
        "logs:\n{logs}"
    );
    assert!(!logs.contains("[20"), "a timestamp under journald:\n{logs}");
}
