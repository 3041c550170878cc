//! The master as a supervisor, provoked for real: kill -9, stuck queries, signals.

mod support;

use std::collections::BTreeSet;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{Cluster, Service, ServiceOptions};

fn pids(status: &Value) -> BTreeSet<i64> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap())
        .collect()
}

/// Waits (as an event: the master logs each worker that becomes ready) until `count`
/// workers in all have been ready since start, then returns the status.
fn after_ready_count(service: &Service, count: usize) -> Value {
    service.wait_for_log(") ready", count);
    service.status()
}

/// The pid of a worker running a job, asked of `status` until one is (the job was sent
/// just before; `status` is answered between the master's events, so this is its own wait).
fn busy_worker_pid(service: &Service) -> i64 {
    loop {
        let status = service.status();
        let busy = status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["current"].as_array().is_some_and(|c| !c.is_empty()))
            .map(|w| w["pid"].as_i64().unwrap());
        if let Some(pid) = busy {
            return pid;
        }
    }
}

#[test]
fn a_worker_killed_mid_job_is_answered_worker_lost_and_replaced() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let mut client = service.client();
    client.send(json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 5}}));
    // The job is running once status shows it on a worker.
    let victim = busy_worker_pid(&service);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let answer = client.recv().unwrap();
    assert_eq!(answer["id"], "slow");
    assert_eq!(answer["error"]["kind"], "worker_lost", "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("SIGKILL"), "{message}");
    let status = after_ready_count(&service, 3);
    assert_eq!(status["workers"].as_array().unwrap().len(), 2);
    assert!(!pids(&status).contains(&victim));
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}

#[test]
fn a_job_marked_retry_on_worker_lost_runs_again_on_another_worker() {
    let retrying = "retry_on_worker_lost = true\nsql = \"SELECT :s AS s FROM pg_sleep(:s)\"\n\
                    [params]\ns = \"float8\"\n";
    let service = Service::start(ServiceOptions::on(Cluster::shared()).job("retrying", retrying));
    let mut client = service.client();
    client.send(json!({"id": 1, "op": "run", "job": "retrying", "args": {"s": 1.0}}));
    let victim = busy_worker_pid(&service);
    kill(Pid::from_raw(victim as i32), Signal::SIGKILL).unwrap();
    let answer = client.recv().unwrap();
    assert_eq!(answer["ok"], true, "retried and answered once: {answer}");
    assert_ne!(answer["result"]["pid"].as_i64().unwrap(), victim);
    service.wait_for_log("is retried once", 1);
}

#[test]
fn workers_recycle_after_max_jobs_with_their_replacement_started_first() {
    let mut options = ServiceOptions::on(Cluster::shared())
        .worker_key("max_jobs", "4")
        .worker_key("max_jobs_jitter", "3")
        .worker_key("min_lifetime", "\"0s\"");
    options.workers = 1;
    let service = Service::start(options);
    let limit = service.status()["workers"][0]["recycle_after"]
        .as_u64()
        .unwrap();
    assert!((4..=7).contains(&limit), "max_jobs + jitter: {limit}");
    let mut seen = BTreeSet::new();
    for i in 0..20 {
        let answer = service.submit("add", json!({"a": i}));
        assert_eq!(
            answer["ok"], true,
            "recycling must not fail a job: {answer}"
        );
        seen.insert(answer["result"]["pid"].as_i64().unwrap());
    }
    assert!(seen.len() >= 3, "20 jobs at <= 7 per worker: {seen:?}");
    service.wait_for_log("recycled: ran", 2);
}

#[test]
fn ttin_and_ttou_move_the_worker_count_within_bounds() {
    let mut options = ServiceOptions::on(Cluster::shared()).worker_key("max", "3");
    options.workers = 2;
    let service = Service::start(options);
    service.signal(Signal::SIGTTIN);
    assert_eq!(
        after_ready_count(&service, 3)["workers"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    service.signal(Signal::SIGTTIN);
    service.wait_for_log("already at workers.max = 3", 1);
    service.signal(Signal::SIGTTOU);
    service.wait_for_log("exited with code 0", 1);
    assert_eq!(service.status()["workers"].as_array().unwrap().len(), 2);
    service.signal(Signal::SIGTTOU);
    service.wait_for_log("already at workers.count = 2", 1);
}

#[test]
fn hup_with_a_broken_config_keeps_the_old_one_and_a_valid_one_replaces_every_worker() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let before = pids(&service.status());
    let config = std::fs::read_to_string(&service.config).unwrap();
    std::fs::write(&service.config, format!("{config}\n[workers]\ncuont = 3\n")).unwrap();
    service.signal(Signal::SIGHUP);
    service.wait_for_log("reload refused", 1);
    assert_eq!(pids(&service.status()), before);
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);

    let with_new_job = service.dir.path().join("workers/triple.toml");
    std::fs::write(
        &with_new_job,
        "sql = \"SELECT :x * 3 AS y\"\n[params]\nx = \"int4\"\n",
    )
    .unwrap();
    std::fs::write(&service.config, &config).unwrap();
    service.signal(Signal::SIGHUP);
    service.wait_for_log("reload accepted", 1);
    // Both old workers are replaced: two more become ready, two old ones leave.
    service.wait_for_log(") ready", 4);
    service.wait_for_log("replaced after a reload", 2);
    let answer = service.submit("triple", json!({"x": 5}));
    assert_eq!(answer["result"]["rows"], json!([{"y": 15}]), "{answer}");
    service.wait_for_log("exited with code 0", 2);
    let after = pids(&service.status());
    assert_eq!(after.len(), 2);
    assert!(after.is_disjoint(&before), "{before:?} -> {after:?}");
}

#[test]
fn a_job_past_its_timeout_is_cancelled_and_its_connection_stays_clean() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()));
    let mut client = service.client();
    let answer = client.request(
        json!({"id": 1, "op": "run", "job": "sleep", "args": {"seconds": 30}, "timeout_ms": 300}),
    );
    assert_eq!(answer["error"]["kind"], "timeout", "{answer}");
    for i in 0..4 {
        let answer = service.submit("add", json!({"a": i}));
        assert_eq!(answer["ok"], true, "{answer}");
    }
}

#[test]
fn sigterm_under_load_answers_every_accepted_request() {
    let mut service = Service::start(ServiceOptions::on(Cluster::shared()));
    let mut client = service.client();
    for i in 0..40 {
        client.send(json!({"id": i, "op": "run", "job": "sleep", "args": {"seconds": 0.05}}));
    }
    // Answers flow before the stop: the load is on.
    assert!(client.recv().is_some());
    service.signal(Signal::SIGTERM);
    let mut answered = 1;
    while let Some(answer) = client.recv() {
        let kind = answer["error"]["kind"].as_str();
        assert!(
            answer["ok"] == true || kind == Some("shutting_down"),
            "{answer}"
        );
        answered += 1;
    }
    assert_eq!(answered, 40, "every accepted request answered exactly once");
    assert!(service.wait_exit().success());
}
