//! Many hosts, one queue (issue #14): several forkpool services on one PostgreSQL cluster,
//! each with its own directory, socket, configuration and workers — so its own host identity
//! (`hostname:socket path`) — all over TCP with verified TLS.
//!
//! What is proved: jobs enqueued on one host run on every host; a host killed or frozen has
//! its jobs taken back by another (`host_lost`) with each exactly-once effect kept once, and a
//! frozen host that wakes loses its lease instead of completing twice; a cancel, a pause and a
//! resume asked of one host reach a job or claim on another (a cancel even when it lands
//! between a job's statements); a schedule ticks once across hosts; finished jobs past their
//! retention are pruned; `status` lists every host.
//!
//! Tests that kill, freeze or prune get a private cluster; the others share one and keep apart
//! by their own job names, queues, schedules and effect keys. Rescue and cancel times are
//! printed (run with `--nocapture` to see them), never asserted against a bound: speed is
//! measured by benchmarks. Every wait polls the database or `status` up to a deadline.

mod support;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{
    wait_until, wait_until_within, Client, Cluster, Service, ServiceOptions, EVENT_TIMEOUT,
};

/// The lease of every host here: short, so a lost host's jobs come back within seconds.
const LEASE: &str = "\"2s\"";

/// An exactly-once job with an effect (a row in `effects`, which has no unique constraint,
/// so a second run would show as a second row), then a sleep while its transaction is open.
const EFFECT_THEN_SLEEP: &str = r#"
timeout = "60s"
sql = ["INSERT INTO effects (job_key) VALUES (:key)", "SELECT 1 AS slept FROM pg_sleep(:s)"]

[params]
key = "text"
s = "float8"
"#;

/// A job that only sleeps, for as long as it is asked.
const SLEEP: &str = r#"
timeout = "120s"
sql = "SELECT 1 AS slept FROM pg_sleep(:s)"

[params]
s = "float8"
"#;

/// A job that does nothing worth noting.
const NOTHING: &str = r#"sql = "SELECT 1 AS done""#;

/// A job that always fails (the zero is a bound parameter, so it fails when it runs), once.
const FAILS_ONCE: &str = r#"
max_attempts = 1
sql = "SELECT 1 / :zero AS never"

[params]
zero = { type = "int8", default = 0 }
"#;

/// A durable host on `cluster`: two workers, a poll of 100 ms, a lease of 2 s; `more` adds
/// its jobs and keys.
fn start_host(cluster: &Cluster, more: impl FnOnce(ServiceOptions) -> ServiceOptions) -> Service {
    Service::start(more(
        ServiceOptions::on(cluster)
            .durable()
            .queue_key("poll_interval", "\"100ms\"")
            .queue_key("lease", LEASE),
    ))
}

/// A host's identity in `forkpool.jobs.host`: the machine's name and the socket's path.
fn host_id(service: &Service) -> String {
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    format!("{}:{}", hostname.trim(), service.socket.display())
}

/// The table of effects, created by the superuser and granted to the services' role.
fn create_effects(cluster: &Cluster) {
    cluster
        .execute("CREATE TABLE IF NOT EXISTS effects (job_key text); GRANT ALL ON effects TO app;");
}

fn ask(service: &Service, request: Value) -> Value {
    service.client().request(request)
}

/// Enqueues `job` with `args` and the `more` fields; the job's id.
fn enqueue(service: &Service, job: &str, args: Value, more: Value) -> i64 {
    let mut request = json!({"id": "e", "op": "enqueue", "job": job, "args": args});
    for (key, value) in more.as_object().into_iter().flatten() {
        request[key] = value.clone();
    }
    let answer = ask(service, request);
    assert_eq!(answer["ok"], true, "enqueue refused: {answer}");
    answer["result"]["job_id"].as_i64().expect("a job id")
}

/// Enqueues every request on one connection, pipelined; their ids in order.
fn enqueue_all(service: &Service, requests: &[Value]) -> Vec<i64> {
    let mut client: Client = service.client();
    for (n, request) in requests.iter().enumerate() {
        let mut request = request.clone();
        request["op"] = json!("enqueue");
        request["id"] = json!(n);
        client.send(request);
    }
    let mut ids = vec![0; requests.len()];
    for _ in requests {
        let answer = client.recv().expect("an answer to every enqueue");
        assert_eq!(answer["ok"], true, "enqueue refused: {answer}");
        ids[answer["id"].as_u64().unwrap() as usize] = answer["result"]["job_id"].as_i64().unwrap();
    }
    ids
}

/// The job once final (completed, discarded or cancelled), asked of `service`.
fn final_state(service: &Service, job_id: i64) -> Value {
    let wait_ms = EVENT_TIMEOUT.as_millis() as u64;
    let answer = ask(
        service,
        json!({"id": "r", "op": "result", "job_id": job_id, "wait_ms": wait_ms}),
    );
    assert_eq!(answer["ok"], true, "result refused: {answer}");
    let job = answer["result"].clone();
    assert!(
        ["completed", "discarded", "cancelled"].contains(&job["state"].as_str().unwrap()),
        "job {job_id} not final after {EVENT_TIMEOUT:?}: {job}\nlogs:\n{}",
        service.logs()
    );
    job
}

fn count(cluster: &Cluster, sql: &str) -> i64 {
    cluster.query_value(sql).unwrap().parse().unwrap()
}

fn timestamp(text: &str) -> DateTime<Utc> {
    // PostgreSQL's text form ("2026-01-02 03:04:05.678+00") or RFC 3339 (JSON).
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f%#z"))
        .unwrap_or_else(|e| panic!("{text:?} is not a timestamp: {e}"))
        .with_timezone(&Utc)
}

/// Jobs of `host` whose backend is inside `pg_sleep`: claimed, and (for an effect job) with
/// its effect written in its still-open transaction.
fn sleeping_on(cluster: &Cluster, host: &str, job: &str) -> i64 {
    count(
        cluster,
        &format!(
            "SELECT count(*) FROM forkpool.jobs j JOIN pg_stat_activity a ON a.pid = j.backend_pid \
              WHERE j.state = 'running' AND j.host = '{host}' AND j.job = '{job}' \
                AND a.query LIKE '%pg_sleep%' AND a.state = 'active'"
        ),
    )
}

/// The processes whose parent is `pid` (a master's workers and queue keeper), from /proc.
fn children_of(pid: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid ...": comm may hold anything but its last ')'.
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        let ppid: i32 = after.split(' ').nth(1).unwrap().parse().unwrap();
        if ppid == pid.as_raw() {
            children.push(Pid::from_raw(child));
        }
    }
    children
}

/// Whether `pid` still runs (a zombie, or a pid gone, does not).
fn alive(pid: Pid) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = &stat[stat.rfind(')').unwrap() + 2..];
        !after.starts_with('Z') && !after.starts_with('X')
    })
}

/// A host stopped whole with SIGSTOP (its master first, so it forks nothing meanwhile, then
/// its workers and keeper); woken with SIGCONT, children first, also when a test fails.
struct Frozen {
    master: Pid,
    children: Vec<Pid>,
    woken: bool,
}

impl Frozen {
    fn freeze(service: &Service) -> Frozen {
        let master = service.pid();
        kill(master, Signal::SIGSTOP).unwrap();
        let children = children_of(master);
        for child in &children {
            kill(*child, Signal::SIGSTOP).unwrap();
        }
        Frozen {
            master,
            children,
            woken: false,
        }
    }

    fn wake(&mut self) {
        if std::mem::replace(&mut self.woken, true) {
            return;
        }
        for child in &self.children {
            let _ = kill(*child, Signal::SIGCONT);
        }
        let _ = kill(self.master, Signal::SIGCONT);
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.wake();
    }
}

/// Seconds from `from` to `to`.
fn seconds(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap() as f64 / 1e6
}

/// Seconds from a host's loss (`lost_at`) to its job's rescue (the `host_lost` error's time)
/// and to the job's claim by another host (`attempted_at`), printed.
fn rescue_times(how: &str, lost_at: DateTime<Utc>, job: &Value) -> (f64, f64) {
    let rescue = seconds(lost_at, timestamp(job["errors"][0]["at"].as_str().unwrap()));
    let claim = seconds(lost_at, timestamp(job["attempted_at"].as_str().unwrap()));
    println!(
        "{how} of host A (lease 2 s): job {} taken back after {rescue:.3} s (host_lost), \
         claimed again by host B after {claim:.3} s",
        job["job_id"]
    );
    (rescue, claim)
}

#[test]
fn jobs_enqueued_on_one_host_are_run_by_both_hosts() {
    let cluster = Cluster::shared();
    let a = start_host(cluster, |o| o.job("spread_sleep", SLEEP));
    let b = start_host(cluster, |o| o.job("spread_sleep", SLEEP));
    let requests: Vec<Value> = (0..200)
        .map(|_| json!({"job": "spread_sleep", "args": {"s": 0.01}}))
        .collect();
    let ids = enqueue_all(&a, &requests);

    let a_pids: HashSet<u64> = a.worker_pids().into_iter().map(|p| p as u64).collect();
    let b_pids: HashSet<u64> = b.worker_pids().into_iter().map(|p| p as u64).collect();
    let (mut on_a, mut on_b) = (0, 0);
    for id in &ids {
        let job = final_state(&a, *id);
        assert_eq!(job["state"], "completed", "{job}");
        let pid = job["result"]["pid"].as_u64().expect("the worker's pid");
        match (a_pids.contains(&pid), b_pids.contains(&pid)) {
            (true, false) => on_a += 1,
            (false, true) => on_b += 1,
            _ => panic!("job {id} ran on pid {pid}, a worker of neither host: {job}"),
        }
    }
    println!("200 jobs enqueued on host A: {on_a} ran on A, {on_b} on B");
    assert!(on_a > 0 && on_b > 0, "A ran {on_a}, B ran {on_b}");
    // The table says the same: each job names the host that ran it.
    let hosts: BTreeSet<String> = cluster
        .query("SELECT DISTINCT host FROM forkpool.jobs WHERE job = 'spread_sleep'")
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect();
    assert_eq!(hosts, BTreeSet::from([host_id(&a), host_id(&b)]));
}

#[test]
fn status_on_each_host_lists_both_hosts() {
    let cluster = Cluster::shared();
    let hosts = [start_host(cluster, |o| o), start_host(cluster, |o| o)];
    let ids: Vec<String> = hosts.iter().map(host_id).collect();
    assert_ne!(ids[0], ids[1], "two services on one machine are two hosts");
    for service in &hosts {
        let status = service.wait_for_status("both hosts in status", |status| {
            let listed = status["durable"]["hosts"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            ids.iter()
                .all(|id| listed.iter().any(|h| h["host"] == id.as_str()))
        });
        let listed = status["durable"]["hosts"].as_array().unwrap();
        for (id, owner) in ids.iter().zip(&hosts) {
            let mine: Vec<&Value> = listed.iter().filter(|h| h["host"] == id.as_str()).collect();
            assert_eq!(mine.len(), 1, "one instance of {id}: {listed:?}");
            let row = mine[0];
            // The host's pid is its master's, the process an operator signals.
            let pid = Pid::from_raw(row["pid"].as_i64().unwrap() as i32);
            assert_eq!(pid, owner.pid(), "{row}");
            assert!(row["instance"].is_i64(), "{row}");
            assert!(!row["hostname"].as_str().unwrap().is_empty(), "{row}");
            timestamp(row["started_at"].as_str().unwrap());
            timestamp(row["last_seen"].as_str().unwrap());
            assert!(row["seen_seconds_ago"].as_f64().unwrap() < 6.0, "{row}");
        }
    }
}

#[test]
fn a_killed_hosts_jobs_are_taken_back_by_the_other_host_with_each_effect_once() {
    let cluster = Cluster::start();
    create_effects(&cluster);
    let mut a = start_host(&cluster, |o| o.job("effect_sleep", EFFECT_THEN_SLEEP));
    let b = start_host(&cluster, |o| o.job("effect_sleep", EFFECT_THEN_SLEEP));
    let (a_id, b_id) = (host_id(&a), host_id(&b));
    let requests: Vec<Value> = (0..24)
        .map(|n| json!({"job": "effect_sleep", "args": {"key": format!("kill-{n}"), "s": 0.5}}))
        .collect();
    let ids = enqueue_all(&b, &requests);
    wait_until("host A runs a job inside its transaction", || {
        sleeping_on(&cluster, &a_id, "effect_sleep") > 0
    });

    let workers = children_of(a.pid());
    let killed_at = Utc::now();
    a.signal(Signal::SIGKILL);
    a.wait_exit();
    wait_until("host A's workers and keeper die with their master", || {
        workers.iter().all(|pid| !alive(*pid))
    });
    let held: BTreeSet<i64> = cluster
        .query(&format!(
            "SELECT id FROM forkpool.jobs WHERE state = 'running' AND host = '{a_id}'"
        ))
        .into_iter()
        .map(|row| row[0].as_ref().unwrap().parse().unwrap())
        .collect();
    assert!(!held.is_empty(), "host A held no job when it was killed");

    let mut rescued = BTreeSet::new();
    for id in &ids {
        let job = final_state(&b, *id);
        assert_eq!(job["state"], "completed", "{job}\nB's logs:\n{}", b.logs());
        let errors = job["errors"].as_array().unwrap();
        if errors.is_empty() {
            continue;
        }
        assert_eq!(errors.len(), 1, "{job}");
        assert_eq!(errors[0]["kind"], "host_lost", "{job}");
        assert_eq!(job["attempt"], 2, "{job}");
        let (rescue, claim) = rescue_times("SIGKILL", killed_at, &job);
        assert!(
            rescue > 0.0 && claim < 30.0,
            "rescued {rescue} s, claimed {claim} s: {job}"
        );
        rescued.insert(*id);
    }
    assert!(
        held.is_subset(&rescued),
        "held {held:?}, rescued {rescued:?}"
    );
    // Every rescued job was finished by B (A is dead), and only A's jobs were rescued.
    let finished_by = cluster.query(
        "SELECT DISTINCT host FROM forkpool.jobs WHERE errors @> '[{\"kind\": \"host_lost\"}]'",
    );
    assert_eq!(finished_by, vec![vec![Some(b_id)]]);
    let (effects, keys) = (
        count(
            &cluster,
            "SELECT count(*) FROM effects WHERE job_key LIKE 'kill-%'",
        ),
        count(
            &cluster,
            "SELECT count(DISTINCT job_key) FROM effects WHERE job_key LIKE 'kill-%'",
        ),
    );
    assert_eq!((effects, keys), (24, 24), "one effect per job");
}

#[test]
fn a_frozen_host_loses_its_job_to_the_other_host_and_its_effect_happens_once() {
    let cluster = Cluster::start();
    create_effects(&cluster);
    let a = start_host(&cluster, |mut o| {
        o.workers = 1;
        o.job("frozen_effect", EFFECT_THEN_SLEEP)
    });
    let b = start_host(&cluster, |o| {
        o.job("frozen_effect", EFFECT_THEN_SLEEP)
            .job("hold_b", SLEEP)
    });
    let (a_id, b_id) = (host_id(&a), host_id(&b));
    // B's two workers are busy with jobs only B knows, so A claims the effect job.
    let blockers: Vec<i64> = (0..2)
        .map(|_| enqueue(&b, "hold_b", json!({"s": 60}), json!({})))
        .collect();
    wait_until("host B's workers both run a blocker", || {
        sleeping_on(&cluster, &b_id, "hold_b") == 2
    });
    let id = enqueue(
        &a,
        "frozen_effect",
        json!({"key": "frozen", "s": 4}),
        json!({}),
    );
    wait_until("host A runs the effect job inside its transaction", || {
        sleeping_on(&cluster, &a_id, "frozen_effect") == 1
    });
    for blocker in blockers {
        ask(&b, json!({"id": 1, "op": "cancel", "job_id": blocker}));
        assert_eq!(final_state(&b, blocker)["state"], "cancelled");
    }

    let mut frozen = Frozen::freeze(&a);
    let frozen_at = Utc::now();
    let job = final_state(&b, id);
    assert_eq!(job["state"], "completed", "{job}\nB's logs:\n{}", b.logs());
    assert_eq!(job["attempt"], 2, "{job}");
    assert_eq!(job["errors"][0]["kind"], "host_lost", "{job}");
    let b_pids: Vec<u64> = b.worker_pids().into_iter().map(|p| p as u64).collect();
    assert!(
        b_pids.contains(&job["result"]["pid"].as_u64().unwrap()),
        "{job}"
    );
    let (rescue, claim) = rescue_times("SIGSTOP", frozen_at, &job);
    assert!(
        rescue > 0.0 && claim < 30.0,
        "rescued {rescue} s, claimed {claim} s"
    );
    let effects = "SELECT count(*) FROM effects WHERE job_key = 'frozen'";
    assert_eq!(
        count(&cluster, effects),
        1,
        "B's effect, and A's not committed"
    );

    // A wakes, finishes its sleep and tries to complete: its claim is fenced off.
    frozen.wake();
    a.wait_for_log("lost the lease", 1);
    assert_eq!(
        count(&cluster, effects),
        1,
        "A's effect rolled back with its completion"
    );
    let after = final_state(&b, id);
    assert_eq!(after["result"], job["result"], "B's completion stands");
    assert_eq!(
        cluster.query_value(&format!("SELECT host FROM forkpool.jobs WHERE id = {id}")),
        Some(b_id)
    );
}

#[test]
fn a_job_running_on_one_host_is_cancelled_through_another() {
    let cluster = Cluster::shared();
    // Only A knows the job, so A runs it; B cancels and reads it by id.
    let a = start_host(cluster, |o| o.job("cancel_long", SLEEP));
    let b = start_host(cluster, |o| o);
    let a_id = host_id(&a);
    let id = enqueue(&a, "cancel_long", json!({"s": 30}), json!({}));
    wait_until("host A runs the long job", || {
        sleeping_on(cluster, &a_id, "cancel_long") == 1
    });
    let asked = Instant::now();
    let answer = ask(&b, json!({"id": 1, "op": "cancel", "job_id": id}));
    assert_eq!(
        answer["result"],
        json!({"job_id": id, "state": "running", "cancelled": true}),
        "{answer}"
    );
    let job = final_state(&b, id);
    let latency = asked.elapsed();
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(
        job["errors"][0]["sqlstate"], "57014",
        "its query was cancelled: {job}"
    );
    let ran = seconds(
        timestamp(job["attempted_at"].as_str().unwrap()),
        timestamp(job["finished_at"].as_str().unwrap()),
    );
    assert!(
        ran < 30.0,
        "it ended after {ran} s: its 30 s sleep was not cut short"
    );
    println!("cancel through host B of a job running on host A: cancelled after {latency:?}");
}

#[test]
fn a_cancel_through_another_host_between_a_jobs_statements_ends_it_cancelled_at_once() {
    let cluster = Cluster::shared();
    let between = r#"
timeout = "60s"
sql = ["SELECT 1 AS slept FROM pg_sleep(:s)", "SELECT 2 AS after"]

[params]
s = "float8"
"#;
    let a = start_host(cluster, |mut o| {
        o.workers = 1;
        o.job("cancel_between", between)
    });
    let b = start_host(cluster, |o| o);
    let a_id = host_id(&a);
    let id = enqueue(&a, "cancel_between", json!({"s": 1.0}), json!({}));
    wait_until("host A runs the job's first statement", || {
        sleeping_on(cluster, &a_id, "cancel_between") == 1
    });
    // A's worker stops before it sends the second statement: its backend goes idle in the
    // job's transaction, where a query cancel finds nothing to interrupt.
    let worker = Pid::from_raw(a.worker_pids()[0]);
    kill(worker, Signal::SIGSTOP).unwrap();
    let idle = format!(
        "SELECT count(*) FROM forkpool.jobs j JOIN pg_stat_activity a ON a.pid = j.backend_pid \
          WHERE j.id = {id} AND a.state = 'idle in transaction'"
    );
    wait_until("the job's backend is idle in its transaction", || {
        count(cluster, &idle) == 1
    });
    let answer = ask(&b, json!({"id": 1, "op": "cancel", "job_id": id}));
    kill(worker, Signal::SIGCONT).unwrap();
    assert_eq!(answer["result"]["cancelled"], true, "{answer}");

    let job = final_state(&b, id);
    assert_eq!(job["state"], "cancelled", "{job}");
    assert_eq!(job["attempt"], 1, "{job}");
    let kinds: Vec<&Value> = job["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["kind"])
        .collect();
    assert!(
        !kinds.contains(&&json!("host_lost")),
        "ended by its own worker, not by the lease: {job}"
    );
    assert_eq!(job["errors"][0]["sqlstate"], "57014", "{job}");
    assert!(!a.logs().contains("lost the lease"), "{}", a.logs());
}

#[test]
fn a_schedule_on_two_hosts_runs_each_tick_once() {
    let cluster = Cluster::shared();
    let schedule = r#"
[schedules.hosts_every_second]
job = "hosts_tick"
every = "1s"
"#;
    let a = start_host(cluster, |o| {
        o.job("hosts_tick", NOTHING).extra_toml(schedule)
    });
    let b = start_host(cluster, |o| {
        o.job("hosts_tick", NOTHING).extra_toml(schedule)
    });
    let ticks =
        "SELECT count(*) FROM forkpool.schedule_ticks WHERE schedule = 'hosts_every_second'";
    wait_until("five ticks", || count(cluster, ticks) >= 5);

    // One snapshot: a tick and its job are recorded in one transaction.
    let rows = cluster.query(
        "SELECT (SELECT count(*) FROM forkpool.schedule_ticks WHERE schedule = 'hosts_every_second'), \
                (SELECT count(DISTINCT tick) FROM forkpool.schedule_ticks \
                  WHERE schedule = 'hosts_every_second' AND tick = date_trunc('second', tick)), \
                (SELECT count(job_id) FROM forkpool.schedule_ticks WHERE schedule = 'hosts_every_second'), \
                (SELECT count(DISTINCT t.job_id) FROM forkpool.schedule_ticks t \
                   JOIN forkpool.jobs j ON j.id = t.job_id AND j.job = 'hosts_tick' \
                  WHERE t.schedule = 'hosts_every_second'), \
                (SELECT count(*) FROM forkpool.jobs WHERE job = 'hosts_tick')",
    );
    let numbers: Vec<i64> = rows[0]
        .iter()
        .map(|v| v.as_ref().unwrap().parse().unwrap())
        .collect();
    let [ticks, whole_seconds, with_job, distinct_jobs, jobs] = numbers[..] else {
        unreachable!()
    };
    assert!(ticks >= 5, "{numbers:?}");
    assert_eq!(
        whole_seconds, ticks,
        "distinct ticks on whole seconds: {numbers:?}"
    );
    assert_eq!(with_job, ticks, "every tick has its job: {numbers:?}");
    assert_eq!(distinct_jobs, ticks, "each tick its own job: {numbers:?}");
    assert_eq!(
        jobs, ticks,
        "no job without its tick, none twice: {numbers:?}"
    );

    let enqueued: Vec<i64> = cluster
        .query("SELECT job_id FROM forkpool.schedule_ticks WHERE schedule = 'hosts_every_second'")
        .into_iter()
        .map(|row| row[0].as_ref().unwrap().parse().unwrap())
        .collect();
    for id in enqueued {
        assert_eq!(final_state(&a, id)["state"], "completed");
    }
    for service in [&a, &b] {
        let status = service.wait_for_status("the schedule in status", |status| {
            status["durable"]["schedules"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["name"] == "hosts_every_second" && s["next_tick"].is_string())
        });
        let listed = &status["durable"]["schedules"][0];
        assert_eq!(listed["job"], "hosts_tick", "{listed}");
        let next = timestamp(listed["next_tick"].as_str().unwrap());
        assert_eq!(next.timestamp_subsec_nanos(), 0, "a whole second: {listed}");
    }
}

#[test]
fn finished_jobs_past_their_retention_are_pruned() {
    let cluster = Cluster::start();
    let started = Instant::now();
    let host = |cluster: &Cluster| {
        start_host(cluster, |o| {
            o.queue_key("retention", "\"1s\"")
                .queue_key("discarded_retention", "\"1s\"")
                .job("prune_ok", NOTHING)
                .job("prune_fail", FAILS_ONCE)
        })
    };
    let (a, _b) = (host(&cluster), host(&cluster));
    let completed = enqueue_all(&a, &vec![json!({"job": "prune_ok"}); 5]);
    let discarded = enqueue(&a, "prune_fail", json!({}), json!({}));
    let cancelled = enqueue(&a, "prune_ok", json!({}), json!({"delay_ms": 3_600_000}));
    ask(&a, json!({"id": 1, "op": "cancel", "job_id": cancelled}));
    let waiting = enqueue(&a, "prune_ok", json!({}), json!({"delay_ms": 3_600_000}));
    for id in &completed {
        assert_eq!(final_state(&a, *id)["state"], "completed");
    }
    assert_eq!(final_state(&a, discarded)["state"], "discarded");
    assert_eq!(final_state(&a, cancelled)["state"], "cancelled");

    let finished = "SELECT count(*) FROM forkpool.jobs \
                    WHERE state IN ('completed', 'discarded', 'cancelled')";
    assert_eq!(count(&cluster, finished), 7);
    // The first pruning runs 15 s after a keeper starts, then every minute.
    wait_until_within("finished jobs are pruned", Duration::from_secs(60), || {
        count(&cluster, finished) == 0
    });
    println!(
        "finished jobs pruned {:?} after the hosts started",
        started.elapsed()
    );
    let kept = ask(&a, json!({"id": 2, "op": "result", "job_id": waiting}));
    assert_eq!(
        kept["result"]["state"], "available",
        "an unfinished job stays: {kept}"
    );
    let gone = ask(&a, json!({"id": 3, "op": "result", "job_id": completed[0]}));
    assert_eq!(gone["error"]["kind"], "not_found", "{gone}");
}

/// `queue`'s line in the `queues` answer of `service`.
fn queue_row(service: &Service, queue: &str) -> Value {
    let queues = ask(service, json!({"id": "q", "op": "queues"}));
    queues["result"]["queues"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|q| q["queue"] == queue)
        .unwrap_or_else(|| panic!("no {queue} in {queues}"))
        .clone()
}

#[test]
fn a_queue_paused_through_one_host_is_not_claimed_by_either_until_resumed_through_the_other() {
    let cluster = Cluster::shared();
    let a = start_host(cluster, |o| o.job("paused_work", NOTHING));
    let b = start_host(cluster, |o| o.job("paused_work", NOTHING));
    let queue = "hosts_paused";
    let paused = ask(&a, json!({"id": 1, "op": "pause", "queue": queue}));
    assert_eq!(
        paused["result"],
        json!({"queue": queue, "paused": true}),
        "{paused}"
    );

    let requests = vec![json!({"job": "paused_work", "queue": queue}); 5];
    let ids = enqueue_all(&b, &requests);
    // Both hosts poll every 100 ms and B was woken by the enqueue: 1.5 s is many claims.
    let later = ask(
        &b,
        json!({"id": 2, "op": "result", "job_id": ids[4], "wait_ms": 1500}),
    );
    assert_eq!(later["result"]["state"], "available", "{later}");
    for id in &ids {
        let now = ask(&b, json!({"id": 3, "op": "result", "job_id": id}));
        assert_eq!(now["result"]["state"], "available", "{now}");
        assert_eq!(now["result"]["attempt"], 0, "never claimed: {now}");
    }
    let row = queue_row(&b, queue);
    assert_eq!(row["paused"], true, "{row}");
    assert_eq!(row["available"], 5, "{row}");

    let resumed = ask(&b, json!({"id": 5, "op": "resume", "queue": queue}));
    assert_eq!(
        resumed["result"],
        json!({"queue": queue, "paused": false}),
        "{resumed}"
    );
    for id in &ids {
        assert_eq!(final_state(&a, *id)["state"], "completed");
    }
    let row = queue_row(&a, queue);
    assert_eq!(row["paused"], false, "{row}");
    assert_eq!(row["completed"], 5, "{row}");
}
