//! libpq's connection parameters beyond host and password, against real servers: client
//! certificates, the password file, the service file, several hosts with
//! `target_session_attrs`, and a pre-ping bounded by the checkout's window.

mod support;

use forkpool::pool::{ConnInfo, Error, Pool, PoolSettings};
use serde_json::json;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{Cluster, Service, ServiceOptions, APP_DATABASE, APP_PASSWORD, APP_USER};

fn settings(app: &str) -> PoolSettings {
    PoolSettings::new()
        .checkout_timeout(Duration::from_secs(5))
        .application_name(app)
}

/// Checks a connection out and returns `current_user` and the server's port.
fn who_and_where(pool: &Pool) -> Result<(String, String), String> {
    let mut connection = pool.checkout("probe").map_err(|e| e.to_string())?;
    let rows = connection
        .query_sql("SELECT current_user::text, current_setting('port')", &[])
        .map_err(|e| e.to_string())?;
    Ok((rows[0].get(0), rows[0].get(1)))
}

/// PG* variables for what a service file should have filled: a host where nothing listens,
/// so a service file that is not read makes the test fail, never reach the machine's own
/// PostgreSQL through libpq's default socket.
const NOWHERE_ELSE: [(&str, &str); 2] = [("PGHOST", "/nonexistent-forkpool-test"), ("PGPORT", "1")];

fn nowhere_else(name: &str) -> Option<String> {
    NOWHERE_ELSE
        .iter()
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_string())
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn a_client_certificate_logs_in_a_role_that_requires_one() {
    let cluster = Cluster::start();
    let client_ca = cluster.require_client_cert("certuser");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = client_ca.issue("certuser", dir.path(), "certuser");
    let base = format!(
        "host=localhost port={} user=certuser dbname={APP_DATABASE} sslmode=verify-full \
         sslrootcert={}",
        cluster.port(),
        cluster.ca_cert().display()
    );

    let with_cert = format!("{base} sslcert={} sslkey={}", cert.display(), key.display());
    let pool = Pool::new(
        "cert",
        ConnInfo::parse(&with_cert).unwrap(),
        settings("cert"),
    )
    .unwrap();
    let (user, _) = who_and_where(&pool).unwrap();
    assert_eq!(user, "certuser");

    // Without a certificate the server refuses, and the error says what it wanted.
    let pool = Pool::new(
        "nocert",
        ConnInfo::parse(&base).unwrap(),
        settings("nocert"),
    )
    .unwrap();
    let error = who_and_where(&pool).unwrap_err();
    assert!(error.contains("certificate"), "{error}");

    // A key others may read is refused before any connection, naming the file and the rule.
    chmod(&key, 0o644);
    let error = Pool::new(
        "loose",
        ConnInfo::parse(&with_cert).unwrap(),
        settings("loose"),
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("group or world access") && error.contains(&key.display().to_string()),
        "{error}"
    );
    // A certificate named but missing is an error too, not a silent fallback to none.
    let missing = format!("{base} sslcert={}", dir.path().join("absent.crt").display());
    let error = Pool::new("gone", ConnInfo::parse(&missing).unwrap(), settings("gone"))
        .unwrap_err()
        .to_string();
    assert!(error.contains("absent.crt"), "{error}");
}

#[test]
fn the_password_file_supplies_a_missing_password_unless_others_can_read_it() {
    let cluster = Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let passfile = dir.path().join("pgpass");
    std::fs::write(
        &passfile,
        format!(
            "# not this one\n\
             localhost:{port}:{APP_DATABASE}:someone_else:wrong\n\
             localhost:{port}:*:{APP_USER}:{APP_PASSWORD}\n\
             *:*:*:*:wrong-too\n",
            port = cluster.port()
        ),
    )
    .unwrap();
    chmod(&passfile, 0o600);
    let url = format!(
        "host=localhost port={} user={APP_USER} dbname={APP_DATABASE} sslmode=require \
         passfile={}",
        cluster.port(),
        passfile.display()
    );
    let pool = Pool::new(
        "passfile",
        ConnInfo::parse(&url).unwrap(),
        settings("pgpass"),
    )
    .unwrap();
    assert_eq!(who_and_where(&pool).unwrap().0, APP_USER);

    // A given password wins over the file.
    let given = format!("{url} password=not-the-password");
    let pool = Pool::new("given", ConnInfo::parse(&given).unwrap(), settings("given")).unwrap();
    let error = who_and_where(&pool).unwrap_err();
    assert!(error.contains("password authentication failed"), "{error}");

    // Readable by the group: ignored (libpq's rule), so there is no password, and the
    // error says where one could have come from, at once (no retry can help).
    chmod(&passfile, 0o640);
    let pool = Pool::new("loose", ConnInfo::parse(&url).unwrap(), settings("loose")).unwrap();
    let started = Instant::now();
    let error = who_and_where(&pool).unwrap_err();
    assert!(
        error.contains("asks for a password") && error.contains("passfile"),
        "{error}"
    );
    assert!(error.contains("1 attempt(s)"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(4), "{error}");
}

#[test]
fn a_service_file_section_fills_the_connection_parameters() {
    let cluster = Cluster::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pg_service.conf");
    std::fs::write(
        &file,
        format!(
            "[elsewhere]\nhost=nowhere.invalid\n\n\
             # the test cluster\n[testdb]\nhost=localhost\nport={}\nuser={APP_USER}\n\
             password={APP_PASSWORD}\ndbname=not-this-one\nsslmode=require\n",
            cluster.port()
        ),
    )
    .unwrap();
    let file_var = file.display().to_string();
    let lookup = |name: &str| (name == "PGSERVICEFILE").then(|| file_var.clone());
    // dbname in the string wins over the service's.
    let info = ConnInfo::parse(&format!("service=testdb dbname={APP_DATABASE}"))
        .unwrap()
        .with_service(lookup)
        .unwrap()
        .with_env(nowhere_else);
    let pool = Pool::new("service", info, settings("service")).unwrap();
    assert_eq!(
        who_and_where(&pool).unwrap(),
        (APP_USER.to_string(), cluster.port().to_string())
    );
}

/// A private cluster whose sessions are read-only by default (a stand-in for a standby:
/// `target_session_attrs=read-write` checks `transaction_read_only`, as libpq does).
fn read_only_cluster() -> Cluster {
    let cluster = Cluster::start();
    cluster.set("default_transaction_read_only", "on");
    cluster
}

fn two_hosts(first: &Cluster, second: &Cluster, attrs: &str) -> String {
    format!(
        "host=localhost,localhost port={},{} user={APP_USER} password={APP_PASSWORD} \
         dbname={APP_DATABASE} sslmode=require target_session_attrs={attrs}",
        first.port(),
        second.port()
    )
}

#[test]
fn read_write_skips_a_read_only_host_and_reconnects_to_the_new_primary() {
    let old_standby = read_only_cluster();
    let old_primary = Cluster::start();
    let url = two_hosts(&old_standby, &old_primary, "read-write");
    let app = "t-failover";
    let pool = Pool::new(
        "ha",
        ConnInfo::parse(&url).unwrap(),
        settings(app).ping_after(Duration::ZERO),
    )
    .unwrap();
    // The read-only first host is tried, refused, and the second one used.
    let (_, port) = who_and_where(&pool).unwrap();
    assert_eq!(port, old_primary.port().to_string());
    // `any` takes the first host that answers, read-only or not.
    let any = Pool::new(
        "any",
        ConnInfo::parse(&two_hosts(&old_standby, &old_primary, "any")).unwrap(),
        settings("t-any"),
    )
    .unwrap();
    assert_eq!(
        who_and_where(&any).unwrap().1,
        old_standby.port().to_string()
    );

    // Failover: the primary goes away, the standby is promoted (made writable).
    old_primary.stop();
    old_standby.set("default_transaction_read_only", "off");
    let (_, port) = who_and_where(&pool).unwrap();
    assert_eq!(port, old_standby.port().to_string());
    let mut connection = pool.checkout("write").unwrap();
    connection
        .batch_execute("CREATE TABLE written_after_failover (id int)")
        .unwrap();
}

#[test]
fn a_hot_standby_is_skipped_for_read_write_and_promoted_it_takes_over() {
    let primary = Cluster::start();
    let standby = primary.start_standby();
    assert!(standby.in_recovery());
    // (target_session_attrs, the port listed first, the port listed second)
    let pool = |attrs: &str, first: u16, second: u16| {
        let url = format!(
            "host=localhost,localhost port={first},{second} user={APP_USER} \
             password={APP_PASSWORD} dbname={APP_DATABASE} sslmode=require \
             target_session_attrs={attrs}"
        );
        Pool::new(
            attrs,
            ConnInfo::parse(&url).unwrap(),
            settings(&format!("t-{attrs}")).ping_after(Duration::ZERO),
        )
        .unwrap()
    };
    let (standby_port, primary_port) = (standby.port(), primary.port());
    let port_of = |pool: &Pool| who_and_where(pool).unwrap().1.parse::<u16>().unwrap();
    // read-write and primary move on past a standby listed first; standby and
    // prefer-standby past a primary listed first (pg_is_in_recovery()).
    let read_write = pool("read-write", standby_port, primary_port);
    assert_eq!(port_of(&read_write), primary_port);
    assert_eq!(
        port_of(&pool("primary", standby_port, primary_port)),
        primary_port
    );
    assert_eq!(
        port_of(&pool("standby", primary_port, standby_port)),
        standby_port
    );
    let prefer = pool("prefer-standby", primary_port, standby_port);
    assert_eq!(port_of(&prefer), standby_port);

    // Failover: the primary dies, the standby is promoted; the same pool's next checkout
    // finds its session dead and reconnects to the new primary, which takes writes.
    primary.stop_immediately();
    standby.promote();
    let mut connection = read_write.checkout("after failover").unwrap();
    let rows = connection
        .query_sql("SELECT current_setting('port')", &[])
        .unwrap();
    assert_eq!(rows[0].get::<_, String>(0), standby.port().to_string());
    connection
        .batch_execute("CREATE TABLE written_after_promotion (id int)")
        .unwrap();
    drop(connection);
    // No standby left: a new prefer-standby pool settles for any server that answers.
    let prefer = pool("prefer-standby", primary_port, standby_port);
    assert_eq!(port_of(&prefer), standby_port);
}

#[test]
fn no_acceptable_host_is_an_error_naming_each_host_and_why() {
    let read_only = read_only_cluster();
    let url = format!(
        "host=localhost,127.0.0.1 port={},1 user={APP_USER} password={APP_PASSWORD} \
         dbname={APP_DATABASE} sslmode=require target_session_attrs=read-write",
        read_only.port()
    );
    let pool = Pool::new(
        "none",
        ConnInfo::parse(&url).unwrap(),
        settings("t-none")
            .checkout_timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    let error = pool.checkout("job").unwrap_err();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "localhost:{}: session is read-only",
            read_only.port()
        )),
        "{text}"
    );
    assert!(text.contains("127.0.0.1:1: cannot connect"), "{text}");
}

#[test]
fn the_service_runs_a_writing_job_with_the_read_only_host_listed_first() {
    let read_only = read_only_cluster();
    let writable = Cluster::shared();
    // Through a service file named by PGSERVICEFILE in the service's environment, the way an
    // operator would: the master reads it at start-up.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.conf");
    std::fs::write(
        &file,
        format!(
            "[ha]\nhost=localhost,localhost\nport={},{}\nuser={APP_USER}\ndbname={APP_DATABASE}\n\
             password={APP_PASSWORD}\nsslmode=require\ntarget_session_attrs=read-write\n",
            read_only.port(),
            writable.port()
        ),
    )
    .unwrap();
    let mut options = ServiceOptions::on(writable);
    options.database_url = "service=ha".into();
    options.env = vec![("PGSERVICEFILE".into(), file.display().to_string())];
    options
        .env
        .extend(NOWHERE_ELSE.map(|(key, value)| (key.to_string(), value.to_string())));
    let service = Service::start(options);
    let answer = service.submit("add_item", json!({"parent_id": 727, "name": "via ha"}));
    assert_eq!(answer["ok"], true, "{answer}\n{}", service.logs());
    let count = writable.query_value("SELECT count(*) FROM items WHERE parent_id = 727");
    assert_eq!(count.as_deref(), Some("1"));
}

#[test]
fn the_service_refuses_to_start_with_a_service_it_cannot_find() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("services.conf");
    std::fs::write(&file, "[other]\nhost=localhost\n").unwrap();
    let mut options = ServiceOptions::on(Cluster::shared());
    options.database_url = "service=absent".into();
    options.env = vec![
        ("PGSERVICEFILE".into(), file.display().to_string()),
        ("PGSYSCONFDIR".into(), dir.path().display().to_string()),
    ];
    options
        .env
        .extend(NOWHERE_ELSE.map(|(key, value)| (key.to_string(), value.to_string())));
    let mut service = Service::spawn(options);
    let status = service.wait_exit();
    assert_eq!(status.code(), Some(2), "logs:\n{}", service.logs());
    // The process has exited; its last stderr line may still be on its way to the reader.
    service.wait_for_log("definition of service \"absent\" not found", 1);
    assert!(
        service.logs().contains("databases.main"),
        "{}",
        service.logs()
    );
}

#[test]
fn a_ping_to_a_frozen_backend_ends_with_the_checkout_window() {
    let cluster = Cluster::shared();
    // The window is long enough for a connect on a loaded machine; connect_timeout far
    // longer, so a ping bounded by it instead would stand out.
    let connect_timeout = Duration::from_secs(60);
    let checkout_timeout = Duration::from_secs(2);
    let info = ConnInfo::parse(&cluster.tcp_url("require")).unwrap();
    let pool = Pool::new(
        "frozen-ping",
        info,
        settings("t-frozen-ping")
            .connect_timeout(connect_timeout)
            .checkout_timeout(checkout_timeout)
            .ping_after(Duration::ZERO),
    )
    .unwrap();
    let pid = pool.checkout("first").unwrap().backend_pid();
    let frozen = cluster.freeze(pid);
    let started = Instant::now();
    let error = pool.checkout("second").unwrap_err();
    let elapsed = started.elapsed();
    drop(frozen);
    let text = error.to_string();
    assert!(matches!(error, Error::Unavailable { .. }), "{error:?}");
    assert!(text.contains("checkout_timeout"), "{text}");
    assert!(
        elapsed >= checkout_timeout && elapsed < connect_timeout / 4,
        "the checkout took {elapsed:?}: not bounded by checkout_timeout {checkout_timeout:?}"
    );
    // Resumed, the server serves the pool again.
    let mut connection = pool.checkout("third").unwrap();
    let one: i32 = connection.query_sql("SELECT 1", &[]).unwrap()[0].get(0);
    assert_eq!(one, 1);
}

#[test]
fn a_ping_to_a_frozen_server_ends_with_the_checkout_window() {
    // The whole server frozen (backend and postmaster): nothing, not even a cancel request,
    // may wait on it past the window.
    let cluster = Cluster::start();
    let connect_timeout = Duration::from_secs(60);
    let checkout_timeout = Duration::from_secs(2);
    let info = ConnInfo::parse(&cluster.tcp_url("require")).unwrap();
    let pool = Pool::new(
        "frozen-server",
        info,
        settings("t-frozen-server")
            .connect_timeout(connect_timeout)
            .checkout_timeout(checkout_timeout)
            .ping_after(Duration::ZERO),
    )
    .unwrap();
    let pid = pool.checkout("first").unwrap().backend_pid();
    let postmaster = cluster.postmaster_pid().expect("the cluster runs");
    let frozen = (cluster.freeze(pid), cluster.freeze(postmaster));
    let started = Instant::now();
    let error = pool.checkout("second").unwrap_err();
    let elapsed = started.elapsed();
    drop(frozen);
    assert!(error.to_string().contains("checkout_timeout"), "{error}");
    assert!(
        elapsed < connect_timeout / 4,
        "the checkout took {elapsed:?}: not bounded by checkout_timeout {checkout_timeout:?}"
    );
}
