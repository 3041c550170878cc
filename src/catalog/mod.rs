//! The job catalog: the job files of DESIGN §7, loaded and checked once at start (and on
//! HUP), so that a request only has to bind its arguments and run prepared SQL.
//!
//! Loading reports every problem of every file at once, each naming its file and key, so an
//! operator fixes a broken catalog in one pass instead of one error per restart.

mod numeric;
mod params;
mod rows;
mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value as Json};
use tokio_postgres::types::{ToSql, Type};

use crate::handler::{HandlerOptions, HandlerRef};
pub use numeric::Numeric;
pub use params::{opens_transaction, rewrite, Rewritten};
pub use rows::row_to_json;
pub use types::{ParamType, SqlValue};

/// Every job, by name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    jobs: BTreeMap<String, Arc<JobSpec>>,
}

/// One job file, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The file's stem.
    pub name: String,
    /// Default "": shown by the `jobs` op.
    pub description: String,
    /// Default "main": a key of the configuration's `[databases]`.
    pub database: String,
    /// Default: `workers.job_timeout`, passed to [`Catalog::load`].
    pub timeout: Duration,
    /// Default true: all statements in one transaction. False for statements that cannot
    /// run in one (VACUUM, CREATE INDEX CONCURRENTLY).
    pub transaction: bool,
    /// Default 10000: rows beyond this are dropped and the answer says `"truncated": true`,
    /// so one careless query cannot make a worker hold a whole table in memory.
    pub max_rows: usize,
    /// Default false: a job that is safe to run twice may be re-run once on another worker
    /// when its worker dies.
    pub retry_on_worker_lost: bool,
    /// In file order.
    pub params: Vec<ParamSpec>,
    /// At least one for a job file, run in order; none for a Rust handler's job.
    pub statements: Vec<SqlStatement>,
    /// Set for a job written in Rust ([`crate::Service::handler`]): the worker calls it
    /// instead of running statements, and its arguments are its own to check.
    pub(crate) handler: Option<HandlerRef>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamSpec {
    pub name: String,
    pub ty: ParamType,
    /// Used when the request leaves the argument out; checked against `ty` at load.
    pub default: Option<Json>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SqlStatement {
    /// As written in the job file.
    pub source: String,
    /// With `:name` rewritten to `$1..$n`.
    pub sql: String,
    /// For `$1..$n`: the index into [`JobSpec::params`].
    pub params: Vec<usize>,
    /// The declared types of `$1..$n`, for `prepare_typed`.
    pub types: Vec<Type>,
    /// It opens a transaction block itself (`BEGIN`, `START TRANSACTION`), so the checkin
    /// after it must reset the connection.
    pub opens_transaction: bool,
}

/// Default for `max_rows`.
const DEFAULT_MAX_ROWS: usize = 10_000;
/// Default for `database`.
const DEFAULT_DATABASE: &str = "main";

impl Catalog {
    /// Every `*.toml` in `dir` (non-recursive, sorted); the file stem is the job name.
    /// All problems are reported at once, each naming the file (and key), e.g.
    /// "workers/add.toml: params.b: unknown type `int9` (expected one of bool, int2, ...)".
    pub fn load(dir: &Path, default_timeout: Duration) -> Result<Catalog, Vec<String>> {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            vec![format!(
                "{}: cannot read the job directory: {e}",
                dir.display()
            )]
        })?;
        let mut paths = Vec::new();
        let mut errors = Vec::new();
        for entry in entries {
            match entry {
                Ok(entry) => paths.push(entry.path()),
                Err(e) => errors.push(format!(
                    "{}: cannot list the job directory: {e}",
                    dir.display()
                )),
            }
        }
        paths.retain(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file());
        paths.sort();
        let mut jobs = BTreeMap::new();
        for path in paths {
            let label = path.display();
            let Some(name) = path.file_stem().and_then(|stem| stem.to_str()) else {
                errors.push(format!(
                    "{label}: the file name is not UTF-8; rename the file"
                ));
                continue;
            };
            if !is_job_name(name) {
                errors.push(format!(
                    "{label}: the job name `{name}` may only contain letters, digits, `_`, `.` \
                     and `-`; rename the file"
                ));
                continue;
            }
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) => {
                    errors.push(format!("{label}: cannot read: {e}"));
                    continue;
                }
            };
            match JobSpec::from_toml(name, &text, default_timeout) {
                Ok(job) => {
                    jobs.insert(name.to_string(), Arc::new(job));
                }
                Err(problems) => {
                    errors.extend(problems.into_iter().map(|p| format!("{label}: {p}")))
                }
            }
        }
        if errors.is_empty() {
            Ok(Catalog { jobs })
        } else {
            Err(errors)
        }
    }

    /// Adds a job written in Rust; its name must not be taken by a job file or by another
    /// handler.
    pub(crate) fn add_handler(
        &mut self,
        name: &str,
        options: &HandlerOptions,
        handler: HandlerRef,
        default_timeout: Duration,
    ) -> Result<(), String> {
        if let Some(taken) = self.jobs.get(name) {
            return Err(if taken.handler.is_some() {
                format!("handler `{name}`: registered twice; give each handler its own name")
            } else {
                format!("handler `{name}`: a job file of the catalog already has that name")
            });
        }
        let spec = JobSpec {
            name: name.to_string(),
            description: options.description.clone(),
            database: String::new(),
            timeout: options.timeout.unwrap_or(default_timeout),
            transaction: false,
            max_rows: DEFAULT_MAX_ROWS,
            retry_on_worker_lost: options.retry_on_worker_lost,
            params: Vec::new(),
            statements: Vec::new(),
            handler: Some(handler),
        };
        self.jobs.insert(name.to_string(), Arc::new(spec));
        Ok(())
    }

    pub fn get(&self, name: &str) -> Option<&Arc<JobSpec>> {
        self.jobs.get(name)
    }

    /// Job names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.jobs.keys().map(String::as_str)
    }

    /// Jobs, sorted by name.
    pub fn jobs(&self) -> impl Iterator<Item = &Arc<JobSpec>> {
        self.jobs.values()
    }
}

/// Job names travel in requests and logs: `[A-Za-z0-9_.-]+` keeps them unambiguous there.
fn is_job_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// A job file as written; checked into a [`JobSpec`] by [`JobSpec::from_toml`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobFile {
    #[serde(default)]
    description: String,
    database: Option<String>,
    timeout: Option<String>,
    transaction: Option<bool>,
    max_rows: Option<usize>,
    retry_on_worker_lost: Option<bool>,
    sql: Option<toml::Value>,
    #[serde(default)]
    params: ParamsInFileOrder,
}

/// `[params]` in the order written: `toml::Table` would sort the keys.
#[derive(Default)]
struct ParamsInFileOrder(Vec<(String, toml::Value)>);

impl<'de> Deserialize<'de> for ParamsInFileOrder {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = ParamsInFileOrder;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of parameter names to types")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut params = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    params.push(entry);
                }
                Ok(ParamsInFileOrder(params))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

impl JobSpec {
    /// Checks one job file's text; the errors name the key (not the file: see
    /// [`Catalog::load`], which adds it).
    pub fn from_toml(
        name: &str,
        text: &str,
        default_timeout: Duration,
    ) -> Result<JobSpec, Vec<String>> {
        let file: JobFile = toml::from_str(text).map_err(|e| vec![toml_error(text, &e)])?;
        let mut errors = Vec::new();

        let timeout = match &file.timeout {
            None => default_timeout,
            Some(written) => match humantime::parse_duration(written) {
                Ok(timeout) if !timeout.is_zero() => timeout,
                Ok(_) => {
                    errors.push("timeout: must be more than 0".to_string());
                    default_timeout
                }
                Err(e) => {
                    errors.push(format!(
                        "timeout: {written:?} is not a duration ({e}); write e.g. \"10s\""
                    ));
                    default_timeout
                }
            },
        };
        let max_rows = file.max_rows.unwrap_or(DEFAULT_MAX_ROWS);
        if max_rows == 0 {
            errors.push("max_rows: must be at least 1".to_string());
        }
        let database = file
            .database
            .unwrap_or_else(|| DEFAULT_DATABASE.to_string());
        if database.is_empty() {
            errors.push(
                "database: must name a database of the configuration's [databases]".to_string(),
            );
        }

        let (params, broken) = check_params(file.params, &mut errors);
        let sources = statement_sources(file.sql, &mut errors);
        let mut used = BTreeSet::new();
        let mut statements = Vec::new();
        for (key, source) in &sources {
            match statement(source, &params, &broken) {
                Ok(statement) => {
                    used.extend(statement.params.iter().copied());
                    statements.push(statement);
                }
                Err(problems) => errors.extend(problems.into_iter().map(|p| format!("{key}: {p}"))),
            }
        }
        if errors.is_empty() {
            for (index, param) in params.iter().enumerate() {
                if !used.contains(&index) {
                    errors.push(format!(
                        "params.{}: declared but used by no statement (a typo?)",
                        param.name
                    ));
                }
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(JobSpec {
            name: name.to_string(),
            description: file.description,
            database,
            timeout,
            transaction: file.transaction.unwrap_or(true),
            max_rows,
            retry_on_worker_lost: file.retry_on_worker_lost.unwrap_or(false),
            params,
            statements,
            handler: None,
        })
    }

    /// Checks and converts the request's args into one value per param (in `params` order).
    /// Errors are `invalid_args` messages naming the argument; several are joined by "; ".
    /// JSON null binds SQL NULL for any type; defaults apply when an argument is absent.
    pub fn bind(&self, args: &Map<String, Json>) -> Result<Vec<SqlValue>, String> {
        if self.handler.is_some() {
            return Ok(Vec::new());
        }
        let mut errors = Vec::new();
        let mut values = Vec::with_capacity(self.params.len());
        for param in &self.params {
            match args.get(&param.name).or(param.default.as_ref()) {
                Some(json) => match SqlValue::from_json(&param.name, param.ty, json) {
                    Ok(value) => values.push(value),
                    Err(e) => errors.push(e),
                },
                None => errors.push(format!("missing argument `{}` ({})", param.name, param.ty)),
            }
        }
        for name in args.keys() {
            if !self.params.iter().any(|param| &param.name == name) {
                let takes: Vec<&str> = self.params.iter().map(|p| p.name.as_str()).collect();
                errors.push(if takes.is_empty() {
                    format!("unknown argument `{name}` (this job takes no arguments)")
                } else {
                    format!(
                        "unknown argument `{name}` (this job takes: {})",
                        takes.join(", ")
                    )
                });
            }
        }
        if errors.is_empty() {
            Ok(values)
        } else {
            Err(errors.join("; "))
        }
    }
}

impl SqlStatement {
    /// The values for this statement in `$n` order.
    ///
    /// Panics if `values` is shorter than the job's params: pass what [`JobSpec::bind`] of
    /// the same job returned.
    pub fn args<'a>(&self, values: &'a [SqlValue]) -> Vec<&'a (dyn ToSql + Sync)> {
        self.params
            .iter()
            .map(|&index| &values[index] as &(dyn ToSql + Sync))
            .collect()
    }
}

/// The valid params, and the names of the declared ones already reported as broken (so a
/// statement using them does not add a misleading "not declared").
fn check_params(
    written: ParamsInFileOrder,
    errors: &mut Vec<String>,
) -> (Vec<ParamSpec>, BTreeSet<String>) {
    let mut params = Vec::new();
    let mut broken = BTreeSet::new();
    for (name, value) in written.0 {
        match check_param(&name, value) {
            Ok(param) => params.push(param),
            Err(e) => {
                errors.push(format!("params.{name}: {e}"));
                broken.insert(name);
            }
        }
    }
    (params, broken)
}

fn check_param(name: &str, value: toml::Value) -> Result<ParamSpec, String> {
    if !is_param_name(name) {
        return Err(
            "a parameter name is a letter or `_` followed by letters, digits or `_`".into(),
        );
    }
    let (type_name, default) = match value {
        toml::Value::String(type_name) => (type_name, None),
        toml::Value::Table(mut table) => {
            let Some(toml::Value::String(type_name)) = table.remove("type") else {
                return Err("needs `type = \"...\"` (a type name string)".into());
            };
            let default = table.remove("default");
            if let Some(unknown) = table.keys().next() {
                return Err(format!("unknown key `{unknown}` (expected type, default)"));
            }
            (type_name, default)
        }
        _ => {
            return Err(
                "write a type name like \"int8\" or { type = \"int8\", default = 1 }".into(),
            )
        }
    };
    let ty = ParamType::from_name(&type_name)?;
    let default = default
        .map(|d| toml_to_json(&d))
        .transpose()
        .map_err(|e| format!("default: {e}"))?;
    if let Some(json) = &default {
        SqlValue::from_json(name, ty, json)
            .map_err(|e| format!("default does not fit the type: {e}"))?;
    }
    Ok(ParamSpec {
        name: name.to_string(),
        ty,
        default,
    })
}

fn is_param_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The statements with the key to name in errors: "sql" for one, "sql[i]" for a list.
fn statement_sources(sql: Option<toml::Value>, errors: &mut Vec<String>) -> Vec<(String, String)> {
    let sources = match sql {
        None => {
            errors.push("sql: missing; a job needs at least one statement".to_string());
            return Vec::new();
        }
        Some(toml::Value::String(one)) => vec![("sql".to_string(), one)],
        Some(toml::Value::Array(list)) => {
            if list.is_empty() {
                errors.push("sql: empty list; a job needs at least one statement".to_string());
            }
            let mut sources = Vec::new();
            for (i, item) in list.into_iter().enumerate() {
                match item {
                    toml::Value::String(statement) => {
                        sources.push((format!("sql[{i}]"), statement))
                    }
                    _ => errors.push(format!("sql[{i}]: must be a string")),
                }
            }
            sources
        }
        Some(_) => {
            errors.push("sql: must be a string or a list of strings".to_string());
            return Vec::new();
        }
    };
    sources
        .into_iter()
        .filter(|(key, source)| {
            let blank = source.trim().is_empty();
            if blank {
                errors.push(format!("{key}: empty statement"));
            }
            !blank
        })
        .collect()
}

fn statement(
    source: &str,
    params: &[ParamSpec],
    broken: &BTreeSet<String>,
) -> Result<SqlStatement, Vec<String>> {
    let rewritten = rewrite(source).map_err(|e| vec![e])?;
    let mut errors = Vec::new();
    let mut uses_broken_param = false;
    let mut indexes = Vec::new();
    for name in &rewritten.names {
        match params.iter().position(|param| &param.name == name) {
            Some(index) => indexes.push(index),
            None if broken.contains(name) => uses_broken_param = true,
            None => errors.push(format!(
                "`:{name}` is not declared in [params] (if it is not meant as a parameter, e.g. \
                 an array slice `a[lo:hi]`, put a space after the colon)"
            )),
        }
    }
    if !errors.is_empty() || uses_broken_param {
        return Err(errors);
    }
    Ok(SqlStatement {
        source: source.to_string(),
        sql: rewritten.sql,
        types: indexes.iter().map(|&i| params[i].ty.pg_type()).collect(),
        params: indexes,
        opens_transaction: opens_transaction(source),
    })
}

/// TOML values as the JSON a request would carry; dates become their RFC 3339 text.
fn toml_to_json(value: &toml::Value) -> Result<Json, String> {
    Ok(match value {
        toml::Value::String(s) => Json::String(s.clone()),
        toml::Value::Integer(i) => Json::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Json::Number)
            .ok_or_else(|| format!("{f} cannot be sent as JSON"))?,
        toml::Value::Boolean(b) => Json::Bool(*b),
        toml::Value::Datetime(d) => Json::String(d.to_string()),
        toml::Value::Array(items) => {
            Json::Array(items.iter().map(toml_to_json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Json::Object(
            table
                .iter()
                .map(|(k, v)| Ok((k.clone(), toml_to_json(v)?)))
                .collect::<Result<_, String>>()?,
        ),
    })
}

/// "line N: message", without toml's multi-line source excerpt (the file is named by the
/// caller, and one line per problem keeps the list readable).
fn toml_error(text: &str, error: &toml::de::Error) -> String {
    match error.span() {
        Some(span) => {
            let line = text.as_bytes()[..span.start.min(text.len())]
                .iter()
                .filter(|&&b| b == b'\n')
                .count()
                + 1;
            format!("line {line}: {}", error.message())
        }
        None => error.message().to_string(),
    }
}

#[cfg(test)]
mod tests {
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
        assert_eq!(spec.database, "main");
        assert_eq!(spec.timeout, MINUTE);
        assert!(spec.transaction);
        assert_eq!(spec.max_rows, 10_000);
        assert!(!spec.retry_on_worker_lost);
        let names: Vec<&str> = spec.params.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(spec.statements[0].sql, "SELECT $1 + $2");
        assert_eq!(spec.statements[0].params, [0, 1]);
        assert_eq!(spec.statements[0].types, [Type::INT8, Type::INT4]);
        assert_eq!(spec.statements[1].sql, "SELECT $1::text");
        assert_eq!(spec.statements[1].params, [1]);
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
        assert_eq!(spec.database, "reports");
        assert_eq!(spec.timeout, Duration::from_secs(90));
        assert!(!spec.transaction);
        assert_eq!(spec.max_rows, 5);
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
        let values = spec.bind(&args(json!({"a": 2}))).unwrap();
        assert_eq!(values.len(), 2);
        assert!(spec.bind(&args(json!({"a": null, "b": null}))).unwrap()[0].is_null());
        assert_eq!(
            spec.bind(&args(json!({}))).unwrap_err(),
            "missing argument `a` (int8)"
        );
        assert_eq!(
            spec.bind(&args(json!({"a": 1, "c": 2}))).unwrap_err(),
            "unknown argument `c` (this job takes: a, b)"
        );
        assert_eq!(
            spec.bind(&args(json!({"a": "x"}))).unwrap_err(),
            "argument `a` must be int8, got string \"x\""
        );
        let statement = &spec.statements[0];
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
        assert_eq!(catalog.get("b").unwrap().statements[0].sql, "SELECT 2");
        assert_eq!(catalog.jobs().count(), 2);
        assert!(catalog.get("c").is_none());
    }

    #[test]
    fn a_missing_directory_is_one_clear_error() {
        let errors = Catalog::load(Path::new("/nonexistent/workers"), MINUTE).unwrap_err();
        assert_eq!(errors.len(), 1);
        assert!(errors[0].starts_with("/nonexistent/workers: cannot read the job directory"));
    }

    fn a_handler() -> HandlerRef {
        fn answer(
            _ctx: &mut crate::handler::JobContext<'_>,
            _args: &Map<String, Json>,
        ) -> Result<Json, crate::handler::JobError> {
            Ok(Json::Null)
        }
        HandlerRef(Arc::new(answer))
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
            catalog.get("add").unwrap().handler.is_none(),
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
}
