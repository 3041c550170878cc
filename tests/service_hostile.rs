//! Hostile input and access control against the real binary: whatever arrives on the socket,
//! forkpool answers clearly, keeps serving everyone else, and lets in only who is allowed.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::{json, Value};
use support::{Cluster, Service, ServiceOptions, APP_PASSWORD, EVENT_TIMEOUT};

const NOTE: &str = r#"
sql = [
  "INSERT INTO notes (body) VALUES (:body)",
  "SELECT body FROM notes WHERE body = :body",
]
[params]
body = "text"
"#;

fn notes_service(cluster: &Cluster) -> Service {
    cluster.execute(
        "CREATE TABLE IF NOT EXISTS notes (id serial PRIMARY KEY, body text); \
         ALTER TABLE notes OWNER TO app",
    );
    Service::start(ServiceOptions::on(cluster).job("note", NOTE))
}

#[test]
fn sql_looking_arguments_are_stored_verbatim_never_spliced() {
    let cluster = Cluster::shared();
    let service = notes_service(cluster);
    for body in [
        "'); DROP TABLE notes; --",
        "$1",
        ":body",
        "back\\slash \\' \\\\",
        "\"quoted\" 'single' `tick`",
        "$$ dollar $$ $tag$ x $tag$",
        "/* comment */ -- line",
        "ünïcødé ✓",
    ] {
        let answer = service.submit("note", json!({"body": body}));
        assert_eq!(answer["ok"], true, "{body:?}: {answer}");
        assert_eq!(answer["result"]["rows"][0]["body"], body);
        let stored = cluster.query(&format!(
            "SELECT count(*) FROM notes WHERE body = {}",
            quote_literal(body)
        ));
        assert_ne!(stored[0][0].as_deref(), Some("0"), "{body:?} not stored");
    }
    assert!(cluster
        .query_value("SELECT to_regclass('notes')::text")
        .is_some());
    let answer = service.submit("note", json!({"body": "nul\u{0}byte"}));
    assert_eq!(answer["error"]["kind"], "invalid_args", "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`body`"));
}

/// A literal for the test's own check query (standard_conforming_strings is on).
fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[test]
fn garbage_partial_lines_and_floods_never_stop_a_well_behaved_client() {
    let cluster = Cluster::shared();
    let service =
        Service::start(ServiceOptions::on(cluster).service_key("max_request_bytes", "65536"));
    raise_descriptor_limit();
    let mut good = service.client();
    let check = |good: &mut support::Client, i: i64| {
        let answer = good.request(json!({"id": i, "op": "run", "job": "add", "args": {"a": i}}));
        assert_eq!(answer["result"]["rows"][0]["sum"], i + 1, "{answer}");
    };
    let mut rng = fastrand::Rng::with_seed(42);
    for round in 0..30 {
        let mut bad = UnixStream::connect(&service.socket).unwrap();
        let garbage: Vec<u8> = (0..rng.usize(1..4096)).map(|_| rng.u8(..)).collect();
        let _ = bad.write_all(&garbage);
        if round % 3 == 0 {
            let _ = bad.write_all(b"\n");
        }
        if round % 5 == 0 {
            // A partial request, then the client vanishes.
            let _ = bad.write_all(br#"{"id":1,"op":"run","job":"add","ar"#);
        }
        drop(bad);
        check(&mut good, round);
    }
    // A line far over the limit: answered too_large and closed, nothing else disturbed.
    let mut huge = UnixStream::connect(&service.socket).unwrap();
    let _ = huge.write_all(&vec![b'x'; 1024 * 1024]);
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.contains("too_large"), "{answer:?}");
    check(&mut good, 100);
    // Deeply nested JSON and duplicate keys are bad requests, not crashes.
    let deep = format!(
        "{{\"id\":\"deep\",\"op\":\"run\",\"job\":\"add\",\"args\":{{\"a\":{}1{}}}}}\n",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    good.send_raw(deep.as_bytes());
    assert_eq!(good.recv().unwrap()["error"]["kind"], "bad_request");
    good.send_raw(b"{\"id\":\"dup\",\"op\":\"run\",\"job\":\"add\",\"args\":{\"a\":1,\"a\":2}}\n");
    let answer = good.recv().unwrap();
    assert_eq!(answer["error"]["kind"], "bad_request", "{answer}");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("duplicate key `a`"));
    good.send_raw(b"{\"id\":\"big\",\"op\":\"run\",\"job\":\"add\",\"args\":{\"a\":1e400}}\n");
    assert_eq!(good.recv().unwrap()["error"]["kind"], "bad_request");
    // A thousand idle connections at once; the good client is still served, and the
    // master's memory stays small (a generous bound: it is about 7 MiB when idle).
    let crowd: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&service.socket).unwrap())
        .collect();
    check(&mut good, 200);
    let rss = resident_bytes(service.pid().as_raw());
    assert!(
        rss < 64 * 1024 * 1024,
        "the master holds {rss} bytes with 1000 clients"
    );
    for (i, mut c) in crowd.into_iter().enumerate().step_by(97) {
        c.write_all(format!("{{\"id\":{i},\"op\":\"ping\"}}\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        let mut byte = [0u8; 1];
        while c.read(&mut byte).unwrap() == 1 && byte[0] != b'\n' {
            line.push(byte[0] as char);
        }
        let answer: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(answer["result"]["pong"], true);
    }
    check(&mut good, 300);
}

/// VmRSS of a process, from /proc.
fn resident_bytes(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"));
    kib * 1024
}

/// Reads until EOF, failing the test if the service holds the connection open past
/// `EVENT_TIMEOUT`; returns what was read.
fn read_until_closed(stream: &mut UnixStream) -> String {
    stream.set_read_timeout(Some(EVENT_TIMEOUT)).unwrap();
    let mut text = String::new();
    match stream.read_to_string(&mut text) {
        Ok(_) => text,
        Err(e) => panic!("the service did not close the connection ({e}); read {text:?}"),
    }
}

#[test]
fn idle_clients_are_closed_but_never_while_a_job_is_in_flight() {
    let cluster = Cluster::shared();
    let service =
        Service::start(ServiceOptions::on(cluster).service_key("client_idle_timeout", "\"1s\""));
    // A half line, then silence.
    let mut stalled = UnixStream::connect(&service.socket).unwrap();
    stalled.write_all(br#"{"id":1,"op":"pi"#).unwrap();
    // A job that outlasts the idle timeout: its client sends nothing while it runs.
    let mut waiting = service.client();
    waiting.send(json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 2.5}}));
    assert_eq!(read_until_closed(&mut stalled), "");
    service.wait_for_log("nothing received for 1s (service.client_idle_timeout)", 1);
    let answer = waiting.recv().expect("closed while its job was in flight");
    assert_eq!(answer["result"]["rows"][0]["slept"], 2.5, "{answer}");
    // Answered, and then idle itself: closed in turn.
    assert!(waiting.recv().is_none(), "still open after its answer");
    service.wait_for_log("service.client_idle_timeout", 2);
    // A client that keeps talking is served throughout.
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}

#[test]
fn connections_past_max_clients_are_refused_and_slots_come_back() {
    let cluster = Cluster::shared();
    let service = Service::start(ServiceOptions::on(cluster).service_key("max_clients", "5"));
    let mut held: Vec<support::Client> = (0..5)
        .map(|i| {
            let mut client = service.client();
            let answer = client.request(json!({"id": i, "op": "ping"}));
            assert_eq!(answer["result"]["pong"], true, "{answer}");
            client
        })
        .collect();
    // The sixth is told why, then closed, without having sent anything.
    let mut sixth = UnixStream::connect(&service.socket).unwrap();
    let text = read_until_closed(&mut sixth);
    let refusal: Value = serde_json::from_str(text.trim_end()).unwrap_or_else(|e| {
        panic!("one answer line expected ({e}): {text:?}");
    });
    assert_eq!(refusal["error"]["kind"], "too_many_clients", "{refusal}");
    assert!(refusal["error"]["message"]
        .as_str()
        .unwrap()
        .contains("service.max_clients = 5"));
    for (i, client) in held.iter_mut().enumerate() {
        let i = i as i64;
        let answer = client.request(json!({"id": i, "op": "run", "job": "add", "args": {"a": i}}));
        assert_eq!(answer["result"]["rows"][0]["sum"], i + 1, "{answer}");
    }
    // One leaves. A request answered on another connection afterwards means the master
    // has seen the hang-up (both were readable in the same turn or it came first).
    drop(held.remove(0));
    let answer = held[0].request(json!({"id": "after", "op": "ping"}));
    assert_eq!(answer["result"]["pong"], true);
    let answer = service.submit("add", json!({"a": 41}));
    assert_eq!(answer["result"]["rows"][0]["sum"], 42, "{answer}");
}

fn raise_descriptor_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
}

#[test]
fn passwords_never_appear_in_trace_logs_or_status() {
    let cluster = Cluster::shared();
    let mut options = ServiceOptions::on(cluster);
    options.env.push(("RUST_LOG".into(), "trace".into()));
    let service = Service::start(options);
    assert_eq!(service.submit("add", json!({"a": 918_273_645}))["ok"], true);
    let status = service.status().to_string();
    assert!(!status.contains(APP_PASSWORD), "status shows the password");
    // A failing connection attempt's error must not show it either.
    let logs = service.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(!logs.contains(APP_PASSWORD), "the logs show the password");
    // Nor the job's arguments (tokio_postgres would log bind parameters at debug).
    assert!(
        !logs.contains("918273645"),
        "the logs show a job's arguments"
    );
    // The harness's url carries the password: `check` warns while others may read the file.
    let set_mode = |mode| {
        std::fs::set_permissions(&service.config, std::fs::Permissions::from_mode(mode)).unwrap()
    };
    set_mode(0o644);
    let printed = run_check(&service);
    assert!(printed.contains("********"), "{printed}");
    assert!(
        !printed.contains(APP_PASSWORD),
        "check shows the password: {printed}"
    );
    assert!(
        printed.contains("(mode 0644) is readable by every user and holds a password")
            && printed.contains("chmod 600"),
        "{printed}"
    );
    set_mode(0o600);
    let printed = run_check(&service);
    assert!(printed.contains("ok"), "{printed}");
    assert!(!printed.contains("warning"), "{printed}");
}

/// `forkpool check` on the service's configuration: its exit code must be 0 (a warning does
/// not fail it); returns stdout and stderr.
fn run_check(service: &Service) -> String {
    let check = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["check", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(0), "{printed}");
    printed.into_owned()
}

/// Runs `forkpool submit` as uid 65534 (nobody) against the service.
fn submit_as_nobody(service: &Service) -> (i32, String) {
    submit_as(service, 65534, 65534)
}

/// Runs `forkpool submit` as `uid` with the primary group `gid` (and no supplementary
/// groups) against the service.
fn submit_as(service: &Service, uid: u32, gid: u32) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["submit", "--socket"])
        .arg(&service.socket)
        .args(["add", r#"{"a": 1}"#])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The socket's directory and the socket itself opened to everyone, so that only the uid
/// check stands between another user and the service.
fn open_socket_to_everyone(service: &Service) {
    for dir in [service.dir.path(), &service.dir.path().join("config")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn only_allowed_uids_may_use_the_service() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot run a client as another uid; the uid check is not tested here");
        return;
    }
    let cluster = Cluster::shared();
    let service = Service::start(
        ServiceOptions::on(cluster)
            .service_key("socket_mode", "\"0666\"")
            .service_key("allowed_uids", "[4242]"),
    );
    open_socket_to_everyone(&service);
    let (code, answer) = submit_as_nobody(&service);
    assert_eq!(code, 1, "{answer}");
    assert!(answer.contains("forbidden"), "{answer}");
    // The service's own uid is always allowed.
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);

    let service = Service::start(
        ServiceOptions::on(cluster)
            .service_key("socket_mode", "\"0666\"")
            .service_key("allowed_uids", "[65534]"),
    );
    open_socket_to_everyone(&service);
    let (code, answer) = submit_as_nobody(&service);
    assert_eq!(code, 0, "{answer}");
}

#[test]
fn a_listed_primary_gid_admits_a_peer_whose_uid_is_not_listed() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot run a client as another gid; the gid check is not tested here");
        return;
    }
    let cluster = Cluster::shared();
    let service = Service::start(
        ServiceOptions::on(cluster)
            .service_key("socket_mode", "\"0666\"")
            .service_key("allowed_uids", "[4242]")
            .service_key("allowed_gids", "[4243]"),
    );
    open_socket_to_everyone(&service);
    let (code, answer) = submit_as(&service, 65534, 4243);
    assert_eq!(code, 0, "{answer}");
    let (code, answer) = submit_as(&service, 65534, 65534);
    assert_eq!(code, 1, "{answer}");
    assert!(answer.contains("forbidden"), "{answer}");
    assert!(
        answer.contains("service.allowed_uids") && answer.contains("service.allowed_gids"),
        "{answer}"
    );
    service.wait_for_log("refused client pid", 1);
}
