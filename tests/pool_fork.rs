//! A pool used before fork() stays correct in parent and child; the same sharing without
//! the guard corrupts the TLS session ("bad record mac"), which shows the guarded test can
//! fail.
//!
//! Forking a multi-threaded test binary is only safe when no other thread holds a lock at
//! that moment, so every test here takes `FORK_LOCK` and the child does no more than the
//! test needs, then leaves with `libc::_exit` and reports through its exit code.

mod support;

use forkpool::pool::{ConnInfo, Pool, PoolSettings};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use std::collections::HashSet;
use std::io::{PipeWriter, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{wait_until_within, Cluster};

static FORK_LOCK: Mutex<()> = Mutex::new(());

/// How long parent and child hammer the database at the same time.
const OVERLAP: Duration = Duration::from_secs(2);

/// Bound on one query; far above what a healthy query needs.
const QUERY_BOUND: Duration = Duration::from_secs(5);

/// Exit codes a child reports.
const CHILD_OK: i32 = 0;
const CHILD_QUERY_FAILED: i32 = 3;

/// Runs `SELECT $1` with changing values for `OVERLAP`; counts wrong or failed answers.
fn hammer(mut one_query: impl FnMut(i32) -> Result<i32, String>) -> (u32, u32) {
    let until = Instant::now() + OVERLAP;
    let (mut done, mut failed) = (0u32, 0u32);
    let mut value = 0i32;
    while Instant::now() < until {
        value += 1;
        match one_query(value) {
            Ok(answer) if answer == value => done += 1,
            _ => failed += 1,
        }
    }
    (done, failed)
}

fn run_child(body: impl FnOnce() -> i32) -> Pid {
    // SAFETY: the caller holds FORK_LOCK, so no other test thread of this binary is in the
    // middle of forking; the child only runs `body` and leaves with _exit.
    match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)).unwrap_or(99);
            // SAFETY: _exit skips atexit handlers and destructors that belong to the parent
            // (the shared cluster's cleanup among them).
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    }
}

fn exit_code(child: Pid) -> Result<i32, String> {
    match waitpid(child, None).expect("waitpid") {
        WaitStatus::Exited(_, code) => Ok(code),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn parent_and_child_share_a_pool_over_tls_without_errors() {
    let _serialized = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::shared();
    let info = ConnInfo::parse(&cluster.tcp_url("require")).unwrap();
    let pool = Pool::new(
        "fork",
        info,
        PoolSettings::new().pool_size(2).application_name("t-fork"),
    )
    .unwrap();
    let statement_query = |pool: &Pool, value: i32| -> Result<i32, String> {
        let mut connection = pool.checkout("fork-job").map_err(|e| e.to_string())?;
        // Bounded, so a broken guard fails this test instead of hanging it.
        connection.set_deadline(Some(Instant::now() + QUERY_BOUND));
        let rows = connection
            .query_sql("SELECT $1::int4", &[&value])
            .map_err(|e| e.to_string())?;
        Ok(rows[0].get(0))
    };
    // One session checked out across the fork, one idle in the pool.
    let mut held = pool.checkout("held-across-fork").unwrap();
    held.set_deadline(Some(Instant::now() + OVERLAP + QUERY_BOUND));
    statement_query(&pool, 0).unwrap();
    let held_pid = held.backend_pid();
    let idle_pid = pool.checkout("peek").unwrap().backend_pid();

    // SAFETY: FORK_LOCK is held, so no other test thread of this binary forks now; the
    // child only uses the pool and leaves with _exit.
    let child = match unsafe { fork() }.expect("fork") {
        ForkResult::Child => {
            // The inherited checkout belongs to the parent: it refuses to run anything here,
            // and its Drop forgets it.
            let refused = held.batch_execute("SELECT 1").is_err();
            drop(held);
            let (done, failed) = hammer(|value| statement_query(&pool, value));
            let stats = pool.stats();
            let code = if !refused || failed > 0 || done == 0 || stats.created == 0 {
                CHILD_QUERY_FAILED
            } else {
                CHILD_OK
            };
            // SAFETY: skips destructors and atexit handlers that belong to the parent.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => child,
    };
    let (done, failed) = hammer(|value| {
        if value % 2 == 0 {
            let rows = held
                .query_sql("SELECT $1::int4", &[&value])
                .map_err(|e| e.to_string())?;
            Ok(rows[0].get(0))
        } else {
            statement_query(&pool, value)
        }
    });
    assert_eq!(exit_code(child), Ok(CHILD_OK), "the child saw errors");
    assert_eq!(
        failed, 0,
        "the parent saw errors ({done} queries succeeded)"
    );
    assert!(done > 0);
    assert_eq!(held.backend_pid(), held_pid);
    drop(held);
    let pids = cluster.backend_pids("t-fork");
    assert!(
        pids.contains(&held_pid) && pids.contains(&idle_pid),
        "parent sessions survive: {pids:?}"
    );
    let stats = pool.stats();
    assert_eq!(
        stats.created, 2,
        "the parent never needed a new session: {stats:?}"
    );
}

/// What a client sees when another process wrote to its TLS session: OpenSSL refuses a
/// record ("decryption failed or bad record mac") or the server's alert about ours ("sslv3
/// alert bad record mac"); a record that does decrypt carries a reply meant for the other
/// process ("unexpected message from server", or an answer to the other's query).
const CORRUPTION_SYMPTOMS: &[&str] = &["bad record mac", "unexpected message", "crossed reply"];

#[test]
fn unguarded_client_shared_across_fork_corrupts_its_tls_session() {
    let _serialized = FORK_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::shared();
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_verify(SslVerifyMode::NONE);
    let tls = postgres_openssl::MakeTlsConnector::new(builder.build());
    let mut client = postgres::Client::connect(&cluster.tcp_url("require"), tls).unwrap();
    let backend: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0);
    let log_before = cluster.log_contents().len();
    // Both processes use the one TLS session and write each distinct error they see to
    // their pipe as it happens; each is killed by SIGALRM if it hangs, which the shared
    // session can also cause, and what it wrote by then still counts.
    let use_shared_client = |client: &mut postgres::Client, mut report: PipeWriter| {
        // SAFETY: alarm only arms a timer for this process.
        unsafe { libc::alarm(5) };
        let mut reported = HashSet::new();
        let (_, failed) = hammer(|value| {
            let answer = client
                .query_one("SELECT $1::int4", &[&value])
                .map_err(|e| error_chain(&e))
                .and_then(|row| row.try_get::<_, i32>(0).map_err(|e| error_chain(&e)));
            let outcome = match answer {
                Ok(answer) if answer != value => {
                    Err(format!("crossed reply: asked for {value}, got {answer}"))
                }
                other => other,
            };
            // Distinct errors, a few: once the session is dead every query fails alike.
            if let Err(error) = &outcome {
                if reported.len() < 10 && reported.insert(error.clone()) {
                    let _ = writeln!(report, "{error}");
                }
            }
            outcome
        });
        if failed > 0 {
            CHILD_QUERY_FAILED
        } else {
            CHILD_OK
        }
    };
    let (first_report, writer) = std::io::pipe().unwrap();
    let first = run_child(|| use_shared_client(&mut client, writer));
    let (second_report, writer) = std::io::pipe().unwrap();
    let second = run_child(|| use_shared_client(&mut client, writer));
    let outcomes = [exit_code(first), exit_code(second)];
    // This process never touches the session again and must not send Terminate on it.
    std::mem::forget(client);
    let seen: Vec<String> = [first_report, second_report]
        .into_iter()
        .flat_map(|mut report| {
            let mut text = String::new();
            report
                .read_to_string(&mut text)
                .expect("reading a child's errors");
            text.lines().map(str::to_string).collect::<Vec<_>>()
        })
        .collect();
    assert!(
        seen.iter()
            .any(|error| CORRUPTION_SYMPTOMS.iter().any(|s| error.contains(s))),
        "sharing one TLS session between processes showed none of {CORRUPTION_SYMPTOMS:?}; \
         exits {outcomes:?}, errors seen: {seen:#?}"
    );
    // The server's side of the same corruption, as the issue reports it. Its log line is
    // written before the backend leaves pg_stat_activity.
    let gone = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {backend}");
    wait_until_within(&format!("backend {backend} exits"), QUERY_BOUND, || {
        cluster.query_value(&gone).as_deref() == Some("0")
    });
    let log = cluster.log_contents();
    let backend_lines: Vec<&str> = log[log_before..]
        .lines()
        .filter(|line| line.contains(&format!("[{backend}]")))
        .collect();
    assert!(
        backend_lines
            .iter()
            .any(|line| line.contains("SSL error: decryption failed or bad record mac")),
        "the server did not report the corrupted TLS records: {backend_lines:#?}"
    );
}

/// An error with its causes, where OpenSSL's reason is (tokio-postgres's own text is only
/// "error communicating with the server").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(&format!(": {cause_text}"));
        }
        source = cause.source();
    }
    text
}
