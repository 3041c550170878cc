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
