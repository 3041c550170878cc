use super::*;
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

fn job(text: &str) -> Result<JobSpec, Vec<String>> {
    JobSpec::from_toml("job", text, MINUTE)
}

fn args(value: Json) -> Map<String, Json> {
    value.as_object().unwrap().clone()
}

#[test]
fn a_job_file_gets_its_defaults_and_keeps_params_in_file_order() {
    let spec = job(r#"
        sql = ["SELECT :b + :a", "SELECT :a::text"]
        [params]
        b = "int8"
        a = { type = "int4", default = 1 }
        "#)
    .unwrap();
    assert_eq!(spec.sql().unwrap().database, "main");
    assert_eq!(spec.timeout, MINUTE);
    assert!(spec.sql().unwrap().transaction);
    assert_eq!(spec.sql().unwrap().max_rows, 10_000);
    assert!(!spec.retry_on_worker_lost);
    let names: Vec<&str> = spec
        .sql()
        .unwrap()
        .params
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["b", "a"]);
    assert_eq!(spec.sql().unwrap().statements[0].sql, "SELECT $1 + $2");
    assert_eq!(spec.sql().unwrap().statements[0].params, [0, 1]);
    assert_eq!(
        spec.sql().unwrap().statements[0].types,
        [Type::INT8, Type::INT4]
    );
    assert_eq!(spec.sql().unwrap().statements[1].sql, "SELECT $1::text");
    assert_eq!(spec.sql().unwrap().statements[1].params, [1]);
}

#[test]
fn written_settings_override_the_defaults() {
    let spec = job(r#"
        description = "vacuum"
        database = "reports"
        timeout = "1m 30s"
        transaction = false
        max_rows = 5
        retry_on_worker_lost = true
        sql = "VACUUM"
        "#)
    .unwrap();
    assert_eq!(spec.description, "vacuum");
    assert_eq!(spec.sql().unwrap().database, "reports");
    assert_eq!(spec.timeout, Duration::from_secs(90));
    assert!(!spec.sql().unwrap().transaction);
    assert_eq!(spec.sql().unwrap().max_rows, 5);
    assert!(spec.retry_on_worker_lost);
}

#[test]
fn bind_names_missing_unknown_and_mistyped_arguments() {
    let spec = job(r#"
        sql = "SELECT :a + :b"
        [params]
        a = "int8"
        b = { type = "int8", default = 1 }
        "#)
    .unwrap();
    let values = spec.sql().unwrap().bind(&args(json!({"a": 2}))).unwrap();
    assert_eq!(values.len(), 2);
    assert!(spec
        .sql()
        .unwrap()
        .bind(&args(json!({"a": null, "b": null})))
        .unwrap()[0]
        .is_null());
    assert_eq!(
        spec.sql().unwrap().bind(&args(json!({}))).unwrap_err(),
        "missing argument `a` (int8)"
    );
    assert_eq!(
        spec.sql()
            .unwrap()
            .bind(&args(json!({"a": 1, "c": 2})))
            .unwrap_err(),
        "unknown argument `c` (this job takes: a, b)"
    );
    assert_eq!(
        spec.sql()
            .unwrap()
            .bind(&args(json!({"a": "x"})))
            .unwrap_err(),
        "argument `a` must be int8, got string \"x\""
    );
    let statement = &spec.sql().unwrap().statements[0];
    assert_eq!(statement.args(&values).len(), 2);
}

#[test]
fn every_problem_of_every_file_is_reported_with_its_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let files = [
        ("good.toml", "sql = \"SELECT 1\""),
        ("types.toml", "sql = \"SELECT :a, :b\"\n[params]\na = \"int9\"\nb = { type = \"int2\", default = 70000 }"),
        ("keys.toml", "sql = \"SELECT 1\"\nretries = 3"),
        ("names.toml", "sql = \"SELECT :a, :x\"\n[params]\na = \"int8\"\nunused = \"text\""),
        ("nosql.toml", "timeout = \"soon\""),
        ("positional.toml", "sql = \"SELECT $1\""),
        ("bad name.toml", "sql = \"SELECT 1\""),
        ("notes.txt", "not a job"),
    ];
    for (file, text) in files {
        std::fs::write(dir.path().join(file), text).unwrap();
    }
    let errors = Catalog::load(dir.path(), MINUTE).unwrap_err();
    let at = |file: &str| format!("{}: ", dir.path().join(file).display());
    let expected = [
        format!(
            "{}the job name `bad name` may only contain",
            at("bad name.toml")
        ),
        format!("{}line 2: unknown field `retries`", at("keys.toml")),
        format!("{}sql: `:x` is not declared in [params]", at("names.toml")),
        format!("{}timeout: \"soon\" is not a duration", at("nosql.toml")),
        format!("{}sql: missing", at("nosql.toml")),
        format!("{}sql: positional parameter `$1`", at("positional.toml")),
        format!(
            "{}params.a: unknown type `int9` (expected one of bool, int2,",
            at("types.toml")
        ),
        format!(
            "{}params.b: default does not fit the type: argument `b` = 70000",
            at("types.toml")
        ),
    ];
    assert_eq!(errors.len(), expected.len(), "{errors:#?}");
    for (error, expected) in errors.iter().zip(&expected) {
        assert!(
            error.starts_with(expected.as_str()),
            "{error}\n  expected: {expected}"
        );
    }
}

#[test]
fn an_unused_parameter_is_an_error() {
    let errors = job("sql = \"SELECT :a\"\n[params]\na = \"int8\"\nab = \"int8\"").unwrap_err();
    assert_eq!(
        errors,
        ["params.ab: declared but used by no statement (a typo?)"]
    );
}

#[test]
fn a_valid_directory_loads_every_job_sorted() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("b.toml"), "sql = \"SELECT 2\"").unwrap();
    std::fs::write(dir.path().join("a-1.v2.toml"), "sql = \"SELECT 1\"").unwrap();
    let catalog = Catalog::load(dir.path(), MINUTE).unwrap();
    assert_eq!(catalog.names().collect::<Vec<_>>(), ["a-1.v2", "b"]);
    assert_eq!(
        catalog.get("b").unwrap().sql().unwrap().statements[0].sql,
        "SELECT 2"
    );
    assert_eq!(catalog.jobs().count(), 2);
    assert!(catalog.get("c").is_none());
}

#[test]
fn a_missing_directory_is_one_clear_error() {
    let errors = Catalog::load(Path::new("/nonexistent/workers"), MINUTE).unwrap_err();
    assert_eq!(errors.len(), 1);
    assert!(errors[0].starts_with("/nonexistent/workers: cannot read the job directory"));
}

/// A registered handler as the catalog holds it: opaque, compared by identity.
fn a_handler() -> Arc<dyn std::any::Any + Send + Sync> {
    Arc::new(())
}

#[test]
fn a_handler_named_like_a_job_file_is_refused_with_the_job_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("add.toml"), "sql = \"SELECT 1\"").unwrap();
    let mut catalog = Catalog::load(dir.path(), MINUTE).unwrap();
    let error = catalog
        .add_handler("add", &HandlerOptions::default(), a_handler(), MINUTE)
        .unwrap_err();
    assert_eq!(
        error,
        "handler `add`: a job file of the catalog already has that name"
    );
    assert!(
        catalog.get("add").unwrap().sql().is_some(),
        "the job file stays"
    );
}

#[test]
fn a_handler_registered_twice_is_refused_as_registered_twice() {
    let mut catalog = Catalog::default();
    let options = HandlerOptions::default();
    catalog
        .add_handler("upload", &options, a_handler(), MINUTE)
        .unwrap();
    let error = catalog
        .add_handler("upload", &options, a_handler(), MINUTE)
        .unwrap_err();
    assert_eq!(
        error,
        "handler `upload`: registered twice; give each handler its own name"
    );
}

/// Found by the `job_file` fuzz target: a timeout humantime reads but `Instant` cannot hold
/// loaded, and the master panicked adding it to `now` on the job's first run.
#[test]
fn durations_past_a_century_are_refused_naming_the_key() {
    let errors =
        job("timeout = \"300000000000y\"\nretry_backoff_max = \"101y\"\nsql = \"SELECT 1\"")
            .unwrap_err();
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].starts_with("timeout: ") && errors[0].contains("at most 100 years"));
    assert!(
        errors[1].starts_with("retry_backoff_max: ") && errors[1].contains("at most 100 years")
    );
    let spec = job("timeout = \"100y\"\nsql = \"SELECT 1\"").unwrap();
    assert!(std::time::Instant::now()
        .checked_add(spec.timeout)
        .is_some());
}
