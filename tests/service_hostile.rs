//! Hostile input and access control against the real binary: whatever arrives on the socket,
//! forkpool answers clearly, keeps serving everyone else, and lets in only who is allowed.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use serde_json::{json, Value};
use support::{Cluster, Service, ServiceOptions, APP_PASSWORD};

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
    // A thousand idle connections at once; the good client is still served.
    let crowd: Vec<UnixStream> = (0..1000)
        .map(|_| UnixStream::connect(&service.socket).unwrap())
        .collect();
    check(&mut good, 200);
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
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
    let status = service.status().to_string();
    assert!(!status.contains(APP_PASSWORD), "status shows the password");
    // A failing connection attempt's error must not show it either.
    let logs = service.logs();
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was on"
    );
    assert!(!logs.contains(APP_PASSWORD), "the logs show the password");
    let check = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["check", "--config"])
        .arg(&service.config)
        .output()
        .unwrap();
    let printed = String::from_utf8_lossy(&check.stdout) + String::from_utf8_lossy(&check.stderr);
    assert!(printed.contains("********"), "{printed}");
    assert!(
        !printed.contains(APP_PASSWORD),
        "check shows the password: {printed}"
    );
}

/// Runs `forkpool submit` as uid 65534 (nobody) against the service.
fn submit_as_nobody(service: &Service) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(["submit", "--socket"])
        .arg(&service.socket)
        .args(["add", r#"{"a": 1}"#])
        .uid(65534)
        .gid(65534)
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
