//! The `forkpool` binary as processes: what the master and its workers hold (threads,
//! descriptors, signal dispositions), how the service stops, how it claims its socket, and
//! what the command line says and returns (DESIGN §2, §4, §8).
//!
//! Everything here runs the real binary against a real PostgreSQL cluster and looks at the
//! processes through /proc.

mod support;

use std::collections::HashSet;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};

use support::procfs::{descriptors, socket_inodes, tcp_inodes, thread_count};
use support::{forkpool_command, Client, Cluster, Service, ServiceOptions};

// ---- /proc helpers -------------------------------------------------------------------------

/// The targets of descriptors 3 and up that are sockets or pipes: what a worker must not
/// share with the master.
fn shareable_objects(pid: i32) -> HashSet<String> {
    descriptors(pid)
        .into_iter()
        .filter(|(fd, target)| {
            *fd > 2 && (target.starts_with("socket:[") || target.starts_with("pipe:["))
        })
        .map(|(_, target)| target)
        .collect()
}

/// A signal mask line of /proc/PID/status (`SigCgt`, `SigIgn`, ...).
fn signal_mask(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

/// The bit of `signal` in a /proc signal mask.
fn bit(signal: Signal) -> u64 {
    1 << (signal as i32 - 1)
}

/// glibc's reserved real-time signals 32 and 33 in a /proc signal mask.
const GLIBC_SIGCANCEL: u64 = 1 << 31;
const GLIBC_SIGSETXID: u64 = 1 << 32;

// ---- command line helpers ------------------------------------------------------------------

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn socket_arg(service: &Service) -> &str {
    service.socket.to_str().expect("a UTF-8 socket path")
}

// ---- tests ---------------------------------------------------------------------------------

#[test]
fn master_runs_one_thread_and_holds_no_database_connection() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    for a in 1..=4 {
        let answer = service.submit("add", json!({ "a": a }));
        assert_eq!(answer["ok"], true, "add failed: {answer}");
        assert_eq!(answer["result"]["rows"][0]["sum"], a + 1);
    }

    // A job in flight while we look: the sleep and a status pipelined on one connection. The
    // status is answered in the turn that read both, and that turn ends by dispatching the
    // sleep, so from then on `status` shows it running on a worker.
    let mut sleeper = Client::connect(&service.socket);
    sleeper.send(json!({"id": "sleep", "op": "run", "job": "sleep", "args": {"seconds": 2}}));
    sleeper.send(json!({"id": "status", "op": "status"}));
    let first = sleeper.recv().expect("an answer");
    assert_eq!(first["id"], "status", "the sleep answered first: {first}");
    let status = service.status();
    let busy: Vec<i32> = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["current"].as_array().is_some_and(|c| !c.is_empty()))
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    assert_eq!(
        busy.len(),
        1,
        "exactly one worker should run the sleep: {status}"
    );

    let master = service.pid().as_raw();
    assert_eq!(thread_count(master), 1, "the master must run one thread");
    let tcp = tcp_inodes();
    let master_tcp: Vec<u64> = socket_inodes(master).intersection(&tcp).copied().collect();
    assert!(
        master_tcp.is_empty(),
        "the master holds TCP sockets {master_tcp:?}; descriptors: {:?}",
        descriptors(master)
    );
    // The same check finds the database connection of the worker running the sleep.
    let worker_tcp: Vec<u64> = socket_inodes(busy[0]).intersection(&tcp).copied().collect();
    assert!(
        !worker_tcp.is_empty(),
        "the worker running the sleep holds no TCP socket; descriptors: {:?}",
        descriptors(busy[0])
    );

    let slept = sleeper.recv().expect("the sleep's answer");
    assert_eq!(slept["id"], "sleep");
    assert_eq!(slept["ok"], true, "sleep failed: {slept}");
}

#[test]
fn worker_starts_with_a_clean_process_state() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let master = service.pid().as_raw();
    let workers: Vec<Value> = service.status()["workers"].as_array().unwrap().clone();
    assert_eq!(workers.len(), 2);

    let master_objects = shareable_objects(master);
    // What the worker could have inherited is there: the listening socket, one channel per
    // worker and both ends of the signal self-pipe (a socket pair). Pipes the test runner
    // may have passed down are not counted on: they differ between machines.
    let master_sockets = master_objects
        .iter()
        .filter(|t| t.starts_with("socket:["))
        .count();
    assert!(
        master_sockets >= 1 + workers.len() + 2,
        "the master should hold the listener, {} worker channels and the signal pipe: {:?}",
        workers.len(),
        descriptors(master)
    );
    let master_caught = signal_mask(master, "SigCgt");
    for signal in [Signal::SIGTERM, Signal::SIGHUP, Signal::SIGCHLD] {
        assert_ne!(
            master_caught & bit(signal),
            0,
            "the master does not catch {signal}: SigCgt {master_caught:x}"
        );
    }

    for worker in &workers {
        let pid = worker["pid"].as_i64().unwrap() as i32;
        let slot = worker["slot"].as_u64().unwrap();
        let shared: Vec<String> = shareable_objects(pid)
            .intersection(&master_objects)
            .cloned()
            .collect();
        assert!(
            shared.is_empty(),
            "worker {slot} (pid {pid}) shares {shared:?} with the master; worker: {:?}; master: {:?}",
            descriptors(pid),
            descriptors(master)
        );
        // glibc installs its own handler for its reserved signal 33 (SIGSETXID, for setuid
        // across threads) on the first pthread_create, in every threaded process; 32
        // (SIGCANCEL) is its other one. No other signal may have a handler.
        let caught = signal_mask(pid, "SigCgt");
        assert_eq!(
            caught & !(GLIBC_SIGCANCEL | GLIBC_SIGSETXID),
            0,
            "worker {slot} has signal handlers (it should sigwait): SigCgt {caught:x}"
        );
        // glibc's posix_spawn sets its reserved signals to SIG_IGN in a child whose parent
        // had handlers for them, so the master may start with them ignored (the test
        // harness spawned it from a threaded process); glibc refuses any sigaction on them,
        // so no reset can change that. Every other signal must be at its default.
        let ignored = signal_mask(pid, "SigIgn");
        assert_eq!(
            ignored & !(GLIBC_SIGCANCEL | GLIBC_SIGSETXID),
            bit(Signal::SIGPIPE),
            "worker {slot} should ignore SIGPIPE and nothing else: SigIgn {ignored:x}"
        );
        assert_eq!(bit(Signal::SIGPIPE), 0x1000);
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim_end(), format!("forkpool-w{slot}"));
    }
}

#[test]
fn graceful_stop_on_sigterm_with_nothing_in_flight() {
    let mut service = Service::start(ServiceOptions::on(Cluster::shared()));
    let workers = service.worker_pids();
    assert_eq!(workers.len(), 2);
    assert!(service.socket.exists());

    service.signal(Signal::SIGTERM);
    let status = service.wait_exit();
    assert_eq!(status.code(), Some(0), "logs:\n{}", service.logs());
    assert!(
        !service.socket.exists(),
        "the socket file is still there after a graceful stop"
    );
    // The master reaps every worker before it exits, so they are gone already, not zombies
    // waiting to be reaped (they were never our children: we could not waitpid them).
    for pid in workers {
        assert_eq!(
            kill(Pid::from_raw(pid), None),
            Err(Errno::ESRCH),
            "worker {pid} outlived the master; logs:\n{}",
            service.logs()
        );
    }
}

#[test]
fn a_live_service_keeps_its_socket_and_a_stale_one_is_replaced() {
    let cluster = Cluster::shared();
    let mut first = Service::start(ServiceOptions::on(cluster));
    let socket = first.socket.clone();
    let socket_toml = format!("{:?}", socket.to_str().unwrap());

    let mut second =
        Service::spawn(ServiceOptions::on(cluster).service_key("socket", &socket_toml));
    let refused = second.wait_exit();
    assert_eq!(refused.code(), Some(2), "logs:\n{}", second.logs());
    // The process has exited; its last stderr line may still be on its way to the reader.
    second.wait_for_log("another forkpool is already serving at", 1);
    // The refusal did not take the socket from the live service.
    assert_eq!(first.submit("add", json!({"a": 1}))["ok"], true);

    first.signal(Signal::SIGKILL);
    let killed = first.wait_exit();
    assert_eq!(killed.signal(), Some(Signal::SIGKILL as i32));
    assert!(socket.exists(), "a killed master leaves its socket file");

    let third = Service::start(ServiceOptions::on(cluster).service_key("socket", &socket_toml));
    assert!(
        third.logs().contains("removing stale socket"),
        "logs:\n{}",
        third.logs()
    );
    let answer = Client::connect(&socket)
        .request(json!({"id": 1, "op": "run", "job": "add", "args": {"a": 1}}));
    assert_eq!(
        answer["ok"],
        true,
        "answer: {answer}; logs:\n{}",
        third.logs()
    );
    assert_eq!(answer["result"]["rows"][0]["sum"], 2);
}

#[test]
fn check_reports_every_config_problem_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    let workers_dir = dir.path().join("workers");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::create_dir_all(&workers_dir).unwrap();
    let config = config_dir.join("forkpool.toml");
    std::fs::write(
        &config,
        "[service]\nsokcet = \"x.sock\"\nshutdown_timeout = \"soon\"\n\n\
         [workers]\ncuont = 3\n\n[databases.main]\nurl = \"host=localhost\"\n",
    )
    .unwrap();
    std::fs::write(
        workers_dir.join("bad_type.toml"),
        "sql = \"SELECT :x AS x\"\n\n[params]\nx = \"integer-ish\"\n",
    )
    .unwrap();

    let output = forkpool_command(&["check", "--config", config.to_str().unwrap()]);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "stderr:\n{err}");
    for needle in [
        "forkpool.toml",
        "service.sokcet",
        "workers.cuont",
        "service.shutdown_timeout",
        "bad_type.toml",
        "params.x",
        "integer-ish",
    ] {
        assert!(
            err.contains(needle),
            "stderr does not name {needle:?}:\n{err}"
        );
    }
}

#[test]
fn submit_to_a_missing_socket_says_the_service_is_not_running() {
    let missing = forkpool_command(&[
        "submit",
        "--socket",
        "/nonexistent/x.sock",
        "add",
        r#"{"a":1}"#,
    ]);
    let err = stderr(&missing);
    assert_eq!(missing.status.code(), Some(3), "stderr:\n{err}");
    assert!(err.contains("cannot reach forkpool at"), "stderr:\n{err}");
    assert!(err.contains("/nonexistent/x.sock"), "stderr:\n{err}");
    assert!(err.contains("is the service running?"), "stderr:\n{err}");

    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let socket = socket_arg(&service);

    let ok = forkpool_command(&["submit", "--socket", socket, "add", r#"{"a":1}"#]);
    assert_eq!(ok.status.code(), Some(0), "stderr:\n{}", stderr(&ok));
    let answer: Value = serde_json::from_str(&stdout(&ok)).unwrap();
    assert_eq!(answer["result"]["rows"][0]["sum"], 2);

    let not_object = forkpool_command(&["submit", "--socket", socket, "add", "[1, 2]"]);
    assert_eq!(
        not_object.status.code(),
        Some(2),
        "stderr:\n{}",
        stderr(&not_object)
    );

    let failing = forkpool_command(&["submit", "--socket", socket, "no_such_job", "{}"]);
    assert_eq!(
        failing.status.code(),
        Some(1),
        "stderr:\n{}",
        stderr(&failing)
    );
    let answer: Value = serde_json::from_str(&stdout(&failing))
        .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", stdout(&failing)));
    assert_eq!(answer["ok"], false);
    assert_eq!(answer["error"]["kind"], "unknown_job", "answer: {answer}");
}

/// Holds its worker (one thread) until the service stops it: a job whose status stays put.
const HOLD: &str = r#"
timeout = "10m"
sql = "SELECT 1 AS held FROM pg_sleep(600)"
"#;

/// The fields of a table line (split on runs of spaces).
fn fields(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The lines of the table section whose header starts with `slot` and contains `column`.
fn section<'a>(table: &'a str, column: &str) -> (Vec<&'a str>, Vec<&'a str>) {
    let mut lines = table
        .lines()
        .skip_while(|line| !(line.trim_start().starts_with("slot") && line.contains(column)));
    let header = lines
        .next()
        .unwrap_or_else(|| panic!("no section with {column:?}:\n{table}"));
    let rows = lines.take_while(|line| !line.trim().is_empty()).collect();
    (fields(header), rows)
}

#[test]
fn status_prints_a_table_and_json() {
    let mut service = Service::start(ServiceOptions::on(Cluster::shared()).job("hold", HOLD));
    let socket = socket_arg(&service).to_string();
    let finished = 3;
    for a in 0..finished {
        assert_eq!(service.submit("add", json!({"a": a}))["ok"], true);
    }
    // Both workers (one thread each) held by a job, one more job queued behind them: every
    // number in the status stays put until the service stops.
    let mut client = service.client();
    client.send(json!({"id": "hold-1", "op": "run", "job": "hold"}));
    client.send(json!({"id": "hold-2", "op": "run", "job": "hold"}));
    client.send(json!({"id": "queued", "op": "run", "job": "add", "args": {"a": 1}}));
    // RSS and pools come with a heartbeat: wait for one that saw the hold.
    service.wait_for_status("both workers held, a heartbeat from each", |status| {
        status["queue"]["depth"] == 1
            && status["workers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|w| w["rss_bytes"].as_u64() > Some(0) && w["pools"]["main"]["in_use"] == 1)
    });

    let json_output = forkpool_command(&["status", "--socket", &socket, "--json"]);
    assert_eq!(json_output.status.code(), Some(0));
    let status: Value = serde_json::from_str(&stdout(&json_output))
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", stdout(&json_output)));
    assert_eq!(
        status["totals"],
        json!({"accepted": finished + 3, "succeeded": finished, "failed": 0, "worker_lost": 0}),
        "status: {status:#}"
    );
    assert_eq!(status["running"], 2, "status: {status:#}");
    assert_eq!(status["queue"]["depth"], 1, "status: {status:#}");
    let workers = status["workers"].as_array().expect("a workers array");
    assert_eq!(workers.len(), 2, "status: {status:#}");
    let done: u64 = workers
        .iter()
        .map(|w| w["jobs_done"].as_u64().unwrap())
        .sum();
    assert_eq!(done, finished, "status: {status:#}");
    for worker in workers {
        assert_eq!(worker["state"], "busy", "{worker:#}");
        assert_eq!(worker["restarts"], 0, "{worker:#}");
        assert_eq!(worker["current"].as_array().unwrap().len(), 1, "{worker:#}");
        assert_eq!(worker["current"][0]["job"], "hold", "{worker:#}");
        assert!(worker["started_at"].is_string(), "{worker:#}");
        let pool = &worker["pools"]["main"];
        for (key, value) in [
            ("size", 1),
            ("idle", 0),
            ("in_use", 1),
            ("waiting", 0),
            ("created", 1),
            ("ping_failures", 0),
            ("checkout_timeouts", 0),
        ] {
            assert_eq!(pool[key], value, "{key}: {worker:#}");
        }
        assert_eq!(pool["closed_by_reason"], json!({}), "{worker:#}");
        // Each job of the worker one checkout: the ones it finished and the hold.
        assert_eq!(pool["checkouts"], worker["jobs_done"].as_u64().unwrap() + 1);
    }

    let table_output = forkpool_command(&["status", "--socket", &socket]);
    assert_eq!(table_output.status.code(), Some(0));
    let table = stdout(&table_output);
    let expected_queue = format!(
        "queue 1/{}  running 2  accepted {}  succeeded {finished}  failed 0  worker_lost 0  ",
        status["queue"]["limit"],
        finished + 3
    );
    assert!(
        table.lines().any(|line| line.starts_with(&expected_queue)),
        "no line starting {expected_queue:?}:\n{table}"
    );

    let (header, rows) = section(&table, "pid");
    assert_eq!(
        header,
        [
            "slot", "pid", "state", "jobs", "done", "rss", "MiB", "restarts", "started", "at",
            "(UTC)", "current"
        ],
        "table:\n{table}"
    );
    assert_eq!(rows.len(), 2, "one line per worker:\n{table}");
    for worker in workers {
        let slot = worker["slot"].to_string();
        let row = rows
            .iter()
            .map(|row| fields(row))
            .find(|row| row[0] == slot)
            .unwrap_or_else(|| panic!("no line for worker {slot}:\n{table}"));
        // slot pid state jobs-done rss restarts date time job (N ms)
        assert_eq!(row.len(), 11, "{row:?}\n{table}");
        assert_eq!(row[1], worker["pid"].to_string(), "pid:\n{table}");
        assert_eq!(row[2], "busy", "state:\n{table}");
        assert_eq!(
            row[3],
            worker["jobs_done"].to_string(),
            "jobs done:\n{table}"
        );
        let rss_mib: f64 = row[4]
            .parse()
            .unwrap_or_else(|e| panic!("rss {:?} ({e}):\n{table}", row[4]));
        assert!(rss_mib > 0.0, "rss:\n{table}");
        assert_eq!(row[5], "0", "restarts:\n{table}");
        // 2026-11-21T10:11:12.345Z in the JSON, 2026-11-21 10:11:12 in the table.
        let started = worker["started_at"].as_str().unwrap();
        assert_eq!(
            format!("{}T{}", row[6], row[7]),
            started[..19],
            "started at:\n{table}"
        );
        assert_eq!(row[8], "hold", "current job:\n{table}");
        let for_ms = row[9]
            .strip_prefix('(')
            .and_then(|ms| ms.parse::<u64>().ok());
        assert!(
            for_ms.is_some(),
            "current job's time {:?}:\n{table}",
            row[9]
        );
    }

    let (header, rows) = section(&table, "database");
    assert_eq!(
        header,
        [
            "slot", "database", "size", "idle", "in", "use", "waiting", "created", "ping", "fail",
            "checkout", "timeouts", "closed", "by", "reason"
        ],
        "table:\n{table}"
    );
    let mut pool_rows: Vec<Vec<&str>> = rows.iter().map(|row| fields(row)).collect();
    pool_rows.sort();
    assert_eq!(
        pool_rows,
        [
            ["1", "main", "1", "0", "1", "0", "1", "0", "0", "none"],
            ["2", "main", "1", "0", "1", "0", "1", "0", "0", "none"],
        ],
        "one line per pool:\n{table}"
    );

    // A fast stop cancels the holds on the server, which the shared cluster would otherwise
    // keep sleeping.
    service.signal(Signal::SIGINT);
    service.wait_exit();
}

#[test]
fn check_db_reaches_each_database_and_reports_version_tls_and_the_budget() {
    let cluster = Cluster::shared();
    let service = Service::start(ServiceOptions::on(cluster));
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["check", "--db", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("PostgreSQL 1"), "{stdout}");
    assert!(stdout.contains("TLS on"), "verify-full over TCP: {stdout}");
    assert!(stdout.contains(": fits"), "{stdout}");
    assert!(stdout.contains("password=********"), "{stdout}");

    check_db_says_so_when_a_database_is_unreachable(&service);
}

/// With the database unreachable, `check --db` says so and exits 1.
fn check_db_says_so_when_a_database_is_unreachable(service: &Service) {
    let listener = support::silent_listener();
    let config = std::fs::read_to_string(&service.config).unwrap();
    let unreachable = service.dir.path().join("config/unreachable.toml");
    let mut edited = String::new();
    for line in config.lines() {
        if line.starts_with("url = ") {
            edited += &format!(
                "url = \"host=127.0.0.1 port={} user=app dbname=app sslmode=disable\"\n",
                listener.port()
            );
        } else {
            edited += line;
            edited.push('\n');
        }
    }
    edited += "checkout_timeout = \"1s\"\nconnect_timeout = \"500ms\"\n";
    std::fs::write(&unreachable, edited).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["check", "--db", "--config"])
        .arg(&unreachable)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("unreachable"), "{stdout}");
}
