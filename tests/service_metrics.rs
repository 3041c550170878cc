//! The scrape endpoint (`service.metrics_listen`) end to end: the real binary, a real
//! PostgreSQL, raw HTTP over TCP. Counts after known jobs, the health answer during a stop,
//! the answers to wrong requests, the limits, and what the master holds afterwards.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::procfs::{descriptors, tcp_sockets_of};
use support::{wait_until, Cluster, Service, ServiceOptions, EVENT_TIMEOUT};

/// `SELECT 10 / :d`: `d = 0` fails with `db_error` (division by zero) on the worker.
const DIVIDE: &str = r#"
sql = "SELECT 10 / :d AS q"
[params]
d = "int4"
"#;

/// The endpoint's per-connection deadline (src/master/metrics_http.rs).
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);

/// An address with a free port on the loopback: bound, then let go for the service.
fn free_address() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
}

/// A service of two workers answering scrapes on a port of its own.
fn service_with_metrics(cluster: &Cluster) -> (Service, SocketAddr) {
    let address = free_address();
    let service = Service::start(
        ServiceOptions::on(cluster)
            .job("divide", DIVIDE)
            .service_key("metrics_listen", &format!("\"{address}\"")),
    );
    (service, address)
}

/// One HTTP answer: status code, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

/// Sends `request` on a fresh connection and reads the answer to the end (the endpoint
/// closes every connection after its answer).
fn exchange(address: SocketAddr, request: &[u8]) -> Answer {
    try_exchange(address, request).expect("an answer from the metrics endpoint")
}

/// [`exchange`], or the error that cut it (a refused connection may be reset).
fn try_exchange(address: SocketAddr, request: &[u8]) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    if raw.is_empty() {
        let closed = std::io::ErrorKind::UnexpectedEof;
        return Err(std::io::Error::new(closed, "closed without an answer"));
    }
    Ok(parse_answer(&raw))
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no complete HTTP head in {text:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(": "))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(address: SocketAddr, path: &str) -> Answer {
    exchange(
        address,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nAccept: text/plain\r\n\r\n").as_bytes(),
    )
}

/// `/metrics` as samples: `name{labels}` to value, and checks the text's shape on the way
/// (each sample's family declared by a TYPE line before it, each family declared once).
fn scrape(address: SocketAddr) -> BTreeMap<String, f64> {
    let answer = get(address, "/metrics");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.headers["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    samples(&answer.body)
}

fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut declared = BTreeSet::new();
    let mut samples = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let family = rest.split(' ').next().unwrap().to_string();
            assert!(declared.insert(family), "family declared twice: {line}");
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let name = series.split('{').next().unwrap();
        let family_declared = declared.iter().any(|family| {
            name == family
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| name == format!("{family}{suffix}"))
        });
        assert!(family_declared, "sample before its TYPE: {line}");
        samples.insert(series.to_string(), value.parse().expect("a number"));
    }
    samples
}

/// The Python client's venv (made by scripts/test.sh) or a python3 that has
/// prometheus_client: the reference parser, when this machine has one.
fn python_with_prometheus_client() -> Option<String> {
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/python/.venv/bin/python"
    );
    [venv, "python3"]
        .into_iter()
        .map(String::from)
        .find(|python| {
            Command::new(python)
                .args(["-c", "import prometheus_client"])
                .output()
                .is_ok_and(|out| out.status.success())
        })
}

#[test]
fn scrape_counts_ok_and_failed_jobs_by_job_with_their_histograms() {
    let cluster = Cluster::shared();
    let (service, address) = service_with_metrics(cluster);
    for a in 0..3 {
        let answer = service.submit("add", json!({"a": a, "b": 1}));
        assert_eq!(answer["ok"], true, "{answer}");
    }
    for _ in 0..2 {
        let answer = service.submit("divide", json!({"d": 0}));
        assert_eq!(answer["error"]["kind"], "db_error", "{answer}");
    }
    let text = get(address, "/metrics").body;
    let samples = samples(&text);
    let value = |series: &str| {
        *samples
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"))
    };
    assert_eq!(value(r#"forkpool_jobs_total{job="add",outcome="ok"}"#), 3.0);
    assert_eq!(
        value(r#"forkpool_jobs_total{job="divide",outcome="db_error"}"#),
        2.0
    );
    assert_eq!(
        value(r#"forkpool_jobs_total{job="divide",outcome="ok"}"#),
        0.0
    );
    // A catalog job never run has its series at zero; an outcome never seen has none.
    assert_eq!(
        value(r#"forkpool_jobs_total{job="sleep",outcome="ok"}"#),
        0.0
    );
    assert!(!text.contains(r#"job="add",outcome="timeout""#), "{text}");
    for (job, runs) in [("add", 3.0), ("divide", 2.0), ("sleep", 0.0)] {
        for histogram in [
            "forkpool_job_duration_seconds",
            "forkpool_job_queue_wait_seconds",
        ] {
            let count = value(&format!("{histogram}_count{{job=\"{job}\"}}"));
            assert_eq!(count, runs, "{histogram} of {job}");
            let inf = value(&format!("{histogram}_bucket{{job=\"{job}\",le=\"+Inf\"}}"));
            assert_eq!(inf, runs, "{histogram} of {job}: +Inf is the count");
            let sum = value(&format!("{histogram}_sum{{job=\"{job}\"}}"));
            assert!(
                sum >= 0.0 && (runs > 0.0 || sum == 0.0),
                "{histogram} of {job}: {sum}"
            );
            let buckets: Vec<f64> = samples
                .iter()
                .filter(|(series, _)| {
                    series.starts_with(&format!("{histogram}_bucket{{job=\"{job}\","))
                })
                .map(|(_, value)| *value)
                .collect();
            assert_eq!(
                buckets.len(),
                15,
                "{histogram} of {job}: 14 bounds and +Inf"
            );
        }
    }
    // An add on a warm worker is far below ten seconds: all in finite buckets.
    assert_eq!(
        value(r#"forkpool_job_duration_seconds_bucket{job="add",le="10"}"#),
        3.0
    );
    // The status answer's series come first, from the same figures.
    assert_eq!(value("forkpool_jobs_succeeded_total"), 3.0);
    assert_eq!(value("forkpool_jobs_failed_total"), 2.0);
    assert_eq!(value(r#"forkpool_workers{state="idle"}"#), 2.0);
    // The process's own: this scrape's connection is open, each submit's is closed.
    assert_eq!(value("forkpool_metrics_connections"), 1.0);
    let master = service.pid().as_raw();
    let open = value("process_open_fds");
    let held = descriptors(master).len() as f64;
    assert!(
        (open - held).abs() <= 2.0,
        "process_open_fds {open}, /proc says {held}"
    );
    let start = value("process_start_time_seconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        start > now - 300.0 && start <= now,
        "start {start}, now {now}"
    );

    // The reference parser reads it all, when this machine has it.
    if let Some(python) = python_with_prometheus_client() {
        let script = "import sys\nfrom prometheus_client.parser import text_string_to_metric_families as p\n\
                      fams = {f.name: f for f in p(sys.stdin.read())}\n\
                      assert fams['forkpool_job_duration_seconds'].type == 'histogram'\n\
                      assert fams['forkpool_jobs'].type == 'counter'\nprint(len(fams))";
        let mut child = Command::new(python)
            .args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "prometheus_client refused the text: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        eprintln!("no python with prometheus_client: the reference parser was not run");
    }
}

#[test]
fn healthz_is_200_while_serving_and_503_while_stopping() {
    let cluster = Cluster::shared();
    let (mut service, address) = service_with_metrics(cluster);
    let ok = get(address, "/healthz");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));

    // A job that runs through the stop keeps the master (and the endpoint) up meanwhile.
    let mut client = service.client();
    client.send(json!({"id": 1, "op": "run", "job": "sleep", "args": {"seconds": 3}}));
    service.wait_for_status("the sleep to run", |status| status["running"] == 1);
    service.signal(Signal::SIGTERM);
    service.wait_for_log("SIGTERM: graceful stop", 1);
    let stopping = get(address, "/healthz");
    assert_eq!(
        (stopping.status, stopping.body.as_str()),
        (503, "stopping\n")
    );
    // /metrics still answers while stopping, and says so.
    assert_eq!(scrape(address)["forkpool_stopping"], 1.0);
    let answer = client.recv().expect("the sleep's answer");
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(service.wait_exit().success());
}

#[test]
fn wrong_requests_get_404_405_431_and_400_and_the_endpoint_keeps_serving() {
    let cluster = Cluster::shared();
    let (service, address) = service_with_metrics(cluster);
    assert_eq!(get(address, "/").status, 404);
    assert_eq!(get(address, "/metrics/extra").status, 404);
    let post = exchange(
        address,
        b"POST /metrics HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.headers["allow"], "GET");
    // A head past 8 KiB, in one write and with no end in sight.
    let huge = format!(
        "GET /metrics HTTP/1.1\r\nX-Pad: {}\r\n",
        "a".repeat(16 * 1024)
    );
    assert_eq!(exchange(address, huge.as_bytes()).status, 431);
    assert_eq!(
        exchange(address, b"\x16\x03\x01\x02\x00\x01\x00\r\n\r\n").status,
        400
    );
    // A query string is not part of the path.
    assert_eq!(
        get(address, "/metrics?name[]=forkpool_jobs_total").status,
        200
    );
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_its_deadline() {
    let cluster = Cluster::shared();
    let (service, address) = service_with_metrics(cluster);
    let mut silent = TcpStream::connect(address).unwrap();
    // A half head counts as nothing: the deadline is the whole exchange's.
    silent.write_all(b"GET /metr").unwrap();
    let opened = Instant::now();
    silent
        .set_read_timeout(Some(CONNECTION_DEADLINE + EVENT_TIMEOUT))
        .unwrap();
    let mut rest = Vec::new();
    let read = silent.read_to_end(&mut rest);
    let waited = opened.elapsed();
    assert!(read.is_ok() && rest.is_empty(), "{read:?} {rest:?}");
    assert!(
        waited >= CONNECTION_DEADLINE - Duration::from_millis(500),
        "closed after {waited:?}, before the deadline"
    );
    assert!(
        waited < CONNECTION_DEADLINE + Duration::from_secs(5),
        "{waited:?}"
    );
    assert_eq!(get(address, "/healthz").status, 200);
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}

#[test]
fn connections_past_the_cap_are_refused_and_many_scrapes_leave_nothing_open() {
    let cluster = Cluster::shared();
    let (service, address) = service_with_metrics(cluster);
    let master = service.pid().as_raw();
    let baseline = descriptors(master).len();

    // Sixteen held open (the cap), then one more: answered 503 and closed.
    let held: Vec<TcpStream> = (0..16)
        .map(|_| TcpStream::connect(address).unwrap())
        .collect();
    // Refused: a 503 written at once and the connection closed, which may reach us as a
    // reset before the 503 does (the master drops the request unread). Never served.
    let healthz = b"GET /healthz HTTP/1.1\r\n\r\n";
    if let Ok(refused) = try_exchange(address, healthz) {
        assert_eq!(refused.status, 503, "{}", refused.body);
    }
    drop(held);
    // Once the master has seen the sixteen close, scrapes are served again.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !try_exchange(address, healthz).is_ok_and(|answer| answer.status == 200) {
        assert!(
            Instant::now() < deadline,
            "still refused after the sixteen closed"
        );
    }

    for _ in 0..200 {
        assert_eq!(get(address, "/healthz").status, 200);
    }
    // Each scraper closed its end after reading: the master closes its own on seeing that.
    wait_until("every scrape connection to be closed", || {
        descriptors(master).len() == baseline
    });
    // The master's TCP sockets: its listener alone. It connects to no database.
    let tcp = tcp_sockets_of(master);
    assert_eq!(tcp.len(), 1, "the master holds TCP sockets {tcp:?}");
    assert_eq!(service.submit("add", json!({"a": 1}))["ok"], true);
}
