//! What the service logs about jobs: the access line per job (`workers.log_jobs`), the
//! slow-job warning (`workers.slow_job`) and JSON lines (`--log-format json`), read from
//! the real binary's stderr.

mod support;

use serde_json::{json, Value};
use support::{Cluster, Service, ServiceOptions};

/// `SELECT 10 / :d`: `d = 0` fails with `db_error` on the worker.
const DIVIDE: &str = r#"
sql = "SELECT 10 / :d AS q"
[params]
d = "int4"
"#;

/// An argument value no log line may carry.
const SECRET: i64 = 7_654_321_987;

fn lines_with<'a>(logs: &'a str, needle: &str) -> Vec<&'a str> {
    logs.lines().filter(|line| line.contains(needle)).collect()
}

#[test]
fn each_answered_job_gets_one_access_line_with_its_fields_and_never_its_arguments() {
    let cluster = Cluster::shared();
    let service = Service::start(
        ServiceOptions::on(cluster)
            .job("divide", DIVIDE)
            .worker_key("log_jobs", "true"),
    );
    let answer = service.submit("add", json!({"a": SECRET, "b": 1}));
    assert_eq!(answer["ok"], true, "{answer}");
    let answer = service.submit("divide", json!({"d": 0}));
    assert_eq!(answer["ok"], false, "{answer}");
    service.wait_for_log("job=divide", 1);
    let logs = service.logs();
    let uid = nix::unistd::geteuid().as_raw();

    let add = lines_with(&logs, "job=add");
    assert_eq!(add.len(), 1, "{logs}");
    for field in [
        "outcome=ok",
        "elapsed_ms=",
        "wait_ms=",
        "run_ms=",
        "worker=",
        &format!("uid={uid}"),
    ] {
        assert!(add[0].contains(field), "{field} missing from {:?}", add[0]);
    }
    assert!(!add[0].contains("worker=-"), "{:?}", add[0]);
    let divide = lines_with(&logs, "job=divide");
    assert!(divide[0].contains("outcome=db_error"), "{:?}", divide[0]);
    assert!(
        !logs.contains(&SECRET.to_string()),
        "an argument was logged:\n{logs}"
    );
}

#[test]
fn a_job_past_slow_job_is_warned_about_once_and_a_fast_one_not_at_all() {
    let cluster = Cluster::shared();
    // Two seconds: far above an `add`, even a worker's first (which opens its connection,
    // TLS included) on a loaded machine; well below the sleep.
    let service = Service::start(ServiceOptions::on(cluster).worker_key("slow_job", "\"2s\""));
    let answer = service.submit("add", json!({"a": 1}));
    assert_eq!(answer["ok"], true, "{answer}");
    let answer = service.submit("sleep", json!({"seconds": 3}));
    assert_eq!(answer["ok"], true, "{answer}");
    // The warning came while the job ran, so it is in the logs by its answer.
    let logs = service.logs();
    let slow = lines_with(&logs, "slow job:");
    assert_eq!(slow.len(), 1, "one warning, for the sleep:\n{logs}");
    assert!(slow[0].contains("slow job: sleep"), "{:?}", slow[0]);
    assert!(slow[0].contains("on worker"), "{:?}", slow[0]);
    assert!(slow[0].contains("workers.slow_job = 2s"), "{:?}", slow[0]);
    // Warned at the threshold, not at the answer: it had run 2 s to 3 s.
    let ran = slow[0]
        .split("has run for ")
        .nth(1)
        .and_then(|rest| rest.split(" on worker").next())
        .and_then(|text| humantime::parse_duration(text).ok())
        .unwrap_or_else(|| panic!("no duration in {:?}", slow[0]));
    assert!(
        ran.as_millis() >= 2000 && ran.as_millis() < 2900,
        "{:?}",
        slow[0]
    );
    // log_jobs is off by default: no access lines.
    assert!(lines_with(&logs, "job=add").is_empty(), "{logs}");
}

#[test]
fn json_log_lines_each_parse_with_ts_level_target_and_message() {
    let cluster = Cluster::shared();
    let mut options = ServiceOptions::on(cluster).worker_key("log_jobs", "true");
    options
        .env
        .push(("FORKPOOL_LOG_FORMAT".into(), "json".into()));
    // RUST_LOG says warn; --log-level (here its variable) says info, and wins.
    options.env.push(("RUST_LOG".into(), "warn".into()));
    options
        .env
        .push(("FORKPOOL_LOG_LEVEL".into(), "info".into()));
    let service = Service::start(options);
    let answer = service.submit("add", json!({"a": SECRET}));
    assert_eq!(answer["ok"], true, "{answer}");
    service.wait_for_log("job=add", 1);
    let logs = service.logs();
    let lines: Vec<Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
        })
        .collect();
    for line in &lines {
        for key in ["ts", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
    }
    let access: Vec<&Value> = lines
        .iter()
        .filter(|line| line["target"] == "forkpool::access")
        .collect();
    assert_eq!(access.len(), 1, "{logs}");
    assert_eq!(access[0]["level"], "INFO");
    assert!(
        access[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("job=add "),
        "{}",
        access[0]
    );
    assert!(lines
        .iter()
        .any(|line| line["message"].as_str().unwrap().contains("ready")));
    assert!(
        !logs.contains(&SECRET.to_string()),
        "an argument was logged:\n{logs}"
    );
}
