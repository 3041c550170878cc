//! `forkpool status` for a person: the `status` answer as a few aligned tables that fit in
//! 120 columns — the service, one line per worker, one line per pool of each worker, then,
//! when durable jobs are on, their queues, the hosts sharing them, schedules and totals.

use std::fmt::Write;

use serde_json::Value;

use super::{DURABLE_OUTCOMES, QUEUE_STATES};

pub fn render(status: &Value) -> String {
    let mut out = String::new();
    let empty = Vec::new();
    let workers = status["workers"].as_array().unwrap_or(&empty);
    render_service(&mut out, status);
    out.push('\n');
    render_workers(&mut out, workers);
    out.push('\n');
    render_pools(&mut out, workers);
    if !status["durable"].is_null() {
        out.push('\n');
        render_durable(&mut out, &status["durable"]);
    }
    out
}

fn render_service(out: &mut String, status: &Value) {
    let _ = writeln!(
        out,
        "master pid {}  up {:.0}s  generation {}{}",
        status["pid"],
        status["uptime_s"].as_f64().unwrap_or(0.0),
        status["generation"],
        if status["stopping"] == Value::Bool(true) {
            "  STOPPING"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "queue {}/{}  running {}  accepted {}  succeeded {}  failed {}  worker_lost {}  {:.1} jobs/s",
        status["queue"]["depth"],
        status["queue"]["limit"],
        status["running"],
        status["totals"]["accepted"],
        status["totals"]["succeeded"],
        status["totals"]["failed"],
        status["totals"]["worker_lost"],
        status["jobs_per_second"].as_f64().unwrap_or(0.0),
    );
}

fn render_workers(out: &mut String, workers: &[Value]) {
    let _ = writeln!(
        out,
        "{:>4}  {:>8}  {:<8}  {:>9}  {:>7}  {:>8}  {:<19}  current",
        "slot", "pid", "state", "jobs done", "rss MiB", "restarts", "started at (UTC)"
    );
    for worker in workers {
        let current: Vec<String> = worker["current"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|job| {
                format!(
                    "{} ({:.0} ms)",
                    job["job"].as_str().unwrap_or("?"),
                    job["for_ms"].as_f64().unwrap_or(0.0)
                )
            })
            .collect();
        let line = format!(
            "{:>4}  {:>8}  {:<8}  {:>9}  {:>7.1}  {:>8}  {:<19}  {}",
            text(&worker["slot"]),
            text(&worker["pid"]),
            worker["state"].as_str().unwrap_or("?"),
            text(&worker["jobs_done"]),
            worker["rss_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
            text(&worker["restarts"]),
            utc_second(&worker["started_at"]),
            current.join(", ")
        );
        let _ = writeln!(out, "{}", line.trim_end());
    }
}

/// Pools are a section of their own: a worker has one per database it has used, and the
/// closed-by-reason breakdown needs the room.
fn render_pools(out: &mut String, workers: &[Value]) {
    let pools: Vec<(&Value, &String, &Value)> = workers
        .iter()
        .flat_map(|worker| {
            worker["pools"]
                .as_object()
                .into_iter()
                .flatten()
                .map(move |(database, pool)| (&worker["slot"], database, pool))
        })
        .collect();
    if pools.is_empty() {
        let _ = writeln!(
            out,
            "no pools yet: a worker builds one on its first job for a database"
        );
        return;
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>9}  {:>17}  closed by reason",
        "slot",
        "database",
        "size",
        "idle",
        "in use",
        "waiting",
        "created",
        "ping fail",
        "checkout timeouts"
    );
    for (slot, database, pool) in pools {
        let _ = writeln!(
            out,
            "{:>4}  {:<12}  {:>4}  {:>4}  {:>6}  {:>7}  {:>7}  {:>9}  {:>17}  {}",
            text(slot),
            database,
            text(&pool["size"]),
            text(&pool["idle"]),
            text(&pool["in_use"]),
            text(&pool["waiting"]),
            text(&pool["created"]),
            text(&pool["ping_failures"]),
            text(&pool["checkout_timeouts"]),
            closed_by_reason(&pool["closed_by_reason"]),
        );
    }
}

/// `2026-11-21T10:11:12.345Z` as `2026-11-21 10:11:12`: the second is enough to tell a
/// replacement from the original, and the header says the zone.
fn utc_second(value: &Value) -> String {
    let Some(at) = value.as_str() else {
        return "?".to_string();
    };
    match chrono::DateTime::parse_from_rfc3339(at) {
        Ok(at) => at.to_utc().format("%Y-%m-%d %H:%M:%S").to_string(),
        Err(_) => at.to_string(),
    }
}

/// The `durable` part of `status` (DESIGN §12 "Visibility"): readiness, the queues (counted
/// by the keeper every 2 s, so a line may lag the jobs by that much), the hosts sharing them,
/// the schedules and this instance's totals.
fn render_durable(out: &mut String, durable: &Value) {
    let readiness = if durable["ready"] == Value::Bool(true) {
        "ready".to_string()
    } else {
        format!(
            "waiting ({})",
            durable["why_not_ready"]
                .as_str()
                .unwrap_or("no reason given")
        )
    };
    let _ = writeln!(
        out,
        "durable jobs: {readiness} — database {}, {} running here",
        text(&durable["database"]),
        text(&durable["running"]),
    );
    let empty = Vec::new();
    out.push('\n');
    out.push_str(&queue_table(
        durable["queues"].as_array().unwrap_or(&empty),
        false,
    ));
    render_hosts(out, durable["hosts"].as_array().unwrap_or(&empty));
    render_schedules(out, durable["schedules"].as_array().unwrap_or(&empty));
    // A table rather than one line: nine growing counters do not fit 120 columns in one.
    let counts: Vec<String> = DURABLE_OUTCOMES
        .iter()
        .map(|outcome| format!("{:>1$}", text(&durable["totals"][outcome]), outcome.len()))
        .collect();
    let _ = writeln!(
        out,
        "\ndurable totals since start\n{}\n{}",
        DURABLE_OUTCOMES.join("  "),
        counts.join("  ")
    );
}

/// One line per queue, with its counts by state (`scheduled`: waiting for a `run_at` in the
/// future) and how long its oldest runnable job has waited; `paused` adds that column (the
/// `queues` answer has it, `status` does not). Shared by `status` and `forkpool queue`.
pub(super) fn queue_table(queues: &[Value], paused: bool) -> String {
    let mut out = String::new();
    if queues.is_empty() {
        let _ = writeln!(out, "no queues yet: a queue appears with its first job");
        return out;
    }
    // Each count is as wide as its state's name, so the columns follow QUEUE_STATES.
    let mut header = format!("{:<16}", "queue");
    for state in QUEUE_STATES {
        let _ = write!(header, "  {state}");
    }
    let _ = writeln!(
        out,
        "{header}  oldest available{}",
        if paused { "  paused" } else { "" }
    );
    for queue in queues {
        let mut line = format!("{:<16}", text(&queue["queue"]));
        for state in QUEUE_STATES {
            let _ = write!(line, "  {:>1$}", text(&queue[state]), state.len());
        }
        let _ = write!(line, "  {:>16}", age(&queue["oldest_available_seconds"]));
        if paused {
            let paused = queue["paused"] == Value::Bool(true);
            let _ = write!(line, "  {}", if paused { "yes" } else { "no" });
        }
        let _ = writeln!(out, "{line}");
    }
    out
}

/// The hosts seen within three leases (DESIGN §13), most recently seen first.
fn render_hosts(out: &mut String, hosts: &[Value]) {
    out.push('\n');
    if hosts.is_empty() {
        let _ = writeln!(out, "no host seen yet: each keeper registers at its start");
        return;
    }
    let _ = writeln!(
        out,
        "{:<32}  {:>19}  {:<16}  {:>8}  last seen",
        "host", "instance", "hostname", "pid"
    );
    for host in hosts {
        let _ = writeln!(
            out,
            "{:<32}  {:>19}  {:<16}  {:>8}  {} ago",
            text(&host["host"]),
            text(&host["instance"]),
            text(&host["hostname"]),
            text(&host["pid"]),
            age(&host["seen_seconds_ago"]),
        );
    }
}

fn render_schedules(out: &mut String, schedules: &[Value]) {
    if schedules.is_empty() {
        return;
    }
    out.push('\n');
    let _ = writeln!(out, "{:<24}  {:<24}  next tick (UTC)", "schedule", "job");
    for schedule in schedules {
        let next = match &schedule["next_tick"] {
            Value::Null => "none".to_string(),
            at => utc_second(at),
        };
        let _ = writeln!(
            out,
            "{:<24}  {:<24}  {next}",
            text(&schedule["name"]),
            text(&schedule["job"]),
        );
    }
}

/// Seconds as a person reads them: `0.4 s` below ten seconds (a fresh heartbeat, a job that
/// just became runnable), else whole units (`1m 5s`, `2h 3m 10s`).
fn age(seconds: &Value) -> String {
    let seconds = seconds.as_f64().unwrap_or(0.0).max(0.0);
    if seconds < 10.0 {
        format!("{seconds:.1} s")
    } else {
        humantime::format_duration(std::time::Duration::from_secs(seconds.round() as u64))
            .to_string()
    }
}

/// `idle 2, ping 1`, or `none`.
fn closed_by_reason(value: &Value) -> String {
    let reasons: Vec<String> = value
        .as_object()
        .into_iter()
        .flatten()
        .map(|(reason, count)| format!("{reason} {}", text(count)))
        .collect();
    if reasons.is_empty() {
        "none".to_string()
    } else {
        reasons.join(", ")
    }
}

/// A JSON value as plain text, so that width and alignment apply (`Value`'s own Display
/// ignores them).
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_service_workers_and_pools_in_120_columns() {
        let status = json!({
            "pid": 4242, "uptime_s": 61.2, "generation": 2, "stopping": false,
            "queue": {"depth": 1, "limit": 1000}, "running": 2, "jobs_per_second": 0.5,
            "totals": {"accepted": 6, "succeeded": 3, "failed": 0, "worker_lost": 0},
            "workers": [
                {"slot": 1, "pid": 4301, "state": "busy", "jobs_done": 3, "rss_bytes": 13107200,
                 "restarts": 0, "started_at": "2026-11-21T10:11:12.345Z",
                 "current": [{"id": 7, "job": "hold", "for_ms": 1520.4}],
                 "pools": {"main": {"size": 2, "idle": 1, "in_use": 1, "waiting": 0,
                     "created": 4, "closed_by_reason": {"idle": 1, "ping": 1},
                     "ping_failures": 1, "checkout_timeouts": 3}}},
                {"slot": 2, "pid": 4302, "state": "idle", "jobs_done": 0, "rss_bytes": 0,
                 "restarts": 1, "started_at": "2026-11-21T10:12:00.000Z", "current": [],
                 "pools": {}}
            ]
        });
        let expected = "\
master pid 4242  up 61s  generation 2
queue 1/1000  running 2  accepted 6  succeeded 3  failed 0  worker_lost 0  0.5 jobs/s

slot       pid  state     jobs done  rss MiB  restarts  started at (UTC)     current
   1      4301  busy              3     12.5         0  2026-11-21 10:11:12  hold (1520 ms)
   2      4302  idle              0      0.0         1  2026-11-21 10:12:00

slot  database      size  idle  in use  waiting  created  ping fail  checkout timeouts  closed by reason
   1  main             2     1       1        0        4          1                  3  idle 1, ping 1
";
        let table = render(&status);
        assert_eq!(table, expected, "\n{table}");
        for line in table.lines() {
            assert!(line.len() <= 120, "{} columns: {line}", line.len());
        }
    }

    #[test]
    fn renders_the_durable_queues_hosts_schedules_and_totals() {
        let status = json!({
            "workers": [],
            "durable": {
                "ready": true, "why_not_ready": null, "database": "main", "running": 2,
                "queues": [{"queue": "emails", "available": 3, "scheduled": 1, "running": 2,
                    "completed": 40, "discarded": 1, "cancelled": 0,
                    "oldest_available_seconds": 75.4}],
                "hosts": [{"host": "db1:/run/forkpool/forkpool.sock",
                    "instance": 4611686018427387904_i64, "hostname": "db1", "pid": 4242,
                    "started_at": "2026-11-21 10:00:00+00", "last_seen": "2026-11-21 10:11:12+00",
                    "seen_seconds_ago": 0.42}],
                "schedules": [{"name": "nightly_rollup", "job": "rollup",
                    "next_tick": "2026-11-22T03:00:00+00:00"}],
                "totals": {"enqueued": 46, "claimed": 45, "completed": 40, "retried": 2,
                    "discarded": 1, "cancelled": 0, "released": 0, "lost": 0, "rescued": 1}
            }
        });
        let expected = "\
durable jobs: ready — database main, 2 running here

queue             available  scheduled  running  completed  discarded  cancelled  oldest available
emails                    3          1        2         40          1          0            1m 15s

host                                         instance  hostname               pid  last seen
db1:/run/forkpool/forkpool.sock   4611686018427387904  db1                   4242  0.4 s ago

schedule                  job                       next tick (UTC)
nightly_rollup            rollup                    2026-11-22 03:00:00

durable totals since start
enqueued  claimed  completed  retried  discarded  cancelled  released  lost  rescued
      46       45         40        2          1          0         0     0        1
";
        let table = render(&status);
        let durable = &table[table.find("durable jobs").expect(&table)..];
        assert_eq!(durable, expected, "\n{table}");
        for line in table.lines() {
            assert!(
                line.chars().count() <= 120,
                "{} columns: {line}",
                line.len()
            );
        }
    }

    #[test]
    fn says_why_durable_jobs_are_not_ready_and_shows_nothing_durable_when_off() {
        let waiting = json!({"workers": [], "durable": {"ready": false,
            "why_not_ready": "the queue keeper is restarting", "database": "main", "running": 0,
            "queues": [], "hosts": [], "schedules": [], "totals": {}}});
        let table = render(&waiting);
        assert!(
            table.contains(
                "durable jobs: waiting (the queue keeper is restarting) — database main, \
                 0 running here\n\nno queues yet"
            ),
            "{table}"
        );
        assert!(table.contains("\nno host seen yet"), "{table}");
        let off = render(&json!({"workers": [], "durable": null}));
        assert!(!off.contains("durable"), "{off}");
    }

    #[test]
    fn says_so_when_no_worker_has_a_pool_yet() {
        let status = json!({"workers": [{"slot": 1, "pools": {}}]});
        assert!(render(&status)
            .ends_with("no pools yet: a worker builds one on its first job for a database\n"));
    }
}
