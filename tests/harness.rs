//! The test harness's own tests: a private PostgreSQL cluster really starts, speaks TLS with
//! the certificates made for it, survives a restart, and its helpers do what they say.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openssl::ssl::{SslConnector, SslMethod};
use postgres::{Client, NoTls};
use postgres_openssl::MakeTlsConnector;
use support::{find_server_bindir, silent_listener, wait_until_within, Cluster, ClusterOptions};

/// How long things that happen in other processes without a notification (a signal's
/// delivery, a guardian's cleanup) are waited for.
const OTHER_PROCESSES: Duration = Duration::from_secs(60);

/// A TLS client that trusts only `ca` and checks the host name, as `verify-full` does.
fn tls_trusting(ca: &Path) -> MakeTlsConnector {
    let mut builder = SslConnector::builder(SslMethod::tls()).unwrap();
    builder.set_ca_file(ca).unwrap();
    MakeTlsConnector::new(builder.build())
}

fn connect_tls(conninfo: &str, ca: &Path) -> Result<Client, postgres::Error> {
    conninfo
        .parse::<postgres::Config>()
        .unwrap()
        .connect(tls_trusting(ca))
}

fn connect_as(conninfo: &str, application_name: &str) -> Client {
    conninfo
        .parse::<postgres::Config>()
        .unwrap()
        .application_name(application_name)
        .connect(NoTls)
        .unwrap()
}

fn current_user_and_ssl(client: &mut Client) -> (String, bool) {
    let row = client
        .query_one(
            "SELECT current_user::text, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    (row.get(0), row.get(1))
}

#[test]
fn superuser_helpers_run_sql_in_the_app_database() {
    let cluster = Cluster::shared();
    assert_eq!(cluster.query_value("SELECT 1 + 1").as_deref(), Some("2"));
    assert_eq!(
        cluster.query_value("SELECT current_database()").as_deref(),
        Some("app")
    );
    cluster.execute(
        "CREATE TABLE helpers_probe (v text); INSERT INTO helpers_probe VALUES (NULL), ('x')",
    );
    assert_eq!(
        cluster.query("SELECT v FROM helpers_probe ORDER BY v NULLS FIRST"),
        vec![vec![None], vec![Some("x".to_owned())]]
    );
}

#[test]
fn execute_reports_the_server_message() {
    let failure =
        std::panic::catch_unwind(|| Cluster::shared().execute("SELECT * FROM no_such_table"));
    let message = *failure.unwrap_err().downcast::<String>().unwrap();
    assert!(
        message.contains("relation \"no_such_table\" does not exist") && message.contains("42P01"),
        "{message}"
    );
}

#[test]
fn tcp_with_tls_is_encrypted_and_verified_against_the_test_ca() {
    let cluster = Cluster::shared();
    let mut client = connect_tls(&cluster.tcp_url("require"), cluster.ca_cert()).unwrap();
    assert_eq!(current_user_and_ssl(&mut client), ("app".to_owned(), true));
}

#[test]
fn tls_verification_against_an_unrelated_ca_fails() {
    let cluster = Cluster::shared();
    let error = connect_tls(&cluster.tcp_url("require"), cluster.other_ca_cert())
        .err()
        .expect("a certificate from another CA must not verify");
    assert!(
        format!("{error:?}").contains("certificate verify failed"),
        "{error:?}"
    );
}

#[test]
fn tls_verification_fails_for_a_host_the_certificate_does_not_name() {
    let cluster = Cluster::start_with(ClusterOptions {
        cert_hosts: vec!["elsewhere.test".to_owned()],
    });
    let error = connect_tls(&cluster.tcp_url("require"), cluster.ca_cert())
        .err()
        .expect("a certificate for another host name must not verify");
    assert!(
        format!("{error:?}").contains("certificate verify failed"),
        "{error:?}"
    );
}

#[test]
fn tcp_without_tls_needs_the_password() {
    let cluster = Cluster::shared();
    let mut client = Client::connect(&cluster.tcp_url("disable"), NoTls).unwrap();
    assert_eq!(current_user_and_ssl(&mut client), ("app".to_owned(), false));

    let wrong = cluster
        .tcp_url("disable")
        .replace("password=", "password=wrong");
    let error = Client::connect(&wrong, NoTls).err().unwrap();
    assert_eq!(
        error.code(),
        Some(&postgres::error::SqlState::INVALID_PASSWORD)
    );
}

#[test]
fn socket_url_connects_as_app_over_the_unix_socket() {
    let cluster = Cluster::shared();
    let mut client = Client::connect(&cluster.socket_url(), NoTls).unwrap();
    let row = client
        .query_one("SELECT current_user::text, inet_server_addr() IS NULL", &[])
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, bool>(1)),
        ("app".to_owned(), true)
    );
    assert!(cluster
        .socket_dir()
        .join(format!(".s.PGSQL.{}", cluster.port()))
        .exists());
}

#[test]
fn restart_keeps_data_and_port() {
    let cluster = Cluster::start();
    let port = cluster.port();
    let first_postmaster = cluster.postmaster_pid();
    cluster.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)");

    cluster.restart();

    assert_eq!(cluster.port(), port);
    assert_ne!(cluster.postmaster_pid(), first_postmaster);
    assert_eq!(
        cluster.query_value("SELECT v FROM kept").as_deref(),
        Some("42")
    );
}

#[test]
fn stopped_cluster_refuses_connections_until_started_again() {
    let cluster = Cluster::start();
    cluster.stop_immediately();
    assert!(Client::connect(&cluster.tcp_url("disable"), NoTls).is_err());
    assert_eq!(cluster.postmaster_pid(), None);

    cluster.start_again();
    assert_eq!(cluster.query_value("SELECT 1").as_deref(), Some("1"));
}

#[test]
fn set_takes_effect_for_reloadable_and_restart_only_settings() {
    let cluster = Cluster::start();
    cluster.set("idle_session_timeout", "1s");
    assert_eq!(
        cluster.query_value("SHOW idle_session_timeout").as_deref(),
        Some("1s")
    );

    cluster.set("max_connections", "150");
    assert_eq!(
        cluster.query_value("SHOW max_connections").as_deref(),
        Some("150")
    );
}

#[test]
fn terminate_backends_closes_only_that_applications_connections() {
    let cluster = Cluster::shared();
    let mut victims = [
        connect_as(&cluster.socket_url(), "harness-victim"),
        connect_as(&cluster.tcp_url("disable"), "harness-victim"),
    ];
    let mut bystander = connect_as(&cluster.socket_url(), "harness-bystander");
    assert_eq!(cluster.backend_pids("harness-victim").len(), 2);

    assert_eq!(cluster.terminate_backends("harness-victim"), 2);

    assert!(cluster.backend_pids("harness-victim").is_empty());
    for victim in &mut victims {
        assert!(victim.simple_query("SELECT 1").is_err());
    }
    assert!(bystander.simple_query("SELECT 1").is_ok());
}

#[test]
fn sigstopped_backend_answers_only_after_sigcont() {
    let cluster = Cluster::shared();
    let mut frozen = connect_as(&cluster.socket_url(), "harness-frozen");
    let pid = cluster.backend_pids("harness-frozen")[0];

    cluster.sigstop(pid);
    wait_for_process_state(pid, 'T');
    let continued = Arc::new(AtomicBool::new(false));
    let query = {
        let continued = Arc::clone(&continued);
        std::thread::spawn(move || {
            frozen.simple_query("SELECT 1").unwrap();
            continued.load(Ordering::SeqCst)
        })
    };
    continued.store(true, Ordering::SeqCst);
    cluster.sigcont(pid);

    assert!(
        query.join().unwrap(),
        "the stopped backend answered before SIGCONT"
    );
}

/// Waits until `/proc/<pid>/stat` shows the state letter (`T`: stopped). Signal delivery is
/// asynchronous, and there is no event to wait on for it.
fn wait_for_process_state(pid: i32, state: char) {
    wait_until_within(
        &format!("process {pid} is in state {state}"),
        OTHER_PROCESSES,
        || process_state(pid) == Some(state),
    );
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `T`, `Z`…), `None` once gone.
fn process_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 2..].chars().next()
}

#[test]
fn log_contents_shows_the_server_log() {
    let cluster = Cluster::shared();
    assert!(
        cluster
            .log_contents()
            .contains("database system is ready to accept connections"),
        "{}",
        cluster.log_contents()
    );
}

#[test]
fn dropping_a_cluster_stops_the_server_and_removes_its_directory() {
    let cluster = Cluster::start();
    let dir = cluster.socket_dir().to_path_buf();
    let postmaster = cluster.postmaster_pid().unwrap();
    drop(cluster);
    assert!(!dir.exists());
    assert!(!is_running(postmaster));
}

#[test]
fn a_panicking_test_still_cleans_up() {
    let mut seen: Option<(PathBuf, i32)> = None;
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let cluster = Cluster::start();
        seen = Some((
            cluster.socket_dir().to_path_buf(),
            cluster.postmaster_pid().unwrap(),
        ));
        panic!("a failing test");
    }));
    assert!(outcome.is_err());
    let (dir, postmaster) = seen.unwrap();
    assert!(!dir.exists());
    assert!(!is_running(postmaster));
}

#[test]
fn a_forked_child_dropping_the_cluster_leaves_it_to_the_parent() {
    let cluster = Cluster::start();
    let dir = cluster.socket_dir().to_path_buf();
    // SAFETY: the child only drops the cluster (private to this test, so no other thread
    // holds its locks) and leaves with _exit, skipping the parent's atexit handlers.
    match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => {
            drop(cluster);
            unsafe { libc::_exit(0) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            nix::sys::wait::waitpid(child, None).unwrap();
        }
    }
    assert!(dir.exists());
    assert_eq!(cluster.query_value("SELECT 1").as_deref(), Some("1"));
}

/// Set in the child process of `a_killed_test_process_leaves_no_server_behind`.
const ORPHAN_CHILD: &str = "FORKPOOL_HARNESS_ORPHAN_CHILD";
/// Precedes "<cluster directory> <postmaster pid>" in the child's output.
const ANNOUNCEMENT: &str = "orphan cluster: ";

#[test]
fn a_killed_test_process_leaves_no_server_behind() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "start_a_cluster_and_wait_to_be_killed",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ORPHAN_CHILD, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let announcement = lines
        // libtest prints "test NAME ... " without a newline before running the test.
        .find_map(|line| Some(line.unwrap().split_once(ANNOUNCEMENT)?.1.to_owned()))
        .expect("the child announces its cluster");
    let (dir, postmaster) = announcement.split_once(' ').unwrap();
    let (dir, postmaster) = (PathBuf::from(dir), postmaster.parse::<i32>().unwrap());

    child.kill().unwrap();
    child.wait().unwrap();

    // The guardian notices the closed pipe and cleans up; wait for its last step.
    wait_until_within(
        "the guardian removes the cluster directory",
        OTHER_PROCESSES,
        || !dir.exists(),
    );
    assert!(!is_running(postmaster));
}

/// Not a test of its own: the child process of `a_killed_test_process_leaves_no_server_behind`
/// (which runs it with `--ignored` and sets [`ORPHAN_CHILD`]). Ignored, so a normal run
/// lists it as ignored instead of counting a test that proved nothing.
#[test]
#[ignore = "child-process helper of a_killed_test_process_leaves_no_server_behind"]
fn start_a_cluster_and_wait_to_be_killed() {
    assert!(
        std::env::var_os(ORPHAN_CHILD).is_some(),
        "run only as the child of a_killed_test_process_leaves_no_server_behind"
    );
    let cluster = Cluster::start();
    println!(
        "{ANNOUNCEMENT}{} {}",
        cluster.socket_dir().display(),
        cluster.postmaster_pid().unwrap()
    );
    // Stdout is a pipe here, which Rust may buffer beyond the newline.
    std::io::stdout().flush().unwrap();
    // Blocks until killed: the parent never writes to or closes our stdin before that.
    let _ = std::io::stdin().read(&mut [0u8; 1]);
    unreachable!("the parent kills this process");
}

/// Running means existing and not a zombie: an orphaned server is re-parented to PID 1,
/// which in some containers never reaps it.
fn is_running(pid: i32) -> bool {
    !matches!(process_state(pid), None | Some('Z'))
}

#[test]
fn finder_explains_how_to_install_when_no_server_is_found() {
    let message = find_server_bindir(&[]).unwrap_err();
    assert!(
        message.contains("bash scripts/install-postgres.sh"),
        "{message}"
    );
    assert!(message.contains("apt-get install postgresql"), "{message}");

    let without_server = vec![PathBuf::from("/nonexistent"), std::env::temp_dir()];
    let message = find_server_bindir(&without_server).unwrap_err();
    assert!(message.contains("/nonexistent"), "{message}");
}

#[test]
fn finder_finds_the_installed_server() {
    let bindir = find_server_bindir(&support::default_search_path()).unwrap();
    assert!(bindir.join("initdb").exists());
}

#[test]
fn silent_listener_accepts_and_never_answers_until_dropped() {
    let listener = silent_listener();
    let mut stream = TcpStream::connect(("127.0.0.1", listener.port())).unwrap();
    // A bounded wait proves nothing arrives in that time; it cannot fail spuriously.
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let error = stream.read(&mut [0u8; 1]).unwrap_err();
    assert!(matches!(
        error.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));

    drop(listener);
    stream.set_read_timeout(None).unwrap();
    // Closed: end of file, or a reset if the socket was closed with unread data.
    assert!(matches!(stream.read(&mut [0u8; 1]), Ok(0) | Err(_)));
}
