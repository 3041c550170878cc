//! Loading the configuration: the shipped defaults, environment overrides, path resolution,
//! and every problem reported at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use forkpool::config::{Config, ConfigErrors, DatabaseConfig, ServiceConfig, WorkersConfig};
use forkpool::pool::ResetOnReturn;

fn shipped_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/forkpool.toml")
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A config file in a fresh directory; the directory lives as long as the returned guard.
fn write_config(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("forkpool.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let (_dir, file) = write_config(text);
    Config::load_from(&file, &env(vars))
}

fn problems(text: &str, vars: &[(&str, &str)]) -> Vec<String> {
    match load_text(text, vars) {
        Ok(config) => panic!("expected problems, loaded {config:#?}"),
        Err(errors) => errors.problems,
    }
}

fn assert_has(problems: &[String], needle: &str) {
    assert!(
        problems.iter().any(|p| p.contains(needle)),
        "no problem mentions {needle:?} in:\n{}",
        problems.join("\n")
    );
}

#[test]
fn shipped_file_loads_clean_and_matches_the_code_defaults() {
    let config = Config::load_from(&shipped_file(), &[]).unwrap();
    let dir = shipped_file().parent().unwrap().to_path_buf();

    let service = ServiceConfig {
        socket: dir.join("forkpool.sock"),
        catalog: dir.join("../workers"),
        ..ServiceConfig::default()
    };
    let main = DatabaseConfig {
        pool_size: WorkersConfig::default().threads,
        ..DatabaseConfig::default()
    };

    assert_eq!(config.file, shipped_file());
    assert_eq!(config.service, service);
    assert_eq!(config.workers, WorkersConfig::default());
    assert_eq!(config.databases.len(), 1);
    assert_eq!(config.databases["main"], main);
}

#[test]
fn shipped_file_carries_the_design_defaults() {
    let config = Config::load_from(&shipped_file(), &[]).unwrap();
    let (s, w, db) = (&config.service, &config.workers, &config.databases["main"]);
    assert_eq!(s.socket_mode, 0o660);
    assert!(s.allowed_uids.is_empty());
    assert_eq!((s.queue_limit, s.max_request_bytes), (10_000, 1_048_576));
    assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
    assert_eq!((w.count, w.max, w.threads), (4, 16, 1));
    assert_eq!(w.job_timeout, Duration::from_secs(60));
    assert_eq!((w.max_jobs, w.max_jobs_jitter, w.max_rss), (0, 0, 0));
    assert_eq!(w.idle_timeout, None);
    assert_eq!(w.heartbeat_timeout, Some(Duration::from_secs(10)));
    assert_eq!(w.min_lifetime, Duration::from_secs(10));
    assert_eq!(w.boot_timeout, Duration::from_secs(30));
    assert_eq!(w.restart_backoff_max, Duration::from_secs(30));
    assert_eq!(w.give_up_after, 10);
    assert_eq!(db.url, "");
    assert_eq!(db.password_file, None);
    assert_eq!((db.pool_size, db.min_idle), (1, 0));
    assert_eq!(db.checkout_timeout, Duration::from_secs(5));
    assert_eq!(db.connect_timeout, Duration::from_secs(5));
    assert!(db.pre_ping);
    assert_eq!(db.ping_after, Duration::from_millis(500));
    assert_eq!(db.max_lifetime, Some(Duration::from_secs(1800)));
    assert_eq!(db.lifetime_jitter, Duration::from_secs(120));
    assert_eq!(db.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(db.reset_on_return, ResetOnReturn::Rollback);
    assert_eq!((db.leak_threshold, db.statement_timeout), (None, None));
    assert_eq!(db.application_name, "forkpool");
    assert_eq!(db.max_connections_budget, 0);
}

#[test]
fn an_empty_file_gives_the_defaults_and_no_database() {
    let config = load_text("", &[]).unwrap();
    assert_eq!(config.workers, WorkersConfig::default());
    assert!(config.databases.is_empty());
}

#[test]
fn environment_overrides_the_file_with_double_underscores() {
    let config = load_text(
        "[workers]\ncount = 2\n[databases.main]\nurl = \"host=file\"\n",
        &[
            ("FORKPOOL_WORKERS__COUNT", "8"),
            ("FORKPOOL_WORKERS__MAX_RSS", "512MiB"),
            ("FORKPOOL_SERVICE__ALLOWED_UIDS", "1000,1001"),
            ("FORKPOOL_DATABASES__MAIN__URL", "postgresql://db/app"),
            ("FORKPOOL_DATABASES__MAIN__PRE_PING", "false"),
            ("FORKPOOL_DATABASES__REPORTS__POOL_SIZE", "3"),
            // Not configuration keys: the file's location and the client's socket.
            ("FORKPOOL_CONFIG", "/elsewhere.toml"),
            ("FORKPOOL_SOCKET", "/elsewhere.sock"),
            ("HOME", "/root"),
        ],
    )
    .unwrap();
    assert_eq!(config.workers.count, 8);
    assert_eq!(config.workers.max_rss, 512 * 1024 * 1024);
    assert_eq!(config.service.allowed_uids, [1000, 1001]);
    assert_eq!(config.databases["main"].url, "postgresql://db/app");
    assert!(!config.databases["main"].pre_ping);
    assert_eq!(config.databases["reports"].pool_size, 3);
    assert_eq!(
        config.databases["reports"].application_name, "forkpool",
        "a database made from the environment still gets the defaults"
    );
    assert!(config.service.socket.ends_with("forkpool.sock"));
}

#[test]
fn several_problems_are_reported_at_once() {
    let text = r#"
[service]
socket_mode = 660
queue_limit = 0
max_request_bytes = 100

[workers]
cuont = 4
count = "four"
job_timeout = "10 parsecs"
max_rss = "lots"
threads = 0
pipeline = 0

[databases.main]
pool_size = 2
min_idle = 3
reset_on_return = "commit"
pre_ping = "sometimes"

[servce]
socket = "x"
"#;
    let (_dir, file) = write_config(text);
    let errors = Config::load_from(&file, &env(&[("FORKPOOL_WORKERS__MAX", "-1")])).unwrap_err();
    let p = &errors.problems;
    assert_has(p, "workers.cuont: unknown key (did you mean `count`?)");
    assert_has(p, "workers.count = \"four\": not a whole number");
    assert_has(
        p,
        r#"workers.job_timeout = "10 parsecs": not a duration (write "250ms", "30s", "5m")"#,
    );
    assert_has(p, "workers.max_rss = \"lots\": not a size");
    assert_has(p, "service.socket_mode = 660: not an octal file mode");
    assert_has(p, "service.queue_limit = 0");
    assert_has(p, "service.max_request_bytes = 100");
    assert_has(p, "workers.threads = 0");
    assert_has(
        p,
        "workers.pipeline = 0: each executor holds at least one job",
    );
    assert_has(p, "databases.main.min_idle = 3 is above the pool size 2");
    assert_has(p, "databases.main.reset_on_return = \"commit\"");
    assert_has(p, "databases.main.pre_ping = \"sometimes\"");
    assert_has(p, "servce: unknown key (did you mean `service`?)");
    assert_has(
        p,
        "FORKPOOL_WORKERS__MAX: workers.max = \"-1\": must not be negative",
    );
    assert_eq!(p.len(), 14, "one line per problem:\n{}", p.join("\n"));

    // Display: one problem a line, each naming where it came from.
    let shown = errors.to_string();
    assert_eq!(shown.lines().count(), 14);
    let file_prefix = format!("{}: ", file.display());
    for line in shown.lines() {
        assert!(
            line.starts_with(&file_prefix) || line.starts_with("env FORKPOOL_WORKERS__MAX: "),
            "{line}"
        );
    }
}

#[test]
fn an_environment_problem_names_the_variable_not_the_file() {
    let (_dir, file) = write_config("");
    let errors = Config::load_from(
        &file,
        &env(&[
            ("FORKPOOL_WORKERS__JOB_TIMEOUT", "soon"),
            ("FORKPOOL_WORKERS__CUONT", "3"),
        ]),
    )
    .unwrap_err();
    assert_eq!(errors.problems.len(), 2, "{errors}");
    for problem in &errors.problems {
        assert!(problem.starts_with("env FORKPOOL_WORKERS__"), "{problem}");
        assert!(!problem.contains(&*file.to_string_lossy()), "{problem}");
    }
    assert_has(
        &errors.problems,
        "workers.cuont: unknown key (did you mean `count`?)",
    );
}

#[test]
fn a_cross_key_problem_points_at_the_layer_that_set_the_key() {
    let p = problems("[workers]\ncount = 4\n", &[("FORKPOOL_WORKERS__MAX", "2")]);
    assert_eq!(
        p,
        [
            "env FORKPOOL_WORKERS__MAX: workers.max = 2 is below workers.count = 4 \
          (max is the ceiling, count the floor)"
        ]
    );
}

#[test]
fn a_wrong_value_is_not_reported_again_by_the_cross_key_checks() {
    let p = problems("[workers]\ncount = \"many\"\nmax = 1\n", &[]);
    assert_eq!(p.len(), 1, "{}", p.join("\n"));
}

#[test]
fn workers_count_must_be_at_least_one_and_at_most_max() {
    assert_has(
        &problems("[workers]\ncount = 0\n", &[]),
        "workers.count = 0",
    );
    assert_has(
        &problems("[workers]\ncount = 5\nmax = 4\n", &[]),
        "workers.max = 4 is below workers.count = 5",
    );
}

#[test]
fn sections_and_databases_must_be_tables() {
    let p = problems("workers = 3\n[databases]\nmain = \"postgres://\"\n", &[]);
    assert_has(&p, "workers = 3: expected a table");
    assert_has(&p, "databases.main = \"postgres://\": expected a table");
}

#[test]
fn relative_paths_are_relative_to_the_files_directory() {
    let (dir, file) = write_config(
        "[service]\nsocket = \"run/fp.sock\"\ncatalog = \"/srv/jobs\"\n\
         [databases.main]\npassword_file = \"secrets/pw\"\n\
         [databases.other]\npassword_file = \"\"\n",
    );
    // Loaded through a path that is relative to the current directory.
    let cwd = std::env::current_dir().unwrap();
    let relative = pathdiff(&file, &cwd);
    let config = Config::load_from(&relative, &[]).unwrap();
    assert_eq!(config.file, file);
    assert_eq!(config.service.socket, dir.path().join("run/fp.sock"));
    assert_eq!(config.service.catalog, Path::new("/srv/jobs"));
    assert_eq!(
        config.databases["main"].password_file.as_deref(),
        Some(dir.path().join("secrets/pw").as_path())
    );
    assert_eq!(config.databases["other"].password_file, None);

    let defaults = load_text("", &[]).unwrap();
    let default_dir = defaults.file.parent().unwrap().to_path_buf();
    assert_eq!(defaults.service.catalog, default_dir.join("../workers"));
}

/// `path` written relative to `base` with `..` steps (both absolute).
fn pathdiff(path: &Path, base: &Path) -> PathBuf {
    let common = path
        .components()
        .zip(base.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut relative: PathBuf = base.components().skip(common).map(|_| "..").collect();
    relative.extend(path.components().skip(common));
    relative
}

#[test]
fn zero_means_never_for_the_optional_durations() {
    let config = load_text(
        "[workers]\nidle_timeout = \"0\"\n[databases.main]\nmax_lifetime = \"0\"\n\
         idle_timeout = \"0s\"\nleak_threshold = \"0\"\nstatement_timeout = 0\n",
        &[],
    )
    .unwrap();
    let db = &config.databases["main"];
    assert_eq!(config.workers.idle_timeout, None);
    assert_eq!(
        (
            db.max_lifetime,
            db.idle_timeout,
            db.leak_threshold,
            db.statement_timeout
        ),
        (None, None, None, None)
    );
    let config = load_text(
        "[workers]\nidle_timeout = \"5m\"\n[databases.main]\nleak_threshold = \"250ms\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.workers.idle_timeout, Some(Duration::from_secs(300)));
    assert_eq!(
        config.databases["main"].leak_threshold,
        Some(Duration::from_millis(250))
    );
}

#[test]
fn pool_size_zero_becomes_the_worker_thread_count() {
    let config = load_text(
        "[workers]\nthreads = 6\n[databases.main]\npool_size = 0\n[databases.fixed]\npool_size = 2\n",
        &[],
    )
    .unwrap();
    assert_eq!(config.databases["main"].pool_size, 6);
    assert_eq!(config.databases["fixed"].pool_size, 2);
    // min_idle is checked against the resolved size.
    assert_has(
        &problems(
            "[workers]\nthreads = 2\n[databases.main]\nmin_idle = 3\n",
            &[],
        ),
        "databases.main.min_idle = 3 is above the pool size 2",
    );
}

#[test]
fn a_zero_checkout_timeout_is_refused_because_it_also_bounds_connecting() {
    assert_has(
        &problems("[databases.main]\ncheckout_timeout = \"0\"\n", &[]),
        "databases.main.checkout_timeout = 0: it also bounds opening a connection",
    );
}

#[test]
fn a_missing_file_says_how_to_name_one() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.toml");
    let errors = Config::load_from(&missing, &[]).unwrap_err();
    assert_eq!(errors.file, missing);
    assert_eq!(
        errors.problems,
        [format!("no config file at {}", missing.display())]
    );
    let errors = Config::load(Some(&missing)).unwrap_err();
    assert_eq!(
        errors.problems[0],
        format!(
            "no config file at {} (given by --config)",
            missing.display()
        )
    );
}

#[test]
fn a_toml_syntax_error_is_reported_with_the_file() {
    let (_dir, file) = write_config("[workers\ncount = 4\n");
    let errors = Config::load_from(&file, &[]).unwrap_err();
    assert_eq!(errors.problems.len(), 1, "{errors}");
    assert!(
        errors.problems[0].starts_with(&format!("{}: ", file.display())),
        "{errors}"
    );
}
