//! The operator's commands end to end (DESIGN §4, §5): `forkpool ping`, `jobs`, `reload`,
//! `stop` and `scale` run as the real binary against a real service and cluster; who may
//! reload, stop and scale (`service.admin_uids`); where the configuration is looked for.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::{json, Value};
use support::{Client, Cluster, Service, ServiceOptions};

/// A job whose answer says which version of its file the worker runs.
const VERSION_1: &str = "sql = \"SELECT 1 AS version\"\n";
const VERSION_2: &str = "sql = \"SELECT 2 AS version\"\n";

/// One service for the tests that only read: `ping`, `jobs`, the configuration search.
fn shared() -> &'static Service {
    static SERVICE: OnceLock<Service> = OnceLock::new();
    Service::shared(&SERVICE, || {
        Service::start(ServiceOptions::on(Cluster::shared()).job("version", VERSION_1))
    })
}

/// The binary with `args`, run in `dir`, with `env` and nothing else of forkpool's from the
/// test's environment.
fn forkpool_in(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_forkpool"));
    command
        .args(args)
        .current_dir(dir)
        .env_remove("FORKPOOL_SOCKET")
        .env_remove("FORKPOOL_CONFIG")
        .env_remove("FORKPOOL_SYSTEM_CONFIG_DIR");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("running the forkpool binary")
}

/// `forkpool COMMAND --socket <service's> ARGS...`
fn on(service: &Service, command: &str, args: &[&str]) -> Output {
    let socket = service.socket.to_str().expect("a UTF-8 socket path");
    let mut all = vec![command, "--socket", socket];
    all.extend_from_slice(args);
    forkpool_in(service.dir.path(), &[], &all)
}

/// The exit code, stdout, and a description for assertion messages.
fn outcome(output: &Output) -> (Option<i32>, String, String) {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let described = format!(
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status.code()
    );
    (output.status.code(), stdout, described)
}

/// The workers that take jobs (booting, idle or busy), as (pid, generation).
fn serving(status: &Value) -> Vec<(i64, i64)> {
    status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| matches!(w["state"].as_str(), Some("booting" | "idle" | "busy")))
        .map(|w| {
            (
                w["pid"].as_i64().unwrap(),
                w["generation"].as_i64().unwrap(),
            )
        })
        .collect()
}

/// Which version of `version.toml` a worker ran.
fn version(service: &Service) -> i64 {
    let answer = service.submit("version", json!({}));
    answer["result"]["rows"][0]["version"]
        .as_i64()
        .unwrap_or_else(|| panic!("{answer}"))
}

#[test]
fn ping_answers_with_the_master_pid_and_an_absent_service_exits_3() {
    let service = shared();
    let (code, stdout, out) = outcome(&on(service, "ping", &[]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        stdout.starts_with(&format!("pong from forkpool pid {} at ", service.pid())),
        "{out}"
    );
    let gone = service.dir.path().join("no.sock");
    let (code, _, out) = outcome(&forkpool_in(
        service.dir.path(),
        &[],
        &["ping", "--socket", gone.to_str().unwrap()],
    ));
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("cannot reach forkpool"), "{out}");
}

#[test]
fn jobs_prints_the_catalog_as_a_table_and_as_json() {
    let service = shared();
    let (code, stdout, out) = outcome(&on(service, "jobs", &[]));
    assert_eq!(code, Some(0), "{out}");
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|line| {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect()
        })
        .collect();
    assert_eq!(
        lines[0],
        [
            "name",
            "kind",
            "database",
            "timeout",
            "params",
            "description"
        ],
        "{out}"
    );
    assert!(
        lines.contains(&vec![
            "add",
            "sql",
            "main",
            "1m",
            "a int8, b int8 = 1",
            "Add two numbers"
        ]),
        "{out}"
    );
    assert!(
        lines.contains(&vec![
            "sleep",
            "sql",
            "main",
            "10s",
            "seconds float8 = 1",
            "Sleep on the server, for trying timeouts"
        ]),
        "{out}"
    );
    assert!(
        lines.contains(&vec!["version", "sql", "main", "1m", "-", "-"]),
        "{out}"
    );

    let (code, stdout, out) = outcome(&on(service, "jobs", &["--json"]));
    assert_eq!(code, Some(0), "{out}");
    let catalog: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {out}"));
    let add = catalog["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|job| job["name"] == "add")
        .unwrap_or_else(|| panic!("no add: {out}"));
    assert_eq!(add["kind"], "sql", "{out}");
    assert_eq!(add["database"], "main", "{out}");
    assert_eq!(
        add["params"][1],
        json!({"name": "b", "type": "int8", "default": 1})
    );
}

#[test]
fn reload_answers_once_the_new_generation_serves_with_the_changed_job_file() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()).job("version", VERSION_1));
    let before = serving(&service.status());
    assert_eq!(version(&service), 1);
    std::fs::write(service.dir.path().join("workers/version.toml"), VERSION_2).unwrap();

    let (code, stdout, out) = outcome(&on(&service, "reload", &["--timeout", "60"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        stdout, "reloaded: generation 2 serving on 2 workers\n",
        "{out}"
    );
    // Answered only once it was done: nothing of generation 1 takes jobs any more.
    let after = serving(&service.status());
    assert_eq!(after.len(), 2, "{after:?}");
    for (pid, generation) in &after {
        assert_eq!(*generation, 2, "{after:?}");
        assert!(
            !before.iter().any(|(old, _)| old == pid),
            "{before:?} -> {after:?}"
        );
    }
    for _ in 0..4 {
        assert_eq!(version(&service), 2);
    }
}

#[test]
fn reload_of_a_broken_config_answers_its_problems_and_the_old_generation_keeps_serving() {
    let service = Service::start(ServiceOptions::on(Cluster::shared()).job("version", VERSION_1));
    let before = serving(&service.status());
    let config = std::fs::read_to_string(&service.config).unwrap();
    let broken = config.replacen("[workers]\n", "[workers]\ncuont = 3\n", 1);
    std::fs::write(&service.config, broken).unwrap();
    std::fs::write(service.dir.path().join("workers/version.toml"), VERSION_2).unwrap();

    let (code, stdout, out) = outcome(&on(&service, "reload", &[]));
    assert_eq!(code, Some(1), "{out}");
    assert!(stdout.is_empty(), "{out}");
    assert!(
        out.contains("invalid_config: reload refused, the running configuration is kept:"),
        "{out}"
    );
    assert!(
        out.contains("workers.cuont: unknown key (did you mean `count`?)"),
        "{out}"
    );
    // The same answer over the socket, the problems as a list.
    let answer = service.client().request(json!({"id": 7, "op": "reload"}));
    assert_eq!(answer["error"]["kind"], "invalid_config", "{answer}");
    assert_eq!(
        answer["error"]["problems"].as_array().map(Vec::len),
        Some(1),
        "{answer}"
    );

    let status = service.status();
    assert_eq!(status["generation"], 1, "{status}");
    assert_eq!(serving(&status), before);
    assert_eq!(version(&service), 1);
}

#[test]
fn stop_is_a_graceful_stop_that_lets_a_running_job_finish_and_wait_sees_the_exit() {
    let mut service = Service::start(ServiceOptions::on(Cluster::shared()));
    let mut running = service.client();
    let sent = std::time::Instant::now();
    running.send(json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 1.5}}));
    service.wait_for_status("the sleep to run", |s| s["running"] == 1);

    let (code, stdout, out) = outcome(&on(&service, "stop", &["--wait", "--timeout", "30"]));
    assert_eq!(code, Some(0), "{out}");
    // --wait returned once the service exited, so after the job it let finish.
    assert!(
        sent.elapsed().as_secs_f64() >= 1.5,
        "{:?}: {out}",
        sent.elapsed()
    );
    assert_eq!(
        stdout,
        format!(
            "stopping (graceful): forkpool pid {}\nstopped\n",
            service.pid()
        ),
        "{out}"
    );
    let answer = running.recv().expect("the running job's answer");
    assert_eq!(
        answer["ok"], true,
        "a graceful stop lets it finish: {answer}"
    );
    assert!(service.wait_exit().success());
    assert!(
        service.logs().contains("stop asked by uid 0"),
        "{}",
        service.logs()
    );
}

#[test]
fn stop_fast_answers_the_running_job_shutting_down_at_once() {
    let mut service = Service::start(ServiceOptions::on(Cluster::shared()));
    let mut running = service.client();
    running.send(json!({"id": "slow", "op": "run", "job": "sleep", "args": {"seconds": 9}}));
    service.wait_for_status("the sleep to run", |s| s["running"] == 1);

    let (code, stdout, out) = outcome(&on(&service, "stop", &["--fast"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(
        stdout,
        format!("stopping (fast): forkpool pid {}\n", service.pid()),
        "{out}"
    );
    let answer = running.recv().expect("the running job's answer");
    assert_eq!(answer["error"]["kind"], "shutting_down", "{answer}");
    assert!(service.wait_exit().success());
}

#[test]
fn scale_moves_the_worker_count_by_a_step_or_to_a_number_within_count_and_max() {
    let mut options = ServiceOptions::on(Cluster::shared()).worker_key("max", "3");
    options.workers = 1;
    let service = Service::start(options);
    let workers_become = |n: usize| {
        service.wait_for_status(&format!("{n} idle workers"), |s| {
            s["target_workers"] == n
                && s["workers"].as_array().unwrap().len() == n
                && serving(s).len() == n
                && s["workers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|w| w["state"] == "idle")
        });
    };

    for (argument, printed, workers) in [
        ("+1", "2 workers (was 1)\n", 2),
        ("3", "3 workers (was 2)\n", 3),
        ("-1", "2 workers (was 3)\n", 2),
    ] {
        let (code, stdout, out) = outcome(&on(&service, "scale", &[argument]));
        assert_eq!((code, stdout.as_str()), (Some(0), printed), "{out}");
        workers_become(workers);
    }

    let (code, _, out) = outcome(&on(&service, "scale", &["+2"]));
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("bad_request: cannot scale to 4 workers: above workers.max = 3"),
        "{out}"
    );
    let (code, _, out) = outcome(&on(&service, "scale", &["0"]));
    assert_eq!(code, Some(2), "a usage error: {out}");
    assert_eq!(service.status()["target_workers"], 2);
}

/// The socket's directories and the socket opened to everyone, so only the uid checks
/// stand between another user and the service.
fn open_socket_to_everyone(service: &Service) {
    for dir in [service.dir.path(), &service.dir.path().join("config")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

/// `forkpool ARGS --socket <service's>` as uid and gid 65534 (nobody).
fn as_nobody(service: &Service, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_forkpool"))
        .args(args)
        .arg("--socket")
        .arg(&service.socket)
        .env_remove("FORKPOOL_CONFIG")
        .env_remove("FORKPOOL_SOCKET")
        .current_dir("/")
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap()
}

#[test]
fn only_the_service_uid_and_admin_uids_may_reload_stop_or_scale() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("not root: cannot run a client as another uid; admin_uids is not tested here");
        return;
    }
    let service = Service::start(
        ServiceOptions::on(Cluster::shared()).service_key("socket_mode", "\"0666\""),
    );
    open_socket_to_everyone(&service);
    // Allowed to connect, so ping works; not allowed to administer.
    let (code, _, out) = outcome(&as_nobody(&service, &["ping"]));
    assert_eq!(code, Some(0), "{out}");
    for args in [&["scale", "+1"][..], &["reload"], &["stop"]] {
        let (code, _, out) = outcome(&as_nobody(&service, args));
        assert_eq!(code, Some(1), "{args:?}: {out}");
        assert!(
            out.contains("forbidden: uid 65534 may not")
                && out.contains("add 65534 there")
                && out.contains("service.admin_uids"),
            "{args:?}: {out}"
        );
    }
    // The connection stays open after `forbidden`: the next request is served.
    let mut client = Client::connect(&service.socket);
    let status = service.status();
    assert_eq!(status["target_workers"], 2, "nothing moved: {status}");
    assert_eq!(status["stopping"], false, "{status}");
    assert_eq!(client.request(json!({"id": 1, "op": "ping"}))["ok"], true);

    let config = std::fs::read_to_string(&service.config).unwrap();
    let listed = config.replacen("[service]\n", "[service]\nadmin_uids = [65534]\n", 1);
    std::fs::write(&service.config, listed).unwrap();
    let (code, _, out) = outcome(&on(&service, "reload", &[]));
    assert_eq!(code, Some(0), "the service's own uid reloads: {out}");
    let (code, stdout, out) = outcome(&as_nobody(&service, &["scale", "+1"]));
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(stdout, "3 workers (was 2)\n", "{out}");
}

#[test]
fn the_config_is_searched_in_flag_variable_current_directory_then_system_directory_order() {
    let service = shared();
    let system = tempfile::tempdir().unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let system_var = (
        "FORKPOOL_SYSTEM_CONFIG_DIR",
        system.path().to_str().unwrap(),
    );

    let (code, _, out) = outcome(&forkpool_in(cwd.path(), &[system_var], &["ping"]));
    assert_eq!(code, Some(2), "{out}");
    let looked = format!(
        "no config file at config/forkpool.toml (in {}) or {}/forkpool.toml: give one with \
         -c/--config or FORKPOOL_CONFIG",
        cwd.path().display(),
        system.path().display()
    );
    assert!(out.contains(&looked), "{out}");
    assert!(
        !out.contains("job directory"),
        "only what was looked for: {out}"
    );

    // The system directory's file: the service's own configuration.
    let in_system = system.path().join("forkpool.toml");
    let config = std::fs::read_to_string(&service.config).unwrap();
    let paths = format!(
        "[service]\nsocket = \"{}\"\ncatalog = \"{}\"\n",
        service.socket.display(),
        service.dir.path().join("workers").display()
    );
    std::fs::write(&in_system, config.replacen("[service]\n", &paths, 1)).unwrap();
    let (code, stdout, out) = outcome(&forkpool_in(cwd.path(), &[system_var], &["ping"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(stdout.starts_with("pong"), "{out}");
    // Commands that load the whole configuration search the same way.
    let unset = [system_var, ("FORKPOOL_CONFIG", "")];
    let (code, stdout, out) = outcome(&forkpool_in(cwd.path(), &unset, &["check"]));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        stdout.starts_with(&format!("config {}: ok", in_system.display())),
        "{out}"
    );

    // The current directory's config/forkpool.toml comes first: it names no service.
    std::fs::create_dir(cwd.path().join("config")).unwrap();
    let in_cwd = cwd.path().join("config/forkpool.toml");
    std::fs::write(&in_cwd, "[service]\nsocket = \"nothing-here.sock\"\n").unwrap();
    let (code, _, out) = outcome(&forkpool_in(cwd.path(), &[system_var], &["ping"]));
    assert_eq!(code, Some(3), "{out}");
    assert!(out.contains("nothing-here.sock"), "{out}");

    // FORKPOOL_CONFIG before the current directory; -c before FORKPOOL_CONFIG; an empty
    // FORKPOOL_CONFIG names nothing.
    let in_system = in_system.to_str().unwrap();
    let named = [system_var, ("FORKPOOL_CONFIG", in_system)];
    let (code, _, out) = outcome(&forkpool_in(cwd.path(), &named, &["ping"]));
    assert_eq!(code, Some(0), "{out}");
    let (code, _, out) = outcome(&forkpool_in(
        cwd.path(),
        &named,
        &["ping", "-c", "config/forkpool.toml"],
    ));
    assert_eq!(code, Some(3), "{out}");
    let (code, _, out) = outcome(&forkpool_in(cwd.path(), &unset, &["ping"]));
    assert_eq!(code, Some(3), "the current directory's file: {out}");
    std::fs::remove_file(&in_cwd).unwrap();
    let (code, _, out) = outcome(&forkpool_in(
        cwd.path(),
        &named,
        &["ping", "-c", "config/forkpool.toml"],
    ));
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("(given by --config)"), "{out}");
}
