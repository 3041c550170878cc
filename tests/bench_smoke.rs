//! `forkpool bench` end to end: the real binary loads a real service and reports every job.

mod support;

use std::process::Command;

use serde_json::Value;
use support::{Cluster, Service, ServiceOptions};

/// Jobs in the smoke run: enough for every client to pipeline, few enough to be quick.
const JOBS: u64 = 400;

#[test]
fn bench_runs_every_requested_job_and_reports_them_as_json() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .arg("bench")
        .arg("--socket")
        .arg(&service.socket)
        .args(["--job", "add", "--args", r#"{"a": 41}"#])
        .args(["--clients", "3", "--pipeline", "4", "--json"])
        .args(["--jobs", &JOBS.to_string()])
        .env_remove("FORKPOOL_SOCKET")
        .output()
        .expect("running forkpool bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench exited with {}\nstdout: {stdout}\nstderr: {stderr}\nservice logs:\n{}",
        output.status,
        service.logs()
    );
    let report: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("bench --json printed something that is not JSON ({e}): {stdout}")
    });
    assert_eq!(report["jobs"], JOBS, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    assert_eq!(report["job"], "add");
    let latency = &report["latency_us"];
    for key in ["p50", "p90", "p99", "max"] {
        assert!(latency[key].as_f64().is_some_and(|us| us > 0.0), "{report}");
    }
    assert!(
        latency["p50"].as_f64() <= latency["max"].as_f64(),
        "{report}"
    );
    assert!(
        report["jobs_per_second"].as_f64().is_some_and(|r| r > 0.0),
        "{report}"
    );
}

#[test]
fn bench_counts_failed_jobs_by_kind_and_exits_1() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .arg("bench")
        .arg("--socket")
        .arg(&service.socket)
        .args(["--job", "add", "--args", r#"{"a": "not a number"}"#])
        .args(["--clients", "2", "--jobs", "20", "--json"])
        .output()
        .expect("running forkpool bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("JSON");
    assert_eq!(report["jobs"], 20, "{report}");
    assert_eq!(
        report["errors"],
        serde_json::json!({"invalid_args": 20}),
        "{report}"
    );
}

/// Jobs in the durable smoke run.
const DURABLE_JOBS: u64 = 300;

/// A durable service of its own, its queue ready.
fn durable_service() -> Service {
    let service = Service::start(
        ServiceOptions::on(Cluster::shared())
            .durable()
            .queue_key("poll_interval", "\"100ms\""),
    );
    service.wait_for_log("queue ready", 1);
    service
}

/// `forkpool bench --durable` of `DURABLE_JOBS` `add` jobs (2 clients × pipeline 8) with
/// `extra` arguments; it must succeed; its JSON report.
fn durable_bench(service: &Service, extra: &[&str]) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .arg("bench")
        .arg("--socket")
        .arg(&service.socket)
        .args(["--durable", "--job", "add", "--args", r#"{"a": 41}"#])
        .args(["--clients", "2", "--pipeline", "8", "--json"])
        .args(["--jobs", &DURABLE_JOBS.to_string(), "--deadline", "60s"])
        .args(extra)
        .env_remove("FORKPOOL_SOCKET")
        .output()
        .expect("running forkpool bench --durable");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "bench --durable {extra:?} exited with {}\nstdout: {stdout}\nstderr: {stderr}\n\
         service logs:\n{}",
        output.status,
        service.logs()
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("bench --durable --json printed no JSON ({e}): {stdout}"))
}

#[test]
fn bench_durable_enqueues_burns_down_and_reports_start_latency() {
    let service = durable_service();
    let report = durable_bench(&service, &["--durable-latency", "5"]);
    assert_eq!(report["failed"], false, "{report}");
    assert!(
        report["queue"]
            .as_str()
            .is_some_and(|q| q.starts_with("bench-")),
        "{report}"
    );
    assert_eq!(report["enqueue"]["stored"], DURABLE_JOBS, "{report}");
    assert_eq!(
        report["states"],
        serde_json::json!({"completed": DURABLE_JOBS}),
        "{report}"
    );
    let positive = |value: &Value| value.as_f64().is_some_and(|x| x > 0.0);
    assert!(positive(&report["enqueue"]["jobs_per_second"]), "{report}");
    assert!(positive(&report["burn_down"]["seconds"]), "{report}");
    assert!(
        positive(&report["burn_down"]["jobs_per_second"]),
        "{report}"
    );
    let start = &report["start_latency_ms"];
    assert!(positive(&start["max"]), "{report}");
    assert!(start["p50"].as_f64() <= start["p99"].as_f64(), "{report}");
    assert_eq!(report["idle"]["jobs"], 5, "{report}");
    assert!(
        positive(&report["idle"]["round_trip_ms"]["p50"]),
        "{report}"
    );
    // The queue the bench made holds exactly its jobs: the counts are isolated.
    let queue = report["queue"].as_str().unwrap();
    let counts = service.wait_for_status("the bench queue's counts", |status| {
        status["durable"]["queues"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|q| q["queue"] == queue && q["completed"] == DURABLE_JOBS + 5)
    });
    assert!(counts["durable"]["ready"] == true, "{counts}");
}

#[test]
fn bench_durable_drain_pauses_its_queue_while_storing_and_measures_from_the_first_start() {
    let service = durable_service();
    let queue = format!("bench-drain-{}", std::process::id());
    let report = durable_bench(&service, &["--drain", "--queue", &queue]);
    assert_eq!(
        report["states"],
        serde_json::json!({"completed": DURABLE_JOBS}),
        "{report}"
    );
    assert_eq!(
        report["burn_down"]["from"], "first attempted_at",
        "{report}"
    );
    // The queue was paused while the jobs were stored, and resumed after.
    let logs = service.logs();
    let paused_at = logs.find(&format!("queue {queue} paused"));
    let resumed_at = logs.find(&format!("queue {queue} resumed"));
    assert!(
        paused_at.is_some() && paused_at < resumed_at,
        "the bench did not pause its queue, then resume it:\n{logs}"
    );
    let paused = Cluster::shared()
        .query_value(&format!(
            "SELECT count(*) FROM forkpool.paused_queues WHERE queue = '{queue}'"
        ))
        .unwrap();
    assert_eq!(paused, "0", "the bench left its queue paused");
}
